"""Pooling over sliding windows: Pool, MaxPool1d/2d/3d and AvgPool1d/2d/3d."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from .._module import Module, field
from ._conv import parse_padding
from ._misc import check_size, ntuple

if TYPE_CHECKING:
    from jaxtyping import Array, PRNGKeyArray

__all__ = ["AvgPool1d", "AvgPool2d", "AvgPool3d", "MaxPool1d", "MaxPool2d", "MaxPool3d", "Pool", "check_pool_input"]


def check_pool_input(layer: Any, x: Any, n: int) -> None:
    if jnp.ndim(x) != n + 1:
        spatial = ", ".join(f"dim_{i + 1}" for i in range(n))
        raise ValueError(
            f"{type(layer).__name__} expects `x` of shape (channels, {spatial}), with no batch "
            f"axis (vmap over a batch); got shape {jnp.shape(x)}."
        )


def _init_value(init: Any, dtype: Any) -> Any:
    # A concrete (NumPy) identity lets JAX recognise max/add pooling and use its
    # differentiable reduce_window primitives.
    try:
        value = np.asarray(init)
    except (TypeError, jax.errors.TracerArrayConversionError):
        return jnp.asarray(init, dtype)
    if value.dtype.kind == "f" and (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.bool_)):
        # Max pooling starts from -inf, which an integer (or bool) cannot hold: use the
        # smallest value of the dtype instead, the identity of `max` there (and what XLA
        # makes of -inf), so that integer images can be max pooled.
        low, high = (0, 1) if np.issubdtype(dtype, np.bool_) else (np.iinfo(dtype).min, np.iinfo(dtype).max)
        value = np.clip(value, low, high)
    return value.astype(dtype)


class Pool(Module):
    """Reduces each sliding window of an array of shape `(channels, dim_1, ..., dim_N)` with
    `operation`, starting from `init`: the base of [`larix.nn.MaxPool2d`][] and friends.

    For the result to be differentiable, `operation(init, v) == v` must hold for every
    finite `v` (`-inf` with `jax.lax.max`, `0` with `jax.lax.add`).

    **Fields:**

    - `init`, `operation`: the reduction.
    - `num_spatial_dims`, `kernel_size`, `stride`, `padding`, `use_ceil`: as passed to
      `__init__` (static); `padding` as `(before, after)` pairs.

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> pool = larix.nn.Pool(-jnp.inf, jax.lax.max, 1, kernel_size=2, stride=2)
        >>> pool(jnp.array([[1.0, 3.0, 2.0, 0.0]]))
        Array([[3., 2.]], dtype=float32)

        ```
    """

    init: int | float | Array
    operation: Callable[[Array, Array], Array]
    num_spatial_dims: int = field(static=True)
    kernel_size: tuple[int, ...] = field(static=True)
    stride: tuple[int, ...] = field(static=True)
    padding: tuple[tuple[int, int], ...] = field(static=True)
    use_ceil: bool = field(static=True)

    def __init__(
        self,
        init: int | float | Array,
        operation: Callable[[Array, Array], Array],
        num_spatial_dims: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | Sequence[tuple[int, int]] = 0,
        use_ceil: bool = False,
    ):
        """**Arguments:**

        - `init`: the initial value of the reduction.
        - `operation`: the binary reduction, such as `jax.lax.max`.
        - `num_spatial_dims`: the number of spatial dimensions.
        - `kernel_size`, `stride`: an int or one int per spatial dimension. Note that the
          stride defaults to 1 (as in Equinox), not to the kernel size (as in PyTorch).
        - `padding`: an int, one int per dimension, or one `(before, after)` pair per
          dimension; padded entries hold `init`.
        - `use_ceil`: round the output size up rather than down, padding the end of each
          dimension with `init` where needed.
        """
        name = type(self).__name__
        check_size(name, "num_spatial_dims", num_spatial_dims)
        n = num_spatial_dims
        self.init = init
        self.operation = operation
        self.num_spatial_dims = n
        self.kernel_size = ntuple(kernel_size, n, name, "kernel_size")
        self.stride = ntuple(stride, n, name, "stride")
        if isinstance(padding, str):
            raise ValueError(f"{name}: `padding` must be ints or (before, after) pairs, got {padding!r}.")
        self.padding = parse_padding(padding, n, name)
        self.use_ceil = use_ceil

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        """**Arguments:**

        - `x`: an array of shape `(channels, dim_1, ..., dim_N)`.
        - `key`: ignored.

        **Returns:** an array of shape `(channels, new_dim_1, ..., new_dim_N)`.

        **Raises:** `ValueError` if `x` has the wrong number of dimensions.
        """
        check_pool_input(self, x, self.num_spatial_dims)
        padding = list(self.padding)
        if self.use_ceil:
            for i, (size, k, s) in enumerate(zip(x.shape[1:], self.kernel_size, self.stride)):
                lo, hi = padding[i]
                padded = size + lo + hi
                windows = -(-(padded - k) // s) + 1  # ceil((padded - k) / s) + 1
                padding[i] = (lo, hi + max((windows - 1) * s + k - padded, 0))
        return jax.lax.reduce_window(
            x,
            _init_value(self.init, x.dtype),
            self.operation,
            (1, *self.kernel_size),
            (1, *self.stride),
            ((0, 0), *padding),
        )


class _PoolNd(Pool):
    # The shared `__init__` of MaxPool1d/2d/3d and AvgPool1d/2d/3d: each subclass sets the
    # reduction `(init, operation)` and the number of spatial dimensions.
    _reduction: ClassVar[tuple[Any, Callable[[Array, Array], Array]]]
    _num_spatial_dims: ClassVar[int]

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | Sequence[tuple[int, int]] = 0,
        use_ceil: bool = False,
    ):
        """**Arguments:**

        - `kernel_size`: the window size: an int or one int per spatial dimension.
        - `stride`: the step between windows: an int or one per dimension. Defaults to 1,
          as in Equinox (PyTorch's default is the kernel size).
        - `padding`: an int, one int per dimension, or `(before, after)` pairs.
        - `use_ceil`: round the output size up rather than down.
        """
        init, operation = self._reduction
        super().__init__(init, operation, self._num_spatial_dims, kernel_size, stride, padding, use_ceil)


class _MaxPoolNd(_PoolNd):
    _reduction = (-np.inf, jax.lax.max)


class _AvgPoolNd(_PoolNd):
    _reduction = (0, jax.lax.add)

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        """**Arguments:** `x`, an array of shape `(channels, ...)`; `key`, ignored.

        **Returns:** the mean over each window (padding counts as zeros).
        """
        return super().__call__(x) / math.prod(self.kernel_size)


class MaxPool1d(_MaxPoolNd):
    """1-dimensional pooling by the maximum over a sliding window, on arrays of shape
    `(channels, dim_1)`: [`larix.nn.Pool`][] with `init=-np.inf` and `operation=jax.lax.max`."""

    _num_spatial_dims = 1


class MaxPool2d(_MaxPoolNd):
    """2-dimensional pooling by the maximum over a sliding window, on arrays of shape
    `(channels, dim_1, dim_2)`: [`larix.nn.Pool`][] with `init=-np.inf` and `operation=jax.lax.max`."""

    _num_spatial_dims = 2


class MaxPool3d(_MaxPoolNd):
    """3-dimensional pooling by the maximum over a sliding window, on arrays of shape
    `(channels, dim_1, dim_2, dim_3)`: [`larix.nn.Pool`][] with `init=-np.inf` and `operation=jax.lax.max`."""

    _num_spatial_dims = 3


class AvgPool1d(_AvgPoolNd):
    """1-dimensional pooling by the mean over a sliding window, on arrays of shape
    `(channels, dim_1)`: [`larix.nn.Pool`][] with `init=0` and `operation=jax.lax.add`."""

    _num_spatial_dims = 1


class AvgPool2d(_AvgPoolNd):
    """2-dimensional pooling by the mean over a sliding window, on arrays of shape
    `(channels, dim_1, dim_2)`: [`larix.nn.Pool`][] with `init=0` and `operation=jax.lax.add`."""

    _num_spatial_dims = 2


class AvgPool3d(_AvgPoolNd):
    """3-dimensional pooling by the mean over a sliding window, on arrays of shape
    `(channels, dim_1, dim_2, dim_3)`: [`larix.nn.Pool`][] with `init=0` and `operation=jax.lax.add`."""

    _num_spatial_dims = 3
