"""Exact keys for static values: equal only when the values cannot be told apart.

`==` is too coarse for a cache key of compiled code: `1 == 1.0 == True`, `0.0 == -0.0`
(yet `arctan2(-0.0, -1) = -pi`), `(1, 2) == (1.0, 2.0)`, and `nan != nan`. Every cache in
larix that stands for static values (filter_jit's static parts, `split`'s remembered
treedefs) compares them through `exact_key`.

The invariant: `exact_key(a) == exact_key(b)` implies that `a` and `b` have the same type
at every level and, for Python's and NumPy's built-in value types, the same value bit for
bit. Objects of other types are compared by their own `==` (as `jax.jit` compares static
arguments): that is their author's contract.
"""

from __future__ import annotations

import struct
import types
from typing import Any

import numpy as np

__all__ = ["exact_field_keys", "exact_key", "exact_keys"]

# Types whose `==` between two values of the *same* type means the values are the same.
# (Not float: 0.0 == -0.0. Not tuple: its items may be floats.)
_EXACT_BY_EQUALITY = frozenset(
    {str, int, bool, bytes, type(None), type, types.FunctionType, types.BuiltinFunctionType, types.MethodType}
)


def exact_keys(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """The exact key of a tuple of values, item by item, with each item's type.

    The common case, a tuple of strings, ints, functions and None, costs two C-level loops.
    """
    kinds = tuple(map(type, values))
    if _EXACT_BY_EQUALITY.issuperset(kinds):
        return (kinds, values)
    return (kinds, tuple(v if t in _EXACT_BY_EQUALITY else _exact(v) for t, v in zip(kinds, values)))


def exact_key(value: Any) -> Any:
    """The exact key of one value (see the module docstring)."""
    t = type(value)
    return (t, value if t in _EXACT_BY_EQUALITY else _exact(value))


_DOUBLE = struct.Struct("<d")


class _Bits:
    """A float's bits, hashable, equal only to the same bits (so nan equals the same nan)."""

    __slots__ = ("bits",)

    def __init__(self, bits: Any):
        self.bits = bits

    def __eq__(self, other: object) -> bool:
        return type(other) is _Bits and self.bits == other.bits

    def __hash__(self) -> int:
        return hash(self.bits)


def _exact(value: Any) -> Any:
    if isinstance(value, float):
        return _Bits(_DOUBLE.pack(value))  # the bits: -0.0 and 0.0, -nan and nan differ
    if isinstance(value, complex):
        return _Bits(_DOUBLE.pack(value.real) + _DOUBLE.pack(value.imag))
    if isinstance(value, tuple):
        return exact_keys(value)
    if isinstance(value, frozenset):
        return frozenset(map(exact_key, value))
    if isinstance(value, np.generic):
        return _Bits((value.dtype.str, value.tobytes()))
    return value  # another type: its own == decides


def exact_field_keys(fields: tuple[Any, ...]) -> tuple[tuple[Any, ...], bool]:
    """The exact key of static field values, and whether they are all hashable.

    Equinox accepts an unhashable static field (a list, say: lineax keeps one), since JAX
    compares treedefs' aux data with `==` and does not hash it. Such a value is keyed by a
    snapshot of its contents (lists, dicts and sets item by item; other objects by
    identity), and the caller must not memoise it: it can change in place.
    """
    try:
        return exact_keys(fields), not fields or hash(fields) is not None
    except TypeError:
        return tuple(_snapshot(f) for f in fields), False


def _snapshot(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        pass
    else:
        return exact_key(value)
    t = type(value)
    if isinstance(value, (list, tuple)):
        return (t, tuple(map(_snapshot, value)))
    if isinstance(value, dict):
        return (t, tuple((_snapshot(k), _snapshot(v)) for k, v in value.items()))
    if isinstance(value, (set, frozenset)):
        return (t, frozenset(map(_snapshot, value)))
    return (t, _Identity(value))


class _Identity:
    """An unhashable object compared by identity (and kept alive, so its id stays its own)."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def __eq__(self, other: object) -> bool:
        return type(other) is _Identity and other.value is self.value

    def __hash__(self) -> int:
        return id(self.value)
