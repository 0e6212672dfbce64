"""Tracing without running: filter_eval_shape and filter_make_jaxpr for functions of any pytrees."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.tree_util as jtu

from ._filters import is_array
from ._partition import combine, partition
from ._wrappers import Box

__all__ = ["filter_eval_shape", "filter_make_jaxpr"]


def is_shaped(x: Any) -> bool:
    """Whether `x` is traced by the shape transforms: an array or anything with `.shape` and `.dtype`."""
    return is_array(x) or (hasattr(x, "shape") and hasattr(x, "dtype"))


def filter_eval_shape(fun: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The output of `fun(*args, **kwargs)` with shapes in place of arrays, computing nothing.

    Like `jax.eval_shape`, for any pytrees: arrays (and `jax.ShapeDtypeStruct`s) in the
    arguments, and the arrays of `fun` itself, are traced abstractly; every other leaf is
    passed as is. In the output, arrays become `jax.ShapeDtypeStruct`s and other leaves
    are returned unchanged.

    Applied to a model's constructor this builds the model's skeleton without allocating
    or initialising any parameter: the template to load a checkpoint into, or to check a
    large model's parameter count.

    **Arguments:**

    - `fun`: the function (or class) to evaluate.
    - `*args`, `**kwargs`: its arguments; arrays may be given as `jax.ShapeDtypeStruct`.

    **Returns:** the output structure, with `jax.ShapeDtypeStruct` leaves for arrays.

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> class Linear(larix.Module):
        ...     weight: jax.Array
        ...     activation: str = larix.field(static=True)
        ...     def __init__(self, n_in, n_out, key, activation="relu"):
        ...         self.weight = jax.random.normal(key, (n_out, n_in))
        ...         self.activation = activation
        >>> skeleton = larix.filter_eval_shape(Linear, 2, 3, jax.random.key(0))
        >>> skeleton.weight, skeleton.activation
        (ShapeDtypeStruct(shape=(3, 2), dtype=float32), 'relu')

        ```
    """
    dynamic, static = partition((fun, args, kwargs), is_shaped)
    out_static = Box()

    def abstract(d: Any) -> Any:
        f, call_args, call_kwargs = combine(d, static)
        out_dynamic, out_static.value = partition(f(*call_args, **call_kwargs), is_array)
        return out_dynamic

    return combine(jax.eval_shape(abstract, dynamic), out_static.value)


def filter_make_jaxpr(fun: Callable[..., Any]) -> Callable[..., tuple[Any, Any, Any]]:
    """Transform `fun` to return its jaxpr (the program JAX traces), for any pytrees.

    Like `jax.make_jaxpr`: the arguments with `.shape` and `.dtype` (arrays,
    `jax.ShapeDtypeStruct`s) are the jaxpr's inputs, in the order of
    `jax.tree_util.tree_leaves((args, kwargs))`; all other leaves, Python numbers included,
    are constants of the program. Arrays that `fun` closes over (a Module's parameters)
    become the closed jaxpr's constants.

    **Arguments:**

    - `fun`: the function to trace.

    **Returns:** a function with the arguments of `fun`, returning a triple
    `(closed_jaxpr, out_shapes, out_static)`: a `ClosedJaxpr`; the output with a
    `jax.ShapeDtypeStruct` for each array and `None` elsewhere; and the output with its
    non-array leaves, `None` at the arrays.

    !!! example
        ```python
        >>> import jax.numpy as jnp, larix
        >>> jaxpr, shapes, static = larix.filter_make_jaxpr(lambda x, n: (x * n, "label"))(jnp.ones(3), 2.0)
        >>> jaxpr
        { lambda ; a:f32[3]. let b:f32[3] = mul a 2.0:f32[] in (b,) }
        >>> shapes, static
        ((ShapeDtypeStruct(shape=(3,), dtype=float32), None), (None, 'label'))

        ```
    """

    def make_jaxpr(*args: Any, **kwargs: Any) -> tuple[Any, Any, Any]:
        dynamic, static = partition((args, kwargs), is_shaped)
        leaves, treedef = jtu.tree_flatten(dynamic)
        out_static = Box()

        def traced(*values: Any) -> list[Any]:
            call_args, call_kwargs = combine(treedef.unflatten(values), static)
            out_dynamic, out_static.value = partition(fun(*call_args, **call_kwargs), is_array)
            out_leaves, out_static_def = jtu.tree_flatten(out_dynamic)
            out_static.value = (out_static.value, out_static_def)
            return out_leaves

        closed_jaxpr, out_structs = jax.make_jaxpr(traced, return_shape=True)(*leaves)
        out_static_tree, out_def = out_static.value
        return closed_jaxpr, out_def.unflatten(out_structs), out_static_tree

    make_jaxpr.__wrapped__ = fun  # type: ignore[attr-defined]
    return make_jaxpr
