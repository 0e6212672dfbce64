"""Runtime checks: error_if and branched_error_if, errors that compiled code can raise.

How a check runs, from the outside in:

1. Everything concrete (no `jit`, no `vmap`): the predicate is read in Python and the error
   raised at once, with an ordinary traceback.
2. Traced: the array leaves of `x` go through `_check`, which returns them unchanged. It is
   a `jax.custom_jvp` whose tangents pass straight through, so `grad` never looks inside.
3. Inside that, `_unbatched_check` is a `jax.custom_batching.custom_vmap`: under `vmap` its
   rule turns the batch axis of the predicate (and of the message index) into an ordinary
   axis and calls it again, so a batch raises one error, naming every failing element, and
   no callback is ever vmapped.
4. At the bottom, `lax.cond(any(pred), fail, pass)`: the host callback that raises lives in
   `fail` only, so when the predicate is false no callback runs and the check costs the
   predicate and the branch on the device.

JAX reports an exception raised in a host callback as a `jax.errors.JaxRuntimeError`, or a
`ValueError` when the call went through its C++ fast dispatch path, whose text includes the
callback's traceback and then `EquinoxRuntimeError: <message>`; we append how to get a
plain traceback instead (`JAX_DISABLE_JIT=1` turns every check into case 1).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from ._filters import is_array, is_inexact_array

if TYPE_CHECKING:
    from jaxtyping import PyTree

__all__ = ["EquinoxRuntimeError", "branched_error_if", "error_if"]

OnError = Literal["default", "raise", "nan", "off"]
_MODES = ("raise", "nan", "off")
_ENVIRONMENT_VARIABLE = "EQX_ON_ERROR"


class EquinoxRuntimeError(RuntimeError):
    """Raised by a failed [`larix.error_if`][] or [`larix.branched_error_if`][] check.

    Equinox's name, so that `except eqx.EquinoxRuntimeError` keeps working after switching
    the import. A subclass of `RuntimeError`.

    Raised directly when the check runs in plain Python (no `jax.jit`, or
    `JAX_DISABLE_JIT=1`), and by [`larix.filter_jit`][] when a check in the compiled call
    fails. Inside plain `jax.jit` the check raises it in a host callback, and JAX reports
    that as a `jax.errors.JaxRuntimeError` (a `RuntimeError`), or as a `ValueError` when the
    call took JAX's fast dispatch path, whose text contains
    `EquinoxRuntimeError: <your message>`.

    !!! example
        ```python
        >>> import jax.numpy as jnp, larix
        >>> try:
        ...     larix.error_if(jnp.array(-1.0), jnp.array(True), "x must be >= 0")
        ... except larix.EquinoxRuntimeError as error:
        ...     print(error)
        x must be >= 0

        ```
    """


# Tracebacks print the class as `module.qualname`: show the public name, not `larix._errors`.
EquinoxRuntimeError.__module__ = "larix"

_COMPILED_HINT = (
    "\n\n(larix: this `error_if` check failed inside compiled code, and JAX re-raised it "
    "with the traceback of the host callback above. Run with the environment variable "
    "JAX_DISABLE_JIT=1 to raise it at the `error_if` call instead, with a plain Python "
    "traceback.)"
)


def _message(msgs: tuple[str, ...], index: int) -> str:
    if 0 <= index < len(msgs):
        return msgs[index]
    return (
        f"larix.branched_error_if: a check failed with index {index}, but there is no message "
        f"for it: `msgs` has {len(msgs)} message(s), for the indices 0 to {len(msgs) - 1}."
    )


_MARKER = "EquinoxRuntimeError: "
_JIT_HINT = (
    "\n\n(larix: this `error_if` check failed inside a compiled function. Run with the "
    "environment variable JAX_DISABLE_JIT=1 to raise it at the `error_if` call, with a "
    "plain Python traceback.)"
)


def from_compiled(error: Exception) -> EquinoxRuntimeError | None:
    """The `EquinoxRuntimeError` that `error`, raised by a compiled call, carries, if any.

    `filter_jit` re-raises it as such, as Equinox does, so that `except EquinoxRuntimeError`
    works for compiled code too (for errors raised at dispatch: nothing here waits for the
    device, so an error that surfaces later keeps JAX's type).
    """
    text = str(error)
    start = text.rfind(_MARKER)
    if start < 0:
        return None
    message = text[start + len(_MARKER) :]
    return EquinoxRuntimeError(message.split(_COMPILED_HINT, 1)[0] + _JIT_HINT)


def _failure_text(msgs: tuple[str, ...], failed: Any, index: Any) -> str:
    """The message of a failed check. Under `vmap`, `failed` and `index` have one axis per
    level (outermost first), and every failing batch element is named with its message."""
    failed, index = np.asarray(failed), np.asarray(index)
    if failed.ndim == 0:
        return _message(msgs, int(index))
    return "\n\n".join(
        f"Batch index {tuple(int(i) for i in where)} had error:\n{_message(msgs, int(index[where]))}"
        for where in zip(*np.nonzero(failed))
    )


def _not_ours(record: logging.LogRecord) -> bool:
    """Logging filter: drop JAX's log of a callback that raised our error. The error itself
    reaches the caller with the same text, so the log only printed it a second time."""
    error = record.exc_info[1] if record.exc_info else None
    return not isinstance(error, EquinoxRuntimeError)


def _quieten_callback_log() -> None:
    logger = logging.getLogger("jax._src.callback")
    if _not_ours not in logger.filters:
        logger.addFilter(_not_ours)


def _raise_in_callback(failed: Any, index: Any, arrays: Any, *, msgs: tuple[str, ...]) -> Any:
    raise EquinoxRuntimeError(_failure_text(msgs, failed, index) + _COMPILED_HINT)


# --------------------------------------------------------------------------- arguments


def _mode(on_error: str, name: str) -> str:
    if on_error == "default":
        mode = os.environ.get(_ENVIRONMENT_VARIABLE, "raise")
        source = f"the environment variable {_ENVIRONMENT_VARIABLE}={mode!r}"
    else:
        mode = on_error
        source = f"on_error={on_error!r}"
    if mode == "breakpoint":
        raise ValueError(
            f"larix.{name}: {source} asks to open a debugger, which larix does not support. Use "
            "'raise', 'nan' or 'off'; to stop in a debugger, call `jax.debug.breakpoint()` "
            "inside `jax.lax.cond(pred, ...)`, or run with JAX_DISABLE_JIT=1 and catch the error."
        )
    if mode not in _MODES:
        allowed = "'default', 'raise', 'nan' or 'off'" if on_error != "default" else "'raise', 'nan' or 'off'"
        raise ValueError(f"larix.{name}: {source} is not a known mode; use {allowed}.")
    return mode


def _is_key(x: Any) -> bool:
    return jnp.issubdtype(x.dtype, jax.dtypes.extended)


def _is_tracer(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _as_array(value: Any, what: str, name: str, hint: str) -> Any:
    """`value` as a NumPy array if it is known now, else as the tracer it is."""
    if _is_tracer(value):
        return value
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):
        array = None
    # Booleans and numbers (signed, unsigned, floating, complex); not objects or strings.
    if array is None or array.dtype.kind not in "biufc":
        raise TypeError(f"larix.{name}: `{what}` must be {hint}, got {value!r}.")
    return array


def _pred(pred: Any, name: str) -> Any:
    hint = "a boolean array (or bool) saying where the check fails, e.g. `x < 0`"
    array = _as_array(pred, "pred", name, hint)
    dtype = array.dtype
    if not (jnp.issubdtype(dtype, jnp.bool_) or jnp.issubdtype(dtype, jnp.number)):
        raise TypeError(f"larix.{name}: `pred` must be {hint}, got an array of dtype {dtype}.")
    return array


def _index(index: Any, name: str) -> Any:
    hint = "an integer (or integer array) choosing the message, e.g. `jnp.argmax(failures)`"
    array = _as_array(index, "index", name, hint)
    if not jnp.issubdtype(array.dtype, jnp.integer):
        raise TypeError(f"larix.{name}: `index` must be {hint}, got an array of dtype {array.dtype}.")
    return array


def _messages(msgs: Any) -> tuple[str, ...]:
    if isinstance(msgs, str) or not isinstance(msgs, Sequence):
        raise TypeError(
            f"larix.branched_error_if: `msgs` must be a list or tuple of strings, one per value "
            f"of `index`, got {msgs!r}. For a single message use "
            "`larix.error_if(x, pred, msg)`."
        )
    if not msgs:
        raise ValueError("larix.branched_error_if: `msgs` is empty; give one message per value of `index`.")
    for i, msg in enumerate(msgs):
        if not isinstance(msg, str):
            raise TypeError(f"larix.branched_error_if: `msgs[{i}]` must be a string, got {msg!r}.")
    return tuple(msgs)


# --------------------------------------------------------------------------- the check


def _nan_where(x: Any, failed: Any) -> Any:
    return jtu.tree_map(lambda leaf: jnp.where(failed, jnp.nan, leaf) if is_inexact_array(leaf) else leaf, x)


def _failed_now(pred: Any, index: Any) -> int | None:
    """The message index if concrete `pred` fails anywhere; None if it passes.

    `pred` and `index` are NumPy arrays that broadcast together; the largest index among
    the failing elements is used, as for a batch under `vmap`.
    """
    failed = np.broadcast_to(pred != 0, np.broadcast_shapes(pred.shape, index.shape))
    if not failed.any():
        return None
    return int(np.broadcast_to(index, failed.shape)[failed].max())


def _reduce(pred: Any, index: Any) -> tuple[Any, Any]:
    """Scalar `(any failed, largest index among the failures)` of traced arrays."""
    pred, index = jnp.asarray(pred), jnp.asarray(index)
    failed = pred if pred.dtype == jnp.bool_ else pred != 0
    if index.ndim == 0:
        return jnp.any(failed), index
    failed, index = jnp.broadcast_arrays(failed, index)
    return jnp.any(failed), jnp.max(jnp.where(failed, index, jnp.iinfo(index.dtype).min))


def _raise_now_or_check(msgs: tuple[str, ...], failed: Any, index: Any, arrays: list[Any]) -> list[Any]:
    # Eager code that reaches here (the rules of `grad` and `vmap` run eagerly outside `jit`)
    # raises at once rather than through a callback, for a plain traceback.
    if not (_is_tracer(failed) or _is_tracer(index)):
        if np.any(failed):
            raise EquinoxRuntimeError(_failure_text(msgs, failed, index))
        return arrays
    return _unbatched_check(msgs)(failed, index, arrays)


def _unbatched_check(msgs: tuple[str, ...]) -> Any:
    _quieten_callback_log()

    def check(failed: Any, index: Any, arrays: list[Any]) -> list[Any]:
        def fail(failed: Any, index: Any, arrays: list[Any]) -> list[Any]:
            # A pure callback, not `jax.debug.callback`: an effect in the program takes `jit`
            # off its fast C++ dispatch path. Measured on an H200 (JAX 0.11), a jitted `x + 1`
            # took 34 us per call, 50 us with this check, 290 us with a debug callback in
            # the untaken branch. A pure callback runs only if its result is used, so it
            # "returns" the arrays (it raises before it would): they are the check's output,
            # and whatever uses them waits for it.
            shapes = [jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)) for a in arrays]
            raise_ = functools.partial(_raise_in_callback, msgs=msgs)
            return jax.pure_callback(raise_, shapes, failed, index, arrays)

        passed = lambda failed, index, arrays: arrays  # noqa: E731
        return jax.lax.cond(jnp.any(failed), fail, passed, failed, index, arrays)

    check_vmap = jax.custom_batching.custom_vmap(check)

    @check_vmap.def_vmap
    def rule(axis_size: int, in_batched: Any, failed: Any, index: Any, arrays: list[Any]) -> Any:
        failed_batched, index_batched, arrays_batched = in_batched
        if failed_batched or index_batched:
            # Keep the batch as an axis of `failed` and `index` (not batched any more), so
            # that the error names every failing element. Both have the same shape: one
            # axis per level of vmap, this one in front.
            shape = jnp.shape(failed) if failed_batched else (axis_size, *jnp.shape(failed))
            failed = failed if failed_batched else jnp.broadcast_to(failed, shape)
            index = index if index_batched else jnp.broadcast_to(index, shape)
        # (Neither batched: every element of this level fails alike, one error says it.)
        # Under several vmaps this is itself batched again, one level at a time.
        return _raise_now_or_check(msgs, failed, index, arrays), arrays_batched

    return check_vmap


def _check(msgs: tuple[str, ...]) -> Any:
    @jax.custom_jvp
    def check(failed: Any, index: Any, arrays: list[Any]) -> list[Any]:
        return _raise_now_or_check(msgs, failed, index, arrays)

    @check.defjvp
    def check_jvp(primals: Any, tangents: Any) -> Any:
        failed, index, arrays = primals
        # The values pass through unchanged, and so do their tangents.
        return check(failed, index, arrays), tangents[2]

    return check


def _error_if(x: Any, pred: Any, index: Any, msgs: tuple[str, ...], on_error: str, name: str) -> Any:
    mode = _mode(on_error, name)
    pred = _pred(pred, name)
    index = _index(index, name)
    try:
        np.broadcast_shapes(jnp.shape(pred), jnp.shape(index))
    except ValueError:
        raise ValueError(
            f"larix.{name}: `index` of shape {jnp.shape(index)} does not broadcast with `pred` "
            f"of shape {jnp.shape(pred)}. Pass one index (shape ()), or one per element of `pred`."
        ) from None
    if mode == "off":
        return x
    if not (_is_tracer(pred) or _is_tracer(index)):
        failed_index = _failed_now(pred, index)
        if failed_index is None:
            return x
        if mode == "nan":
            return _nan_where(x, True)
        raise EquinoxRuntimeError(_message(msgs, failed_index))
    failed, index = _reduce(pred, index)
    if mode == "nan":
        return _nan_where(x, failed)
    leaves, treedef = jtu.tree_flatten(x)
    # Key arrays are left out: a host callback cannot take or return them.
    positions = [i for i, leaf in enumerate(leaves) if is_array(leaf) and not _is_key(leaf)]
    if not positions:
        raise ValueError(
            f"larix.{name}: `x` has no arrays (PRNG keys do not count), so there is nothing for "
            "the check to guard. Under "
            "jit or vmap the check runs when an array of `x` is computed, and only if the "
            "returned `x` is used: pass the array(s) the check protects, e.g. "
            f"`y = larix.{name}(y, y < 0, ...)`, and use the returned value."
        )
    checked = _check(msgs)(failed, index, [leaves[i] for i in positions])
    for position, array in zip(positions, checked):
        leaves[position] = array
    return jtu.tree_unflatten(treedef, leaves)


# --------------------------------------------------------------------------- public


def error_if(x: PyTree, pred: Any, msg: str, *, on_error: OnError = "default") -> PyTree:
    """Raise an error if `pred` is true, even inside `jax.jit`; otherwise return `x`.

    The check is tied to `x`: it runs after `x` is computed and before the returned value
    is used, and `x` is returned unchanged (gradients pass through it untouched). Use the
    returned value in place of `x`: inside compiled code, a check whose result is unused is
    dropped, as in Equinox.

    - Outside `jax.jit`, with `pred` known, it raises [`larix.EquinoxRuntimeError`][] at once.
    - Inside `jax.jit` / [`larix.filter_jit`][] (and `lax.scan`, `lax.while_loop`, ...) the
      compiled call raises when it runs: `filter_jit` raises [`larix.EquinoxRuntimeError`][];
      plain `jax.jit` a `jax.errors.JaxRuntimeError`, or a `ValueError` when the call took
      its fast dispatch path, whose text contains `EquinoxRuntimeError: <msg>`. When `pred` is false no host callback runs (it sits in
      the failing branch of a `lax.cond`), so a passing check costs the predicate and a
      branch on the device; the arrays of `x` pass through that branch, which can cost a
      copy of them, so check the value you test rather than a whole model.
    - Under `jax.vmap` / [`larix.filter_vmap`][], it raises once if `pred` is true for any
      element of the batch, naming each failing element: `Batch index (1,) had error:`
      followed by the message (one index per level of `vmap`, outermost first).

    **Arguments:**

    - `x`: any pytree; returned unchanged. Under `jit` or `vmap` it must contain at least one
      array other than a PRNG key: the check is attached to its arrays.
    - `pred`: a boolean array of any shape (or a bool): the check fails if any element is
      true. A numeric array counts its non-zero elements as true, as in Equinox.
    - `msg`: the error message.
    - `on_error`: what a failed check does. `"raise"` (raise the error), `"nan"` (return
      `x` with its floating-point arrays set to NaN, and go on), `"off"` (skip the check
      entirely, at no cost), or `"default"`: read the environment variable `EQX_ON_ERROR`
      (one of those three; `"raise"` if unset). Inside compiled code the variable is read
      when the function is traced. Equinox's `"breakpoint"` is not supported.

    **Returns:** `x`, unchanged.

    **Raises:** [`larix.EquinoxRuntimeError`][] when the check fails (see above);
    `TypeError` for a `pred` that is not boolean or numeric, or a `msg` that is not a string;
    `ValueError` for an unknown `on_error`, or a traced check on an `x` without arrays.

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> @jax.jit
        ... def safe_log(x):
        ...     x = larix.error_if(x, x <= 0, "safe_log: x must be positive")
        ...     return jnp.log(x)
        >>> safe_log(jnp.array([1.0, 2.0]))
        Array([0.       , 0.6931472], dtype=float32)
        >>> try:
        ...     safe_log(jnp.array([1.0, -2.0]))
        ... except (RuntimeError, ValueError) as error:
        ...     print("EquinoxRuntimeError: safe_log: x must be positive" in str(error))
        True

        ```
    """
    if not isinstance(msg, str):
        raise TypeError(
            f"larix.error_if: `msg` must be a string, got {msg!r}. The arguments are "
            "`error_if(x, pred, msg)`: the value to return, the failure condition, the message."
        )
    return _error_if(x, pred, np.asarray(0), (msg,), on_error, "error_if")


def branched_error_if(
    x: PyTree, pred: Any, index: Any, msgs: Sequence[str], *, on_error: OnError = "default"
) -> PyTree:
    """As [`larix.error_if`][], with one of several messages: `msgs[index]`.

    Useful when one check covers several failure modes, and the message should say which
    one happened. `index` may be traced: it is only read when the check fails.

    **Arguments:**

    - `x`, `pred`, `on_error`: as in [`larix.error_if`][].
    - `index`: an integer (or integer array) choosing the message. It is either a scalar
      or an array that broadcasts with `pred`, in which case the largest index among the
      elements where `pred` is true is used. Under `vmap`, each failing batch element is
      named with its own message.
    - `msgs`: a list or tuple of strings, one per value of `index`. An `index` outside
      `range(len(msgs))` still raises, with a message saying so.

    **Returns:** `x`, unchanged.

    **Raises:** as [`larix.error_if`][]; also `TypeError` for an `index` that is not an
    integer or `msgs` that is not a sequence of strings, and `ValueError` for empty `msgs`
    or an `index` whose shape does not broadcast with `pred`.

    !!! example
        ```python
        >>> import jax.numpy as jnp, larix
        >>> x = jnp.array([1.0, jnp.inf])
        >>> failures = jnp.array([jnp.isnan(x).any(), jnp.isinf(x).any()])
        >>> try:
        ...     larix.branched_error_if(x, failures.any(), jnp.argmax(failures), ["x has a NaN", "x has an inf"])
        ... except larix.EquinoxRuntimeError as error:
        ...     print(error)
        x has an inf

        ```
    """
    return _error_if(x, pred, index, _messages(msgs), on_error, "branched_error_if")
