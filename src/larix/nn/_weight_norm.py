"""WeightNorm: a layer's weight reparameterised as a direction times a learned norm."""

# ruff: noqa: F722 - jaxtyping shape strings are not forward references

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import jax
import jax.numpy as jnp

from .._filters import is_array
from .._module import Module, field
from .._tree import tree_at

if TYPE_CHECKING:
    from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["WeightNorm"]

_Layer = TypeVar("_Layer")


def wrapped_weight(wrapper: str, layer: Any, weight_name: Any) -> Any:
    """`getattr(layer, weight_name)`, checked to be a floating-point array field that
    `tree_at` can replace; else an error naming the layer's array fields."""
    if not isinstance(weight_name, str):
        raise TypeError(f"{wrapper}: `weight_name` must be the name of a field of the layer (a str), got {weight_name!r}.")
    fields = [f.name for f in dataclasses.fields(layer)] if dataclasses.is_dataclass(layer) else []
    weight = getattr(layer, weight_name, None) if not fields or weight_name in fields else None
    if weight is None:
        arrays = [name for name in fields if is_array(getattr(layer, name))]
        raise ValueError(
            f"{wrapper}: the layer {type(layer).__name__} has no array field {weight_name!r}. "
            f"Pass `weight_name=` naming one of its array fields: {arrays}."
        )
    if not is_array(weight) or not jnp.issubdtype(weight.dtype, jnp.floating):
        kind = f"an array of dtype {weight.dtype}" if is_array(weight) else type(weight).__name__
        raise TypeError(
            f"{wrapper}: `{type(layer).__name__}.{weight_name}` must be a real floating-point "
            f"array to be normalised, but it is {kind}."
        )
    if weight.ndim == 0:
        raise ValueError(
            f"{wrapper}: `{type(layer).__name__}.{weight_name}` is a scalar; it must have at "
            "least one axis (the output axis comes first, as in larix's Linear and Conv)."
        )
    try:
        tree_at(lambda m: getattr(m, weight_name), layer, weight)
    except (TypeError, ValueError):
        raise ValueError(
            f"{wrapper}: `{type(layer).__name__}.{weight_name}` is not a field of the layer's "
            "pytree (a property, perhaps), so it cannot be replaced by the normalised weight."
        ) from None
    return weight


def _norm_except(weight: Any, axis: int | None) -> Any:
    """The Euclidean norm over every axis but `axis` (all axes if None), keeping them."""
    if axis is None:
        return jnp.linalg.norm(weight, keepdims=True)
    # One norm per slice along `axis`; the slice keeps its axes, of size one.
    return jax.vmap(lambda part: jnp.linalg.norm(part, keepdims=True), in_axes=axis, out_axes=axis)(weight)


class WeightNorm(Module, Generic[_Layer]):
    r"""Weight normalisation: writes a layer's weight as a direction times a learned norm.

    The layer's weight $v$ is kept, as the direction, and a new parameter $g$ holds the
    norm; the layer is called with the weight $g \cdot v / \lVert v \rVert$, the norm taken
    over every axis except `axis` (for a [`larix.nn.Linear`][], one norm per output
    neuron). $g$ starts at $\lVert v \rVert$, so the wrapped layer first computes what the
    layer did. Training then moves the direction and the magnitude of each neuron's weights
    separately, which often speeds it up
    ([Salimans and Kingma, 2016](https://arxiv.org/abs/1602.07868)).

    **Fields:**

    - `layer`: the wrapped layer, whose weight is the direction $v$.
    - `g`: the norm, of the weight's shape with size one along every axis but `axis`.
    - `weight_name`, `axis`: as passed to `__init__` (static).

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> linear = larix.nn.Linear(3, 2, key=jax.random.key(0))
        >>> normed = larix.nn.WeightNorm(linear)
        >>> normed.g.shape  # one norm per output neuron
        (2, 1)
        >>> x = jnp.array([1.0, 2.0, 3.0])
        >>> bool(jnp.allclose(normed(x), linear(x)))  # the same function at first
        True

        ```
    """

    layer: _Layer
    g: Float[Array, "*shape"]
    weight_name: str = field(static=True)
    axis: int | None = field(static=True)

    def __init__(self, layer: _Layer, weight_name: str = "weight", axis: int | None = 0):
        """**Arguments:**

        - `layer`: the layer to wrap, such as a [`larix.nn.Linear`][] or a convolution.
        - `weight_name`: the name of the layer's field to normalise.
        - `axis`: the norm is taken over every axis except this one (axis 0 is the output
          axis of larix's layers); `None` takes one norm over the whole weight.

        **Raises:** `ValueError` if the layer has no array field `weight_name` or `axis`
        is out of range; `TypeError` if that field is not a floating-point array.
        """
        weight = wrapped_weight("WeightNorm", layer, weight_name)
        if axis is not None and (
            isinstance(axis, bool) or not isinstance(axis, int) or not -weight.ndim <= axis < weight.ndim
        ):
            raise ValueError(
                f"WeightNorm: `axis` must be None or an int in [{-weight.ndim}, {weight.ndim}) "
                f"for the {weight.ndim}-dimensional `{weight_name}` of shape {weight.shape}, got {axis!r}."
            )
        self.layer = layer
        self.g = _norm_except(weight, axis)
        self.weight_name = weight_name
        self.axis = axis

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        """**Arguments:**

        - `x`: the input of the wrapped layer.
        - `key`: ignored; accepted so that all layers can be called alike.

        **Returns:** the output of the wrapped layer, called with the normalised weight.
        """
        v = getattr(self.layer, self.weight_name)
        weight = self.g * v / _norm_except(v, self.axis)
        layer: Any = tree_at(lambda m: getattr(m, self.weight_name), self.layer, weight)
        return layer(x)
