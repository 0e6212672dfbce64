"""Tests of larix.nn.PReLU (src/larix/nn/_activations.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from nn_helpers import assert_bitwise_equal, check_transforms, close, copy_arrays, equinox, pickle_roundtrip

import larix


def test_prelu_values_and_fields():
    prelu = larix.nn.PReLU()
    assert prelu.negative_slope.shape == () and close(prelu.negative_slope, 0.25)
    assert prelu.negative_slope.dtype == jnp.float32
    assert close(prelu(jnp.array([-4.0, 0.0, 3.0])), jnp.array([-1.0, 0.0, 3.0]))


def test_prelu_per_channel_slopes():
    prelu = larix.nn.PReLU(jnp.array([0.1, 0.2]))
    assert close(prelu(jnp.array([-1.0, -1.0])), jnp.array([-0.1, -0.2]))


def test_prelu_transforms_pickle_repr():
    prelu = larix.nn.PReLU(0.3)
    check_transforms(prelu, jnp.array([-2.0, 1.0, -0.5]))
    grads = larix.filter_grad(lambda m, x: jnp.sum(m(x)))(prelu, jnp.array([-2.0, 1.0, -0.5]))
    assert close(grads.negative_slope, -2.5)
    assert repr(pickle_roundtrip(prelu)) == "PReLU(negative_slope=weak_f32[])"


def test_matches_equinox():
    eqx = equinox()
    theirs = eqx.nn.PReLU(jnp.array([0.1, 0.7]))
    ours = copy_arrays(theirs, larix.nn.PReLU(jnp.zeros(2)))
    x = jnp.array([[-1.0, 2.0], [3.0, -4.0]])
    assert close(ours(x), theirs(x))


def test_prelu_slope_from_a_float_keeps_the_input_dtype():
    # As in Equinox, a Python slope is weakly typed: it does not promote a bf16 input.
    for prelu in (larix.nn.PReLU(), larix.nn.PReLU(1)):
        assert prelu.negative_slope.weak_type
        assert prelu.negative_slope.dtype == jnp.float32
        assert prelu(jnp.array([-1.0, 2.0], jnp.bfloat16)).dtype == jnp.bfloat16
    assert close(larix.nn.PReLU(1)(jnp.array([-3.0])), jnp.array([-3.0]))
    eqx = equinox()
    x = jnp.array([-1.0, 2.0], jnp.bfloat16)
    assert larix.nn.PReLU(0.3)(x).dtype == eqx.nn.PReLU(0.3)(x).dtype


def test_prelu_integer_input_and_strict_promotion_match_equinox():
    # An integer input gives a float output; a per-channel slope broadcasts against the
    # input even under strict dtype and rank promotion (the slope is the layer's own).
    eqx = equinox()
    x = jnp.array([[-1, -2, -3], [-1, 2, 3]])
    for slope in (0.1, jnp.array([0.2, 0.1, 0.1])):
        with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
            ours = larix.nn.PReLU(slope)(x)
        assert_bitwise_equal(ours, eqx.nn.PReLU(slope)(x))
        assert close(ours, jnp.where(x >= 0, x, slope * x))
