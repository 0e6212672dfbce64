"""filter_checkpoint: gradient checkpointing (rematerialisation) of functions of any pytrees."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

from ._filters import is_array
from ._module import field
from ._partition import combine, partition
from ._wrappers import Box, TransformWrapper, check_callable, wrap

__all__ = ["filter_checkpoint"]


class _CheckpointWrapper(TransformWrapper):
    _prevent_cse: bool = field(static=True)
    _policy: Callable[..., bool] | None = field(static=True)

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        # The function's own arrays (a Module's parameters) are inputs of the checkpointed
        # region too, so that their gradients flow through it like the arguments'.
        dynamic, static = partition((self._fun, args, kwargs), is_array)
        out_static = Box()

        def region(d: Any) -> Any:
            fun, region_args, region_kwargs = combine(d, static)
            out_dynamic, out_static.value = partition(fun(*region_args, **region_kwargs), is_array)
            return out_dynamic

        checkpointed = jax.checkpoint(region, prevent_cse=self._prevent_cse, policy=self._policy)
        return combine(checkpointed(dynamic), out_static.value)


def filter_checkpoint(
    fun: Callable[..., Any] | None = None,
    *,
    prevent_cse: bool = True,
    policy: Callable[..., bool] | None = None,
) -> Any:
    """Checkpoint `fun`: recompute its intermediates on the backward pass instead of storing them.

    `jax.checkpoint` (also called `jax.remat`) for functions whose arguments and outputs
    are any pytrees: arrays are inputs of the checkpointed region, everything else is
    static. Wrap each block of a deep model to trade compute for memory when
    differentiating.

    **Arguments:**

    - `fun`: the function to checkpoint, called as `fun(*args, **kwargs)`. It may be a
      Module; its arrays are treated like the arguments'.
    - `prevent_cse`: stop XLA from merging the recomputation with the forward pass (see
      `jax.checkpoint`). `False` is safe, and faster, inside `jax.lax.scan`.
    - `policy`: which intermediates may be saved rather than recomputed, one of
      `jax.checkpoint_policies`; `None` saves nothing.

    **Returns:** a function with the arguments and outputs of `fun`.

    !!! example
        ```python
        >>> import jax.numpy as jnp, larix
        >>> @larix.filter_checkpoint
        ... def block(x, act):
        ...     return act(jnp.sin(x) * 2.0)
        >>> larix.filter_grad(lambda x: jnp.sum(block(x, jnp.tanh)))(jnp.array([0.0]))
        Array([2.], dtype=float32)

        ```
    """
    if fun is None:
        return functools.partial(filter_checkpoint, prevent_cse=prevent_cse, policy=policy)
    check_callable(fun, "filter_checkpoint", "prevent_cse=..., policy=...")
    return wrap(_CheckpointWrapper(fun, prevent_cse, policy))
