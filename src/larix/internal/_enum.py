"""Enumeration: named error conditions that can cross `jit`, `vmap` and `while_loop`."""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._module import Module, field

__all__ = ["Enumeration", "EnumerationItem"]


def _is_traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


class EnumerationItem(Module):
    """One member of an [`larix.internal.Enumeration`][]: an int32 array and its class.

    Compare members of the same enumeration with `==` (an array of bools); pick between
    them with `Enumeration.where`; raise the member's message with `.error_if(x, pred)`.
    """

    _value: Any
    _enumeration: Any = field(static=True)

    def _check_same(self, other: Any, op: str) -> None:
        if not isinstance(other, EnumerationItem):
            raise ValueError(
                f"larix.internal.Enumeration: cannot compare {self._enumeration.__qualname__} with "
                f"{type(other).__name__} {other!r} using `{op}`; compare with another member, "
                f"e.g. `result {op} {self._enumeration.__qualname__}.<name>`."
            )
        if other._enumeration is not self._enumeration:
            raise ValueError(
                f"larix.internal.Enumeration: cannot compare members of different enumerations "
                f"({self._enumeration.__qualname__} and {other._enumeration.__qualname__}) using "
                f"`{op}`. Convert one first with `{self._enumeration.__qualname__}.promote(...)`."
            )

    def __eq__(self, other: object) -> Any:  # type: ignore[override]
        self._check_same(other, "==")
        with jax.ensure_compile_time_eval():  # two constants give a constant, even under jit
            return jnp.asarray(self._value) == jnp.asarray(other._value)  # type: ignore[attr-defined]

    def __ne__(self, other: object) -> Any:  # type: ignore[override]
        self._check_same(other, "!=")
        with jax.ensure_compile_time_eval():
            return jnp.asarray(self._value) != jnp.asarray(other._value)  # type: ignore[attr-defined]

    def is_traced(self) -> bool:
        """Whether the member is only known at run time (a tracer)."""
        return _is_traced(self._value)

    def error_if(self, token: Any, pred: Any) -> Any:
        """`larix.error_if(token, pred, <this member's message>)`; works for traced members too."""
        from .._errors import branched_error_if, error_if

        enum = self._enumeration
        if self.is_traced():
            return branched_error_if(token, pred, self._value, list(enum._messages.values()))
        return error_if(token, pred, enum[self])

    def __repr__(self) -> str:
        name = f"{self._enumeration.__module__}.{self._enumeration.__qualname__}"
        if self.is_traced():
            return f"{name}<traced>"
        messages = np.array(list(self._enumeration._messages.values()))
        value = np.asarray(self._value)
        text = str(messages[value]) if value.ndim else messages[int(value)]
        return f"{name}<{text}>"


class _EnumerationMeta(type):
    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kwargs: Any) -> Any:
        new = {k: v for k, v in namespace.items() if not k.startswith("_") and not callable(v) and not isinstance(v, (classmethod, staticmethod, property))}
        for k, v in new.items():
            if not isinstance(v, str):
                raise TypeError(
                    f"larix.internal.Enumeration: member {name}.{k} is {v!r}, but members are "
                    "strings (the message shown when it is raised), e.g. `success = \"\"`."
                )
            del namespace[k]
        cls = super().__new__(mcs, name, bases, namespace, **kwargs)
        messages: dict[str, str] = {}
        for base in reversed(cls.__mro__[1:]):
            for k, v in getattr(base, "_own_messages", {}).items():
                if k in messages and messages[k] != v:
                    warnings.warn(
                        f"larix.internal.Enumeration: {name} inherits {k!r} with two different "
                        f"messages ({messages[k]!r} and {v!r}); using the latter.",
                        stacklevel=2,
                    )
                messages[k] = v
        for k, v in new.items():
            if k in messages and messages[k] != v:
                warnings.warn(
                    f"larix.internal.Enumeration: {name}.{k} overrides its inherited message "
                    f"{messages[k]!r} with {v!r}.",
                    stacklevel=2,
                )
            messages[k] = v
        cls._own_messages = new
        cls._messages = messages
        cls._indices = {k: i for i, k in enumerate(messages)}
        for k, i in cls._indices.items():
            setattr(cls, k, EnumerationItem(np.array(i, dtype=np.int32), cls))
        return cls

    def __len__(cls) -> int:
        return len(cls._messages)

    def __iter__(cls) -> Any:
        return iter(getattr(cls, k) for k in cls._messages)

    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, EnumerationItem) and obj._enumeration is cls

    def __getitem__(cls, item: Any) -> str:
        """The message of a (concrete) member: `RESULTS[result]`."""
        if not isinstance(item, EnumerationItem) or item._enumeration is not cls:
            raise ValueError(f"larix.internal.Enumeration: {cls.__qualname__}[...] takes a member of {cls.__qualname__}, not {item!r}.")
        if item.is_traced():
            raise ValueError(
                f"larix.internal.Enumeration: {cls.__qualname__}[...] needs a member known at "
                "trace time, but this one is traced; return it from the jitted function first."
            )
        return list(cls._messages.values())[int(np.asarray(item._value))]

    def where(cls, pred: Any, a: EnumerationItem, b: EnumerationItem) -> EnumerationItem:
        """`a` where `pred` holds, else `b` (like `jnp.where`); both members of this enumeration."""
        for item in (a, b):
            if not isinstance(item, cls):
                raise ValueError(f"larix.internal.Enumeration: {cls.__qualname__}.where takes members of {cls.__qualname__}, not {item!r}.")
        if a._value is b._value:
            return a
        if not _is_traced(pred) and np.ndim(pred) == 0:
            return a if bool(pred) else b
        with jax.ensure_compile_time_eval():
            return EnumerationItem(jnp.where(pred, a._value, b._value), cls)

    def promote(cls, item: EnumerationItem) -> EnumerationItem:
        """The member of this enumeration with the same name as `item`, from a base enumeration."""
        source = getattr(item, "_enumeration", None)
        if source is None or source is cls or not issubclass(cls, source):
            raise ValueError(
                f"larix.internal.Enumeration: {cls.__qualname__}.promote takes a member of one of "
                f"its base enumerations, not {item!r}."
            )
        table = np.array([cls._indices[k] for k in source._messages], dtype=np.int32)
        if _is_traced(item._value):
            return EnumerationItem(jnp.asarray(table)[item._value], cls)
        return EnumerationItem(table[np.asarray(item._value)], cls)


class Enumeration(metaclass=_EnumerationMeta):
    """JAX-compatible enums: a class of named messages whose members are int32 arrays.

    Members are declared with class syntax and looked up on the class; they pass through
    `jit` and `vmap` as arrays, compare with `==` (members of the same enumeration only:
    `ValueError` otherwise), and are chosen at run time with `Enumeration.where`. An
    enumeration may inherit another's members; `promote` converts a base's member.

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp
        >>> from larix.internal import Enumeration
        >>> class RESULTS(Enumeration):
        ...     successful = ""
        ...     diverged = "The iteration diverged."
        >>> result = jax.jit(lambda x: RESULTS.where(x > 0, RESULTS.successful, RESULTS.diverged))(-1.0)
        >>> bool(result == RESULTS.diverged)
        True
        >>> RESULTS[result]
        'The iteration diverged.'

        ```
    """
