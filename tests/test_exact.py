"""Exact keys: equal only for values that cannot be told apart (larix._exact)."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from larix._exact import exact_key, exact_keys

_atoms = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True, width=64).filter(lambda x: abs(x) < 4 or not math.isfinite(x)),
    st.sampled_from([0.0, -0.0, 1.0, float("nan")]),
    st.complex_numbers(max_magnitude=2),
    st.sampled_from(["", "a", "1"]),
    st.sampled_from([np.float32(0.0), np.float32(-0.0), np.int32(1), np.float64(1.0)]),
)
values = st.recursive(
    _atoms,
    lambda inner: st.one_of(st.tuples(inner, inner), st.lists(inner, max_size=3).map(tuple), st.frozensets(_atoms, max_size=3)),
    max_leaves=6,
)


def _same(a: Any, b: Any) -> bool:
    """The reference: same type at every level and the same value bit for bit."""
    if type(a) is not type(b):
        return False
    if isinstance(a, tuple):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, frozenset):
        return len(a) == len(b) and all(any(_same(x, y) for y in b) for x in a)
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, complex):
        return _same(a.real, b.real) and _same(a.imag, b.imag)
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    return a == b


@given(values, values)
def test_exact_keys_are_equal_exactly_when_values_are_the_same(a, b):
    assert (exact_key(a) == exact_key(b)) == _same(a, b)
    assert (exact_keys((a, b)) == exact_keys((b, a))) == _same(a, b)


@given(values)
def test_exact_key_is_hashable_and_reflexive(a):
    assert exact_key(a) == exact_key(a)
    assert hash(exact_key(a)) == hash(exact_key(a))


def test_values_that_compare_equal_but_differ_get_different_keys():
    for a, b in [(1, 1.0), (1, True), (0.0, -0.0), ((1, 2), (1.0, 2)), ((1,), (True,)), (np.float32(1), 1.0)]:
        assert a == b
        assert exact_key(a) != exact_key(b)
    assert exact_key(float("nan")) == exact_key(float("nan"))  # the same nan: one trace, not one per call


def test_objects_of_other_types_are_compared_by_their_own_equality():
    class Config:
        def __init__(self, lr: float):
            self.lr = lr

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Config) and other.lr == self.lr

        def __hash__(self) -> int:
            return hash(self.lr)

    assert exact_key(Config(0.1)) == exact_key(Config(0.1))
    assert exact_key(Config(0.1)) != exact_key(Config(0.2))


def test_unhashable_static_fields_are_keyed_by_a_snapshot_and_reported():
    from larix._exact import exact_field_keys

    keys, hashable = exact_field_keys((1, "a"))
    assert hashable and keys == exact_keys((1, "a"))
    lst = [1, 2.0]
    first, hashable = exact_field_keys((lst,))
    assert not hashable
    assert first == exact_field_keys(([1, 2.0],))[0]  # equal contents, equal keys
    assert first != exact_field_keys(([1, 2],))[0]  # 2.0 and 2 differ
    lst.append(3)
    assert exact_field_keys((lst,))[0] != first  # a snapshot, not the live list
    hash(first)
