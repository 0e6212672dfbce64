"""Debugging tools: trace counting and explanations of recompilation."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from ._recompile import explain_recompiles as explain_recompiles

__all__ = ["assert_max_traces", "explain_recompiles", "get_num_traces", "recompile_reasons"]


class _TraceCounter:
    def __init__(self, fn: Callable[..., Any], max_traces: int | None):
        self._fn = fn
        self._max_traces = max_traces
        self._lock = threading.Lock()
        self.num_traces = 0
        functools.update_wrapper(self, fn, updated=())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.num_traces += 1
            count = self.num_traces
        if self._max_traces is not None and count > self._max_traces:
            name = getattr(self._fn, "__qualname__", repr(self._fn))
            raise RuntimeError(
                f"{name} was traced {count} times, more than max_traces={self._max_traces}. "
                "Something passed to the jitted function changes between calls: a static "
                "value, the tree structure, or an array's shape or dtype. Switch on "
                "larix.debug.explain_recompiles() to see what."
            )
        return self._fn(*args, **kwargs)

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        return self if instance is None else functools.partial(self, instance)


def assert_max_traces(fn: Callable[..., Any] | None = None, *, max_traces: int | None) -> Any:
    """Raise if `fn` is traced more than `max_traces` times.

    Place it *inside* a jit: the wrapped function runs once per trace, so each call
    counts one compilation.

    **Arguments:**

    - `fn`: the function to guard; or omit it and use `@assert_max_traces(max_traces=1)`.
    - `max_traces`: keyword-only; the number of traces allowed (`None`: only count).

    **Returns:** the wrapped function. [`larix.debug.get_num_traces`][] reads its count.

    **Raises:** `RuntimeError` on the trace that goes over the limit.

    !!! example
        ```python
        >>> import jax.numpy as jnp, larix
        >>> @larix.filter_jit
        ... @larix.debug.assert_max_traces(max_traces=1)
        ... def double(x):
        ...     return 2 * x
        >>> double(jnp.ones(2)); double(jnp.zeros(2))
        Array([2., 2.], dtype=float32)
        Array([0., 0.], dtype=float32)
        >>> larix.debug.get_num_traces(double)
        1

        ```
    """
    if max_traces is not None and (not isinstance(max_traces, int) or max_traces < 0):
        raise ValueError(f"assert_max_traces(max_traces={max_traces!r}): expected a non-negative int or None.")
    if fn is None:
        return lambda f: _TraceCounter(f, max_traces)
    return _TraceCounter(fn, max_traces)


def get_num_traces(fn: Callable[..., Any]) -> int:
    """How many times `fn` has been traced.

    `fn` is a function wrapped by [`larix.debug.assert_max_traces`][], a `filter_jit`
    function (its number of compilations), or a `filter_jit` of an `assert_max_traces`
    function.

    **Raises:** `TypeError` if `fn` counts nothing.
    """
    from ._jit import _JitWrapper
    from ._module import BoundMethod
    from ._partial import Partial

    seen = 0
    current: Any = fn
    while current is not None and seen < 16:
        seen += 1
        if isinstance(current, Partial):
            current = current.func
        if isinstance(current, BoundMethod):  # a method decorated with @filter_jit, bound
            current = current.__func__
        if isinstance(current, _TraceCounter):
            return current.num_traces
        inner = getattr(current, "__wrapped__", None)
        wrapper = getattr(current, "_larix_jit", None)
        if isinstance(wrapper, _JitWrapper) and not isinstance(inner, _TraceCounter):
            return wrapper.num_traces
        if inner is None:
            break
        current = inner
    raise TypeError(
        f"get_num_traces: {fn!r} does not count its traces. Wrap the function with "
        "larix.debug.assert_max_traces(max_traces=None), or pass a larix.filter_jit function."
    )


def recompile_reasons(fn: Callable[..., Any]) -> list[str]:
    """The explanations of every recompilation of the `filter_jit` function `fn` so far.

    One string per trace after the first, saying what changed against the closest earlier
    trace (see [`larix.debug.explain_recompiles`][]). Recorded whether or not logging of
    explanations is switched on.
    """
    from ._jit import _JitWrapper
    from ._module import BoundMethod
    from ._partial import Partial

    current: Any = fn.func if isinstance(fn, Partial) else fn
    for _ in range(16):
        if isinstance(current, BoundMethod):
            current = current.__func__
        wrapper = getattr(current, "_larix_jit", None)
        if isinstance(wrapper, _JitWrapper):
            return list(wrapper.recompile_reasons)
        current = getattr(current, "__wrapped__", None)
        if current is None:
            break
    raise TypeError(f"recompile_reasons: {fn!r} is not a larix.filter_jit function.")
