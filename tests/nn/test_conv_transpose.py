"""Tests of larix.nn.ConvTranspose and ConvTranspose1d/2d/3d (src/larix/nn/_conv_transpose.py)."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_helpers import check_transforms, close, copy_arrays, equinox, key, pickle_roundtrip, same_arrays

import larix


def _transpose_of(conv, transpose):
    """`transpose` with the weight that makes it the exact linear transpose of `conv`."""
    weight = jnp.flip(conv.weight, axis=tuple(range(2, conv.weight.ndim))).swapaxes(0, 1)
    return larix.tree_at(lambda m: m.weight, transpose, weight)


@pytest.mark.parametrize(
    "kwargs, size",
    [
        (dict(kernel_size=3), 9),
        (dict(kernel_size=4, stride=2, padding=1), 10),
        (dict(kernel_size=3, stride=2, padding="SAME"), 9),
        (dict(kernel_size=3, stride=3, padding="SAME_LOWER", dilation=2), 10),
        (dict(kernel_size=2, stride=2, padding=((1, 0),)), 7),
    ],
)
def test_is_the_linear_transpose_of_conv(kwargs, size):
    # <conv(x), y> == <x, convT(y)> for the matching weight: the adjoint, exactly.
    conv = larix.nn.Conv1d(2, 3, **kwargs, use_bias=False, key=key())
    x = jax.random.normal(key(1), (2, size))
    y = jax.random.normal(key(2), conv(x).shape)
    # Strided Convs map several sizes to one: output_padding picks ours.
    output_padding = abs(size - larix.nn.ConvTranspose1d(3, 2, **kwargs, key=key())(y).shape[1])
    transpose = larix.nn.ConvTranspose1d(3, 2, **kwargs, output_padding=output_padding, use_bias=False, key=key())
    transpose = _transpose_of(conv, transpose)
    assert transpose(y).shape == x.shape
    assert close(jnp.vdot(conv(x), y), jnp.vdot(x, transpose(y)), atol=1e-4)


def test_circular_is_the_transpose_of_circular_conv():
    conv = larix.nn.Conv2d(2, 3, 3, stride=2, padding="SAME", padding_mode="CIRCULAR", use_bias=False, key=key())
    x = jax.random.normal(key(1), (2, 6, 8))
    y = jax.random.normal(key(2), conv(x).shape)
    transpose = larix.nn.ConvTranspose2d(
        3, 2, 3, stride=2, padding="SAME", padding_mode="CIRCULAR", use_bias=False, key=key()
    )
    transpose = _transpose_of(conv, transpose)
    assert close(jnp.vdot(conv(x), y), jnp.vdot(x, transpose(y)), atol=1e-4)


def test_fields_shapes_groups():
    layer = larix.nn.ConvTranspose2d(4, 6, 3, stride=2, output_padding=1, groups=2, key=key())
    assert layer.weight.shape == (6, 2, 3, 3) and layer.bias.shape == (6, 1, 1)
    assert layer(jnp.ones((4, 5, 5))).shape == (6, 12, 12)
    assert larix.nn.ConvTranspose(3, 1, 1, 2, stride=2, key=key())(jnp.ones((1, 2, 2, 2))).shape == (1, 4, 4, 4)


def test_errors():
    with pytest.raises(ValueError, match="output_padding"):
        larix.nn.ConvTranspose1d(1, 1, 3, stride=2, output_padding=2, key=key())
    with pytest.raises(ValueError, match="CIRCULAR"):
        larix.nn.ConvTranspose1d(1, 1, 3, padding=1, padding_mode="CIRCULAR", key=key())
    with pytest.raises(ValueError, match="padding_mode"):
        larix.nn.ConvTranspose1d(1, 1, 3, padding_mode="REFLECT", key=key())
    with pytest.raises(ValueError, match=r"ConvTranspose1d\(in_channels=2"):
        larix.nn.ConvTranspose1d(2, 1, 3, key=key())(jnp.ones((3, 4)))


def test_signature_order_matches_equinox():
    # Equinox puts output_padding before padding in the 1d/2d/3d classes only.
    assert list(inspect.signature(larix.nn.ConvTranspose2d).parameters)[3:6] == ["stride", "output_padding", "padding"]
    assert list(inspect.signature(larix.nn.ConvTranspose).parameters)[4:7] == ["stride", "padding", "output_padding"]
    # The keyword-only initialisers and param_dtype (issue 9) come before `key`.
    for name in ("ConvTranspose", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"):
        parameters = inspect.signature(getattr(larix.nn, name)).parameters
        assert list(parameters)[-5:] == ["dtype", "param_dtype", "weight_init", "bias_init", "key"]
        for name in ("param_dtype", "weight_init", "bias_init", "key"):
            assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY


def test_transforms_pickle_repr():
    layer = larix.nn.ConvTranspose1d(2, 3, 3, stride=2, key=key())
    check_transforms(layer, jax.random.normal(key(4), (2, 5)))
    assert same_arrays(pickle_roundtrip(layer), layer)
    assert repr(layer).startswith("ConvTranspose1d(")


CASES = [
    (1, dict(in_channels=2, out_channels=3, kernel_size=3)),
    (1, dict(in_channels=2, out_channels=3, kernel_size=4, stride=2, padding=1, output_padding=1)),
    (1, dict(in_channels=2, out_channels=4, kernel_size=3, stride=2, padding="SAME", groups=2)),
    (2, dict(in_channels=2, out_channels=2, kernel_size=3, stride=2, padding="SAME_LOWER", dilation=2)),
    (2, dict(in_channels=2, out_channels=3, kernel_size=3, stride=2, padding="SAME", padding_mode="CIRCULAR")),
    (2, dict(in_channels=1, out_channels=2, kernel_size=(2, 3), stride=(1, 2), padding=((1, 0), (0, 2)))),
]


@pytest.mark.parametrize("n, kwargs", CASES)
def test_matches_equinox(n, kwargs):
    eqx = equinox()
    theirs = eqx.nn.ConvTranspose(n, **kwargs, key=key(5))
    ours = larix.nn.ConvTranspose(n, **kwargs, key=key(5))
    assert same_arrays(ours, theirs)
    ours = copy_arrays(theirs, ours)
    x = jax.random.normal(key(7), (kwargs["in_channels"],) + (5,) * n)
    assert ours(x).shape == theirs(x).shape
    assert close(ours(x), theirs(x), atol=1e-5)


# Initialisers and dtypes (issue 9): the defaults are Equinox's to the bit; a custom
# initialiser gets the key, shape and `param_dtype`; `dtype` is the computation dtype.


@pytest.mark.parametrize("n, kwargs", CASES[1:4])
@pytest.mark.parametrize("dtype", [None, jnp.bfloat16, jnp.float16, jnp.complex64])
def test_default_init_is_equinox_bit_for_bit(n, kwargs, dtype):
    eqx = equinox()
    ours = larix.nn.ConvTranspose(n, **kwargs, dtype=dtype, key=key(3))
    theirs = eqx.nn.ConvTranspose(n, **kwargs, dtype=dtype, key=key(3))
    np.testing.assert_array_equal(ours.weight, theirs.weight, strict=True)
    np.testing.assert_array_equal(ours.bias, theirs.bias, strict=True)


@pytest.mark.parametrize("name", ["ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"])
def test_default_init_of_the_subclasses_is_equinox_bit_for_bit(name):
    eqx = equinox()
    ours = getattr(larix.nn, name)(4, 6, 3, stride=2, groups=2, dtype=jnp.float16, key=key(2))
    theirs = getattr(eqx.nn, name)(4, 6, 3, stride=2, groups=2, dtype=jnp.float16, key=key(2))
    np.testing.assert_array_equal(ours.weight, theirs.weight, strict=True)
    np.testing.assert_array_equal(ours.bias, theirs.bias, strict=True)


def test_custom_initialisers_get_key_shape_and_param_dtype():
    calls = []

    def recording(init):
        def wrapped(k, shape, dtype):
            calls.append((k, shape, jnp.dtype(dtype)))
            return init(k, shape, dtype)

        return wrapped

    weight_init = jax.nn.initializers.he_uniform(in_axis=1, out_axis=0)
    layer = larix.nn.ConvTranspose1d(
        4,
        6,
        3,
        stride=2,
        groups=2,
        dtype=jnp.bfloat16,
        param_dtype=jnp.float32,
        weight_init=recording(weight_init),
        bias_init=recording(jax.nn.initializers.normal()),
        key=key(1),
    )
    # The bias's initialiser gets its stored shape, (out_channels, 1).
    assert [(shape, dtype) for _, shape, dtype in calls] == [((6, 2, 3), jnp.float32), ((6, 1), jnp.float32)]
    weight_key, bias_key = jax.random.split(key(1))
    assert jnp.array_equal(jax.random.key_data(calls[0][0]), jax.random.key_data(weight_key))
    assert jnp.array_equal(jax.random.key_data(calls[1][0]), jax.random.key_data(bias_key))
    assert jnp.array_equal(layer.weight, weight_init(weight_key, (6, 2, 3), jnp.float32))
    assert jnp.array_equal(layer.bias, jax.nn.initializers.normal()(bias_key, (6, 1), jnp.float32))
    # Only the initialiser given is replaced: the other keeps Equinox's default.
    half = larix.nn.ConvTranspose2d(4, 6, 3, bias_init=jax.nn.initializers.zeros, key=key(1))
    assert jnp.array_equal(half.weight, larix.nn.ConvTranspose2d(4, 6, 3, key=key(1)).weight)
    assert jnp.array_equal(half.bias, jnp.zeros((6, 1, 1)))
    # Every class passes the new arguments through.
    kwargs = dict(param_dtype=jnp.float16, weight_init=jax.nn.initializers.ones, key=key())
    for n, name in enumerate(["ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"], start=1):
        subclass = getattr(larix.nn, name)(2, 3, 2, **kwargs)
        for layer in (subclass, larix.nn.ConvTranspose(n, 2, 3, 2, **kwargs)):
            assert layer.weight.dtype == layer.bias.dtype == jnp.float16 and layer.weight.all()


def test_initialiser_of_the_wrong_shape_or_dtype_is_named():
    message = r"ConvTranspose2d: `weight_init` .* float32\[4, 3, 3, 3\], it returned float32\[4, 3, 3\]"
    with pytest.raises(ValueError, match=message):
        larix.nn.ConvTranspose2d(3, 4, 3, weight_init=lambda k, s, d: jnp.zeros(s[:-1], d), key=key())
    message = r"ConvTranspose: `bias_init` .* asked for float32\[4, 1\], it returned float16\[4, 1\]"
    with pytest.raises(ValueError, match=message):
        larix.nn.ConvTranspose(1, 3, 4, 3, bias_init=lambda k, s, d: jnp.zeros(s, jnp.float16), key=key())


def test_param_dtype_defaults_to_dtype_as_in_equinox():
    layer = larix.nn.ConvTranspose2d(1, 2, 3, dtype=jnp.bfloat16, key=key())
    assert layer.weight.dtype == layer.bias.dtype == jnp.bfloat16 and layer.dtype == jnp.bfloat16
    assert layer(jnp.ones((1, 5, 5), jnp.bfloat16)).dtype == jnp.bfloat16
    assert larix.nn.ConvTranspose2d(1, 2, 3, param_dtype=jnp.float16, key=key()).weight.dtype == jnp.float16
    default = larix.nn.ConvTranspose2d(1, 2, 3, key=key())
    assert default.dtype is None and default.weight.dtype == jnp.float32


def test_dtype_is_the_computation_dtype():
    # Flax's mixed precision: float32 parameters, bfloat16 arithmetic.
    layer = larix.nn.ConvTranspose1d(
        2, 3, 3, stride=2, dtype=jnp.bfloat16, param_dtype=jnp.float32, key=key()
    )
    assert layer.weight.dtype == layer.bias.dtype == jnp.float32
    x = jax.random.normal(key(1), (2, 6))
    y = layer(x)
    assert y.dtype == jnp.bfloat16 and y.shape == (3, 13)
    # By hand: a stride-1 convolution over the input dilated by the stride, padded by
    # kernel_size - 1 on each side.
    expected = jax.lax.conv_general_dilated(
        x.astype(jnp.bfloat16)[None], layer.weight.astype(jnp.bfloat16), (1,), [(2, 2)], lhs_dilation=(2,)
    )[0]
    expected = expected + layer.bias.astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(expected, np.float32))


@pytest.mark.parametrize("padding_mode", ["ZEROS", "CIRCULAR"])
def test_float32_input_into_low_precision_parameters_computes_in_float32(padding_mode):
    # dtype=None: the common type of the input and the parameters. Equinox raises here,
    # as lax.conv_general_dilated wants one dtype.
    kwargs = dict(stride=2, padding="SAME", padding_mode=padding_mode)
    layer = larix.nn.ConvTranspose2d(2, 3, 3, **kwargs, param_dtype=jnp.bfloat16, key=key())
    assert layer.dtype is None and layer.weight.dtype == jnp.bfloat16
    x = jax.random.normal(key(1), (2, 4, 5))
    y = layer(x)
    f32 = (layer.weight.astype(jnp.float32), layer.bias.astype(jnp.float32))
    upcast = larix.tree_at(lambda m: (m.weight, m.bias), layer, f32)
    assert y.dtype == jnp.float32
    np.testing.assert_array_equal(y, upcast(x), strict=True)
    assert layer(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16
    eqx = equinox()
    with pytest.raises(TypeError, match="same dtypes"):
        eqx.nn.ConvTranspose2d(2, 3, 3, **kwargs, dtype=jnp.bfloat16, key=key())(x)


def test_mixed_dtypes_work_under_strict_promotion():
    layer = larix.nn.ConvTranspose1d(
        2, 3, 3, stride=2, padding="SAME", padding_mode="CIRCULAR", param_dtype=jnp.bfloat16, key=key()
    )
    x = jnp.ones((2, 7), jnp.float32)
    with jax.numpy_dtype_promotion("standard"):
        expected = layer(x)
    with jax.numpy_dtype_promotion("strict"):
        got = larix.filter_jit(lambda m, x: m(x))(layer, x)
    assert got.dtype == jnp.float32 and jnp.array_equal(got, expected)


def _primitives(layer, x):
    return [e.primitive.name for e in jax.make_jaxpr(lambda m, x: m(x))(layer, x).eqns]


def test_default_path_adds_no_casts_to_the_jaxpr():
    # Same dtypes everywhere: the jaxpr is Equinox's, and so are the outputs, to the bit.
    eqx = equinox()
    kwargs = dict(stride=2, padding=1, output_padding=1)
    ours = larix.nn.ConvTranspose2d(2, 3, 3, **kwargs, key=key())
    theirs = eqx.nn.ConvTranspose2d(2, 3, 3, **kwargs, key=key())
    x = jax.random.normal(key(1), (2, 5, 6))
    assert _primitives(ours, x) == _primitives(theirs, x)
    assert _primitives(ours, x) == ["broadcast_in_dim", "conv_general_dilated", "squeeze", "add"]
    np.testing.assert_array_equal(ours(x), theirs(x), strict=True)
    # The circular fold (not Equinox's algorithm) gains no casts either.
    circular = larix.nn.ConvTranspose2d(2, 3, 3, stride=2, padding="SAME", padding_mode="CIRCULAR", key=key())
    assert "convert_element_type" not in _primitives(circular, x)
