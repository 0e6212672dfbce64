"""The tree strategy: filter, n-way partition and combine on full-structure trees."""

from __future__ import annotations

import functools
import operator
import os
import reprlib
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax.tree_util as jtu

from ._filters import Filter, is_array, is_inexact_array, path_filter_mistakes
from ._paths import PrefixMismatchError, broadcast_prefix, dotted_path, python_path, structure_mismatch

__all__ = ["combine", "filter", "leaf_owners", "partition"]

_ARRAY_TYPE_CACHE: dict[type, bool] = {}
_NOT_GIVEN: Any = object()  # `filter_spec=` was not passed to partition


def _array_type(t: type, leaf: Any) -> bool:
    # is_array depends on the leaf's type alone: cache it per type. With 100k static leaves
    # this halves partition's time (benchmarks: partition, N = 100k).
    known = _ARRAY_TYPE_CACHE.get(t)
    if known is None:
        known = _ARRAY_TYPE_CACHE[t] = is_array(leaf)
    return known


def _mask(spec: Any, leaves: Sequence[Any], paths: Sequence[str] | None, where: Callable[[int], str]) -> list[bool]:
    """Evaluate one filter-spec leaf on `leaves`: a list of real bools."""
    if isinstance(spec, bool):
        return [spec] * len(leaves)
    if spec is is_array:
        try:
            return list(map(_ARRAY_TYPE_CACHE.__getitem__, map(type, leaves)))  # C-level loops
        except KeyError:  # types not seen before
            return [_array_type(type(x), x) for x in leaves]
    if spec is is_inexact_array:
        return [_array_type(type(x), x) and is_inexact_array(x) for x in leaves]
    if isinstance(spec, Filter) and spec.uses_path:
        assert paths is not None  # computed whenever a spec uses paths
        return [bool(spec.match(p, x)) for p, x in zip(paths, leaves)]
    if callable(spec):
        return [bool(spec(x)) for x in leaves]
    raise ValueError(
        f"Invalid filter spec at {where(0)}: {spec!r}. A filter spec consists of bools and "
        "callables `leaf -> bool` (or a pytree prefix of the tree with those as leaves)."
    )


def _check_spec_leaves(spec: Any, spec_leaves: list[Any]) -> None:
    """Reject a spec leaf that is neither a bool nor a callable, even if no leaf reaches it."""
    for k, s in enumerate(spec_leaves):
        if not (isinstance(s, bool) or callable(s)):
            path = jtu.tree_flatten_with_path(spec)[0][k][0]
            where = python_path(path, "filter_spec") if path else "the root of the filter spec"
            raise ValueError(
                f"Invalid filter spec at {where}: {s!r}. A filter spec consists of bools and "
                "callables `leaf -> bool` (or a pytree prefix of the tree with those as leaves)."
            )


def _leaves_use_path(spec_leaves: list[Any]) -> bool:
    return any(isinstance(s, Filter) and s.uses_path for s in spec_leaves)


def _uses_path(spec: Any) -> bool:
    return _leaves_use_path(jtu.tree_leaves(spec))


def leaf_owners(
    tree: Any, leaves: list[Any], filter_specs: Sequence[Any], is_leaf: Callable[[Any], bool] | None
) -> list[int]:
    """For each leaf of `tree`, the index of the first spec that selects it (else `len(specs)`).

    `leaves` must be `jax.tree_util.tree_leaves(tree, is_leaf)`. Shared by the tree and the
    dict strategy, so that both assign leaves to parts in exactly the same way.
    """
    n = len(leaves)
    paths = None
    if any(_uses_path(s) for s in filter_specs):
        paths = [dotted_path(p) for p, _ in jtu.tree_flatten_with_path(tree, is_leaf)[0]]
    owners = [len(filter_specs)] * n
    unassigned: list[int] | None = None  # None: all leaves (the common case, kept implicit)
    for i, spec in enumerate(filter_specs):
        spec_leaves, spec_def = jtu.tree_flatten(spec)
        _check_spec_leaves(spec, spec_leaves)
        todo = range(n) if unassigned is None else unassigned
        if not todo:
            # Every leaf is taken, but a later spec must still be a prefix of the tree:
            # whether a bad spec raises must not depend on the values in the tree. Nor
            # may whether a mistyped path pattern warns.
            if not (spec_def.num_leaves == 1 and spec_def.num_nodes == 1):
                _broadcast_prefix(spec, tree, is_leaf, i)
            if paths is not None and _leaves_use_path(spec_leaves):
                _warn_about_path_mistakes(spec_leaves, paths, i, len(filter_specs))
            continue
        if spec_def.num_leaves == 1 and spec_def.num_nodes == 1:
            # The common case: one bool or callable for the whole tree.
            sub_leaves = leaves if unassigned is None else [leaves[j] for j in todo]
            sub_paths = None if paths is None else [paths[j] for j in todo]
            mask = _mask(spec, sub_leaves, sub_paths, lambda _: "the root of the filter spec")
        else:
            per_leaf = _broadcast_prefix(spec, tree, is_leaf, i)
            mask = []
            for j in todo:
                spec_leaf, spec_path = per_leaf[j]
                leaf_paths = None if paths is None else [paths[j]]
                mask.extend(_mask(spec_leaf, [leaves[j]], leaf_paths, lambda _, p=spec_path: p))
        if paths is not None and not any(mask) and _leaves_use_path(spec_leaves):
            # Only reached when a path filter selected nothing: the check costs nothing
            # in the common case.
            _warn_about_path_mistakes(spec_leaves, paths, i, len(filter_specs))
        if unassigned is None:  # every owner is still len(filter_specs): map in C
            owners = list(map({True: i, False: len(filter_specs)}.__getitem__, mask))
        else:
            for j, selected in zip(todo, mask):
                if selected:
                    owners[j] = i
        if i + 1 < len(filter_specs):
            unassigned = [j for j, selected in zip(todo, mask) if not selected]
    return owners


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _warn_about_path_mistakes(spec_leaves: list[Any], paths: list[str], index: int, num_specs: int) -> None:
    found = path_filter_mistakes(spec_leaves, paths)
    if not found:
        return
    which = f" (filter spec {index})" if num_specs > 1 else ""
    lines = [f"larix.{f!r}{which} selects no leaf of this tree: {'; and '.join(why)}." for f, why in found]
    lines.append(
        "If selecting nothing is intended, pass `larix.by_path(..., allow_empty=True)`, or "
        'silence this with `warnings.filterwarnings("ignore", message="larix.by_path")`.'
    )
    # Point at the user's line, however deep inside larix (split, io.save, ...) this is.
    frame, level = sys._getframe(0), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn("\n".join(lines), UserWarning, stacklevel=level)


def _broadcast_prefix(spec: Any, tree: Any, is_leaf: Any, index: int) -> list[tuple[Any, str]]:
    """The spec leaf (and its path, for errors) that applies to each leaf of `tree`."""
    try:
        per_leaf = broadcast_prefix(spec, tree, tree_is_leaf=is_leaf)
    except PrefixMismatchError as error:
        raise ValueError(
            f"Filter spec {index} is not a pytree prefix of the tree: at "
            f"{python_path(error.path)} it has {error.why}. A filter spec must either be a single "
            "bool or callable, or mirror the tree's structure down to the level where it applies."
        ) from None
    return [(leaf, python_path(path, "filter_spec")) for path, leaf in per_leaf]


def filter(  # noqa: A001 - Equinox's name
    pytree: Any,
    filter_spec: Any,
    inverse: bool = False,
    replace: Any = None,
    is_leaf: Callable[[Any], bool] | None = None,
) -> Any:
    """Keep the leaves selected by `filter_spec` and replace the others with `replace`.

    **Arguments:**

    - `pytree`: any pytree.
    - `filter_spec`: a filter spec (see [Filters](filters.md)).
    - `inverse`: keep the leaves that are *not* selected instead.
    - `replace`: what to put in place of the removed leaves.
    - `is_leaf`: as in `jax.tree_util.tree_flatten`.

    **Returns:** a pytree of the same structure as `pytree`.

    !!! example
        ```python
        >>> import jax.numpy as jnp, larix
        >>> larix.filter([1, jnp.ones(2)], larix.is_array)
        [None, Array([1., 1.], dtype=float32)]

        ```
    """
    leaves, treedef = jtu.tree_flatten(pytree, is_leaf)
    owners = leaf_owners(pytree, leaves, (filter_spec,), is_leaf)
    keep = 1 if inverse else 0
    return treedef.unflatten([x if o == keep else replace for x, o in zip(leaves, owners)])


def partition(
    pytree: Any,
    *filter_specs: Any,
    replace: Any = None,
    is_leaf: Callable[[Any], bool] | None = None,
    filter_spec: Any = _NOT_GIVEN,
) -> tuple[Any, ...]:
    """Split `pytree` into `len(filter_specs) + 1` trees of the same structure.

    Each leaf goes to the part of the **first** spec that selects it; the last part takes
    the leaves that no spec selects. All other positions hold `replace`. With one spec this
    is Equinox's two-way `partition`. [`larix.combine`][] puts the parts back together.

    **Arguments:**

    - `pytree`: any pytree.
    - `*filter_specs`: one or more filter specs (see [Filters](filters.md)). A single spec
      may also be passed as `filter_spec=`, Equinox's keyword.
    - `replace`: keyword-only; what fills the holes.
    - `is_leaf`: keyword-only; as in `jax.tree_util.tree_flatten`.

    **Returns:** a tuple of `len(filter_specs) + 1` pytrees.

    **Raises:** `TypeError` if the second filter spec is `None` or another value that is
    no filter spec: that is Equinox's positional `replace`, which larix takes by keyword
    only (`partition(model, spec, replace=None)`). `ValueError` for an invalid spec or one
    that is not a prefix of the tree.

    !!! example
        ```python
        >>> import jax.numpy as jnp, larix
        >>> tree = [jnp.ones(2), jnp.arange(2), "relu"]
        >>> floats, ints, rest = larix.partition(tree, larix.is_inexact_array, larix.is_array)
        >>> floats
        [Array([1., 1.], dtype=float32), None, None]
        >>> rest
        [None, None, 'relu']

        ```
    """
    if filter_spec is not _NOT_GIVEN:
        if filter_specs:
            raise TypeError(
                "larix.partition: pass the filter specs either positionally or as one "
                "`filter_spec=`, not both."
            )
        filter_specs = (filter_spec,)
    if not filter_specs:
        raise TypeError(
            "larix.partition needs at least one filter spec, e.g. "
            "`params, static = larix.partition(model, larix.is_array)`."
        )
    if len(filter_specs) > 1 and _is_not_a_spec(filter_specs[1]):
        raise _positional_replace_error(filter_specs)
    leaves, treedef = jtu.tree_flatten(pytree, is_leaf)
    owners = leaf_owners(pytree, leaves, filter_specs, is_leaf)
    return tuple(
        treedef.unflatten([x if o == i else replace for x, o in zip(leaves, owners)])
        for i in range(len(filter_specs) + 1)
    )


def _is_not_a_spec(value: Any) -> bool:
    """Whether `value` is certainly not a filter spec: `None`, or a leaf that is neither a
    bool nor callable (a number, a string, an array)."""
    if value is None:
        return True  # the empty pytree: a prefix of nothing but a `None` tree
    if isinstance(value, bool) or callable(value):
        return False
    return jtu.treedef_is_leaf(jtu.tree_structure(value))


def _positional_replace_error(filter_specs: tuple[Any, ...]) -> TypeError:
    # Equinox's signature is `partition(pytree, filter_spec, replace=None, is_leaf=None)`,
    # so Equinox code passes `replace` (and `is_leaf`) positionally. larix reads further
    # positional arguments as more filter specs, so say what happened.
    value = reprlib.repr(filter_specs[1])
    keywords = f"replace={value}" + (", is_leaf=..." if len(filter_specs) == 3 else "")
    return TypeError(
        f"larix.partition: the third positional argument, {value}, is not a filter spec. "
        "In Equinox it is `replace`, but larix reads further positional arguments as "
        "further filter specs (an n-way partition), so `replace` and `is_leaf` are "
        f"keyword-only: write `larix.partition(pytree, filter_spec, {keywords})`."
    )


_IS_NONE = functools.partial(operator.is_, None)


def combine(*pytrees: Any, is_leaf: Callable[[Any], bool] | None = None) -> Any:
    """Combine trees of the same structure, taking at each position the first non-`None` leaf.

    The inverse of [`larix.partition`][] (with the default `replace=None`).

    **Arguments:**

    - `*pytrees`: one or more pytrees of the same structure, `None` marking holes.
    - `is_leaf`: keyword-only; as in `jax.tree_util.tree_flatten`.

    **Returns:** the combined pytree.

    **Raises:** `ValueError` naming the first path where two trees' structures differ.
    """
    if not pytrees:
        raise TypeError("larix.combine needs at least one pytree.")
    # `partial(operator.is_, None)` is a C-level callable: JAX calls it at every node
    # without running Python code, halving combine's time at 100k leaves. The other trees
    # are matched against the first's structure in C++ by flatten_up_to (as Equinox does,
    # a subtree may fill a hole of the first tree).
    leaf_fn = _IS_NONE if is_leaf is None else (lambda x: x is None or is_leaf(x))
    leaves, treedef = jtu.tree_flatten(pytrees[0], leaf_fn)
    for i in range(1, len(pytrees)):
        try:
            other_leaves = treedef.flatten_up_to(pytrees[i])
        except (ValueError, TypeError):
            found = structure_mismatch(pytrees[0], pytrees[i], is_leaf=leaf_fn)
            where, why = found if found is not None else ((), "a different structure")
            raise ValueError(
                f"larix.combine: tree 0 and tree {i} have different structures: at "
                f"{python_path(where)} there is {why}. Combine only the parts that one "
                "partition (with replace=None) produced from the same tree."
            ) from None
        leaves = [x if x is not None else y for x, y in zip(leaves, other_leaves)]
    return treedef.unflatten(leaves)
