"""Helpers shared by the layers: default dtypes, initialisers and input checks."""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "NO_STATE",
    "Initializer",
    "at_least_float32",
    "cast_for_op",
    "check_size",
    "default_floating_dtype",
    "deprecated_deterministic",
    "fan_in_bound",
    "init_param",
    "ntuple",
    "param_dtype_of",
    "resolve_dtype",
    "shape_error",
    "uniform",
    "uniform_init",
    "warn_at_caller",
]

Initializer = Callable[[Any, tuple[int, ...], Any], Any]
"""The signature of `jax.nn.initializers`: `init(key, shape, dtype) -> array`."""

_LARIX_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def default_floating_dtype() -> Any:
    """`float64` when JAX runs in 64-bit mode (`jax_enable_x64`), else `float32`."""
    return jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32


def resolve_dtype(dtype: Any) -> Any:
    return default_floating_dtype() if dtype is None else dtype


def param_dtype_of(dtype: Any, param_dtype: Any) -> Any:
    """The dtype to store a layer's parameters in: `param_dtype`, else `dtype` (Equinox's
    single `dtype=` builds the whole layer in that dtype), else the default float."""
    return resolve_dtype(dtype if param_dtype is None else param_dtype)


def cast_for_op(dtype: Any, *arrays: Any) -> tuple[Any, ...]:
    """`arrays` (`None`s pass through) cast to the computation dtype: `dtype`, or when it
    is `None` their common type.

    The common type is asked for under standard promotion and then applied explicitly, so
    that a layer given mixed dtypes computes the same under `jax_numpy_dtype_promotion=
    "strict"`, where the implicit promotion of `x @ weight` would raise. Casting an array
    to its own dtype adds nothing to the jaxpr, so the all-float32 path is unchanged.
    """
    if dtype is None:
        with jax.numpy_dtype_promotion("standard"):
            dtype = jnp.result_type(*(a for a in arrays if a is not None))
    return tuple(None if a is None else jnp.asarray(a, dtype) for a in arrays)


def uniform_init(lim: float) -> Initializer:
    """Equinox's (and PyTorch's) default for Linear, Conv and the RNN cells, as an
    initialiser: uniform in `[-lim, lim)`. Not `jax.nn.initializers.variance_scaling`,
    whose uniform draws `[-1, 1) * lim`: the same distribution, other bits."""

    def init(key: Any, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return uniform(key, shape, dtype, lim)

    return init


def init_param(
    layer: str, name: str, init: Initializer | None, default: Initializer, key: Any, shape: tuple[int, ...], dtype: Any
) -> jax.Array:
    """`init(key, shape, dtype)` (or `default(...)` if `init` is None), checked to give an
    array of that shape and dtype. `name` is the argument that passed `init`."""
    try:
        value = (default if init is None else init)(key, shape, dtype)
    except Exception as error:
        if key is None and init is not None:
            raise TypeError(
                f"{layer}: `{name}` failed when called without a random key ({error}); an "
                f"initialiser that draws random numbers needs one: pass `key=` to {layer}."
            ) from error
        raise
    got_shape, got_dtype = jnp.shape(value), jnp.result_type(value)
    # Canonical: without x64, asking for float64 gives float32 (JAX warns), which is right.
    if got_shape != tuple(shape) or got_dtype != jax.dtypes.canonicalize_dtype(dtype):
        raise ValueError(
            f"{layer}: `{name}` must return an array of the shape and dtype it is given, as "
            f"jax.nn.initializers do: asked for {jnp.dtype(dtype).name}{list(shape)}, it "
            f"returned {got_dtype.name}{list(got_shape)}."
        )
    return jnp.asarray(value)


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
