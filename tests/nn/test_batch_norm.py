"""Tests of larix.nn.BatchNorm (src/larix/nn/_batch_norm.py)."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_helpers import assert_bitwise_equal, close, equinox, key, pickle_roundtrip, randomise

import larix

BATCHES = [jax.random.normal(key(i), (6, 3, 4)) * (i + 1) + i for i in range(3)]


def _run(bn, x, state, **kwargs):
    call = lambda m, v, s: m(v, s, **kwargs)  # noqa: E731
    return larix.filter_vmap(call, in_axes=(None, 0, None), out_axes=(0, None), axis_name="batch")(bn, x, state)


def _normalise(x, mean, var, eps=1e-5):
    return (x - mean[None, :, None]) / jnp.sqrt(var[None, :, None] + eps)


def test_batch_mode_training_and_inference():
    bn, state = larix.nn.make_with_state(larix.nn.BatchNorm)(3, "batch", momentum=0.9, mode="batch")
    for x in BATCHES:
        y, state = _run(bn, x, state)
        mean, var = x.mean(axis=(0, 2)), x.var(axis=(0, 2))
        assert close(y, _normalise(x, mean, var), atol=1e-4)
    assert int(state.get(bn.batch_counter)) == 3
    running_mean, running_var = state.get(bn.batch_state_index)
    weights = np.array([0.1 * 0.9**2, 0.1 * 0.9, 0.1]) / (1 - 0.9**3)
    expected_mean = sum(w * x.mean(axis=(0, 2)) for w, x in zip(weights, BATCHES))
    expected_var = sum(w * x.var(axis=(0, 2)) for w, x in zip(weights, BATCHES))
    assert close(running_mean / (1 - 0.9**3), expected_mean, atol=1e-4)
    assert close(running_var / (1 - 0.9**3), expected_var, atol=1e-4)
    y, same = _run(larix.nn.inference_mode(bn), BATCHES[0], state)
    assert same is state or larix.tree_equal(same, state)
    assert close(y, _normalise(BATCHES[0], expected_mean, expected_var), atol=1e-4)


def test_batch_mode_inference_before_training_is_identity_like():
    bn, state = larix.nn.make_with_state(larix.nn.BatchNorm)(3, "batch", mode="batch", inference=True)
    y, _ = _run(bn, BATCHES[0], state)
    assert close(y, BATCHES[0] / np.sqrt(1 + 1e-5), atol=1e-5)


def test_ema_mode():
    bn, state = larix.nn.make_with_state(larix.nn.BatchNorm)(3, "batch", momentum=0.9, mode="ema")
    assert bn.mode == "ema" and bool(state.get(bn.ema_first_time_index))
    y, state = _run(bn, BATCHES[0], state)
    first_mean, first_var = BATCHES[0].mean(axis=(0, 2)), BATCHES[0].var(axis=(0, 2))
    assert close(y, _normalise(BATCHES[0], first_mean, first_var), atol=1e-4)
    y, state = _run(bn, BATCHES[1], state)
    mean = 0.9 * first_mean + 0.1 * BATCHES[1].mean(axis=(0, 2))
    var = 0.9 * first_var + 0.1 * BATCHES[1].var(axis=(0, 2))
    # "ema" normalises by the updated running statistics, as in Equinox.
    assert close(y, _normalise(BATCHES[1], mean, var), atol=1e-4)
    assert close(state.get(bn.ema_state_index)[0], mean, atol=1e-5)
    y, _ = _run(bn, BATCHES[2], state, inference=True)
    assert close(y, _normalise(BATCHES[2], mean, var), atol=1e-4)


def test_affine_and_dtype():
    bn, state = larix.nn.make_with_state(larix.nn.BatchNorm)(3, "batch", mode="batch")
    bn = larix.tree_at(lambda m: (m.weight, m.bias), bn, (jnp.array([1.0, 2.0, 3.0]), jnp.array([0.0, 1.0, 0.0])))
    x = BATCHES[1]
    y, _ = _run(bn, x, state)
    expected = _normalise(x, x.mean(axis=(0, 2)), x.var(axis=(0, 2))) * jnp.array([1.0, 2.0, 3.0])[None, :, None]
    assert close(y, expected + jnp.array([0.0, 1.0, 0.0])[None, :, None], atol=1e-4)
    y16, state16 = _run(bn, x.astype(jnp.bfloat16), state)
    assert y16.dtype == jnp.bfloat16 and state16.get(bn.batch_state_index)[0].dtype == jnp.float32
    assert larix.nn.BatchNorm(3, "b", channelwise_affine=False, mode="ema").weight is None


def test_errors_explain():
    bn, state = larix.nn.make_with_state(larix.nn.BatchNorm)(3, "batch", mode="ema")
    with pytest.raises(NameError, match=r"filter_vmap\(.*axis_name='batch'"):
        bn(jnp.ones((3, 2)), state)
    with pytest.raises(ValueError, match=r"BatchNorm\(input_size=3.*\(3, \.\.\.\)"):
        _run(bn, jnp.ones((4, 2, 2)), state)
    with pytest.raises(ValueError, match="mode"):
        larix.nn.BatchNorm(3, "batch", mode="running")
    with pytest.raises(ValueError, match="momentum"):
        larix.nn.BatchNorm(3, "batch", momentum=1.0, mode="ema")


def test_training_step_jit_grad():
    model, state = larix.nn.make_with_state(larix.nn.Sequential)(
        [larix.nn.Linear(4, 3, key=key()), larix.nn.BatchNorm(3, "batch", mode="batch")]
    )

    @larix.filter_jit
    def step(model, state, x):
        def loss(model, state, x):
            y, state = _run(model, x, state)
            return jnp.mean(y**2), state

        (value, state), grads = larix.filter_value_and_grad(loss, has_aux=True)(model, state, x)
        return value, state, grads

    x = jax.random.normal(key(1), (5, 4))
    value, state, grads = step(model, state, x)
    assert bool(jnp.isfinite(value))
    assert grads[0].weight.shape == (3, 4) and int(state.get(model[1].batch_counter)) == 1
    _, state, _ = step(model, state, x)
    assert int(state.get(model[1].batch_counter)) == 2


def test_pickle_repr():
    bn, _ = larix.nn.make_with_state(larix.nn.BatchNorm)(3, "batch", mode="ema")
    text = repr(pickle_roundtrip(bn))
    assert text.startswith("BatchNorm(") and "axis_name='batch'" in text and "mode='ema'" in text


@pytest.mark.parametrize("mode", ["ema", "batch"])
@pytest.mark.parametrize("shape", [(3,), (3, 4), (3, 5, 2)])
@pytest.mark.parametrize("affine", [True, False])
def test_matches_equinox_to_the_bit(mode, shape, affine):
    eqx = equinox()
    kwargs = dict(momentum=0.8, channelwise_affine=affine, mode=mode)
    theirs, their_state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(3, "batch", **kwargs)
    ours, our_state = larix.nn.make_with_state(larix.nn.BatchNorm)(3, "batch", **kwargs)
    theirs, ours = randomise(theirs, 1), randomise(ours, 1)
    if mode == "batch":
        # Equinox starts the running variance at one, larix at zero (see the class
        # docstring); from the same state, the results are the same.
        our_state = our_state.set(ours.batch_state_index, tuple(jax.tree_util.tree_leaves(their_state)[1:]))
    eqx_run = eqx.filter_vmap(
        lambda m, x, s: m(x, s), in_axes=(None, 0, None), out_axes=(0, None), axis_name="batch"
    )
    for i in range(3):
        x = jax.random.normal(key(i), (6, *shape)) * (i + 1) + i
        y_theirs, their_state = eqx_run(theirs, x, their_state)
        y_ours, our_state = _run(ours, x, our_state)
        assert_bitwise_equal(y_ours, y_theirs)
        assert_bitwise_equal(our_state, their_state)
    y_theirs, _ = eqx_run(eqx.nn.inference_mode(theirs), x, their_state)
    y_ours, _ = _run(larix.nn.inference_mode(ours), x, our_state)
    assert_bitwise_equal(y_ours, y_theirs)


def test_mode_left_out_warns_as_in_equinox():
    eqx = equinox()
    with pytest.warns(UserWarning, match=r'no `mode` was given, so it is "ema".*mode="batch"') as caught:
        bn = larix.nn.BatchNorm(3, "batch")
    assert caught[0].filename == __file__  # the warning points at the caller's line
    assert bn.mode == "ema" and bn.ema_state_index is not None
    with pytest.warns(UserWarning, match="mode"):
        eqx.nn.BatchNorm(3, "batch")
    with pytest.warns(UserWarning, match="mode"):
        larix.nn.make_with_state(larix.nn.BatchNorm)(3, "batch", mode="legacy")  # Equinox's default
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        larix.nn.BatchNorm(3, "batch", mode="ema")
        larix.nn.BatchNorm(3, "batch", mode="batch")


def test_integer_input_gives_float_output():
    # Raw pixel values, say: normalised in float32, as in Equinox (not cast back to ints).
    bn, state = larix.nn.make_with_state(larix.nn.BatchNorm)(3, "batch", mode="batch")
    x = jnp.arange(24, dtype=jnp.uint8).reshape(4, 3, 2)
    y, _ = _run(bn, x, state)
    assert y.dtype == jnp.float32
    assert close(y, _normalise(x.astype(jnp.float32), x.mean(axis=(0, 2)), x.var(axis=(0, 2))), atol=1e-4)
