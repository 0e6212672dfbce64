"""Tests for larix.io: safetensors checkpoints keyed by the dict strategy's dotted paths."""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import ml_dtypes
import numpy as np
import pytest
import safetensors
import safetensors.numpy
from hypothesis import given
from hypothesis import strategies as st

import larix
import larix.io
from conftest import pytrees
from larix._serialise import describe
from test_serialise import assert_identical, zeros_like_tree

SRC = str(Path(larix.__file__).resolve().parents[1])


def header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file, read independently of larix."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size])


def make_mlp(seed: int = 0) -> larix.nn.MLP:
    return larix.nn.MLP(3, 2, width_size=4, depth=2, key=jax.random.key(seed))


# --------------------------------------------------------------------------- behaviour


def test_keys_are_the_dotted_paths_of_split(tmp_path):
    model = make_mlp()
    larix.io.save(tmp_path / "mlp.safetensors", model)
    _, arrays, _ = larix.split(model, larix.is_array)
    on_disk = header(tmp_path / "mlp.safetensors")
    assert (
        set(on_disk) - {"__metadata__"}
        == set(arrays)
        == {f"layers.{i}.{p}" for i in range(3) for p in ("weight", "bias")}
    )
    assert on_disk["__metadata__"] == {"larix_version": larix.__version__}


def test_files_are_plain_safetensors_that_other_readers_load(tmp_path):
    model = make_mlp()
    larix.io.save(tmp_path / "mlp.safetensors", model)
    tensors = safetensors.numpy.load_file(tmp_path / "mlp.safetensors")
    assert np.array_equal(tensors["layers.1.weight"], np.asarray(model.layers[1].weight))
    assert tensors["layers.2.bias"].dtype == np.float32


def test_mlp_round_trip_into_a_fresh_model_and_into_placeholders(tmp_path):
    model = make_mlp(0)
    larix.io.save(tmp_path / "mlp.safetensors", model)
    loaded = larix.io.load(tmp_path / "mlp.safetensors", make_mlp(1))
    assert_identical(loaded, model)
    like = larix.filter_eval_shape(make_mlp, 2)
    assert_identical(larix.io.load(tmp_path / "mlp.safetensors", like), model)
    assert jnp.array_equal(loaded(jnp.ones(3)), model(jnp.ones(3)))


def test_batch_norm_model_and_state_round_trip(tmp_path):
    make = larix.nn.make_with_state(larix.nn.BatchNorm)
    model, state = make(3, "batch", mode="ema")
    run = larix.filter_vmap(
        lambda m, v, s: m(v, s), in_axes=(None, 0, None), out_axes=(0, None), axis_name="batch"
    )
    _, state = run(model, jnp.arange(12.0).reshape(4, 3), state)
    tree = {"model": model, "state": state}
    larix.io.save(tmp_path / "bn.safetensors", tree)
    assert set(header(tmp_path / "bn.safetensors")) >= {
        "model.weight",
        "state.ema_state_index.0",
        "state.ema_first_time_index",
    }
    fresh_model, fresh_state = make(3, "batch", mode="ema")
    loaded = larix.io.load(tmp_path / "bn.safetensors", {"model": fresh_model, "state": fresh_state})
    assert_identical(loaded, tree)
    assert isinstance(loaded["state"], larix.nn.State)


def test_bfloat16_and_float8_round_trip_bit_for_bit(tmp_path):
    bits = np.array([0x7FC1, 0x0001, 0x8000, 0x3F80], np.uint16)  # a NaN payload, a subnormal, -0, 1
    tree = {
        "bf16": jnp.asarray(bits.view(ml_dtypes.bfloat16)),
        "f8": np.array([0.5, -448.0], ml_dtypes.float8_e4m3fn),
    }
    larix.io.save(tmp_path / "low.safetensors", tree)
    dtypes = {k: v["dtype"] for k, v in header(tmp_path / "low.safetensors").items() if k != "__metadata__"}
    assert dtypes == {"bf16": "BF16", "f8": "F8_E4M3"}
    loaded = larix.io.load(tmp_path / "low.safetensors", zeros_like_tree(tree))
    assert_identical(loaded, tree)
    structs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in tree.items()}
    assert (
        np.asarray(larix.io.load(tmp_path / "low.safetensors", structs)["bf16"]).view(np.uint16).tolist()
        == bits.tolist()
    )


def test_python_scalars_are_stored_exactly_in_the_metadata(tmp_path):
    tree = {
        "i": 2**80,
        "f": 0.1,
        "neg_zero": -0.0,
        "nan": float("nan"),
        "b": True,
        "c": 1.5 - 2j,
        "w": jnp.ones(1),
    }
    larix.io.save(tmp_path / "s.safetensors", tree, filter_spec=larix.is_array_like)
    assert set(header(tmp_path / "s.safetensors")) == {"__metadata__", "w"}
    loaded = larix.io.load(tmp_path / "s.safetensors", zeros_like_tree(tree), filter_spec=larix.is_array_like)
    assert_identical(loaded, tree)


def test_leaves_that_are_not_numbers_come_from_like(tmp_path):
    larix.io.save(tmp_path / "t.safetensors", {"w": jnp.ones(2), "n": 3, "name": "old", "f": jnp.tanh})
    like = {"w": jnp.zeros(2), "n": 5, "name": "new", "f": jnp.sin}
    loaded = larix.io.load(tmp_path / "t.safetensors", like)
    assert loaded == {"w": loaded["w"], "n": 3, "name": "new", "f": jnp.sin}
    assert loaded["w"].tolist() == [1.0, 1.0]


def test_a_filter_spec_saves_and_loads_part_of_a_tree(tmp_path):
    model = make_mlp()
    weights_only = larix.is_array & larix.by_path("**.weight")
    larix.io.save(tmp_path / "w.safetensors", model, filter_spec=weights_only)
    assert all(k.endswith("weight") for k in header(tmp_path / "w.safetensors") if k != "__metadata__")
    other = make_mlp(1)
    loaded = larix.io.load(tmp_path / "w.safetensors", other, filter_spec=weights_only)
    assert jnp.array_equal(loaded.layers[0].weight, model.layers[0].weight)
    assert loaded.layers[0].bias is other.layers[0].bias


def test_numpy_leaves_stay_numpy_and_transposed_views_are_saved_in_order(tmp_path):
    tree = {"t": np.arange(6.0).reshape(2, 3).T, "s": np.int16(7)}
    larix.io.save(tmp_path / "n.safetensors", tree)
    loaded = larix.io.load(tmp_path / "n.safetensors", zeros_like_tree(tree))
    assert_identical(loaded, tree)
    loaded["t"][0, 0] = 1.0  # a writable copy


def test_strict_false_ignores_extras_and_keeps_missing_leaves(tmp_path):
    larix.io.save(
        tmp_path / "t.safetensors",
        {"a": jnp.ones(2), "extra": jnp.ones(3), "n": 4},
        filter_spec=larix.is_array_like,
    )
    like = {"a": jnp.zeros(2), "new": jnp.full(2, 5.0), "n": 0, "m": 9}
    with pytest.warns(larix.io.PartialLoadWarning):
        loaded = larix.io.load(tmp_path / "t.safetensors", like, strict=False)
    assert loaded["a"].tolist() == [1.0, 1.0] and loaded["new"] is like["new"]
    assert loaded["n"] == 4 and loaded["m"] == 9


def test_empty_trees_and_root_arrays(tmp_path):
    larix.io.save(tmp_path / "e.safetensors", {"name": "x"})
    assert larix.io.load(tmp_path / "e.safetensors", {"name": "y"}) == {"name": "y"}
    larix.io.save(tmp_path / "r.safetensors", jnp.arange(3))
    assert larix.io.load(tmp_path / "r.safetensors", jnp.zeros(3, jnp.int32)).tolist() == [0, 1, 2]


@given(pytrees)
def test_property_round_trip_of_arrays_and_scalars(tmp_path_factory, tree):
    path = tmp_path_factory.mktemp("io") / "t.safetensors"
    larix.io.save(path, tree, filter_spec=larix.is_array_like)
    assert_identical(larix.io.load(path, zeros_like_tree(tree), filter_spec=larix.is_array_like), tree)
    structs = jtu.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if isinstance(x, jax.Array) else x, tree
    )
    assert_identical(larix.io.load(path, zeros_like_tree(structs), filter_spec=larix.is_array_like), tree)


# --------------------------------------------------------------------------- errors


def test_one_error_lists_every_mismatch(tmp_path):
    larix.io.save(tmp_path / "m.safetensors", make_mlp())
    like = larix.nn.MLP(3, 2, width_size=5, depth=1, key=jax.random.key(0))
    like = larix.tree_at(lambda m: m.layers[1].bias, like, jnp.zeros(2, jnp.bfloat16))
    with pytest.raises(ValueError) as info:
        larix.io.load(tmp_path / "m.safetensors", like)
    message = str(info.value)
    assert f"'{tmp_path / 'm.safetensors'}' does not match `like`" in message
    for line in [
        "'layers.0.weight': expected f32[5,3], found f32[4,3]",
        "'layers.0.bias': expected f32[5], found f32[4]",
        "'layers.1.weight': expected f32[2,5], found f32[4,4]",
        "'layers.1.bias': expected bf16[2], found f32[4]",
        "unexpected in the file: 'layers.2.bias' (f32[2]), 'layers.2.weight' (f32[2,4])",
    ]:
        assert line in message
    assert "hyperparameters and dtypes of the saved tree" in message
    assert "load with strict=False" in message  # for the unexpected keys


def test_missing_keys_are_listed_with_their_shapes(tmp_path):
    larix.io.save(tmp_path / "t.safetensors", {"a": jnp.ones(2)})
    with pytest.raises(
        ValueError, match=re.escape("missing from the file: 'b' (i32[3]), 'c' (a Python int)")
    ):
        larix.io.load(
            tmp_path / "t.safetensors",
            {"a": jnp.ones(2), "b": jnp.ones(3, jnp.int32), "c": 1},
            filter_spec=larix.is_array_like,
        )


def test_missing_placeholders_are_errors_even_when_not_strict(tmp_path):
    larix.io.save(tmp_path / "t.safetensors", {"a": jnp.ones(2)})
    like = {"a": jnp.ones(2), "p": jax.ShapeDtypeStruct((2,), jnp.float32)}
    with pytest.raises(ValueError, match=re.escape("missing from the file: 'p' (f32[2])")):
        larix.io.load(tmp_path / "t.safetensors", like, strict=False)


def test_scalars_and_arrays_do_not_fill_each_other(tmp_path):
    larix.io.save(
        tmp_path / "t.safetensors", {"a": jnp.ones(()), "n": 1, "f": 1.0}, filter_spec=larix.is_array_like
    )
    like = {"a": 1.0, "n": jnp.ones(()), "f": 1}
    with pytest.raises(ValueError) as info:
        larix.io.load(tmp_path / "t.safetensors", like, filter_spec=larix.is_array_like)
    message = str(info.value)
    assert "'a': expected a Python float, found f32[]" in message
    assert "'n': expected f32[], found a Python int" in message
    assert "'f': expected a Python int, found a Python float" in message


def test_scalars_saved_but_not_selected_at_load_get_a_hint(tmp_path):
    larix.io.save(tmp_path / "t.safetensors", {"w": jnp.ones(1), "n": 3})
    with pytest.raises(ValueError, match=re.escape("`like` has 'n', but filter_spec does not select them")):
        larix.io.load(tmp_path / "t.safetensors", {"w": jnp.ones(1), "n": 0}, filter_spec=larix.is_array)


def test_unreadable_dtypes_in_the_file_are_named(tmp_path):
    safetensors.numpy.save_file({"x": np.zeros(2, ml_dtypes.float8_e4m3fnuz)}, tmp_path / "t.safetensors")
    with pytest.raises(
        ValueError, match=re.escape("'x': expected f32[2], found an array of safetensors dtype F8_E4M3FNUZ")
    ):
        larix.io.load(tmp_path / "t.safetensors", {"x": jnp.zeros(2)})


def test_a_file_that_is_not_safetensors_is_named(tmp_path):
    (tmp_path / "t.safetensors").write_bytes(b"\x93NUMPY not safetensors")
    with pytest.raises(ValueError, match="is not a safetensors file"):
        larix.io.load(tmp_path / "t.safetensors", {"x": jnp.zeros(2)})


def test_unsavable_leaves_are_all_named(tmp_path):
    tree = {
        "c": np.ones(2, np.complex128),
        "k": jax.random.key(0),
        "s": "text",
        "i4": jnp.ones(2, jnp.int4),
        "ok": jnp.ones(2),
    }
    with pytest.raises(TypeError) as info:
        larix.io.save(tmp_path / "t.safetensors", tree, filter_spec=lambda x: True)
    message = str(info.value)
    assert (
        "'c' has dtype complex128, which safetensors files cannot hold: cast it (for instance to complex64)"
        in message
    )
    assert "'i4' has dtype int4" in message
    assert "'k' is a PRNG key array: save `jax.random.key_data(key)` instead" in message
    assert "'s' is a str" in message
    assert "'ok'" not in message
    assert list(tmp_path.iterdir()) == []


def test_leaves_the_default_selects_but_cannot_save_are_refused_not_dropped(tmp_path):
    class Number:
        def __jax_array__(self):
            return jnp.ones(2)

    with pytest.raises(TypeError) as info:
        larix.io.save(tmp_path / "t.safetensors", {"w": jnp.ones(2), "n": Number()})
    assert (
        "'n' is a Number; only arrays, NumPy scalars and Python bool/int/float/complex can be saved"
        in str(info.value)
    )
    assert "`larix.is_array_like & ~larix.by_path('n')`" in str(info.value)
    larix.io.save(tmp_path / "t.safetensors", {"w": jnp.ones(2), "n": Number()}, filter_spec=larix.is_array)
    assert set(header(tmp_path / "t.safetensors")) == {"__metadata__", "w"}


def test_loading_into_leaves_a_checkpoint_cannot_hold_is_refused(tmp_path):
    larix.io.save(tmp_path / "t.safetensors", {"s": jnp.ones(1)})
    with pytest.raises(TypeError, match=re.escape("'s' is a str")):
        larix.io.load(tmp_path / "t.safetensors", {"s": "text"}, filter_spec=lambda x: True)


def test_colliding_keys_are_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match=re.escape("would both get the key 'a.b'")):
        larix.io.save(tmp_path / "t.safetensors", {"a.b": jnp.ones(1), "a": {"b": jnp.ones(1)}})
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- atomic saves


def test_a_save_that_fails_midway_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    larix.io.save(path, make_mlp(0))
    before = path.read_bytes()

    def half_written(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", half_written)
    with pytest.raises(OSError, match="disk full"):
        larix.io.save(path, make_mlp(1))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    assert_identical(larix.io.load(path, make_mlp(2)), make_mlp(0))


def test_a_failed_flush_to_disk_leaves_no_file(tmp_path, monkeypatch):
    def no_fsync(fd):
        raise OSError("I/O error")

    monkeypatch.setattr(os, "fsync", no_fsync)
    with pytest.raises(OSError, match="I/O error"):
        larix.io.save(tmp_path / "model.safetensors", make_mlp())
    assert list(tmp_path.iterdir()) == []


def test_saving_over_a_checkpoint_replaces_it(tmp_path):
    path = tmp_path / "model.safetensors"
    larix.io.save(path, make_mlp(0))
    larix.io.save(path, make_mlp(1))
    assert_identical(larix.io.load(path, make_mlp(2)), make_mlp(1))
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


# --------------------------------------------------------------------------- the optional dependency


@pytest.mark.parametrize("missing", ["safetensors", "safetensors.numpy"])
def test_without_safetensors_the_error_says_how_to_install_it(tmp_path, monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(ImportError, match=re.escape('pip install -e ".[io]"')):
        larix.io.save(tmp_path / "t.safetensors", {"a": jnp.ones(1)})
    with pytest.raises(ImportError, match=re.escape('pip install -e ".[io]"')):
        larix.io.load(tmp_path / "t.safetensors", {"a": jnp.ones(1)})
    assert list(tmp_path.iterdir()) == []


def test_importing_larix_io_does_not_import_safetensors():
    code = "import sys, larix, larix.io; larix.io.save; print(sorted(m for m in sys.modules if m.startswith('safetensors')))"
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"


# --------------------------------------------------------------------------- nothing is lost (issue 8 §3)


class Scaled(larix.Module):
    weight: jax.Array
    scale: float  # not static: a value that training or a schedule may change
    steps: int
    enabled: bool


def test_non_static_python_scalars_are_saved_by_default(tmp_path):
    model = Scaled(jnp.ones(2), scale=-0.0, steps=2**70, enabled=False)
    larix.io.save(tmp_path / "m.safetensors", model)
    loaded = larix.io.load(tmp_path / "m.safetensors", Scaled(jnp.zeros(2), scale=1.0, steps=0, enabled=True))
    assert_identical(loaded, model)  # exact types and values: -0.0, a big int, a bool
    assert math.copysign(1.0, loaded.scale) == -1.0


def test_python_and_numpy_scalars_keep_their_exact_types(tmp_path):
    tree = {
        "int": 7,
        "bool": True,
        "neg_zero": -0.0,
        "nan": float("nan"),
        "inf": float("-inf"),
        "complex": complex(0.5, -0.0),
        "f32": np.float32(1.5),
        "f64": np.float64(0.1),
        "i16": np.int16(-3),
        "u64": np.uint64(2**64 - 1),
        "np_bool": np.bool_(True),
    }
    larix.io.save(tmp_path / "s.safetensors", tree)
    loaded = larix.io.load(tmp_path / "s.safetensors", zeros_like_tree(tree))
    assert_identical(loaded, tree)
    assert {k: type(v) for k, v in loaded.items()} == {k: type(v) for k, v in tree.items()}


def test_leaving_scalars_out_takes_an_explicit_filter_spec(tmp_path):
    model = Scaled(jnp.ones(2), scale=0.5, steps=3, enabled=True)
    larix.io.save(tmp_path / "a.safetensors", model, filter_spec=larix.is_array)
    assert "larix_scalars" not in header(tmp_path / "a.safetensors")["__metadata__"]
    like = Scaled(jnp.zeros(2), scale=1.0, steps=0, enabled=False)
    loaded = larix.io.load(tmp_path / "a.safetensors", like, filter_spec=larix.is_array)
    assert (loaded.scale, loaded.steps, loaded.enabled) == (1.0, 0, False)


def test_a_file_saved_without_scalars_gets_a_hint_at_load(tmp_path):
    # Such files come from larix.io.save before it saved scalars by default.
    larix.io.save(tmp_path / "a.safetensors", Scaled(jnp.ones(2), 0.5, 3, True), filter_spec=larix.is_array)
    with pytest.raises(ValueError) as info:
        larix.io.load(tmp_path / "a.safetensors", Scaled(jnp.zeros(2), 1.0, 0, False))
    message = str(info.value)
    assert (
        "missing from the file: 'scale' (a Python float), 'steps' (a Python int), 'enabled' (a Python bool)"
        in message
    )
    assert "The file holds no Python scalars" in message
    assert "Load it with filter_spec=larix.is_array" in message


def test_strict_false_warns_with_every_kept_and_ignored_path(tmp_path):
    path = tmp_path / "t.safetensors"
    larix.io.save(path, {"body": {"w": jnp.ones(2), "b": jnp.ones(2)}, "old": jnp.ones(3), "lr": 0.1})
    like = {"body": {"w": jnp.zeros(2), "b": jnp.zeros(2)}, "head": {"w": jnp.zeros(4)}, "lr": 1.0, "step": 0}
    with pytest.warns(larix.io.PartialLoadWarning) as record:
        loaded = larix.io.load(path, like, strict=False)
    [warning] = record
    message = str(warning.message)
    assert f"did not load every leaf from '{path}'" in message
    assert "kept from `like`, as the file lacks them: 'head.w', 'step'" in message
    assert "ignored in the file, as `like` lacks them: 'old'" in message
    assert warning.filename == __file__  # points at the caller's line
    assert loaded["body"]["w"].tolist() == [1.0, 1.0] and loaded["lr"] == 0.1
    assert loaded["head"]["w"] is like["head"]["w"] and loaded["step"] == 0
    report = warning.message.report
    assert report == larix.io.load_report(path, like)
    assert (report.loaded, report.kept, report.ignored, report.problems) == (
        ("body.b", "body.w", "lr"),
        ("head.w", "step"),
        ("old",),
        (),
    )
    assert not report.matches and "'old'" in str(report)
    copied = pickle.loads(pickle.dumps(warning.message))  # as pytest-xdist and logging copy it
    assert str(copied) == message and copied.report == report


def test_strict_false_does_not_warn_when_everything_matches(tmp_path):
    larix.io.save(tmp_path / "t.safetensors", {"w": jnp.ones(2)})
    loaded = larix.io.load(
        tmp_path / "t.safetensors", {"w": jnp.zeros(2)}, strict=False
    )  # warnings are errors
    assert loaded["w"].tolist() == [1.0, 1.0]
    report = larix.io.load_report(tmp_path / "t.safetensors", {"w": jnp.zeros(2)})
    assert report.matches and str(report) == f"'{tmp_path / 't.safetensors'}' matches `like`: 1 leaves load."


def test_selecting_the_part_with_filter_spec_loads_it_without_a_warning(tmp_path):
    larix.io.save(tmp_path / "t.safetensors", {"body": jnp.ones(2)})
    like = {"body": jnp.zeros(2), "head": jnp.zeros(3)}
    loaded = larix.io.load(
        tmp_path / "t.safetensors", like, filter_spec=larix.is_array & larix.by_path("body")
    )
    assert loaded["body"].tolist() == [1.0, 1.0] and loaded["head"] is like["head"]


def test_the_report_lists_problems_that_strict_false_cannot_load_past(tmp_path):
    larix.io.save(tmp_path / "t.safetensors", {"w": jnp.ones(2)})
    like = {"w": jnp.zeros(3), "p": jax.ShapeDtypeStruct((2,), jnp.float32)}
    report = larix.io.load_report(tmp_path / "t.safetensors", like)
    assert report.problems == ("'w': expected f32[3], found f32[2]", "missing from the file: 'p' (f32[2])")
    with pytest.raises(ValueError) as info:
        larix.io.load(tmp_path / "t.safetensors", like, strict=False)
    assert "placeholder (jax.ShapeDtypeStruct) has no value to keep" in str(info.value)


def test_shape_and_dtype_errors_do_not_suggest_strict_false(tmp_path):
    larix.io.save(tmp_path / "m.safetensors", make_mlp())
    wider = larix.nn.MLP(3, 2, width_size=5, depth=2, key=jax.random.key(0))
    with pytest.raises(ValueError) as info:
        larix.io.load(tmp_path / "m.safetensors", wider)
    message = str(info.value)
    assert "'layers.0.weight': expected f32[5,3], found f32[4,3]" in message
    assert "whatever `strict` is" in message
    assert "strict=False:" not in message and "load with strict=False" not in message


def frozen_first_layer(model: larix.nn.MLP) -> larix.nn.MLP:
    return larix.tree_at(lambda m: m.layers[0], model, replace_fn=larix.Frozen)


@pytest.mark.parametrize("strict", [True, False])
def test_a_model_saved_with_a_frozen_part_does_not_load_into_the_plain_model(tmp_path, strict):
    path = tmp_path / "tuned.safetensors"
    tuned = frozen_first_layer(make_mlp(0))
    larix.io.save(path, tuned)
    assert {"layers.0.bits.weight", "layers.0.bits.bias"} <= set(header(path))
    with pytest.raises(ValueError) as info:
        larix.io.load(path, make_mlp(1), strict=strict)  # must not keep the random layers.0
    message = str(info.value)
    assert (
        "the file holds 'layers.0.bits.bias', 'layers.0.bits.weight' where `like` has 'layers.0.bias', "
        "'layers.0.weight': the checkpoint was saved from a model in which `layers.0` was a larix.Frozen"
    ) in message
    assert "`like = larix.tree_at(lambda m: m.layers[0], like, replace_fn=larix.Frozen)`" in message
    assert "missing from the file" not in message and "unexpected in the file" not in message
    # The way the message gives works, and unfreezing gives the tuned layer back.
    loaded = larix.io.load(path, frozen_first_layer(make_mlp(1)))
    assert_identical(loaded, tuned)
    plain = larix.tree_at(lambda m: m.layers[0], loaded, replace_fn=lambda f: f.value)
    assert_identical(plain.layers[0], make_mlp(0).layers[0])


def test_a_model_frozen_whole_names_the_whole_tree(tmp_path):
    larix.io.save(tmp_path / "f.safetensors", larix.Frozen(make_mlp(0)))
    with pytest.raises(ValueError, match=re.escape("in which the whole tree was a larix.Frozen")) as info:
        larix.io.load(tmp_path / "f.safetensors", make_mlp(1))
    assert "`like = larix.Frozen(like)`" in str(info.value)


def test_a_plain_checkpoint_into_a_frozen_like_says_to_freeze_after_loading(tmp_path):
    larix.io.save(tmp_path / "p.safetensors", make_mlp(0))
    with pytest.raises(ValueError) as info:
        larix.io.load(tmp_path / "p.safetensors", frozen_first_layer(make_mlp(1)), strict=False)
    message = str(info.value)
    assert (
        "`layers.0` of `like` is a larix.Frozen, but the checkpoint was saved from a model in which it was not"
        in message
    )
    assert "`model = larix.tree_at(lambda m: m.layers[0], model, replace_fn=larix.Frozen)`" in message


def test_a_field_named_bits_that_holds_floats_is_not_taken_for_frozen(tmp_path):
    larix.io.save(tmp_path / "t.safetensors", {"a": {"bits": {"w": jnp.ones(2)}}})
    with pytest.raises(ValueError) as info:
        larix.io.load(tmp_path / "t.safetensors", {"a": {"w": jnp.ones(2)}})
    message = str(info.value)
    assert "Frozen" not in message
    assert (
        "missing from the file: 'a.w' (f32[2])" in message and "unexpected in the file: 'a.bits.w'" in message
    )


# --------------------------------------------------------------------------- dtypes


def test_values_that_do_not_fit_the_dtype_of_like_are_errors(tmp_path):
    larix.io.save(
        tmp_path / "t.safetensors",
        {"i": np.array([1, 2**40 + 5], np.int64), "f": np.array(1e300), "r": np.array([0.1, 0.5])},
    )
    like = {"i": jnp.zeros(2, jnp.int32), "f": np.float32(0), "r": np.zeros(2, np.float32)}
    with pytest.raises(ValueError) as info:
        larix.io.load(tmp_path / "t.safetensors", like)
    message = str(info.value)
    assert (
        "'i': expected i32[2], found i64[2], which i32 cannot hold exactly: element [1] = 1099511627781 would become 5"
        in message
    )
    assert (
        "'f': expected f32[], found f64[], which f32 cannot hold exactly: 1e+300 would become inf" in message
    )
    assert (
        "'r': expected f32[2], found f64[2], which f32 cannot hold exactly: element [0] = 0.1 would become 0.1"
        in message
    )


def test_a_64_bit_placeholder_with_64_bit_types_off_gets_only_exact_values(tmp_path):
    assert not jax.config.jax_enable_x64
    larix.io.save(tmp_path / "t.safetensors", {"big": np.array(1e300), "half": np.array(0.5)})
    like = {k: jax.ShapeDtypeStruct((), jnp.float64) for k in ("big", "half")}
    with pytest.raises(ValueError) as info:
        larix.io.load(tmp_path / "t.safetensors", like)
    message = str(info.value)
    assert (
        "'big': expected f64[], found f64[], which f32 cannot hold exactly (JAX's 64-bit types are off"
        in message
    )
    assert "'half'" not in message
    like["big"] = np.float64(0)
    assert_identical(
        larix.io.load(tmp_path / "t.safetensors", like), {"big": np.float64(1e300), "half": jnp.asarray(0.5)}
    )


def test_exact_dtype_conversions_load(tmp_path):
    tree = {
        "f32": np.array([0.1, -0.0, np.nan], np.float32),
        "bf16": jnp.array([1.5, -2.0], jnp.bfloat16),
        "i64": np.array([-(2**31), 2**31 - 1], np.int64),
        "bool": np.array([True, False]),
        "u8": np.array([255], np.uint8),
    }
    larix.io.save(tmp_path / "t.safetensors", tree)
    like = {
        "f32": np.zeros(3, np.float64),
        "bf16": jnp.zeros(2, jnp.float32),
        "i64": jnp.zeros(2, jnp.int32),
        "bool": np.zeros(2, np.int8),
        "u8": np.zeros(1, np.int16),
    }
    loaded = larix.io.load(tmp_path / "t.safetensors", like)
    for key, value in loaded.items():
        assert value.dtype == like[key].dtype and type(value) is type(like[key])
        np.testing.assert_array_equal(np.asarray(value, np.float64), np.asarray(tree[key], np.float64))
    assert np.signbit(loaded["f32"][1])


@pytest.mark.parametrize(
    ("saved", "template"),
    [
        (np.array([1.0, 2.0]), np.zeros(2, np.int64)),  # float to int, even when integral
        (np.array([1, 0], np.int8), np.zeros(2, bool)),  # int to bool
        (np.array([1 + 0j], np.complex64), np.zeros(1, np.float64)),  # complex to real
    ],
)
def test_conversions_that_change_kind_are_refused(tmp_path, saved, template):
    larix.io.save(tmp_path / "t.safetensors", {"x": saved})
    with pytest.raises(
        ValueError, match=re.escape(f"'x': expected {describe(template)}, found {describe(saved)}\n")
    ):
        larix.io.load(tmp_path / "t.safetensors", {"x": template})


@given(
    st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=4),
    st.sampled_from([np.int8, np.int16, np.int32, np.uint32, np.int64, np.float32, np.float64]),
)
def test_property_an_integer_array_loads_exactly_or_not_at_all(tmp_path_factory, values, dtype):
    path = tmp_path_factory.mktemp("io") / "t.safetensors"
    saved = np.array(values, np.int64)
    larix.io.save(path, {"x": saved})
    with np.errstate(all="ignore"):
        fits = bool(np.all(saved.astype(dtype).astype(object) == saved.astype(object)))
    if fits:
        loaded = larix.io.load(path, {"x": np.zeros(len(values), dtype)})["x"]
        assert loaded.dtype == dtype and loaded.astype(object).tolist() == values
    else:
        with pytest.raises(ValueError, match="cannot hold exactly"):
            larix.io.load(path, {"x": np.zeros(len(values), dtype)})


def test_big_endian_arrays_are_saved_little_endian(tmp_path):
    tree = {"x": np.arange(3.0, dtype=">f4"), "i": np.array([1, -2], ">i8")}
    larix.io.save(tmp_path / "t.safetensors", tree)
    on_disk = safetensors.numpy.load_file(tmp_path / "t.safetensors")
    assert on_disk["x"].dtype == np.dtype("<f4") and on_disk["x"].tolist() == [0.0, 1.0, 2.0]
    loaded = larix.io.load(
        tmp_path / "t.safetensors", {"x": np.zeros(3, np.float32), "i": np.zeros(2, np.int64)}
    )
    assert loaded["i"].tolist() == [1, -2]


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o444], ids=oct)
def test_saving_over_a_file_keeps_its_permission_bits(tmp_path, mode):
    path = tmp_path / "model.safetensors"
    larix.io.save(path, make_mlp(0))
    path.chmod(mode)
    larix.io.save(path, make_mlp(1))
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert_identical(larix.io.load(path, make_mlp(2)), make_mlp(1))
    larix.tree_serialise_leaves(tmp_path / "model.eqx", [1])
    (tmp_path / "model.eqx").chmod(mode)
    larix.tree_serialise_leaves(tmp_path / "model.eqx", [2])
    assert stat.S_IMODE((tmp_path / "model.eqx").stat().st_mode) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.eqx", "model.safetensors"]


def test_a_new_file_gets_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        larix.io.save(tmp_path / "new.safetensors", make_mlp())
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "new.safetensors").stat().st_mode) == 0o644


def test_saving_to_a_symlink_replaces_its_target(tmp_path):
    (tmp_path / "runs").mkdir()
    target = tmp_path / "runs" / "step-100.safetensors"
    larix.io.save(target, make_mlp(0))
    target.chmod(0o600)
    link = tmp_path / "latest.safetensors"
    link.symlink_to(target)
    larix.io.save(link, make_mlp(1))
    assert link.is_symlink() and link.resolve() == target
    assert_identical(larix.io.load(target, make_mlp(2)), make_mlp(1))
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.safetensors", "runs"]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["step-100.safetensors"]
    # A link to a file that does not exist yet creates the file, as open(link, "wb") would.
    dangling = tmp_path / "next.safetensors"
    dangling.symlink_to(tmp_path / "runs" / "step-200.safetensors")
    larix.io.save(dangling, make_mlp(0))
    assert dangling.is_symlink() and (tmp_path / "runs" / "step-200.safetensors").is_file()


@pytest.mark.parametrize("save", [larix.io.save, larix.tree_serialise_leaves])
def test_saving_into_a_missing_directory_names_it(tmp_path, save):
    path = tmp_path / "missing" / "model.safetensors"
    message = (
        f"cannot save to '{path}': the directory '{path.parent}' does not exist. Create it first, "
        f"e.g. with `pathlib.Path({str(path.parent)!r}).mkdir(parents=True)`."
    )
    with pytest.raises(FileNotFoundError, match=re.escape(message)):
        save(path, {"w": jnp.ones(2)})
    assert list(tmp_path.iterdir()) == []


def test_corrupt_scalar_metadata_names_the_file_and_the_entry(tmp_path):
    path = tmp_path / "t.safetensors"
    safetensors.numpy.save_file({"w": np.ones(2, np.float32)}, path, metadata={"larix_scalars": "{not json"})
    with pytest.raises(
        ValueError,
        match=re.escape(f"'{path}' has corrupt larix metadata: its entry 'larix_scalars' is not valid JSON"),
    ):
        larix.io.load(path, {"w": jnp.zeros(2)})
    safetensors.numpy.save_file({}, path, metadata={"larix_scalars": json.dumps({"lr": ["float", "0.1"]})})
    with pytest.raises(
        ValueError, match=re.escape("the entry for 'lr' in 'larix_scalars' is [\"float\", \"0.1\"]")
    ):
        larix.io.load(path, {"lr": 1.0})


# --------------------------------------------------------------------------- the Equinox format, shared fixes


def npy_with_header(shape: str) -> bytes:
    """A .npy record (format 1.0) of three float64 whose header claims `shape`, as a corrupt
    file might."""
    text = f"{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}"
    text += " " * (-(len(text) + 11) % 64) + "\n"  # padded to 64 bytes, as NumPy writes it
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode() + np.zeros(3).tobytes()


@pytest.mark.parametrize(
    ("shape", "why"),
    [
        ("(-1,)", "a .npy header with the shape (-1,), which no array has"),
        ("(3, -2)", "a .npy header with the shape (3, -2), which no array has"),
        (
            "(1000000000000,)",
            "its .npy header gives f64[1000000000000] (8000000000000 bytes), but 24 bytes follow",
        ),
        (
            f"({2**40}, {2**40})",
            f"its .npy header gives f64[{2**40},{2**40}] ({2**83} bytes), but 24 bytes follow",
        ),
    ],
)
def test_corrupt_npy_headers_name_the_file_and_the_leaf(tmp_path, shape, why):
    path = tmp_path / "t.eqx"
    path.write_bytes(npy_with_header(shape))
    with pytest.raises(ValueError) as info:
        larix.tree_deserialise_leaves(path, {"a": np.zeros(3)})
    assert str(info.value).startswith(
        f"larix.tree_deserialise_leaves: cannot read '{path}' at the leaf like['a']: "
    )
    assert why in str(info.value)


def test_tree_deserialise_leaves_refuses_values_out_of_range(tmp_path):
    path = tmp_path / "t.eqx"
    larix.tree_serialise_leaves(path, {"i": np.array(2**40 + 5), "f": np.array([1e300]), "r": np.array(0.1)})
    like = {"i": jnp.zeros((), jnp.int32), "f": jnp.zeros(1), "r": jnp.zeros(())}
    with pytest.raises(ValueError) as info:
        larix.tree_deserialise_leaves(path, like)
    message = str(info.value)
    assert (
        "like['i']: expected i32[], the file has i64[], which i32 cannot hold: 1099511627781 would become 5"
        in message
    )
    assert (
        "like['f']: expected f32[1], the file has f64[1], which f32 cannot hold: element [0] = 1e+300 would become inf"
        in message
    )
    assert "like['r']" not in message  # rounding 0.1 to float32 is accepted, as in Equinox
    placeholders = {"i": jax.ShapeDtypeStruct((), jnp.int64), "f": jax.ShapeDtypeStruct((1,), jnp.float64)}
    with pytest.raises(ValueError, match="which f32 cannot hold: element"):
        larix.tree_deserialise_leaves(path, {**placeholders, "r": 0.0})


def test_big_endian_records_load_exactly_and_are_described_by_their_byte_order(tmp_path):
    path = tmp_path / "t.eqx"
    larix.tree_serialise_leaves(path, [np.arange(3.0, dtype=">f4"), np.array([7, -1], ">i8")])
    loaded = larix.tree_deserialise_leaves(path, [np.zeros(3, np.float32), jnp.zeros(2, jnp.int32)])
    assert loaded[0].dtype == np.float32 and loaded[0].tolist() == [0.0, 1.0, 2.0]
    assert loaded[1].tolist() == [7, -1]
    with pytest.raises(
        ValueError, match=re.escape("like[0]: expected f32[4], the file has f32[3] (big-endian)")
    ):
        larix.tree_deserialise_leaves(path, [np.zeros(4, np.float32), np.zeros(2, np.int64)])


def test_the_sign_of_a_nan_scalar_survives_a_round_trip(tmp_path):
    tree = {"a": -math.nan, "b": complex(1.0, -math.nan), "c": math.nan}
    larix.io.save(tmp_path / "nan.safetensors", tree)
    loaded = larix.io.load(tmp_path / "nan.safetensors", {"a": 0.0, "b": 0j, "c": 0.0})
    assert math.copysign(1.0, loaded["a"]) == -1.0
    assert math.copysign(1.0, loaded["b"].imag) == -1.0
    assert math.copysign(1.0, loaded["c"]) == 1.0
