"""Tests of the helpers shared by the layers (src/larix/nn/_misc.py)."""

from __future__ import annotations

import jax.numpy as jnp
import pytest
from nn_helpers import key

import larix
from larix.nn._misc import NO_STATE, check_size, default_floating_dtype, ntuple, shape_error, uniform


def test_default_floating_dtype():
    assert default_floating_dtype() == jnp.float32  # the test suite runs in 32-bit mode


def test_uniform_bounds_real_and_complex():
    x = uniform(key(), (1000,), jnp.float32, 0.5)
    assert float(jnp.abs(x).max()) <= 0.5 and float(jnp.abs(x).max()) > 0.45
    z = uniform(key(), (1000,), jnp.complex64, 0.5)
    assert z.dtype == jnp.complex64
    assert float(jnp.abs(z.real).max()) <= 0.5 and float(jnp.abs(z.imag).max()) <= 0.5


def test_ntuple():
    assert ntuple(3, 2, "Layer", "stride") == (3, 3)
    assert ntuple([1, 2], 2, "Layer", "stride") == (1, 2)
    assert ntuple(0, 1, "Layer", "output_padding", minimum=0) == (0,)
    for bad in ((1, 2, 3), 0, (1, True), "2", 2.0):
        with pytest.raises(ValueError, match=r"Layer: `stride` must be an int or a sequence of 2 ints"):
            ntuple(bad, 2, "Layer", "stride")
    with pytest.raises(ValueError, match="kernel_size"):
        larix.nn.Conv2d(1, 1, 0, key=key())


def test_check_size():
    check_size("Layer", "width", 1)
    for bad in (0, True, 2.0, "3"):
        with pytest.raises(ValueError, match=r"Layer: `width` must be an int >= 1"):
            check_size("Layer", "width", bad)


def test_shape_error_suggests_vmap_only_for_a_batch():
    assert "vmap" in str(shape_error("Linear(...)", (3,), (8, 3)))
    assert "vmap" not in str(shape_error("Linear(...)", (3,), (4,)))
    assert str(shape_error("GRUCell(...)", (2,), (5,), "hidden")).startswith("GRUCell(...) expects `hidden` of shape (2,)")


def test_no_state_repr():
    assert repr(NO_STATE) == "<no state>"
