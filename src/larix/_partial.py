"""Partial: `functools.partial` as a Module, so that bound arguments are part of the tree."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._module import Module

__all__ = ["Partial"]


class Partial(Module):
    """Like `functools.partial`, but a pytree: `func`, `args` and `keywords` are its children.

    Arrays among the bound arguments are therefore traced by filtered transforms and seen
    by `filter_grad`, rather than baked into a closure.

    !!! example
        ```python
        >>> import larix
        >>> add = larix.Partial(lambda a, b: a + b, 1)
        >>> add(2)
        3

        ```
    """

    func: Callable[..., Any]
    args: tuple[Any, ...]
    keywords: dict[str, Any]

    def __init__(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any):
        if not callable(func):
            raise TypeError(f"larix.Partial: the first argument must be callable, got {func!r}.")
        self.func = func
        self.args = args
        self.keywords = kwargs

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        return self.func(*self.args, *args, **self.keywords, **kwargs)
