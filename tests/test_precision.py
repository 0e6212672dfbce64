"""Mixed precision with larix.tree_cast."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import larix


class Net(larix.Module):
    layers: tuple
    steps: Any  # an integer array: never cast
    name: str = larix.field(static=True, default="net")

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


def _net() -> Net:
    k1, k2 = jax.random.split(jax.random.key(0))
    return Net((larix.nn.Linear(4, 8, key=k1), larix.nn.Linear(8, 1, key=k2)), jnp.array(3))


def test_only_floating_arrays_are_cast_by_default():
    cast = larix.tree_cast(_net(), jnp.bfloat16)
    assert cast.layers[0].weight.dtype == jnp.bfloat16
    assert cast.steps.dtype == _net().steps.dtype
    assert cast.name == "net"
    assert jax.tree_util.tree_structure(cast) == jax.tree_util.tree_structure(_net())


def test_a_filter_spec_chooses_what_is_cast():
    cast = larix.tree_cast(_net(), jnp.bfloat16, filter_spec=larix.by_path("layers.0.**"))
    assert cast.layers[0].weight.dtype == jnp.bfloat16
    assert cast.layers[1].weight.dtype == jnp.float32
    with pytest.raises(TypeError, match=r"tree\['name'\], a str, which has no dtype to cast"):
        larix.tree_cast({"name": "x"}, jnp.bfloat16, filter_spec=True)


def test_float32_master_parameters_train_with_bfloat16_compute():
    model = _net()
    optimiser = optax.adam(1e-2)
    state = optimiser.init(larix.filter(model, larix.is_inexact_array))
    x = jax.random.normal(jax.random.key(1), (16, 4))
    y = jnp.sum(x, axis=1, keepdims=True)

    def loss(model, x, y):
        fast = larix.tree_cast(model, jnp.bfloat16)
        pred = jax.vmap(fast)(x.astype(jnp.bfloat16))
        return jnp.mean((pred.astype(jnp.float32) - y) ** 2)

    @larix.filter_jit
    def step(model, state, x, y):
        value, grads = larix.filter_value_and_grad(loss)(model, x, y)
        updates, state = optimiser.update(grads, state, model)
        return larix.apply_updates(model, updates), state, value

    jaxpr = str(larix.filter_make_jaxpr(loss)(model, x, y)[0])
    assert "bf16[16,8]" in jaxpr  # the matmuls run in bfloat16
    first = None
    for _ in range(30):
        model, state, value = step(model, state, x, y)
        first = value if first is None else first
    assert model.layers[0].weight.dtype == jnp.float32  # the master copy stays float32
    assert float(value) < 0.5 * float(first)
    np.testing.assert_array_equal(model.steps, 3)
