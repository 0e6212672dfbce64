"""Tests of larix.nn.AdaptivePool and its 1d/2d/3d variants (src/larix/nn/_adaptive_pool.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from nn_helpers import close, equinox, key, pickle_roundtrip

import larix


def test_bins_larger_first():
    x = jnp.arange(7.0)[None]  # 7 into 3 bins: [0 1 2] [3 4] [5 6]
    assert close(larix.nn.AdaptiveAvgPool1d(3)(x), [[1.0, 3.5, 5.5]])
    assert close(larix.nn.AdaptiveMaxPool1d(3)(x), [[2.0, 4.0, 6.0]])
    assert close(larix.nn.AdaptiveMaxPool1d(7)(x), x)


def test_2d_3d_shapes_and_global_pooling():
    x = jax.random.normal(key(), (3, 9, 10))
    assert larix.nn.AdaptiveAvgPool2d((4, 3))(x).shape == (3, 4, 3)
    assert close(larix.nn.AdaptiveAvgPool2d(1)(x)[:, 0, 0], x.mean(axis=(1, 2)), atol=1e-5)
    assert close(larix.nn.AdaptiveMaxPool3d(1)(x[:, None]).ravel(), x.max(axis=(1, 2)))


def test_generic_and_errors():
    pool = larix.nn.AdaptivePool(2, 1, jnp.min)
    assert close(pool(jnp.array([[3.0, 1.0, 4.0, 0.0]])), [[1.0, 0.0]])
    assert pool.target_shape == (2,)
    with pytest.raises(ValueError, match="at least"):
        larix.nn.AdaptiveAvgPool1d(5)(jnp.ones((1, 3)))
    with pytest.raises(ValueError, match=r"\(channels, dim_1, dim_2\)"):
        larix.nn.AdaptiveAvgPool2d(2)(jnp.ones((4, 4)))
    with pytest.raises(ValueError, match="target_shape"):
        larix.nn.AdaptiveAvgPool2d((2, 2, 2))


def test_transforms_pickle_repr():
    pool = larix.nn.AdaptiveAvgPool2d((2, 3))
    x = jax.random.normal(key(), (2, 5, 7))
    assert close(larix.filter_jit(lambda p, v: p(v))(pool, x), pool(x))
    assert jax.grad(lambda v: jnp.sum(pool(v)))(x).shape == x.shape
    assert larix.filter_vmap(pool)(jnp.stack([x, x])).shape == (2, 2, 2, 3)
    assert repr(pickle_roundtrip(pool)).startswith("AdaptiveAvgPool2d(")


@pytest.mark.parametrize(
    "name, target, shape",
    [("AdaptiveAvgPool1d", 3, (2, 8)), ("AdaptiveMaxPool2d", (2, 3), (1, 7, 8)), ("AdaptiveAvgPool3d", 2, (1, 3, 5, 4))],
)
def test_matches_equinox(name, target, shape):
    eqx = equinox()
    x = jax.random.normal(key(1), shape)
    assert close(getattr(larix.nn, name)(target)(x), getattr(eqx.nn, name)(target)(x), atol=1e-5)
