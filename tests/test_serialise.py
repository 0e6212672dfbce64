"""Tests for larix._serialise: Equinox-compatible tree_serialise_leaves / tree_deserialise_leaves.

Equinox is the oracle: files must be byte-identical to its, and each library must load
what the other saved.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import larix
from conftest import Box, Pair, pytrees
from distributed_helpers import run_python

# --------------------------------------------------------------------------- helpers


def zeros_like_tree(tree: Any) -> Any:
    """`tree` with every saved leaf zeroed (same kinds, shapes, dtypes): a `like` that only
    a real load can turn back into `tree`."""

    def zero(x: Any) -> Any:
        if isinstance(x, jax.Array):
            return jnp.zeros_like(x)
        if isinstance(x, np.ndarray):
            return np.zeros_like(x)
        if isinstance(x, np.generic):
            return x.dtype.type(0)
        if isinstance(x, (bool, int, float, complex)):
            return type(x)(0)
        return x

    return jtu.tree_map(zero, tree)


def assert_identical(a: Any, b: Any) -> None:
    """Same structure, same leaf kinds, and bit-identical values."""
    leaves_a, treedef_a = jtu.tree_flatten(a)
    leaves_b, treedef_b = jtu.tree_flatten(b)
    assert treedef_a == treedef_b
    for x, y in zip(leaves_a, leaves_b):
        assert type(x) is type(y), (x, y)
        if isinstance(x, (jax.Array, np.ndarray, np.generic)):
            assert x.shape == y.shape and x.dtype == y.dtype
            assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
        else:
            assert repr(x) == repr(y)


def serialised(save: Any, tree: Any, **kwargs: Any) -> bytes:
    f = io.BytesIO()
    save(f, tree, **kwargs)
    return f.getvalue()


def mixed_tree() -> dict[str, Any]:
    return {
        "jax": jnp.arange(6.0).reshape(2, 3),
        "ints": jnp.arange(3, dtype=jnp.int32),
        "numpy": np.linspace(0, 1, 4),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "numpy_scalar": np.float32(2.5),
        "bf16": jnp.array([1.5, -2.0], jnp.bfloat16),
        "py": [1, 2.5, True, 1 - 2j],
        "kept": ["relu", None, jax.nn.relu],
        "empty": jnp.zeros((0, 3)),
    }


# --------------------------------------------------------------------------- behaviour


def test_round_trip_through_a_path(tmp_path):
    tree = mixed_tree()
    larix.tree_serialise_leaves(tmp_path / "tree.eqx", tree)
    loaded = larix.tree_deserialise_leaves(tmp_path / "tree.eqx", zeros_like_tree(tree))
    assert_identical(loaded, tree)
    assert loaded["kept"][2] is jax.nn.relu


def test_round_trip_through_a_file_object():
    tree = mixed_tree()
    f = io.BytesIO(serialised(larix.tree_serialise_leaves, tree))
    assert_identical(larix.tree_deserialise_leaves(f, zeros_like_tree(tree)), tree)


def test_loaded_numpy_arrays_are_writable_copies(tmp_path):
    larix.tree_serialise_leaves(tmp_path / "a.eqx", np.arange(3.0))
    loaded = larix.tree_deserialise_leaves(tmp_path / "a.eqx", np.zeros(3))
    loaded[0] = 7.0  # would raise if it were a read-only view of the file's bytes
    assert loaded.tolist() == [7.0, 1.0, 2.0]


def test_only_arrays_and_python_scalars_are_written():
    f = io.BytesIO(serialised(larix.tree_serialise_leaves, ["text", None, jnp.ones(2), 3, object()]))
    assert np.load(f).tolist() == [1.0, 1.0]
    assert np.load(f).tolist() == 3
    assert f.read() == b""


def test_suffix_eqx_is_added_only_when_missing(tmp_path):
    larix.tree_serialise_leaves(str(tmp_path / "model"), [1])
    larix.tree_serialise_leaves(tmp_path / "model.bin", [2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.eqx"]
    assert larix.tree_deserialise_leaves(str(tmp_path / "model"), [0]) == [1]
    assert larix.tree_deserialise_leaves(tmp_path / "model.bin", [0]) == [2]


def test_several_trees_in_one_file_object():
    f = io.BytesIO()
    larix.tree_serialise_leaves(f, {"a": jnp.ones(2)})
    larix.tree_serialise_leaves(f, (4, 5.0))
    f.seek(0)
    first = larix.tree_deserialise_leaves(f, {"a": jnp.zeros(2)})
    second = larix.tree_deserialise_leaves(f, (0, 0.0))
    assert first["a"].tolist() == [1.0, 1.0] and second == (4, 5.0)


def test_like_may_hold_shape_dtype_structs(tmp_path):
    model = larix.nn.MLP(3, 2, width_size=4, depth=2, key=jax.random.key(0))
    larix.tree_serialise_leaves(tmp_path / "mlp.eqx", model)
    like = larix.filter_eval_shape(larix.nn.MLP, 3, 2, 4, 2, key=jax.random.key(1))
    assert isinstance(like.layers[0].weight, jax.ShapeDtypeStruct)
    loaded = larix.tree_deserialise_leaves(tmp_path / "mlp.eqx", like)
    assert_identical(loaded, model)
    x = jnp.ones(3)
    assert jnp.array_equal(loaded(x), model(x))


def test_bfloat16_and_float8_round_trip_into_arrays_and_structs():
    tree = [jnp.array([1.5, -3.0, 1e-3], jnp.bfloat16), jnp.array([0.5, 2.0], jnp.float8_e4m3fn)]
    data = serialised(larix.tree_serialise_leaves, tree)
    assert_identical(larix.tree_deserialise_leaves(io.BytesIO(data), zeros_like_tree(tree)), tree)
    structs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in tree]
    assert_identical(larix.tree_deserialise_leaves(io.BytesIO(data), structs), tree)


def test_model_with_batch_norm_state_round_trips(tmp_path):
    make = larix.nn.make_with_state(larix.nn.BatchNorm)
    model, state = make(3, "batch", mode="ema")
    x = jnp.arange(12.0).reshape(4, 3)
    run = larix.filter_vmap(
        lambda m, v, s: m(v, s), in_axes=(None, 0, None), out_axes=(0, None), axis_name="batch"
    )
    _, state = run(model, x, state)
    larix.tree_serialise_leaves(tmp_path / "bn.eqx", (model, state))
    fresh_model, fresh_state = make(3, "batch", mode="ema")
    loaded_model, loaded_state = larix.tree_deserialise_leaves(
        tmp_path / "bn.eqx", (fresh_model, fresh_state)
    )
    assert_identical(loaded_state, state)
    assert not jnp.array_equal(
        loaded_state.get(model.ema_state_index)[0], fresh_state.get(model.ema_state_index)[0]
    )
    assert_identical(loaded_model, model)


def test_filter_spec_as_a_pytree_prefix():
    def skip(f, x):
        return None

    tree = {"saved": [jnp.ones(2), 3], "skipped": jnp.full(2, 9.0)}
    data = serialised(
        larix.tree_serialise_leaves,
        tree,
        filter_spec={"saved": larix.default_serialise_filter_spec, "skipped": skip},
    )

    def keep(f, x):
        return x

    like = zeros_like_tree(tree)
    loaded = larix.tree_deserialise_leaves(
        io.BytesIO(data), like, filter_spec={"saved": larix.default_deserialise_filter_spec, "skipped": keep}
    )
    assert loaded["saved"][0].tolist() == [1.0, 1.0] and loaded["saved"][1] == 3
    assert loaded["skipped"] is like["skipped"]


def test_custom_filter_specs_compose_with_the_defaults():
    def skip_jax_arrays(f, x):
        if not isinstance(x, jax.Array):
            larix.default_serialise_filter_spec(f, x)

    def keep_jax_arrays(f, x):
        return x if isinstance(x, jax.Array) else larix.default_deserialise_filter_spec(f, x)

    tree = (jnp.array([1, 2, 3]), [4, 5, 6])
    data = serialised(larix.tree_serialise_leaves, tree, filter_spec=skip_jax_arrays)
    like = (jnp.array([7, 8, 9]), [0, 0, 0])
    loaded = larix.tree_deserialise_leaves(io.BytesIO(data), like, filter_spec=keep_jax_arrays)
    assert loaded[0] is like[0] and loaded[1] == [4, 5, 6]


def test_is_leaf_treats_a_subtree_as_one_leaf():
    def save_pair_sum(f, x):
        if isinstance(x, Pair):
            np.save(f, np.asarray(x.a + x.b))

    def load_pair_sum(f, x):
        return np.load(f).item() if isinstance(x, Pair) else x

    def is_pair(x):
        return isinstance(x, Pair)

    tree = [Pair(1, 2), 3]
    data = serialised(larix.tree_serialise_leaves, tree, filter_spec=save_pair_sum, is_leaf=is_pair)
    assert larix.tree_deserialise_leaves(
        io.BytesIO(data), tree, filter_spec=load_pair_sum, is_leaf=is_pair
    ) == [3, 3]


def test_scalar_leaves_accept_records_that_convert_without_changing_kind():
    data = serialised(larix.tree_serialise_leaves, [2, True, 3])
    assert larix.tree_deserialise_leaves(io.BytesIO(data), [0.0, 0, 0j]) == [2.0, 1, 3 + 0j]


def test_float64_records_fill_float32_jax_leaves_as_in_equinox():
    # With x64 off a JAX leaf cannot be float64; Equinox accepts the record all the same.
    data = serialised(larix.tree_serialise_leaves, np.arange(3.0))
    loaded = larix.tree_deserialise_leaves(io.BytesIO(data), jnp.zeros(3))
    assert loaded.dtype == jnp.float32 and loaded.tolist() == [0.0, 1.0, 2.0]


def test_npy_format_version_2_records_are_read():
    f = io.BytesIO()
    np.lib.format.write_array(f, np.arange(4, dtype=np.int32), version=(2, 0))
    f.seek(0)
    assert larix.tree_deserialise_leaves(f, np.zeros(4, np.int32)).tolist() == [0, 1, 2, 3]


def test_default_deserialise_filter_spec_reads_nothing_for_other_leaves():
    f = io.BytesIO(serialised(larix.tree_serialise_leaves, [1]))
    marker = object()
    assert larix.default_deserialise_filter_spec(f, marker) is marker
    assert larix.default_deserialise_filter_spec(f, "relu") == "relu"
    assert f.tell() == 0
    assert larix.default_deserialise_filter_spec(f, 0) == 1


def test_default_serialise_filter_spec_writes_one_npy_record():
    f = io.BytesIO()
    larix.default_serialise_filter_spec(f, jnp.arange(3))
    larix.default_serialise_filter_spec(f, "skipped")
    f.seek(0)
    assert np.load(f).tolist() == [0, 1, 2]
    assert f.read() == b""


def test_load_places_arrays_like_the_like_leaves():
    run_python(
        """
        import io, jax, jax.numpy as jnp, numpy as np, larix
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

        mesh = Mesh(np.array(jax.devices()), ("x",))
        sharded = jax.device_put(jnp.zeros((8, 2)), NamedSharding(mesh, P("x")))
        on_device_3 = jax.device_put(jnp.zeros(2), jax.devices()[3])
        like = [sharded, on_device_3, jnp.zeros(2), jax.ShapeDtypeStruct((8, 2), jnp.float32, sharding=sharded.sharding)]
        tree = [jnp.ones((8, 2)), jnp.ones(2), jnp.ones(2), jnp.ones((8, 2))]
        f = io.BytesIO()
        larix.tree_serialise_leaves(f, tree)
        f.seek(0)
        loaded = larix.tree_deserialise_leaves(f, like)
        assert loaded[0].sharding == sharded.sharding, loaded[0].sharding
        assert loaded[1].devices() == {jax.devices()[3]} and loaded[1].committed
        assert not loaded[2].committed
        assert loaded[3].sharding == sharded.sharding
        assert all(bool((x == 1).all()) for x in loaded)
        """
    )


# --------------------------------------------------------------------------- Equinox interop


def test_files_are_byte_identical_to_equinox():
    tree = mixed_tree()
    assert serialised(larix.tree_serialise_leaves, tree) == serialised(eqx.tree_serialise_leaves, tree)


def test_equinox_loads_larix_files_and_larix_loads_equinox_files(tmp_path):
    tree = mixed_tree()
    larix.tree_serialise_leaves(tmp_path / "larix", tree)
    eqx.tree_serialise_leaves(tmp_path / "equinox", tree)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["equinox.eqx", "larix.eqx"]
    assert_identical(eqx.tree_deserialise_leaves(tmp_path / "larix", zeros_like_tree(tree)), tree)
    assert_identical(larix.tree_deserialise_leaves(tmp_path / "equinox", zeros_like_tree(tree)), tree)


def test_equinox_mlp_loads_into_larix_mlp(tmp_path):
    eqx_mlp = eqx.nn.MLP(3, 2, 5, 2, key=jax.random.key(0))
    eqx.tree_serialise_leaves(tmp_path / "mlp.eqx", eqx_mlp)
    larix_mlp = larix.tree_deserialise_leaves(
        tmp_path / "mlp.eqx", larix.nn.MLP(3, 2, 5, 2, key=jax.random.key(1))
    )
    x = jnp.linspace(-1, 1, 3)
    assert jnp.array_equal(larix_mlp(x), eqx_mlp(x))
    larix.tree_serialise_leaves(tmp_path / "back.eqx", larix_mlp)
    back = eqx.tree_deserialise_leaves(tmp_path / "back.eqx", eqx.nn.MLP(3, 2, 5, 2, key=jax.random.key(2)))
    assert jnp.array_equal(back(x), eqx_mlp(x))


@given(pytrees)
def test_property_byte_identical_to_equinox_and_loadable_by_both(tree):
    data = serialised(larix.tree_serialise_leaves, tree)
    assert data == serialised(eqx.tree_serialise_leaves, tree)
    like = zeros_like_tree(tree)
    assert_identical(larix.tree_deserialise_leaves(io.BytesIO(data), like), tree)
    assert_identical(eqx.tree_deserialise_leaves(io.BytesIO(data), like), tree)


@given(pytrees, st.booleans())
def test_property_round_trip_through_shape_dtype_structs(tree, numpy_to_structs):
    # JAX arrays become placeholders (and, optionally, NumPy ones, which then load as JAX).
    def placeholder(x):
        if isinstance(x, jax.Array) or (numpy_to_structs and isinstance(x, np.ndarray)):
            return jax.ShapeDtypeStruct(
                x.shape, x.dtype if isinstance(x, jax.Array) else jnp.asarray(x).dtype
            )
        return x

    like = jtu.tree_map(placeholder, zeros_like_tree(tree))
    loaded = larix.tree_deserialise_leaves(io.BytesIO(serialised(larix.tree_serialise_leaves, tree)), like)
    expected = jtu.tree_map(
        lambda x, p: jnp.asarray(x) if isinstance(p, jax.ShapeDtypeStruct) else x, tree, like
    )
    assert_identical(loaded, expected)


# --------------------------------------------------------------------------- errors


def test_every_mismatching_leaf_is_named_with_its_path(tmp_path):
    saved = larix.nn.MLP(2, 1, width_size=8, depth=2, key=jax.random.key(0))
    larix.tree_serialise_leaves(tmp_path / "mlp.eqx", saved)
    wider = larix.nn.MLP(2, 1, width_size=16, depth=2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="does not match `like`") as info:
        larix.tree_deserialise_leaves(tmp_path / "mlp.eqx", wider)
    message = str(info.value)
    assert str(tmp_path / "mlp.eqx") in message
    for line in [
        "like.layers[0].weight: expected f32[16,2], the file has f32[8,2]",
        "like.layers[0].bias: expected f32[16], the file has f32[8]",
        "like.layers[1].weight: expected f32[16,16], the file has f32[8,8]",
        "like.layers[1].bias: expected f32[16], the file has f32[8]",
        "like.layers[2].weight: expected f32[1,16], the file has f32[1,8]",
    ]:
        assert line in message
    assert "like.layers[2].bias" not in message  # f32[1] both times
    assert "same hyperparameters" in message


def test_dtype_mismatches_are_named():
    data = serialised(
        larix.tree_serialise_leaves, {"a": jnp.ones(2, jnp.int32), "b": jnp.ones(2, jnp.bfloat16)}
    )
    like = {"a": jnp.ones(2), "b": jnp.ones(2, jnp.float16)}
    with pytest.raises(ValueError) as info:
        larix.tree_deserialise_leaves(io.BytesIO(data), like)
    message = str(info.value)
    assert "like['a']: expected f32[2], the file has i32[2]" in message
    assert "like['b']: expected f16[2], the file has V2[2] (unnamed 2-byte values" in message
    assert "the file does not match" in message


def test_scalar_mismatches_are_named():
    data = serialised(larix.tree_serialise_leaves, [2.5, np.ones(2), 1])
    with pytest.raises(ValueError) as info:
        larix.tree_deserialise_leaves(io.BytesIO(data), [0, 0.0, False])
    message = str(info.value)
    assert "like[0]: expected a Python int, the file has f64[]" in message
    assert "like[1]: expected a Python float, the file has f64[2]" in message
    assert "like[2]: expected a Python bool, the file has i64[]" in message


def test_a_file_that_runs_out_names_every_leaf_left_without_data():
    data = serialised(larix.tree_serialise_leaves, [jnp.ones(2)])
    with pytest.raises(ValueError) as info:
        larix.tree_deserialise_leaves(io.BytesIO(data), [jnp.ones(2), "skipped", jnp.ones(3), 4])
    message = str(info.value)
    assert "like[2]: expected f32[3], but the file has no more arrays" in message
    assert "like[3]: expected a Python int, but the file has no more arrays" in message
    assert "like[0]" not in message and "like[1]" not in message


def test_arrays_left_over_in_a_file_are_reported(tmp_path):
    larix.tree_serialise_leaves(tmp_path / "t.eqx", [1, jnp.ones(2), np.zeros((3, 1), np.int8)])
    with pytest.raises(
        ValueError,
        match=re.escape("after the last leaf of `like`, the file has 2 more array(s): f32[2], i8[3,1]"),
    ):
        larix.tree_deserialise_leaves(tmp_path / "t.eqx", [0])


def test_trailing_bytes_that_are_not_arrays_are_reported(tmp_path):
    larix.tree_serialise_leaves(tmp_path / "t.eqx", [1])
    with open(tmp_path / "t.eqx", "ab") as f:
        f.write(b"junk")
    with pytest.raises(ValueError, match=re.escape("1 more array(s): bytes that are not a .npy array")):
        larix.tree_deserialise_leaves(tmp_path / "t.eqx", [0])


def test_file_objects_are_not_checked_for_leftovers():
    f = io.BytesIO(serialised(larix.tree_serialise_leaves, [1, 2]))
    assert larix.tree_deserialise_leaves(f, [0]) == [1]
    assert np.load(f).item() == 2  # left just after the record that was read


def test_truncated_and_foreign_files_raise_with_the_leaf_in_a_note():
    data = serialised(larix.tree_serialise_leaves, [jnp.ones(100)])
    with pytest.raises(ValueError, match="truncated") as info:
        larix.tree_deserialise_leaves(io.BytesIO(data[:-10]), [jnp.zeros(100)])
    assert "like[0]" in "".join(info.value.__notes__)
    with pytest.raises(ValueError, match=re.escape("not a .npy array")):
        larix.tree_deserialise_leaves(io.BytesIO(b"PK\x03\x04 a zip file"), [jnp.zeros(1)])


def test_unsupported_npy_versions_and_pickles_are_refused():
    f = io.BytesIO()
    np.save(f, np.array([1, "a"], dtype=object), allow_pickle=True)
    f.seek(0)
    with pytest.raises(ValueError, match="pickled"):
        larix.tree_deserialise_leaves(f, [np.zeros(2)])
    header = b"\x93NUMPY\x09\x00"
    with pytest.raises(ValueError, match=re.escape("format version (9, 0)")):
        larix.tree_deserialise_leaves(io.BytesIO(header), [np.zeros(2)])


def test_default_deserialise_filter_spec_raises_value_errors_on_its_own():
    f = io.BytesIO(serialised(larix.tree_serialise_leaves, [jnp.ones(2)]))
    with pytest.raises(
        ValueError, match=re.escape("the file's next array is f32[2], but the leaf it should fill is f32[3]")
    ):
        larix.default_deserialise_filter_spec(f, jnp.zeros(3))
    with pytest.raises(ValueError, match="no more arrays"):
        larix.default_deserialise_filter_spec(f, jnp.zeros(3))


def test_unsavable_leaves_are_all_named(tmp_path):
    tree = {
        "key": jax.random.key(0),
        "objects": np.array([1, "a"], dtype=object),
        "big": 2**70,
        "fine": jnp.ones(1),
    }
    with pytest.raises(TypeError) as info:
        larix.tree_serialise_leaves(tmp_path / "t.eqx", tree)
    message = str(info.value)
    assert "pytree['key']: a PRNG key array" in message and "jax.random.key_data" in message
    assert "pytree['objects']: a NumPy array of Python objects" in message
    assert "pytree['big']: an int that does not fit in 64 bits" in message
    assert "fine" not in message
    assert list(tmp_path.iterdir()) == []


def test_prng_keys_in_like_are_refused_with_the_fix():
    with pytest.raises(TypeError, match=re.escape("cannot load the leaf at like['k']: a PRNG key array")):
        larix.tree_deserialise_leaves(io.BytesIO(b""), {"k": jax.random.key(0)})


def test_filter_spec_that_is_not_a_prefix_names_where():
    with pytest.raises(ValueError, match=re.escape("differs from `pytree` at pytree['a']")):
        larix.tree_serialise_leaves(
            io.BytesIO(), {"a": 1}, filter_spec={"a": [larix.default_serialise_filter_spec]}
        )
    with pytest.raises(ValueError, match=re.escape("differs from `like` at like")):
        larix.tree_deserialise_leaves(
            io.BytesIO(), {"a": 1}, filter_spec={"b": larix.default_deserialise_filter_spec}
        )


@pytest.mark.parametrize("spec", [larix.is_array, True, "not callable"])
def test_predicates_and_bools_as_filter_specs_are_explained(spec):
    with pytest.raises(TypeError, match="not predicates") as info:
        larix.tree_serialise_leaves(io.BytesIO(), [1], filter_spec=spec)
    assert "filter_spec" in str(info.value)
    with pytest.raises(TypeError, match="not predicates"):
        larix.tree_deserialise_leaves(io.BytesIO(), [1], filter_spec=spec)


def test_errors_from_custom_filter_specs_carry_the_leaf_path():
    def broken(f, x):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom") as info:
        larix.tree_serialise_leaves(io.BytesIO(), {"w": 1}, filter_spec=broken)
    assert "pytree['w']" in "".join(info.value.__notes__)
    with pytest.raises(RuntimeError, match="boom") as info:
        larix.tree_deserialise_leaves(io.BytesIO(), {"w": 1}, filter_spec=broken)
    assert "like['w']" in "".join(info.value.__notes__)


# --------------------------------------------------------------------------- atomic saves


def test_a_failed_save_leaves_the_existing_file_untouched(tmp_path):
    path = tmp_path / "model.eqx"
    larix.tree_serialise_leaves(path, [jnp.ones(3), 1])
    before = path.read_bytes()
    written = []

    def fails_midway(f, x):
        if len(written) == 2:
            raise OSError("disk full")
        larix.default_serialise_filter_spec(f, x)
        written.append(x)

    with pytest.raises(OSError, match="disk full"):
        larix.tree_serialise_leaves(path, [jnp.zeros(3), 2, 3], filter_spec=fails_midway)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.eqx"]  # no temporary file left


def test_an_interrupted_save_creates_no_file(tmp_path, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        larix.tree_serialise_leaves(tmp_path / "model.eqx", [1])
    assert list(tmp_path.iterdir()) == []


def test_a_save_over_an_existing_file_replaces_it(tmp_path):
    path = tmp_path / "model.eqx"
    larix.tree_serialise_leaves(path, [jnp.ones(300)])
    larix.tree_serialise_leaves(path, [1])
    assert larix.tree_deserialise_leaves(path, [0]) == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["model.eqx"]


def test_box_modules_round_trip(tmp_path):
    tree = Box(Pair(jnp.ones(2), 3.0, tag="q"), scale=2.0)
    larix.tree_serialise_leaves(Path(tmp_path) / "box", tree)
    assert_identical(larix.tree_deserialise_leaves(Path(tmp_path) / "box", zeros_like_tree(tree)), tree)


def test_deserialise_mismatch_is_a_runtime_error_with_equinox_sentences(tmp_path):
    # Code written for Equinox catches RuntimeError and matches its wording.
    path = tmp_path / "tree.eqx"
    larix.tree_serialise_leaves(path, (jnp.array(1), {"a": jnp.array(1), "b": jnp.array(1)}))
    like = (jnp.array(2), {"a": jnp.array(2, dtype=jnp.float32), "b": jnp.zeros(3, jnp.int32)})
    with pytest.raises(
        RuntimeError,
        match=r"Deserialised leaf at path \(SequenceKey\(idx=1\), DictKey\(key='a'\)\) has changed dtype from float32 in `like` to int32 on disk",
    ) as info:
        larix.tree_deserialise_leaves(path, like)
    assert isinstance(info.value, ValueError)
    assert "DictKey(key='b')) has changed shape from (3,) in `like` to () on disk" in str(info.value)
    larix.tree_serialise_leaves(path, (jnp.array(1), {}))
    with pytest.raises(
        RuntimeError, match=r"Error at leaf with path \(SequenceKey\(idx=1\), DictKey\(key='a'\)\)"
    ):
        larix.tree_deserialise_leaves(path, (jnp.array(2), {"a": jnp.array(2), "b": jnp.array(2)}))
