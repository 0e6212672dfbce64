"""Pretty-printing of pytrees: arrays as `f32[3,4]`, one line when it fits."""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Callable
from typing import Any

import jax
import jax.stages
import numpy as np

__all__ = ["tree_pformat", "tree_pprint"]

# A document is either a string (atomic text) or a group: (open, [items], close), where
# each item is (prefix, document). See _render for how a group is laid out.
_Doc = Any


def _dtype_name(dtype: Any) -> str:
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return "bool"
    short = {"f": "f", "i": "i", "u": "u", "c": "c"}.get(dtype.kind)
    if short is None or dtype.name.startswith(("bfloat", "float8", "float4", "int4", "uint4")):
        return {"bfloat16": "bf16"}.get(dtype.name, dtype.name)
    return f"{short}{dtype.itemsize * 8}"


def _array_text(x: Any, short: bool) -> str:
    if not short:
        return repr(x)
    text = f"{_dtype_name(x.dtype)}[{','.join(map(str, x.shape))}]"
    if getattr(x, "weak_type", False):  # a Python scalar turned array: Equinox's `weak_f32[]`
        text = "weak_" + text
    if isinstance(x, (np.ndarray, np.generic)):
        text += "(numpy)"
    return text


def _function_name(fn: Any) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return name if isinstance(name, str) else type(fn).__name__


def _to_doc(
    x: Any, short_arrays: bool, struct_as_array: bool, truncate_leaf: Callable[[Any], bool], active: set[int] | None = None
) -> _Doc:
    # A container can hold itself (a list appended to itself, or to a Module it is a field
    # of): print `<recursive>` there, as Equinox does, instead of recursing forever.
    # `active` holds the ids of the nodes on the path from the root to `x`.
    if active is None:
        active = set()
    if id(x) in active:
        return "<recursive>"
    active.add(id(x))
    try:
        recurse = functools.partial(
            _to_doc, short_arrays=short_arrays, struct_as_array=struct_as_array, truncate_leaf=truncate_leaf, active=active
        )
        return _node_to_doc(x, recurse, short_arrays, struct_as_array, truncate_leaf)
    finally:
        active.discard(id(x))


def _node_to_doc(
    x: Any, recurse: Callable[[Any], _Doc], short_arrays: bool, struct_as_array: bool, truncate_leaf: Callable[[Any], bool]
) -> _Doc:
    if truncate_leaf(x):
        return f"{type(x).__name__}(...)"
    if isinstance(x, (jax.Array, np.ndarray, np.generic)):
        return _array_text(x, short_arrays)
    if isinstance(x, jax.ShapeDtypeStruct):
        return _array_text(x, True) if struct_as_array else repr(x)
    from ._field import UNSET
    from ._module import BoundMethod, Module

    if isinstance(x, BoundMethod):
        return (f"{type(x.__self__).__name__}.{_function_name(x.__func__).split('.')[-1]}(self=", [("", recurse(x.__self__))], ")")
    if isinstance(x, Module) or (dataclasses.is_dataclass(x) and not isinstance(x, type)):
        fields = type(x)._larix_fields if isinstance(x, Module) else dataclasses.fields(x)
        # As Equinox: a field still holding its default object, or given by the class, is
        # left out.
        items = [
            (f"{f.name}=", recurse(getattr(x, f.name)))
            for f in fields
            if f.repr and (v := x.__dict__.get(f.name, f.default)) is not f.default and v is not UNSET
        ]
        return (f"{type(x).__qualname__}(", items, ")")  # Equinox's name: `Outer.Inner(`
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return (f"{type(x).__name__}(", [(f"{k}=", recurse(v)) for k, v in zip(x._fields, x)], ")")
    if isinstance(x, list):
        return ("[", [("", recurse(v)) for v in x], "]")
    if isinstance(x, tuple):
        items = [("", recurse(v)) for v in x]
        return ("(", items, ",)") if len(x) == 1 else ("(", items, ")")
    if isinstance(x, dict):
        return ("{", [(_DictKey(f"{k!r}: "), recurse(v)) for k, v in x.items()], "}")
    if isinstance(x, functools.partial):
        items = [("", recurse(x.func))] + [("", recurse(a)) for a in x.args]
        items += [(f"{k}=", recurse(v)) for k, v in x.keywords.items()]
        return ("partial(", items, ")")
    # Functions print as Equinox prints them: a Python function by name (`<wrapped function
    # f>` if made with functools.wraps), a custom_jvp/custom_vjp as the function it wraps,
    # and most other callables by their repr. One deliberate difference: a jitted function
    # prints as the function it wraps, where Equinox shows its repr,
    # `<PjitFunction of <function relu at 0x7f...>>`. That text holds a memory address, so
    # it changes from run to run (breaking doctests and diffs of logs), and since
    # `jax.nn.relu` and friends are jitted in current JAX, every MLP would show one.
    if isinstance(x, (jax.custom_jvp, jax.custom_vjp, jax.stages.Wrapped)):
        return recurse(x.__wrapped__)
    if isinstance(x, type):
        # Equinox's form for a class: qualified by its module, except for builtins.
        return x.__qualname__ if x.__module__ == "builtins" else f"{x.__module__}.{x.__qualname__}"
    if isinstance(x, types.FunctionType):
        kind = "wrapped function" if hasattr(x, "__wrapped__") else "function"
        return f"<{kind} {_function_name(x)}>"
    return repr(x)


class _DictKey(str):
    """The `'key': ` before a dict value: a value that does not fit goes on the next line."""


def _flat(doc: _Doc) -> str:
    if isinstance(doc, str):
        return doc
    open_, items, close = doc
    return open_ + ", ".join(prefix + _flat(d) for prefix, d in items) + close


def _render(doc: _Doc, indent: int, width: int, line_indent: int, column: int, out: list[str]) -> None:
    # Equinox's layout (Wadler's "prettier printer"): a group that fits on the rest of the
    # line prints flat; otherwise its items go on the following lines, indented, all on one
    # line if they fit there, else one item a line.
    flat = _flat(doc)
    if isinstance(doc, str) or column + len(flat) <= width or not doc[1]:
        out.append(flat)
        return
    open_, items, close = doc
    inner = line_indent + indent
    out.append(open_ + "\n" + " " * inner)
    together = ", ".join(prefix + _flat(d) for prefix, d in items)
    if inner + len(together) <= width:
        out.append(together)
    else:
        for k, (prefix, item) in enumerate(items):
            if k:
                out.append(",\n" + " " * inner)
            if isinstance(prefix, _DictKey) and inner + len(prefix) + len(_flat(item)) > width:
                out.append(prefix.rstrip() + "\n" + " " * inner)
                _render(item, indent, width, inner, inner, out)
                continue
            out.append(prefix)
            _render(item, indent, width, inner, inner + len(prefix), out)
    # A one-element tuple keeps its comma: `(\n  x,\n)`.
    out.append(close[:-1] + "\n" + " " * line_indent + close[-1])


def tree_pformat(
    pytree: Any,
    *,
    width: int = 80,
    indent: int = 2,
    short_arrays: bool = True,
    struct_as_array: bool = False,
    truncate_leaf: Callable[[Any], bool] = lambda _: False,
) -> str:
    """Format a pytree as readable text: Modules as `Name(field=...)`, arrays as `f32[3,4]`.

    The output is Equinox's `tree_pformat`'s: the same layout, and a Module's fields that
    still hold their default object are left out.

    **Arguments:**

    - `pytree`: what to format.
    - `width`: the line width to fit. As in Equinox, a container that does not fit puts
      its items on the next lines: all on one line if they fit there, else one a line; a
      dict value that does not fit after its key goes on the next line.
    - `indent`: spaces per nesting level.
    - `short_arrays`: print arrays as `dtype[shape]` (NumPy ones with a `(numpy)` tag)
      rather than their values.
    - `struct_as_array`: print `jax.ShapeDtypeStruct`s like arrays.
    - `truncate_leaf`: a predicate; matching objects print as `Type(...)`.

    **Returns:** the text.

    !!! example
        ```python
        >>> import jax.numpy as jnp, larix
        >>> print(larix.tree_pformat({"w": jnp.zeros((3, 4)), "act": "relu"}))
        {'w': f32[3,4], 'act': 'relu'}

        ```
    """
    out: list[str] = []
    _render(_to_doc(pytree, short_arrays, struct_as_array, truncate_leaf), indent, width, 0, 0, out)
    return "".join(out)


def tree_pprint(pytree: Any, **kwargs: Any) -> None:
    """Print [`larix.tree_pformat`][]`(pytree, **kwargs)`."""
    print(tree_pformat(pytree, **kwargs))
