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
    params = list(inspect.signature(larix.nn.Conv2d).parameters)
    assert params == [
        "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
        "groups", "use_bias", "padding_mode", "dtype", "key",
    ]  # fmt: skip


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
