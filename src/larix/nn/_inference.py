"""inference_mode: switch every layer of a model between training and inference."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax.tree_util as jtu

from .._module import Module
from .._tree import tree_at

if TYPE_CHECKING:
    from jaxtyping import PyTree

__all__ = ["inference_mode"]


def _has_inference_field(node: Any) -> bool:
    return isinstance(node, Module) and any(
        f.name == "inference" and not f.metadata.get("static", False) for f in type(node)._larix_fields
    )


def _switch(node: Any, value: bool) -> Any:
    # Switch the layers nested inside `node` first, then `node`'s own flag.
    inner = jtu.tree_map(
        lambda x: _switch(x, value) if _has_inference_field(x) else x,
        node,
        is_leaf=lambda x: x is not node and _has_inference_field(x),
    )
    return tree_at(lambda m: m.inference, inner, value)


def inference_mode(pytree: PyTree, value: bool = True) -> PyTree:
    """Set the `inference` field of every layer in `pytree` (Dropout, BatchNorm, ...).

    In inference mode [`larix.nn.Dropout`][] does nothing and [`larix.nn.BatchNorm`][]
    uses its running statistics. Any Module with a (non-static) field named `inference`
    is switched, so your own layers can take part.

    **Arguments:**

    - `pytree`: a model, or any pytree containing layers.
    - `value`: `True` for inference (the default), `False` to switch back to training.

    **Returns:** a copy of `pytree` with every `inference` field set to `value`.

    !!! example
        ```python
        >>> import jax, larix
        >>> model = larix.nn.Sequential([larix.nn.Linear(2, 2, key=jax.random.key(0)), larix.nn.Dropout(0.5)])
        >>> larix.nn.inference_mode(model).layers[1]
        Dropout(p=0.5, inference=True)
        >>> larix.nn.inference_mode(model, value=False).layers[1].inference
        False

        ```
    """
    return jtu.tree_map(lambda x: _switch(x, value) if _has_inference_field(x) else x, pytree, is_leaf=_has_inference_field)
