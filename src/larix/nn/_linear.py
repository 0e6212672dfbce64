"""Linear: an affine map `weight @ x + bias`; and Identity."""

# ruff: noqa: F722 - jaxtyping shape strings ("out_features in_features") are not forward references

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import jax
import jax.numpy as jnp

from .._module import Module, field
from ._misc import (
    Initializer,
    cast_for_op,
    check_size,
    fan_in_bound,
    init_param,
    param_dtype_of,
    shape_error,
    uniform_init,
)

if TYPE_CHECKING:
    from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["Identity", "Linear"]


class Linear(Module):
    """An affine map: `weight @ x + bias`.

    **Fields:**

    - `weight`: the matrix, of shape `(out_features, in_features)`.
    - `bias`: the offset, of shape `(out_features,)`, or `None` if `use_bias=False`.
    - `in_features`, `out_features`, `use_bias`, `dtype`: as passed to `__init__`
      (static).

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> linear = larix.nn.Linear(3, 2, key=jax.random.key(0))
        >>> linear
        Linear(
          weight=f32[2,3],
          bias=f32[2],
          in_features=3,
          out_features=2,
          use_bias=True,
          dtype=None
        )
        >>> linear(jnp.ones(3)).shape
        (2,)
        >>> jax.vmap(linear)(jnp.ones((5, 3))).shape  # a batch: vmap over it
        (5, 2)

        ```
    """

    weight: Float[Array, "out_features in_features"]
    bias: Float[Array, " out_features"] | None
    in_features: int | Literal["scalar"] = field(static=True)
    out_features: int | Literal["scalar"] = field(static=True)
    use_bias: bool = field(static=True)
    dtype: Any = field(static=True)

    def __init__(
        self,
        in_features: int | Literal["scalar"],
        out_features: int | Literal["scalar"],
        use_bias: bool = True,
        dtype: Any = None,
        *,
        param_dtype: Any = None,
        weight_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `in_features`: the input size; the input is a vector of shape `(in_features,)`.
          The string `"scalar"` means an input of shape `()`.
        - `out_features`: the output size; the output is a vector of shape
          `(out_features,)`, or of shape `()` for `"scalar"`.
        - `use_bias`: whether to add a bias.
        - `dtype`: the computation dtype: the input, weight and bias are cast to it before
          the product (if `None`, to their common type). Also the dtype the parameters
          are stored in, unless `param_dtype` is given: as in Equinox, `dtype=` alone
          builds the whole layer in that dtype.
        - `param_dtype`: the dtype of the stored weight and bias (keyword-only). Defaults
          to `dtype`, or to `float32` (`float64` when JAX runs in 64-bit mode). Flax's
          mixed precision is `dtype=jnp.bfloat16, param_dtype=jnp.float32`.
        - `weight_init`, `bias_init`: initialisers with the signature of
          `jax.nn.initializers`, `init(key, shape, dtype) -> array` (keyword-only),
          called with shapes `(out_features, in_features)` and `(out_features,)` and
          `param_dtype`. By default both draw uniformly from
          `[-1/sqrt(in_features), 1/sqrt(in_features))`, as Equinox and PyTorch do, to
          the bit (from `[-1, 1)` if `in_features=0`).
        - `key`: a `jax.random` key for the initialisation (keyword-only).

        Either size may be zero: with `in_features=0` the output is the bias; with
        `out_features=0` it is empty.

        **Raises:** `ValueError` for a negative or non-integer size, or an initialiser
        that returns an array of another shape or dtype.
        """
        if in_features != "scalar":
            check_size("Linear", "in_features", in_features, minimum=0)
        if out_features != "scalar":
            check_size("Linear", "out_features", out_features, minimum=0)
        stored = param_dtype_of(dtype, param_dtype)
        num_in = 1 if in_features == "scalar" else in_features
        num_out = 1 if out_features == "scalar" else out_features
        weight_key, bias_key = jax.random.split(key)
        # No inputs: the weight is empty and the bound only matters for the bias, drawn
        # from [-1, 1) as in Equinox.
        default = uniform_init(fan_in_bound(num_in) if num_in > 0 else 1.0)
        self.weight = init_param("Linear", "weight_init", weight_init, default, weight_key, (num_out, num_in), stored)
        self.bias = (
            init_param("Linear", "bias_init", bias_init, default, bias_key, (num_out,), stored) if use_bias else None
        )
        self.in_features = in_features
        self.out_features = out_features
        self.use_bias = use_bias
        self.dtype = dtype

    def __call__(self, x: Float[Array, " in_features"], *, key: PRNGKeyArray | None = None) -> Float[Array, " out_features"]:
        """**Arguments:**

        - `x`: an array of shape `(in_features,)` (shape `()` if `in_features="scalar"`).
        - `key`: ignored; accepted so that all layers can be called alike.

        **Returns:** an array of shape `(out_features,)` (shape `()` if
        `out_features="scalar"`), of dtype `dtype` (or the common type of `x` and the
        parameters).

        **Raises:** `ValueError` if `x` has another shape.
        """
        scalar_in = self.in_features == "scalar"
        expected = () if scalar_in else (self.in_features,)
        if jnp.shape(x) != expected:
            raise shape_error(f"Linear(in_features={self.in_features!r}, ...)", expected, jnp.shape(x))
        if scalar_in:
            x = jnp.reshape(x, (1,))
        x, weight, bias = cast_for_op(self.dtype, x, self.weight, self.bias)
        y = weight @ x
        if bias is not None:
            y = y + bias
        if self.out_features == "scalar":
            y = y[0]
        return y


class Identity(Module):
    """Returns its input unchanged: a placeholder where a layer is expected.

    Accepts and ignores any arguments to `__init__`, so that it can stand in for any
    layer's constructor.

    !!! example
        ```python
        >>> import larix
        >>> larix.nn.Identity(3, key=None)("anything")
        'anything'

        ```
    """

    def __init__(self, *args: Any, **kwargs: Any):
        """**Arguments:** any; ignored."""

    def __call__(self, x: Any, *, key: PRNGKeyArray | None = None) -> Any:
        """**Arguments:** `x`, any value; `key`, ignored.

        **Returns:** `x`, unchanged.
        """
        return x
