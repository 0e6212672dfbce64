"""Tests of larix.nn.Linear and larix.nn.Identity (src/larix/nn/_linear.py)."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_helpers import check_transforms, close, equinox, key, pickle_roundtrip, same_arrays

import larix


def test_shapes_and_fields():
    linear = larix.nn.Linear(3, 4, key=key())
    assert linear.weight.shape == (4, 3) and linear.bias.shape == (4,)
    assert (linear.in_features, linear.out_features, linear.use_bias) == (3, 4, True)
    assert linear(jnp.ones(3)).shape == (4,)
    assert larix.nn.Linear(3, 4, use_bias=False, key=key()).bias is None


def test_matches_plain_jax():
    linear = larix.nn.Linear(3, 2, key=key())
    x = jnp.array([1.0, -2.0, 0.5])
    assert close(linear(x), linear.weight @ x + linear.bias)
    no_bias = larix.nn.Linear(3, 2, use_bias=False, key=key())
    assert close(no_bias(x), no_bias.weight @ x)


def test_scalar_features():
    linear = larix.nn.Linear("scalar", "scalar", key=key())
    assert linear.weight.shape == (1, 1) and linear(jnp.array(2.0)).shape == ()
    assert close(linear(2.0), linear.weight[0, 0] * 2.0 + linear.bias[0])
    assert larix.nn.Linear(2, "scalar", key=key())(jnp.ones(2)).shape == ()
    assert larix.nn.Linear("scalar", 3, key=key())(jnp.array(1.0)).shape == (3,)


def test_init_bound_and_statistics():
    linear = larix.nn.Linear(64, 256, key=key(1))
    bound = 1 / np.sqrt(64)
    for array in (linear.weight, linear.bias):
        assert float(jnp.max(jnp.abs(array))) <= bound
    # Uniform on [-b, b): mean 0, variance b^2 / 3.
    assert abs(float(linear.weight.mean())) < 0.05 * bound
    assert abs(float(linear.weight.var()) - bound**2 / 3) < 0.05 * bound**2


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16, jnp.complex64])
def test_dtype(dtype):
    linear = larix.nn.Linear(3, 2, dtype=dtype, key=key())
    assert linear.weight.dtype == dtype and linear.bias.dtype == dtype
    assert linear(jnp.ones(3, dtype)).dtype == dtype
    if dtype == jnp.complex64:
        assert float(jnp.max(jnp.abs(linear.weight.imag))) > 0


def test_default_dtype_is_float32():
    assert larix.nn.Linear(2, 2, key=key()).weight.dtype == jnp.float32


def test_wrong_shape_names_layer_and_shape():
    linear = larix.nn.Linear(3, 2, key=key())
    with pytest.raises(ValueError, match=r"Linear\(in_features=3.*\(3,\).*\(5,\)"):
        linear(jnp.ones(5))
    with pytest.raises(ValueError, match="vmap"):
        linear(jnp.ones((8, 3)))


def test_bad_sizes():
    with pytest.raises(ValueError, match="in_features"):
        larix.nn.Linear(-1, 2, key=key())
    with pytest.raises(ValueError, match="out_features"):
        larix.nn.Linear(2, "vector", key=key())


def test_zero_size_features():
    # No inputs: the output is the bias (drawn from [-1, 1), the fan-in bound is infinite).
    linear = larix.nn.Linear(0, 4, key=key())
    assert linear.weight.shape == (4, 0)
    np.testing.assert_array_equal(linear(jnp.zeros(0)), linear.bias)
    assert float(jnp.max(jnp.abs(linear.bias))) <= 1
    # No outputs: an empty vector.
    assert larix.nn.Linear(4, 0, key=key())(jnp.ones(4)).shape == (0,)
    assert larix.nn.Linear(0, 0, key=key())(jnp.zeros(0)).shape == (0,)
    assert larix.nn.Linear("scalar", 0, key=key())(jnp.array(1.0)).shape == (0,)
    assert larix.nn.Linear(0, "scalar", key=key())(jnp.zeros(0)).shape == ()
    with pytest.raises(ValueError, match=r"\(0,\)"):
        linear(jnp.zeros(1))


def test_key_is_keyword_only_and_required():
    with pytest.raises(TypeError):
        larix.nn.Linear(2, 2)
    assert inspect.signature(larix.nn.Linear).parameters["key"].kind is inspect.Parameter.KEYWORD_ONLY


def test_transforms_pickle_repr():
    linear = larix.nn.Linear(3, 2, key=key())
    check_transforms(linear, jnp.arange(3.0))
    assert same_arrays(pickle_roundtrip(linear), linear)
    assert repr(linear).startswith("Linear(") and "weight=f32[2,3]" in repr(linear)
    assert larix.tree_equal(pickle_roundtrip(linear), linear)


def test_static_fields_are_not_leaves():
    leaves = jax.tree_util.tree_leaves(larix.nn.Linear(3, 2, key=key()))
    assert len(leaves) == 2


def test_identity():
    identity = larix.nn.Identity(1, 2, foo="bar")
    assert identity("x") == "x" and identity(jnp.ones(2), key=key()).shape == (2,)
    assert jax.tree_util.tree_leaves(identity) == []
    assert repr(identity) == "Identity()"


@pytest.mark.parametrize(
    "args",
    [
        (3, 4),
        ("scalar", 2),
        (2, "scalar"),
        ("scalar", "scalar"),
        (3, 4, False),
        (0, 4),
        (4, 0),
        (0, "scalar"),
    ],
)
def test_matches_equinox(args):
    eqx = equinox()
    theirs = eqx.nn.Linear(*args, key=key(3))
    ours = larix.nn.Linear(*args, key=key(3))
    # The same key gives the same initial parameters as Equinox, and the same output.
    assert same_arrays(ours, theirs)
    x = jnp.array(1.5) if args[0] == "scalar" else jax.random.normal(key(5), (args[0],))
    np.testing.assert_array_equal(ours(x), theirs(x))
    assert ours(x).shape == theirs(x).shape
