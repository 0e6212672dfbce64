"""Tree utilities: surgery, equality, updates and small helpers."""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from ._filters import _is_inexact_dtype, is_array
from ._paths import flatten_one_level_with_keys, python_path, structure_mismatch

__all__ = [
    "apply_updates",
    "if_array",
    "tree_allclose",
    "tree_at",
    "tree_check",
    "tree_equal",
    "tree_flatten_one_level",
]

_MISSING: Any = object()
_NUMPY_TYPES = (np.ndarray, np.generic)


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


class _EmptyTuple(tuple):
    """An empty tuple that is not Python's shared `()`, so that its id names one position."""

    __slots__ = ()


# Registered as a node without children, like `()`: a `where` that calls JAX's tree
# functions on the stand-in tree (`lambda t: jtu.tree_leaves(t)`) sees the same leaves as
# in the real tree, not an extra leaf per empty tuple.
jtu.register_pytree_node(_EmptyTuple, lambda _: ((), None), lambda _, __: _EmptyTuple())


_NONE_PATHS = "none paths"  # the key, in `index`, of the paths of the Nones kept as they are


def _mirror(node: Any, is_leaf: Callable[[Any], bool], path: tuple[Any, ...], index: dict[int, tuple[Any, ...]], keep: list[Any]) -> Any:
    """Rebuild `node` with `_Slot`s for leaves, recording every rebuilt object's path by id."""
    if node is None and not is_leaf(node):
        # Kept as None, as in Equinox: a `where` that skips Nones (`[x for x in t if x is not
        # None]`) must see them. A selected None is found if it is the only one (tree_at).
        index.setdefault(_NONE_PATHS, []).append(path)  # type: ignore[arg-type, union-attr]
        return None
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
    if type(node) is tuple and not children:
        # Python shares one `()` object: unflattening would give every empty tuple the
        # same id. A distinct stand-in lets `where` select one of them (as in Equinox).
        rebuilt: Any = _EmptyTuple()
    else:
        _, treedef = jtu.tree_flatten(node, is_leaf=lambda x: x is not node)
        rebuilt = treedef.unflatten([_mirror(c, is_leaf, (*path, k), index, keep) for k, c in children])
    keep.append(rebuilt)  # keep it alive so that its id stays unique
    if id(rebuilt) in index:  # a custom node whose unflatten returns a shared object
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
      or whole subtrees, `None` fields and empty tuples (even where the same `()` object
      occurs several times). It must only navigate, not compute with values.
    - `pytree`: the tree to copy.
    - `replace`: the new value, or, if `where` returns a sequence of nodes, a sequence of
      as many values (anything with a length, taken item by item as in Equinox).
    - `replace_fn`: alternatively, a function `old node -> new node`, applied to each.
    - `is_leaf`: as in `jax.tree_util.tree_flatten`, to select inside custom leaves.

    **Returns:** the updated copy. `pytree` itself is unchanged.

    **Raises:** `TypeError` if `where` returns something that is not part of the tree, or
    selects several nodes while `replace` has no length; `ValueError` if `replace` has the
    wrong length, if `where` computes with leaf values, or selects a node twice (or a node
    and another inside it).

    !!! example
        ```python
        >>> import larix
        >>> larix.tree_at(lambda t: t["b"][0], {"a": 1, "b": [2, 3]}, 20)
        {'a': 1, 'b': [20, 3]}

        ```
    """
    if (replace is _MISSING) == (replace_fn is _MISSING):
        raise ValueError("larix.tree_at takes exactly one of `replace=` and `replace_fn=`.")
    leaf_fn = (lambda x: False) if is_leaf is None else is_leaf
    index: dict[Any, Any] = {}
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
    single = id(selected) in index or selected is None
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
        if node is None:
            nones = index.get(_NONE_PATHS, [])
            if len(nones) != 1:
                raise ValueError(
                    f"larix.tree_at: `where` selected None, but the tree has {len(nones)} None "
                    "values, and one None cannot be told from another. Treat Nones as leaves, "
                    "which makes each one selectable: `larix.tree_at(where, pytree, ..., "
                    "is_leaf=lambda x: x is None)`."
                )
            path = nones[0]
        if path is _MISSING:
            raise TypeError(
                f"larix.tree_at: `where` returned {node!r}, which is not a node of the tree. "
                "It must return parts of the tree it is given, not new objects."
            )
        if path is None:
            raise ValueError(
                f"larix.tree_at: `where` selected {node!r}, a {type(node).__name__} node that "
                "occurs more than once in the tree as the very same object (its type's "
                "unflatten returns a shared instance), so its position is ambiguous. "
                "Select its parent instead."
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
        values = [replace] if single else _replacements(replace, len(paths))
        targets = {p: (lambda _, v=v: v) for p, v in zip(paths, values)}
    return _replace_at(pytree, (), targets, leaf_fn)


def _replacements(replace: Any, count: int) -> list[Any]:
    """The values of `replace` for `count` selected nodes, checked as Equinox checks them."""
    # Like Equinox, anything with a length is taken item by item (a tuple, a list, an
    # array's rows), and the exception types are Equinox's: TypeError without a length,
    # ValueError for a wrong one.
    try:
        length = len(replace)
    except TypeError:
        raise TypeError(
            f"larix.tree_at: `where` selected {count} nodes, so `replace` must be a sequence "
            f"of {count} values, one per node; got {reprlib.repr(replace)}, which has no "
            "length. To put one value at every node, pass `replace_fn=lambda _: value`."
        ) from None
    if length != count:
        raise ValueError(
            f"larix.tree_at: `where` selected {count} nodes, so `replace` must be a sequence "
            f"of {count} values, one per node, in the order `where` returns them; got "
            f"{length}: {reprlib.repr(replace)}."
        )
    return list(replace)


def _arrays_equal(xp: Any, x: Any, y: Any, exact: bool, rtol: Any, atol: Any) -> Any:
    # Tolerances apply to inexact dtypes only: integer, bool and key arrays are compared
    # exactly, whatever the tolerances (Equinox's rule).
    if exact or not _is_inexact_dtype(x.dtype):
        return xp.all(x == y)
    return xp.allclose(x, y, rtol=rtol, atol=atol)


def tree_equal(*pytrees: Any, typematch: bool = False, rtol: Any = 0.0, atol: Any = 0.0) -> Any:
    """Whether all `pytrees` have the same structure and equal leaves.

    - Arrays (JAX or NumPy, and NumPy scalars) must have the same shape and dtype, and
      equal values; with `rtol` or `atol`, floating-point and complex arrays need only be
      close (`allclose`), while other dtypes must still be equal. A JAX array equals a
      NumPy array with the same values unless `typematch=True`.
    - Other leaves are compared with `==`; a leaf whose `==` raises or does not give a
      bool is unequal. An array never equals a non-array (`jnp.ones(())` is not `1.0`).

    **Arguments:**

    - `*pytrees`: the trees to compare; each is compared with the first.
    - `typematch`: keyword-only; also require leaves at the same position to be of the
      same type (so `1 != 1.0`, and a NumPy array differs from a JAX array).
    - `rtol`, `atol`: keyword-only; tolerances for inexact arrays, as in
      `jax.numpy.allclose`. They may be arrays, traced ones included.

    **Returns:** as Equinox's `tree_equal`: a Python `bool` when no JAX array takes part
    (NumPy arrays are compared at once); otherwise a JAX boolean scalar, which under
    `jax.jit` is a tracer. Differences that do not depend on the values of JAX arrays
    (structure, shapes, dtypes, non-array leaves, NumPy values) give the Python `False`,
    so `tree_equal(...) is False` tests them without tracing.

    !!! example
        ```python
        >>> import jax.numpy as jnp, numpy as np, larix
        >>> larix.tree_equal({"n": 1, "w": np.ones(2)}, {"n": 1, "w": np.ones(2)})
        True
        >>> larix.tree_equal([jnp.ones(2)], [jnp.ones(2)])
        Array(True, dtype=bool)
        >>> larix.tree_equal(jnp.ones(2), jnp.ones(2) + 1e-4, atol=1e-3)
        Array(True, dtype=bool)
        >>> larix.tree_equal(jnp.ones(2), jnp.ones(3))
        False

        ```
    """
    if not pytrees:
        return True
    leaves0, treedef0 = jtu.tree_flatten(pytrees[0])
    # Zero tolerances given as Python numbers mean exact equality; array tolerances always
    # go through allclose, since a traced one cannot be compared with zero.
    exact = isinstance(rtol, int | float) and isinstance(atol, int | float) and rtol == 0 and atol == 0
    traced_tolerance = isinstance(rtol, jax.core.Tracer) or isinstance(atol, jax.core.Tracer)
    result: Any = True
    for tree in pytrees[1:]:
        leaves, treedef = jtu.tree_flatten(tree)
        if treedef != treedef0:
            return False
        for x, y in zip(leaves0, leaves):
            if typematch and type(x) is not type(y):
                return False
            x_array, y_array = is_array(x), is_array(y)
            if x_array != y_array:
                return False
            if not x_array:
                try:
                    if not bool(x == y):
                        return False
                except Exception:  # noqa: BLE001 - leaves whose == is not a bool are unequal
                    return False
                continue
            if x.shape != y.shape or x.dtype != y.dtype:
                return False
            if isinstance(x, _NUMPY_TYPES) and isinstance(y, _NUMPY_TYPES) and not traced_tolerance:
                # Two NumPy values are compared now, giving a Python bool (as in Equinox).
                if not _arrays_equal(np, x, y, exact, rtol, atol):
                    return False
            else:
                same = _arrays_equal(jnp, x, y, exact, rtol, atol)
                result = same if result is True else result & same
    return result


def tree_allclose(x: Any, y: Any, *, rtol: Any = 1e-5, atol: Any = 1e-8) -> Any:
    """Whether two pytrees have the same structure and leaf types, and close values.

    The helper of Equinox's own test suite: `tree_equal(x, y, typematch=True, rtol=rtol,
    atol=atol)`, with NumPy's default tolerances. Leaves must have the same type, so a
    NumPy array is not close to a JAX array, `1` is not close to `1.0`, and inside
    `jax.jit` a traced array is not close to a concrete one: convert first
    (`jnp.asarray`) where that matters.

    **Arguments:**

    - `x`, `y`: the two pytrees.
    - `rtol`, `atol`: keyword-only; tolerances for inexact arrays, as in
      `jax.numpy.allclose`. Other leaves must be equal.

    **Returns:** as [`larix.tree_equal`][]: a Python `bool`, or a JAX boolean scalar when
    JAX arrays are compared.

    !!! example
        ```python
        >>> import jax.numpy as jnp, larix
        >>> larix.tree_allclose({"w": jnp.ones(2)}, {"w": jnp.ones(2) + 1e-7})
        Array(True, dtype=bool)
        >>> larix.tree_allclose(1, 1.0)
        False

        ```
    """
    return tree_equal(x, y, typematch=True, rtol=rtol, atol=atol)


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

