"""Tests of larix.nn.DenseGeneral (src/larix/nn/_dense_general.py)."""

from __future__ import annotations

import string

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from nn_helpers import check_transforms, close, key, pickle_roundtrip

import larix


def einsum_reference(layer: larix.nn.DenseGeneral, x: jax.Array) -> jax.Array:
    """What DenseGeneral computes, written as one einsum (and a broadcast bias)."""
    letters = iter(string.ascii_letters)
    x_names = [next(letters) for _ in range(x.ndim)]
    feature_names = [next(letters) for _ in layer.features]
    batch = [x_names[a] for a in layer.batch_dims]
    remaining = [x_names[a] for a in range(x.ndim) if a not in layer.axis and a not in layer.batch_dims]
    kernel_names = batch + [x_names[a] for a in layer.axis] + feature_names
    out_names = batch + remaining + feature_names
    spec = f"{''.join(x_names)},{''.join(kernel_names)}->{''.join(out_names)}"
    y = jnp.einsum(spec, x, layer.kernel, precision="highest")
    if layer.bias is not None:
        # Broadcast the bias by an einsum with ones: written independently of the layer's reshape.
        bias_spec = f"{''.join(batch + feature_names)},{''.join(out_names)}->{''.join(out_names)}"
        y = y + jnp.einsum(bias_spec, layer.bias, jnp.ones(y.shape, y.dtype))
    return y


CASES = [
    # in_shape, features, axis, batch_dims, kernel shape, output shape
    ((5,), 3, -1, (), (5, 3), (3,)),
    ((4, 5), 3, -1, (), (5, 3), (4, 3)),
    ((4, 5), (2, 3), -1, (), (5, 2, 3), (4, 2, 3)),
    ((4, 5, 6), 7, (1, 2), (), (5, 6, 7), (4, 7)),
    ((4, 5, 6), 7, (-2, -1), 0, (4, 5, 6, 7), (4, 7)),
    ((4, 5, 6), (2, 3), 0, (), (4, 2, 3), (5, 6, 2, 3)),
    ((3, 4, 5, 6), 2, 2, (0, 1), (3, 4, 5, 2), (3, 4, 6, 2)),
    ((3, 4, 5), 2, 0, 2, (5, 3, 2), (5, 4, 2)),  # a batch axis that is not leading
    ((3, 4, 5), 2, 1, (2, 0), (5, 3, 4, 2), (5, 3, 2)),  # batch axes out of order
    ((4, 5), (), -1, (), (5,), (4,)),  # contracted to a scalar per row
]


@pytest.mark.parametrize(("in_shape", "features", "axis", "batch_dims", "kernel_shape", "out_shape"), CASES)
def test_shapes_and_einsum(in_shape, features, axis, batch_dims, kernel_shape, out_shape):
    layer = larix.nn.DenseGeneral(in_shape, features, axis, batch_dims, key=key())
    assert layer.kernel.shape == kernel_shape
    batch_shape = tuple(in_shape[a] for a in layer.batch_dims)
    assert layer.bias.shape == batch_shape + layer.features
    x = jax.random.normal(key(1), in_shape)
    y = layer(x)
    assert y.shape == out_shape
    assert close(y, einsum_reference(layer, x), atol=1e-4)


def test_without_bias():
    layer = larix.nn.DenseGeneral((4, 5), 3, use_bias=False, key=key())
    assert layer.bias is None
    x = jax.random.normal(key(1), (4, 5))
    assert close(layer(x), jnp.tensordot(x, layer.kernel, axes=1))


def test_zero_sizes():
    empty_in = larix.nn.DenseGeneral((2, 0), 3, key=key())
    assert empty_in.kernel.shape == (0, 3) and close(empty_in(jnp.ones((2, 0))), jnp.stack([empty_in.bias] * 2))
    assert float(jnp.max(jnp.abs(empty_in.bias))) <= 1.0
    assert larix.nn.DenseGeneral((2, 5), 0, key=key())(jnp.ones((2, 5))).shape == (2, 0)


def test_fields_are_normalised():
    layer = larix.nn.DenseGeneral([3, 4, 5], [6], axis=[-1, -2], batch_dims=-3, key=key())
    assert (layer.in_shape, layer.features, layer.axis, layer.batch_dims) == ((3, 4, 5), (6,), (2, 1), (0,))
    assert larix.nn.DenseGeneral(5, 2, key=key()).in_shape == (5,)


def test_is_linear_with_a_transposed_weight():
    linear = larix.nn.Linear(4, 3, key=key())
    dense = larix.nn.DenseGeneral(4, 3, key=key())
    dense = larix.tree_at(lambda d: (d.kernel, d.bias), dense, (linear.weight.T, linear.bias))
    x = jax.random.normal(key(2), (4,))
    assert close(dense(x), linear(x))


def test_none_sizes_accept_any_length():
    layer = larix.nn.DenseGeneral((None, 4, 8), 16, axis=(-2, -1), key=key())
    for length in (1, 7):
        x = jax.random.normal(key(length), (length, 4, 8))
        assert layer(x).shape == (length, 16)
        assert close(layer(x), einsum_reference(layer, x), atol=1e-4)


def test_default_init_uses_contracted_fan_in_only():
    # 64 independent kernels, each contracting 16 inputs: bound 1/sqrt(16), not 1/sqrt(64*16).
    layer = larix.nn.DenseGeneral((64, 16), 128, axis=1, batch_dims=0, key=key(3))
    bound = 1 / np.sqrt(16)
    for array in (layer.kernel, layer.bias):
        assert float(jnp.max(jnp.abs(array))) <= bound
    assert abs(float(layer.kernel.var()) - bound**2 / 3) < 0.05 * bound**2
    assert float(jnp.max(jnp.abs(layer.kernel))) > 0.9 * bound


def test_custom_initialisers_get_shape_and_dtype():
    seen = []

    def recording(init):
        def wrapped(k, shape, dtype):
            seen.append((shape, jnp.dtype(dtype)))
            return init(k, shape, dtype)

        return wrapped

    layer = larix.nn.DenseGeneral(
        (3, 4, 5),
        (2,),
        axis=(1, 2),
        batch_dims=0,
        param_dtype=jnp.bfloat16,
        kernel_init=recording(jax.nn.initializers.lecun_normal(batch_axis=0, in_axis=(1, 2), out_axis=3)),
        bias_init=recording(jax.nn.initializers.ones),
        key=key(),
    )
    assert seen == [((3, 4, 5, 2), jnp.dtype(jnp.bfloat16)), ((3, 2), jnp.dtype(jnp.bfloat16))]
    assert layer.kernel.dtype == jnp.bfloat16 and bool(jnp.all(layer.bias == 1))


def test_initialiser_returning_the_wrong_shape_is_named():
    with pytest.raises(ValueError, match=r"kernel_init.*float32\[5, 3\].*float32\[3, 5\]"):
        larix.nn.DenseGeneral(5, 3, kernel_init=lambda k, s, d: jnp.zeros(s[::-1], d), key=key())
    with pytest.raises(ValueError, match=r"bias_init.*float32\[3\].*float16\[3\]"):
        larix.nn.DenseGeneral(5, 3, bias_init=lambda k, s, d: jnp.zeros(s, jnp.float16), key=key())


def test_param_dtype_and_computation_dtype():
    x = jax.random.normal(key(1), (4, 5))
    low = larix.nn.DenseGeneral((4, 5), 3, param_dtype=jnp.bfloat16, key=key())
    assert low.kernel.dtype == low.bias.dtype == jnp.bfloat16
    assert low(x).dtype == jnp.float32  # common type of f32 input and bf16 parameters
    mixed = larix.nn.DenseGeneral((4, 5), 3, dtype=jnp.bfloat16, param_dtype=jnp.float32, key=key())
    assert mixed.kernel.dtype == jnp.float32 and mixed(x).dtype == jnp.bfloat16
    # dtype alone builds the layer in that dtype, as for every larix layer.
    assert larix.nn.DenseGeneral((4, 5), 3, dtype=jnp.bfloat16, key=key()).kernel.dtype == jnp.bfloat16
    assert close(mixed(x), einsum_reference(mixed, x), atol=0.1)
    ints = larix.nn.DenseGeneral((4, 5), 3, key=key())
    assert ints(jnp.ones((4, 5), jnp.int32)).dtype == jnp.float32
    assert close(ints(jnp.ones((4, 5), jnp.int32)), ints(jnp.ones((4, 5))))


def test_complex_parameters():
    layer = larix.nn.DenseGeneral((4,), 2, param_dtype=jnp.complex64, key=key())
    assert layer.kernel.dtype == jnp.complex64 and float(jnp.max(jnp.abs(layer.kernel.imag))) > 0
    assert layer(jnp.ones(4)).dtype == jnp.complex64


def test_strict_dtype_promotion():
    layer = larix.nn.DenseGeneral((4, 5), 3, key=key())
    with jax.numpy_dtype_promotion("strict"):
        assert layer(jnp.ones((4, 5), jnp.bfloat16)).dtype == jnp.float32
        assert layer(jnp.ones((4, 5), jnp.int8)).dtype == jnp.float32
        bf16 = larix.nn.DenseGeneral((4, 5), 3, dtype=jnp.bfloat16, key=key())
        assert bf16(jnp.ones((4, 5))).dtype == jnp.bfloat16


def test_transforms():
    layer = larix.nn.DenseGeneral((3, 4, 5), (2, 2), axis=(1, 2), batch_dims=0, key=key())
    check_transforms(layer, jax.random.normal(key(1), (3, 4, 5)))


def test_pickle():
    layer = larix.nn.DenseGeneral((3, 4), 2, batch_dims=0, key=key())
    again = pickle_roundtrip(layer)
    assert close(again(jnp.ones((3, 4))), layer(jnp.ones((3, 4))))


def test_wrong_input_shape_names_the_layer_and_shapes():
    layer = larix.nn.DenseGeneral((4, 5), 3, key=key())
    with pytest.raises(ValueError, match=r"DenseGeneral\(in_shape=\(4, 5\).*\(4, 5\).*\(4, 6\)"):
        layer(jnp.ones((4, 6)))
    with pytest.raises(ValueError, match="vmap"):
        layer(jnp.ones((2, 4, 5)))
    wildcard = larix.nn.DenseGeneral((None, 5), 3, key=key())
    with pytest.raises(ValueError, match=r"\(any, 5\).*\(5,\)"):
        wildcard(jnp.ones(5))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"axis": 2}, r"`axis` contains axis 2, but the input has 2 dimension\(s\).*-2 to 1"),
        ({"axis": -3}, r"`axis` contains axis -3"),
        ({"axis": (1, -1)}, r"`axis`=\(1, -1\) names axis 1 more than once.*-1 is 1"),
        ({"batch_dims": (0, 0)}, r"`batch_dims`=\(0, 0\) names axis 0 more than once"),
        ({"axis": 1, "batch_dims": -1}, r"axis 1 is in both `axis` \(contracted\) and `batch_dims`"),
        ({"axis": ()}, r"`axis` must name at least one axis"),
        ({"axis": 1.0}, r"`axis` must be an int or a sequence of ints"),
    ],
)
def test_bad_axes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        larix.nn.DenseGeneral((4, 5), 3, **kwargs, key=key())


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"`in_shape` must be.*ints >= 0 or None; got \(4, -1\)"):
        larix.nn.DenseGeneral((4, -1), 3, key=key())
    with pytest.raises(ValueError, match=r"`features` must be.*got 'three'"):
        larix.nn.DenseGeneral((4,), "three", key=key())
    with pytest.raises(ValueError, match=r"in_shape\[1\] is None, but axis 1 is contracted"):
        larix.nn.DenseGeneral((4, None), 3, key=key())
    with pytest.raises(ValueError, match=r"in_shape\[0\] is None, but axis 0 is a batch axis"):
        larix.nn.DenseGeneral((None, 4), 3, batch_dims=0, key=key())


def test_key_is_keyword_only_and_required():
    with pytest.raises(TypeError):
        larix.nn.DenseGeneral(4, 3)
    with pytest.raises(TypeError):
        larix.nn.DenseGeneral(4, 3, -1, (), True, None, key())  # dtype and key by keyword only


@st.composite
def configurations(draw):
    ndim = draw(st.integers(1, 4))
    in_shape = tuple(draw(st.lists(st.integers(1, 3), min_size=ndim, max_size=ndim)))
    axes = draw(st.permutations(range(ndim)))
    n_axis = draw(st.integers(1, ndim))
    n_batch = draw(st.integers(0, ndim - n_axis))
    negative = draw(st.booleans())
    axis = tuple(a - ndim if negative else a for a in axes[:n_axis])
    batch_dims = tuple(axes[n_axis : n_axis + n_batch])
    features = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    return in_shape, features, axis, batch_dims, draw(st.booleans())


@settings(max_examples=25, deadline=None)
@given(configurations())
def test_matches_einsum_for_any_axes(config):
    in_shape, features, axis, batch_dims, use_bias = config
    layer = larix.nn.DenseGeneral(in_shape, features, axis, batch_dims, use_bias, key=key())
    x = jax.random.normal(key(1), in_shape)
    assert close(layer(x), einsum_reference(layer, x), atol=1e-4)
