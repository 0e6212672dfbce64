"""Key paths as strings.

Two spellings of the same key path are used across larix:

- the *dotted* form, `layers.0.weight`, is the key of the dict strategy and of checkpoints
  (PyTorch-like: attributes, sequence indices and dict keys are all joined by dots);
- the *Python* form, `model.layers[0].weight`, appears in error messages, because it is
  the expression a user would type to reach the leaf.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.tree_util as jtu

__all__ = [
    "PrefixMismatchError",
    "broadcast_prefix",
    "dict_keys_in_order",
    "dotted_path",
    "entry_name",
    "flatten_one_level_with_keys",
    "python_path",
    "structure_mismatch",
]


def entry_name(entry: Any) -> str:
    """The dotted-form name of one key path entry."""
    # Order follows frequency: Module fields and dict keys are the common case.
    if isinstance(entry, jtu.GetAttrKey):
        return entry.name
    if isinstance(entry, jtu.DictKey):
        return str(entry.key)
    if isinstance(entry, jtu.SequenceKey):
        return str(entry.idx)
    if isinstance(entry, jtu.FlattenedIndexKey):
        return str(entry.key)
    return str(entry)


def dotted_path(path: Sequence[Any]) -> str:
    """`(GetAttrKey('layers'), SequenceKey(0), GetAttrKey('weight'))` -> `'layers.0.weight'`."""
    return ".".join([entry_name(e) for e in path])


def python_path(path: Sequence[Any], root: str = "tree") -> str:
    """`(GetAttrKey('layers'), SequenceKey(0))` -> `'tree.layers[0]'`, for error messages."""
    parts = [root]
    for e in path:
        if isinstance(e, jtu.GetAttrKey):
            parts.append(f".{e.name}")
        elif isinstance(e, jtu.DictKey):
            parts.append(f"[{e.key!r}]")
        elif isinstance(e, jtu.SequenceKey):
            parts.append(f"[{e.idx}]")
        elif isinstance(e, jtu.FlattenedIndexKey):
            parts.append(f"[<flat {e.key}>]")
        else:
            parts.append(f"[{e!r}]")
    return "".join(parts)


class _Everything:
    def __contains__(self, item: object) -> bool:
        return True


try:  # the types registered with their own flatten: a NamedTuple among them may reorder
    from jax._src.tree_util import _registry as CUSTOM_NODES  # noqa: N812
except ImportError:  # pragma: no cover - a JAX that moved it: treat every namedtuple as custom
    CUSTOM_NODES = _Everything()  # type: ignore[assignment]


_STR = frozenset({str})


def dict_keys_in_order(node: dict[Any, Any]) -> list[Any]:
    """The keys of a dict in the order JAX flattens them. `sorted` is that order only for
    keys with a total order: with frozensets, say, it would pair one key with another's leaf."""
    if _STR.issuperset(map(type, node)):  # C-level check
        return sorted(node)  # the common case, without JAX's Python wrapper
    return list(jtu.flatten_one_level(node)[1])


def flatten_one_level_with_keys(node: Any) -> tuple[list[tuple[Any, Any]], Any]:
    """`jax.tree_util.flatten_one_level_with_keys`, with namedtuple fields named right.

    (jax 0.10.2 names every field of a namedtuple after its first one.) A NamedTuple
    registered with its own flatten is left to JAX: it may reorder its items.

    **Raises:** `ValueError` if `node` is a leaf.
    """
    fields = getattr(type(node), "_fields", None)
    if isinstance(node, tuple) and isinstance(fields, tuple) and type(node) not in CUSTOM_NODES:
        return [(jtu.GetAttrKey(f), v) for f, v in zip(fields, node)], type(node)
    children, metadata = jtu.flatten_one_level_with_keys(node)
    return list(children), metadata


def _one_level(node: Any, is_leaf: Any) -> tuple[tuple[tuple[Any, Any], ...], Any] | None:
    """`((key, child), ...), metadata` of a pytree node, or `None` if `node` is a leaf."""
    if is_leaf is not None and is_leaf(node):
        return None
    try:
        children, metadata = flatten_one_level_with_keys(node)
    except ValueError:
        return None
    return tuple(children), metadata


def _describe(node: Any) -> str:
    from ._pformat import tree_pformat

    try:
        text = tree_pformat(node, width=10_000)
    except Exception:  # noqa: BLE001 - a user's __repr__ must never break a diagnostic
        text = f"<{type(node).__name__} object (its repr failed)>"
    return text if len(text) <= 60 else text[:57] + "..."


def _safe_equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - values whose == raises (arrays) count as different
        return False


def structure_mismatch(
    a: Any, b: Any, *, is_leaf: Any = None, prefix: bool = False, path: tuple[Any, ...] = ()
) -> tuple[tuple[Any, ...], str] | None:
    """Find the first place where the structures of `a` and `b` differ.

    With `prefix=True`, `a` may stop early: a leaf of `a` matches any subtree of `b`.

    **Returns:** `(path, reason)` for the first difference, or `None` if there is none.
    """
    node_a, node_b = _one_level(a, is_leaf), _one_level(b, is_leaf)
    if node_a is None:
        if prefix or node_b is None:
            return None
        return path, f"a leaf ({_describe(a)}) on one side, a {type(b).__name__} on the other"
    if node_b is None:
        return path, f"a {type(a).__name__} on one side, a leaf ({_describe(b)}) on the other"
    if type(a) is not type(b):
        return path, f"a {type(a).__name__} on one side, a {type(b).__name__} on the other"
    (children_a, meta_a), (children_b, meta_b) = node_a, node_b
    keys_a = [entry_name(k) for k, _ in children_a]
    keys_b = [entry_name(k) for k, _ in children_b]
    if keys_a != keys_b:
        return path, f"children {keys_a} on one side, {keys_b} on the other"
    if not _safe_equal(meta_a, meta_b):
        static_fields = getattr(type(a), "_larix_static_fields", ())
        for name in static_fields:  # a Module: name the static field that changed
            old, new = a.__dict__.get(name), b.__dict__.get(name)
            if old is not new and not _safe_equal(old, new):
                return (*path, jtu.GetAttrKey(name)), f"static field changed: {_describe(old)} -> {_describe(new)}"
        return path, f"different static data: {_describe(meta_a)} vs {_describe(meta_b)}"
    for (key, child_a), (_, child_b) in zip(children_a, children_b):
        found = structure_mismatch(child_a, child_b, is_leaf=is_leaf, prefix=prefix, path=(*path, key))
        if found is not None:
            return found
    return None


class PrefixMismatchError(ValueError):
    """`prefix` is not a pytree prefix of the tree: `path` is where, `why` what differs.

    Callers catch it and raise their own error, which says what the prefix was for.
    """

    def __init__(self, path: tuple[Any, ...], why: str):
        super().__init__(f"not a pytree prefix at {python_path(path)}: {why}")
        self.path, self.why = path, why


def broadcast_prefix(
    prefix: Any, tree: Any, *, prefix_is_leaf: Any = None, tree_is_leaf: Any = None
) -> list[tuple[tuple[Any, ...], Any]]:
    """For each leaf of `tree`, the `(path, leaf)` of `prefix` that applies to it.

    The one mechanism behind every "pytree prefix" argument: filter specs, `in_axes` /
    `out_axes`, shardings. Each leaf of `prefix` covers the whole subtree of `tree` below
    the same path.

    **Raises:** `PrefixMismatchError` naming the first place where `prefix` is not a prefix.
    """
    path_leaves, prefix_def = jtu.tree_flatten_with_path(prefix, is_leaf=prefix_is_leaf)
    try:
        subtrees = prefix_def.flatten_up_to(tree)
    except (ValueError, TypeError):
        found = structure_mismatch(prefix, tree, is_leaf=prefix_is_leaf, prefix=True)
        path, why = found if found is not None else ((), "a different structure")
        raise PrefixMismatchError(path, why) from None
    per_leaf: list[tuple[tuple[Any, ...], Any]] = []
    for path_leaf, sub in zip(path_leaves, subtrees):
        per_leaf.extend([path_leaf] * len(jtu.tree_leaves(sub, is_leaf=tree_is_leaf)))
    return per_leaf
