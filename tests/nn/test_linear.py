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


# Initialisers and dtypes (issue 9): the defaults are Equinox's to the bit; a custom
# initialiser gets the key, shape and `param_dtype`; `dtype` is the computation dtype.


@pytest.mark.parametrize("sizes", [(3, 4), ("scalar", 2), (5, "scalar"), (0, 3), (2, 0)])
@pytest.mark.parametrize("dtype", [None, jnp.float16, jnp.complex64])
def test_default_init_is_equinox_bit_for_bit(sizes, dtype):
    eqx = equinox()
    ours = larix.nn.Linear(*sizes, dtype=dtype, key=key(3))
    theirs = eqx.nn.Linear(*sizes, dtype=dtype, key=key(3))
    np.testing.assert_array_equal(ours.weight, theirs.weight, strict=True)
    np.testing.assert_array_equal(ours.bias, theirs.bias, strict=True)


def test_custom_initialisers_get_key_shape_and_param_dtype():
    calls = []

    def recording(init):
        def wrapped(k, shape, dtype):
            calls.append((k, shape, jnp.dtype(dtype)))
            return init(k, shape, dtype)

        return wrapped

    linear = larix.nn.Linear(
        3,
        4,
        dtype=jnp.bfloat16,
        param_dtype=jnp.float32,
        weight_init=recording(jax.nn.initializers.lecun_normal()),
        bias_init=recording(jax.nn.initializers.zeros),
        key=key(1),
    )
    assert [(shape, dtype) for _, shape, dtype in calls] == [((4, 3), jnp.float32), ((4,), jnp.float32)]
    weight_key, bias_key = jax.random.split(key(1))
    assert jnp.array_equal(jax.random.key_data(calls[0][0]), jax.random.key_data(weight_key))
    assert jnp.array_equal(jax.random.key_data(calls[1][0]), jax.random.key_data(bias_key))
    assert jnp.array_equal(linear.weight, jax.nn.initializers.lecun_normal()(weight_key, (4, 3), jnp.float32))
    assert jnp.array_equal(linear.bias, jnp.zeros(4))
    # Only the initialiser given is replaced: the other keeps Equinox's default.
    half = larix.nn.Linear(3, 4, bias_init=jax.nn.initializers.ones, key=key(1))
    assert jnp.array_equal(half.weight, larix.nn.Linear(3, 4, key=key(1)).weight)
    assert jnp.array_equal(half.bias, jnp.ones(4))


def test_initialiser_of_the_wrong_shape_or_dtype_is_named():
    with pytest.raises(ValueError, match=r"Linear: `weight_init` must return .* float32\[4, 3\], it returned float32\[3, 4\]"):
        larix.nn.Linear(3, 4, weight_init=lambda k, s, d: jnp.zeros(s[::-1], d), key=key())
    with pytest.raises(ValueError, match=r"`bias_init` .* asked for float32\[4\], it returned int32\[4\]"):
        larix.nn.Linear(3, 4, bias_init=lambda k, s, d: jnp.zeros(s, jnp.int32), key=key())


def test_param_dtype_defaults_to_dtype_as_in_equinox():
    linear = larix.nn.Linear(3, 2, dtype=jnp.bfloat16, key=key())
    assert linear.weight.dtype == linear.bias.dtype == jnp.bfloat16 and linear.dtype == jnp.bfloat16
    assert linear(jnp.ones(3, jnp.bfloat16)).dtype == jnp.bfloat16
    assert larix.nn.Linear(3, 2, param_dtype=jnp.float16, key=key()).weight.dtype == jnp.float16


def test_dtype_is_the_computation_dtype():
    # Flax's mixed precision: float32 parameters, bfloat16 arithmetic.
    linear = larix.nn.Linear(3, 2, dtype=jnp.bfloat16, param_dtype=jnp.float32, key=key())
    assert linear.weight.dtype == jnp.float32
    x = jnp.array([0.5, -1.0, 2.0])
    y = linear(x)
    assert y.dtype == jnp.bfloat16
    expected = linear.weight.astype(jnp.bfloat16) @ x.astype(jnp.bfloat16) + linear.bias.astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(expected, np.float32))
    # dtype=None: the common type of the input and the parameters.
    low = larix.nn.Linear(3, 2, param_dtype=jnp.bfloat16, key=key())
    assert low(x).dtype == jnp.float32 and low(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_mixed_dtypes_work_under_strict_promotion():
    linear = larix.nn.Linear(3, 2, param_dtype=jnp.bfloat16, key=key())
    x = jnp.ones(3, jnp.float32)
    with jax.numpy_dtype_promotion("standard"):
        expected = linear(x)
    with jax.numpy_dtype_promotion("strict"):
        got = larix.filter_jit(lambda m, x: m(x))(linear, x)
    assert got.dtype == jnp.float32 and jnp.array_equal(got, expected)


def test_default_path_adds_no_casts_to_the_jaxpr():
    # Same dtypes everywhere: the jaxpr is a dot and an add, exactly as Equinox's.
    linear = larix.nn.Linear(3, 2, key=key())
    primitives = [e.primitive.name for e in jax.make_jaxpr(lambda m, x: m(x))(linear, jnp.ones(3)).eqns]
    assert primitives == ["dot_general", "add"]


@pytest.mark.filterwarnings("ignore:Explicitly requested dtype")
def test_float64_without_x64_is_float32_as_in_equinox():
    # JAX gives float32 for float64 when x64 is off (with a warning): not an initialiser error.
    ours = larix.nn.Linear(3, 2, dtype=jnp.float64, key=key())
    theirs = equinox().nn.Linear(3, 2, dtype=jnp.float64, key=key())
    np.testing.assert_array_equal(ours.weight, theirs.weight, strict=True)
    custom = larix.nn.Linear(3, 2, param_dtype=jnp.float64, weight_init=jax.nn.initializers.ones, key=key())
    assert custom.weight.dtype == jnp.float32
