"""filter_vmap: vectorise a function of any pytrees over a batch axis.

The axis machinery here is shared with `filter_pmap` (`_pmap.py`). Both resolve the axis
specs to one axis (or `None`) per leaf of the arguments, hand the mapped arrays to
`jax.vmap` / `jax.pmap` as a flat list, and close over the rest. Outputs leave the JAX
transform on axis 0 (arrays) or not at all (everything else), and are then moved to the
axis that `out_axes` asks for.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from ._filters import is_array
from ._module import field
from ._paths import PrefixMismatchError, broadcast_prefix, python_path
from ._tree import if_array
from ._wrappers import Box, TransformWrapper, argument_path, check_callable, describe, wrap

__all__ = ["filter_vmap"]

DEFAULT_AXES = if_array(0)
_UNBATCHED_ERROR = re.compile(r"out_axes\[1\]\[(\d+)\], got axis spec None but output was batched")


_SCALARS = (bool, int, float, complex)


class NonArrayOutputAxisError(TypeError, ValueError):
    """An int axis in `out_axes` for an output that is not an array (nor a Python number).

    A `TypeError`, as Equinox raises (from JAX) for such an output, and a `ValueError`, as
    larix raised before.
    """


class AxisSpec:
    """An axis spec kept in a static field. Compared by identity: specs may contain dicts."""

    __slots__ = ("spec",)

    def __init__(self, spec: Any):
        self.spec = spec

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AxisSpec) and other.spec is self.spec

    def __hash__(self) -> int:
        return id(self.spec)

    def __repr__(self) -> str:
        return "if_array(0)" if self.spec is DEFAULT_AXES else repr(self.spec)


def _is_none(x: Any) -> bool:
    return x is None


def check_spec(spec: Any, what: str, name: str) -> AxisSpec:
    """Validate an `in_axes` / `out_axes` argument when the transform is created."""
    for path, leaf in jtu.tree_flatten_with_path(spec, is_leaf=_is_none)[0]:
        if leaf is None or callable(leaf) or (isinstance(leaf, int) and not isinstance(leaf, bool)):
            continue
        raise ValueError(
            f"larix.{name}: {python_path(path, what)} is {leaf!r}, but an axis spec consists of "
            "ints (the axis), None (not mapped) and callables `leaf -> int | None`, such as "
            "larix.if_array(0)."
        )
    return AxisSpec(spec)


def _specs_by_name(fun: Any, in_axes: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> tuple[Any, Any]:
    """Per-argument specs from `in_axes={"param": spec}`; unnamed parameters get the default."""
    try:
        params = list(inspect.signature(fun).parameters.values())
    except (TypeError, ValueError):
        raise TypeError(
            f"larix.{name}: in_axes is a dict of parameter names, but the signature of {fun!r} "
            "cannot be read. Give in_axes as a tuple with one spec per positional argument."
        ) from None
    names = {p.name for p in params}
    unknown = sorted(set(in_axes) - names)
    if unknown:
        raise ValueError(
            f"larix.{name}: in_axes names {', '.join(map(repr, unknown))}, which "
            f"{'is not a parameter' if len(unknown) == 1 else 'are not parameters'} of the "
            f"function; its parameters are {', '.join(p.name for p in params)}."
        )
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var_args = next((p.name for p in params if p.kind is p.VAR_POSITIONAL), None)
    var_kwargs = next((p.name for p in params if p.kind is p.VAR_KEYWORD), None)
    passed = set(positional[: len(args)]) | set(kwargs)
    if len(args) > len(positional) and var_args is not None:
        passed.add(var_args)
    if var_kwargs is not None and set(kwargs) - names:
        passed.add(var_kwargs)
    missing = sorted(set(in_axes) - passed)
    if missing:
        # As in Equinox: an axis for a parameter left at its default is a mistake (there is
        # no argument to map), even an axis of None.
        raise ValueError(
            f"larix.{name}: in_axes names {', '.join(map(repr, missing))}, but the call did not "
            f"pass {'it' if len(missing) == 1 else 'them'} (a default value is used). Pass "
            f"{'it' if len(missing) == 1 else 'them'} explicitly, or leave "
            f"{'it' if len(missing) == 1 else 'them'} out of in_axes."
        )
    arg_specs = []
    for i in range(len(args)):
        param = positional[i] if i < len(positional) else var_args
        arg_specs.append(in_axes.get(param, DEFAULT_AXES))
    kw_specs = {k: in_axes.get(k if k in names else var_kwargs, DEFAULT_AXES) for k in kwargs}
    return tuple(arg_specs), kw_specs


def _argument_specs(fun: Any, in_axes: Any, args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> tuple[Any, Any]:
    if isinstance(in_axes, dict):
        return _specs_by_name(fun, in_axes, args, kwargs, name)
    if isinstance(in_axes, (tuple, list)):
        if len(in_axes) != len(args):
            raise ValueError(
                f"larix.{name}: in_axes has {len(in_axes)} entries, but the function was called "
                f"with {len(args)} positional arguments. Give one spec per positional argument, "
                "a single spec for all of them, or a dict naming parameters."
            )
        return tuple(in_axes), {k: DEFAULT_AXES for k in kwargs}
    return tuple(in_axes for _ in args), {k: in_axes for k in kwargs}


def _leaf_axes(spec: Any, tree: Any, where: Callable[[tuple[Any, ...]], str], what: str, name: str) -> list[Any]:
    """The axis (int or None) for each leaf of `tree`, from a prefix `spec` of it."""
    try:
        per_leaf = broadcast_prefix(spec, tree, prefix_is_leaf=_is_none)
    except PrefixMismatchError as error:
        raise ValueError(
            f"larix.{name}: {what} must be a pytree prefix of the {'output' if what == 'out_axes' else 'arguments'}, "
            f"but at {where(error.path)} there is {error.why}."
        ) from None
    leaves = jtu.tree_leaves(tree)
    axes = [s(leaf) if callable(s) else s for (_, s), leaf in zip(per_leaf, leaves)]
    for i, axis in enumerate(axes):
        if axis is not None and (not isinstance(axis, int) or isinstance(axis, bool)):
            raise TypeError(
                f"larix.{name}: a callable in {what} returned {axis!r} for "
                f"{where(_path_of(tree, i))}; it must return an int axis or None."
            )
    return axes


def _path_of(tree: Any, index: int) -> tuple[Any, ...]:
    # Only for error messages: paths cost a second flatten, so they are not kept.
    return jtu.tree_flatten_with_path(tree)[0][index][0]


def _output_path(path: tuple[Any, ...]) -> str:
    return python_path(path, "output")


def resolve_inputs(fun: Any, in_axes: Any, args: tuple[Any, ...], kwargs: dict[str, Any], axis_size: int | None, name: str) -> tuple[list[Any], Any, list[Any], int | None]:
    """Flatten the arguments and find each leaf's axis; check that the mapped sizes agree."""
    tree = (args, kwargs)
    leaves, treedef = jtu.tree_flatten(tree)
    specs = _argument_specs(fun, in_axes, args, kwargs, name)
    axes = _leaf_axes(specs, tree, argument_path, "in_axes", name)
    sizes: dict[int, int] = {}
    for i, (leaf, axis) in enumerate(zip(leaves, axes)):
        if axis is None:
            continue
        if not is_array(leaf):
            raise ValueError(
                f"larix.{name}: in_axes maps {argument_path(_path_of(tree, i))} ({describe(leaf)}) "
                f"over axis {axis}, but only arrays can be mapped. Give it the axis None, or use "
                "larix.if_array(axis), which maps arrays only."
            )
        if not -leaf.ndim <= axis < leaf.ndim:
            raise ValueError(
                f"larix.{name}: in_axes maps {argument_path(_path_of(tree, i))} over axis {axis}, "
                f"but it has shape {tuple(leaf.shape)}. Use an axis between {-leaf.ndim} and "
                f"{leaf.ndim - 1}, or None."
            )
        sizes.setdefault(leaf.shape[axis], i)
    if len(sizes) > 1 or (sizes and axis_size is not None and axis_size not in sizes):
        found = ", ".join(f"{argument_path(_path_of(tree, i))} has {n}" for n, i in sizes.items())
        wanted = f" (axis_size={axis_size})" if axis_size is not None else ""
        raise ValueError(
            f"larix.{name}: the mapped axes must all have the same size{wanted}, but {found}. "
            "Check the batch sizes, or give the mismatched arguments the axis None."
        )
    if not sizes and axis_size is None:
        raise ValueError(
            f"larix.{name}: nothing to map over: no argument has an array mapped by in_axes. "
            "Pass axis_size=N to evaluate the function N times on the same inputs, or check in_axes."
        )
    return leaves, treedef, axes, axis_size


def split_output(out: Any, out_axes: Any, name: str, box: Box) -> tuple[list[Any], list[Any]]:
    """Inside the transform: route each output leaf to the batched, unbatched or static part."""
    leaves, treedef = jtu.tree_flatten(out)
    axes = _leaf_axes(out_axes, out, _output_path, "out_axes", name)
    batched, unbatched, static = [], [], []
    for i, (leaf, axis) in enumerate(zip(leaves, axes)):
        if not is_array(leaf) and axis is not None and isinstance(leaf, _SCALARS):
            # As in Equinox: a Python number given an axis is an array, the same for each
            # element of the batch (`out_axes=0` of `1` gives `[1, 1, ...]`).
            leaf = leaves[i] = jnp.asarray(leaf)
        if not is_array(leaf):
            if axis is not None:
                raise NonArrayOutputAxisError(
                    f"larix.{name}: out_axes asks for {_output_path(_path_of(out, i))} "
                    f"({describe(leaf)}) on axis {axis}, but only arrays (and Python numbers) can "
                    "be batched: other outputs are returned once, unbatched. Give it None, or use "
                    "larix.if_array(axis)."
                )
            static.append(leaf)
        elif axis is None:
            unbatched.append(leaf)
        elif not -(leaf.ndim + 1) <= axis <= leaf.ndim:
            raise ValueError(
                f"larix.{name}: out_axes puts the batch axis of {_output_path(_path_of(out, i))} "
                f"at {axis}, but the batched output has only {leaf.ndim + 1} axes."
            )
        else:
            batched.append(leaf)
    box.value = (treedef, axes, [is_array(x) for x in leaves], static)
    return batched, unbatched


def merge_output(box: Box, batched: list[Any], unbatched: list[Any]) -> Any:
    treedef, axes, arrays, static = box.value
    batched_it, unbatched_it, static_it = iter(batched), iter(unbatched), iter(static)
    leaves = []
    for axis, array in zip(axes, arrays):
        if not array:
            leaves.append(next(static_it))
        elif axis is None:
            leaves.append(next(unbatched_it))
        else:
            x = next(batched_it)
            leaves.append(x if axis == 0 else jnp.moveaxis(x, 0, axis))
    return treedef.unflatten(leaves)


def _explain_batched_output(error: ValueError, box: Box, name: str) -> ValueError:
    match = _UNBATCHED_ERROR.search(str(error))
    treedef, axes, arrays, _ = box.value
    unbatched = [i for i, (axis, array) in enumerate(zip(axes, arrays)) if array and axis is None]
    dummy = treedef.unflatten([0] * treedef.num_leaves)
    if match is not None and int(match.group(1)) < len(unbatched):
        what = _output_path(_path_of(dummy, unbatched[int(match.group(1))]))
    else:
        what = "an output"
    return ValueError(
        f"larix.{name}: out_axes gives {what} the axis None (unbatched), but it depends on the "
        "mapped inputs, so it differs across the batch. Give it an int axis."
    )


class _VmapWrapper(TransformWrapper):
    _in_axes: AxisSpec = field(static=True)
    _out_axes: AxisSpec = field(static=True)
    _axis_name: Hashable | None = field(static=True)
    _axis_size: int | None = field(static=True)

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        leaves, treedef, axes, axis_size = resolve_inputs(
            self._fun, self._in_axes.spec, args, kwargs, self._axis_size, "filter_vmap"
        )
        mapped = [i for i, axis in enumerate(axes) if axis is not None]
        box = Box()

        def body(values: list[Any]) -> tuple[list[Any], list[Any]]:
            new = list(leaves)
            for i, v in zip(mapped, values):
                new[i] = v
            call_args, call_kwargs = treedef.unflatten(new)
            return split_output(self._fun(*call_args, **call_kwargs), self._out_axes.spec, "filter_vmap", box)

        vmapped = jax.vmap(
            body, in_axes=([axes[i] for i in mapped],), out_axes=(0, None), axis_name=self._axis_name, axis_size=axis_size
        )
        try:
            batched, unbatched = vmapped([leaves[i] for i in mapped])
        except ValueError as error:
            if box.value is None or _UNBATCHED_ERROR.search(str(error)) is None:
                raise
            raise _explain_batched_output(error, box, "filter_vmap") from None
        return merge_output(box, batched, unbatched)


def filter_vmap(
    fun: Callable[..., Any] | None = None,
    *,
    in_axes: Any = DEFAULT_AXES,
    out_axes: Any = DEFAULT_AXES,
    axis_name: Hashable | None = None,
    axis_size: int | None = None,
) -> Any:
    """Vectorise `fun` over a batch axis: by default, every array's axis 0.

    Like `jax.vmap`, for functions of any pytrees: arrays are mapped (by default over
    their leading axis) and all other leaves are passed unchanged to every call.

    An axis spec is a pytree whose leaves are an `int` (map over that axis), `None` (do not
    map: broadcast), or a callable `leaf -> int | None` applied to every leaf below it, such
    as `larix.if_array(0)` (the default: axis 0 for arrays, `None` for the rest).

    **Arguments:**

    - `fun`: the function; may be a Module (`filter_vmap(model)(xs)`) or a bound method.
      Its own arrays are not mapped.
    - `in_axes`: a spec for all arguments; a tuple with one spec per positional argument
      (keyword arguments then take the default); or a dict `{parameter name: spec}`, the
      parameters it does not name taking the default. Each spec is a prefix of its argument.
    - `out_axes`: a spec, prefix of the output, of where the batch axis goes. Outputs that
      are not arrays are the same for the whole batch and are returned once, unbatched;
      arrays with the axis `None` must not depend on the mapped inputs.
    - `axis_name`: names the mapped axis for collectives such as `jax.lax.psum`.
    - `axis_size`: the batch size; needed only when no argument is mapped.

    **Returns:** the vectorised function.

    **Raises:** `ValueError` naming the argument (`args[1].weight`) whose axis does not
    exist, is given to a non-array, or has a size that differs from the others'.

    !!! example "An ensemble of models"
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> class Affine(larix.Module):
        ...     weight: jax.Array
        ...     name: str = larix.field(static=True, default="affine")
        ...     def __call__(self, x):
        ...         return self.weight * x
        >>> make = lambda key: Affine(jax.random.normal(key, (3,)))
        >>> ensemble = larix.filter_vmap(make)(jax.random.split(jax.random.key(0), 5))
        >>> ensemble.weight.shape, ensemble.name
        ((5, 3), 'affine')
        >>> # Every member on the same input: map the models, broadcast x.
        >>> larix.filter_vmap(lambda m, x: m(x), in_axes=(0, None))(ensemble, jnp.ones(3)).shape
        (5, 3)

        ```
    """
    if fun is None:
        return functools.partial(filter_vmap, in_axes=in_axes, out_axes=out_axes, axis_name=axis_name, axis_size=axis_size)
    check_callable(fun, "filter_vmap", "in_axes=..., out_axes=...")
    specs = check_spec(in_axes, "in_axes", "filter_vmap"), check_spec(out_axes, "out_axes", "filter_vmap")
    return wrap(_VmapWrapper(fun, *specs, axis_name, axis_size))
