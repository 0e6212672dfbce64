"""The callable Module that the filtered transforms return, and helpers they share.

Every `filter_*` transform returns a Module that holds the user's function as a field.
The result is therefore a pytree: `filter_grad(model)` has `model`'s arrays as leaves, so
it can be passed through `filter_jit` or stored in another Module without hiding them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.tree_util as jtu

from ._module import Module, module_update_wrapper
from ._partial import Partial
from ._paths import python_path

__all__ = [
    "Box",
    "TransformWrapper",
    "argument_path",
    "check_callable",
    "describe",
    "first_argument",
    "leaves_up_to",
    "split_aux",
    "wrap",
]


class TransformWrapper(Module):
    """Base class of the transformed callables: a Module whose `_fun` field is wrapped."""

    _fun: Callable[..., Any]

    @property
    def __wrapped__(self) -> Callable[..., Any]:
        return self._fun

    def __getattr__(self, name: str) -> Any:
        # `__name__` and `__qualname__` of the wrapped function, also on a copy rebuilt by
        # unflatten (which keeps only the fields), as Equinox's wrappers have them.
        if name in ("__name__", "__qualname__"):
            return getattr(self.__dict__["_fun"], name)
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        # Decorating a method in a class body (`@larix.filter_grad def loss(self, x)`): bind
        # like a function does, as a pytree so that `instance` stays visible to transforms.
        if instance is None:
            return self
        return Partial(self, instance)


def check_callable(fun: Any, name: str, options: str) -> None:
    """Raise a TypeError naming the decorator form when `fun` is not callable."""
    if not callable(fun):
        raise TypeError(
            f"larix.{name} takes the function to transform, got {fun!r}. Options are "
            f"keyword-only: write `@larix.{name}({options})` or `larix.{name}(fun, {options})`."
        )


def wrap(wrapper: TransformWrapper) -> Any:
    """Copy `__name__`, `__doc__`, ... of the wrapped function onto `wrapper`."""
    return module_update_wrapper(wrapper)


def argument_path(path: tuple[Any, ...]) -> str:
    """`(SequenceKey(0), SequenceKey(1), GetAttrKey('w'))` of `(args, kwargs)` -> `args[1].w`."""
    if not path:
        return "the arguments"
    first = path[0]
    root = "args" if isinstance(first, jtu.SequenceKey) and first.idx == 0 else "kwargs"
    return python_path(path[1:], root)


class Box:
    """Carries the non-array part of an output from inside a JAX transform to outside it.

    JAX transforms only return arrays. The function they trace stores everything else
    here; tracing runs synchronously inside the transform's call, so it is set on return.
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: Any = None


def first_argument(args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> Any:
    """The argument that `larix.<name>` differentiates: the first positional one."""
    if args:
        return args[0]
    if kwargs:
        raise TypeError(
            f"larix.{name}: the function was called with keyword arguments only "
            f"({', '.join(kwargs)}). It differentiates with respect to the first *positional* "
            "argument, so pass that one by position: `grad_fn(model, x=x)`, not "
            "`grad_fn(model=model, x=x)`."
        )
    raise TypeError(
        f"larix.{name}: the function was called without arguments. It differentiates with "
        "respect to its first positional argument: call it as `grad_fn(model, ...)`. To "
        "differentiate several objects, pack them into one tuple: `grad_fn((model, x))`."
    )


def split_aux(out: Any, name: str) -> tuple[Any, Any]:
    """Check that a `has_aux=True` function returned a pair."""
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(
            f"larix.{name}(..., has_aux=True): the function must return a pair "
            f"`(output, aux)`, but it returned {describe(out)}."
        )
    return out


def describe(x: Any) -> str:
    """A short description of a leaf for error messages."""
    if hasattr(x, "dtype") and hasattr(x, "shape"):
        return f"a {x.dtype} array of shape {tuple(x.shape)}"
    text = repr(x)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{type(x).__name__} {text}"


def leaves_up_to(treedef: Any, tree: Any) -> list[Any] | None:
    """The subtrees of `tree` at the leaves of `treedef`, which must each be a leaf or None.

    For trees such as gradients and tangents that mirror an output leaf for leaf, with
    `None` allowed anywhere. Returns None when `tree` does not have that structure.
    """
    try:
        parts = treedef.flatten_up_to(tree)
    except (ValueError, TypeError):
        return None
    if any(p is not None and not jtu.treedef_is_leaf(jtu.tree_structure(p)) for p in parts):
        return None
    return parts
