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

__all__ = ["TransformWrapper", "argument_path", "check_callable", "wrap"]


class TransformWrapper(Module):
    """Base class of the transformed callables: a Module whose `_fun` field is wrapped."""

    _fun: Callable[..., Any]

    @property
    def __wrapped__(self) -> Callable[..., Any]:
        return self._fun

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
