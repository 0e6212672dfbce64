"""Tests for larix._frozen: Frozen parameters and fine-tuning with optax."""

from __future__ import annotations

import pickle

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax
import pytest

import larix
from conftest import Linear, make_linear


class TwoLayer(larix.Module):
    first: Linear | larix.Frozen
    second: Linear

    def __call__(self, x):
        return self.second(jnp.tanh(self.first(x)))


def _model():
    return TwoLayer(make_linear(4, 8, seed=1), make_linear(8, 2, seed=2))


def _loss(model, x, y):
    return jnp.mean((jax.vmap(model)(x) - y) ** 2)


@pytest.mark.parametrize("optimiser", [optax.adam(1e-2), optax.adamw(1e-2, weight_decay=0.1)])
def test_fine_tuning_leaves_the_frozen_layer_bit_identical(optimiser):
    model = _model()
    model = larix.tree_at(lambda m: m.first, model, replace_fn=larix.Frozen)
    first_before = model.first.value
    second_before = model.second
    x = jax.random.normal(jax.random.key(0), (16, 4))
    y = jax.random.normal(jax.random.key(1), (16, 2))
    params = larix.filter(model, larix.is_inexact_array)
    opt_state = optimiser.init(params)

    @jax.jit
    def step(model, opt_state):
        loss, grads = larix.filter_value_and_grad(_loss)(model, x, y)
        updates, opt_state = optimiser.update(grads, opt_state, larix.filter(model, larix.is_inexact_array))
        return larix.apply_updates(model, updates), opt_state, loss

    losses = []
    for _ in range(20):
        model, opt_state, loss = step(model, opt_state)
        losses.append(float(loss))

    assert losses[-1] < losses[0]
    assert isinstance(model.first, larix.Frozen)
    for before, after in zip(jtu.tree_leaves(first_before), jtu.tree_leaves(model.first.value)):
        np.testing.assert_array_equal(np.asarray(before).view(np.uint32), np.asarray(after).view(np.uint32))
    assert not np.allclose(model.second.weight, second_before.weight)
    assert not np.allclose(model.second.bias, second_before.bias)


def test_gradients_are_none_for_frozen_leaves():
    model = larix.tree_at(lambda m: m.first, _model(), replace_fn=larix.Frozen)
    grads = larix.filter_grad(_loss)(model, jnp.ones((2, 4)), jnp.zeros((2, 2)))
    assert grads.first.bits.weight is None and grads.first.bits.bias is None
    assert grads.second.weight is not None
    # The same model without freezing: the trainable layer's gradient is unchanged.
    plain = larix.filter_grad(_loss)(_model(), jnp.ones((2, 4)), jnp.zeros((2, 2)))
    np.testing.assert_allclose(grads.second.weight, plain.second.weight, rtol=1e-6)


def test_frozen_layer_is_used_like_the_layer():
    layer = make_linear()
    frozen = larix.Frozen(layer)
    x = jnp.arange(4.0)
    np.testing.assert_array_equal(frozen(x), layer(x))
    np.testing.assert_array_equal(frozen.weight, layer.weight)
    assert frozen.activation == layer.activation
    np.testing.assert_array_equal(frozen.scaled(x, scale=3.0), layer.scaled(x, scale=3.0))
    assert bool(larix.tree_equal(frozen.value, layer))
    with pytest.raises(AttributeError):
        frozen.no_such_attribute


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16, jnp.bfloat16, jnp.complex64])
def test_value_is_bit_identical_for_every_inexact_dtype(dtype):
    x = (jnp.arange(6.0).reshape(2, 3) / 7 - 0.3).astype(dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        x = x + 1j * x[::-1]
    frozen = larix.Frozen({"x": x, "n": jnp.arange(3), "name": "w"})
    assert not larix.is_inexact_array(frozen.bits["x"]) and larix.is_array(frozen.bits["x"])
    assert frozen.bits["n"] is not None and frozen.bits["name"] == "w"
    thawed = frozen.value
    assert thawed["x"].dtype == x.dtype and thawed["x"].shape == x.shape
    assert bool(jnp.all(thawed["x"] == x))
    np.testing.assert_array_equal(thawed["n"], jnp.arange(3))


def test_numpy_arrays_and_single_arrays_can_be_frozen():
    frozen = larix.Frozen(np.array([0.5, 1.5], dtype=np.float32))
    assert isinstance(frozen.value, jax.Array)
    np.testing.assert_array_equal(frozen.value, [0.5, 1.5])


def test_frozen_under_jit_vmap_and_as_filter_vmap_ensemble():
    frozen = larix.Frozen(make_linear())
    x = jnp.arange(4.0)
    np.testing.assert_allclose(jax.jit(lambda f, x: f(x))(frozen, x), frozen(x), rtol=1e-6)
    ensemble = larix.filter_vmap(lambda k: larix.Frozen(Linear(jax.random.normal(k, (3, 4)), jnp.zeros(3))))(
        jax.random.split(jax.random.key(0), 5)
    )
    assert ensemble.bits.weight.shape == (5, 3, 4)
    out = larix.filter_vmap(lambda f: f(x))(ensemble)
    assert out.shape == (5, 3)


def test_unfreezing_and_pickling():
    layer = make_linear()
    model = larix.tree_at(lambda m: m.first, TwoLayer(larix.Frozen(layer), make_linear(3, 2)), replace_fn=lambda f: f.value)
    assert type(model.first) is Linear
    frozen = larix.Frozen(layer)
    restored = pickle.loads(pickle.dumps(frozen))
    np.testing.assert_array_equal(restored.value.weight, layer.weight)


def test_changing_the_number_of_leaves_inside_is_an_error():
    frozen = larix.Frozen([jnp.ones(2), jnp.ones(3)])
    broken = larix.tree_at(lambda f: f.bits, frozen, [jnp.ones(2, jnp.uint32)])
    with pytest.raises(ValueError, match=r"`bits` has 1 leaves but 2 were frozen.*larix.Frozen\(new_tree\)"):
        broken.value


def test_repr_shows_the_bit_patterns():
    assert repr(larix.Frozen(jnp.ones((2, 3)))) == "Frozen(bits=u32[2,3])"
