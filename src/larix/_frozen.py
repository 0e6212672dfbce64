"""Frozen: parameters that are carried by a model but never trained."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import jax.tree_util as jtu
from jax import lax

from ._filters import is_inexact_array
from ._module import Module, field

__all__ = ["Frozen"]

# Bit patterns are stored as the unsigned integer type of the same width.
_UNSIGNED = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}


def _freeze(x: Any) -> Any:
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        # bitcast_convert_type refuses complex numbers: store (real, imag) on a last axis.
        x = jnp.stack([jnp.real(x), jnp.imag(x)], axis=-1)
    return lax.bitcast_convert_type(x, _UNSIGNED[x.dtype.itemsize])


def _thaw(bits: Any, dtype: Any) -> Any:
    if dtype is None:
        return bits
    if jnp.issubdtype(dtype, jnp.complexfloating):
        parts = lax.bitcast_convert_type(bits, jnp.finfo(dtype).dtype)
        return lax.complex(parts[..., 0], parts[..., 1])
    return lax.bitcast_convert_type(bits, dtype)


class Frozen(Module):
    """Wrap a pytree (a layer, a whole sub-model, an array) so that it is not trained.

    Inside, every floating-point array is stored as its bit pattern: an unsigned integer
    array of the same shape and width (complex arrays get a last axis of 2, for the real
    and imaginary parts). To the filters a frozen parameter is therefore not
    an inexact array, and with no special casing anywhere:

    - [`larix.filter_grad`][] (and every other filtered derivative) gives it `None`;
    - `larix.filter(model, larix.is_inexact_array)`, the usual argument of an optax
      optimiser's `init` and `update`, leaves it out, so the optimiser keeps no state for
      it and weight decay never touches it;
    - [`larix.apply_updates`][] keeps it bit for bit;
    - it is still an array, so `filter_jit` traces it instead of baking it into the
      program, `filter_vmap` maps it, and checkpoints save it losslessly (under the path
      `<where>.bits.<name>`, as unsigned integers).

    Initialise optimisers with `larix.filter(model, larix.is_inexact_array)`, not
    `larix.is_array`: the latter would include the bit patterns (as it includes any
    integer array), and optax would then expect gradients for them.

    Read the original back with `.value` (a free bitcast inside `jit`). Calling a `Frozen`
    calls the wrapped object, and reading an attribute it does not have reads the wrapped
    object's, so a frozen layer is used exactly like the layer. To unfreeze, replace it
    by its `.value`.

    **Arguments:**

    - `tree`: any pytree. Its floating-point and complex arrays are frozen; other leaves
      are kept as they are.

    !!! example "Fine-tuning the head of a model"
        ```python
        >>> import jax, jax.numpy as jnp, optax, larix
        >>> class Linear(larix.Module):
        ...     weight: jax.Array
        ...     def __call__(self, x):
        ...         return self.weight @ x
        >>> model = [Linear(jnp.ones((3, 2))), Linear(jnp.ones((1, 3)))]
        >>> # Freeze the first layer: it keeps working as a layer.
        >>> model = larix.tree_at(lambda m: m[0], model, replace_fn=larix.Frozen)
        >>> loss = lambda m, x: jnp.sum(m[1](m[0](x)) ** 2)
        >>> optim = optax.adam(1e-2)
        >>> opt_state = optim.init(larix.filter(model, larix.is_inexact_array))
        >>> grads = larix.filter_grad(loss)(model, jnp.ones(2))
        >>> grads[0].bits.weight is None  # no gradient for the frozen layer
        True
        >>> updates, opt_state = optim.update(grads, opt_state, larix.filter(model, larix.is_inexact_array))
        >>> model = larix.apply_updates(model, updates)
        >>> model[0].weight  # read through the wrapper
        Array([[1., 1.],
               [1., 1.],
               [1., 1.]], dtype=float32)

        ```
    """

    bits: Any
    # For each leaf of `bits`: the dtype it was frozen from, or None if it was kept as is.
    dtypes: tuple[Any, ...] = field(static=True, repr=False)

    def __init__(self, tree: Any):
        leaves, treedef = jtu.tree_flatten(tree)
        frozen = [is_inexact_array(x) for x in leaves]
        self.bits = treedef.unflatten([_freeze(x) if f else x for x, f in zip(leaves, frozen)])
        self.dtypes = tuple(jnp.asarray(x).dtype if f else None for x, f in zip(leaves, frozen))

    @property
    def value(self) -> Any:
        """The wrapped pytree, with its original floating-point arrays (bit-identical)."""
        leaves, treedef = jtu.tree_flatten(self.bits)
        if len(leaves) != len(self.dtypes):
            raise ValueError(
                f"Frozen.value: `bits` has {len(leaves)} leaves but {len(self.dtypes)} were "
                "frozen. The contents of a Frozen were replaced leaf by leaf; build a new one "
                "with `larix.Frozen(new_tree)` instead."
            )
        return treedef.unflatten([_thaw(x, d) for x, d in zip(leaves, self.dtypes)])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.value(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails. Dunders and our own fields are never
        # forwarded, so that copying, pickling and half-built instances behave normally.
        if name.startswith("__") or name in ("bits", "dtypes"):
            raise AttributeError(name)
        return getattr(self.value, name)
