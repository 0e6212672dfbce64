"""DenseGeneral: a linear map that contracts several input axes into several output axes."""

# ruff: noqa: F722 - jaxtyping shape strings are not forward references

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from .._module import Module, field
from ._misc import (
    Initializer,
    cast_for_op,
    fan_in_bound,
    init_param,
    param_dtype_of,
    shape_error,
    uniform_init,
)

if TYPE_CHECKING:
    from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["DenseGeneral"]

_LAYER = "DenseGeneral"


def _sizes(name: str, value: Any, *, allow_none: bool, minimum: int) -> tuple[Any, ...]:
    """`5 -> (5,)`; a sequence of ints (or `None`s, if allowed) -> a tuple."""
    entries = (value,) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        entries = tuple(entries)
    except TypeError:
        entries = None

    def ok(v: Any) -> bool:
        if v is None:
            return allow_none
        return isinstance(v, int) and not isinstance(v, bool) and v >= minimum

    if entries is None or not all(ok(v) for v in entries):
        what = f"ints >= {minimum}" + (" or None" if allow_none else "")
        raise ValueError(f"{_LAYER}: `{name}` must be an int or a sequence of {what}; got {value!r}.")
    return entries


def _axes(name: str, value: Any, in_shape: tuple[Any, ...]) -> tuple[int, ...]:
    """Normalise `axis` or `batch_dims` (an int or a sequence of ints) to non-negative axes."""
    ndim = len(in_shape)
    entries = (value,) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        entries = tuple(entries)
    except TypeError:
        entries = None
    if entries is None or not all(isinstance(a, int) and not isinstance(a, bool) for a in entries):
        raise ValueError(f"{_LAYER}: `{name}` must be an int or a sequence of ints; got {value!r}.")
    normalised = []
    for a in entries:
        if not -ndim <= a < ndim:
            raise ValueError(
                f"{_LAYER}: `{name}` contains axis {a}, but the input has {ndim} dimension(s) "
                f"(in_shape={in_shape}): valid axes are {-ndim} to {ndim - 1}."
            )
        n = a % ndim
        if n in normalised:
            raise ValueError(
                f"{_LAYER}: `{name}`={value!r} names axis {n} more than once (a negative axis "
                f"counts from the end: with {ndim} dimensions, {n - ndim} is {n})."
            )
        normalised.append(n)
    return tuple(normalised)


class DenseGeneral(Module):
    """A linear map over several axes at once: contracts the input's `axis` (one or more)
    against a kernel, producing `features` (one or more) output axes, with an independent
    kernel for each index of the `batch_dims` axes. Numerically a `tensordot` (a
    `lax.dot_general`), plus a bias.

    With `in_shape=(n,)` and `features=m` it is a [`larix.nn.Linear`][] layer (whose
    `weight` is this `kernel` transposed). Typical uses are the projections of attention,
    `(seq, embed) -> (seq, heads, head_dim)` and back
    `(seq, heads, head_dim) -> (seq, embed)` with `axis=(-2, -1)`.

    **Shapes.** For an input `x` of shape `in_shape`, with `B = batch_dims`,
    `C = axis` (the contracted axes), `R` the remaining axes of `x` (in order) and
    `F = features`:

    - `kernel`: `[x.shape[b] for b in B] + [x.shape[c] for c in C] + F`;
    - `bias`: `[x.shape[b] for b in B] + F`;
    - output: `[x.shape[b] for b in B] + [x.shape[r] for r in R] + F`. The batch axes
      come first, in the order given (as `lax.dot_general` puts them).

    **Fields:**

    - `kernel`, `bias` (`None` if `use_bias=False`): as above.
    - `in_shape`, `features`, `use_bias`, `dtype`: as passed (static; shapes as tuples).
    - `axis`, `batch_dims`: the axes as non-negative ints (static).

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> # (seq, heads, head_dim) -> (seq, embed): contract the last two axes.
        >>> out = larix.nn.DenseGeneral((None, 4, 8), 32, axis=(-2, -1), key=jax.random.key(0))
        >>> out.kernel.shape, out.bias.shape
        ((4, 8, 32), (32,))
        >>> x = jnp.ones((10, 4, 8))
        >>> y = out(x)
        >>> y.shape
        (10, 32)
        >>> bool(jnp.allclose(y, jnp.einsum("shd,hde->se", x, out.kernel) + out.bias, atol=1e-5))
        True

        ```
    """

    kernel: Float[Array, "*batch_contracted_features"]
    bias: Float[Array, "*batch_features"] | None
    in_shape: tuple[int | None, ...] = field(static=True)
    features: tuple[int, ...] = field(static=True)
    axis: tuple[int, ...] = field(static=True)
    batch_dims: tuple[int, ...] = field(static=True)
    use_bias: bool = field(static=True)
    dtype: Any = field(static=True)

    def __init__(
        self,
        in_shape: int | Sequence[int | None],
        features: int | Sequence[int],
        axis: int | Sequence[int] = -1,
        batch_dims: int | Sequence[int] = (),
        use_bias: bool = True,
        *,
        dtype: Any = None,
        param_dtype: Any = None,
        kernel_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_shape`: the shape of one input (an int for a vector). Entries that are
          neither contracted nor batch axes may be `None`: any size is then accepted
          there, such as a sequence length.
        - `features`: the sizes of the output axes that replace the contracted ones: an
          int or a tuple of ints (`()` contracts to a scalar).
        - `axis`: the input axes to contract: an int or a sequence of ints (negative
          ones count from the end).
        - `batch_dims`: input axes over which the kernel is *not* shared: each index along
          them has its own kernel and bias. An int or a sequence of ints.
        - `use_bias`: whether to add a bias.
        - `dtype`: the computation dtype: the input, kernel and bias are cast to it
          before the product. If `None`, they are cast to their common type (JAX's
          standard promotion, applied explicitly, so that it also works under
          `jax_numpy_dtype_promotion="strict"`).
        - `param_dtype`: the dtype of the stored kernel and bias. Defaults to `dtype`, as
          for every larix layer (Equinox's `dtype=` builds a layer in that dtype), or to
          `float32` (`float64` when JAX runs in 64-bit mode). Flax's mixed precision is
          `dtype=jnp.bfloat16, param_dtype=jnp.float32`.
        - `kernel_init`, `bias_init`: initialisers with the signature of
          `jax.nn.initializers`, `init(key, shape, dtype) -> array`, called with the
          shapes above. By default both are uniform in `[-1/sqrt(fan_in), 1/sqrt(fan_in))`
          as in `Linear`, with `fan_in` the product of the contracted sizes only (each
          batch index has its own kernel, so the batch size is not part of any output's
          fan-in). To use a `jax.nn.initializers.variance_scaling` initialiser, tell it
          the kernel's axes, e.g. for one batch axis, two contracted axes and one
          feature axis: `lecun_normal(batch_axis=0, in_axis=(1, 2), out_axis=3)`.
        - `key`: a `jax.random` key for the initialisation (keyword-only).

        **Raises:** `ValueError` for a malformed shape, an axis out of range or named
        twice, a batch axis that is also contracted, a contracted or batch axis whose
        size is `None`, or an initialiser that returns the wrong shape or dtype.
        """
        in_shape = _sizes("in_shape", in_shape, allow_none=True, minimum=0)
        features = _sizes("features", features, allow_none=False, minimum=0)
        axis = _axes("axis", axis, in_shape)
        batch_dims = _axes("batch_dims", batch_dims, in_shape)
        if not axis:
            raise ValueError(f"{_LAYER}: `axis` must name at least one axis to contract; got ().")
        both = sorted(set(axis) & set(batch_dims))
        if both:
            raise ValueError(
                f"{_LAYER}: axis {both[0]} is in both `axis` (contracted) and `batch_dims` "
                "(one kernel per index); an axis can only be one of them."
            )
        for a in batch_dims + axis:
            if in_shape[a] is None:
                role = "a batch axis" if a in batch_dims else "contracted"
                raise ValueError(
                    f"{_LAYER}: in_shape[{a}] is None, but axis {a} is {role}, so the kernel "
                    "needs its size: give it in `in_shape`."
                )
        batch_shape = tuple(in_shape[a] for a in batch_dims)
        contracted_shape = tuple(in_shape[a] for a in axis)
        stored = param_dtype_of(dtype, param_dtype)
        fan_in = math.prod(contracted_shape)
        # No inputs (a zero-sized contracted axis): only the bias matters, drawn from
        # [-1, 1) as Linear(0, n) does.
        default = uniform_init(fan_in_bound(fan_in) if fan_in > 0 else 1.0)
        kernel_key, bias_key = jax.random.split(key)
        kernel_shape = batch_shape + contracted_shape + features
        self.kernel = init_param(_LAYER, "kernel_init", kernel_init, default, kernel_key, kernel_shape, stored)
        if use_bias:
            self.bias = init_param(_LAYER, "bias_init", bias_init, default, bias_key, batch_shape + features, stored)
        else:
            self.bias = None
        self.in_shape = in_shape
        self.features = features
        self.axis = axis
        self.batch_dims = batch_dims
        self.use_bias = use_bias
        self.dtype = dtype

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        """**Arguments:**

        - `x`: an array of shape `in_shape` (any size where `in_shape` has `None`).
        - `key`: ignored; accepted so that all layers can be called alike.

        **Returns:** an array of shape `batch + remaining + features` (see above), of
        dtype `dtype` (or the common type of the input and the parameters).

        **Raises:** `ValueError` if `x` has another shape.
        """
        shape = jnp.shape(x)
        if len(shape) != len(self.in_shape) or any(
            want is not None and got != want for got, want in zip(shape, self.in_shape)
        ):
            expected = "(" + ", ".join("any" if s is None else str(s) for s in self.in_shape) + ")"
            if all(s is not None for s in self.in_shape):
                expected = self.in_shape  # lets shape_error suggest vmap for a batch
            raise shape_error(f"{_LAYER}(in_shape={self.in_shape}, ...)", expected, shape)
        x, kernel, bias = cast_for_op(self.dtype, x, self.kernel, self.bias)
        n_batch, n_contract = len(self.batch_dims), len(self.axis)
        kernel_batch = tuple(range(n_batch))
        kernel_contract = tuple(range(n_batch, n_batch + n_contract))
        y = jax.lax.dot_general(x, kernel, ((self.axis, kernel_contract), (self.batch_dims, kernel_batch)))
        if bias is not None:
            n_remaining = len(shape) - n_batch - n_contract
            batch_shape = bias.shape[:n_batch]
            y = y + bias.reshape(batch_shape + (1,) * n_remaining + self.features)
        return y
