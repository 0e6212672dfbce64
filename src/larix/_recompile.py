"""Why did a filtered transform compile again? Explanations computed at trace time only."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.tree_util as jtu
import jaxlib

from ._exact import exact_key
from ._paths import _describe as describe
from ._paths import python_path, structure_mismatch

__all__ = ["TraceLog", "explain", "explain_recompiles", "record_trace"]

_logger = logging.getLogger("larix")
_explain_enabled = os.environ.get("LARIX_EXPLAIN_RECOMPILES", "").lower() in ("1", "true", "yes", "on")
_MAX_REMEMBERED = 32


class explain_recompiles:  # noqa: N801 - used like a function
    """Switch on (or off) explanations of why a filtered transform compiles again.

    When on, every time a `filter_jit` function traces again it logs, on the `"larix"`
    logger at WARNING level, what changed against the closest earlier trace, by path:
    `static value at args[0].act changed: <function relu> -> <function gelu>` or
    `array at args[1] changed: f32[32,64] -> f32[16,64]`. Setting the environment variable
    `LARIX_EXPLAIN_RECOMPILES=1` switches it on from the start. The explanations are also
    kept: see [`larix.debug.recompile_reasons`][].

    Use it as a call (`explain_recompiles()` / `explain_recompiles(False)`) or as a
    context manager (`with explain_recompiles(): ...`), which restores the previous setting.
    """

    def __init__(self, enabled: bool = True):
        global _explain_enabled
        self._previous = _explain_enabled
        _explain_enabled = bool(enabled)

    def __enter__(self) -> explain_recompiles:
        return self

    def __exit__(self, *exc: Any) -> None:
        global _explain_enabled
        _explain_enabled = self._previous


def explain(fn: Callable[..., Any], reason: str) -> None:
    if _explain_enabled:
        name = getattr(fn, "__qualname__", None) or repr(fn)
        _logger.warning("filter_jit(%s) is compiling again: %s", name, reason)


class _ArraySlot:
    """Stands for an array of this shape and dtype while two traces are compared."""

    __slots__ = ("dtype", "shape", "spec", "weak")

    def __init__(self, aval: tuple[Any, ...]):
        self.shape, self.dtype, self.weak, self.spec = aval

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ArraySlot) and (self.shape, self.dtype, self.weak, self.spec) == (
            other.shape,
            other.dtype,
            other.weak,
            other.spec,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        from ._pformat import _dtype_name

        text = f"{_dtype_name(self.dtype)}[{','.join(map(str, self.shape))}]" + ("(weak)" if self.weak else "")
        return text + (f" sharded {self.spec}" if self.spec else "")


def _aval(x: Any) -> tuple[Any, ...]:
    aval = getattr(x, "aval", None)
    weak = bool(getattr(aval, "weak_type", False))
    # On meshes with explicit axes the sharding is part of the type, and changes retrace.
    spec = getattr(getattr(aval, "sharding", None), "spec", None)
    spec_text = str(spec) if spec is not None and any(p is not None for p in spec) else ""
    return tuple(x.shape), x.dtype, weak, spec_text


def _rebuild(static: Any, avals: tuple[Any, ...]) -> Any:
    return static.rebuild([_ArraySlot(a) for a in avals])


def _describe(x: Any) -> str:
    return repr(x) if isinstance(x, _ArraySlot) else describe(x)


def _diff_values(old: Any, new: Any, root: str) -> list[str]:
    old_leaves, old_def = jtu.tree_flatten_with_path(old)
    new_leaves, new_def = jtu.tree_flatten_with_path(new)
    if old_def != new_def:
        found = structure_mismatch(old, new)
        if found is None:
            return [f"the structure of {root} changed"]
        path, why = found
        if why.startswith("static field changed: "):
            return [f"static field {python_path(path, root)} changed: {why.removeprefix('static field changed: ')}"]
        return [f"the structure changed at {python_path(path, root)} ({why}; before on the left)"]
    changes = []
    for (path, a), (_, b) in zip(old_leaves, new_leaves):
        where = python_path(path, root)
        if isinstance(a, _ArraySlot) and isinstance(b, _ArraySlot):
            if a != b:
                changes.append(f"array at {where} changed: {a!r} -> {b!r}")
        elif isinstance(a, _ArraySlot) or isinstance(b, _ArraySlot):
            changes.append(f"{where} changed: {_describe(a)} -> {_describe(b)}")
        elif not _same(a, b):
            changes.append(f"static value at {where} changed: {_describe(a)} -> {_describe(b)}")
    return changes


def _same(a: Any, b: Any) -> bool:
    try:  # exactly, as the cache compares: 0.0 and -0.0 differ
        return bool(exact_key(a) == exact_key(b))
    except Exception:  # noqa: BLE001
        return False


def _differences(old: Any, new: Any, labels: list[str]) -> list[str]:
    (old_statics, old_nargs, old_kw), old_avals = old
    (new_statics, new_nargs, new_kw), new_avals = new
    if (old_nargs, old_kw) != (new_nargs, new_kw):
        return [f"called with {new_nargs} positional and keywords {list(new_kw)} instead of {old_nargs} and {list(old_kw)}"]
    changes: list[str] = []
    old_start = new_start = 0
    for label, s_old, s_new in zip(labels, old_statics, new_statics):
        a_old = old_avals[old_start : old_start + s_old.num_arrays]
        a_new = new_avals[new_start : new_start + s_new.num_arrays]
        old_start += s_old.num_arrays
        new_start += s_new.num_arrays
        if s_old is s_new and a_old == a_new:
            continue
        changes.extend(_diff_values(_rebuild(s_old, a_old), _rebuild(s_new, a_new), label))
    return changes


def _fresh_callables(old: Any, new: Any, labels: list[str]) -> list[str]:
    """Static leaves that are a new function object with the same code as before."""
    found = []
    for label, s_old, s_new in zip(labels, old[0][0], new[0][0]):
        if s_old is s_new or len(s_old.values) != len(s_new.values) or len(s_old.fields) != len(s_new.fields):
            continue
        for a, b in zip(s_old.values + s_old.fields, s_new.values + s_new.fields):
            code = getattr(a, "__code__", None)
            if a is not b and code is not None and code is getattr(b, "__code__", None):
                found.append(f"{label} ({code.co_name} at {code.co_filename}:{code.co_firstlineno})")
    return found


_INTERNAL_DIRS = tuple(
    os.path.dirname(m.__file__) + os.sep for m in (sys.modules["larix"], jax, jaxlib) if m.__file__
)


def _caller_stacklevel() -> int:
    """The `stacklevel` that points a warning at the first frame outside larix and JAX."""
    frame = sys._getframe(1)
    level = 1  # stacklevel 1 is the frame that calls warnings.warn, our caller
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL_DIRS):
        frame = frame.f_back
        level += 1
    return level


class TraceLog:
    """The recent traces of one filtered function, to compare new traces against.

    Recording a trace is cheap (the key and the arrays' shapes); the comparison that
    explains it runs only when asked for (`reasons()`, or when explanations are on), since
    against many large earlier traces it can cost far more than the trace itself.
    """

    def __init__(self) -> None:
        self.entries: list[Any] = []
        self.warned_fresh = False
        self._pending: list[Any] = []  # (earlier traces, new trace, labels), not explained yet
        self._reasons: list[str] = []

    def record(self, key: Any, arrays: Any, labels: list[str]) -> Any:
        """Remember this trace (call with the wrapper's lock held: runs no user code).
        Returns what `explain_pending` needs, or None for a first trace."""
        new = (key, tuple(_aval(a) for a in arrays))
        pending = None
        if self.entries:
            same_call = [t for t in self.entries if t[0][1:] == key[1:]]
            pending = (same_call or list(self.entries), new, labels)
            self._pending.append(pending)
        self.entries.append(new)
        del self.entries[:-_MAX_REMEMBERED]
        return pending

    def reasons(self) -> list[str]:
        """The explanation of every trace after the first, in order. (Called without the
        lock: list.pop and append are atomic, and two threads at once only reorder.)"""
        while self._pending:
            candidates, new, labels = self._pending.pop(0)
            self._reasons.append(_explain_one(candidates, new, labels))
        return self._reasons


def _explain_one(candidates: list[Any], new: Any, labels: list[str]) -> str:
    try:
        best: list[str] | None = None
        for old in reversed(candidates):
            changes = _differences(old, new, labels)
            if best is None or (changes and len(changes) < len(best)):
                best = changes
        return "; ".join(best or ["nothing visible changed (another trace of the same inputs)"])
    except Exception as error:  # noqa: BLE001 - a diagnostic must never break a call
        return f"the explanation failed ({type(error).__name__}: {error})"


def record_trace(log: TraceLog, key: Any, arrays: Any, labels: list[str], lock: Any) -> str:
    """Remember this trace; return what changed against the closest earlier one, but only
    if explanations are on ('' otherwise, and for a first trace). Warns once about static
    functions that are new objects with the same code."""
    with lock:
        pending = log.record(key, arrays, labels)
    if pending is None:
        return ""
    candidates, new, labels = pending
    try:
        fresh = [] if log.warned_fresh else _fresh_callables(candidates[-1], new, labels)
    except Exception:  # noqa: BLE001 - a diagnostic must never break a call
        fresh = []
    if fresh and not log.warned_fresh:
        log.warned_fresh = True
        warnings.warn(
            "filter_jit is compiling again because a static function is a new object with "
            f"the same code as in the previous call: {', '.join(fresh)}. This happens with "
            "a lambda or closure created inside a loop, and compiles on every call. Create "
            "it once outside the loop, or make it a Module (whose arrays are traced).",
            UserWarning,
            stacklevel=_caller_stacklevel(),
        )
    if not _explain_enabled:
        return ""
    reasons = log.reasons()  # not under the lock: comparing runs the statics' __eq__, __repr__
    return reasons[-1] if reasons else ""
