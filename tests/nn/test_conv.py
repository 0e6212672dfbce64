"""Tests of larix.nn.Conv and Conv1d/2d/3d (src/larix/nn/_conv.py)."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_helpers import check_transforms, close, copy_arrays, equinox, key, pickle_roundtrip, same_arrays

import larix


def _reference_conv1d(x, weight, stride=1, padding=(0, 0), dilation=1):
    # A direct loop: out[o, i] = sum_{c, t} w[o, c, t] * xpad[c, i * stride + t * dilation].
    x = np.pad(np.asarray(x), ((0, 0), padding))
    w = np.asarray(weight)
    out_len = (x.shape[1] - dilation * (w.shape[2] - 1) - 1) // stride + 1
    out = np.zeros((w.shape[0], out_len))
    for i in range(out_len):
        for t in range(w.shape[2]):
            out[:, i] += w[:, :, t] @ x[:, i * stride + t * dilation]
    return out


def test_fields_and_shapes():
    conv = larix.nn.Conv2d(3, 8, kernel_size=(3, 5), stride=2, padding=1, key=key())
    assert conv.weight.shape == (8, 3, 3, 5) and conv.bias.shape == (8, 1, 1)
    assert (conv.kernel_size, conv.stride, conv.padding, conv.dilation) == ((3, 5), (2, 2), ((1, 1), (1, 1)), (1, 1))
    assert conv(jnp.ones((3, 9, 9))).shape == (8, 5, 4)
    assert larix.nn.Conv3d(2, 4, 3, use_bias=False, key=key()).bias is None
    assert larix.nn.Conv(1, 2, 3, 3, key=key())(jnp.ones((2, 7))).shape == (3, 5)


def test_matches_direct_loop():
    conv = larix.nn.Conv1d(2, 3, kernel_size=3, stride=2, padding=((1, 2),), dilation=2, key=key())
    x = jax.random.normal(key(1), (2, 11))
    expected = _reference_conv1d(x, conv.weight, 2, (1, 2), 2) + np.asarray(conv.bias)
    assert close(conv(x), expected, atol=1e-5)


@pytest.mark.parametrize("padding", ["SAME", "SAME_LOWER", "VALID", "same"])
def test_string_padding(padding):
    conv = larix.nn.Conv1d(1, 1, kernel_size=4, stride=1, padding=padding, use_bias=False, key=key())
    x = jnp.arange(6.0)[None]
    y = conv(x)
    if padding.upper() == "VALID":
        assert y.shape == (1, 3) and conv.padding == ((0, 0),)
    else:
        lo, hi = (2, 1) if padding.upper() == "SAME_LOWER" else (1, 2)
        assert y.shape == (1, 6) and close(y, _reference_conv1d(x, conv.weight, padding=(lo, hi)), atol=1e-5)
    strided = larix.nn.Conv2d(1, 1, 3, stride=2, padding="SAME", key=key())
    assert strided(jnp.ones((1, 7, 8))).shape == (1, 4, 4)


@pytest.mark.parametrize("mode, np_mode", [("REFLECT", "reflect"), ("REPLICATE", "edge"), ("CIRCULAR", "wrap")])
def test_padding_modes(mode, np_mode):
    conv = larix.nn.Conv1d(1, 1, kernel_size=3, padding=2, padding_mode=mode, use_bias=False, key=key())
    x = jnp.array([[1.0, 2.0, 3.0, 4.0]])
    padded = np.pad(np.asarray(x), ((0, 0), (2, 2)), mode=np_mode)
    assert close(conv(x), _reference_conv1d(padded, conv.weight), atol=1e-5)


def test_groups():
    conv = larix.nn.Conv1d(4, 6, kernel_size=1, groups=2, use_bias=False, key=key())
    assert conv.weight.shape == (6, 2, 1)
    x = jax.random.normal(key(2), (4, 5))
    expected = jnp.concatenate([conv.weight[:3, :, 0] @ x[:2], conv.weight[3:, :, 0] @ x[2:]])
    assert close(conv(x), expected, atol=1e-5)


def test_init_bound():
    conv = larix.nn.Conv2d(8, 32, 3, groups=2, key=key(3))
    bound = 1 / np.sqrt(4 * 9)
    assert float(jnp.abs(conv.weight).max()) <= bound and float(jnp.abs(conv.weight).max()) > 0.9 * bound
    assert float(jnp.abs(conv.bias).max()) <= bound


def test_dtype():
    conv = larix.nn.Conv2d(1, 2, 3, dtype=jnp.bfloat16, key=key())
    assert conv.weight.dtype == jnp.bfloat16 and conv(jnp.ones((1, 5, 5), jnp.bfloat16)).dtype == jnp.bfloat16


def test_errors_name_layer_and_shape():
    conv = larix.nn.Conv2d(3, 4, 3, key=key())
    with pytest.raises(ValueError, match=r"Conv2d\(in_channels=3.*\(3, dim_1, dim_2\).*\(5, 5\)"):
        conv(jnp.ones((5, 5)))
    with pytest.raises(ValueError, match="vmap"):
        conv(jnp.ones((2, 3, 5, 5)))
    with pytest.raises(ValueError, match="Got shape \\(2, 5, 5\\)"):
        conv(jnp.ones((2, 5, 5)))
    with pytest.raises(ValueError, match="divisible"):
        larix.nn.Conv2d(3, 4, 3, groups=2, key=key())
    with pytest.raises(ValueError, match="padding_mode"):
        larix.nn.Conv2d(3, 4, 3, padding_mode="zeros", key=key())
    with pytest.raises(ValueError, match="kernel_size"):
        larix.nn.Conv2d(3, 4, (3, 3, 3), key=key())
    with pytest.raises(ValueError, match="padding"):
        larix.nn.Conv2d(3, 4, 3, padding="FULL", key=key())


def test_signatures_match_equinox_order():
    # Equinox's arguments in Equinox's order; the keyword-only initialisers and
    # param_dtype (issue 9) come before `key`.
    params = list(inspect.signature(larix.nn.Conv2d).parameters)
    assert params == [
        "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
        "groups", "use_bias", "padding_mode", "dtype", "param_dtype", "weight_init", "bias_init", "key",
    ]  # fmt: skip
    for cls in (larix.nn.Conv, larix.nn.Conv1d, larix.nn.Conv2d, larix.nn.Conv3d):
        parameters = inspect.signature(cls).parameters
        for name in ("param_dtype", "weight_init", "bias_init", "key"):
            assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY


def test_transforms_pickle_repr():
    conv = larix.nn.Conv2d(2, 3, 3, padding="SAME", key=key())
    check_transforms(conv, jax.random.normal(key(4), (2, 5, 5)))
    assert same_arrays(pickle_roundtrip(conv), conv)
    assert repr(conv).startswith("Conv2d(") and "padding='SAME'" in repr(conv)


CASES = [
    (1, dict(in_channels=2, out_channels=4, kernel_size=3)),
    (1, dict(in_channels=2, out_channels=4, kernel_size=3, stride=2, padding="SAME", dilation=2)),
    (2, dict(in_channels=4, out_channels=2, kernel_size=(2, 3), stride=(2, 1), padding=((1, 0), (2, 1)), groups=2)),
    (2, dict(in_channels=1, out_channels=2, kernel_size=3, padding="SAME_LOWER", stride=2)),
    (2, dict(in_channels=2, out_channels=2, kernel_size=3, padding=1, padding_mode="REFLECT")),
    (2, dict(in_channels=2, out_channels=2, kernel_size=3, padding=2, padding_mode="CIRCULAR", use_bias=False)),
    (3, dict(in_channels=1, out_channels=2, kernel_size=2, padding="VALID")),
]


@pytest.mark.parametrize("n, kwargs", CASES)
def test_matches_equinox(n, kwargs):
    eqx = equinox()
    theirs = eqx.nn.Conv(n, **kwargs, key=key(5))
    ours = larix.nn.Conv(n, **kwargs, key=key(5))
    assert same_arrays(ours, theirs)  # the same key gives the same parameters
    ours = copy_arrays(theirs, larix.nn.Conv(n, **kwargs, key=key(6)))
    x = jax.random.normal(key(7), (kwargs["in_channels"],) + (7,) * n)
    assert close(ours(x), theirs(x), atol=1e-5)


# Initialisers and dtypes (issue 9): the defaults are Equinox's to the bit; a custom
# initialiser gets the key, shape and `param_dtype`; `dtype` is the computation dtype.


@pytest.mark.parametrize("n, kwargs", CASES[:4])
@pytest.mark.parametrize("dtype", [None, jnp.bfloat16, jnp.float16, jnp.complex64])
def test_default_init_is_equinox_bit_for_bit(n, kwargs, dtype):
    eqx = equinox()
    ours = larix.nn.Conv(n, **kwargs, dtype=dtype, key=key(3))
    theirs = eqx.nn.Conv(n, **kwargs, dtype=dtype, key=key(3))
    np.testing.assert_array_equal(ours.weight, theirs.weight, strict=True)
    np.testing.assert_array_equal(ours.bias, theirs.bias, strict=True)


@pytest.mark.parametrize("name", ["Conv1d", "Conv2d", "Conv3d"])
def test_default_init_of_the_subclasses_is_equinox_bit_for_bit(name):
    eqx = equinox()
    ours = getattr(larix.nn, name)(4, 6, 3, groups=2, dtype=jnp.float16, key=key(2))
    theirs = getattr(eqx.nn, name)(4, 6, 3, groups=2, dtype=jnp.float16, key=key(2))
    np.testing.assert_array_equal(ours.weight, theirs.weight, strict=True)
    np.testing.assert_array_equal(ours.bias, theirs.bias, strict=True)


def _recording(init, calls):
    def wrapped(k, shape, dtype):
        calls.append((k, shape, jnp.dtype(dtype)))
        return init(k, shape, dtype)

    return wrapped


def test_custom_initialisers_get_key_shape_and_param_dtype():
    calls = []
    weight_init = jax.nn.initializers.lecun_normal(in_axis=1, out_axis=0)
    conv = larix.nn.Conv2d(
        4,
        6,
        (3, 5),
        groups=2,
        dtype=jnp.bfloat16,
        param_dtype=jnp.float32,
        weight_init=_recording(weight_init, calls),
        bias_init=_recording(jax.nn.initializers.zeros, calls),
        key=key(1),
    )
    # The bias's initialiser gets its stored shape, (out_channels, 1, 1).
    shapes = [(shape, dtype) for _, shape, dtype in calls]
    assert shapes == [((6, 2, 3, 5), jnp.float32), ((6, 1, 1), jnp.float32)]
    weight_key, bias_key = jax.random.split(key(1))
    assert jnp.array_equal(jax.random.key_data(calls[0][0]), jax.random.key_data(weight_key))
    assert jnp.array_equal(jax.random.key_data(calls[1][0]), jax.random.key_data(bias_key))
    assert jnp.array_equal(conv.weight, weight_init(weight_key, (6, 2, 3, 5), jnp.float32))
    assert conv.bias.shape == (6, 1, 1) and jnp.array_equal(conv.bias, jnp.zeros((6, 1, 1)))
    # Only the initialiser given is replaced: the other keeps Equinox's default.
    half = larix.nn.Conv2d(4, 6, 3, bias_init=jax.nn.initializers.ones, key=key(1))
    assert jnp.array_equal(half.weight, larix.nn.Conv2d(4, 6, 3, key=key(1)).weight)
    assert jnp.array_equal(half.bias, jnp.ones((6, 1, 1)))
    other_half = larix.nn.Conv2d(4, 6, 3, weight_init=jax.nn.initializers.zeros, key=key(1))
    assert jnp.array_equal(other_half.bias, larix.nn.Conv2d(4, 6, 3, key=key(1)).bias)
    assert not other_half.weight.any()


@pytest.mark.parametrize("n", [1, 2, 3])
def test_subclasses_and_conv_pass_the_new_arguments_through(n):
    cls = [larix.nn.Conv1d, larix.nn.Conv2d, larix.nn.Conv3d][n - 1]
    inits = dict(weight_init=jax.nn.initializers.ones, bias_init=jax.nn.initializers.zeros)
    kwargs = dict(dtype=jnp.bfloat16, param_dtype=jnp.float16, **inits, key=key())
    for conv in (cls(2, 3, 2, **kwargs), larix.nn.Conv(n, 2, 3, 2, **kwargs)):
        assert conv.dtype == jnp.bfloat16 and conv.weight.dtype == conv.bias.dtype == jnp.float16
        assert conv.weight.shape == (3, 2) + (2,) * n and conv.bias.shape == (3,) + (1,) * n
        assert conv.weight.all() and not conv.bias.any()
    no_bias = larix.nn.Conv(n, 2, 3, 2, use_bias=False, bias_init=jax.nn.initializers.ones, key=key())
    assert no_bias.bias is None


def test_initialiser_of_the_wrong_shape_or_dtype_is_named():
    message = r"Conv2d: `weight_init` must return .* float32\[4, 3, 3, 3\], it returned float32\[3, 4, 3, 3\]"
    with pytest.raises(ValueError, match=message):
        larix.nn.Conv2d(3, 4, 3, weight_init=lambda k, s, d: jnp.zeros((3, 4, 3, 3), d), key=key())
    message = r"Conv1d: `bias_init` .* asked for float32\[4, 1\], it returned int32\[4, 1\]"
    with pytest.raises(ValueError, match=message):
        larix.nn.Conv1d(3, 4, 3, bias_init=lambda k, s, d: jnp.zeros(s, jnp.int32), key=key())
    # A bias initialiser that ignores the shape and returns a vector is caught too.
    message = r"Conv: `bias_init` .* asked for float32\[4, 1, 1\], it returned float32\[4\]"
    with pytest.raises(ValueError, match=message):
        larix.nn.Conv(2, 3, 4, 3, bias_init=lambda k, s, d: jnp.zeros(s[0], d), key=key())


def test_param_dtype_defaults_to_dtype_as_in_equinox():
    conv = larix.nn.Conv2d(1, 2, 3, dtype=jnp.bfloat16, key=key())
    assert conv.weight.dtype == conv.bias.dtype == jnp.bfloat16 and conv.dtype == jnp.bfloat16
    assert conv(jnp.ones((1, 5, 5), jnp.bfloat16)).dtype == jnp.bfloat16
    assert larix.nn.Conv2d(1, 2, 3, param_dtype=jnp.float16, key=key()).weight.dtype == jnp.float16
    default = larix.nn.Conv2d(1, 2, 3, key=key())
    assert default.dtype is None and default.weight.dtype == jnp.float32


@pytest.mark.parametrize("padding_mode", ["ZEROS", "REFLECT"])
def test_dtype_is_the_computation_dtype(padding_mode):
    # Flax's mixed precision: float32 parameters, bfloat16 arithmetic.
    conv = larix.nn.Conv2d(
        2, 3, 3, padding=1, padding_mode=padding_mode, dtype=jnp.bfloat16, param_dtype=jnp.float32, key=key()
    )
    assert conv.weight.dtype == conv.bias.dtype == jnp.float32
    x = jax.random.normal(key(1), (2, 6, 5))
    y = conv(x)
    assert y.dtype == jnp.bfloat16
    low = x.astype(jnp.bfloat16)
    low = jnp.pad(low, ((0, 0), (1, 1), (1, 1)), mode="reflect" if padding_mode == "REFLECT" else "constant")
    expected = jax.lax.conv_general_dilated(low[None], conv.weight.astype(jnp.bfloat16), (1, 1), "VALID")[0]
    expected = expected + conv.bias.astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(expected, np.float32))


def test_float32_input_into_low_precision_parameters_computes_in_float32():
    # dtype=None: the common type of the input and the parameters. Equinox raises here,
    # as lax.conv_general_dilated wants one dtype.
    conv = larix.nn.Conv2d(2, 3, 3, param_dtype=jnp.bfloat16, key=key())
    assert conv.dtype is None and conv.weight.dtype == jnp.bfloat16
    x = jax.random.normal(key(1), (2, 5, 5))
    y = conv(x)
    f32 = (conv.weight.astype(jnp.float32), conv.bias.astype(jnp.float32))
    upcast = larix.tree_at(lambda m: (m.weight, m.bias), conv, f32)
    assert y.dtype == jnp.float32
    np.testing.assert_array_equal(y, upcast(x), strict=True)
    assert conv(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16
    eqx = equinox()
    with pytest.raises(TypeError, match="same dtypes"):
        eqx.nn.Conv2d(2, 3, 3, dtype=jnp.bfloat16, key=key())(x)


def test_mixed_dtypes_work_under_strict_promotion():
    conv = larix.nn.Conv1d(2, 3, 3, padding=1, padding_mode="CIRCULAR", param_dtype=jnp.bfloat16, key=key())
    x = jnp.ones((2, 7), jnp.float32)
    with jax.numpy_dtype_promotion("standard"):
        expected = conv(x)
    with jax.numpy_dtype_promotion("strict"):
        got = larix.filter_jit(lambda m, x: m(x))(conv, x)
    assert got.dtype == jnp.float32 and jnp.array_equal(got, expected)


@pytest.mark.parametrize("padding_mode", ["ZEROS", "REFLECT"])
def test_default_path_adds_no_casts_to_the_jaxpr(padding_mode):
    # Same dtypes everywhere: the jaxpr is Equinox's, and so are the outputs, to the bit.
    eqx = equinox()
    ours = larix.nn.Conv2d(2, 3, 3, padding=1, padding_mode=padding_mode, key=key())
    theirs = eqx.nn.Conv2d(2, 3, 3, padding=1, padding_mode=padding_mode, key=key())
    x = jax.random.normal(key(1), (2, 5, 6))

    def primitives(layer):
        return [e.primitive.name for e in jax.make_jaxpr(lambda m, x: m(x))(layer, x).eqns]

    assert primitives(ours) == primitives(theirs)
    assert "convert_element_type" not in primitives(ours)
    np.testing.assert_array_equal(ours(x), theirs(x), strict=True)
