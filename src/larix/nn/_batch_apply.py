"""BatchApply: call a function on inputs whose leading axes are merged into one."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import jax.tree_util as jtu

from .._filters import is_array
from .._module import Module, field
from .._paths import python_path

__all__ = ["BatchApply"]


def _merge_plan(args: tuple[Any, ...], kwargs: dict[str, Any], num_dims: int) -> tuple[int, ...]:
    """The shared leading shape of the inputs to merge; checks that they all agree."""
    lead: tuple[int, ...] | None = None
    first = ""
    for root, tree in (("args", args), ("kwargs", kwargs)):
        for path, leaf in jtu.tree_flatten_with_path(tree)[0]:
            if not is_array(leaf) or jnp.ndim(leaf) < num_dims:
                continue
            here = tuple(jnp.shape(leaf)[:num_dims])
            if lead is None:
                lead, first = here, python_path(path, root)
            elif here != lead:
                raise ValueError(
                    f"BatchApply(num_dims={num_dims}): {python_path(path, root)} has leading "
                    f"dimensions {here}, but {first} has {lead}. Every input with at least "
                    f"{num_dims} dimensions is merged, so all of them must share their first "
                    f"{num_dims} dimensions; pass inputs that should not be merged with fewer "
                    "dimensions, or close over them in `f`."
                )
    if lead is None:
        raise ValueError(
            f"BatchApply(num_dims={num_dims}): no input is an array with at least {num_dims} "
            "dimensions, so there are no leading dimensions to merge. Pass at least one such "
            "array (lower-dimensional arrays, Python scalars and None are passed through)."
        )
    return lead


class BatchApply(Module):
    """Calls `f` with the leading `num_dims` axes of its inputs merged into one, and splits
    them back out of its outputs.

    For a function (or Module) `f` that takes a batch with one leading axis, such as a
    layer mapped with `jax.vmap`, `BatchApply(f)` accepts inputs with two (or `num_dims`)
    leading axes, such as `(time, batch, ...)`: each array input `x` with at least
    `num_dims` dimensions is reshaped to `(prod(x.shape[:num_dims]), *x.shape[num_dims:])`,
    `f` is called once, and every array in its output gets its leading axis split back into
    `x.shape[:num_dims]`.

    Inputs with fewer dimensions, Python scalars and `None` are passed to `f` unchanged.
    Unlike Haiku's and Flax's versions, mismatches are errors rather than silent reshapes:
    all merged inputs must have the same leading dimensions, and every output leaf must be
    an array whose leading axis has the merged size. Errors name the offending input or
    output by its path, such as `args[1]['x']` or `output[0]`.

    `f` is a field, so when it is a Module its parameters are part of this Module's tree
    (trained, saved, and mapped by the filtered transforms).

    **Fields:**

    - `f`: the wrapped callable.
    - `num_dims`: how many leading axes are merged (static).

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> linear = larix.nn.Linear(3, 5, key=jax.random.key(0))
        >>> apply = larix.nn.BatchApply(larix.filter_vmap(linear))  # maps over one axis...
        >>> apply(jnp.ones((7, 2, 3))).shape  # ...applied to two
        (7, 2, 5)
        >>> [x.shape for x in jax.tree_util.tree_leaves(apply)]  # its parameters are in the tree
        [(5, 3), (5,)]

        ```
    """

    f: Callable[..., Any]
    num_dims: int = field(static=True, default=2)

    def __check_init__(self) -> None:
        n = self.num_dims
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"BatchApply: `num_dims` must be an int >= 1, got {n!r}.")
        if not callable(self.f):
            raise TypeError(f"BatchApply: `f` must be callable, got {type(self.f).__name__}.")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """**Arguments:** `*args`, `**kwargs`: the inputs of `f`, with the extra leading
        dimensions on the arrays to merge.

        **Returns:** the output of `f`, each array with its leading axis split back.

        **Raises:** `ValueError` if no input has `num_dims` dimensions, if the merged
        inputs disagree on their leading dimensions, or if an output array does not start
        with an axis of the merged size; `TypeError` if an output leaf is not an array.
        """
        lead = _merge_plan(args, kwargs, self.num_dims)
        merged = math.prod(lead)

        def merge(x: Any) -> Any:
            if not is_array(x) or jnp.ndim(x) < self.num_dims:
                return x
            return jnp.reshape(x, (merged, *jnp.shape(x)[self.num_dims :]))

        out = self.f(*jtu.tree_map(merge, args), **jtu.tree_map(merge, kwargs))

        def split(path: Any, y: Any) -> Any:
            where = python_path(path, "output")
            if not is_array(y):
                raise TypeError(
                    f"BatchApply: {where} is a {type(y).__name__}, not an array, so its leading "
                    f"axis cannot be split back into {lead}. `f` must return arrays (or None) "
                    "only; return other values from outside the BatchApply."
                )
            shape = jnp.shape(y)
            if not shape or shape[0] != merged:
                raise ValueError(
                    f"BatchApply: {where} has shape {tuple(shape)}, but every output of `f` must "
                    f"have the merged leading axis of size {merged} (the inputs' leading "
                    f"dimensions {lead}), to be split back. An output reduced over the batch "
                    "(a mean, a loss) cannot be: reduce after the BatchApply instead."
                )
            return jnp.reshape(y, (*lead, *shape[1:]))

        return jtu.tree_map_with_path(split, out)
