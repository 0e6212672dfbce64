"""Stacked: N identical blocks stored as one block with a leading layer axis, applied by scan.

A deep model of repeated blocks, unrolled, puts N copies of the block into the program that
XLA compiles. Stored stacked (each array of the block gains a leading axis of size N) and
applied with `jax.lax.scan`, the block is traced and compiled once, whatever N is
(benchmarks/bench_scan.py: 64 MLP blocks compile many times faster).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.tree_util as jtu

from ._filters import is_array
from ._module import Module
from ._partition import combine, partition
from ._paths import python_path

__all__ = ["Stacked", "stack"]


class Stacked(Module):
    """N blocks of identical structure, stored as one block whose arrays have a leading
    layer axis, and applied one after the other with `jax.lax.scan`.

    Build one with [`larix.stack`][] (from an initialiser and N keys), or wrap a block that
    already has the layer axis, such as `larix.filter_vmap(make_block)(keys)`. Calling it
    feeds the input through block 0, then block 1, ...; the block is traced once, so a
    model of 64 blocks compiles about as fast as a model of one. The blocks' arrays are per
    layer; their static fields, other non-array leaves and 0-d arrays (which have no layer
    axis: a Python float becomes one under `jax.jit`) are shared by all layers.

    **Fields:**

    - `block`: the stacked block: a block whose every array has the layer axis in front.

    `len(stacked)` is the number of layers, `stacked[i]` is layer `i` as an ordinary block
    (`stacked[i:j]` is a `Stacked` of those layers).

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> class Block(larix.Module):
        ...     weight: jax.Array
        ...     activation: str = larix.field(static=True, default="tanh")
        ...     def __init__(self, key):
        ...         self.weight = jax.random.normal(key, (3, 3)) / 3
        ...     def __call__(self, x):
        ...         return x + getattr(jnp, self.activation)(self.weight @ x)
        >>> blocks = larix.stack(Block, jax.random.split(jax.random.key(0), 4))
        >>> blocks
        Stacked(block=Block(weight=f32[4,3,3]))
        >>> len(blocks), blocks[0].weight.shape
        (4, (3, 3))
        >>> x = jnp.ones(3)
        >>> bool(jnp.allclose(blocks(x), blocks[3](blocks[2](blocks[1](blocks[0](x))))))
        True

        ```
    """

    block: Any

    def __check_init__(self) -> None:
        _num_layers(self.block)

    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        """Apply the blocks in order: `block_N-1(... block_1(block_0(x, *args), *args) ...)`.

        **Arguments:**

        - `x`: the input of the first block: an array or a pytree of arrays. Each block
          must return an output of the same structure, shapes and dtypes (it is the next
          block's input).
        - `*args`, `**kwargs`: passed unchanged to every block (a mask, a flag, ...).

        **Returns:** the output of the last block.
        """
        arrays, static = partition(self.block, _has_layer_axis)

        def step(carry: Any, layer_arrays: Any) -> tuple[Any, None]:
            layer = combine(layer_arrays, static)
            return layer(carry, *args, **kwargs), None

        try:
            out, _ = jax.lax.scan(step, x, arrays)
        except TypeError as error:
            if "carry" not in str(error):
                raise
            raise TypeError(
                f"larix.Stacked: each block must return an output with the structure, shapes and "
                f"dtypes of its input, since it is the next block's input; here they differ. "
                f"JAX says: {error}"
            ) from None
        return out

    def __len__(self) -> int:
        return _num_layers(self.block)

    def __getitem__(self, index: int | slice) -> Any:
        arrays, static = partition(self.block, _has_layer_axis)
        if isinstance(index, slice):
            return Stacked(combine(jtu.tree_map(lambda a: a[index], arrays), static))
        n = len(self)
        if isinstance(index, int) and not -n <= index < n:
            raise IndexError(f"larix.Stacked: layer {index} does not exist; there are {n} layers.")
        return combine(jtu.tree_map(lambda a: a[index], arrays), static)


def _has_layer_axis(leaf: Any) -> bool:
    # 0-d arrays cannot hold one value per layer, so they are shared like static leaves. They
    # appear when a whole model goes through jax.jit, which turns Python floats into arrays.
    return is_array(leaf) and leaf.ndim > 0


def _num_layers(block: Any) -> int:
    """The common leading axis of the arrays of `block`; errors name the array that differs."""
    n = None
    first = ""
    for path, leaf in jtu.tree_flatten_with_path(block)[0]:
        if not _has_layer_axis(leaf):
            continue
        where = python_path(path, "block")
        if n is None:
            n, first = leaf.shape[0], where
        elif leaf.shape[0] != n:
            raise ValueError(
                f"larix.Stacked: {where} has {leaf.shape[0]} layers (shape {tuple(leaf.shape)}) "
                f"but {first} has {n}. Every array of a stacked block needs the same leading "
                "layer axis."
            )
    if n is None:
        raise ValueError(
            "larix.Stacked: the block has no arrays with a leading layer axis, so there is "
            "nothing to scan over. Build the stacked block with larix.stack(make_block, keys) "
            "or larix.filter_vmap(make_block)(keys), which add that axis; a block without "
            "parameters can be applied N times with a Python loop."
        )
    return n


def stack(make_block: Callable[[Any], Any], keys: Any) -> Stacked:
    """Initialise one block per key, stacked: a [`larix.Stacked`][] of `len(keys)` layers.

    `make_block` is traced once and vectorised over the keys with `jax.vmap`, so building
    64 layers costs one initialisation, not 64. Every array it returns gains a leading layer
    axis; its non-array leaves and static fields (activation functions, sizes) are shared
    by all layers, so they must not depend on the key.

    **Arguments:**

    - `make_block`: `key -> block`, e.g. a Module class whose `__init__` takes a key.
    - `keys`: the keys, one per layer, stacked (`jax.random.split(key, num_layers)`).

    **Returns:** a `Stacked` whose block's arrays have the leading axis `len(keys)`.

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> def make_block(key):
        ...     return {"w": jax.random.normal(key, (2, 2)), "name": "dense"}
        >>> stacked = larix.stack(make_block, jax.random.split(jax.random.key(0), 8))
        >>> stacked.block["w"].shape, stacked.block["name"]
        ((8, 2, 2), 'dense')

        ```
    """
    if not callable(make_block):
        raise TypeError(
            f"larix.stack: make_block must be a function key -> block, got "
            f"{type(make_block).__name__}. To stack blocks you already have, see the scan "
            "section of the guide 'Transforms on whole models'."
        )
    statics: list[Any] = []

    def init(key: Any) -> Any:
        arrays, static = partition(make_block(key), is_array)
        statics.append(static)
        return arrays

    arrays = jax.vmap(init)(keys)
    return Stacked(combine(arrays, statics[0]))
