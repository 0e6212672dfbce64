"""Tests for larix.io: safetensors checkpoints keyed by the dict strategy's dotted paths."""

from __future__ import annotations

import json
import os
import re
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

import larix
import larix.io
from conftest import pytrees
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
    model, state = make(3, "batch")
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
    fresh_model, fresh_state = make(3, "batch")
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


def test_unselected_leaves_come_from_like(tmp_path):
    larix.io.save(tmp_path / "t.safetensors", {"w": jnp.ones(2), "n": 3, "name": "old"})
    loaded = larix.io.load(tmp_path / "t.safetensors", {"w": jnp.zeros(2), "n": 5, "name": "new"})
    assert loaded["n"] == 5 and loaded["name"] == "new" and loaded["w"].tolist() == [1.0, 1.0]


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
    loaded = larix.io.load(tmp_path / "t.safetensors", like, filter_spec=larix.is_array_like, strict=False)
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
    assert "strict=False" in message and "same hyperparameters" in message


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
    larix.io.save(tmp_path / "t.safetensors", {"w": jnp.ones(1), "n": 3}, filter_spec=larix.is_array_like)
    with pytest.raises(ValueError, match=re.escape("`like` has 'n', but filter_spec does not select them")):
        larix.io.load(tmp_path / "t.safetensors", {"w": jnp.ones(1), "n": 0})


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
    with pytest.raises(ImportError, match=re.escape('pip install "larix[io]"')):
        larix.io.save(tmp_path / "t.safetensors", {"a": jnp.ones(1)})
    with pytest.raises(ImportError, match=re.escape('pip install "larix[io]"')):
        larix.io.load(tmp_path / "t.safetensors", {"a": jnp.ones(1)})
    assert list(tmp_path.iterdir()) == []


def test_importing_larix_io_does_not_import_safetensors():
    code = "import sys, larix, larix.io; larix.io.save; print(sorted(m for m in sys.modules if m.startswith('safetensors')))"
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"
