"""PReLU: a leaky ReLU whose negative slope is learnt."""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from .._module import Module

if TYPE_CHECKING:
    from jaxtyping import Array, ArrayLike, PRNGKeyArray

__all__ = ["PReLU"]


class PReLU(Module):
    """The parametric ReLU: `x` where `x >= 0`, `negative_slope * x` elsewhere.

    **Fields:**

    - `negative_slope`: the learnt slope; a scalar, or an array broadcastable to the input
      (one slope per channel, say).

    !!! example
        ```python
        >>> import jax.numpy as jnp, larix
        >>> larix.nn.PReLU(0.1)(jnp.array([-2.0, 3.0]))
        Array([-0.2,  3. ], dtype=float32)

        ```
    """

    negative_slope: Array

    def __init__(self, init_alpha: float | ArrayLike = 0.25):
        """**Arguments:**

        - `init_alpha`: the initial slope: a float, or an array of slopes broadcastable
          to the input.
        """
        # A Python float stays weakly typed, as in Equinox: a bf16 input then stays bf16.
        self.negative_slope = jnp.asarray(float(init_alpha) if isinstance(init_alpha, int) else init_alpha)

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        """**Arguments:** `x`, an array of any shape; `key`, ignored.

        **Returns:** an array of the shape of `x`, in the dtype of `x` and the slope
        promoted together (an integer input gives a float output).
        """
        # The slope is the layer's own parameter, broadcast against the input by design:
        # mixing its dtype and rank with the input's is this layer's meaning, not an
        # implicit promotion of the user's arrays, so it works under strict promotion
        # settings too (as in Equinox).
        with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
            return jnp.where(x >= 0, x, self.negative_slope * x)
