"""Recurrent cells: GRUCell and LSTMCell, one time step each."""

# ruff: noqa: F722 - jaxtyping shape strings are not forward references

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from .._module import Module, field
from ._misc import Initializer, cast_for_op, check_size, init_param, param_dtype_of, shape_error, uniform_init

if TYPE_CHECKING:
    from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["GRUCell", "LSTMCell"]


def _check(layer: Any, x: Any, hidden: Any) -> None:
    name = f"{type(layer).__name__}(input_size={layer.input_size}, hidden_size={layer.hidden_size})"
    if jnp.shape(x) != (layer.input_size,):
        raise shape_error(name, (layer.input_size,), jnp.shape(x), "input")
    for h in hidden:
        if jnp.shape(h) != (layer.hidden_size,):
            raise shape_error(name, (layer.hidden_size,), jnp.shape(h), "hidden")


def _default_init(hidden_size: int) -> Initializer:
    # Equinox's bound: sqrt(1 / n), which can differ from 1 / sqrt(n) in the last bit
    # (float64).
    return uniform_init(math.sqrt(1 / hidden_size))


class GRUCell(Module):
    """One step of a gated recurrent unit (GRU): `(input, hidden) -> new hidden`.

    With `r`, `z` the reset and update gates, `new = tanh(W_in x + b_in + r * (W_hn h + b_n))`
    and the result `(1 - z) * new + z * h`, as in PyTorch. Run it over a sequence with
    `jax.lax.scan`.

    **Fields:**

    - `weight_ih`: shape `(3 * hidden_size, input_size)`, the reset, update and new-state
      blocks stacked.
    - `weight_hh`: shape `(3 * hidden_size, hidden_size)`.
    - `bias`: shape `(3 * hidden_size,)`, or `None` if `use_bias=False`.
    - `bias_n`: shape `(hidden_size,)`, the bias inside the reset gate; or `None`.
    - `input_size`, `hidden_size`, `use_bias`, `dtype`: as passed to `__init__` (static).

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> cell = larix.nn.GRUCell(2, 8, key=jax.random.key(0))
        >>> xs = jnp.ones((5, 2))  # a sequence of 5 inputs
        >>> step = lambda h, x: (cell(x, h), None)
        >>> final, _ = jax.lax.scan(step, jnp.zeros(8), xs)
        >>> final.shape
        (8,)

        ```
    """

    weight_ih: Float[Array, "3*hidden_size input_size"]
    weight_hh: Float[Array, "3*hidden_size hidden_size"]
    bias: Float[Array, " 3*hidden_size"] | None
    bias_n: Float[Array, " hidden_size"] | None
    input_size: int = field(static=True)
    hidden_size: int = field(static=True)
    use_bias: bool = field(static=True)
    dtype: Any = field(static=True)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        use_bias: bool = True,
        dtype: Any = None,
        *,
        param_dtype: Any = None,
        weight_ih_init: Initializer | None = None,
        weight_hh_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `input_size`: the size of each input vector.
        - `hidden_size`: the size of the hidden state.
        - `use_bias`: whether to add biases.
        - `dtype`: the computation dtype: the input, the hidden state and the parameters
          are cast to it before the gates (if `None`, to their common type), and the new
          hidden state has it. Also the dtype the parameters are stored in, unless
          `param_dtype` is given: as in Equinox, `dtype=` alone builds the whole cell in
          that dtype.
        - `param_dtype`: the dtype of the stored weights and biases (keyword-only).
          Defaults to `dtype`, or to `float32` (`float64` when JAX runs in 64-bit mode).
          Flax's mixed precision is `dtype=jnp.bfloat16, param_dtype=jnp.float32`.
        - `weight_ih_init`, `weight_hh_init`, `bias_init`: initialisers with the signature
          of `jax.nn.initializers`, `init(key, shape, dtype) -> array` (keyword-only),
          called with `param_dtype` and the shapes `(3 * hidden_size, input_size)`,
          `(3 * hidden_size, hidden_size)` and, for `bias_init`, both biases:
          `(3 * hidden_size,)` for `bias` and `(hidden_size,)` for `bias_n`, each with
          its own key. By default all draw uniformly from
          `[-1/sqrt(hidden_size), 1/sqrt(hidden_size))`, as Equinox and PyTorch do, to
          the bit.
        - `key`: keyword-only; a `jax.random` key for the initialisation.

        **Raises:** `ValueError` for a size that is not a positive int, or an initialiser
        that returns an array of another shape or dtype.
        """
        check_size("GRUCell", "input_size", input_size)
        check_size("GRUCell", "hidden_size", hidden_size)
        stored = param_dtype_of(dtype, param_dtype)
        ih_key, hh_key, bias_key, bias_n_key = jax.random.split(key, 4)
        default = _default_init(hidden_size)
        self.weight_ih = init_param(
            "GRUCell",
            "weight_ih_init",
            weight_ih_init,
            default,
            ih_key,
            (3 * hidden_size, input_size),
            stored,
        )
        self.weight_hh = init_param(
            "GRUCell",
            "weight_hh_init",
            weight_hh_init,
            default,
            hh_key,
            (3 * hidden_size, hidden_size),
            stored,
        )
        if use_bias:
            self.bias = init_param(
                "GRUCell", "bias_init", bias_init, default, bias_key, (3 * hidden_size,), stored
            )
            self.bias_n = init_param(
                "GRUCell", "bias_init", bias_init, default, bias_n_key, (hidden_size,), stored
            )
        else:
            self.bias = self.bias_n = None
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.use_bias = use_bias
        self.dtype = dtype

    def __call__(
        self,
        input: Float[Array, " input_size"],  # noqa: A002 - Equinox's name
        hidden: Float[Array, " hidden_size"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " hidden_size"]:
        """**Arguments:**

        - `input`: the input, of shape `(input_size,)`.
        - `hidden`: the hidden state, of shape `(hidden_size,)`.
        - `key`: ignored.

        **Returns:** the new hidden state, of shape `(hidden_size,)` and of dtype `dtype`
        (or the common type of the input, the hidden state and the parameters). Under
        `jax.lax.scan`, start from a hidden state of that dtype.

        **Raises:** `ValueError` if `input` or `hidden` has another shape.
        """
        _check(self, input, (hidden,))
        x, hidden, weight_ih, weight_hh, bias, bias_n = cast_for_op(
            self.dtype, input, hidden, self.weight_ih, self.weight_hh, self.bias, self.bias_n
        )
        input_gates = weight_ih @ x
        if bias is not None:
            input_gates = input_gates + bias
        hidden_gates = weight_hh @ hidden
        input_r, input_z, input_n = jnp.split(input_gates, 3)
        hidden_r, hidden_z, hidden_n = jnp.split(hidden_gates, 3)
        reset = jax.nn.sigmoid(input_r + hidden_r)
        update = jax.nn.sigmoid(input_z + hidden_z)
        if bias_n is not None:
            hidden_n = hidden_n + bias_n
        new = jnp.tanh(input_n + reset * hidden_n)
        # `(1 - z) * new + z * h`, written with one fewer rounding (and as Equinox writes
        # it, so that results agree to the bit).
        return new + update * (hidden - new)


class LSTMCell(Module):
    """One step of a long short-term memory (LSTM) unit: `(input, (h, c)) -> (h, c)`.

    The gates are computed as `W_ih x + W_hh h + b`, split into the input, forget, cell
    and output blocks (PyTorch's order). Run it over a sequence with `jax.lax.scan`.

    **Fields:**

    - `weight_ih`: shape `(4 * hidden_size, input_size)`.
    - `weight_hh`: shape `(4 * hidden_size, hidden_size)`.
    - `bias`: shape `(4 * hidden_size,)`, or `None` if `use_bias=False`.
    - `input_size`, `hidden_size`, `use_bias`, `dtype`: as passed to `__init__` (static).

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> cell = larix.nn.LSTMCell(2, 8, key=jax.random.key(0))
        >>> h, c = cell(jnp.ones(2), (jnp.zeros(8), jnp.zeros(8)))
        >>> h.shape, c.shape
        ((8,), (8,))

        ```
    """

    weight_ih: Float[Array, "4*hidden_size input_size"]
    weight_hh: Float[Array, "4*hidden_size hidden_size"]
    bias: Float[Array, " 4*hidden_size"] | None
    input_size: int = field(static=True)
    hidden_size: int = field(static=True)
    use_bias: bool = field(static=True)
    dtype: Any = field(static=True)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        use_bias: bool = True,
        dtype: Any = None,
        *,
        param_dtype: Any = None,
        weight_ih_init: Initializer | None = None,
        weight_hh_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `input_size`: the size of each input vector.
        - `hidden_size`: the size of the hidden and cell states.
        - `use_bias`: whether to add a bias.
        - `dtype`: the computation dtype: the input, the hidden and cell states and the
          parameters are cast to it before the gates (if `None`, to their common type),
          and the new states have it. Also the dtype the parameters are stored in,
          unless `param_dtype` is given: as in Equinox, `dtype=` alone builds the whole
          cell in that dtype.
        - `param_dtype`: the dtype of the stored weights and bias (keyword-only). Defaults
          to `dtype`, or to `float32` (`float64` when JAX runs in 64-bit mode). Flax's
          mixed precision is `dtype=jnp.bfloat16, param_dtype=jnp.float32`.
        - `weight_ih_init`, `weight_hh_init`, `bias_init`: initialisers with the signature
          of `jax.nn.initializers`, `init(key, shape, dtype) -> array` (keyword-only),
          called with shapes `(4 * hidden_size, input_size)`,
          `(4 * hidden_size, hidden_size)` and `(4 * hidden_size,)` and `param_dtype`. By
          default all draw uniformly from `[-1/sqrt(hidden_size), 1/sqrt(hidden_size))`,
          as Equinox and PyTorch do, to the bit.
        - `key`: keyword-only; a `jax.random` key for the initialisation.

        **Raises:** `ValueError` for a size that is not a positive int, or an initialiser
        that returns an array of another shape or dtype.
        """
        check_size("LSTMCell", "input_size", input_size)
        check_size("LSTMCell", "hidden_size", hidden_size)
        stored = param_dtype_of(dtype, param_dtype)
        ih_key, hh_key, bias_key = jax.random.split(key, 3)
        default = _default_init(hidden_size)
        self.weight_ih = init_param(
            "LSTMCell",
            "weight_ih_init",
            weight_ih_init,
            default,
            ih_key,
            (4 * hidden_size, input_size),
            stored,
        )
        self.weight_hh = init_param(
            "LSTMCell",
            "weight_hh_init",
            weight_hh_init,
            default,
            hh_key,
            (4 * hidden_size, hidden_size),
            stored,
        )
        self.bias = (
            init_param("LSTMCell", "bias_init", bias_init, default, bias_key, (4 * hidden_size,), stored)
            if use_bias
            else None
        )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.use_bias = use_bias
        self.dtype = dtype

    def __call__(
        self,
        input: Float[Array, " input_size"],  # noqa: A002 - Equinox's name
        hidden: tuple[Float[Array, " hidden_size"], Float[Array, " hidden_size"]],
        *,
        key: PRNGKeyArray | None = None,
    ) -> tuple[Float[Array, " hidden_size"], Float[Array, " hidden_size"]]:
        """**Arguments:**

        - `input`: the input, of shape `(input_size,)`.
        - `hidden`: the pair `(h, c)` of hidden and cell states, each of shape
          `(hidden_size,)`.
        - `key`: ignored.

        **Returns:** the new pair `(h, c)`, of dtype `dtype` (or the common type of the
        input, the states and the parameters). Under `jax.lax.scan`, start from states
        of that dtype.

        **Raises:** `TypeError` if `hidden` is not a pair; `ValueError` if an array has
        another shape.
        """
        if not isinstance(hidden, (tuple, list)) or len(hidden) != 2:
            raise TypeError(
                "LSTMCell: `hidden` must be the pair (h, c) of hidden and cell states; start "
                "from `(jnp.zeros(hidden_size), jnp.zeros(hidden_size))`."
            )
        h, c = hidden
        _check(self, input, (h, c))
        x, h, c, weight_ih, weight_hh, bias = cast_for_op(
            self.dtype, input, h, c, self.weight_ih, self.weight_hh, self.bias
        )
        gates = weight_ih @ x + weight_hh @ h
        if bias is not None:
            gates = gates + bias
        i, f, g, o = jnp.split(gates, 4)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return h, c
