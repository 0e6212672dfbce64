"""Tree utilities: surgery, equality, updates and small helpers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from ._filters import is_array
from ._paths import flatten_one_level_with_keys, python_path, structure_mismatch

__all__ = [
    "apply_updates",
    "if_array",
    "tree_at",
    "tree_check",
    "tree_equal",
    "tree_flatten_one_level",
]

_MISSING: Any = object()


class _Slot:
    """A unique stand-in for one leaf while `where` runs, so selections are unambiguous."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index

    def __repr__(self) -> str:
        return f"<leaf {self.index}>"

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise _WhereUsedValueError

    __getattr__ = __add__ = __radd__ = __mul__ = __rmul__ = __sub__ = __getitem__ = _refuse
    __bool__ = __len__ = __iter__ = __array__ = __float__ = __int__ = __index__ = _refuse
    # Comparisons and the remaining arithmetic would otherwise give Python's own TypeError,
    # or (`==`) quietly compare identities; `where` must not use values at all.
    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __contains__ = _refuse
    __rsub__ = __truediv__ = __rtruediv__ = __floordiv__ = __mod__ = __pow__ = _refuse
    __matmul__ = __rmatmul__ = __neg__ = __pos__ = __abs__ = _refuse
    __hash__ = object.__hash__


class _WhereUsedValueError(Exception):
    pass


def _mirror(node: Any, is_leaf: Callable[[Any], bool], path: tuple[Any, ...], index: dict[int, tuple[Any, ...]], keep: list[Any]) -> Any:
    """Rebuild `node` with `_Slot`s for leaves, recording every rebuilt object's path by id."""
    children = None
    if not is_leaf(node):
        try:
            children, _ = flatten_one_level_with_keys(node)
        except ValueError:
            children = None
    if children is None:
        slot = _Slot(len(keep))
        keep.append(slot)
        index[id(slot)] = path
        return slot
    _, treedef = jtu.tree_flatten(node, is_leaf=lambda x: x is not node)
    rebuilt = treedef.unflatten([_mirror(c, is_leaf, (*path, k), index, keep) for k, c in children])
    keep.append(rebuilt)  # keep it alive so that its id stays unique
    if id(rebuilt) in index:  # a shared singleton such as `()`: it cannot be told apart
        index[id(rebuilt)] = None  # type: ignore[assignment]
    else:
        index[id(rebuilt)] = path
    return rebuilt


def _replace_at(node: Any, path: tuple[Any, ...], targets: dict[tuple[Any, ...], Callable[[Any], Any]], is_leaf: Callable[[Any], bool]) -> Any:
    if path in targets:
        return targets[path](node)
    if not any(t[: len(path)] == path for t in targets):
        return node
    children, _ = flatten_one_level_with_keys(node)
    _, treedef = jtu.tree_flatten(node, is_leaf=lambda x: x is not node)
    return treedef.unflatten([_replace_at(c, (*path, k), targets, is_leaf) for k, c in children])


def tree_at(
    where: Callable[[Any], Any],
    pytree: Any,
    replace: Any = _MISSING,
    replace_fn: Callable[[Any], Any] = _MISSING,
    is_leaf: Callable[[Any], bool] | None = None,
) -> Any:
    """Out-of-place surgery: a copy of `pytree` with the nodes that `where` selects replaced.

    **Arguments:**

    - `where`: a function `pytree -> node` or `pytree -> sequence of nodes`, for example
      `lambda m: m.layers[0].weight` or `lambda m: (m.weight, m.bias)`. It may select leaves
      or whole subtrees, and `None` fields. It must only navigate, not compute with values.
    - `pytree`: the tree to copy.
    - `replace`: the new value, or a sequence of new values if `where` returns a sequence.
    - `replace_fn`: alternatively, a function `old node -> new node`, applied to each.
    - `is_leaf`: as in `jax.tree_util.tree_flatten`, to select inside custom leaves.

    **Returns:** the updated copy. `pytree` itself is unchanged.

    !!! example
        ```python
        >>> import larix
        >>> larix.tree_at(lambda t: t["b"][0], {"a": 1, "b": [2, 3]}, 20)
        {'a': 1, 'b': [20, 3]}

        ```
    """
    if (replace is _MISSING) == (replace_fn is _MISSING):
        raise ValueError("larix.tree_at takes exactly one of `replace=` and `replace_fn=`.")
    leaf_fn = (lambda x: x is None) if is_leaf is None else (lambda x: x is None or is_leaf(x))
    index: dict[int, tuple[Any, ...]] = {}
    keep: list[Any] = []
    mirror = _mirror(pytree, leaf_fn, (), index, keep)
    try:
        selected = where(mirror)
    except _WhereUsedValueError:
        raise ValueError(
            "larix.tree_at: `where` used the value of a leaf (its shape, a comparison, ...). "
            "`where` must only navigate the tree, e.g. `lambda m: m.layers[0].weight`; to "
            "choose nodes by value, compute the selection first and index with constants."
        ) from None
    single = id(selected) in index
    nodes = [selected] if single else selected
    # A string is a Sequence, but never a list of nodes: it is a value `where` read, such
    # as a static field's.
    if not single and (isinstance(nodes, str) or not isinstance(nodes, Sequence)):
        raise TypeError(
            f"larix.tree_at: `where` returned {nodes!r}, which is not a node of the tree. "
            "Return a node (`lambda m: m.weight`) or a list/tuple of nodes. Static fields "
            "are part of the structure, not nodes: build a new Module to change them."
        )
    paths = []
    for node in nodes:
        path = index.get(id(node), _MISSING)
        if path is _MISSING:
            raise TypeError(
                f"larix.tree_at: `where` returned {node!r}, which is not a node of the tree. "
                "It must return parts of the tree it is given, not new objects."
            )
        if path is None:
            raise ValueError(
                "larix.tree_at: `where` selected an empty node (such as `()`) that occurs more "
                "than once in the tree, so it is ambiguous. Select its parent instead."
            )
        paths.append(path)
    for i, p in enumerate(paths):
        for q in paths[i + 1 :]:
            if p == q:
                raise ValueError(f"larix.tree_at: `where` selected {python_path(p)} twice.")
            if p[: len(q)] == q or q[: len(p)] == p:
                outer, inner = (p, q) if len(p) < len(q) else (q, p)
                raise ValueError(
                    f"larix.tree_at: `where` selected both {python_path(outer)} and "
                    f"{python_path(inner)}, which is inside it. Select one or the other."
                )
    if replace_fn is not _MISSING:
        targets = {p: replace_fn for p in paths}
    else:
        values = [replace] if single else replace
        if single is False and (not isinstance(values, Sequence) or len(values) != len(paths)):
            raise ValueError(
                f"larix.tree_at: `where` selected {len(paths)} nodes, so `replace` must be a "
                f"sequence of {len(paths)} values (got {values!r})."
            )
        targets = {p: (lambda _, v=v: v) for p, v in zip(paths, values)}
    return _replace_at(pytree, (), targets, leaf_fn)


def tree_equal(*pytrees: Any, typematch: bool = False, rtol: float = 0.0, atol: float = 0.0) -> Any:
    """Whether all `pytrees` have the same structure and equal leaves.

    Arrays are equal when their shapes and dtypes match and their values do (within
    `rtol`/`atol` when given); other leaves are compared with `==`.

    **Arguments:**

    - `*pytrees`: the trees to compare.
    - `typematch`: also require leaves at the same position to be of the same type.
    - `rtol`, `atol`: tolerances for array comparisons, as in `numpy.allclose`.

    **Returns:** `False` as soon as structures, shapes, dtypes or non-array leaves differ;
    otherwise `True` if no arrays were compared, else a boolean array. Under `jax.jit`
    that array is traced, so `tree_equal` can be used inside jitted code.
    """
    flat = [jtu.tree_flatten(t) for t in pytrees]
    if not flat:
        return True
    leaves0, treedef0 = flat[0]
    result: Any = True
    for leaves, treedef in flat[1:]:
        if treedef != treedef0:
            return False
        for x, y in zip(leaves0, leaves):
            if typematch and type(x) is not type(y):
                return False
            x_array, y_array = is_array(x), is_array(y)
            if x_array != y_array:
                return False
            if x_array:
                if x.shape != y.shape or x.dtype != y.dtype:
                    return False
                xp = np if isinstance(x, np.ndarray | np.generic) and isinstance(y, np.ndarray | np.generic) else jnp
                same = xp.all(x == y) if rtol == 0 and atol == 0 else xp.allclose(x, y, rtol=rtol, atol=atol)
                result = same if result is True else result & same
            else:
                try:
                    if not bool(x == y):
                        return False
                except Exception:  # noqa: BLE001 - leaves whose == is not a bool are unequal
                    return False
    return result


def apply_updates(model: Any, updates: Any) -> Any:
    """Add `updates` to `model` leaf by leaf: `p + u`, keeping `p` where `u` is `None`.

    `updates` is typically what an optax optimiser returns for the arrays of `model`; its
    `None`s mark the leaves that are not trained (static leaves, frozen parameters).

    **Returns:** the updated model.

    **Raises:** `ValueError` naming the first path where `updates` does not match `model`.
    """
    try:
        return jtu.tree_map(lambda u, p: p if u is None else p + u, updates, model, is_leaf=lambda x: x is None)
    except ValueError:
        found = structure_mismatch(updates, model, is_leaf=lambda x: x is None, prefix=True)
        if found is None:
            raise
        where, why = found
        raise ValueError(
            f"apply_updates: the updates do not match the model at {python_path(where, 'model')}: "
            f"{why} (updates on the left). Compute the updates from the same model, e.g. "
            "`optim.update(grads, opt_state, larix.filter(model, larix.is_inexact_array))`."
        ) from None


def tree_flatten_one_level(pytree: Any) -> tuple[list[Any], Any]:
    """Flatten only the top level of `pytree`: its children and a treedef to rebuild it.

    A leaf flattens to `([pytree], leaf treedef)`.
    """
    return jtu.tree_flatten(pytree, is_leaf=lambda x: x is not pytree)


def tree_check(pytree: Any) -> None:
    """Check that no node object appears twice in `pytree` (shared or cyclic structure).

    Leaves may repeat; nodes with children may not, since unflattening would silently
    un-share them.

    **Raises:** `ValueError` naming the path of the repeated node.
    """
    seen: dict[int, tuple[Any, ...]] = {}

    def visit(node: Any, path: tuple[Any, ...], ancestors: frozenset[int]) -> None:
        try:
            children, _ = flatten_one_level_with_keys(node)
        except ValueError:
            return
        if not children:
            return
        if id(node) in ancestors:
            raise ValueError(f"tree_check: the tree contains a cycle at {python_path(path)}.")
        if id(node) in seen:
            raise ValueError(
                f"tree_check: the same {type(node).__name__} appears at both "
                f"{python_path(seen[id(node)])} and {python_path(path)}. Unflattening would "
                "turn them into separate copies, so use distinct objects."
            )
        seen[id(node)] = path
        for key, child in children:
            visit(child, (*path, key), ancestors | {id(node)})

    visit(pytree, (), frozenset())


def if_array(axis: int) -> Callable[[Any], int | None]:
    """A filter for `filter_vmap`'s `in_axes`: `axis` for arrays, `None` for other leaves."""
    return lambda x: axis if is_array(x) else None

