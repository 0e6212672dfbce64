"""MLP: a stack of Linear layers with an activation between them."""

# ruff: noqa: F722 - jaxtyping shape strings are not forward references

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from .._filters import is_array
from .._module import Module, field
from .._partition import combine, partition
from .._vmap import filter_vmap
from ._linear import Linear
from ._misc import Initializer, check_size

if TYPE_CHECKING:
    from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["MLP"]


def _identity(x: Any) -> Any:
    return x


def _has_arrays(tree: Any) -> bool:
    return any(is_array(x) for x in jtu.tree_leaves(tree))


def _per_neuron(activation: Any, shape: tuple[int, ...]) -> Any:
    # A learnt activation (one with arrays, such as PReLU) gets its own copy of its
    # parameters for every neuron, as in Equinox: each array gains the axes `shape`.
    return jtu.tree_map(lambda a: jnp.broadcast_to(a, shape + jnp.shape(a)) if is_array(a) else a, activation)


def _take(activation: Any, i: Any) -> Any:
    return jtu.tree_map(lambda a: a[i] if is_array(a) else a, activation)


def _activate(activation: Any, x: Any) -> Any:
    if _has_arrays(activation):
        return filter_vmap(lambda a, v: a(v))(activation, x)
    return activation(x)


class MLP(Module):
    """A multi-layer perceptron: `depth + 1` Linear layers with `activation` between them.

    **Fields:**

    - `layers`: the tuple of [`larix.nn.Linear`][] layers: `in_size -> width_size`,
      `depth - 1` times `width_size -> width_size`, then `width_size -> out_size` (just
      `in_size -> out_size` when `depth=0`). With `scan=True` and `depth >= 1` it holds
      three: the middle layers are stored as one `Linear` whose arrays have a leading
      axis of size `depth - 1` (possibly 0).
    - `activation`, `final_activation`: the activations. An activation with parameters
      (such as [`larix.nn.PReLU`][]) is copied for every neuron of every hidden layer and
      applied elementwise; a plain function is applied to each layer's output vector.
    - `in_size`, `out_size`, `width_size`, `depth`, `use_bias`, `use_final_bias`, `scan`:
      as passed to `__init__` (static).

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> mlp = larix.nn.MLP(4, 2, width_size=16, depth=2, key=jax.random.key(0))
        >>> [layer.weight.shape for layer in mlp.layers]
        [(16, 4), (16, 16), (2, 16)]
        >>> mlp(jnp.ones(4)).shape
        (2,)

        ```
    """

    layers: tuple[Linear, ...]
    activation: Callable[..., Any]
    final_activation: Callable[..., Any]
    use_bias: bool = field(static=True)
    use_final_bias: bool = field(static=True)
    in_size: int | Literal["scalar"] = field(static=True)
    out_size: int | Literal["scalar"] = field(static=True)
    width_size: int = field(static=True)
    depth: int = field(static=True)
    scan: bool = field(static=True)

    def __init__(
        self,
        in_size: int | Literal["scalar"],
        out_size: int | Literal["scalar"],
        width_size: int,
        depth: int,
        activation: Callable[..., Any] = jax.nn.relu,
        final_activation: Callable[..., Any] = _identity,
        use_bias: bool = True,
        use_final_bias: bool = True,
        dtype: Any = None,
        *,
        scan: bool = False,
        param_dtype: Any = None,
        weight_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_size`: the input size, or `"scalar"` for inputs of shape `()`.
        - `out_size`: the output size, or `"scalar"` for outputs of shape `()`.
        - `width_size`: the size of each hidden layer.
        - `depth`: the number of hidden layers (`0` gives a single Linear layer).
        - `activation`: applied after each hidden layer. Defaults to ReLU.
        - `final_activation`: applied after the output layer. Defaults to the identity.
        - `use_bias`: whether the hidden layers have biases.
        - `use_final_bias`: whether the output layer has a bias.
        - `dtype`: the computation dtype of every layer, and the dtype of all weights and
          biases unless `param_dtype` is given (default `float32`, or `float64` in 64-bit
          mode). See [`larix.nn.Linear`][] for the rule.
        - `scan`: keyword-only; apply the middle layers with `jax.lax.scan`, so that
          compile time does not grow with `depth`.
        - `param_dtype`, `weight_init`, `bias_init`: keyword-only; passed to every
          [`larix.nn.Linear`][] layer (the initialisers are called once per layer, with
          that layer's shapes).
        - `key`: keyword-only; a `jax.random` key for the initialisation.
        """
        check_size("MLP", "width_size", width_size)
        check_size("MLP", "depth", depth, minimum=0)
        keys = jax.random.split(key, depth + 1)
        linear = functools.partial(
            Linear, dtype=dtype, param_dtype=param_dtype, weight_init=weight_init, bias_init=bias_init
        )

        def hidden(k: Any) -> Linear:
            return linear(width_size, width_size, use_bias, key=k)

        if depth == 0:
            layers = [linear(in_size, out_size, use_final_bias, key=keys[0])]
        else:
            layers = [linear(in_size, width_size, use_bias, key=keys[0])]
            if scan:
                # One Linear whose arrays have a leading axis of size depth - 1 (zero when
                # depth == 1, as in Equinox, so that the structure does not depend on
                # depth); vmapping the constructor draws the same numbers as a loop.
                layers.append(jax.vmap(hidden)(keys[1:depth]))
            else:
                layers += [hidden(k) for k in keys[1:depth]]
            layers.append(linear(width_size, out_size, use_final_bias, key=keys[depth]))
        self.layers = tuple(layers)
        self.activation = _per_neuron(activation, (depth, width_size))
        self.final_activation = (
            final_activation if out_size == "scalar" else _per_neuron(final_activation, (out_size,))
        )
        self.use_bias = use_bias
        self.use_final_bias = use_final_bias
        self.in_size = in_size
        self.out_size = out_size
        self.width_size = width_size
        self.depth = depth
        self.scan = scan

    def __call__(self, x: Float[Array, " in_size"], *, key: PRNGKeyArray | None = None) -> Float[Array, " out_size"]:
        """**Arguments:**

        - `x`: an array of shape `(in_size,)` (shape `()` if `in_size="scalar"`).
        - `key`: ignored; accepted so that all layers can be called alike.

        **Returns:** an array of shape `(out_size,)` (shape `()` if `out_size="scalar"`).
        """
        if self.depth > 0:
            x = _activate(_take(self.activation, 0), self.layers[0](x))
            if self.scan:
                x = self._scan_middle(x)
            else:
                for i, layer in enumerate(self.layers[1:-1], start=1):
                    x = _activate(_take(self.activation, i), layer(x))
        return _activate(self.final_activation, self.layers[-1](x))

    def _scan_middle(self, x: Any) -> Any:
        arrays, static = partition(self.layers[1], is_array)
        act_arrays, act_static = partition(self.activation, is_array)
        act_arrays = jtu.tree_map(lambda a: a[1:], act_arrays)

        def step(h: Any, layer_and_act: Any) -> tuple[Any, None]:
            layer_arrays, activation_arrays = layer_and_act
            layer = combine(layer_arrays, static)
            return _activate(combine(activation_arrays, act_static), layer(h)), None

        x, _ = jax.lax.scan(step, x, (arrays, act_arrays))
        return x
