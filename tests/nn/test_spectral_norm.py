"""Tests of larix.nn.SpectralNorm (src/larix/nn/_spectral_norm.py)."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_helpers import assert_bitwise_equal, close, equinox, fresh, key, pickle_roundtrip, same_arrays

import larix

make = larix.nn.make_with_state(larix.nn.SpectralNorm)


def _sigma(weight):
    return np.linalg.svd(np.asarray(weight).reshape(weight.shape[0], -1), compute_uv=False)[0]


def test_fields_state_and_initial_estimate():
    linear = larix.nn.Linear(5, 4, key=key())
    normed, state = make(linear, key=key(1))
    assert (normed.weight_name, normed.num_power_iterations, normed.eps, normed.inference) == ("weight", 1, 1e-12, False)
    assert isinstance(normed, larix.nn.StatefulLayer) and normed.is_stateful()
    u, v = state.get(normed.uv_index)
    assert u.shape == (4,) and v.shape == (5,) and u.dtype == v.dtype == jnp.float32
    assert sorted(larix.split(state)[1]) == ["uv_index.0", "uv_index.1"]
    # 15 power iterations at construction: u and v are unit vectors, and u^T W v is already
    # close to the largest singular value.
    assert close(jnp.linalg.norm(u), 1.0) and close(jnp.linalg.norm(v), 1.0)
    assert close(u @ linear.weight @ v, _sigma(linear.weight), rtol=1e-3)
    conv, conv_state = make(larix.nn.Conv2d(2, 3, 3, key=key(2)), key=key(1))
    assert [a.shape for a in conv_state.get(conv.uv_index)] == [(3,), (18,)]
    bf16, bf16_state = make(larix.nn.Linear(3, 2, dtype=jnp.bfloat16, key=key()), key=key(1))
    assert all(a.dtype == jnp.bfloat16 for a in bf16_state.get(bf16.uv_index))


def test_output_uses_the_normalised_weight():
    linear = larix.nn.Linear(5, 4, key=key())
    normed, state = make(linear, num_power_iterations=3, key=key(1))
    x = jnp.linspace(-1.0, 2.0, 5)
    y, state = normed(x, state)
    assert close(y, linear.weight @ x / _sigma(linear.weight) + linear.bias, rtol=1e-4, atol=1e-5)
    # The normalised weight has spectral norm 1.
    u, v = state.get(normed.uv_index)
    assert close(_sigma(linear.weight / (u @ linear.weight @ v)), 1.0, rtol=1e-4)


def test_training_updates_state_and_inference_does_not():
    # A random start, not yet converged, so that an update is visible.
    linear = larix.nn.Linear(6, 6, key=key(3))
    normed, state = make(linear, key=key(4))
    state = state.set(normed.uv_index, (jnp.ones(6) / np.sqrt(6), jnp.ones(6) / np.sqrt(6)))
    x = jnp.ones(6)
    _, trained = normed(x, fresh(state))
    assert not same_arrays(trained, state)
    for frozen in (
        normed(x, fresh(state), inference=True)[1],
        larix.nn.inference_mode(normed)(x, fresh(state))[1],
    ):
        assert same_arrays(frozen, state)
    fixed, fixed_state = make(linear, num_power_iterations=0, key=key(4))
    assert same_arrays(fixed(x, fresh(fixed_state))[1], fixed_state)
    # inference=False overrides an inference-mode layer.
    assert not same_arrays(larix.nn.inference_mode(normed)(x, fresh(state), inference=False)[1], state)


def test_gradients_do_not_flow_through_the_power_iteration():
    linear = larix.nn.Linear(4, 3, key=key(5))
    normed, state = make(linear, key=key(6))
    x = jnp.arange(4.0)
    grads = larix.filter_grad(lambda m, s: jnp.sum(m(x, s)[0] ** 2))(normed, fresh(state))
    u, v = normed(x, fresh(state))[1].get(normed.uv_index)

    def reference(weight):
        sigma = u @ weight @ v  # u and v as constants
        return jnp.sum((weight / sigma @ x + linear.bias) ** 2)

    assert close(grads.layer.weight, jax.grad(reference)(linear.weight), rtol=1e-4, atol=1e-5)


def test_transforms_sequential_and_pickle():
    model, state = larix.nn.make_with_state(larix.nn.Sequential)(
        [larix.nn.SpectralNorm(larix.nn.Linear(3, 4, key=key(7)), key=key(8)), larix.nn.Lambda(jax.nn.relu)]
    )
    xs = jax.random.normal(key(9), (5, 3))
    expected_state = model(xs[0], fresh(state))[1]
    # A batch shares one state: its update does not depend on the inputs.
    batched = larix.filter_vmap(lambda m, x, s: m(x, s), in_axes=(None, 0, None), out_axes=(0, None))
    ys, new_state = larix.filter_jit(batched)(model, xs, state)
    assert ys.shape == (5, 4) and close(ys[0], model(xs[0], fresh(state))[0])
    assert close(new_state.get(model.layers[0].uv_index)[0], expected_state.get(model.layers[0].uv_index)[0])
    normed, state = make(larix.nn.Linear(3, 2, key=key()), key=key(1))
    restored, restored_state = pickle_roundtrip((normed, state))
    assert close(restored(jnp.ones(3), restored_state)[0], normed(jnp.ones(3), state)[0])
    assert repr(normed).startswith("SpectralNorm(") and "num_power_iterations=1" in repr(normed)


def test_bad_arguments():
    linear = larix.nn.Linear(3, 2, key=key())
    with pytest.raises(ValueError, match=r"SpectralNorm: the layer Linear has no array field 'w'.*\['weight', 'bias'\]"):
        larix.nn.SpectralNorm(linear, "w", key=key())
    with pytest.raises(TypeError, match=r"`Linear.weight` must be a real floating-point array.*complex64"):
        larix.nn.SpectralNorm(larix.nn.Linear(3, 2, dtype=jnp.complex64, key=key()), key=key())
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match=r"`num_power_iterations` must be an int >= 0"):
            larix.nn.SpectralNorm(linear, num_power_iterations=bad, key=key())
    for bad in (-1e-3, "small", None):
        with pytest.raises(ValueError, match=r"`eps` must be a number >= 0"):
            larix.nn.SpectralNorm(linear, eps=bad, key=key())
    with pytest.raises(TypeError):
        larix.nn.SpectralNorm(linear)
    assert inspect.signature(larix.nn.SpectralNorm).parameters["key"].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize(("layer", "eps", "iterations"), [("linear", 1e-12, 1), ("linear", 0.5, 3), ("conv2d", 1e-12, 2)])
def test_matches_equinox(layer, eps, iterations):
    eqx = equinox()

    def build(lib):
        inner = lib.nn.Linear(5, 4, key=key(10)) if layer == "linear" else lib.nn.Conv2d(2, 3, 3, key=key(10))
        return lib.nn.make_with_state(lib.nn.SpectralNorm)(inner, "weight", iterations, eps, key=key(11))

    theirs, their_state = build(eqx)
    ours, our_state = build(larix)
    # The same keys give the same parameters and initial state, to the bit.
    assert same_arrays(ours, theirs) and same_arrays(our_state, their_state)

    x = jnp.linspace(-1, 1, 5) if layer == "linear" else jax.random.normal(key(12), (2, 6, 6))
    for _ in range(3):  # identical outputs and states, to the bit
        their_y, their_state = theirs(x, their_state)
        our_y, our_state = ours(x, our_state)
        assert_bitwise_equal(our_y, their_y)
        assert_bitwise_equal(our_state, their_state)
    assert_bitwise_equal(
        ours(x, fresh(our_state), inference=True)[0], theirs(x, fresh(their_state), inference=True)[0]
    )
    jitted = larix.filter_jit(lambda m, s: m(x, s)), eqx.filter_jit(lambda m, s: m(x, s))
    assert_bitwise_equal(jitted[0](ours, fresh(our_state)), jitted[1](theirs, fresh(their_state)))
    their_grads = eqx.filter_grad(lambda m, s: jnp.sum(m(x, s)[0] ** 2))(theirs, fresh(their_state))
    our_grads = larix.filter_grad(lambda m, s: jnp.sum(m(x, s)[0] ** 2))(ours, our_state)
    assert close(our_grads.layer.weight, their_grads.layer.weight, rtol=1e-4, atol=1e-4)
