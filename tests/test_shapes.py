"""Tests for larix._shapes: filter_eval_shape and filter_make_jaxpr."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest

import larix
from conftest import Linear, make_linear


class Encoder(larix.Module):
    layers: list
    activation: str = larix.field(static=True)

    def __init__(self, sizes, key, activation="tanh"):
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = [
            Linear(jax.random.normal(k, (n_out, n_in)), jnp.zeros(n_out)) for k, n_in, n_out in zip(keys, sizes, sizes[1:])
        ]
        self.activation = activation


# --------------------------------------------------------------------------- filter_eval_shape


def test_eval_shape_matches_jax_on_arrays():
    f = lambda x, y: (x @ y, jnp.sum(x))  # noqa: E731
    x, y = jnp.ones((2, 3)), jnp.ones((3, 4), jnp.int32)
    assert larix.filter_eval_shape(f, x, y) == jax.eval_shape(f, x, y)


def test_eval_shape_of_a_constructor_gives_a_skeleton_without_computing():
    calls = []

    def normal(key, shape):
        calls.append(type(key))
        return jax.random.normal(key, shape)

    class Lazy(larix.Module):
        w: jax.Array
        name: str = larix.field(static=True)

        def __init__(self, key, name):
            self.w = normal(key, (1000, 1000))
            self.name = name

    skeleton = larix.filter_eval_shape(Lazy, jax.random.key(0), "big")
    assert skeleton.w == jax.ShapeDtypeStruct((1000, 1000), jnp.float32)
    assert skeleton.name == "big"
    assert all(issubclass(c, jax.core.Tracer) for c in calls)  # traced, never run


def test_eval_shape_skeleton_of_a_nested_model():
    skeleton = larix.filter_eval_shape(Encoder, [4, 8, 2], jax.random.key(0), activation="relu")
    assert skeleton.activation == "relu"
    assert [layer.weight.shape for layer in skeleton.layers] == [(8, 4), (2, 8)]
    model = Encoder([4, 8, 2], jax.random.key(1), activation="relu")
    real = jtu.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), model)
    assert jtu.tree_structure(skeleton) == jtu.tree_structure(real)
    assert jtu.tree_leaves(skeleton) == jtu.tree_leaves(real)


def test_eval_shape_accepts_shape_dtype_structs_and_module_functions():
    m = make_linear()
    out = larix.filter_eval_shape(m, jax.ShapeDtypeStruct((4,), jnp.float32))
    assert out == jax.ShapeDtypeStruct((3,), jnp.float32)
    out = larix.filter_eval_shape(lambda x, n, s: {"y": x * n, "s": s, "np": np.zeros(2)}, jnp.ones(3), 2, "s")
    assert out == {"y": jax.ShapeDtypeStruct((3,), jnp.float32), "s": "s", "np": jax.ShapeDtypeStruct((2,), jnp.float32)}


def test_eval_shape_keyword_arguments_and_errors_propagate():
    out = larix.filter_eval_shape(lambda x, *, y: x + y, jnp.ones(2), y=jnp.ones(2))
    assert out == jax.ShapeDtypeStruct((2,), jnp.float32)
    with pytest.raises(TypeError, match="add got incompatible shapes"):
        larix.filter_eval_shape(lambda x, y: x + y, jnp.ones(2), jnp.ones(3))


# --------------------------------------------------------------------------- filter_make_jaxpr


def test_make_jaxpr_matches_jax_on_arrays():
    f = lambda x, y: jnp.sin(x) * y  # noqa: E731
    x, y = jnp.ones(3), jnp.ones(3)
    jaxpr, shapes, static = larix.filter_make_jaxpr(f)(x, y)
    assert str(jaxpr) == str(jax.make_jaxpr(f)(x, y))
    assert shapes == jax.ShapeDtypeStruct((3,), jnp.float32)
    assert static is None


def test_make_jaxpr_static_inputs_and_outputs():
    m = make_linear()

    def f(model, x, scale, label):
        return {"y": model(x) * scale, "label": label}

    jaxpr, shapes, static = larix.filter_make_jaxpr(f)(m, jax.ShapeDtypeStruct((4,), jnp.float32), 3.0, "lbl")
    # Inputs: the model's two arrays and x, in tree_leaves order; 3.0 is a constant.
    assert [v.aval.shape for v in jaxpr.jaxpr.invars] == [(3, 4), (3,), (4,)]
    assert "3.0" in str(jaxpr)
    assert shapes == {"y": jax.ShapeDtypeStruct((3,), jnp.float32), "label": None}
    assert static == {"y": None, "label": "lbl"}
    out = jax.core.eval_jaxpr(jaxpr.jaxpr, jaxpr.consts, m.weight, m.bias, jnp.ones(4))
    np.testing.assert_allclose(out[0], 3.0 * m(jnp.ones(4)), rtol=1e-6)


def test_make_jaxpr_closed_over_arrays_become_constants_and_kwargs_are_inputs():
    w = jnp.arange(3.0)
    jaxpr, _, _ = larix.filter_make_jaxpr(lambda x, *, k: x * w + k)(jnp.ones(3), k=jnp.ones(3))
    assert len(jaxpr.jaxpr.invars) == 2
    assert len(jaxpr.consts) == 1 and jaxpr.consts[0] is w
    assert larix.filter_make_jaxpr(jnp.sin).__wrapped__ is jnp.sin
