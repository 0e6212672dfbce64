"""SpectralNorm: a layer's weight divided by its largest singular value, estimated by power
iteration; the iteration's vectors are state."""

from __future__ import annotations

from numbers import Real
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import jax
import jax.numpy as jnp

from .._module import field
from .._tree import tree_at
from ._misc import check_size
from ._stateful import State, StatefulLayer, StateIndex
from ._weight_norm import wrapped_weight

if TYPE_CHECKING:
    from jaxtyping import Array, PRNGKeyArray

__all__ = ["SpectralNorm"]

_Layer = TypeVar("_Layer")

# Power iterations run at construction, so that the first call starts from a good estimate
# of the singular vectors rather than from random ones.
_INITIAL_ITERATIONS = 15


def _normalise(x: Any, eps: float) -> Any:
    return x / jnp.maximum(jnp.sqrt(jnp.sum(x**2)), eps)


def _power_iteration(matrix: Any, u: Any, v: Any, eps: float) -> tuple[Any, Any]:
    u = _normalise(matrix @ v, eps)
    v = _normalise(matrix.T @ u, eps)
    return u, v


class SpectralNorm(StatefulLayer, Generic[_Layer]):
    r"""Spectral normalisation: calls a layer with its weight $W$ divided by $\sigma(W)$,
    an estimate of its largest singular value, so that the layer is (about) 1-Lipschitz.

    $\sigma(W) = u^\top W v$, where $u$ and $v$ estimate the top singular vectors of $W$
    (reshaped to a matrix of shape `(W.shape[0], -1)`). They are state, kept in a
    [`larix.nn.State`][]: each training call refines them with `num_power_iterations` steps
    of [power iteration](https://en.wikipedia.org/wiki/Power_iteration) and returns them in
    the new state; in inference mode they are used as they are. Gradients do not flow into
    $u$ and $v$. Build the layer with [`larix.nn.make_with_state`][]; switch to inference
    with [`larix.nn.inference_mode`][]. Common in the discriminators of generative
    adversarial networks ([Miyato et al., 2018](https://arxiv.org/abs/1802.05957)).

    **Fields:**

    - `layer`: the wrapped layer, with its unnormalised weight.
    - `uv_index`: the [`larix.nn.StateIndex`][] of the pair `(u, v)`, of shapes
      `(W.shape[0],)` and `(W.size // W.shape[0],)`, in the weight's dtype.
    - `inference`: whether to use `u` and `v` without updating them.
    - `weight_name`, `num_power_iterations`, `eps`: as passed to `__init__` (static).

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> linear = larix.nn.Linear(3, 2, key=jax.random.key(0))
        >>> normed, state = larix.nn.make_with_state(larix.nn.SpectralNorm)(linear, key=jax.random.key(1))
        >>> y, state = normed(jnp.ones(3), state)
        >>> y.shape
        (2,)
        >>> u, v = state.get(normed.uv_index)
        >>> sigma = jnp.linalg.svd(linear.weight, compute_uv=False)[0]
        >>> bool(jnp.allclose(u @ linear.weight @ v, sigma, rtol=1e-4))  # converged
        True

        ```
    """

    layer: _Layer
    weight_name: str = field(static=True)
    uv_index: StateIndex[tuple[Array, Array]]
    num_power_iterations: int = field(static=True)
    eps: float = field(static=True)
    inference: bool

    def __init__(
        self,
        layer: _Layer,
        weight_name: str = "weight",
        num_power_iterations: int = 1,
        eps: float = 1e-12,
        inference: bool = False,
        *,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `layer`: the layer to wrap, such as a [`larix.nn.Linear`][] or a convolution.
        - `weight_name`: the name of the layer's field to normalise.
        - `num_power_iterations`: power iteration steps per training call (0 keeps the
          estimate fixed).
        - `eps`: the smallest norm a vector is divided by, for numerical stability.
        - `inference`: if `True`, use the current `u` and `v` without updating them.
          Changed by [`larix.nn.inference_mode`][]; overridden per call by `inference=`.
        - `key`: a `jax.random` key for the random start of the power iteration
          (keyword-only).

        `u` and `v` are drawn from a normal distribution in the weight's dtype, then
        refined by 15 power iteration steps.

        **Raises:** `ValueError` if the layer has no array field `weight_name`, or for a
        negative `num_power_iterations` or `eps`; `TypeError` if that field is not a real
        floating-point array.
        """
        weight = wrapped_weight("SpectralNorm", layer, weight_name)
        check_size("SpectralNorm", "num_power_iterations", num_power_iterations, minimum=0)
        if isinstance(eps, bool) or not isinstance(eps, Real) or not eps >= 0:
            raise ValueError(f"SpectralNorm: `eps` must be a number >= 0, got {eps!r}.")
        matrix = jnp.reshape(weight, (weight.shape[0], -1))
        u_key, v_key = jax.random.split(key)
        u = jax.random.normal(u_key, matrix.shape[:1], weight.dtype)
        v = jax.random.normal(v_key, matrix.shape[1:], weight.dtype)
        for _ in range(_INITIAL_ITERATIONS):
            u, v = _power_iteration(matrix, u, v, eps)
        self.layer = layer
        self.weight_name = weight_name
        self.uv_index = StateIndex((u, v))
        self.num_power_iterations = num_power_iterations
        self.eps = eps
        self.inference = inference

    def __call__(
        self,
        x: Array,
        state: State,
        *,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
    ) -> tuple[Array, State]:
        """**Arguments:**

        - `x`: the input of the wrapped layer.
        - `state`: the [`larix.nn.State`][] holding `u` and `v`.
        - `key`: ignored; accepted so that all layers can be called alike.
        - `inference`: overrides `self.inference` for this call if not `None`.

        **Returns:** `(output, state)`: the output of the wrapped layer called with the
        normalised weight, and the state with the refined `u` and `v` (unchanged in
        inference mode).
        """
        if inference is None:
            inference = self.inference
        weight = getattr(self.layer, self.weight_name)
        matrix = jnp.reshape(weight, (weight.shape[0], -1))
        u, v = state.get(self.uv_index)
        if not inference:
            fixed = jax.lax.stop_gradient(matrix)
            for _ in range(self.num_power_iterations):
                u, v = _power_iteration(fixed, u, v, self.eps)
            state = state.set(self.uv_index, (u, v))
        u, v = jax.lax.stop_gradient((u, v))
        # One three-operand einsum rather than `u @ matrix @ v`: it contracts in another
        # order, the one Equinox uses, so that results agree with it to the bit.
        sigma = jnp.einsum("i,ij,j->", u, matrix, v)
        layer: Any = tree_at(lambda m: getattr(m, self.weight_name), self.layer, weight / sigma)
        return layer(x), state
