"""Seeing inside a model: named scopes, method interception, captured intermediates.

Every call of a Module method (`__call__` and any other method, the user's own Modules
included) goes through `call_method`. With nothing switched on it adds one check of a
thread-local list and, while tracing, a `jax.named_scope` named after the Module's class
and its attribute path (`Encoder/layers.2/Attention`), so that HLO dumps and profiles show
the model's structure. `intercept_methods` and `capture` work through the same hook.

All state is thread-local and restored on exit, even on an exception: nothing leaks between
calls or threads, and a model called with none of this active traces to the same jaxpr.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax

__all__ = ["MethodContext", "capture", "intercept_methods", "named_scopes", "sow"]


class _Local(threading.local):
    def __init__(self) -> None:
        self.stack: list[tuple[Any, str | None]] = []  # (module, path) of the calls under way
        self.interceptors: tuple[Any, ...] = ()
        self.captures: list[_Capture] = []


_LOCAL = _Local()
# Switched by `named_scopes`; process-wide, like jax.config (a display setting, not state).
_SCOPES = [True]
# How many `intercept_methods`/`capture` blocks are open in any thread: filter_jit reads it
# on every call, and while it is non-zero keys its cache by the thread's interceptors too.
ACTIVE = [0]

try:  # whether JAX is tracing: a named scope only matters then, and costs ~3 µs eagerly
    from jax._src import core as _core

    def _tracing() -> bool:
        return type(_core.trace_ctx.trace) is not _core.EvalTrace

except (ImportError, AttributeError):  # pragma: no cover - a JAX that moved them: always scope

    def _tracing() -> bool:
        return True


@dataclasses.dataclass(frozen=True)
class MethodContext:
    """What an interceptor is told about the call it intercepts.

    - `module`: the Module whose method is called.
    - `method_name`: `"__call__"` or the method's name.
    - `path`: the dotted attribute path of `module` from the first Module called
      (`"encoder.layers.2"`; `""` for that Module itself), or None where it cannot be found
      (a Module that is not a field of the Module that called it).
    """

    module: Any
    method_name: str
    path: str | None


def current_interceptors() -> tuple[Any, ...]:
    """The interceptors and captures active in this thread (a filter_jit cache key part)."""
    return (*_LOCAL.interceptors, *_LOCAL.captures)


def call_method(fn: Callable[..., Any], name: str, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run `fn(module, *args, **kwargs)`, a Module method, under scopes and interceptors."""
    local = _LOCAL
    stack = local.stack
    if not (local.interceptors or local.captures) and not (_SCOPES[0] and _tracing()):
        return fn(module, *args, **kwargs)
    if stack and stack[-1][0] is module and name == "__call__":
        return fn(module, *args, **kwargs)  # `super().__call__`: one call, already scoped
    path = _child_path(stack[-1], module) if stack else ""
    stack.append((module, path))
    try:
        if local.interceptors:
            context = MethodContext(module, name, path)
            result = _chain(fn, module, local.interceptors, context)(args, kwargs)
        else:
            result = _scoped(fn, module, name, path, args, kwargs)
        for recording in local.captures:
            recording.record_call(module, name, path, result)
        return result
    finally:
        stack.pop()


def _scoped(fn: Callable[..., Any], module: Any, name: str, path: str | None, args: Any, kwargs: Any) -> Any:
    if not (_SCOPES[0] and _tracing()):
        return fn(module, *args, **kwargs)
    label = type(module).__name__ if name == "__call__" else f"{type(module).__name__}.{name}"
    if path:
        label = f"{path}/{label}"
    with jax.named_scope(label.replace(" ", "_")):
        return fn(module, *args, **kwargs)


def _chain(fn: Callable[..., Any], module: Any, interceptors: tuple[Any, ...], context: MethodContext) -> Any:
    """`next_fn(args, kwargs)` for the outermost interceptor; the innermost calls `fn`."""

    def innermost(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return _scoped(fn, module, context.method_name, context.path, args, kwargs)

    call = innermost
    for interceptor in interceptors:  # the first registered is the innermost

        def call(args: Any, kwargs: Any, interceptor: Any = interceptor, next_fn: Any = call) -> Any:
            return interceptor(next_fn, args, kwargs, context)

    return call


def _child_path(parent: tuple[Any, str | None], child: Any) -> str | None:
    """The path of `child` below the Module being called, found by identity among its fields
    (two levels of containers deep: `self.layers[2]`, `self.blocks["a"][0]`)."""
    module, path = parent
    if module is None:
        return ""  # the barrier of a `with` block: the first Module called inside it
    if path is None:
        return None
    if child is module:
        return path  # a method calling another method of the same Module
    found = _find(module, child, 3)
    if found is None:
        return None
    return f"{path}.{found}" if path else found


def _find(node: Any, target: Any, depth: int) -> str | None:
    fields = getattr(type(node), "_larix_dynamic_fields", None)  # a Module
    if fields is not None:
        items: Iterator[tuple[str, Any]] = ((n, node.__dict__[n]) for n in fields)
    elif isinstance(node, (list, tuple)):
        items = ((str(i), v) for i, v in enumerate(node))
    elif isinstance(node, dict):
        items = ((str(k), v) for k, v in node.items())
    else:
        return None
    deeper = []
    for key, value in items:
        if value is target:
            return key
        if depth > 1 and isinstance(value, (list, tuple, dict)):
            deeper.append((key, value))
    for key, value in deeper:
        found = _find(value, target, depth - 1)
        if found is not None:
            return f"{key}.{found}"
    return None


class named_scopes:  # noqa: N801 - used like a function
    """Switch the named scopes of Module calls on (the default) or off.

    While JAX traces, each Module method call runs under `jax.named_scope`, named after the
    Module's path and class (`encoder.layers.2/Attention`), so that HLO dumps, jaxprs
    printed with names and profiler traces show the model's structure. It costs nothing
    per call of a jitted function (only tracing sees it) and nothing in eager mode.

    Use it as a call (`named_scopes(False)`) or as a context manager, which restores the
    previous setting. It applies to what is traced while it is set: a function compiled
    before keeps the names it was traced with (`larix.clear_caches()` forgets it).
    """

    def __init__(self, enabled: bool = True):
        self._previous = _SCOPES[0]
        _SCOPES[0] = bool(enabled)

    def __enter__(self) -> named_scopes:
        return self

    def __exit__(self, *exc: Any) -> None:
        _SCOPES[0] = self._previous


class _Stack:
    """A context manager that pushes onto one of this thread's lists, and counts in ACTIVE."""

    def __init__(self, attribute: str, item: Any):
        self._attribute, self._item = attribute, item

    def __enter__(self) -> Any:
        current = getattr(_LOCAL, self._attribute)
        setattr(_LOCAL, self._attribute, (*current, self._item) if isinstance(current, tuple) else [*current, self._item])
        # Paths inside the block are relative to the first Module called in it.
        self._depth = len(_LOCAL.stack)
        _LOCAL.stack.append((None, ""))
        ACTIVE[0] += 1
        return self._item

    def __exit__(self, *exc: Any) -> None:
        ACTIVE[0] -= 1
        del _LOCAL.stack[self._depth :]
        current = getattr(_LOCAL, self._attribute)
        kept = [x for x in current if x is not self._item]
        setattr(_LOCAL, self._attribute, tuple(kept) if isinstance(current, tuple) else kept)


def intercept_methods(interceptor: Callable[..., Any]) -> Any:
    """Call `interceptor` around every Module method call inside this `with` block.

    The interceptor is called as `interceptor(next_fn, args, kwargs, context)`, where
    `next_fn(args, kwargs)` runs the method (or the next interceptor) and `context` is a
    [`larix.MethodContext`][] (the module, the method's name, its path). It may change the
    arguments, change or replace the result, or skip the call. Blocks nest: the innermost
    `with` sees the call first. Thread-local, and active while tracing under `filter_jit`
    (a function traced inside the block is compiled separately from one traced outside).

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> model = larix.nn.MLP(2, 1, width_size=4, depth=1, key=jax.random.key(0))
        >>> seen = []
        >>> def log_shapes(next_fn, args, kwargs, context):
        ...     out = next_fn(args, kwargs)
        ...     seen.append((context.path, type(context.module).__name__, out.shape))
        ...     return out
        >>> with larix.intercept_methods(log_shapes):
        ...     _ = model(jnp.ones(2))
        >>> seen
        [('layers.0', 'Linear', (4,)), ('layers.1', 'Linear', (1,)), ('', 'MLP', (1,))]

        ```
    """
    if not callable(interceptor):
        raise TypeError(
            f"intercept_methods expects a callable `interceptor(next_fn, args, kwargs, context)`, "
            f"got {type(interceptor).__name__}."
        )
    return _Stack("interceptors", interceptor)


# -- captured intermediates ------------------------------------------------------------------


class _Capture:
    def __init__(self, select: Callable[[MethodContext], bool]):
        self.select = select
        self.values: dict[str, list[Any]] = {}

    def record_call(self, module: Any, name: str, path: str | None, result: Any) -> None:
        if path is None:
            return
        context = MethodContext(module, name, path)
        if self.select(context):
            key = path if name == "__call__" else (f"{path}.{name}" if path else name)
            self.values.setdefault(key or "__call__", []).append(result)

    def record_sown(self, name: str, value: Any) -> None:
        stack = _LOCAL.stack
        path = stack[-1][1] if stack else ""
        if path is None:
            return
        self.values.setdefault(f"{path}.{name}" if path else name, []).append(value)


def _selector(filter: Any) -> Callable[[MethodContext], bool]:  # noqa: A002 - the public name
    if filter is None:
        return lambda context: False
    if filter is True:
        return lambda context: True
    if isinstance(filter, type) or (isinstance(filter, tuple) and all(isinstance(t, type) for t in filter)):
        return lambda context: isinstance(context.module, filter)
    if isinstance(filter, str):
        return lambda context: context.path is not None and fnmatch.fnmatchcase(context.path, filter)
    if callable(filter):
        return lambda context: bool(filter(context))
    raise TypeError(
        f"capture(filter={filter!r}): expected None (sown values only), True (every Module call), a "
        "Module class or tuple of classes, a path glob such as 'layers.*', or a predicate taking a "
        "larix.MethodContext."
    )


def capture(fn: Callable[..., Any], filter: Any = None) -> Callable[..., tuple[Any, dict[str, tuple[Any, ...]]]]:  # noqa: A002
    """Wrap `fn` to also return the intermediate values of the Module calls inside it.

    **Arguments:**

    - `fn`: a Module or any function that calls Modules.
    - `filter`: which Module calls to record the output of: `None` (none), `True` (every
      call), a Module class or tuple of classes, a glob on the dotted path
      (`"encoder.layers.*"`), or a predicate on a [`larix.MethodContext`][]. Values that
      layers give to [`larix.sow`][] are always recorded.

    **Returns:** a function taking `fn`'s arguments and returning `(output, intermediates)`,
    where `intermediates` maps each path (`"layers.0"`; a method other than `__call__` adds
    its name, `"encoder.encode"`; a sown value adds its name) to the tuple of values it
    produced, in call order. Paths are relative to the first Module called.

    Works under `filter_jit`, `filter_vmap` and `filter_grad` applied *to the captured
    function* (`filter_jit(larix.capture(model, True))`); a `filter_jit` function called
    inside a captured one is opaque to it and raises instead of losing values.

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> model = larix.nn.MLP(2, 1, width_size=4, depth=1, key=jax.random.key(0))
        >>> out, found = larix.capture(model, larix.nn.Linear)(jnp.ones(2))
        >>> sorted(found), found["layers.0"][0].shape
        (['layers.0', 'layers.1'], (4,))

        ```
    """
    select = _selector(filter)
    if not callable(fn):
        raise TypeError(f"capture expects a callable (a Module or a function), got {type(fn).__name__}.")

    def captured(*args: Any, **kwargs: Any) -> tuple[Any, dict[str, tuple[Any, ...]]]:
        recording = _Capture(select)
        with _Stack("captures", recording):
            out = fn(*args, **kwargs)
        return out, {key: tuple(values) for key, values in recording.values.items()}

    return captured


def sow(name: str, value: Any) -> Any:
    """Expose `value` under `name` to [`larix.capture`][]; a no-op otherwise. Returns `value`.

    Call it inside a Module method: the value is recorded under the Module's path and
    `name` (`"encoder.layers.0.attention_weights"`).
    """
    for recording in _LOCAL.captures:
        recording.record_sown(name, value)
    return value
