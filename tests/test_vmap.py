"""Tests for larix._vmap: filter_vmap and the axis specs it shares with filter_pmap."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest
from hypothesis import given

import larix
from conftest import Linear, Pair, make_linear, pytrees

# --------------------------------------------------------------------------- against jax.vmap


def test_matches_jax_vmap_on_arrays():
    f = lambda x, y: jnp.sin(x) @ y  # noqa: E731
    x, y = jnp.arange(24.0).reshape(2, 3, 4), jnp.arange(4.0)
    np.testing.assert_allclose(
        larix.filter_vmap(f, in_axes=(1, None))(x, y), jax.vmap(f, in_axes=(1, None))(x, y), rtol=1e-6
    )
    np.testing.assert_allclose(
        larix.filter_vmap(f, in_axes=(0, None), out_axes=1)(x, y),
        jax.vmap(f, in_axes=(0, None), out_axes=1)(x, y),
        rtol=1e-6,
    )


def test_default_maps_arrays_and_broadcasts_everything_else():
    def f(x, scale, name, np_array):
        assert name == "n" and scale == 2.0
        return x * scale + np_array

    out = larix.filter_vmap(f)(jnp.arange(3.0), 2.0, "n", np.ones((3, 2)))
    np.testing.assert_allclose(out, 2 * jnp.arange(3.0)[:, None] + np.ones((3, 2)))


def test_module_as_fun_and_bound_method():
    m = make_linear()
    xs = jnp.arange(20.0).reshape(5, 4)
    np.testing.assert_allclose(larix.filter_vmap(m)(xs), jax.vmap(m)(xs), rtol=1e-6)
    np.testing.assert_allclose(larix.filter_vmap(m.scaled)(xs, 3.0), jax.vmap(lambda x: m.scaled(x, 3.0))(xs), rtol=1e-6)
    # The wrapper holds the model's arrays as its leaves.
    assert all(a is b for a, b in zip(jtu.tree_leaves(larix.filter_vmap(m)), jtu.tree_leaves(m)))


def test_ensemble_of_models():
    def make(key):
        k1, k2 = jax.random.split(key)
        return Linear(jax.random.normal(k1, (3, 4)), jax.random.normal(k2, (3,)), activation="relu")

    keys = jax.random.split(jax.random.key(0), 8)
    ensemble = larix.filter_vmap(make)(keys)
    assert type(ensemble) is Linear and ensemble.activation == "relu"
    assert ensemble.weight.shape == (8, 3, 4) and ensemble.bias.shape == (8, 3)
    np.testing.assert_array_equal(ensemble.weight[2], make(keys[2]).weight)

    x = jnp.arange(4.0)
    same_input = larix.filter_vmap(lambda m, x: m(x), in_axes=(larix.if_array(0), None))(ensemble, x)
    np.testing.assert_allclose(same_input[5], make(keys[5])(x), rtol=1e-5)
    per_member = larix.filter_vmap(lambda m, x: m(x))(ensemble, jnp.ones((8, 4)))
    assert per_member.shape == (8, 3)


@given(pytrees)
def test_identity_returns_the_batched_tree(tree):
    batched = jtu.tree_map(lambda x: np.stack([x, x]) if larix.is_array(x) else x, tree)
    out = larix.filter_vmap(lambda t: t, axis_size=2)(batched)
    assert jtu.tree_structure(out) == jtu.tree_structure(batched)
    for got, want in zip(jtu.tree_leaves(out), jtu.tree_leaves(batched)):
        if larix.is_array(want):
            assert got.shape == want.shape
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want).astype(got.dtype))
        else:
            assert got is want


# --------------------------------------------------------------------------- axis specs


def test_in_axes_prefix_and_callables():
    tree = {"a": jnp.ones((3, 2)), "b": jnp.arange(2.0)}
    out = larix.filter_vmap(lambda t: t["a"] + t["b"], in_axes=({"a": 0, "b": None},))(tree)
    assert out.shape == (3, 2)
    out = larix.filter_vmap(lambda t: t, in_axes=lambda x: 1 if x.ndim == 2 else None)(tree)
    assert out["a"].shape == (2, 3) and out["b"].shape == (2, 2)  # the unmapped array is broadcast


def test_in_axes_dict_names_parameters_and_keyword_arguments():
    def f(x, y, *rest, z=None, **extra):
        return x + y + sum(rest) + z + extra["w"]

    one, row = jnp.ones(2), jnp.ones((3, 2))
    out = larix.filter_vmap(f, in_axes={"y": None, "rest": None, "extra": None})(row, one, one, z=row, w=one)
    assert out.shape == (3, 2)
    np.testing.assert_allclose(out, 5 * jnp.ones((3, 2)))


def test_keyword_arguments_are_mapped_by_default():
    out = larix.filter_vmap(lambda x, *, y: x * y)(jnp.arange(3.0), y=jnp.arange(3.0))
    np.testing.assert_allclose(out, jnp.arange(3.0) ** 2)
    out = larix.filter_vmap(lambda x, *, y: x * y, in_axes=(0,))(jnp.arange(3.0), y=jnp.arange(3.0))
    np.testing.assert_allclose(out, jnp.arange(3.0) ** 2)
    out = larix.filter_vmap(lambda x, *, y: x * y, in_axes={"y": None})(jnp.arange(3.0), y=jnp.array(2.0))
    np.testing.assert_allclose(out, 2 * jnp.arange(3.0))


def test_out_axes_non_arrays_and_unbatched_arrays():
    def f(x, y):
        return {"batched": x, "fixed": y * 2, "name": "n", "count": 3}

    out = larix.filter_vmap(f, in_axes=(0, None), out_axes={"batched": -1, "fixed": None, "name": None, "count": None})(
        jnp.ones((3, 2)), jnp.ones(4)
    )
    assert out["batched"].shape == (2, 3) and out["fixed"].shape == (4,)
    assert out["name"] == "n" and out["count"] == 3
    # With the default out_axes, an array that does not depend on the batch is broadcast.
    assert larix.filter_vmap(f, in_axes=(0, None))(jnp.ones((3, 2)), jnp.ones(4))["fixed"].shape == (3, 4)


def test_axis_name_and_axis_size():
    out = larix.filter_vmap(lambda x: x - jax.lax.pmean(x, "batch"), axis_name="batch")(jnp.arange(4.0))
    np.testing.assert_allclose(out, jnp.arange(4.0) - 1.5)
    out = larix.filter_vmap(lambda s: jnp.full(2, s), axis_size=3)(5.0)
    np.testing.assert_array_equal(out, 5 * jnp.ones((3, 2)))


def test_decorator_forms():
    @larix.filter_vmap
    def f(x):
        return x * 2

    @larix.filter_vmap(in_axes=(None, 0))
    def g(x, y):
        return x + y

    np.testing.assert_array_equal(f(jnp.arange(3)), 2 * jnp.arange(3))
    np.testing.assert_array_equal(g(jnp.array(1), jnp.arange(3)), 1 + jnp.arange(3))
    assert f.__name__ == "f"


def test_nested_with_jit_and_grad():
    m = make_linear()
    xs = jnp.arange(12.0).reshape(3, 4)
    loss = lambda model, x: jnp.sum(model(x) ** 2)  # noqa: E731
    per_example = jax.jit(larix.filter_vmap(larix.filter_grad(loss), in_axes=(None, 0)))(m, xs)
    expected = jax.jit(jax.vmap(jax.grad(lambda p, x: jnp.sum((p[0] @ x + p[1]) ** 2)), in_axes=(None, 0)))(
        (m.weight, m.bias), xs
    )
    np.testing.assert_allclose(per_example.weight, expected[0], rtol=1e-5)
    checkpointed = jax.jit(
        larix.filter_vmap(
            larix.filter_grad(lambda model, x: jnp.sum(larix.filter_checkpoint(model)(x) ** 2)), in_axes=(None, 0)
        )
    )(m, xs)
    np.testing.assert_allclose(checkpointed.weight, expected[0], rtol=1e-5)
    twice = larix.filter_vmap(larix.filter_vmap(lambda x, s: x * s, in_axes=(0, None)))(jnp.ones((2, 3)), jnp.arange(2.0))
    np.testing.assert_allclose(twice, jnp.arange(2.0)[:, None] * jnp.ones((2, 3)))


def test_composes_with_filter_jit_without_retracing():
    traces = []

    def loss(model, x):
        traces.append(None)
        return jnp.sum(model(x) ** 2)

    step = larix.filter_jit(larix.filter_vmap(larix.filter_grad(loss), in_axes=(None, 0)))
    m = make_linear()
    for i in range(3):
        grads = step(m, jnp.full((5, 4), float(i)))
    assert len(traces) == 1
    assert type(grads) is Linear and grads.weight.shape == (5, 3, 4)


# --------------------------------------------------------------------------- errors


def test_error_sizes_differ_names_both_arguments():
    with pytest.raises(ValueError, match=r"same size, but args\[0\]\.a has 3, args\[1\] has 2"):
        larix.filter_vmap(lambda p, y: p.a + y)(Pair(jnp.ones(3), "b"), jnp.ones(2))
    with pytest.raises(ValueError, match=r"same size \(axis_size=4\), but args\[0\] has 3"):
        larix.filter_vmap(lambda x: x, axis_size=4)(jnp.ones(3))


def test_error_mapping_a_non_array():
    with pytest.raises(ValueError, match=r"in_axes maps args\[1\] \(str 'a'\) over axis 0.*only arrays.*None"):
        larix.filter_vmap(lambda x, s: x, in_axes=0)(jnp.ones(3), "a")


def test_error_axis_out_of_range():
    with pytest.raises(ValueError, match=r"maps kwargs\['y'\] over axis 2, but it has shape \(3,\)"):
        larix.filter_vmap(lambda x, y: x, in_axes=2)(jnp.ones((3, 1, 2)), y=jnp.ones(3))


def test_error_nothing_mapped():
    with pytest.raises(ValueError, match=r"nothing to map over.*axis_size=N"):
        larix.filter_vmap(lambda x: x)("a")


def test_error_bad_specs():
    with pytest.raises(ValueError, match=r"in_axes\[1\] is 'x'.*ints.*None.*callables"):
        larix.filter_vmap(lambda x: x, in_axes=(0, "x"))
    with pytest.raises(ValueError, match=r"out_axes is 1.5"):
        larix.filter_vmap(lambda x: x, out_axes=1.5)
    with pytest.raises(TypeError, match=r"a callable in in_axes returned 'a' for args\[0\]"):
        larix.filter_vmap(lambda x: x, in_axes=lambda leaf: "a")(jnp.ones(3))
    with pytest.raises(ValueError, match=r"in_axes has 3 entries.*2 positional arguments"):
        larix.filter_vmap(lambda x, y: x, in_axes=(0, None, 0))(jnp.ones(3), 1)
    with pytest.raises(ValueError, match=r"in_axes names 'z', which is not a parameter.*parameters are x, y"):
        larix.filter_vmap(lambda x, y: x, in_axes={"z": 0})(jnp.ones(3), 1)
    with pytest.raises(ValueError, match=r"in_axes must be a pytree prefix of the arguments, but at args\[0\]"):
        larix.filter_vmap(lambda t: t, in_axes=({"a": 0},))({"b": jnp.ones(3)})
    with pytest.raises(TypeError, match=r"larix.filter_vmap takes the function"):
        larix.filter_vmap(0)


def test_error_output_specs():
    with pytest.raises(ValueError, match=r"out_axes asks for output\[1\] \(str 'a'\) on axis 0.*returned once"):
        larix.filter_vmap(lambda x: (x, "a"), out_axes=0)(jnp.ones(3))
    with pytest.raises(ValueError, match=r"out_axes gives output\['y'\] the axis None.*depends on the mapped inputs"):
        larix.filter_vmap(lambda x: {"a": x, "y": x}, out_axes={"a": 0, "y": None})(jnp.ones(3))
    with pytest.raises(ValueError, match=r"puts the batch axis of output at 3, but the batched output has only 2"):
        larix.filter_vmap(lambda x: x, out_axes=3)(jnp.ones((3, 2)))
    with pytest.raises(ValueError, match=r"out_axes must be a pytree prefix of the output"):
        larix.filter_vmap(lambda x: x, out_axes=(0, 0))(jnp.ones(3))


def test_out_axes_for_python_numbers_broadcasts_them():
    # As in Equinox: an int axis for a Python number makes it an array, the same for every
    # element of the batch; an axis of None returns it once.
    assert larix.filter_vmap(lambda x: x, out_axes=None, axis_size=5)(1) == 1
    np.testing.assert_array_equal(
        larix.filter_vmap(lambda x: x, out_axes=0, axis_size=5)(1), jnp.ones(5, int)
    )
    out = larix.filter_vmap(lambda x: (x, [2, 3.0]), out_axes=(0, [0, None]))(jnp.ones((2, 3)))
    assert out[1][0].tolist() == [2, 2] and out[1][1] == 3.0
    with pytest.raises(TypeError, match=r"only arrays \(and Python numbers\) can be batched"):
        larix.filter_vmap(lambda x: (x, "a"), out_axes=0)(jnp.ones(3))


def test_in_axes_naming_a_parameter_left_at_its_default_raises():
    out = larix.filter_vmap(lambda x, y=1: x + y, in_axes={"x": 0})(jnp.ones(3))
    np.testing.assert_array_equal(out, 2 * jnp.ones(3))
    for spec in (0, None):
        with pytest.raises(ValueError, match=r"in_axes names 'y', but the call did not pass it"):
            larix.filter_vmap(lambda x, y=1: x, in_axes={"y": spec})(jnp.ones(3))
