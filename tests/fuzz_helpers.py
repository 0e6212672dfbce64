"""Helpers for the differential fuzz tests of larix's caches (tests/test_fuzz_caches.py).

larix caches splits, treedefs and compiled functions by structure and by the ids of
interned static parts. A cache that confuses two inputs gives a silent wrong answer, so
these helpers describe a tree *exactly* (the Python type of every static value, the sign
of every zero, dict keys with their types, which attribute holds which array) and build
families of trees that are equal under `==` but not the same: `(1, 2)` and `(1.0, 2)`,
`0.0` and `-0.0`, dict keys `1`, `1.0` and `True`. Two such trees must never share a
cached answer.

Everything here is defined at module level: Modules and pytree nodes must be importable.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import random
import warnings
from typing import Any, NamedTuple

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

import larix

# --------------------------------------------------------------------------- tree types


class Lin(larix.Module):
    """One array field."""

    w: Any


class Leafy(larix.Module):
    """A child and a static tag."""

    value: Any
    tag: Any = larix.field(static=True, default=None)


class Deep(larix.Module):
    """Two children and two static fields."""

    inner: Any
    extra: Any
    pad: Any = larix.field(static=True, default=None)
    name: Any = larix.field(static=True, default="deep")


class ReorderedPair(NamedTuple):
    """A NamedTuple registered with its own flatten, which gives its children as (b, a)."""

    a: Any
    b: Any


jtu.register_pytree_node(
    ReorderedPair, lambda p: ((p.b, p.a), None), lambda _, c: ReorderedPair(a=c[1], b=c[0])
)


class Point(NamedTuple):
    """A plain NamedTuple (JAX flattens it field by field)."""

    x: Any
    y: Any


@jtu.register_pytree_node_class
class Node:
    """A custom pytree node with children and hashable aux data."""

    def __init__(self, children: tuple[Any, ...], aux: Any):
        self.children = tuple(children)
        self.aux = aux

    def tree_flatten(self) -> tuple[tuple[Any, ...], Any]:
        return self.children, self.aux

    @classmethod
    def tree_unflatten(cls, aux: Any, children: Any) -> Node:
        return cls(tuple(children), aux)

    def __repr__(self) -> str:
        return f"Node({self.children!r}, aux={self.aux!r})"


class FreshNode:
    """A custom node whose flatten builds *fresh* tuples on every call (new ids each time)."""

    def __init__(self, items: tuple[Any, ...], rest: Any):
        self.items = items
        self.rest = rest

    def __repr__(self) -> str:
        return f"FreshNode({self.items!r}, rest={self.rest!r})"


jtu.register_pytree_node(
    FreshNode,
    lambda n: ((tuple(list(n.items)), n.rest), None),  # tuple(list(t)): a new tuple object
    lambda _, c: FreshNode(c[0], c[1]),
)


class Fn(larix.Module):
    """A Module used as the function itself: its arrays are traced, `mode` is static."""

    scale: Any
    mode: Any = larix.field(static=True, default=None)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return reveal(self, *args, **kwargs)

    def method(self, *args: Any, **kwargs: Any) -> Any:
        return reveal("method", self, *args, **kwargs)


# --------------------------------------------------------------------------- exact walk


# Whether the sign of a NaN static must survive the caches. Off: two NaN statics count as
# equal, whatever their signs (the working tree of issue 8 identifies -nan with nan).
NAN_SIGN_MATTERS = True


def exact_repr(v: Any) -> str:
    """A text that differs whenever two static values differ in any way that matters:
    type, sign of zero, nested element types, frozenset element types."""
    t = type(v)
    if t is float:
        if math.isnan(v):  # any NaN equals any other here (see NAN_SIGN_MATTERS)
            return "float(-nan)" if NAN_SIGN_MATTERS and math.copysign(1.0, v) < 0 else "float(nan)"
        return f"float({v!r})"
    if t in (int, bool, str, bytes, complex) or v is None:
        return f"{t.__name__}({v!r})"
    if isinstance(v, np.generic):
        item = v.item()
        text = exact_repr(item) if type(item) is float else repr(item)
        return f"np.{t.__name__}({text})"
    if isinstance(v, tuple):
        name = t.__qualname__ if t is not tuple else ""
        return f"{name}(" + ", ".join(map(exact_repr, v)) + ",)"
    if isinstance(v, frozenset):
        return "frozenset{" + ", ".join(sorted(map(exact_repr, v))) + "}"
    return f"{t.__qualname__}<{v!r}>"


def is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def children_of(x: Any) -> tuple[str, list[tuple[str, Any, bool]]] | None:
    """`(label, [(name, child, is_static), ...])` for a container, in *attribute* order
    (never JAX's flatten order, so that a cache that mixes up flatten order shows); None
    for a leaf. Dicts are ordered by the exact text of their keys."""
    t = type(x)
    if isinstance(x, larix.Module):
        fields = dataclasses.fields(x)
        return t.__qualname__, [(f.name, getattr(x, f.name), bool(f.metadata.get("static"))) for f in fields]
    if isinstance(x, tuple) and isinstance(getattr(t, "_fields", None), tuple):
        return t.__qualname__, [(name, getattr(x, name), False) for name in t._fields]
    if t is tuple or t is list:
        return t.__name__, [(str(i), c, False) for i, c in enumerate(x)]
    if t is dict or t is collections.defaultdict:  # JAX sorts their keys
        items = sorted(((exact_repr(k), v) for k, v in x.items()), key=lambda kv: kv[0])
        return t.__name__, [(k, v, False) for k, v in items]
    if t is collections.OrderedDict:  # JAX keeps their order
        return "OrderedDict", [(exact_repr(k), v, False) for k, v in x.items()]
    if t is FreshNode:
        return "FreshNode", [("items", x.items, False), ("rest", x.rest, False)]
    if t is Node:
        return "Node", [("children", x.children, False), ("aux", x.aux, True)]
    return None


def fingerprint(x: Any) -> str:
    """An exact description of `x` in which arrays (or tracers) show as shape and dtype."""
    if is_array(x):
        return f"A{tuple(np.shape(x))}{jnp.result_type(x)}"
    found = children_of(x)
    if found is None:
        return exact_repr(x)
    label, children = found
    parts = [f"{n}=" + (f"S:{exact_repr(c)}" if static else fingerprint(c)) for n, c, static in children]
    return f"{label}(" + ", ".join(parts) + ")"


def arrays_in(x: Any, out: list[Any] | None = None) -> list[Any]:
    """The arrays of `x`, in attribute order (see `children_of`)."""
    out = [] if out is None else out
    if is_array(x):
        out.append(x)
        return out
    found = children_of(x)
    if found is not None:
        for _, child, static in found[1]:
            if not static:
                arrays_in(child, out)
    return out


def numbers_in(x: Any, out: list[Any] | None = None) -> list[Any]:
    """The Python numbers among the static values of `x` (static fields too), in order."""
    out = [] if out is None else out
    if is_array(x):
        return out
    if type(x) in (int, float, bool):
        out.append(x)
        return out
    if isinstance(x, (tuple, frozenset)) and children_of(x) is None:
        for item in sorted(x, key=exact_repr) if isinstance(x, frozenset) else x:
            numbers_in(item, out)
        return out
    found = children_of(x)
    if found is not None:
        for _, child, _ in found[1]:
            numbers_in(child, out)
    return out


def _double(x: Any) -> Any:
    return jnp.asarray(x) * 2 if is_array(x) else x


def reveal(*args: Any, **kwargs: Any) -> Any:
    """A function whose output shows everything a wrong cache could confuse: the exact
    statics (as a static string output), the arrays by attribute, the sign of every static
    zero (`arctan2(±0, -1) = ±pi`), the inputs passed back (static leaves included), and a
    ReorderedPair of Modules (a NamedTuple whose flatten reorders its children)."""
    tree = (args, {k: kwargs[k] for k in sorted(kwargs)})
    arrays = [jnp.asarray(a) * 2 for a in arrays_in(tree)]
    numbers = numbers_in(tree)
    signs = jnp.arctan2(jnp.asarray(numbers, jnp.float32) * 0.0, -1.0) if numbers else jnp.zeros(0)
    total = jnp.float32(1.0)
    for a in arrays:
        total = total + jnp.sum(a.astype(jnp.float32))
    mapped = jtu.tree_map(_double, tree)
    return fingerprint(tree), arrays, mapped, ReorderedPair(a=Lin(total * 10), b=Lin(total)), signs


def assert_exact(got: Any, want: Any, path: str = "out") -> None:
    """`got` and `want` are the same tree: same node types, static values equal with the
    same types (and signs of zeros), arrays equal (NaN equal to NaN, -0.0 unequal to 0.0)
    with the same dtype, shape and weak type. Raises AssertionError naming the first path
    that differs."""
    if is_array(got) or is_array(want):
        assert is_array(got) and is_array(want), f"{path}: {got!r} vs {want!r}"
        assert isinstance(got, jax.Array) == isinstance(want, jax.Array), (
            f"{path}: {type(got)} vs {type(want)}"
        )
        g, w = np.asarray(got), np.asarray(want)
        assert g.dtype == w.dtype and g.shape == w.shape, f"{path}: {g.dtype}{g.shape} vs {w.dtype}{w.shape}"
        weak = (getattr(got, "weak_type", False), getattr(want, "weak_type", False))
        assert weak[0] == weak[1], f"{path}: weak_type {weak[0]} vs {weak[1]}"
        equal_nan = g.dtype.kind in "fc"
        assert np.array_equal(g, w, equal_nan=equal_nan), f"{path}: {g!r} vs {w!r}"
        if g.dtype.kind == "f":  # signs of zeros (not of NaNs, which arithmetic may flip)
            numbers = ~np.isnan(g)
            assert np.array_equal(np.signbit(g[numbers]), np.signbit(w[numbers])), (
                f"{path}: signs of {g!r} vs {w!r}"
            )
        return
    assert type(got) is type(want), f"{path}: type {type(got).__qualname__} vs {type(want).__qualname__}"
    found_got, found_want = children_of(got), children_of(want)
    if found_want is None:
        assert exact_repr(got) == exact_repr(want), f"{path}: {exact_repr(got)} vs {exact_repr(want)}"
        return
    assert found_got is not None
    names_got = [n for n, _, _ in found_got[1]]
    names_want = [n for n, _, _ in found_want[1]]
    assert names_got == names_want, f"{path}: keys {names_got} vs {names_want}"
    for (name, g, static), (_, w, _) in zip(found_got[1], found_want[1]):
        where = f"{path}.{name}"
        if static:
            assert exact_repr(g) == exact_repr(w), f"{where} (static): {exact_repr(g)} vs {exact_repr(w)}"
        else:
            assert_exact(g, w, where)


# --------------------------------------------------------------------------- blueprints

NAN = float("nan")
NEG_NAN = -NAN

# Groups of values equal under `==` (and hashing alike) that must never share a cache.
# A blueprint names a group; each variant of it picks a member.
GROUPS: tuple[tuple[Any, ...], ...] = (
    (0.0, -0.0, 0, False),
    (1, 1.0, True),
    (2, 2.0),
    (NAN, NEG_NAN),
    ((1, 2), (1.0, 2), (True, 2), (1, 2.0)),
    ((0.0,), (-0.0,), (0,)),
    (frozenset({1}), frozenset({1.0}), frozenset({True})),
    (((1, (2.0,)),), ((1, (2,)),), ((1.0, (2,)),)),
    ("1",),
    ("a",),
    (None,),
)
# Static fields may also hold NumPy scalars (equal to, and hashing like, Python numbers).
STATIC_EXTRA = {0: (np.float32(-0.0), np.float32(0.0)), 1: (np.float32(1.0), np.int32(1), np.bool_(True))}

# Dict keys by family: keys of one family sort together (JAX sorts dict keys).
KEY_FAMILIES: tuple[tuple[tuple[Any, ...], ...], ...] = (
    ((0, 0.0, -0.0, False), (1, 1.0, True), (2, 2.0), (2.5,)),
    (("a",), ("b",), ("1",), ("w",)),
    (
        (frozenset({1}), frozenset({1.0}), frozenset({True})),
        (frozenset({2}), frozenset({2.0})),
        (frozenset({1, 2}), frozenset({1.0, 2})),
        (frozenset(),),
    ),
    (((1, 2), (1.0, 2), (True, 2)), ((2,), (2.0,)), ((0, 3),)),
)
DICT_TYPES = (dict, collections.OrderedDict, lambda items: collections.defaultdict(int, items))
ARRAY_VALUES = (-0.0, 0.0, 1.5, -2.0, 3.0, NAN)
SHAPES = ((), (2,), (1, 3))
LONG_MIN = 64  # larix keeps tuples of at least 64 plain items whole


def _array(kind: str, shape_index: int, value_index: int) -> Any:
    shape = SHAPES[shape_index % len(SHAPES)]
    value = ARRAY_VALUES[value_index % len(ARRAY_VALUES)]
    if kind == "jf32":
        return jnp.full(shape, value, jnp.float32)
    if kind == "ji32":
        return jnp.full(shape, 0 if math.isnan(value) else int(value), jnp.int32)
    if kind == "jbool":
        return jnp.full(shape, value > 0, bool)
    if kind == "nf32":
        return np.full(shape, value, np.float32)
    return np.float32(value)  # "nscalar": a NumPy scalar leaf, which larix treats as an array


def _long_tuple(rng: random.Random, length: int, mode: str) -> tuple[Any, ...]:
    """A long tuple of plain ints, floats and bools; variants differ only in their types."""
    if mode == "same":  # every item the same member: all int, all float, ...
        pick = rng.randrange(4)
        return tuple(GROUPS[i % 3][pick % len(GROUPS[i % 3])] for i in range(length))
    return tuple(rng.choice(GROUPS[i % 3]) for i in range(length))


def _static_value(rng: random.Random, group: int) -> Any:
    if group < 0:
        return _long_tuple(rng, LONG_MIN + 2, "same")
    members = GROUPS[group % len(GROUPS)] + STATIC_EXTRA.get(group % len(GROUPS), ())
    return rng.choice(members)


def build(bp: Any, rng: random.Random) -> Any:
    """The tree that blueprint `bp` describes, each equal-but-different choice made by `rng`."""
    kind = bp[0]
    if kind == "arr":
        return _array(*bp[1:])
    if kind == "stat":
        return rng.choice(GROUPS[bp[1] % len(GROUPS)])
    if kind == "none":
        return None
    if kind == "long":
        return _long_tuple(rng, LONG_MIN + bp[1], bp[2])
    if kind == "list":
        return [build(c, rng) for c in bp[1]]
    if kind == "tuple":
        return tuple(build(c, rng) for c in bp[1])
    if kind == "dict":
        family = KEY_FAMILIES[bp[1] % len(KEY_FAMILIES)]
        out: dict[Any, Any] = {}
        for group, child in bp[2]:
            key = rng.choice(family[group % len(family)])
            if key not in out:
                out[key] = build(child, rng)
        return DICT_TYPES[bp[3] % len(DICT_TYPES)](out)
    if kind == "rpair":
        return ReorderedPair(build(bp[1], rng), build(bp[2], rng))
    if kind == "point":
        return Point(build(bp[1], rng), build(bp[2], rng))
    if kind == "node":
        return Node(tuple(build(c, rng) for c in bp[1]), rng.choice(GROUPS[bp[2] % len(GROUPS)]))
    if kind == "fresh":
        return FreshNode(_long_tuple(rng, LONG_MIN + bp[1], bp[2]), build(bp[3], rng))
    with warnings.catch_warnings():  # a NumPy scalar in a static field warns; wanted here
        warnings.simplefilter("ignore", UserWarning)
        if kind == "lin":
            return Lin(build(bp[1], rng))
        if kind == "leafy":
            return Leafy(build(bp[1], rng), tag=_static_value(rng, bp[2]))
        if kind == "deep":
            return Deep(
                build(bp[1], rng),
                build(bp[2], rng),
                pad=_static_value(rng, bp[3]),
                name=_static_value(rng, bp[4]),
            )
    raise AssertionError(f"unknown blueprint {bp!r}")


_group = st.integers(-1, len(GROUPS) - 1)
_array_bp = st.tuples(
    st.just("arr"),
    st.sampled_from(["jf32", "ji32", "jbool", "nf32", "nscalar"]),
    st.integers(0, 2),
    st.integers(0, 5),
)
_leaf_bp = st.one_of(
    _array_bp,
    st.tuples(st.just("stat"), st.integers(0, len(GROUPS) - 1)),
    st.just(("none",)),
    st.tuples(st.just("long"), st.integers(0, 6), st.sampled_from(["same", "mixed"])),
)


def _extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    few = st.lists(children, max_size=3).map(tuple)
    return st.one_of(
        st.tuples(st.just("list"), few),
        st.tuples(st.just("tuple"), few),
        st.tuples(
            st.just("dict"),
            st.integers(0, 3),
            st.lists(st.tuples(st.integers(0, 3), children), max_size=3).map(tuple),
            st.integers(0, len(DICT_TYPES) - 1),
        ),
        st.tuples(st.just("rpair"), children, children),
        st.tuples(st.just("point"), children, children),
        st.tuples(st.just("node"), few, st.integers(0, len(GROUPS) - 1)),
        st.tuples(st.just("fresh"), st.integers(0, 6), st.sampled_from(["same", "mixed"]), children),
        st.tuples(st.just("lin"), children),
        st.tuples(st.just("leafy"), children, _group),
        st.tuples(st.just("deep"), children, children, _group, _group),
    )


blueprints = st.recursive(_leaf_bp, _extend, max_leaves=6)
"""Random tree blueprints: `build(bp, random.Random(seed))` gives a tree; trees built from
one blueprint with different seeds are equal under `==` but may differ in types and signs."""


# --------------------------------------------------------------------------- key paths


def reference_keys(tree: Any, is_leaf: Any = None) -> list[str]:
    """The dotted key of every leaf, from JAX's own key paths (the documented rule)."""
    keys = []
    for path, _ in jtu.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]:
        names = []
        for entry in path:
            if isinstance(entry, jtu.GetAttrKey):
                names.append(entry.name)
            elif isinstance(entry, jtu.DictKey):
                names.append(str(entry.key))
            elif isinstance(entry, jtu.SequenceKey):
                names.append(str(entry.idx))
            elif isinstance(entry, jtu.FlattenedIndexKey):
                names.append(str(entry.key))
            else:  # pragma: no cover - no other key types in these trees
                names.append(str(entry))
        keys.append(".".join(names))
    return keys
