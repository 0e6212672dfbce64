"""Embedding (a lookup table) and RotaryPositionalEmbedding (RoPE)."""

# ruff: noqa: F722 - jaxtyping shape strings are not forward references

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from .._module import Module, field
from ._misc import Initializer, check_size, default_floating_dtype, init_param, param_dtype_of

if TYPE_CHECKING:
    from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

__all__ = ["Embedding", "RotaryPositionalEmbedding"]


class Embedding(Module):
    """A lookup table: `Embedding(...)(i)` is row `i` of `weight`.

    **Fields:**

    - `weight`: the table, of shape `(num_embeddings, embedding_size)`; initialised from a
      standard normal distribution.
    - `num_embeddings`, `embedding_size`: the table's shape (static).
    - `dtype`: as passed to `__init__` (static).

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> embed = larix.nn.Embedding(10, 4, key=jax.random.key(0))
        >>> embed(3).shape
        (4,)
        >>> jax.vmap(embed)(jnp.array([1, 2, 3])).shape  # several indices: vmap
        (3, 4)

        ```
    """

    # The field order is Equinox's (the table after the sizes), so that the leaves line up.
    num_embeddings: int = field(static=True)
    embedding_size: int = field(static=True)
    weight: Float[Array, "num_embeddings embedding_size"]
    dtype: Any = field(static=True)

    def __init__(
        self,
        num_embeddings: int | None = None,
        embedding_size: int | None = None,
        weight: Float[Array, "num_embeddings embedding_size"] | None = None,
        dtype: Any = None,
        *,
        param_dtype: Any = None,
        weight_init: Initializer | None = None,
        key: PRNGKeyArray | None = None,
    ):
        """Give either `num_embeddings`, `embedding_size` and `key`, or `weight`.

        **Arguments:**

        - `num_embeddings`: the number of rows of the table.
        - `embedding_size`: the size of each embedding vector.
        - `weight`: alternatively, the table itself, of shape
          `(num_embeddings, embedding_size)`, stored as given.
        - `dtype`: the dtype of the returned embeddings: the row looked up is cast to it
          (if `None`, it keeps the table's dtype). Also the dtype a new table is stored
          in, unless `param_dtype` is given: as in Equinox, `dtype=` alone builds the
          table in that dtype.
        - `param_dtype`: the dtype of a new table (keyword-only). Defaults to `dtype`, or
          to `float32` (`float64` when JAX runs in 64-bit mode). Flax's mixed precision
          is `dtype=jnp.bfloat16, param_dtype=jnp.float32`.
        - `weight_init`: an initialiser with the signature of `jax.nn.initializers`,
          `init(key, shape, dtype) -> array` (keyword-only), called with shape
          `(num_embeddings, embedding_size)` and `param_dtype`. By default the table is
          drawn from a standard normal distribution (`jax.random.normal`), as in
          Equinox, to the bit.
        - `key`: keyword-only; a `jax.random` key to initialise a new table. It may be
          left out only for a `weight_init` that draws no random numbers.

        **Raises:** `ValueError` if the arguments do not determine the table, if
        `param_dtype` or `weight_init` is given together with `weight`, or if
        `weight_init` returns an array of another shape or dtype; `TypeError` if
        `weight_init` fails without a `key`.
        """
        if weight is None:
            if num_embeddings is None or embedding_size is None or (key is None and weight_init is None):
                raise ValueError(
                    "Embedding needs either `num_embeddings`, `embedding_size` and `key=` (to "
                    "initialise a new table), or `weight=` (an existing table)."
                )
            check_size("Embedding", "num_embeddings", num_embeddings, minimum=0)
            check_size("Embedding", "embedding_size", embedding_size, minimum=0)
            weight = init_param(
                "Embedding",
                "weight_init",
                weight_init,
                jax.random.normal,
                key,
                (num_embeddings, embedding_size),
                param_dtype_of(dtype, param_dtype),
            )
        else:
            if param_dtype is not None or weight_init is not None:
                given = [
                    f"`{name}`"
                    for name, value in (("param_dtype", param_dtype), ("weight_init", weight_init))
                    if value is not None
                ]
                they = "it only applies" if len(given) == 1 else "they only apply"
                raise ValueError(
                    f"Embedding: {' and '.join(given)} cannot be given with `weight=`: {they} to a "
                    "new table, and `weight=` is the table itself, stored as it is. Build the "
                    "table in the dtype you want before passing it, or pass `num_embeddings`, "
                    "`embedding_size` and `key=` instead of `weight=`."
                )
            shape = jnp.shape(weight)
            if len(shape) != 2 or (num_embeddings, embedding_size) not in (
                (None, None),
                shape,
                (shape[0], None),
                (None, shape[1]),
            ):
                raise ValueError(
                    f"Embedding: `weight` must have shape (num_embeddings, embedding_size) "
                    f"matching the sizes given; got shape {shape} with "
                    f"num_embeddings={num_embeddings}, embedding_size={embedding_size}."
                )
            num_embeddings, embedding_size = shape
        self.num_embeddings = num_embeddings
        self.embedding_size = embedding_size
        self.weight = weight
        self.dtype = dtype

    def __call__(
        self, x: Int[ArrayLike, ""], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " embedding_size"]:
        """**Arguments:**

        - `x`: the index, a scalar integer.
        - `key`: ignored.

        **Returns:** the embedding, an array of shape `(embedding_size,)`, of dtype
        `dtype` (or the table's dtype).

        **Raises:** `ValueError` if `x` is not a scalar; `TypeError` if it is not an
        integer.
        """
        if jnp.ndim(x) != 0:
            raise ValueError(
                f"Embedding takes one scalar index, got shape {jnp.shape(x)}. To embed several "
                "indices, vmap over them: `jax.vmap(embedding)(indices)`."
            )
        if not jnp.issubdtype(jnp.result_type(x), jnp.integer):
            raise TypeError(f"Embedding: the index must be an integer, got dtype {jnp.result_type(x)}.")
        # Only the row is cast, not the whole table: the same values, one row's work.
        row = self.weight[x]
        return row if self.dtype is None else row.astype(self.dtype)


class RotaryPositionalEmbedding(Module):
    """Rotary positional embedding (RoPE): rotates pairs of features of the entry at
    position `t` by angles `t * theta ** (-2i / embedding_size)`, so that dot products of
    queries and keys depend on their relative position.

    The pairs are `(x[i], x[i + embedding_size // 2])` (the "rotate half" layout). Typically
    used in [`larix.nn.MultiheadAttention`][]'s `process_heads`, vmapped over heads.

    **Fields:**

    - `embedding_size`, `theta`, `dtype`: as passed to `__init__` (static).

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> rope = larix.nn.RotaryPositionalEmbedding(4)
        >>> x = jnp.ones((3, 4))
        >>> y = rope(x)  # position 0 is unchanged; norms are kept
        >>> bool(jnp.allclose(y[0], x[0])), bool(jnp.allclose(jnp.linalg.norm(y, axis=1), 2.0))
        (True, True)

        ```
    """

    embedding_size: int = field(static=True)
    theta: float = field(static=True)
    dtype: Any = field(static=True)

    def __init__(self, embedding_size: int, theta: float = 10_000.0, dtype: Any = None):
        """**Arguments:**

        - `embedding_size`: the size of each vector; must be even.
        - `theta`: the base of the frequencies; larger values rotate more slowly.
        - `dtype`: the dtype of the sines and cosines (default `float32`, or `float64` in
          64-bit mode).

        **Raises:** `ValueError` if `embedding_size` is odd or negative.
        """
        check_size("RotaryPositionalEmbedding", "embedding_size", embedding_size, minimum=0)
        if embedding_size % 2:
            raise ValueError(
                f"RotaryPositionalEmbedding: `embedding_size` must be even (features are "
                f"rotated in pairs), got {embedding_size}."
            )
        self.embedding_size = embedding_size
        self.theta = theta
        self.dtype = jnp.dtype(default_floating_dtype() if dtype is None else dtype)

    def __call__(
        self, x: Float[Array, "seq_length embedding_size"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "seq_length embedding_size"]:
        """**Arguments:**

        - `x`: an array of shape `(seq_length, embedding_size)`.
        - `key`: ignored.

        **Returns:** the rotated array, of the same shape.

        **Raises:** `ValueError` if `x` has another shape.
        """
        if jnp.ndim(x) != 2 or jnp.shape(x)[1] != self.embedding_size:
            raise ValueError(
                f"RotaryPositionalEmbedding(embedding_size={self.embedding_size}) expects `x` of "
                f"shape (seq_length, {self.embedding_size}), got {jnp.shape(x)}. For "
                "several heads, vmap over the head axis."
            )
        cos, sin = self.precompute_freqs_cis(self.embedding_size, x.shape[0], self.theta, self.dtype)
        cos, sin = jnp.tile(cos, (1, 2)), jnp.tile(sin, (1, 2))
        try:
            rotated = x * cos + self.rotate_half(x) * sin
        except jax.dtypes.TypePromotionError as error:
            # Strict promotion refuses to mix the input's dtype with the table's; as in
            # Equinox, say which two dtypes and how to make them agree.
            raise jax.dtypes.TypePromotionError(
                f"RotaryPositionalEmbedding(dtype={jnp.dtype(self.dtype).name}) got `x` of "
                f"dtype {jnp.result_type(x).name}, and jax_numpy_dtype_promotion='strict' "
                "forbids mixing them. Build the layer with "
                f"`RotaryPositionalEmbedding(..., dtype=jnp.{jnp.result_type(x).name})`, or cast "
                f"`x` to {jnp.dtype(self.dtype).name}."
            ) from error
        return rotated.astype(x.dtype)

    @staticmethod
    def rotate_half(x: Float[Array, "... embedding_size"]) -> Float[Array, "... embedding_size"]:
        """`[-x2, x1]` for `x = [x1, x2]` split in halves along the last axis: the partner of
        each feature in its rotation pair, with the sign of a 90-degree turn.

        **Arguments:**

        - `x`: an array whose last axis has even length.

        **Returns:** an array of the same shape.
        """
        half = x.shape[-1] // 2
        return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)

    @staticmethod
    def precompute_freqs_cis(
        embedding_size: int, end: int, theta: float, dtype: Any
    ) -> tuple[Float[Array, "end half_embedding_size"], Float[Array, "end half_embedding_size"]]:
        """The cosines and sines of the rotation angles `t * theta ** (-2i / embedding_size)`
        for positions `t < end` and pairs `i < embedding_size // 2`: the real and imaginary
        parts of Meta's `freqs_cis`, under Equinox's name.

        They are computed in the default float dtype (`float32`, or `float64` in 64-bit
        mode) and cast to `dtype` only at the end, so that a low-precision table is as
        accurate as its dtype allows.

        **Arguments:**

        - `embedding_size`: the (even) size of the vectors to rotate.
        - `end`: the number of positions.
        - `theta`: the base of the frequencies.
        - `dtype`: the dtype of the result.

        **Returns:** the pair `(cos, sin)`, each of shape `(end, embedding_size // 2)`.

        !!! example
            ```python
            >>> import jax.numpy as jnp, larix
            >>> cos, sin = larix.nn.RotaryPositionalEmbedding.precompute_freqs_cis(4, 2, 10_000.0, jnp.float32)
            >>> cos
            Array([[1.       , 1.       ],
                   [0.5403023, 0.99995  ]], dtype=float32)

            ```
        """
        compute_dtype = default_floating_dtype()
        exponents = jnp.arange(0, embedding_size, 2, dtype=compute_dtype) / embedding_size
        frequencies = 1.0 / (theta**exponents)
        angles = jnp.outer(jnp.arange(end, dtype=compute_dtype), frequencies)
        return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)
