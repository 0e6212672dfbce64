"""Shared: tie nodes of a pytree together, such as an embedding matrix and an output weight."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp
import jax.tree_util as jtu

from .._filters import is_array
from .._module import Module
from .._paths import python_path
from .._pformat import tree_pformat
from .._tree import tree_at

if TYPE_CHECKING:
    from jaxtyping import PyTree

__all__ = ["Shared"]

_GET_READS_REMOVED = (
    "Shared: `get` read a node that `where` selects. Shared removes the nodes that `where` "
    "selects (they are filled in from `get` at call time), so `get` must read the nodes that "
    "stay. Did you swap `where` and `get`? `where` picks the copies to replace, `get` the "
    "originals."
)


class _SharedNode(Module):
    """What a node selected by `Shared`'s `where` is replaced with: a pytree with no leaves."""

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(_GET_READS_REMOVED)


def _is_shared_node(x: Any) -> bool:
    return isinstance(x, _SharedNode)


def _shape(x: Any) -> tuple[int, ...] | None:
    return tuple(jnp.shape(x)) if is_array(x) else None


def _first_mismatch(restored: Any, original: Any) -> str | None:
    """Where `restored` (the tree `__call__` rebuilds) differs from `original` in its leaves'
    places or shapes, in words; None if nowhere."""
    new = dict(jtu.tree_flatten_with_path(restored)[0])
    old = dict(jtu.tree_flatten_with_path(original)[0])
    for path in [*old, *(p for p in new if p not in old)]:
        where = python_path(path, "pytree")
        if path not in new:
            return f"{where} is {tree_pformat(old[path])}, but `get` gives a value of another structure there"
        if path not in old:
            return f"`get` gives {tree_pformat(new[path])} for {where}, which is empty (such as None)"
        if _shape(new[path]) != _shape(old[path]):
            return f"{where} is {tree_pformat(old[path])}, but `get` gives {tree_pformat(new[path])}"
    if jtu.tree_structure(restored) != jtu.tree_structure(original):
        return "`get` gives a node whose static fields (sizes, flags, ...) differ from those of the node it replaces"
    return None


class Shared(Module):
    """Ties nodes of a pytree together, so that one parameter is used in several places.

    A pytree holds each of its leaves once: the same layer stored in two fields is two
    copies, which train apart. `Shared` keeps one copy. It removes the nodes that `where`
    selects, and [`__call__`][larix.nn.Shared.__call__] puts `get(pytree)` back in their
    place, so the rebuilt tree uses the same array twice and gradients from both uses add
    up in the one parameter.

    **Fields:**

    - `pytree`: the tree, with the nodes `where` selects replaced by an empty placeholder.
    - `where`, `get`: as passed to `__init__`.

    !!! example "Tying an embedding to the output layer of a language model"
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> class LanguageModel(larix.Module):
        ...     shared: larix.nn.Shared
        ...     def __init__(self, key):
        ...         k1, k2 = jax.random.split(key)
        ...         embedding = larix.nn.Embedding(10, 4, key=k1)
        ...         linear = larix.nn.Linear(4, 10, use_bias=False, key=k2)
        ...         where = lambda pair: pair[1].weight  # the copy to replace ...
        ...         get = lambda pair: pair[0].weight  # ... with this parameter
        ...         self.shared = larix.nn.Shared((embedding, linear), where, get)
        ...     def __call__(self, token):
        ...         embedding, linear = self.shared()
        ...         return linear(embedding(token))
        >>> model = LanguageModel(jax.random.key(0))
        >>> embedding, linear = model.shared()
        >>> embedding.weight is linear.weight
        True
        >>> model(jnp.array(3)).shape
        (10,)
        >>> len(jax.tree_util.tree_leaves(model))  # one weight matrix, and the two functions
        3

        ```
    """

    pytree: PyTree
    where: Callable[[PyTree], Any]
    get: Callable[[PyTree], Any]

    def __init__(self, pytree: PyTree, where: Callable[[PyTree], Any], get: Callable[[PyTree], Any]):
        """**Arguments:**

        - `pytree`: the tree whose nodes to tie.
        - `where`: a function `pytree -> node` or `pytree -> sequence of nodes`, as in
          [`larix.tree_at`][]: the copies to remove.
        - `get`: a function `pytree -> value` (or a sequence of values, as many as `where`
          selects): what to put in their place. It is called on the tree without the
          nodes `where` selects, so it must read other nodes. It may compute, for example
          `get=lambda pair: pair[0].weight.T` to tie a weight to another's transpose.

        **Raises:** `TypeError` if `where` or `get` is not callable, or as
        [`larix.tree_at`][] for a bad `where`; `ValueError` if `get` reads a node that
        `where` removes, or if a value of `get` differs in structure or shape from the
        node it replaces.
        """
        for name, fn in (("where", where), ("get", get)):
            if not callable(fn):
                raise TypeError(
                    f"Shared: `{name}` must be a function of the pytree, e.g. "
                    f"`{name}=lambda pair: pair[{1 if name == 'where' else 0}].weight`; got {fn!r}."
                )
        selected: list[Any] = []

        def remove(node: Any) -> _SharedNode:
            selected.append(node)
            return _SharedNode()

        stripped = tree_at(where, pytree, replace_fn=remove)
        # Build what __call__ will build once now, so that a mistake shows here, not later.
        values = get(stripped)
        if any(map(_is_shared_node, jtu.tree_leaves(values, is_leaf=_is_shared_node))):
            raise ValueError(_GET_READS_REMOVED)
        try:
            restored = tree_at(where, stripped, values)
        except (TypeError, ValueError):
            wanted = "one value" if len(selected) == 1 else f"a sequence of {len(selected)} values"
            raise ValueError(
                f"Shared: `where` selects {len(selected)} node(s), so `get` must return {wanted}, "
                f"one for each, in the same order; it returned {tree_pformat(values)}."
            ) from None
        mismatch = _first_mismatch(restored, pytree)
        if mismatch is not None:
            raise ValueError(
                f"Shared: each value of `get` replaces a node that `where` selects, so they must "
                f"match: {mismatch}. Transform the value in `get` if needed, e.g. "
                "`get=lambda pair: pair[0].weight.T`."
            )
        self.pytree = stripped
        self.where = where
        self.get = get

    def __call__(self) -> PyTree:
        """**Arguments:** none.

        **Returns:** the tree with the structure of the original `pytree`, with
        `get(pytree)` in place of the nodes that `where` selects.
        """
        return tree_at(self.where, self.pytree, self.get(self.pytree))
