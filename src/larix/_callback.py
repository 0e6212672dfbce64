"""Crossing the boundary of traced code: filter_pure_callback and filter_closure_convert."""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import jax
import jax.tree_util as jtu
import numpy as np

from ._filters import is_array
from ._module import Module, field
from ._partition import combine, partition
from ._shapes import filter_eval_shape
from ._tree import tree_equal
from ._wrappers import Box, check_callable

__all__ = ["filter_closure_convert", "filter_pure_callback"]


def _is_struct(x: Any) -> bool:
    return isinstance(x, jax.ShapeDtypeStruct)


def _is_array_or_struct(x: Any) -> bool:
    return is_array(x) or isinstance(x, jax.ShapeDtypeStruct)


def filter_pure_callback(
    callback: Callable[..., Any],
    *args: Any,
    result_shape_dtypes: Any,
    sharding: Any = None,
    vmap_method: str | None = None,
    **kwargs: Any,
) -> Any:
    """Call a Python function from traced code, with arguments and results of any pytrees.

    `jax.pure_callback` for pytrees: the arrays among the arguments are handed to
    `callback` with their concrete values at run time; every other leaf is passed as is.
    The callback must be pure (JAX may skip or repeat it).

    **Arguments:**

    - `callback`: the Python function, called as `callback(*args, **kwargs)`.
    - `*args`, `**kwargs`: its arguments, any pytrees.
    - `result_shape_dtypes`: keyword-only; the output's structure, with a
      `jax.ShapeDtypeStruct` for each array. Other leaves are constants that the callback
      must return unchanged; they are returned as they are.
    - `sharding`: optional; the sharding of the callback's outputs (see `jax.pure_callback`).
    - `vmap_method`: how the callback behaves under `vmap`: `"sequential"`,
      `"expand_dims"`, `"broadcast_all"` (see `jax.pure_callback`). `None` forbids `vmap`.

    **Returns:** the output of `callback`, with JAX arrays.

    **Raises:** at run time, when the callback's output does not match `result_shape_dtypes`,
    a `ValueError` inside the callback, which JAX re-raises as `jax.errors.JaxRuntimeError`.

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, numpy as np, larix
        >>> def host_sort(x, descending):
        ...     out = np.sort(x)
        ...     return (out[::-1] if descending else out), "sorted"
        >>> @jax.jit
        ... def f(x):
        ...     result = (jax.ShapeDtypeStruct(x.shape, x.dtype), "sorted")
        ...     return larix.filter_pure_callback(host_sort, x, True, result_shape_dtypes=result)[0]
        >>> f(jnp.array([2.0, 3.0, 1.0]))
        Array([3., 2., 1.], dtype=float32)

        ```
    """
    dynamic, static = partition((args, kwargs), is_array)
    leaves, treedef = jtu.tree_flatten(dynamic)
    results, result_def = jtu.tree_flatten(result_shape_dtypes)
    structs = [r for r in results if _is_struct(r)]
    name = getattr(callback, "__name__", repr(callback))

    def on_host(*values: Any) -> list[np.ndarray]:
        call_args, call_kwargs = combine(treedef.unflatten(values), static)
        out = callback(*call_args, **call_kwargs)
        try:
            out_leaves = result_def.flatten_up_to(out)
        except (ValueError, TypeError):
            raise ValueError(
                f"larix.filter_pure_callback: {name} returned a value of structure "
                f"{jtu.tree_structure(out)}, but result_shape_dtypes has structure {result_def}."
            ) from None
        arrays = []
        for got, expected in zip(out_leaves, results):
            if _is_struct(expected):
                array = np.asarray(got, dtype=expected.dtype)
                if array.shape != expected.shape:
                    raise ValueError(
                        f"larix.filter_pure_callback: {name} returned an array of shape "
                        f"{array.shape} where result_shape_dtypes says {expected.shape}."
                    )
                arrays.append(array)
            elif tree_equal(got, expected) is not True:
                raise ValueError(
                    f"larix.filter_pure_callback: {name} returned {got!r} where "
                    f"result_shape_dtypes has the constant {expected!r}; non-array outputs "
                    "must equal the ones given there."
                )
        return arrays

    out = jax.pure_callback(on_host, structs, *leaves, sharding=sharding, vmap_method=vmap_method)
    out_it = iter(out)
    return result_def.unflatten([next(out_it) if _is_struct(r) else r for r in results])


class _ClosureConverted(Module):
    """A traced function whose closed-over arrays are leaves: see `filter_closure_convert`."""

    # A leaf, not a static field (as in Equinox): two conversions of the same function give
    # two jaxprs, equal only by identity, and a static field would make their trees differ.
    # As a non-array leaf it goes with the static half of `partition`, so that
    # `combine(filter(a, is_array), filter(b, is_array, inverse=True))` takes b's (optimistix
    # relies on this).
    jaxpr: Any
    consts: list[Any]
    in_structs: tuple[jax.ShapeDtypeStruct, ...] = field(static=True)
    in_def: Any = field(static=True)
    # Static parts are kept flat, (leaves, treedef), so that they stay hashable.
    in_static: tuple[tuple[Any, ...], Any] = field(static=True)
    out_def: Any = field(static=True)
    out_structs: tuple[jax.ShapeDtypeStruct, ...] = field(static=True)
    out_static: tuple[tuple[Any, ...], Any] = field(static=True)

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        dynamic, static = partition((args, kwargs), is_array)
        leaves, treedef = jtu.tree_flatten(dynamic)
        structs = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves)
        if treedef != self.in_def or structs != self.in_structs:
            raise ValueError(
                "larix.filter_closure_convert: the converted function takes arrays of the "
                "shapes and dtypes of its example arguments, "
                f"{[f'{s.dtype}{list(s.shape)}' for s in self.in_structs]}, but got "
                f"{[f'{s.dtype}{list(s.shape)}' for s in structs]}. Convert it again with "
                "these arguments."
            )
        if tree_equal(static, _unflatten(self.in_static)) is not True:
            raise ValueError(
                "larix.filter_closure_convert: the non-array arguments differ from the "
                f"example ones (got {static!r}, converted with {_unflatten(self.in_static)!r}). "
                "They are constants of the converted function: convert it again with these "
                "arguments."
            )
        out = jax.core.eval_jaxpr(self.jaxpr, self.consts, *leaves)
        return combine(self.out_def.unflatten(out), _unflatten(self.out_static))

    @property
    def in_struct(self) -> Any:
        """The example arguments `(args, kwargs)`, with `jax.ShapeDtypeStruct`s for the arrays."""
        return combine(self.in_def.unflatten(list(self.in_structs)), _unflatten(self.in_static))

    @property
    def out_struct(self) -> Any:
        """The output, with `jax.ShapeDtypeStruct`s for the arrays."""
        return combine(self.out_def.unflatten(list(self.out_structs)), _unflatten(self.out_static))


class _TrivialClosureConvert(Module):
    """`filter_closure_convert` of a plain function without a closure: the function itself.

    Named as in Equinox, whose tests check the name.
    """

    fn: Callable[..., Any]
    # Kept flat, (leaves, treedef), so that it stays hashable: see `in_struct`.
    in_flat: tuple[tuple[Any, ...], Any] = field(static=True)

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    @property
    def in_struct(self) -> Any:
        """The example arguments `(args, kwargs)`, with `jax.ShapeDtypeStruct`s for the arrays."""
        return _unflatten(self.in_flat)

    @property
    def out_struct(self) -> Any:
        """The output, with `jax.ShapeDtypeStruct`s for the arrays (computed when asked)."""
        args, kwargs = self.in_struct
        return filter_eval_shape(self.fn, *args, **kwargs)


def _flatten(tree: Any) -> tuple[tuple[Any, ...], Any]:
    leaves, treedef = jtu.tree_flatten(tree)
    return tuple(leaves), treedef


def _unflatten(flat: tuple[tuple[Any, ...], Any]) -> Any:
    leaves, treedef = flat
    return treedef.unflatten(leaves)


def filter_closure_convert(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Make the arrays that `fn` closes over explicit leaves of a pytree.

    Traces `fn` at example arguments and returns an equivalent function that is a Module
    whose `consts` are every array `fn` closes over: JAX tracers of an enclosing
    transform included. Use it before handing a closure across a boundary that must see
    all its inputs, such as the rules of `filter_custom_vjp` or `jax.custom_vjp`.

    **Arguments:**

    - `fn`: the function, called as `fn(*args, **kwargs)`.
    - `*args`, `**kwargs`: example arguments. Their arrays (or `jax.ShapeDtypeStruct`s)
      fix the shapes and dtypes the converted function accepts; their other leaves are
      constants it requires.

    **Returns:** a callable Module with the arguments and outputs of `fn`. A plain function
    without a closure can hold no tracer, so it is kept as it is (the Module's type is then
    `_TrivialClosureConvert`, as in Equinox); anything else is traced once, here, and the
    Module holds the jaxpr (a leaf) and the closed-over arrays.

    **Raises:** `ValueError` when the converted function is called with arrays of other
    shapes or dtypes, or with different non-array arguments.

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> @jax.jit
        ... def f(z):
        ...     g = larix.filter_closure_convert(lambda a, scale: z * a * scale, jnp.array(0.0), 3)
        ...     assert g.consts[0] is z  # the tracer `z` is now a leaf of `g`
        ...     return g(jnp.array(2.0), 3)
        >>> f(jnp.array([1.0, 2.0]))
        Array([ 6., 12.], dtype=float32)

        ```
    """
    check_callable(fn, "filter_closure_convert", "*example_args")
    dynamic, static = partition((args, kwargs), _is_array_or_struct)
    leaves, treedef = jtu.tree_flatten(dynamic)
    structs = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves)
    if isinstance(fn, types.FunctionType) and fn.__closure__ is None:
        # A plain function without a closure can hold no tracer: keep it (as Equinox does),
        # with no tracing now and no jaxpr to evaluate on each call. Anything else (a
        # closure, a pytree callable) is traced, so that its structure becomes a jaxpr
        # leaf and stays the same across conversions of the same function.
        return _TrivialClosureConvert(fn, _flatten(combine(treedef.unflatten(list(structs)), static)))
    out_box = Box()

    def traced(*values: Any) -> list[Any]:
        call_args, call_kwargs = combine(treedef.unflatten(values), static)
        out_dynamic, out_static = partition(fn(*call_args, **call_kwargs), is_array)
        out_leaves, out_def = jtu.tree_flatten(out_dynamic)
        out_box.value = (out_def, out_static)
        return out_leaves

    closed, out_shapes = jax.make_jaxpr(traced, return_shape=True)(*leaves)
    out_def, out_static = out_box.value
    out_structs = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in out_shapes)
    return _ClosureConverted(
        closed.jaxpr, list(closed.consts), structs, treedef, _flatten(static), out_def, out_structs, _flatten(out_static)
    )
