"""Helpers shared by the layers: default dtypes, initialisers and input checks."""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "NO_STATE",
    "at_least_float32",
    "check_size",
    "default_floating_dtype",
    "deprecated_deterministic",
    "fan_in_bound",
    "ntuple",
    "resolve_dtype",
    "shape_error",
    "uniform",
    "warn_at_caller",
]

_LARIX_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def default_floating_dtype() -> Any:
    """`float64` when JAX runs in 64-bit mode (`jax_enable_x64`), else `float32`."""
    return jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32


def resolve_dtype(dtype: Any) -> Any:
    return default_floating_dtype() if dtype is None else dtype


def warn_at_caller(message: str) -> None:
    """`warnings.warn(message, UserWarning)`, reported at the first line outside larix
    (the user's `Dropout(...)` or `layer(x)`) however many larix frames (Module
    construction, interceptors) lie between."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(_LARIX_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


def deprecated_deterministic(old: str, new: str) -> None:
    """Warn that `deterministic=` (Equinox's old name of `inference=`) was used: a
    `UserWarning`, as Equinox emits, so that code filtering Equinox's warning still does."""
    warn_at_caller(
        f"{old} is deprecated in favour of {new}: `deterministic` is the old name of "
        "`inference`, kept only so that older Equinox code runs."
    )


def at_least_float32(dtype: Any) -> Any:
    """The dtype to compute statistics and softmaxes in: `dtype` promoted with `float32`
    (so `bfloat16`/`float16`/integers give `float32`; `float64` stays).

    Asked under standard promotion: `jnp.promote_types` obeys `jax_numpy_dtype_promotion`,
    and under "strict" it refuses `bfloat16` with `float32`. Choosing to compute in float32
    is this library's decision, not an implicit promotion of the user's arrays, so it must
    not depend on that setting.
    """
    with jax.numpy_dtype_promotion("standard"):
        return jnp.promote_types(dtype, jnp.float32)


def uniform(key: Any, shape: tuple[int, ...], dtype: Any, lim: float) -> jax.Array:
    """Samples uniform in `[-lim, lim)`; for a complex dtype, the real and imaginary parts
    are each uniform in that interval."""
    if jnp.issubdtype(dtype, jnp.complexfloating):
        real_dtype = jnp.finfo(dtype).dtype
        real_key, imag_key = jax.random.split(key)
        real = jax.random.uniform(real_key, shape, real_dtype, minval=-lim, maxval=lim)
        imag = jax.random.uniform(imag_key, shape, real_dtype, minval=-lim, maxval=lim)
        return jax.lax.complex(real, imag).astype(dtype)
    return jax.random.uniform(key, shape, dtype, minval=-lim, maxval=lim)


def fan_in_bound(fan_in: int) -> float:
    """`1 / sqrt(fan_in)`: the bound of the uniform initialisation of Linear and Conv."""
    return 1 / math.sqrt(fan_in)


def check_size(layer: str, name: str, value: Any, *, minimum: int = 1) -> None:
    """Raise a ValueError unless `value` is an int (not a bool) >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{layer}: `{name}` must be an int >= {minimum}, got {value!r}.")


def ntuple(value: int | Sequence[int], n: int, layer: str, name: str, *, minimum: int = 1) -> tuple[int, ...]:
    """`3 -> (3, 3)` for n = 2; a sequence must already have length `n`. Every entry must
    be an int >= `minimum`."""
    if isinstance(value, int) and not isinstance(value, bool):
        values: tuple[Any, ...] = (value,) * n
    else:
        try:
            values = tuple(value)
        except TypeError:
            values = ()
    if len(values) != n or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in values):
        raise ValueError(
            f"{layer}: `{name}` must be an int or a sequence of {n} ints (one per spatial "
            f"dimension), each at least {minimum}; got {value!r}."
        )
    return values


def shape_error(layer: str, expected: tuple[Any, ...] | str, got: tuple[int, ...], argument: str = "x") -> ValueError:
    """A ValueError for an input of the wrong shape, pointing at vmap for batched input."""
    want = expected if isinstance(expected, str) else str(tuple(expected))
    message = f"{layer} expects `{argument}` of shape {want}, but got shape {tuple(got)}."
    if not isinstance(expected, str) and len(got) == len(expected) + 1 and tuple(got[1:]) == tuple(expected):
        message += (
            " Layers act on a single example: for a batch, map over the leading axis with "
            "`jax.vmap(layer)(x)` or `larix.filter_vmap(layer)(x)`."
        )
    return ValueError(message)


class _NoState:
    def __repr__(self) -> str:
        return "<no state>"


NO_STATE: Any = _NoState()
"""The default of the optional `state` argument of layers that can stand in for BatchNorm."""
