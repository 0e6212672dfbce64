"""Tests of larix.nn.Pool, MaxPool1d/2d/3d and AvgPool1d/2d/3d (src/larix/nn/_pool.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_helpers import assert_bitwise_equal, check_transforms, close, equinox, key, pickle_roundtrip

import larix

X1 = jnp.array([[1.0, 5.0, 2.0, 0.0, 3.0, 4.0, -1.0]])


def test_max_and_avg_1d_match_numpy():
    assert close(larix.nn.MaxPool1d(2, stride=2)(X1), [[5.0, 2.0, 4.0]])
    assert close(larix.nn.AvgPool1d(3, stride=1)(X1), [np.convolve(X1[0], np.ones(3) / 3, "valid")])


def test_stride_defaults_to_one():
    assert larix.nn.MaxPool1d(2)(X1).shape == (1, 6)
    assert larix.nn.MaxPool2d(2).stride == (1, 1)


def test_padding_and_ceil():
    # Max pooling pads with -inf, average pooling with zeros (counted in the mean).
    assert close(larix.nn.MaxPool1d(2, stride=2, padding=1)(X1), [[1.0, 5.0, 3.0, 4.0]])
    assert close(larix.nn.AvgPool1d(2, stride=2, padding=((1, 0),))(X1), [[0.5, 3.5, 1.5, 1.5]])
    assert larix.nn.MaxPool1d(2, stride=2)(X1).shape == (1, 3)
    ceil = larix.nn.MaxPool1d(2, stride=2, use_ceil=True)(X1)
    assert close(ceil, [[5.0, 2.0, 4.0, -1.0]])


def test_2d_and_3d_shapes():
    x = jnp.arange(2 * 6 * 6.0).reshape(2, 6, 6)
    y = larix.nn.MaxPool2d((2, 3), stride=(2, 3))(x)
    assert y.shape == (2, 3, 2) and close(y[0, 0, 0], x[0, :2, :3].max())
    assert larix.nn.AvgPool3d(2, stride=2)(jnp.ones((1, 4, 4, 4))).shape == (1, 2, 2, 2)


def test_generic_pool():
    pool = larix.nn.Pool(0.0, jax.lax.add, 1, kernel_size=2, stride=2)
    assert close(pool(X1), [[6.0, 2.0, 7.0]])
    assert pool.padding == ((0, 0),) and pool.num_spatial_dims == 1


def test_errors():
    with pytest.raises(ValueError, match=r"MaxPool2d expects `x` of shape \(channels, dim_1, dim_2\)"):
        larix.nn.MaxPool2d(2)(jnp.ones((4, 4)))
    with pytest.raises(ValueError, match="padding"):
        larix.nn.MaxPool1d(2, padding="SAME")
    with pytest.raises(ValueError, match="kernel_size"):
        larix.nn.MaxPool2d((2, 2, 2))


def test_transforms_pickle_repr():
    x = jax.random.normal(key(), (2, 5, 5))
    for pool in (larix.nn.MaxPool2d(2, stride=2), larix.nn.AvgPool2d(3, padding=1)):
        check_transforms(pool, x)
        grad = jax.grad(lambda v, p=pool: jnp.sum(p(v)))(x)
        assert grad.shape == x.shape
    assert repr(pickle_roundtrip(larix.nn.AvgPool1d(2))).startswith("AvgPool1d(")


CASES = [
    ("MaxPool1d", dict(kernel_size=3, stride=2), (2, 9)),
    ("MaxPool1d", dict(kernel_size=2, stride=2, use_ceil=True), (2, 9)),
    ("AvgPool1d", dict(kernel_size=3, stride=2, padding=1, use_ceil=True), (2, 8)),
    ("MaxPool2d", dict(kernel_size=(2, 3), stride=(2, 1), padding=((1, 0), (1, 1))), (1, 6, 7)),
    ("AvgPool2d", dict(kernel_size=2, stride=2, use_ceil=True), (1, 5, 5)),
    ("MaxPool3d", dict(kernel_size=2, stride=2), (1, 4, 4, 5)),
]


@pytest.mark.parametrize("name, kwargs, shape", CASES)
def test_matches_equinox(name, kwargs, shape):
    eqx = equinox()
    x = jax.random.normal(key(1), shape)
    theirs = getattr(eqx.nn, name)(**kwargs)(x)
    ours = getattr(larix.nn, name)(**kwargs)(x)
    assert ours.shape == theirs.shape and close(ours, theirs)


# Average pools of booleans are left out: a sum of booleans is not defined (nor in Equinox).
_LOW_PRECISION_CASES = [
    (dtype, *case)
    for dtype in (jnp.int32, jnp.uint8, jnp.int8, jnp.bool_, jnp.bfloat16)
    for case in CASES
    if not (dtype == jnp.bool_ and case[0].startswith("Avg"))
]


@pytest.mark.parametrize("dtype, name, kwargs, shape", _LOW_PRECISION_CASES)
def test_integer_and_low_precision_inputs_match_equinox(dtype, name, kwargs, shape):
    # Max pooling pads with -inf, which integers cannot hold: the smallest integer stands in.
    eqx = equinox()
    x = (jax.random.normal(key(1), shape) * 50).astype(dtype)
    with jax.numpy_dtype_promotion("strict"):
        ours = getattr(larix.nn, name)(**kwargs)(x)
    assert_bitwise_equal(ours, getattr(eqx.nn, name)(**kwargs)(x))
