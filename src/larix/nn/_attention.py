"""Scaled dot-product attention: the functions for one head, and MultiheadAttention."""

# ruff: noqa: F722 - jaxtyping shape strings are not forward references

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from .._module import Module, field
from ._dropout import Dropout
from ._linear import Linear
from ._misc import (
    Initializer,
    at_least_float32,
    cast_for_op,
    check_size,
    deprecated_deterministic,
    init_param,
)

if TYPE_CHECKING:
    from jaxtyping import Array, Bool, Float, PRNGKeyArray

__all__ = ["MultiheadAttention", "dot_product_attention", "dot_product_attention_weights"]


def _checked(init: Initializer | None, name: str) -> Initializer | None:
    """`init`, checked on each call so that a wrong shape or dtype is reported against
    MultiheadAttention's own argument rather than the Linear it is passed to."""
    if init is None:
        return None

    def checked(key: Any, shape: tuple[int, ...], dtype: Any) -> Any:
        return init_param("MultiheadAttention", name, init, init, key, shape, dtype)

    return checked


def dot_product_attention_weights(
    query: Float[Array, "q_seq qk_size"],
    key: Float[Array, "kv_seq qk_size"],
    mask: Bool[Array, "q_seq kv_seq"] | None = None,
) -> Float[Array, "q_seq kv_seq"]:
    """The attention weights of one head: `softmax(query @ key.T / sqrt(qk_size))`, each
    row summing to one over the key positions.

    The softmax is computed in at least float32 (in bfloat16 or float16 its normalisation
    loses most digits) and the weights are returned in the dtype of the logits.

    **Arguments:**

    - `query`: shape `(query_seq_length, qk_size)`.
    - `key`: shape `(kv_seq_length, qk_size)`.
    - `mask`: optional booleans of shape `(query_seq_length, kv_seq_length)`; `False`
      means "do not attend" (weight zero, unless a whole row is masked).

    **Returns:** the weights, of shape `(query_seq_length, kv_seq_length)`.

    **Raises:** `ValueError` if `mask` has another shape.

    !!! example
        ```python
        >>> import jax.numpy as jnp, larix
        >>> q = jnp.array([[0.0, 2.0 ** 0.5]])
        >>> k = jnp.array([[1.0, 0.0], [0.0, 1.0]])
        >>> larix.nn.dot_product_attention_weights(q, k)  # [1, e] / (1 + e)
        Array([[0.26894143, 0.7310586 ]], dtype=float32)
        >>> larix.nn.dot_product_attention_weights(q, k, mask=jnp.array([[True, False]]))
        Array([[1., 0.]], dtype=float32)

        ```
    """
    query = query / math.sqrt(query.shape[-1])
    logits = jnp.einsum("sd,Sd->sS", query, key)
    if mask is not None:
        if jnp.shape(mask) != logits.shape:
            raise ValueError(
                f"dot_product_attention: `mask` must have shape (query_seq_length, "
                f"kv_seq_length) = {logits.shape}, got {jnp.shape(mask)}. In "
                "MultiheadAttention, a mask per head has shape (num_heads, query_seq_length, "
                "kv_seq_length)."
            )
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits.astype(at_least_float32(logits.dtype)), axis=-1)
    return weights.astype(logits.dtype)


def dot_product_attention(
    query: Float[Array, "q_seq qk_size"],
    key_: Float[Array, "kv_seq qk_size"],
    value: Float[Array, "kv_seq v_size"],
    mask: Bool[Array, "q_seq kv_seq"] | None = None,
    dropout: Dropout | None = None,
    *,
    key: PRNGKeyArray | None = None,
    inference: bool | None = None,
) -> Float[Array, "q_seq v_size"]:
    """Scaled dot-product attention of one head: the values averaged with the weights of
    [`larix.nn.dot_product_attention_weights`][], optionally after dropout on the weights.

    **Arguments:**

    - `query`: shape `(query_seq_length, qk_size)`.
    - `key_`: shape `(kv_seq_length, qk_size)`.
    - `value`: shape `(kv_seq_length, v_size)`.
    - `mask`: optional booleans of shape `(query_seq_length, kv_seq_length)`; `False`
      means "do not attend".
    - `dropout`: an optional [`larix.nn.Dropout`][] applied to the weights.
    - `key`: keyword-only; the `jax.random` key for `dropout`.
    - `inference`: keyword-only; passed to `dropout`.

    **Returns:** an array of shape `(query_seq_length, v_size)`.

    **Raises:** `ValueError` if `mask` has the wrong shape.

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> q, k, v = jnp.ones((2, 4)), jnp.ones((3, 4)), jnp.arange(6.0).reshape(3, 2)
        >>> larix.nn.dot_product_attention(q, k, v)  # equal weights: the mean of the values
        Array([[2., 3.],
               [2., 3.]], dtype=float32)

        ```
    """
    weights = dot_product_attention_weights(query, key_, mask)
    if dropout is not None:
        weights = dropout(weights, key=key, inference=inference)
    return jnp.einsum("sS,Sd->sd", weights, value)


class MultiheadAttention(Module):
    """Multi-head scaled dot-product attention, as in "Attention is All You Need".

    The query, key and value are projected to `num_heads` heads; each head attends with
    `softmax(q k^T / sqrt(qk_size))` (computed in at least float32), and the heads'
    results are concatenated and projected to `output_size`. Inputs are one example:
    `(sequence length, features)`; vmap over a batch.

    **Fields:**

    - `query_proj`: [`larix.nn.Linear`][] `query_size -> num_heads * qk_size`.
    - `key_proj`: `key_size -> num_heads * qk_size`.
    - `value_proj`: `value_size -> num_heads * vo_size`.
    - `output_proj`: `num_heads * vo_size -> output_size`.
    - `dropout`: the [`larix.nn.Dropout`][] applied to the attention weights.
    - `num_heads`, `query_size`, `key_size`, `value_size`, `output_size`, `qk_size`,
      `vo_size`, `use_query_bias`, `use_key_bias`, `use_value_bias`, `use_output_bias`,
      `dtype`: the sizes and options (static).

    !!! example "Causal self-attention"
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> attention = larix.nn.MultiheadAttention(num_heads=2, query_size=8, key=jax.random.key(0))
        >>> x = jnp.ones((5, 8))
        >>> causal = jnp.tril(jnp.ones((5, 5), bool))
        >>> attention(x, x, x, mask=causal).shape
        (5, 8)

        ```
    """

    query_proj: Linear
    key_proj: Linear
    value_proj: Linear
    output_proj: Linear
    dropout: Dropout
    num_heads: int = field(static=True)
    query_size: int = field(static=True)
    key_size: int = field(static=True)
    value_size: int = field(static=True)
    output_size: int = field(static=True)
    qk_size: int = field(static=True)
    vo_size: int = field(static=True)
    use_query_bias: bool = field(static=True)
    use_key_bias: bool = field(static=True)
    use_value_bias: bool = field(static=True)
    use_output_bias: bool = field(static=True)
    dtype: Any = field(static=True)

    def __init__(
        self,
        num_heads: int,
        query_size: int,
        key_size: int | None = None,
        value_size: int | None = None,
        output_size: int | None = None,
        qk_size: int | None = None,
        vo_size: int | None = None,
        use_query_bias: bool = False,
        use_key_bias: bool = False,
        use_value_bias: bool = False,
        use_output_bias: bool = False,
        dropout_p: float = 0.0,
        inference: bool = False,
        dtype: Any = None,
        *,
        param_dtype: Any = None,
        weight_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `num_heads`: the number of heads.
        - `query_size`: the number of features of the query.
        - `key_size`, `value_size`, `output_size`: the features of the key, the value and
          the output; each defaults to `query_size`.
        - `qk_size`, `vo_size`: the features per head that queries and keys are compared
          over, and that values are mixed over; both default to `query_size // num_heads`.
        - `use_query_bias`, `use_key_bias`, `use_value_bias`, `use_output_bias`: whether
          each projection has a bias.
        - `dropout_p`: the dropout probability on the attention weights.
        - `inference`: if `True`, no dropout; see [`larix.nn.inference_mode`][].
        - `dtype`: the computation dtype, passed to the four projections: the query, key
          and value are cast to it with the projections' parameters, and the result has
          it. If `None`, each projection computes in the common type of its input and
          parameters, and the heads are then cast to their common type. The softmax of
          the attention weights is computed in at least `float32` whatever `dtype` is.
          Also the dtype the parameters are stored in, unless `param_dtype` is given: as
          in Equinox, `dtype=` alone builds the whole layer in that dtype.
        - `param_dtype`: the dtype of the stored weights and biases of the projections
          (keyword-only). Defaults to `dtype`, or to `float32` (`float64` when JAX runs
          in 64-bit mode). Flax's mixed precision is
          `dtype=jnp.bfloat16, param_dtype=jnp.float32`.
        - `weight_init`, `bias_init`: initialisers with the signature of
          `jax.nn.initializers`, `init(key, shape, dtype) -> array` (keyword-only),
          given to each of the four projections (see [`larix.nn.Linear`][]): each call
          gets that projection's shape, `(out_features, in_features)` or
          `(out_features,)`, its own key and `param_dtype`. `bias_init` is called only
          for the projections with a bias. By default both draw uniformly from
          `[-1/sqrt(in_features), 1/sqrt(in_features))`, as Equinox does, to the bit.
        - `key`: keyword-only; a `jax.random` key for the initialisation.

        **Raises:** `ValueError` for a size that is not a positive int, a `query_size`
        too small for the default head sizes, or an initialiser that returns an array of
        another shape or dtype.
        """
        check_size("MultiheadAttention", "num_heads", num_heads)
        check_size("MultiheadAttention", "query_size", query_size)
        key_size = query_size if key_size is None else key_size
        value_size = query_size if value_size is None else value_size
        output_size = query_size if output_size is None else output_size
        if (qk_size is None or vo_size is None) and query_size < num_heads:
            raise ValueError(
                f"MultiheadAttention: query_size ({query_size}) is smaller than num_heads "
                f"({num_heads}), so the default qk_size / vo_size (query_size // num_heads) "
                "would be 0. Pass qk_size= and vo_size= explicitly."
            )
        qk_size = query_size // num_heads if qk_size is None else qk_size
        vo_size = query_size // num_heads if vo_size is None else vo_size
        q_key, k_key, v_key, o_key = jax.random.split(key, 4)
        inits = dict(
            param_dtype=param_dtype,
            weight_init=_checked(weight_init, "weight_init"),
            bias_init=_checked(bias_init, "bias_init"),
        )
        self.query_proj = Linear(query_size, num_heads * qk_size, use_query_bias, dtype, **inits, key=q_key)
        self.key_proj = Linear(key_size, num_heads * qk_size, use_key_bias, dtype, **inits, key=k_key)
        self.value_proj = Linear(value_size, num_heads * vo_size, use_value_bias, dtype, **inits, key=v_key)
        self.output_proj = Linear(
            num_heads * vo_size, output_size, use_output_bias, dtype, **inits, key=o_key
        )
        self.dropout = Dropout(dropout_p, inference=inference)
        self.num_heads = num_heads
        self.query_size = query_size
        self.key_size = key_size
        self.value_size = value_size
        self.output_size = output_size
        self.qk_size = qk_size
        self.vo_size = vo_size
        self.use_query_bias = use_query_bias
        self.use_key_bias = use_key_bias
        self.use_value_bias = use_value_bias
        self.use_output_bias = use_output_bias
        self.dtype = dtype

    def _check_inputs(self, query: Any, key_: Any, value: Any, mask: Any) -> None:
        problems = []
        for name, x, size in (
            ("query", query, self.query_size),
            ("key_", key_, self.key_size),
            ("value", value, self.value_size),
        ):
            if jnp.ndim(x) != 2 or jnp.shape(x)[1] != size:
                problems.append(f"`{name}` must have shape (seq_length, {size}), got {jnp.shape(x)}")
        if not problems and key_.shape[0] != value.shape[0]:
            problems.append(
                f"`key_` and `value` must have the same length, got {key_.shape[0]} and {value.shape[0]}"
            )
        if not problems and mask is not None:
            pair = (query.shape[0], key_.shape[0])
            if jnp.shape(mask) not in (pair, (self.num_heads, *pair)):
                problems.append(
                    f"`mask` must have shape {pair} or {(self.num_heads, *pair)} (per head), got {jnp.shape(mask)}"
                )
        if problems:
            hint = (
                " For a batch, vmap over it." if any(jnp.ndim(x) == 3 for x in (query, key_, value)) else ""
            )
            raise ValueError(
                f"MultiheadAttention(num_heads={self.num_heads}, ...): " + "; ".join(problems) + "." + hint
            )

    def __call__(
        self,
        query: Float[Array, "q_seq q_size"],
        key_: Float[Array, "kv_seq k_size"],
        value: Float[Array, "kv_seq v_size"],
        mask: Bool[Array, "q_seq kv_seq"] | Bool[Array, "num_heads q_seq kv_seq"] | None = None,
        *,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
        deterministic: bool | None = None,
        process_heads: Callable[[Any, Any, Any], tuple[Any, Any, Any]] | None = None,
    ) -> Float[Array, "q_seq o_size"]:
        """**Arguments:**

        - `query`: shape `(query_seq_length, query_size)`.
        - `key_`: shape `(kv_seq_length, key_size)`.
        - `value`: shape `(kv_seq_length, value_size)`.
        - `mask`: optional booleans of shape `(query_seq_length, kv_seq_length)`, or
          `(num_heads, query_seq_length, kv_seq_length)` for a mask per head; `False`
          means "do not attend".
        - `key`: keyword-only; a `jax.random` key for dropout (needed if `dropout_p > 0`
          outside inference mode).
        - `inference`: keyword-only; overrides the dropout's `inference` flag.
        - `deterministic`: keyword-only; deprecated (as in Equinox), the old name of
          `inference`. If given, it replaces `inference` and warns.
        - `process_heads`: keyword-only; a function `(q, k, v) -> (q, k, v)` applied to
          the projected heads, of shapes `(seq_length, num_heads, qk_size)` (and
          `vo_size` for `v`), for example to apply a
          [`larix.nn.RotaryPositionalEmbedding`][].

        **Returns:** an array of shape `(query_seq_length, output_size)`, of dtype `dtype`
        (or the common type of the inputs and the parameters).

        **Raises:** `ValueError` naming every input of the wrong shape.
        """
        if deterministic is not None:
            inference = deterministic
            deprecated_deterministic(
                "MultiheadAttention()(deterministic=...)", "MultiheadAttention()(inference=...)"
            )
        self._check_inputs(query, key_, value, mask)
        q = jax.vmap(self.query_proj)(query).reshape(query.shape[0], self.num_heads, -1)
        k = jax.vmap(self.key_proj)(key_).reshape(key_.shape[0], self.num_heads, -1)
        v = jax.vmap(self.value_proj)(value).reshape(value.shape[0], self.num_heads, -1)
        # With `dtype=None` each projection computes in the common type of its own input
        # and parameters, so the heads may differ (a float32 query, bfloat16 keys):
        # attention needs one dtype, given explicitly so that strict promotion accepts it.
        # No-ops when the dtypes already agree.
        q, k, v = cast_for_op(self.dtype, q, k, v)
        if process_heads is not None:
            shapes = (q.shape, k.shape, v.shape)
            q, k, v = process_heads(q, k, v)
            if (q.shape, k.shape, v.shape) != shapes:
                raise ValueError(
                    f"MultiheadAttention: process_heads must keep the shapes of the heads "
                    f"{shapes}, but returned {(q.shape, k.shape, v.shape)}."
                )
            q, k, v = cast_for_op(self.dtype, q, k, v)

        # Each head attends on its own, mapped over the head axis (1): the same operations
        # as Equinox, so that results agree with it to the bit. Each head gets its own
        # dropout key, and its own mask if `mask` has one per head.
        def attend(q: Any, k: Any, v: Any, mask: Any, key: Any) -> Any:
            return dot_product_attention(q, k, v, mask, self.dropout, key=key, inference=inference)

        head_keys = None if key is None else jax.random.split(key, self.num_heads)
        mask_axis = 0 if mask is not None and jnp.ndim(mask) == 3 else None
        attended = jax.vmap(attend, in_axes=(1, 1, 1, mask_axis, 0), out_axes=1)(q, k, v, mask, head_keys)
        return jax.vmap(self.output_proj)(attended.reshape(query.shape[0], -1))
