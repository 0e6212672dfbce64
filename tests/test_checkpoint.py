"""Tests for larix._checkpoint: filter_checkpoint."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import larix
from conftest import Linear, make_linear


def _block(w, x):
    return jnp.sin(w @ x) ** 2


def test_checkpoint_matches_jax_checkpoint_on_arrays():
    w, x = jnp.arange(6.0).reshape(2, 3) / 4, jnp.array([1.0, 2.0, 3.0])
    ours = jax.grad(lambda w: jnp.sum(larix.filter_checkpoint(_block)(w, x)))(w)
    theirs = jax.grad(lambda w: jnp.sum(jax.checkpoint(_block)(w, x)))(w)
    np.testing.assert_array_equal(ours, theirs)


def test_checkpoint_really_rematerialises():
    w, x = jnp.ones((2, 3)), jnp.ones(3)
    jaxpr = jax.make_jaxpr(jax.grad(lambda w: jnp.sum(larix.filter_checkpoint(_block)(w, x))))(w)
    plain = jax.make_jaxpr(jax.grad(lambda w: jnp.sum(_block(w, x))))(w)
    assert "checkpoint" in str(jaxpr) or "remat" in str(jaxpr)
    assert "checkpoint" not in str(plain) and "remat" not in str(plain)


def test_checkpoint_module_static_arguments_and_outputs():
    m = Linear(jnp.ones((2, 3)), jnp.zeros(2), activation="tanh")

    @larix.filter_checkpoint
    def layer(model, x, act):
        return {"y": act(model(x)), "name": model.activation, "n": 3}

    out = layer(m, jnp.ones(3), jnp.tanh)
    assert out["name"] == "tanh" and out["n"] == 3
    np.testing.assert_allclose(out["y"], jnp.tanh(3.0) * jnp.ones(2), rtol=1e-6)
    grad = larix.filter_grad(lambda model: jnp.sum(layer(model, jnp.ones(3), jnp.tanh)["y"]))(m)
    expected = larix.filter_grad(lambda model: jnp.sum(jnp.tanh(model(jnp.ones(3)))))(m)
    assert type(grad) is Linear and grad.activation == "tanh"
    np.testing.assert_allclose(grad.weight, expected.weight, rtol=1e-6)


def test_checkpointed_module_as_fun_differentiates_its_parameters():
    m = make_linear()
    x = jnp.arange(4.0)
    grad = larix.filter_grad(lambda model: jnp.sum(larix.filter_checkpoint(model)(x) ** 2))(m)
    expected = larix.filter_grad(lambda model: jnp.sum(model(x) ** 2))(m)
    np.testing.assert_allclose(grad.weight, expected.weight, rtol=1e-6)
    np.testing.assert_allclose(grad.bias, expected.bias, rtol=1e-6)


def test_checkpoint_options_and_decorator_forms():
    w, x = jnp.ones((2, 3)), jnp.ones(3)
    policy = jax.checkpoint_policies.dots_saveable
    forms = [
        larix.filter_checkpoint(_block),
        larix.filter_checkpoint()(_block),
        larix.filter_checkpoint(prevent_cse=False)(_block),
        larix.filter_checkpoint(_block, policy=policy),
    ]
    expected = jax.grad(lambda w: jnp.sum(_block(w, x)))(w)
    for f in forms:
        np.testing.assert_allclose(jax.grad(lambda w, f=f: jnp.sum(f(w, x)))(w), expected, rtol=1e-6)
    assert forms[0].__name__ == "_block"
    assert "prevent_cse=False" in str(jax.make_jaxpr(lambda w: forms[2](w, x))(w))


def test_checkpoint_keyword_arguments_and_scan():
    @larix.filter_checkpoint(prevent_cse=False)
    def step(carry, x, *, scale):
        return carry * scale + x

    def run(c):
        out, _ = jax.lax.scan(lambda c, x: (step(c, x, scale=0.5), None), c, jnp.arange(3.0))
        return out

    np.testing.assert_allclose(jax.grad(run)(1.0), 0.125)


def test_checkpoint_error_names_the_keyword_form():
    with pytest.raises(TypeError, match=r"larix.filter_checkpoint takes the function.*prevent_cse=..., policy=..."):
        larix.filter_checkpoint(False)
