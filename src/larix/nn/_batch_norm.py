"""BatchNorm: normalise by statistics over the batch, with running statistics as state."""

# ruff: noqa: F722 - jaxtyping shape strings are not forward references

from __future__ import annotations

from collections.abc import Hashable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import jax
import jax.numpy as jnp

from .._module import field
from ._misc import (
    Initializer,
    at_least_float32,
    cast_for_op,
    check_size,
    init_param,
    param_dtype_of,
    shape_error,
    warn_at_caller,
)
from ._stateful import State, StatefulLayer, StateIndex

if TYPE_CHECKING:
    from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["BatchNorm"]

_MODES = ("ema", "batch")


def _promoted(op: Any, a: Any, b: Any) -> Any:
    """`op(a, b)` on `a` and `b` cast to their common type: what standard promotion computes
    (to the bit), but also under strict promotion, where mixing the dtypes would raise: the
    running statistics and parameters are stored in `param_dtype`, which may differ from
    the computation's dtype (bfloat16 parameters and float32 statistics, say)."""
    a, b = cast_for_op(None, a, b)
    return op(a, b)


def _blend(momentum: float, running: Any, batch: Any) -> Any:
    """`momentum * running + (1 - momentum) * batch`, in the common type."""
    return _promoted(jnp.add, momentum * running, (1 - momentum) * batch)


class BatchNorm(StatefulLayer):
    """Normalises each channel by its mean and variance over the batch (and the spatial
    dimensions), then applies a channelwise affine map; keeps running statistics for
    inference in a [`larix.nn.State`][].

    Like every larix layer it acts on one example, `(input_size, dim_1, ..., dim_N)`; the
    batch statistics come from a collective over the named batch axis, so it must run
    under `larix.filter_vmap(..., axis_name=axis_name)` (or `jax.vmap` / `jax.pmap` /
    `shard_map` with that name). Build it with [`larix.nn.make_with_state`][], and switch
    to the running statistics with [`larix.nn.inference_mode`][].

    Two modes, as in Equinox; pass one (without `mode`, it is `"ema"` with a warning, as
    in Equinox):

    - `mode="ema"`: in training, the running statistics are updated as
      `momentum * running + (1 - momentum) * batch` (set to the batch statistics on the
      first call) and the **updated running statistics** normalise the batch. In
      inference, the running statistics are used.
    - `mode="batch"`: in training, the batch statistics normalise the batch and the
      running statistics are updated as above; in inference, the running statistics are
      used after dividing by `1 - momentum ** steps` (Adam's bias correction), since
      they start from zero. This is PyTorch's and Flax's behaviour, and the better choice
      for new code. (Equinox starts the running variance at one instead of zero, so a
      fresh state differs; a state trained by Equinox gives Equinox's results.)

    **Fields:**

    - `weight`, `bias`: shape `(input_size,)` (ones and zeros by default), or `None` if
      `channelwise_affine=False`.
    - `ema_first_time_index`, `ema_state_index`: the state of `mode="ema"` (a flag and
      the `(mean, variance)` pair), else `None`.
    - `batch_counter`, `batch_state_index`: the state of `mode="batch"` (the number of
      training steps and the `(mean, variance)` pair), else `None`.
    - `axis_name`, `inference`: as passed to `__init__`.
    - `input_size`, `eps`, `channelwise_affine`, `momentum`, `mode`, `dtype`: static.

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> bn, state = larix.nn.make_with_state(larix.nn.BatchNorm)(2, "batch", mode="batch")
        >>> train = larix.filter_vmap(
        ...     lambda m, x, s: m(x, s), in_axes=(None, 0, None), out_axes=(0, None), axis_name="batch"
        ... )
        >>> x = jnp.array([[0.0, 10.0], [2.0, 30.0]])
        >>> y, state = train(bn, x, state)
        >>> y.round(3)  # each channel normalised over the batch of 2
        Array([[-1., -1.],
               [ 1.,  1.]], dtype=float32)
        >>> y, _ = train(larix.nn.inference_mode(bn), x, state)  # running statistics
        >>> bool(jnp.allclose(y, jnp.array([[-1.0, -1.0], [1.0, 1.0]]), atol=1e-4))
        True

        ```
    """

    weight: Float[Array, " input_size"] | None
    bias: Float[Array, " input_size"] | None
    ema_first_time_index: StateIndex | None
    ema_state_index: StateIndex | None
    batch_counter: StateIndex | None
    batch_state_index: StateIndex | None
    axis_name: Hashable | Sequence[Hashable]
    inference: bool
    input_size: int = field(static=True)
    eps: float = field(static=True)
    channelwise_affine: bool = field(static=True)
    momentum: float = field(static=True)
    mode: Literal["ema", "batch"] = field(static=True)
    dtype: Any = field(static=True)

    def __init__(
        self,
        input_size: int,
        axis_name: Hashable | Sequence[Hashable],
        eps: float = 1e-5,
        channelwise_affine: bool = True,
        momentum: float = 0.99,
        inference: bool = False,
        dtype: Any = None,
        mode: Literal["ema", "batch", "legacy"] = "legacy",
        *,
        param_dtype: Any = None,
        weight_init: Initializer | None = None,
        bias_init: Initializer | None = None,
        key: PRNGKeyArray | None = None,
    ):
        """**Arguments:**

        - `input_size`: the number of channels.
        - `axis_name`: the name of the batch axis to average over (as given to
          `filter_vmap`), or a sequence of names.
        - `eps`: added to the variance, for numerical stability.
        - `channelwise_affine`: whether to learn a per-channel scale and offset.
        - `momentum`: how slowly the running statistics move, in `[0, 1)`.
        - `inference`: if `True`, normalise by the running statistics and leave the state
          unchanged. Changed by [`larix.nn.inference_mode`][]; overridden per call.
        - `dtype`: the dtype of the result (as in Flax's norm layers): the output is cast to
          it. If `None`, the output has the dtype of the input (`float32` for an integer
          input). Either way the statistics and the affine map are computed in at least
          `float32` (and at least `dtype`). Also the dtype the parameters and running
          statistics are stored in, unless `param_dtype` is given: as in Equinox,
          `dtype=` alone builds the whole layer in that dtype.
        - `mode`: `"ema"` or `"batch"`; see above. Pass it: left out (or given as
          `"legacy"`), it means `"ema"` and warns, as in Equinox.
        - `param_dtype`: the dtype of the stored weight, bias and running statistics
          (keyword-only). Defaults to `dtype`, or to `float32` (`float64` when JAX runs in
          64-bit mode). Flax's mixed precision is `dtype=jnp.bfloat16,
          param_dtype=jnp.float32`.
        - `weight_init`, `bias_init`: initialisers with the signature of
          `jax.nn.initializers`, `init(key, shape, dtype) -> array` (keyword-only),
          called with shape `(input_size,)` and `param_dtype`, and only if
          `channelwise_affine=True`. By default `jax.nn.initializers.ones` and
          `jax.nn.initializers.zeros`, as in Equinox. (The running statistics always
          start at zero.)
        - `key`: a `jax.random` key, split into one key for each initialiser
          (keyword-only). Not needed by the defaults; without it, the initialisers are
          called with `None` (an initialiser that draws random numbers needs it).

        **Raises:** `ValueError` for an unknown `mode`, a `momentum` outside `[0, 1)`, or
        an initialiser that returns an array of another shape or dtype; `TypeError` if
        one fails without a `key`.

        **Warns:** `UserWarning` if `mode` is not given.
        """
        check_size("BatchNorm", "input_size", input_size)
        if mode == "legacy":
            warn_at_caller(
                'BatchNorm: no `mode` was given, so it is "ema" (for compatibility with '
                "older Equinox code), which normalises by the running statistics even in "
                'training. For new code, pass mode="batch" (batch statistics in training, '
                'as in PyTorch and Flax); pass mode="ema" to keep this behaviour without '
                "this warning. See https://github.com/patrick-kidger/equinox/issues/659."
            )
            mode = "ema"
        if mode not in _MODES:
            raise ValueError(f"BatchNorm: `mode` must be 'ema' or 'batch', got {mode!r}.")
        if not 0 <= momentum < 1:
            raise ValueError(f"BatchNorm: `momentum` must be in [0, 1), got {momentum}.")
        stored = param_dtype_of(dtype, param_dtype)
        # No key by default: ones and zeros need none. With one, each initialiser gets its own.
        weight_key, bias_key = (None, None) if key is None else jax.random.split(key)
        shape = (input_size,)
        if channelwise_affine:
            ones_init, zeros_init = jax.nn.initializers.ones, jax.nn.initializers.zeros
            self.weight = init_param(
                "BatchNorm", "weight_init", weight_init, ones_init, weight_key, shape, stored
            )
            self.bias = init_param("BatchNorm", "bias_init", bias_init, zeros_init, bias_key, shape, stored)
        else:
            self.weight = self.bias = None
        zeros = jnp.zeros(shape, stored)
        ema, batch = mode == "ema", mode == "batch"
        self.ema_first_time_index = StateIndex(jnp.array(True)) if ema else None
        self.ema_state_index = StateIndex((zeros, zeros)) if ema else None
        self.batch_counter = StateIndex(jnp.array(0)) if batch else None
        self.batch_state_index = StateIndex((zeros, zeros)) if batch else None
        self.axis_name = axis_name
        self.inference = inference
        self.input_size = input_size
        self.eps = eps
        self.channelwise_affine = channelwise_affine
        self.momentum = momentum
        self.mode = mode
        self.dtype = dtype

    def _batch_statistics(self, x: Any) -> tuple[Any, Any]:
        axes = tuple(range(1, x.ndim))
        try:
            mean = jax.lax.pmean(jnp.mean(x, axes), self.axis_name)
            centred = x - mean.reshape((-1,) + (1,) * len(axes))
            variance = jax.lax.pmean(jnp.mean(centred * jnp.conj(centred), axes), self.axis_name)
            variance = jnp.maximum(variance, 0.0)  # rounding can make a variance slightly negative
        except NameError:
            raise NameError(
                f"BatchNorm(axis_name={self.axis_name!r}) averages its statistics over the "
                f"batch axis named {self.axis_name!r}, but no such axis is mapped. Call the "
                f"model under `larix.filter_vmap(..., axis_name={self.axis_name!r})`, e.g. "
                "`larix.filter_vmap(lambda m, x, s: m(x, s), in_axes=(None, 0, None), "
                f"out_axes=(0, None), axis_name={self.axis_name!r})(model, xs, state)`."
            ) from None
        return mean, variance

    def __call__(
        self,
        x: Float[Array, "input_size ..."],
        state: State,
        *,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
    ) -> tuple[Float[Array, "input_size ..."], State]:
        """**Arguments:**

        - `x`: one example, of shape `(input_size, dim_1, ..., dim_N)`.
        - `state`: the [`larix.nn.State`][] holding the running statistics.
        - `key`: ignored.
        - `inference`: overrides `self.inference` for this call if not `None`.

        **Returns:** `(output, state)`: the normalised array, of the shape of `x` and of
        dtype `dtype` (if `None`, the dtype of `x`, or `float32` for an integer `x`), and
        the updated state (unchanged in inference mode; its running statistics keep their
        stored dtype).

        **Raises:** `NameError` if not run under a vmap with the batch axis name;
        `ValueError` if `x` has no channel axis of size `input_size`.
        """
        shape = jnp.shape(x)
        if not shape or shape[0] != self.input_size:
            raise shape_error(
                f"BatchNorm(input_size={self.input_size}, ...)", f"({self.input_size}, ...)", shape
            )
        if inference is None:
            inference = self.inference
        # Computed in at least float32 (and at least `dtype`); without `dtype`, the output
        # has the input's dtype, or float32 for integer input (raw pixel values, say), as
        # in Equinox.
        x_dtype = jnp.result_type(x)
        if self.dtype is None:
            compute_dtype = at_least_float32(x_dtype)
            dtype = x_dtype if jnp.issubdtype(x_dtype, jnp.inexact) else compute_dtype
        else:
            # Our choice, not an implicit promotion of the user's arrays.
            with jax.numpy_dtype_promotion("standard"):
                compute_dtype = at_least_float32(jnp.promote_types(x_dtype, self.dtype))
            dtype = jnp.dtype(self.dtype)
        x = jnp.asarray(x, compute_dtype)
        m = self.momentum
        if self.mode == "ema":
            running_mean, running_var = state.get(self.ema_state_index)
            if inference:
                mean, variance = running_mean, running_var
            else:
                batch_mean, batch_var = self._batch_statistics(x)
                first = state.get(self.ema_first_time_index)
                mean = _promoted(partial(jnp.where, first), batch_mean, _blend(m, running_mean, batch_mean))
                variance = _promoted(partial(jnp.where, first), batch_var, _blend(m, running_var, batch_var))
                mean, variance = mean.astype(running_mean.dtype), variance.astype(running_var.dtype)
                state = state.set(self.ema_first_time_index, jnp.array(False))
                state = state.set(self.ema_state_index, (mean, variance))
        else:
            running_mean, running_var = state.get(self.batch_state_index)
            steps = state.get(self.batch_counter)
            if inference:
                # Bias correction: the running averages start at zero. Before any training
                # step, normalise by mean 0 and variance 1.
                correction = jnp.where(steps > 0, 1 - m**steps, 1)
                mean = running_mean / correction
                variance = jnp.where(steps > 0, running_var / correction, 1)
            else:
                mean, variance = self._batch_statistics(x)
                state = state.set(self.batch_counter, steps + 1)
                state = state.set(
                    self.batch_state_index,
                    (
                        _blend(m, running_mean, mean).astype(running_mean.dtype),
                        _blend(m, running_var, variance).astype(running_var.dtype),
                    ),
                )
        broadcast = (-1,) + (1,) * (x.ndim - 1)
        # Divided by the square root, not multiplied by `rsqrt`: the two round differently,
        # and this is Equinox's order, so that float32 results agree with it to the bit.
        # The statistics and parameters may be in their stored dtype: each operation is in
        # the common type of its operands, as standard promotion would give.
        centred = _promoted(jnp.subtract, x, mean.reshape(broadcast))
        y = _promoted(jnp.divide, centred, jnp.sqrt(variance.reshape(broadcast) + self.eps))
        if self.channelwise_affine:
            y = _promoted(
                jnp.add,
                _promoted(jnp.multiply, y, self.weight.reshape(broadcast)),
                self.bias.reshape(broadcast),
            )
        return y.astype(dtype), state
