"""Tests of larix.nn.ConvTranspose and ConvTranspose1d/2d/3d (src/larix/nn/_conv_transpose.py)."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
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
