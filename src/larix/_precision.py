"""Mixed precision: float32 master parameters, computation in a lower precision."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import jax.tree_util as jtu

from ._filters import is_inexact_array
from ._partition import combine, partition
from ._paths import python_path

__all__ = ["tree_cast"]


def tree_cast(tree: Any, dtype: Any, *, filter_spec: Any = is_inexact_array) -> Any:
    """Cast the arrays of `tree` that `filter_spec` selects to `dtype`; keep the rest as is.

    The cast is differentiable: cast the parameters *inside* the loss, and the gradients
    come back in the parameters' own dtype. That is mixed-precision training: keep float32
    master parameters (and optimiser state), compute in bfloat16.

    **Arguments:**

    - `tree`: any pytree, a Module for instance.
    - `dtype`: the dtype to cast to (`jnp.bfloat16`, ...).
    - `filter_spec`: which leaves to cast (default: floating-point and complex arrays, so
      that integer arrays, PRNG keys and non-array leaves are left alone). Any filter spec
      of [`larix.partition`][].

    **Returns:** a tree of the same structure.

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> model = larix.nn.Linear(4, 2, key=jax.random.key(0))  # float32 master weights
        >>> def loss(model, x):
        ...     fast = larix.tree_cast(model, jnp.bfloat16)  # computed in bfloat16
        ...     return jnp.sum(fast(x.astype(jnp.bfloat16))).astype(jnp.float32)
        >>> grads = larix.filter_grad(loss)(model, jnp.ones(4))
        >>> grads.weight.dtype  # gradients for the float32 parameters
        dtype('float32')

        ```
    """
    dtype = jnp.dtype(dtype)
    selected, rest = partition(tree, filter_spec)

    def cast(path: Any, leaf: Any) -> Any:
        if not hasattr(leaf, "astype"):
            raise TypeError(
                f"larix.tree_cast: the filter spec selects {python_path(path)}, a "
                f"{type(leaf).__name__}, which has no dtype to cast. Select arrays only "
                "(the default, larix.is_inexact_array, does)."
            )
        return leaf.astype(dtype)

    return combine(jtu.tree_map_with_path(cast, selected), rest)
