"""The dict strategy: split a tree into a hashable Skeleton and flat `{path: leaf}` dicts.

Key format (stable: checkpoints depend on it). A leaf's key is its key path with entries
joined by dots: Module attributes and namedtuple fields by name, list/tuple items by index,
dict entries by `str(key)`. So `model.layers[0].weight` is `"layers.0.weight"`, and
`{"a": [x, y]}` gives `"a.0"` and `"a.1"`. A tree whose only leaf is the root has the key
`""`. Two different leaves can never share a key: if they would (a dict with keys `1` and
`"1"`, or a key containing a dot), `split` raises instead of silently overwriting.
"""

from __future__ import annotations

import itertools
import operator
import types
from collections.abc import Callable
from typing import Any

import jax.tree_util as jtu
import numpy as np

from . import _filters
from ._exact import exact_keys
from ._field import EPOCH
from ._module import Module
from ._partition import leaf_owners
from ._paths import CUSTOM_NODES, dict_keys_in_order, entry_name, flatten_one_level_with_keys, python_path

__all__ = ["Skeleton", "merge", "split"]

# Memo on a Module instance: filter specs -> (Skeleton, dicts). Modules are frozen, so a
# split never changes; only trees made of immutable nodes are memoised (see _memoisable).
_SPLIT_MEMO = "__larix_split__"

# Types that are certainly leaves: the key walk handles them inline without asking JAX.
try:  # the type of concrete JAX arrays, named without creating one: creating an array at
    # import would start JAX's backends, after which `jax.distributed.initialize` fails
    from jax._src.array import ArrayImpl
except ImportError:  # pragma: no cover - a JAX that moved it: arrays then take the slow paths
    ArrayImpl = np.ndarray

_LEAF_TYPES = {int, float, complex, bool, str, bytes, np.ndarray, ArrayImpl, types.FunctionType}


_INDEX_STRINGS: list[str] = []


def _index_strings(n: int) -> list[str]:
    if len(_INDEX_STRINGS) < n:
        _INDEX_STRINGS.extend(str(i) for i in range(len(_INDEX_STRINGS), n))
    return _INDEX_STRINGS[:n]


# The keys of long tuples of leaves, by (prefix, length): splitting models of one structure
# again (a fresh model of the same class, a checkpoint) reuses the same strings, whose
# hashes Python has cached, so building the dicts is faster too (benchmarks: split, 100k).
_PREFIXED: dict[tuple[str, int], list[str]] = {}
_PREFIXED_MIN = 256
_PREFIXED_MAX_TOTAL = 2_000_000  # strings kept at most, so that the cache stays bounded


def _prefixed(prefix: str, n: int) -> list[str]:
    keys = _PREFIXED.get((prefix, n))
    if keys is None:
        keys = list(map(prefix.__add__, _index_strings(n)))
        if n >= _PREFIXED_MIN:
            if sum(map(len, _PREFIXED.values())) + n > _PREFIXED_MAX_TOTAL:
                _PREFIXED.clear()
            _PREFIXED[(prefix, n)] = keys
    return keys


class _Collision(Exception):  # noqa: N818 - internal signal, never escapes split
    """Raised by the key walk when two keys might coincide, to take the careful path."""


class _Walk:
    """What one walk over a tree collects: the key and the leaf of every leaf, in
    flattening order, and a signature of the structure (see `_structure`)."""

    __slots__ = ("is_leaf", "keys", "leaves", "signature")

    def __init__(self, is_leaf: Any):
        self.is_leaf = is_leaf
        self.keys: list[str] = []
        self.leaves: list[Any] = []
        # One token per node, in pre-order; None once a node is met whose structure the
        # tokens cannot describe exactly (a custom pytree node), so that it is not cached.
        self.signature: list[Any] | None = [] if is_leaf is None else None


_LEAF_TOKEN = "leaf"


def _walk(node: Any, key: str, walk: _Walk) -> bool:
    """Record every leaf below `node` in `walk`, and return whether every container below
    `node` is immutable (see `_memoisable`).

    The keys are those of joining the entries of `tree_flatten_with_path`, 5x faster at
    100k leaves (benchmarks: split, N = 100k): prefixes are built once per node, not per
    leaf, and the common node types are handled without creating key-path objects.
    """
    is_leaf, signature = walk.is_leaf, walk.signature
    t = type(node)
    if t in _LEAF_TYPES or (is_leaf is not None and is_leaf(node)):
        walk.keys.append(key)
        walk.leaves.append(node)
        if signature is not None:
            signature.append(_LEAF_TOKEN)
        return True
    prefix = key + "." if key else ""
    if t is tuple or t is list:
        if is_leaf is None and set(map(type, node)) <= _LEAF_TYPES:  # C-level loops
            walk.keys.extend(_prefixed(prefix, len(node)))
            walk.leaves.extend(node)
            if signature is not None:
                signature.append((t, len(node), _LEAF_TOKEN))
            return t is tuple
        if signature is not None:
            signature.append((t, len(node)))
        immutable = [_walk(child, prefix + i, walk) for i, child in zip(_index_strings(len(node)), node)]
        return t is tuple and all(immutable)
    if t is dict:
        names = {k: str(k) for k in node}
        if len(set(names.values())) < len(names) or any("." in k or not k for k in names.values()):
            raise _Collision
        ordered = dict_keys_in_order(node)
        if signature is not None:  # exact keys: {1: x}, {1.0: x}, {True: x} compare equal
            signature.append((dict, exact_keys(tuple(ordered))))
        for k in ordered:
            _walk(node[k], prefix + names[k], walk)
        return False
    if node is None:
        if signature is not None:
            signature.append(None)
        return True
    if isinstance(node, Module):
        if signature is not None:  # the aux data, exactly: (1, 2) == (1.0, 2.0), 0.0 == -0.0
            aux = node._larix_flat[1]  # type: ignore[attr-defined]
            signature.append((t, exact_keys(aux[0]) if aux else ()))
        d = node.__dict__
        return all([_walk(d[name], prefix + name, walk) for name in _dynamic_field_names(t)])
    try:
        children, metadata = flatten_one_level_with_keys(node)
    except ValueError:  # not a registered node: a leaf
        walk.keys.append(key)
        walk.leaves.append(node)
        if signature is not None:
            signature.append(_LEAF_TOKEN)
        return True
    names = [entry_name(entry) for entry, _ in children]
    if len(set(names)) < len(names) or any("." in name or not name for name in names):
        raise _Collision
    namedtuple = isinstance(node, tuple) and metadata is t and t not in CUSTOM_NODES
    if signature is not None:
        if namedtuple:
            signature.append((t, len(children)))
        else:
            walk.signature = None  # aux data we cannot compare exactly (1 == 1.0)
    for name, (_, child) in zip(names, children):
        _walk(child, prefix + name, walk)
    # A namedtuple is immutable; any other registered container may not be.
    return namedtuple and _memoisable(node)


# Treedefs of large trees by the signature of their structure, so that splitting another
# tree of the same structure (a fresh model, a checkpoint's `like`) skips JAX's flatten,
# which costs as much as the rest of `split` (benchmarks: split, N = 100k). Bounded; holds
# the static field values of the trees, like any treedef (`larix.clear_caches` empties it).
_TREEDEFS: dict[tuple[Any, ...], Any] = {}
_TREEDEFS_MAX = 16
_TREEDEF_MIN_LEAVES = 1024


def _structure(tree: Any, is_leaf: Any) -> tuple[list[Any], Any, list[str], bool]:
    """`tree`'s leaves, treedef, the key of every leaf (raising if two leaves share one),
    and whether every container in it is immutable."""
    walk = _Walk(is_leaf)
    try:
        immutable = _walk(tree, "", walk)
    except (_Collision, TypeError):  # TypeError: e.g. unsortable dict keys; JAX reports it
        walk.signature = None
        immutable = None
    signature = None
    if walk.signature is not None and len(walk.leaves) >= _TREEDEF_MIN_LEAVES:
        try:
            signature = tuple(walk.signature)
            treedef = _TREEDEFS.get(signature)
        except TypeError:  # an unhashable static field value
            signature = treedef = None
        if treedef is not None:
            return walk.leaves, treedef, walk.keys, bool(immutable)
    leaves, treedef = jtu.tree_flatten(tree, is_leaf)
    if immutable is not None and len(walk.keys) == len(leaves):
        if signature is not None and all(map(operator.is_, leaves, walk.leaves)):
            if len(_TREEDEFS) >= _TREEDEFS_MAX:
                _TREEDEFS.clear()
            _TREEDEFS[signature] = treedef
        return leaves, treedef, walk.keys, immutable  # no duplicates without _Collision
    # The careful path: JAX's own key paths, which are always right, and a duplicate check.
    paths = [p for p, _ in jtu.tree_flatten_with_path(tree, is_leaf)[0]]
    keys = [".".join(entry_name(e) for e in p) for p in paths]
    _check_unique(keys, paths)
    return leaves, treedef, keys, _memoisable(tree)


def _check_unique(keys: list[str], paths: list[Any]) -> None:
    if len(set(keys)) == len(keys):
        return
    seen: dict[str, Any] = {}
    for key, path in zip(keys, paths):
        if key in seen:
            raise ValueError(
                f"larix.split: the leaves at {python_path(seen[key])} and {python_path(path)} "
                f"would both get the key '{key}'. Rename the dict key (keys must not contain "
                "'.' or mix 1 and '1' in one dict) so that every leaf has its own key."
            )
        seen[key] = path


class Skeleton:
    """The static part of a [`larix.split`][]: the tree structure and which key went where.

    Hashable (the hash is computed once), compared by value with an identity fast path,
    picklable, and usable as a `static_argnums` value of `jax.jit` or in a closure.
    Call it (or use [`larix.merge`][]) to rebuild the tree from the dicts.
    """

    __slots__ = ("__weakref__", "_hash", "keys", "num_parts", "owners", "treedef")

    def __init__(self, treedef: Any, keys: tuple[str, ...], owners: tuple[int, ...], num_parts: int):
        self.treedef = treedef
        #: the key of every leaf, in flattening order
        self.keys = keys
        #: the part (0-based) of every leaf, in flattening order
        self.owners = owners
        #: how many dicts `merge` expects: the number of filter specs plus one
        self.num_parts = num_parts
        self._hash = hash((treedef, owners, num_parts))

    def part_keys(self, part: int) -> list[str]:
        """The keys of dict number `part` (0-based), in flattening order."""
        return [k for k, o in zip(self.keys, self.owners) if o == part]

    def __call__(self, *dicts: dict[str, Any]) -> Any:
        """Same as [`larix.merge`][]`(self, *dicts)`."""
        return merge(self, *dicts)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Skeleton) or self._hash != other._hash:
            return False
        return self.owners == other.owners and self.num_parts == other.num_parts and self.treedef == other.treedef

    def __getstate__(self) -> tuple[Any, ...]:
        # PyTreeDefs do not pickle; a tree of placeholder leaves rebuilds the same treedef.
        placeholder = self.treedef.unflatten([_Hole()] * self.treedef.num_leaves)
        return placeholder, self.keys, self.owners, self.num_parts

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        placeholder, keys, owners, num_parts = state
        treedef = jtu.tree_structure(placeholder, is_leaf=lambda x: isinstance(x, _Hole))
        Skeleton.__init__(self, treedef, keys, owners, num_parts)

    def __repr__(self) -> str:
        sizes = ", ".join(str(len(self.part_keys(i))) for i in range(self.num_parts))
        return f"Skeleton({len(self.keys)} leaves in {self.num_parts} parts of sizes [{sizes}])"


class _Hole:
    """A picklable placeholder leaf used to rebuild a treedef after unpickling."""

    def __reduce__(self) -> Any:
        return (_Hole, ())


def _specs_key(filter_specs: tuple[Any, ...], is_leaf: Any) -> Any:
    """A key for the split memo, or None where a memo could go stale.

    Only specs whose answers cannot change are memoised: bools (by type too, since `1 == True`
    must not find the memo of `True`), larix's own predicates, `by_type`, `by_path` and their
    combinations. A user's callable may read mutable state, so it is asked every time.
    """
    if is_leaf is not None:
        return None
    key = []
    for spec in filter_specs:
        if not _pure_spec(spec):
            return None
        key.append((type(spec), spec))
    return tuple(key)


def _pure_spec(spec: Any) -> bool:
    t = type(spec)
    if t is bool or t in _PURE_FILTER_TYPES or any(spec is f for f in _PURE_PREDICATES):
        return True
    if t is _filters._Predicate:
        return _pure_spec(spec.fn)
    if t is _filters._Not:
        return _pure_spec(spec.inner)
    if t is _filters._And or t is _filters._Or:
        return _pure_spec(spec.left) and _pure_spec(spec.right)
    return False


_PURE_FILTER_TYPES = (_filters.by_type, _filters.by_path, _filters._Const)
_PURE_PREDICATES = (
    _filters.is_array,
    _filters.is_array_like,
    _filters.is_inexact_array,
    _filters.is_inexact_array_like,
)


def split(tree: Any, *filter_specs: Any, is_leaf: Callable[[Any], bool] | None = None) -> tuple[Any, ...]:
    """Split `tree` into a [`larix.Skeleton`][] and `len(filter_specs) + 1` flat dicts.

    The same filter specs and first-match-wins rule as [`larix.partition`][], but each part
    is a `dict` from the leaf's dotted path (`"layers.0.weight"`) to the leaf, and the
    structure lives once in the hashable skeleton. [`larix.merge`][] is the inverse.

    **Arguments:**

    - `tree`: any pytree.
    - `*filter_specs`: zero or more filter specs; with none, every leaf goes to one dict.
    - `is_leaf`: keyword-only; as in `jax.tree_util.tree_flatten`.

    **Returns:** `(skeleton, dict_1, ..., dict_k, rest)`.

    **Raises:** `ValueError` if two leaves would get the same key.

    !!! example
        ```python
        >>> import jax.numpy as jnp, larix
        >>> tree = {"w": jnp.ones(2), "n": [3, jnp.zeros(1)]}
        >>> skeleton, arrays, rest = larix.split(tree, larix.is_array)
        >>> sorted(arrays), rest
        (['n.1', 'w'], {'n.0': 3})
        >>> larix.tree_equal(larix.merge(skeleton, arrays, rest), tree)
        Array(True, dtype=bool)

        ```
    """
    memo_key = _specs_key(filter_specs, is_leaf) if isinstance(tree, Module) else None
    if memo_key is not None:
        memo = tree.__dict__.get(_SPLIT_MEMO)
        if memo is not None and memo[0] == memo_key and memo[3] == EPOCH[0]:
            _, skeleton, leaves, _ = memo
            return (skeleton, *_dicts(skeleton.keys, leaves, skeleton.owners, skeleton.num_parts))
    leaves, treedef, keys, immutable = _structure(tree, is_leaf)
    owners = leaf_owners(tree, leaves, filter_specs, is_leaf)
    skeleton = Skeleton(treedef, tuple(keys), tuple(owners), len(filter_specs) + 1)
    if memo_key is not None and immutable:
        # The leaves list is ours (never handed out), so it can be kept without a copy.
        tree.__dict__[_SPLIT_MEMO] = (memo_key, skeleton, leaves, EPOCH[0])
    return (skeleton, *_dicts(keys, leaves, owners, len(filter_specs) + 1))


def _dicts(keys: Any, leaves: list[Any], owners: Any, num_parts: int) -> list[dict[str, Any]]:
    """One `{key: leaf}` dict per part, in flattening order.

    The largest part is one C-level `dict(zip(...))` and the others are moved out of it,
    selected with `itertools.compress`: no Python-level loop over the leaves, ~4x faster at
    100k leaves (benchmarks: split, N = 100k).
    """
    counts = [owners.count(part) for part in range(num_parts - 1)]
    counts.append(len(owners) - sum(counts))
    largest = counts.index(max(counts))
    everything = dict(zip(keys, leaves))
    dicts: list[dict[str, Any]] = []
    for part in range(num_parts):
        if part == largest or counts[part] == 0:
            dicts.append({})
        else:
            dicts.append({k: everything.pop(k) for k in _part_keys(keys, owners, part, counts[part])})
    dicts[largest] = everything
    return dicts


def _part_keys(keys: Any, owners: Any, part: int, count: int) -> Any:
    if count * 8 > len(owners):
        return itertools.compress(keys, map(part.__eq__, owners))
    # A few leaves (the arrays among many static leaves): C-level `index` jumps from one to
    # the next, ~4x faster than testing every owner (benchmarks: split, N = 100k).
    found = []
    i = -1
    for _ in range(count):
        i = owners.index(part, i + 1)
        found.append(keys[i])
    return found


def merge(skeleton: Skeleton, *dicts: dict[str, Any]) -> Any:
    """Rebuild the tree from a [`larix.Skeleton`][] and the dicts that [`larix.split`][] made.

    **Arguments:**

    - `skeleton`: the skeleton returned by `split`.
    - `*dicts`: one dict per part, in the order `split` returned them.

    **Returns:** the tree.

    **Raises:** `ValueError` listing every missing and every unexpected key, by part, if the
    dicts do not match the skeleton (for instance parameters saved from another model).
    """
    if not isinstance(skeleton, Skeleton):
        raise TypeError(
            f"larix.merge: the first argument must be the Skeleton returned by larix.split, "
            f"got {type(skeleton).__name__}. Call it as `larix.merge(skeleton, *dicts)`."
        )
    if len(dicts) != skeleton.num_parts:
        raise ValueError(
            f"larix.merge: this skeleton has {skeleton.num_parts} parts, but {len(dicts)} dicts were "
            "given. Pass every dict that larix.split returned, in the same order."
        )
    leaves = []
    try:
        for key, owner in zip(skeleton.keys, skeleton.owners):
            leaves.append(dicts[owner][key])
        mismatch = sum(map(len, dicts)) != len(leaves)
    except (KeyError, TypeError):
        mismatch = True
    if mismatch:
        raise ValueError(_mismatch_message(skeleton, dicts))
    # No split memo for the result: the dicts may hold leaves that the filter specs would
    # now assign differently (an int array merged into the float part), so a later split
    # must look. filter_jit's outputs, whose leaves it knows, are born with theirs.
    return skeleton.treedef.unflatten(leaves)


def _mismatch_message(skeleton: Skeleton, dicts: tuple[Any, ...]) -> str:
    problems = []
    for part, given in enumerate(dicts):
        if not isinstance(given, dict):
            problems.append(f"part {part} is a {type(given).__name__}, not a dict")
            continue
        expected = skeleton.part_keys(part)
        missing = [k for k in expected if k not in given]
        unexpected = sorted(set(given) - set(expected), key=str)
        if missing:
            problems.append(f"the dict for part {part} is missing {_quote(missing)}")
        if unexpected:
            elsewhere = [k for k in unexpected if k in skeleton.keys]
            text = f"the dict for part {part} has unexpected {_quote(unexpected)}"
            if elsewhere:
                text += f" ({_quote(elsewhere)} belong{'s' if len(elsewhere) == 1 else ''} to another part)"
            problems.append(text)
    return (
        "larix.merge: the dicts do not match the skeleton: "
        + "; ".join(problems)
        + ". Did the model definition change since these parameters were split or saved?"
    )


def _quote(keys: list[str]) -> str:
    return ", ".join(f"'{k}'" for k in keys)


def _dynamic_field_names(cls: type) -> tuple[str, ...]:
    return cls._larix_dynamic_fields  # type: ignore[attr-defined]


def _memoisable(node: Any) -> bool:
    """Whether every container in `node` is immutable (Modules, tuples, None, leaves).

    A list or dict inside a Module can be changed in place, which would make a memoised
    split stale, so such trees are split afresh every time.
    """
    t = type(node)
    if t in _LEAF_TYPES or node is None:
        return True
    if isinstance(node, tuple):
        if set(map(type, node)) <= _LEAF_TYPES:  # C-level: a tuple of plain leaves
            return True
        return all(type(c) in _LEAF_TYPES or _memoisable(c) for c in node)
    if isinstance(node, Module):
        d = node.__dict__
        return all(_memoisable(d[name]) for name in _dynamic_field_names(t))
    if t is list or t is dict:
        return False
    return not jtu.is_tree_node(t)  # another container: we cannot know that it is immutable
