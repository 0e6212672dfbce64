"""Tests of larix.nn.LayerNorm, RMSNorm and GroupNorm (src/larix/nn/_normalisation.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
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
    expected = (
        (groups - groups.mean(1, keepdims=True)) / jnp.sqrt(groups.var(1, keepdims=True) + 1e-5)
    ).reshape(4, 5)
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


# Initialisers and dtypes (issue 9): the defaults are Equinox's ones and zeros to the bit; a
# custom initialiser gets a key, the shape and `param_dtype`; `dtype` is the dtype of the
# result, as in Flax's norm layers (statistics always in at least float32).

# (constructor for larix or equinox, input shape)
_CONFIGS = {
    "LayerNorm": (lambda lib, **kw: lib.nn.LayerNorm((4, 3), **kw), (4, 3)),
    "LayerNorm-no-weight": (lambda lib, **kw: lib.nn.LayerNorm(5, use_weight=False, **kw), (5,)),
    "RMSNorm": (lambda lib, **kw: lib.nn.RMSNorm(6, **kw), (6,)),
    "RMSNorm-no-bias": (lambda lib, **kw: lib.nn.RMSNorm((2, 3), use_bias=False, **kw), (2, 3)),
    "GroupNorm": (lambda lib, **kw: lib.nn.GroupNorm(2, 4, **kw), (4, 3)),
    "GroupNorm-no-affine": (lambda lib, **kw: lib.nn.GroupNorm(2, channelwise_affine=False, **kw), (4, 3)),
}
# One constructor and input (of float32 noise) per class.
_LAYERS = {
    "LayerNorm": (lambda **kw: larix.nn.LayerNorm((4, 3), **kw), (4, 3)),
    "RMSNorm": (lambda **kw: larix.nn.RMSNorm((4, 3), **kw), (4, 3)),
    "GroupNorm": (lambda **kw: larix.nn.GroupNorm(2, 4, **kw), (4, 3, 2)),
}


def _assert_same_params(ours, theirs):
    for name in ("weight", "bias"):
        a, b = getattr(ours, name), getattr(theirs, name)
        if b is None:
            assert a is None, name
        else:
            np.testing.assert_array_equal(a, b, strict=True)


@pytest.mark.parametrize("config", list(_CONFIGS))
@pytest.mark.parametrize("dtype", [None, jnp.float16, jnp.bfloat16])
def test_default_init_is_equinox_bit_for_bit(config, dtype):
    eqx = equinox()
    make, _ = _CONFIGS[config]
    theirs = make(eqx, dtype=dtype)
    _assert_same_params(make(larix, dtype=dtype), theirs)
    # A key changes nothing for the defaults: ones and zeros.
    _assert_same_params(make(larix, dtype=dtype, key=key(2)), theirs)


def _recording(calls, init):
    def wrapped(k, shape, dtype):
        calls.append((k, shape, jnp.dtype(dtype)))
        return init(k, shape, dtype)

    return wrapped


@pytest.mark.parametrize("name", list(_LAYERS))
def test_custom_initialisers_get_key_shape_and_param_dtype(name):
    make, shape = _LAYERS[name]
    param_shape = shape if name != "GroupNorm" else (shape[0],)
    calls = []
    layer = make(
        dtype=jnp.bfloat16,
        param_dtype=jnp.float32,
        weight_init=_recording(calls, jax.nn.initializers.normal()),
        bias_init=_recording(calls, jax.nn.initializers.constant(0.5)),
        key=key(1),
    )
    assert [(s, d) for _, s, d in calls] == [(param_shape, jnp.float32)] * 2
    weight_key, bias_key = jax.random.split(key(1))
    assert jnp.array_equal(jax.random.key_data(calls[0][0]), jax.random.key_data(weight_key))
    assert jnp.array_equal(jax.random.key_data(calls[1][0]), jax.random.key_data(bias_key))
    np.testing.assert_array_equal(
        layer.weight, jax.nn.initializers.normal()(weight_key, param_shape, jnp.float32), strict=True
    )
    np.testing.assert_array_equal(layer.bias, jnp.full(param_shape, 0.5), strict=True)
    # Only the initialiser given is replaced: the other keeps the default.
    half = make(bias_init=jax.nn.initializers.ones)
    np.testing.assert_array_equal(half.weight, jnp.ones(param_shape), strict=True)
    np.testing.assert_array_equal(half.bias, jnp.ones(param_shape), strict=True)
    # Without a key, the initialisers are called with None (enough for constants).
    calls.clear()
    make(weight_init=_recording(calls, jax.nn.initializers.zeros))
    assert [(k, s, d) for k, s, d in calls] == [(None, param_shape, jnp.float32)]


def _never(k, shape, dtype):
    raise AssertionError("called for a parameter the layer does not have")


def test_initialisers_of_absent_parameters_are_not_called():
    assert larix.nn.LayerNorm(3, use_weight=False, weight_init=_never).weight is None
    assert larix.nn.RMSNorm(3, use_bias=False, bias_init=_never, key=key()).bias is None
    norm = larix.nn.GroupNorm(2, 4, channelwise_affine=False, weight_init=_never, bias_init=_never, key=key())
    assert norm.weight is None and norm.bias is None
    assert larix.nn.GroupNorm(2, channelwise_affine=False, weight_init=_never).weight is None


def test_initialiser_of_the_wrong_shape_or_dtype_is_named():
    with pytest.raises(
        ValueError,
        match=r"LayerNorm: `weight_init` must return .* float32\[4, 3\], it returned float32\[3, 4\]",
    ):
        larix.nn.LayerNorm((4, 3), weight_init=lambda k, s, d: jnp.zeros(s[::-1], d))
    with pytest.raises(
        ValueError, match=r"GroupNorm: `bias_init` .* asked for bfloat16\[4\], it returned float32\[4\]"
    ):
        larix.nn.GroupNorm(2, 4, dtype=jnp.bfloat16, bias_init=lambda k, s, d: jnp.zeros(s))
    # A random initialiser needs a key: the error says to pass one.
    with pytest.raises(TypeError, match=r"RMSNorm: `weight_init` failed .* pass `key=` to RMSNorm"):
        larix.nn.RMSNorm(3, weight_init=jax.nn.initializers.normal())


@pytest.mark.parametrize("name", list(_LAYERS))
def test_param_dtype_defaults_to_dtype_as_in_equinox(name):
    make, shape = _LAYERS[name]
    layer = make(dtype=jnp.bfloat16)
    assert layer.weight.dtype == layer.bias.dtype == jnp.bfloat16 and layer.dtype == jnp.bfloat16
    assert layer(jnp.ones(shape, jnp.bfloat16)).dtype == jnp.bfloat16
    other = make(param_dtype=jnp.float16)
    assert other.weight.dtype == jnp.float16 and other.dtype is None
    assert make().dtype is None and make().weight.dtype == jnp.float32


@pytest.mark.parametrize("name", list(_LAYERS))
def test_dtype_is_the_result_dtype(name):
    make, shape = _LAYERS[name]
    x = jax.random.normal(key(3), shape) * 3 + 1
    reference = randomise(make(), 4)  # float32 throughout
    # Flax's mixed precision: float32 parameters and statistics, a bfloat16 result; the
    # float32 result rounded once.
    mixed = randomise(make(dtype=jnp.bfloat16, param_dtype=jnp.float32), 4)
    assert mixed.weight.dtype == jnp.float32 and same_arrays(mixed, reference)
    assert_bitwise_equal(mixed(x), reference(x).astype(jnp.bfloat16))
    # A wider `dtype` than the input: the input is widened before the statistics.
    wide = randomise(make(dtype=jnp.float32), 4)
    low = x.astype(jnp.bfloat16)
    assert_bitwise_equal(wide(low), reference(low.astype(jnp.float32)))
    # dtype=None: the output keeps the input's dtype, whatever the parameters' (not the
    # common type, as for other layers).
    assert reference(low).dtype == jnp.bfloat16
    assert randomise(make(param_dtype=jnp.bfloat16), 4)(x).dtype == jnp.float32


@pytest.mark.parametrize("name", list(_LAYERS))
@pytest.mark.parametrize(
    "dtypes",
    [
        dict(param_dtype=jnp.bfloat16),
        dict(dtype=jnp.bfloat16, param_dtype=jnp.float32),
        dict(dtype=jnp.float32, param_dtype=jnp.bfloat16),
    ],
    ids=["bf16-params", "bf16-result", "bf16-params-f32-result"],
)
def test_mixed_dtypes_work_under_strict_promotion(name, dtypes):
    make, shape = _LAYERS[name]
    layer = randomise(make(**dtypes), 5)
    for x in (jax.random.normal(key(3), shape), jax.random.normal(key(3), shape, jnp.bfloat16)):
        # Both jitted: XLA may fuse the float32 arithmetic differently from eager dispatch.
        with jax.numpy_dtype_promotion("standard"):
            expected = larix.filter_jit(lambda m, v: m(v))(layer, x)
        with jax.numpy_dtype_promotion("strict"):
            got = larix.filter_jit(lambda m, v: m(v))(layer, x)
        assert_bitwise_equal(got, expected)


@pytest.mark.parametrize("config", list(_CONFIGS))
def test_default_path_adds_no_casts_to_the_jaxpr(config):
    # Float32 everywhere: as many conversions as Equinox's jaxpr (those inside jnp.var),
    # none of ours. A bfloat16 result adds exactly one: the final cast.
    eqx = equinox()
    make, shape = _CONFIGS[config]
    x = jnp.ones(shape)

    def converts(layer):
        return str(jax.make_jaxpr(lambda v: layer(v))(x)).count("convert_element_type")

    assert converts(make(larix)) == converts(make(eqx))
    assert converts(make(larix, dtype=jnp.bfloat16, param_dtype=jnp.float32)) == converts(make(eqx)) + 1
