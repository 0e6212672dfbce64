"""Tests of larix.nn.LayerNorm, RMSNorm and GroupNorm (src/larix/nn/_normalisation.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from nn_helpers import (
    assert_bitwise_equal,
    check_transforms,
    close,
    equinox,
    key,
    pickle_roundtrip,
    randomise,
    same_arrays,
)

import larix

X = jax.random.normal(key(5), (4, 3)) * 3 + 1


def test_layer_norm_matches_plain_jax():
    norm = larix.nn.LayerNorm((4, 3))
    norm = larix.tree_at(lambda m: (m.weight, m.bias), norm, (jnp.full((4, 3), 2.0), jnp.full((4, 3), 0.5)))
    expected = (X - X.mean()) / jnp.sqrt(X.var() + 1e-5) * 2.0 + 0.5
    assert close(norm(X), expected)
    assert norm.weight.shape == norm.bias.shape == (4, 3)


def test_layer_norm_options():
    norm = larix.nn.LayerNorm(3, use_weight=False, use_bias=False)
    assert norm.weight is None and norm.bias is None and norm.shape == (3,)
    y = norm(jnp.array([1.0, 2.0, 6.0]))
    assert close(y.mean(), 0.0) and close(y.var(), 1.0, atol=1e-3)


def test_layer_norm_dtypes():
    # Statistics in float32, output in the input's dtype.
    x = jnp.arange(8.0).astype(jnp.bfloat16)
    assert larix.nn.LayerNorm(8)(x).dtype == jnp.bfloat16
    assert larix.nn.LayerNorm(8, dtype=jnp.bfloat16).weight.dtype == jnp.bfloat16
    assert larix.nn.RMSNorm(8)(x).dtype == jnp.bfloat16


def test_wrong_shape_points_at_vmap():
    norm = larix.nn.LayerNorm(3)
    with pytest.raises(ValueError, match=r"LayerNorm\(shape=\(3,\)\).*vmap"):
        norm(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="RMSNorm"):
        larix.nn.RMSNorm(3)(jnp.ones(4))


def test_state_passes_through():
    state = object()
    y, same = larix.nn.LayerNorm(3)(jnp.ones(3), state)
    assert same is state and y.shape == (3,)
    assert larix.nn.GroupNorm(1, 2)(jnp.ones((2, 2)), state)[1] is state


def test_rms_norm_matches_plain_jax():
    norm = larix.nn.RMSNorm((4, 3), use_bias=False)
    assert norm.bias is None
    assert close(norm(X), X / jnp.sqrt(jnp.mean(X**2) + 1e-5))


def test_group_norm_matches_plain_jax():
    x = jax.random.normal(key(6), (4, 5))
    norm = larix.nn.GroupNorm(2, 4)
    groups = x.reshape(2, 10)
    expected = ((groups - groups.mean(1, keepdims=True)) / jnp.sqrt(groups.var(1, keepdims=True) + 1e-5)).reshape(4, 5)
    assert close(norm(x), expected)
    assert norm.weight.shape == (4,)
    assert larix.nn.GroupNorm(2, channelwise_affine=False)(x).shape == (4, 5)


def test_group_norm_errors():
    with pytest.raises(ValueError, match="divisible"):
        larix.nn.GroupNorm(3, 4)
    with pytest.raises(ValueError, match="channels"):
        larix.nn.GroupNorm(2)
    with pytest.raises(ValueError, match=r"\(4, \.\.\.\)"):
        larix.nn.GroupNorm(2, 4)(jnp.ones((3, 5)))


@pytest.mark.parametrize(
    "layer, x",
    [(larix.nn.LayerNorm((4, 3)), X), (larix.nn.RMSNorm((4, 3)), X), (larix.nn.GroupNorm(2, 4), X)],
    ids=["LayerNorm", "RMSNorm", "GroupNorm"],
)
def test_transforms_pickle_repr(layer, x):
    check_transforms(layer, x)
    assert same_arrays(pickle_roundtrip(layer), layer)
    assert repr(layer).startswith(type(layer).__name__ + "(")


def _norms(lib, shape):
    channels = shape[0]
    return [
        lib.nn.LayerNorm(shape),
        lib.nn.LayerNorm(shape, use_weight=False),
        lib.nn.RMSNorm(shape),
        lib.nn.RMSNorm(shape, use_bias=False),
        lib.nn.GroupNorm(2, channels),
        lib.nn.GroupNorm(channels, channels),
        lib.nn.GroupNorm(1, channels, channelwise_affine=False),
    ]


@pytest.mark.parametrize("shape", [(8,), (6, 5), (4, 3, 7), (12, 2, 3, 2)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_matches_equinox_to_the_bit(shape, dtype):
    # Same operations in the same order as Equinox: identical results, not just close.
    eqx = equinox()
    x = (jax.random.normal(key(7), shape) * 3 + 1).astype(dtype)
    for i, (theirs, ours) in enumerate(zip(_norms(eqx, shape), _norms(larix, shape))):
        theirs, ours = randomise(theirs, i), randomise(ours, i)
        assert same_arrays(ours, theirs)
        assert_bitwise_equal(ours(x), theirs(x))
        assert_bitwise_equal(
            larix.filter_jit(lambda m, v: m(v))(ours, x), eqx.filter_jit(lambda m, v: m(v))(theirs, x)
        )
