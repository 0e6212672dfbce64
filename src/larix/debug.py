"""Debugging tools: trace counting, explanations of recompilation, NaN cotangents and
conditional breakpoints."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ._pformat import tree_pformat
from ._recompile import explain_recompiles as explain_recompiles

__all__ = [
    "assert_max_traces",
    "backward_nan",
    "breakpoint_if",
    "explain_recompiles",
    "get_num_traces",
    "recompile_reasons",
]


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


def backward_nan(x: Any, name: str | None = None, terminate: bool = True) -> Any:
    """Find NaNs that appear only on the backward pass: an identity whose reverse-mode
    rule prints the primal value and the cotangent of `x`, and optionally stops on a NaN.

    Put it on an intermediate value, `y = larix.debug.backward_nan(y, name="y")`: each
    backward pass through it prints

    ```
    y:
       primals=Array(...)
    cotangents=Array(...)
    ```

    **Arguments:**

    - `x`: any pytree; its floating-point arrays are watched.
    - `name`: printed as a header line, to tell several calls apart.
    - `terminate`: if `True`, a NaN in the cotangent raises [`larix.EquinoxRuntimeError`][]
      through [`larix.error_if`][] (so `EQX_ON_ERROR` applies); if `False`, only print.

    **Returns:** `x`, unchanged (on the forward pass nothing is printed).
    """
    from ._errors import error_if
    from ._filters import is_inexact_array
    from ._partition import combine, partition

    watched, rest = partition(x, is_inexact_array)
    leaves, treedef = jax.tree_util.tree_flatten(watched)
    if not leaves:
        return x
    header = "" if name is None else f"{name}:\n"

    def show(primals: Any, cotangents: Any) -> None:
        full = functools.partial(tree_pformat, short_arrays=False)
        print(f"{header}   primals={full(primals)}\ncotangents={full(cotangents)}")

    @jax.custom_vjp
    def identity(leaves: list[Any]) -> list[Any]:
        return leaves

    def forward(leaves: list[Any]) -> tuple[list[Any], list[Any]]:
        return leaves, leaves

    def backward(primals: list[Any], cotangents: list[Any]) -> tuple[list[Any]]:
        jax.debug.callback(show, treedef.unflatten(primals), treedef.unflatten(cotangents), ordered=True)
        if terminate:
            has_nan = jnp.any(jnp.stack([jnp.isnan(c).any() for c in cotangents]))
            what = "backward_nan" if name is None else name
            cotangents = error_if(list(cotangents), has_nan, f"{what}: encountered a NaN in the cotangent")
        return (list(cotangents),)

    identity.defvjp(forward, backward)
    return combine(treedef.unflatten(identity(leaves)), rest)


def breakpoint_if(pred: Any, **kwargs: Any) -> None:
    """Open a debugger (`jax.debug.breakpoint`) where `pred` is true, also inside `jit`.

    Under `vmap` the breakpoint opens if `pred` is true for any element of the batch.

    **Arguments:**

    - `pred`: a boolean scalar (or array: true if any element is).
    - `**kwargs`: passed to `jax.debug.breakpoint` (`backend`, `filter_frames`,
      `num_frames`, `ordered`).
    """
    from .internal import unvmap_any

    flag = unvmap_any(jnp.any(jnp.asarray(pred)))

    def open_debugger() -> None:
        jax.debug.breakpoint(**kwargs)

    jax.lax.cond(flag, open_debugger, lambda: None)
