"""Haiku weights: `from_haiku`, `to_haiku` and `plan_haiku`.

Haiku keeps parameters as `{module name: {parameter name: array}}`: `linear/w`,
`linear/b`, `conv2_d/w`. Its layouts are input-first like Flax's: a Linear `w` is
`(in, out)`, a Conv `w` `(*kernel, in, out)`, a ConvTranspose `w` `(*kernel, out, in)`.
Norms have `scale` and `offset`. A `BatchNorm`'s running averages are in the state, as
exponential moving averages with a counter and Adam's bias correction: exactly larix's
`BatchNorm(mode="batch")`, whose state they become as they are.

Names: a larix field path becomes a Haiku module path, list items named `layers_0`; a
layer at the root of the model gets Haiku's default name (`linear`, `conv2_d`, ...).
Map other names with `rename` (`hk.nets.MLP`'s layers are `mlp/~/linear_0`, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .._state_dict import Conversion, Rename, StateDictPlan
from ..nn._attention import MultiheadAttention
from ..nn._batch_norm import BatchNorm
from ..nn._conv import Conv
from ..nn._conv_transpose import ConvTranspose
from ..nn._embedding import Embedding
from ..nn._linear import Linear
from ..nn._normalisation import GroupNorm, LayerNorm, RMSNorm
from ..nn._rnn import GRUCell, LSTMCell
from ._common import (
    CONVERGED_STEPS,
    Convention,
    LayerKeys,
    batch_norm_keys,
    conv_kernel,
    export,
    join,
    load_into,
    module_path,
    plan_for,
    reorder_blocks,
    require,
    reshaped,
    transpose,
)

__all__ = ["from_haiku", "plan_haiku", "to_haiku"]

# Haiku's default module names, for a layer at the root of the larix model.
_DEFAULT_NAMES = {
    Linear: "linear",
    LayerNorm: "layer_norm",
    GroupNorm: "group_norm",
    RMSNorm: "rms_norm",
    BatchNorm: "batch_norm",
    Embedding: "embed",
    MultiheadAttention: "multi_head_attention",
    LSTMCell: "lstm",
}
_STATE_MODULES = ("/~/mean_ema", "/~/var_ema")  # where hk.BatchNorm keeps its statistics


def _module(keys: LayerKeys) -> str:
    if keys.path:
        return module_path(keys.path)
    layer = keys.layer
    if isinstance(layer, (Conv, ConvTranspose)):
        suffix = "_transpose" if isinstance(layer, ConvTranspose) else ""
        return f"conv{layer.num_spatial_dims}_d{suffix}"
    return next(name for t, name in _DEFAULT_NAMES.items() if isinstance(layer, t))


def _name(keys: LayerKeys, *names: str) -> str:
    return join(_module(keys), *names, separator="/")


def _to_channels(x: Any) -> Any:
    # hk.BatchNorm's parameters and statistics have the rank of its input, with every axis
    # but the channels of size 1: (1, 1, 1, C) after a 2-d conv. Accept any such shape.
    return x.reshape(-1) if x.ndim > 1 and x.size == max(x.shape) else x


def _linear(keys: LayerKeys, layer: Linear) -> list[Conversion]:
    conversions = [Conversion((_name(keys, "w"),), (keys("weight"),), *transpose())]
    if layer.bias is not None:
        conversions.append(Conversion((_name(keys, "b"),), (keys("bias"),)))
    return conversions


def _conv(keys: LayerKeys, layer: Conv | ConvTranspose) -> list[Conversion]:
    transposed = isinstance(layer, ConvTranspose)
    if transposed and layer.groups != 1:
        raise ValueError(
            f"larix.interop: Haiku's ConvTranspose has no groups, but the ConvTranspose at "
            f"'{keys.path}' has groups={layer.groups}."
        )
    # A Haiku ConvTranspose kernel is (*kernel, out, in), unflipped: larix's orientation.
    kernel = conv_kernel(layer.num_spatial_dims, out_last=not transposed)
    conversions = [Conversion((_name(keys, "w"),), (keys("weight"),), *kernel)]
    if layer.bias is not None:
        bias = reshaped(layer.bias.shape, (layer.out_channels,))
        conversions.append(Conversion((_name(keys, "b"),), (keys("bias"),), *bias))
    return conversions


def _norm(keys: LayerKeys, layer: Any, prepare: Any = None) -> list[Conversion]:
    conversions = []
    for field, name in (("weight", "scale"), ("bias", "offset")):
        if getattr(layer, field, None) is not None:
            conversions.append(Conversion((_name(keys, name),), (keys(field),), prepare=prepare))
    return conversions


def _batch_norm(keys: LayerKeys, layer: BatchNorm) -> list[Conversion]:
    m = layer.momentum
    names = tuple(_name(keys, "~", ema, part) for ema in ("mean_ema", "var_ema") for part in ("hidden", "average", "counter"))

    def average(hidden: Any, steps: int) -> Any:
        return (hidden / (1 - m**steps)).astype(hidden.dtype) if steps > 0 else np.zeros_like(hidden)

    if layer.mode == "batch":
        # Haiku's moving averages are larix's: `hidden` the running average, `counter` the
        # steps, `average` the bias-corrected value that inference uses.
        def to_foreign(mean: Any, var: Any, steps: Any) -> tuple[Any, ...]:
            counter = np.asarray(steps, np.int32)
            return mean, average(mean, int(steps)), counter, var, average(var, int(steps)), counter

        def from_foreign(mean: Any, mean_average: Any, counter: Any, var: Any, var_average: Any, _: Any) -> tuple[Any, ...]:
            return mean, var, counter
    else:
        # mode="ema" normalises by the running statistics themselves: Haiku's `average`.
        def to_foreign(mean: Any, var: Any, first: Any) -> tuple[Any, ...]:
            counter = np.asarray(CONVERGED_STEPS, np.int32)
            return mean, mean, counter, var, var, counter

        def from_foreign(mean: Any, mean_average: Any, counter: Any, var: Any, var_average: Any, _: Any) -> tuple[Any, ...]:
            return mean_average, var_average, np.asarray(False)

    statistics = Conversion(names, batch_norm_keys(keys, layer), to_foreign, from_foreign, _to_channels)
    return [*_norm(keys, layer, _to_channels), statistics]


def _embedding(keys: LayerKeys, layer: Embedding) -> list[Conversion]:
    return [Conversion((_name(keys, "embeddings"),), (keys("weight"),))]


def _attention(keys: LayerKeys, layer: MultiheadAttention) -> list[Conversion]:
    conversions = []
    for name, field in (("query", "query_proj"), ("key", "key_proj"), ("value", "value_proj"), ("linear", "output_proj")):
        projection = getattr(layer, field)
        conversions.append(Conversion((_name(keys, name, "w"),), (keys(field, "weight"),), *transpose()))
        if projection.bias is not None:
            conversions.append(Conversion((_name(keys, name, "b"),), (keys(field, "bias"),)))
    return conversions


# hk.LSTM orders its gates i, g, f, o; larix (and PyTorch) i, f, g, o. The order is its
# own inverse.
_GATES = (0, 2, 1, 3)


def _lstm(keys: LayerKeys, layer: LSTMCell) -> list[Conversion]:
    # hk.LSTM: one Linear `lstm/linear` on [x, h], w (in + H, 4H), gates i, g, f, o, and
    # 1 added to the forget gate's input (larix's bias holds it).
    if not layer.use_bias:
        raise ValueError(
            f"larix.interop: hk.LSTM always has a bias, but the LSTMCell at '{keys.path}' has "
            "use_bias=False: build it with use_bias=True."
        )
    n_in, h = layer.input_size, layer.hidden_size
    forget = np.zeros(4 * h)
    forget[h : 2 * h] = 1

    def to_foreign(weight_ih: Any, weight_hh: Any, bias: Any) -> tuple[Any, Any]:
        w = np.concatenate([weight_ih.T, weight_hh.T])
        return reorder_blocks(w, _GATES, axis=1), reorder_blocks(bias - forget.astype(bias.dtype), _GATES)

    def from_foreign(w: Any, b: Any) -> tuple[Any, Any, Any]:
        w = reorder_blocks(w, _GATES, axis=1)
        return w[:n_in].T, w[n_in:].T, reorder_blocks(b, _GATES) + forget.astype(b.dtype)

    names = (_name(keys, "linear", "w"), _name(keys, "linear", "b"))
    return [Conversion(names, (keys("weight_ih"), keys("weight_hh"), keys("bias")), to_foreign, from_foreign)]


def _gru(keys: LayerKeys, layer: GRUCell) -> list[Conversion]:
    raise ValueError(
        f"larix.interop: hk.GRU computes another function than larix's GRUCell (at "
        f"'{keys.path or '<the root>'}'): it applies the reset gate before the hidden weights, "
        "W (r * h), where larix (like PyTorch and Flax) computes r * (W h + b). No weights "
        "of one give the other."
    )


_HAIKU = Convention(
    [
        (Linear, _linear),
        (Conv, _conv),
        (ConvTranspose, _conv),
        (LayerNorm, _norm),
        (GroupNorm, _norm),
        (RMSNorm, _norm),
        (BatchNorm, _batch_norm),
        (Embedding, _embedding),
        (MultiheadAttention, _attention),
        (LSTMCell, _lstm),
        (GRUCell, _gru),
    ],
    # Any other array: its field in the module of its parent path (`~` at the root).
    name=lambda key: join(module_path(key.rpartition(".")[0]) or "~", key.rpartition(".")[2], separator="/"),
)


def _flat(params: Mapping[str, Any], state: Mapping[str, Any] | None, who: str) -> dict[str, Any]:
    require("haiku", "haiku", who)
    flat: dict[str, Any] = {}
    for part, name in ((params, "params"), (state or {}, "state")):
        if not isinstance(part, Mapping):
            raise TypeError(f"{who}: `{name}` must be Haiku's {{module: {{name: array}}}} mapping, got {type(part).__name__}.")
        for module, entries in part.items():
            if not isinstance(entries, Mapping):
                raise TypeError(
                    f"{who}: `{name}[{module!r}]` is a {type(entries).__name__}; Haiku's {name} map "
                    "module names to {parameter name: array} mappings."
                )
            for entry, value in entries.items():
                flat[f"{module}/{entry}"] = value
    return flat


def from_haiku(
    tree: Any,
    params: Mapping[str, Any],
    state: Mapping[str, Any] | None = None,
    *,
    strict: bool = True,
    rename: Rename = None,
) -> Any:
    """Load Haiku parameters (and state) into a larix model.

    The entries are named `module/parameter` (`"linear/w"`, and for a `BatchNorm`'s
    statistics `"batch_norm/~/mean_ema/hidden"`): those are the names for `rename` and in
    errors. `hk.BatchNorm`'s `decay_rate` is larix's `momentum`; its parameters and
    statistics of shape `(1, ..., 1, C)` are read as `(C,)`. `hk.LSTM`'s single Linear is
    split into `weight_ih` and `weight_hh` (its gate order and forget bias converted).
    `hk.GRU` computes another function than larix's `GRUCell` and is refused.

    **Arguments:**

    - `tree`: the larix model, or the pair `(model, state)` if it has `BatchNorm` layers.
    - `params`: Haiku's parameters, as `init` returns them.
    - `state`: Haiku's state (from `transform_with_state`), for `BatchNorm` statistics.
    - `strict`, `rename`: keyword-only; as in [`from_torch`][larix.interop.from_torch].

    **Returns:** `tree` with the weights loaded: a model, or a `(model, state)` pair.

    **Raises:** `ValueError` listing every mismatch; `ImportError` if dm-haiku is not
    installed.

    !!! example
        ```python
        >>> import haiku as hk, jax, jax.numpy as jnp, larix, larix.interop
        >>> forward = hk.without_apply_rng(hk.transform(lambda x: hk.Linear(3)(x)))
        >>> params = forward.init(jax.random.key(0), jnp.ones(2))
        >>> linear = larix.nn.Linear(2, 3, key=jax.random.key(1))
        >>> linear = larix.interop.from_haiku(linear, params)
        >>> x = jnp.arange(2.0)
        >>> bool(jnp.allclose(linear(x), forward.apply(params, x)))
        True

        ```
    """
    who = "larix.interop.from_haiku"
    flat = _flat(params, state, who)
    return load_into(
        tree, flat, _HAIKU, strict=strict, rename=rename, who=who,
        planner="larix.interop.plan_haiku(model, params, state, rename=...)",
    )  # fmt: skip


def to_haiku(tree: Any) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Export a larix model as Haiku `(params, state)`, the inverse of
    [`from_haiku`][larix.interop.from_haiku].

    A `BatchNorm`'s parameters and statistics are exported with shape `(C,)`: `hk.BatchNorm`
    wants the rank of its input, `(1, 1, 1, C)` after a 2-d conv, so reshape them for it.

    **Arguments:**

    - `tree`: the larix model, or the pair `(model, state)` if it has `BatchNorm` layers.

    **Returns:** `(params, state)`, Haiku's `{module: {name: array}}` dicts of JAX arrays;
    `state` is empty without `BatchNorm` layers.

    **Raises:** `ValueError` for layers Haiku has no counterpart of; `ImportError` if
    dm-haiku is not installed.
    """
    import jax.numpy as jnp

    who = "larix.interop.to_haiku"
    require("haiku", "haiku", who)
    params: dict[str, dict[str, Any]] = {}
    state: dict[str, dict[str, Any]] = {}
    for key, value in export(tree, _HAIKU, who).items():
        module, _, name = key.rpartition("/")
        target = state if module.endswith(_STATE_MODULES) else params
        target.setdefault(module, {})[name] = jnp.asarray(value)
    return params, state


def plan_haiku(
    tree: Any, params: Mapping[str, Any], state: Mapping[str, Any] | None = None, *, rename: Rename = None
) -> StateDictPlan:
    """A dry run of [`from_haiku`][larix.interop.from_haiku], shown as a table.

    **Arguments:** as `from_haiku` (without `strict`).

    **Returns:** a `StateDictPlan`.
    """
    who = "larix.interop.plan_haiku"
    return plan_for(tree, _flat(params, state, who), _HAIKU, rename=rename, who=who)
