"""LayerNorm, RMSNorm and GroupNorm: normalise one example by its own statistics."""

# ruff: noqa: F722 - jaxtyping shape strings are not forward references

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from .._module import Module, field
from ._misc import NO_STATE, at_least_float32, check_size, resolve_dtype, shape_error

if TYPE_CHECKING:
    from jaxtyping import Array, Float, PRNGKeyArray

    from ._stateful import State

__all__ = ["GroupNorm", "LayerNorm", "RMSNorm"]


# Statistics are computed in at least float32 (`at_least_float32`): a mean and variance
# over many bfloat16 values lose most of their digits otherwise. The output is cast back
# to the input's dtype. Every operation below is ordered as in Equinox, so that float32
# results agree with it to the bit.


def _with_state(y: Any, state: Any) -> Any:
    return y if state is NO_STATE else (y, state)


def _as_shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    return (shape,) if isinstance(shape, int) else tuple(shape)


class LayerNorm(Module):
    """Normalises an array by the mean and variance of all its entries, then applies an
    elementwise affine map: `(x - mean(x)) / sqrt(var(x) + eps) * weight + bias`.

    To normalise over some axes only, vmap over the others:
    `jax.vmap(LayerNorm(d))(x)` for `x` of shape `(seq, d)`.

    **Fields:**

    - `weight`: ones of shape `shape`, or `None` if `use_weight=False`.
    - `bias`: zeros of shape `shape`, or `None` if `use_bias=False`.
    - `shape`, `eps`, `use_weight`, `use_bias`: as passed to `__init__` (static).

    !!! example
        ```python
        >>> import jax.numpy as jnp, larix
        >>> norm = larix.nn.LayerNorm(4)
        >>> y = norm(jnp.array([1.0, 2.0, 3.0, 4.0]))
        >>> round(float(y.mean()), 6), round(float(y.var()), 3)
        (0.0, 1.0)

        ```
    """

    shape: tuple[int, ...] = field(static=True)
    eps: float = field(static=True)
    use_weight: bool = field(static=True)
    use_bias: bool = field(static=True)
    weight: Float[Array, "*shape"] | None
    bias: Float[Array, "*shape"] | None

    def __init__(
        self,
        shape: int | Sequence[int],
        eps: float = 1e-5,
        use_weight: bool = True,
        use_bias: bool = True,
        dtype: Any = None,
    ):
        """**Arguments:**

        - `shape`: the shape of the input (an int for a vector).
        - `eps`: added to the variance, for numerical stability.
        - `use_weight`: whether to learn an elementwise scale (initialised to ones).
        - `use_bias`: whether to learn an elementwise offset (initialised to zeros).
        - `dtype`: the dtype of the weight and bias (default `float32`, or `float64` in
          64-bit mode).
        """
        self.shape = _as_shape(shape)
        self.eps = eps
        self.use_weight = use_weight
        self.use_bias = use_bias
        dtype = resolve_dtype(dtype)
        self.weight = jnp.ones(self.shape, dtype) if use_weight else None
        self.bias = jnp.zeros(self.shape, dtype) if use_bias else None

    def __call__(
        self, x: Float[Array, "*shape"], state: State = NO_STATE, *, key: PRNGKeyArray | None = None
    ) -> Any:
        """**Arguments:**

        - `x`: an array of shape `shape`.
        - `state`: optional and unused; accepted (and returned) so that the layer can
          replace a [`larix.nn.BatchNorm`][].
        - `key`: ignored.

        **Returns:** an array of the shape and dtype of `x`; `(output, state)` if `state`
        was passed.

        **Raises:** `ValueError` if `x` does not have shape `shape`.
        """
        if jnp.shape(x) != self.shape:
            raise shape_error(f"LayerNorm(shape={self.shape})", self.shape, jnp.shape(x))
        dtype = jnp.result_type(x)
        x = jnp.asarray(x, at_least_float32(dtype))
        mean = jnp.mean(x)
        variance = jnp.maximum(jnp.var(x), 0.0)  # rounding can make a variance slightly negative
        y = (x - mean) * jax.lax.rsqrt(variance + self.eps)
        if self.weight is not None:
            y = y * self.weight.astype(y.dtype)
        if self.bias is not None:
            y = y + self.bias.astype(y.dtype)
        return _with_state(y.astype(dtype), state)


class RMSNorm(Module):
    """Rescales an array by the root mean square of its entries (without centring it), then
    applies an elementwise affine map: `x / sqrt(mean(x ** 2) + eps) * weight + bias`.

    **Fields:**

    - `weight`: ones of shape `shape`, or `None` if `use_weight=False`.
    - `bias`: zeros of shape `shape`, or `None` if `use_bias=False`.
    - `shape`, `eps`, `use_weight`, `use_bias`: as passed to `__init__` (static).

    !!! example
        ```python
        >>> import jax.numpy as jnp, larix
        >>> y = larix.nn.RMSNorm(2)(jnp.array([3.0, 4.0]))
        >>> round(float(jnp.sqrt(jnp.mean(y ** 2))), 4)
        1.0

        ```
    """

    shape: tuple[int, ...] = field(static=True)
    eps: float = field(static=True)
    use_weight: bool = field(static=True)
    use_bias: bool = field(static=True)
    weight: Float[Array, "*shape"] | None
    bias: Float[Array, "*shape"] | None

    def __init__(
        self,
        shape: int | Sequence[int],
        eps: float = 1e-5,
        use_weight: bool = True,
        use_bias: bool = True,
        dtype: Any = None,
    ):
        """**Arguments:**

        - `shape`: the shape of the input (an int for a vector).
        - `eps`: added to the mean square, for numerical stability.
        - `use_weight`: whether to learn an elementwise scale (initialised to ones).
        - `use_bias`: whether to learn an elementwise offset (initialised to zeros).
        - `dtype`: the dtype of the weight and bias (default `float32`, or `float64` in
          64-bit mode).
        """
        self.shape = _as_shape(shape)
        self.eps = eps
        self.use_weight = use_weight
        self.use_bias = use_bias
        dtype = resolve_dtype(dtype)
        self.weight = jnp.ones(self.shape, dtype) if use_weight else None
        self.bias = jnp.zeros(self.shape, dtype) if use_bias else None

    def __call__(
        self, x: Float[Array, "*shape"], state: State = NO_STATE, *, key: PRNGKeyArray | None = None
    ) -> Any:
        """**Arguments:**

        - `x`: an array of shape `shape`.
        - `state`: optional and unused; accepted (and returned) so that the layer can
          replace a [`larix.nn.BatchNorm`][].
        - `key`: ignored.

        **Returns:** an array of the shape and dtype of `x`; `(output, state)` if `state`
        was passed.

        **Raises:** `ValueError` if `x` does not have shape `shape`.
        """
        if jnp.shape(x) != self.shape:
            raise shape_error(f"RMSNorm(shape={self.shape})", self.shape, jnp.shape(x))
        dtype = jnp.result_type(x)
        x = jnp.asarray(x, at_least_float32(dtype))
        y = x * jax.lax.rsqrt(jnp.mean(x**2) + self.eps)
        if self.weight is not None:
            y = y * self.weight.astype(y.dtype)
        if self.bias is not None:
            y = y + self.bias.astype(y.dtype)
        return _with_state(y.astype(dtype), state)


class GroupNorm(Module):
    """Splits the channels (the first axis) into `groups` groups and normalises each group
    by its own mean and variance, then applies a channelwise affine map.

    With `groups=1` this is a LayerNorm with per-channel parameters; with `groups` equal to
    the number of channels it is an InstanceNorm.

    **Fields:**

    - `weight`: ones of shape `(channels,)`, or `None` if `channelwise_affine=False`.
    - `bias`: zeros of shape `(channels,)`, or `None` if `channelwise_affine=False`.
    - `groups`, `channels`, `eps`, `channelwise_affine`: as passed to `__init__` (static).

    !!! example
        ```python
        >>> import jax, larix
        >>> norm = larix.nn.GroupNorm(groups=2, channels=4)
        >>> norm(jax.random.normal(jax.random.key(0), (4, 5, 5))).shape
        (4, 5, 5)

        ```
    """

    groups: int = field(static=True)
    channels: int | None = field(static=True)
    eps: float = field(static=True)
    channelwise_affine: bool = field(static=True)
    weight: Float[Array, " channels"] | None
    bias: Float[Array, " channels"] | None

    def __init__(
        self,
        groups: int,
        channels: int | None = None,
        eps: float = 1e-5,
        channelwise_affine: bool = True,
        dtype: Any = None,
    ):
        """**Arguments:**

        - `groups`: the number of groups; must divide the number of channels.
        - `channels`: the number of channels; may be `None` if `channelwise_affine=False`.
        - `eps`: added to the variance, for numerical stability.
        - `channelwise_affine`: whether to learn a per-channel scale and offset.
        - `dtype`: the dtype of the weight and bias (default `float32`, or `float64` in
          64-bit mode).

        **Raises:** `ValueError` if `channels` is not divisible by `groups`, or is `None`
        while `channelwise_affine=True`.
        """
        check_size("GroupNorm", "groups", groups)
        if channels is None and channelwise_affine:
            raise ValueError(
                "GroupNorm: `channels` is needed for the channelwise affine parameters. Pass "
                "`channels=...`, or `channelwise_affine=False`."
            )
        if channels is not None and channels % groups != 0:
            raise ValueError(f"GroupNorm: `channels` ({channels}) must be divisible by `groups` ({groups}).")
        self.groups = groups
        self.channels = channels
        self.eps = eps
        self.channelwise_affine = channelwise_affine
        dtype = resolve_dtype(dtype)
        self.weight = jnp.ones((channels,), dtype) if channelwise_affine else None
        self.bias = jnp.zeros((channels,), dtype) if channelwise_affine else None

    def __call__(
        self, x: Float[Array, "channels ..."], state: State = NO_STATE, *, key: PRNGKeyArray | None = None
    ) -> Any:
        """**Arguments:**

        - `x`: an array of shape `(channels, ...)`.
        - `state`: optional and unused; accepted (and returned) so that the layer can
          replace a [`larix.nn.BatchNorm`][].
        - `key`: ignored.

        **Returns:** an array of the shape and dtype of `x`; `(output, state)` if `state`
        was passed.

        **Raises:** `ValueError` if `x` has no channel axis of the right size.
        """
        shape = jnp.shape(x)
        layer = f"GroupNorm(groups={self.groups}, channels={self.channels})"
        if self.channels is not None and (not shape or shape[0] != self.channels):
            raise shape_error(layer, f"({self.channels}, ...)", shape)
        if not shape or shape[0] % self.groups != 0:
            raise ValueError(f"{layer}: the first axis of x (channels) must be divisible by {self.groups}; got shape {shape}.")
        dtype = jnp.result_type(x)
        # Groups of shape (channels // groups, *spatial), reduced over all their axes at
        # once: reducing a flattened group instead sums in another order (about 1e-7 off).
        grouped = jnp.asarray(x, at_least_float32(dtype)).reshape(self.groups, shape[0] // self.groups, *shape[1:])
        axes = tuple(range(1, grouped.ndim))
        mean = jnp.mean(grouped, axis=axes, keepdims=True)
        variance = jnp.maximum(jnp.var(grouped, axis=axes, keepdims=True), 0.0)
        y = ((grouped - mean) * jax.lax.rsqrt(variance + self.eps)).reshape(shape)
        if self.channelwise_affine:
            broadcast = (-1,) + (1,) * (len(shape) - 1)
            y = y * self.weight.reshape(broadcast).astype(y.dtype) + self.bias.reshape(broadcast).astype(y.dtype)
        return _with_state(y.astype(dtype), state)
