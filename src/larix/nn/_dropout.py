"""Dropout: zero a random fraction of the entries during training."""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from .._module import Module
from ._misc import deprecated_deterministic

if TYPE_CHECKING:
    from jaxtyping import Array, PRNGKeyArray

__all__ = ["Dropout"]


class Dropout(Module):
    """Sets each entry to zero with probability `p` and scales the others by `1 / (1 - p)`,
    so that the expected output equals the input. Does nothing in inference mode.

    Switch a whole model between training and inference with
    [`larix.nn.inference_mode`][], or per call with `inference=`.

    **Fields:**

    - `p`: the probability of dropping an entry.
    - `inference`: if `True`, the layer returns its input unchanged.

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> dropout = larix.nn.Dropout(p=0.5)
        >>> y = dropout(jnp.ones(6), key=jax.random.key(0))
        >>> sorted(set(y.tolist()))  # dropped entries are 0, kept ones scaled by 2
        [0.0, 2.0]
        >>> dropout(jnp.ones(3), inference=True)
        Array([1., 1., 1.], dtype=float32)

        ```
    """

    p: float
    inference: bool

    def __init__(self, p: float = 0.5, inference: bool = False, *, deterministic: bool | None = None):
        """**Arguments:**

        - `p`: the probability of dropping each entry, in `[0, 1)`.
        - `inference`: if `True`, dropout is not applied. Changed by
          [`larix.nn.inference_mode`][], and overridden per call by `inference=`.
        - `deterministic`: keyword-only; deprecated (as in Equinox), the old name of
          `inference`. If given, it replaces `inference` and warns.

        **Raises:** `ValueError` if `p` is not in `[0, 1)`.
        """
        if deterministic is not None:
            inference = deterministic
            deprecated_deterministic("Dropout(deterministic=...)", "Dropout(inference=...)")
        if isinstance(p, (int, float)) and not 0 <= p < 1:
            raise ValueError(
                f"Dropout: `p` is the probability of dropping an entry and must be in [0, 1), got {p}."
            )
        self.p = p
        self.inference = inference

    @property
    def deterministic(self) -> bool:
        """Deprecated (as in Equinox): the old name of `inference`."""
        return self.inference

    def __call__(
        self,
        x: Array,
        *,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
        deterministic: bool | None = None,
    ) -> Array:
        """**Arguments:**

        - `x`: an array of any shape.
        - `key`: a `jax.random` key choosing which entries to drop; needed unless in
          inference mode or `p == 0`.
        - `inference`: overrides `self.inference` for this call if not `None`.
        - `deterministic`: deprecated (as in Equinox), the old name of `inference`; if
          given, it replaces `inference` and warns.

        **Returns:** an array of the shape and dtype of `x`.

        **Raises:** `RuntimeError` if no `key` is given in training mode.
        """
        if deterministic is not None:
            inference = deterministic
            deprecated_deterministic("Dropout()(deterministic=...)", "Dropout()(inference=...)")
        if inference is None:
            inference = self.inference
        if isinstance(self.p, (int, float)) and self.p == 0:
            inference = True
        if inference:
            return x
        if key is None:
            raise RuntimeError(
                "Dropout needs a random key in training mode: call it as "
                "`dropout(x, key=key)`. For evaluation, switch it off with "
                "`model = larix.nn.inference_mode(model)` or `dropout(x, inference=True)`."
            )
        keep = 1 - jax.lax.stop_gradient(self.p)
        mask = jax.random.bernoulli(key, keep, jnp.shape(x))
        return jnp.where(mask, x / keep, 0)
