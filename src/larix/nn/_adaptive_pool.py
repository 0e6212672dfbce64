"""AdaptivePool: pool to a fixed output shape; AdaptiveAvgPool1d/2d/3d, AdaptiveMaxPool1d/2d/3d."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import jax
import jax.numpy as jnp

from .._module import Module, field
from ._misc import check_size, ntuple
from ._pool import check_pool_input

if TYPE_CHECKING:
    from jaxtyping import Array, PRNGKeyArray

__all__ = [
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AdaptiveAvgPool3d",
    "AdaptiveMaxPool1d",
    "AdaptiveMaxPool2d",
    "AdaptiveMaxPool3d",
    "AdaptivePool",
]


def _adaptive_axis(x: Any, axis: int, target: int, operation: Callable[[Any], Any]) -> Any:
    # `size` entries into `target` contiguous bins: the first `size % target` bins hold one
    # entry more than the others (as in Equinox; PyTorch's bins may overlap instead).
    size = x.shape[axis]
    small, num_large = divmod(size, target)
    moved = jnp.moveaxis(x, axis, -1)
    lead = moved.shape[:-1]
    flat = moved.reshape(-1, size)
    reduce_bins = jax.vmap(jax.vmap(operation))
    split = num_large * (small + 1)
    parts = []
    if num_large:
        parts.append(reduce_bins(flat[:, :split].reshape(-1, num_large, small + 1)))
    if target > num_large:
        parts.append(reduce_bins(flat[:, split:].reshape(-1, target - num_large, small)))
    out = jnp.concatenate(parts, axis=-1).reshape(*lead, target)
    return jnp.moveaxis(out, -1, axis)


class AdaptivePool(Module):
    """Pools an array of shape `(channels, dim_1, ..., dim_N)` to the fixed shape
    `(channels, *target_shape)`, whatever the input size: each spatial dimension is cut
    into `target` contiguous bins of (nearly) equal size and `operation` reduces each.

    **Fields:**

    - `target_shape`: the output's spatial shape (static).
    - `operation`: reduces a 1-dimensional array to a scalar, such as `jnp.mean`.

    !!! example
        ```python
        >>> import jax.numpy as jnp, larix
        >>> pool = larix.nn.AdaptiveAvgPool1d(2)
        >>> pool(jnp.array([[1.0, 2.0, 3.0, 4.0, 5.0]]))  # bins [1, 2, 3] and [4, 5]
        Array([[2. , 4.5]], dtype=float32)

        ```
    """

    target_shape: tuple[int, ...] = field(static=True)
    operation: Callable[[Array], Array]

    def __init__(self, target_shape: int | Sequence[int], num_spatial_dims: int, operation: Callable[[Array], Array]):
        """**Arguments:**

        - `target_shape`: the output's spatial shape: an int or one int per dimension.
        - `num_spatial_dims`: the number of spatial dimensions.
        - `operation`: reduces a 1-dimensional array to a scalar (`jnp.mean`, `jnp.max`).
        """
        name = type(self).__name__
        check_size(name, "num_spatial_dims", num_spatial_dims)
        self.target_shape = ntuple(target_shape, num_spatial_dims, name, "target_shape")
        self.operation = operation

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        """**Arguments:**

        - `x`: an array of shape `(channels, dim_1, ..., dim_N)`, each `dim_i` at least
          `target_shape[i]`.
        - `key`: ignored.

        **Returns:** an array of shape `(channels, *target_shape)`.

        **Raises:** `ValueError` if `x` has the wrong number of dimensions or is smaller
        than the target.
        """
        check_pool_input(self, x, len(self.target_shape))
        if any(size < t for size, t in zip(x.shape[1:], self.target_shape)):
            raise ValueError(
                f"{type(self).__name__}: cannot pool the spatial shape {x.shape[1:]} to the larger "
                f"{self.target_shape}; every dimension must be at least its target."
            )
        for axis, target in enumerate(self.target_shape, start=1):
            x = _adaptive_axis(x, axis, target, self.operation)
        return x


class _AdaptivePoolNd(AdaptivePool):
    # The shared `__init__` of AdaptiveAvgPool1d/2d/3d and AdaptiveMaxPool1d/2d/3d: each
    # subclass sets the reduction and the number of spatial dimensions.
    _operation: ClassVar[Callable[[Array], Array]]
    _num_spatial_dims: ClassVar[int]

    def __init__(self, target_shape: int | Sequence[int]):
        """**Arguments:**

        - `target_shape`: the output's spatial shape: an int or one int per dimension.
        """
        super().__init__(target_shape, self._num_spatial_dims, self._operation)


class _AdaptiveAvgPoolNd(_AdaptivePoolNd):
    _operation = staticmethod(jnp.mean)


class _AdaptiveMaxPoolNd(_AdaptivePoolNd):
    _operation = staticmethod(jnp.max)


class AdaptiveAvgPool1d(_AdaptiveAvgPoolNd):
    """Adaptive 1-dimensional pooling by the mean to a fixed output shape:
    [`larix.nn.AdaptivePool`][] with `num_spatial_dims=1` and `operation=jnp.mean`."""

    _num_spatial_dims = 1


class AdaptiveAvgPool2d(_AdaptiveAvgPoolNd):
    """Adaptive 2-dimensional pooling by the mean to a fixed output shape:
    [`larix.nn.AdaptivePool`][] with `num_spatial_dims=2` and `operation=jnp.mean`."""

    _num_spatial_dims = 2


class AdaptiveAvgPool3d(_AdaptiveAvgPoolNd):
    """Adaptive 3-dimensional pooling by the mean to a fixed output shape:
    [`larix.nn.AdaptivePool`][] with `num_spatial_dims=3` and `operation=jnp.mean`."""

    _num_spatial_dims = 3


class AdaptiveMaxPool1d(_AdaptiveMaxPoolNd):
    """Adaptive 1-dimensional pooling by the maximum to a fixed output shape:
    [`larix.nn.AdaptivePool`][] with `num_spatial_dims=1` and `operation=jnp.max`."""

    _num_spatial_dims = 1


class AdaptiveMaxPool2d(_AdaptiveMaxPoolNd):
    """Adaptive 2-dimensional pooling by the maximum to a fixed output shape:
    [`larix.nn.AdaptivePool`][] with `num_spatial_dims=2` and `operation=jnp.max`."""

    _num_spatial_dims = 2


class AdaptiveMaxPool3d(_AdaptiveMaxPoolNd):
    """Adaptive 3-dimensional pooling by the maximum to a fixed output shape:
    [`larix.nn.AdaptivePool`][] with `num_spatial_dims=3` and `operation=jnp.max`."""

    _num_spatial_dims = 3
