"""Sequential: layers applied one after the other; and Lambda, a function as a layer."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, overload

import jax

from .._module import Module
from ._misc import NO_STATE
from ._stateful import State, StatefulLayer

if TYPE_CHECKING:
    from jaxtyping import PRNGKeyArray

__all__ = ["Lambda", "Sequential"]




def _is_stateful(layer: Any) -> bool:
    return isinstance(layer, StatefulLayer) and layer.is_stateful()


class Sequential(StatefulLayer):
    """Layers applied in order: `Sequential([f, g, h])(x)` is `h(g(f(x)))`.

    Every layer is called as `layer(x, key=subkey)`, so plain functions such as
    `jax.nn.relu` must be wrapped in [`larix.nn.Lambda`][]. Stateful layers (subclasses
    of [`larix.nn.StatefulLayer`][], such as [`larix.nn.BatchNorm`][]) are called as
    `x, state = layer(x, state, key=subkey)` when a state is passed.

    **Fields:**

    - `layers`: the tuple of layers.

    `len(seq)`, iteration, `seq[i]` (the layer) and `seq[i:j]` (a `Sequential`) work as on
    the tuple.

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> k1, k2 = jax.random.split(jax.random.key(0))
        >>> model = larix.nn.Sequential([
        ...     larix.nn.Linear(2, 8, key=k1),
        ...     larix.nn.Lambda(jax.nn.relu),
        ...     larix.nn.Linear(8, 1, key=k2),
        ... ])
        >>> model(jnp.ones(2)).shape, len(model), type(model[:2]).__name__
        ((1,), 3, 'Sequential')

        ```
    """

    layers: tuple[Callable[..., Any], ...]

    def __init__(self, layers: Sequence[Callable[..., Any]]):
        """**Arguments:**

        - `layers`: a sequence of layers (callables taking `x` and a keyword `key`).
        """
        self.layers = tuple(layers)

    def __call__(self, x: Any, state: State = NO_STATE, *, key: PRNGKeyArray | None = None) -> Any:
        """**Arguments:**

        - `x`: the input of the first layer.
        - `state`: optional; a [`larix.nn.State`][] passed to and returned by the
          stateful layers.
        - `key`: optional; split into one key per layer, for layers such as
          [`larix.nn.Dropout`][] that need randomness.

        **Returns:** the output of the last layer; `(output, state)` if `state` was
        passed.
        """
        keys: Sequence[Any] = [None] * len(self.layers) if key is None else jax.random.split(key, len(self.layers))
        for i, (layer, layer_key) in enumerate(zip(self.layers, keys)):
            if _is_stateful(layer):
                if state is NO_STATE:
                    raise TypeError(
                        f"Sequential.layers[{i}] ({type(layer).__name__}) is stateful, so the "
                        "Sequential must be called with a state: `y, state = model(x, state)`. "
                        "Build both with `model, state = larix.nn.make_with_state(...)(...)`."
                    )
                x, state = layer(x, state, key=layer_key)
            else:
                try:
                    x = layer(x, key=layer_key)
                except TypeError as error:
                    if isinstance(layer, Module) or "key" not in str(error):
                        raise
                    raise TypeError(
                        f"Sequential.layers[{i}] ({getattr(layer, '__name__', layer)!r}) does "
                        "not accept the `key=` keyword that Sequential passes to every layer. "
                        f"Wrap plain functions in larix.nn.Lambda: `larix.nn.Lambda({getattr(layer, '__name__', 'fn')})`."
                    ) from error
        return x if state is NO_STATE else (x, state)

    def is_stateful(self) -> bool:
        """Whether any of the layers is stateful."""
        return any(map(_is_stateful, self.layers))

    @overload
    def __getitem__(self, index: int) -> Callable[..., Any]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequential: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return Sequential(self.layers[index])
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Callable[..., Any]]:
        return iter(self.layers)


class Lambda(Module):
    """Wraps a function `x -> y` as a layer, for [`larix.nn.Sequential`][], which passes a
    `key=` argument to every layer: `Lambda(fn)(x, key=key)` is `fn(x)`.

    `fn` is a field (not static), so a Module passed as `fn` keeps its parameters visible
    to the filtered transforms.

    **Fields:**

    - `fn`: the wrapped callable.

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> larix.nn.Lambda(jax.nn.relu)(jnp.array([-1.0, 2.0]), key=None)
        Array([0., 2.], dtype=float32)

        ```
    """

    fn: Callable[[Any], Any]

    def __call__(self, x: Any, *, key: PRNGKeyArray | None = None) -> Any:
        """**Arguments:** `x`, the input of `fn`; `key`, ignored.

        **Returns:** `fn(x)`.
        """
        return self.fn(x)
