"""LayerNorm, RMSNorm and GroupNorm: normalise one example by its own statistics."""

# ruff: noqa: F722 - jaxtyping shape strings are not forward references

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from .._module import Module, field
from ._misc import (
    NO_STATE,
    Initializer,
    at_least_float32,
    check_size,
    init_param,
    param_dtype_of,
    shape_error,
)

if TYPE_CHECKING:
    from jaxtyping import Array, Float, PRNGKeyArray

    from ._stateful import State

__all__ = ["GroupNorm", "LayerNorm", "RMSNorm"]


# Statistics are computed in at least float32 (`at_least_float32`): a mean and variance
# over many bfloat16 values lose most of their digits otherwise. The output is cast to
# `dtype`, or back to the input's dtype when `dtype` is None (not to the common type of
# the input and the parameters, as other layers do: a norm's parameters follow the input's
# precision, as in Equinox). Every operation below is ordered as in Equinox, so that
# float32 results agree with it to the bit.


def _with_state(y: Any, state: Any) -> Any:
    return y if state is NO_STATE else (y, state)


def _dtypes(x: Any, dtype: Any) -> tuple[Any, Any]:
    """(computation dtype, output dtype) of a norm with result dtype `dtype` for input `x`.

    The computation is in at least float32, and at least `dtype` (so that `dtype=float64`
    on a float32 input does not compute in float32 and then widen); when `dtype` is None,
    exactly `at_least_float32` of the input, as in Equinox.
    """
    x_dtype = jnp.result_type(x)
    if dtype is None:
        return at_least_float32(x_dtype), x_dtype
    # Our choice, not an implicit promotion of the user's arrays.
    with jax.numpy_dtype_promotion("standard"):
        widest = jnp.promote_types(x_dtype, dtype)
    return at_least_float32(widest), jnp.dtype(dtype)


def _affine_params(
    layer: str,
    shape: tuple[int, ...],
    use_weight: bool,
    use_bias: bool,
    dtype: Any,
    param_dtype: Any,
    weight_init: Initializer | None,
    bias_init: Initializer | None,
    key: PRNGKeyArray | None,
) -> tuple[Any, Any]:
    """The weight and bias of a norm (`None` where unused, without calling its
    initialiser): ones and zeros of `shape` by default, as in Equinox."""
    stored = param_dtype_of(dtype, param_dtype)
    # No key by default: ones and zeros need none. With one, each initialiser gets its own.
    weight_key, bias_key = (None, None) if key is None else jax.random.split(key)
    weight = (
        init_param(layer, "weight_init", weight_init, jax.nn.initializers.ones, weight_key, shape, stored)
        if use_weight
        else None
    )
    bias = (
        init_param(layer, "bias_init", bias_init, jax.nn.initializers.zeros, bias_key, shape, stored)
        if use_bias
        else None
    )
    return weight, bias


def _as_shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    return (shape,) if isinstance(shape, int) else tuple(shape)


class LayerNorm(Module):
    """Normalises an array by the mean and variance of all its entries, then applies an
    elementwise affine map: `(x - mean(x)) / sqrt(var(x) + eps) * weight + bias`.

    To normalise over some axes only, vmap over the others:
    `jax.vmap(LayerNorm(d))(x)` for `x` of shape `(seq, d)`.

    **Fields:**

    - `weight`: of shape `shape` (ones by default), or `None` if `use_weight=False`.
    - `bias`: of shape `shape` (zeros by default), or `None` if `use_bias=False`.
    - `shape`, `eps`, `use_weight`, `use_bias`, `dtype`: as passed to `__init__` (static).

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
    dtype: Any = field(static=True)

    def __init__(
        self,
        shape: int | Sequence[int],
        eps: float = 1e-5,
        use_weight: bool = True,
        use_bias: bool = True,
        dtype: Any = None,
        *,
        param_dtype: Any = None,
        weight_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        key: PRNGKeyArray | None = None,
    ):
        """**Arguments:**

        - `shape`: the shape of the input (an int for a vector).
        - `eps`: added to the variance, for numerical stability.
        - `use_weight`: whether to learn an elementwise scale.
        - `use_bias`: whether to learn an elementwise offset.
        - `dtype`: the dtype of the result (as in Flax's norm layers): the output is cast to
          it. If `None`, the output has the dtype of the input. Either way the statistics
          and the affine map are computed in at least `float32` (and at least `dtype`).
          Also the dtype the parameters are stored in, unless `param_dtype` is given: as
          in Equinox, `dtype=` alone builds the whole layer in that dtype.
        - `param_dtype`: the dtype of the stored weight and bias (keyword-only). Defaults to
          `dtype`, or to `float32` (`float64` when JAX runs in 64-bit mode). Flax's mixed
          precision is `dtype=jnp.bfloat16, param_dtype=jnp.float32`.
        - `weight_init`, `bias_init`: initialisers with the signature of
          `jax.nn.initializers`, `init(key, shape, dtype) -> array` (keyword-only),
          called with shape `shape` and `param_dtype`, and only for a parameter the layer
          has. By default `jax.nn.initializers.ones` and `jax.nn.initializers.zeros`, as
          in Equinox.
        - `key`: a `jax.random` key, split into one key for each initialiser
          (keyword-only). Not needed by the defaults; without it, the initialisers are
          called with `None` (an initialiser that draws random numbers needs it).

        **Raises:** `ValueError` for an initialiser that returns an array of another shape
        or dtype; `TypeError` if one fails without a `key`.
        """
        self.shape = _as_shape(shape)
        self.eps = eps
        self.use_weight = use_weight
        self.use_bias = use_bias
        self.dtype = dtype
        self.weight, self.bias = _affine_params(
            "LayerNorm", self.shape, use_weight, use_bias, dtype, param_dtype, weight_init, bias_init, key
        )

    def __call__(
        self, x: Float[Array, "*shape"], state: State = NO_STATE, *, key: PRNGKeyArray | None = None
    ) -> Any:
        """**Arguments:**

        - `x`: an array of shape `shape`.
        - `state`: optional and unused; accepted (and returned) so that the layer can
          replace a [`larix.nn.BatchNorm`][].
        - `key`: ignored.

        **Returns:** an array of the shape of `x` and of dtype `dtype` (the dtype of `x` if
        `dtype` is `None`); `(output, state)` if `state` was passed.

        **Raises:** `ValueError` if `x` does not have shape `shape`.
        """
        if jnp.shape(x) != self.shape:
            raise shape_error(f"LayerNorm(shape={self.shape})", self.shape, jnp.shape(x))
        compute_dtype, dtype = _dtypes(x, self.dtype)
        x = jnp.asarray(x, compute_dtype)
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

    - `weight`: of shape `shape` (ones by default), or `None` if `use_weight=False`.
    - `bias`: of shape `shape` (zeros by default), or `None` if `use_bias=False`.
    - `shape`, `eps`, `use_weight`, `use_bias`, `dtype`: as passed to `__init__` (static).

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
    dtype: Any = field(static=True)

    def __init__(
        self,
        shape: int | Sequence[int],
        eps: float = 1e-5,
        use_weight: bool = True,
        use_bias: bool = True,
        dtype: Any = None,
        *,
        param_dtype: Any = None,
        weight_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        key: PRNGKeyArray | None = None,
    ):
        """**Arguments:**

        - `shape`: the shape of the input (an int for a vector).
        - `eps`: added to the mean square, for numerical stability.
        - `use_weight`: whether to learn an elementwise scale.
        - `use_bias`: whether to learn an elementwise offset.
        - `dtype`: the dtype of the result (as in Flax's norm layers): the output is cast to
          it. If `None`, the output has the dtype of the input. Either way the statistics
          and the affine map are computed in at least `float32` (and at least `dtype`).
          Also the dtype the parameters are stored in, unless `param_dtype` is given: as
          in Equinox, `dtype=` alone builds the whole layer in that dtype.
        - `param_dtype`: the dtype of the stored weight and bias (keyword-only). Defaults to
          `dtype`, or to `float32` (`float64` when JAX runs in 64-bit mode). Flax's mixed
          precision is `dtype=jnp.bfloat16, param_dtype=jnp.float32`.
        - `weight_init`, `bias_init`: initialisers with the signature of
          `jax.nn.initializers`, `init(key, shape, dtype) -> array` (keyword-only),
          called with shape `shape` and `param_dtype`, and only for a parameter the layer
          has. By default `jax.nn.initializers.ones` and `jax.nn.initializers.zeros`, as
          in Equinox.
        - `key`: a `jax.random` key, split into one key for each initialiser
          (keyword-only). Not needed by the defaults; without it, the initialisers are
          called with `None` (an initialiser that draws random numbers needs it).

        **Raises:** `ValueError` for an initialiser that returns an array of another shape
        or dtype; `TypeError` if one fails without a `key`.
        """
        self.shape = _as_shape(shape)
        self.eps = eps
        self.use_weight = use_weight
        self.use_bias = use_bias
        self.dtype = dtype
        self.weight, self.bias = _affine_params(
            "RMSNorm", self.shape, use_weight, use_bias, dtype, param_dtype, weight_init, bias_init, key
        )

    def __call__(
        self, x: Float[Array, "*shape"], state: State = NO_STATE, *, key: PRNGKeyArray | None = None
    ) -> Any:
        """**Arguments:**

        - `x`: an array of shape `shape`.
        - `state`: optional and unused; accepted (and returned) so that the layer can
          replace a [`larix.nn.BatchNorm`][].
        - `key`: ignored.

        **Returns:** an array of the shape of `x` and of dtype `dtype` (the dtype of `x` if
        `dtype` is `None`); `(output, state)` if `state` was passed.

        **Raises:** `ValueError` if `x` does not have shape `shape`.
        """
        if jnp.shape(x) != self.shape:
            raise shape_error(f"RMSNorm(shape={self.shape})", self.shape, jnp.shape(x))
        compute_dtype, dtype = _dtypes(x, self.dtype)
        x = jnp.asarray(x, compute_dtype)
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

    - `weight`: of shape `(channels,)` (ones by default), or `None` if
      `channelwise_affine=False`.
    - `bias`: of shape `(channels,)` (zeros by default), or `None` if
      `channelwise_affine=False`.
    - `groups`, `channels`, `eps`, `channelwise_affine`, `dtype`: as passed to `__init__`
      (static).

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
    dtype: Any = field(static=True)

    def __init__(
        self,
        groups: int,
        channels: int | None = None,
        eps: float = 1e-5,
        channelwise_affine: bool = True,
        dtype: Any = None,
        *,
        param_dtype: Any = None,
        weight_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        key: PRNGKeyArray | None = None,
    ):
        """**Arguments:**

        - `groups`: the number of groups; must divide the number of channels.
        - `channels`: the number of channels; may be `None` if `channelwise_affine=False`.
        - `eps`: added to the variance, for numerical stability.
        - `channelwise_affine`: whether to learn a per-channel scale and offset.
        - `dtype`: the dtype of the result (as in Flax's norm layers): the output is cast to
          it. If `None`, the output has the dtype of the input. Either way the statistics
          and the affine map are computed in at least `float32` (and at least `dtype`).
          Also the dtype the parameters are stored in, unless `param_dtype` is given: as
          in Equinox, `dtype=` alone builds the whole layer in that dtype.
        - `param_dtype`: the dtype of the stored weight and bias (keyword-only). Defaults to
          `dtype`, or to `float32` (`float64` when JAX runs in 64-bit mode). Flax's mixed
          precision is `dtype=jnp.bfloat16, param_dtype=jnp.float32`.
        - `weight_init`, `bias_init`: initialisers with the signature of
          `jax.nn.initializers`, `init(key, shape, dtype) -> array` (keyword-only),
          called with shape `(channels,)` and `param_dtype`, and only if
          `channelwise_affine=True`. By default `jax.nn.initializers.ones` and
          `jax.nn.initializers.zeros`, as in Equinox.
        - `key`: a `jax.random` key, split into one key for each initialiser
          (keyword-only). Not needed by the defaults; without it, the initialisers are
          called with `None` (an initialiser that draws random numbers needs it).

        **Raises:** `ValueError` if `channels` is not divisible by `groups`, or is `None`
        while `channelwise_affine=True`, or for an initialiser that returns an array of
        another shape or dtype; `TypeError` if one fails without a `key`.
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
        self.dtype = dtype
        self.weight, self.bias = _affine_params(
            "GroupNorm",
            (channels or 0,),  # channels is None only without parameters
            channelwise_affine,
            channelwise_affine,
            dtype,
            param_dtype,
            weight_init,
            bias_init,
            key,
        )

    def __call__(
        self, x: Float[Array, "channels ..."], state: State = NO_STATE, *, key: PRNGKeyArray | None = None
    ) -> Any:
        """**Arguments:**

        - `x`: an array of shape `(channels, ...)`.
        - `state`: optional and unused; accepted (and returned) so that the layer can
          replace a [`larix.nn.BatchNorm`][].
        - `key`: ignored.

        **Returns:** an array of the shape of `x` and of dtype `dtype` (the dtype of `x` if
        `dtype` is `None`); `(output, state)` if `state` was passed.

        **Raises:** `ValueError` if `x` has no channel axis of the right size.
        """
        shape = jnp.shape(x)
        layer = f"GroupNorm(groups={self.groups}, channels={self.channels})"
        if self.channels is not None and (not shape or shape[0] != self.channels):
            raise shape_error(layer, f"({self.channels}, ...)", shape)
        if not shape or shape[0] % self.groups != 0:
            raise ValueError(
                f"{layer}: the first axis of x (channels) must be divisible by {self.groups}; got shape {shape}."
            )
        compute_dtype, dtype = _dtypes(x, self.dtype)
        # Groups of shape (channels // groups, *spatial), reduced over all their axes at
        # once: reducing a flattened group instead sums in another order (about 1e-7 off).
        grouped = jnp.asarray(x, compute_dtype).reshape(self.groups, shape[0] // self.groups, *shape[1:])
        axes = tuple(range(1, grouped.ndim))
        mean = jnp.mean(grouped, axis=axes, keepdims=True)
        variance = jnp.maximum(jnp.var(grouped, axis=axes, keepdims=True), 0.0)
        y = ((grouped - mean) * jax.lax.rsqrt(variance + self.eps)).reshape(shape)
        if self.channelwise_affine:
            broadcast = (-1,) + (1,) * (len(shape) - 1)
            y = y * self.weight.reshape(broadcast).astype(y.dtype) + self.bias.reshape(broadcast).astype(
                y.dtype
            )
        return _with_state(y.astype(dtype), state)
