"""PyTorch state dicts: `from_torch`, `to_torch` and `plan_torch`.

PyTorch names an array by its module path and field, as larix does (`layers.0.weight`),
and most layouts agree: `Linear`, `Conv`, `LayerNorm`, `GroupNorm`, `RMSNorm` and
`Embedding` arrays are copied as they are (a conv bias is reshaped from `(out,)` to
`(out, 1, 1)`). The rest is converted here: `ConvTranspose` kernels, `BatchNorm` running
statistics, `MultiheadAttention` projections, `GRUCell` and `LSTMCell` biases, `PReLU`.

torch is never imported: the arrays are NumPy arrays (for instance from
`safetensors.numpy.load_file`), or tensors, converted with `.detach().cpu().numpy()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .._state_dict import Conversion, Rename, StateDictPlan
from ..nn._activations import PReLU
from ..nn._attention import MultiheadAttention
from ..nn._batch_norm import BatchNorm
from ..nn._conv import Conv
from ..nn._conv_transpose import ConvTranspose
from ..nn._rnn import GRUCell, LSTMCell
from ._common import (
    Convention,
    LayerKeys,
    batch_norm_keys,
    batch_norm_state,
    batch_statistics,
    export,
    load_into,
    plan_for,
    reshaped,
    split_rows,
)

__all__ = ["from_torch", "plan_torch", "to_torch"]


def _conv(keys: LayerKeys, layer: Conv) -> list[Conversion]:
    if layer.bias is None:
        return []
    return [Conversion((keys("bias"),), (keys("bias"),), *reshaped(layer.bias.shape, (layer.out_channels,)))]


def _conv_transpose(keys: LayerKeys, layer: ConvTranspose) -> list[Conversion]:
    # torch: (in, out // groups, *kernel), the kernel of the Conv it transposes; larix:
    # (out, in // groups, *kernel), flipped (see larix.nn.ConvTranspose).
    g, n = layer.groups, layer.num_spatial_dims
    spatial = tuple(range(2, n + 2))

    def to_foreign(w: Any) -> tuple[Any]:
        out, in_per_group, *kernel = w.shape
        blocks = np.flip(w, spatial).reshape(g, out // g, in_per_group, *kernel)
        return (blocks.swapaxes(1, 2).reshape(in_per_group * g, out // g, *kernel),)

    def from_foreign(w: Any) -> tuple[Any]:
        in_, out_per_group, *kernel = w.shape
        blocks = w.reshape(g, in_ // g, out_per_group, *kernel).swapaxes(1, 2)
        return (np.flip(blocks.reshape(out_per_group * g, in_ // g, *kernel), spatial),)

    return [Conversion((keys("weight"),), (keys("weight"),), to_foreign, from_foreign), *_conv(keys, layer)]


def _batch_norm(keys: LayerKeys, layer: BatchNorm) -> list[Conversion]:
    def to_foreign(mean: Any, var: Any, extra: Any) -> tuple[Any, ...]:
        steps = int(extra) if layer.mode == "batch" else int(not extra)
        return (*batch_statistics(layer, mean, var, extra), np.asarray(steps, np.int64))

    def from_foreign(mean: Any, var: Any, num_batches_tracked: Any) -> tuple[Any, ...]:
        if layer.mode == "ema":  # not trained yet: the first training step sets the statistics
            return mean, var, np.asarray(int(num_batches_tracked) == 0)
        return batch_norm_state(layer, mean, var)

    foreign = (keys("running_mean"), keys("running_var"), keys("num_batches_tracked"))
    return [Conversion(foreign, batch_norm_keys(keys, layer), to_foreign, from_foreign)]


def _attention(keys: LayerKeys, layer: MultiheadAttention) -> list[Conversion]:
    # torch.nn.MultiheadAttention: one (3E, E) `in_proj_weight` when the key and value
    # sizes equal the query size, else `q_proj_weight`, `k_proj_weight`, `v_proj_weight`;
    # one `in_proj_bias` for all three, or none.
    projections = ("query_proj", "key_proj", "value_proj")
    weights = tuple(keys(p, "weight") for p in projections)
    if layer.key_size == layer.value_size == layer.query_size:
        conversions = [Conversion((keys("in_proj_weight"),), weights, *_stacked(3))]
    else:
        names = ("q_proj_weight", "k_proj_weight", "v_proj_weight")
        conversions = [Conversion((keys(n),), (w,)) for n, w in zip(names, weights)]
    biases = (layer.use_query_bias, layer.use_key_bias, layer.use_value_bias)
    if all(biases):
        conversions.append(Conversion((keys("in_proj_bias"),), tuple(keys(p, "bias") for p in projections), *_stacked(3)))
    elif any(biases):
        raise ValueError(
            "larix.interop: torch.nn.MultiheadAttention has biases on all of the query, key and "
            f"value projections or on none, but the MultiheadAttention at '{keys.path}' has "
            f"use_query_bias, use_key_bias, use_value_bias = {biases}."
        )
    conversions.append(Conversion((keys("out_proj", "weight"),), (keys("output_proj", "weight"),)))
    if layer.use_output_bias:
        conversions.append(Conversion((keys("out_proj", "bias"),), (keys("output_proj", "bias"),)))
    return conversions


def _stacked(parts: int) -> tuple[Any, Any]:
    to_foreign, from_foreign = split_rows(parts)
    return from_foreign, to_foreign  # several larix arrays <-> one foreign array


def _gru(keys: LayerKeys, layer: GRUCell) -> list[Conversion]:
    # torch: bias_ih and bias_hh, each (3H,); larix: their sum for the reset and update
    # gates, `bias` = b_ih + [b_hr, b_hz, 0], and the new-state hidden bias `bias_n` = b_hn.
    conversions = [Conversion((keys(n),), (keys(n),)) for n in ("weight_ih", "weight_hh")]
    if layer.use_bias:
        h = layer.hidden_size

        def to_foreign(bias: Any, bias_n: Any) -> tuple[Any, Any]:
            return bias, np.concatenate([np.zeros(2 * h, bias.dtype), bias_n])

        def from_foreign(bias_ih: Any, bias_hh: Any) -> tuple[Any, Any]:
            return bias_ih + np.concatenate([bias_hh[: 2 * h], np.zeros(h, bias_hh.dtype)]), bias_hh[2 * h :]

        conversions.append(Conversion((keys("bias_ih"), keys("bias_hh")), (keys("bias"), keys("bias_n")), to_foreign, from_foreign))
    return conversions


def _lstm(keys: LayerKeys, layer: LSTMCell) -> list[Conversion]:
    # larix keeps one bias, torch two that are added: bias = bias_ih + bias_hh.
    conversions = [Conversion((keys(n),), (keys(n),)) for n in ("weight_ih", "weight_hh")]
    if layer.use_bias:
        conversions.append(
            Conversion(
                (keys("bias_ih"), keys("bias_hh")),
                (keys("bias"),),
                lambda bias: (bias, np.zeros_like(bias)),
                lambda bias_ih, bias_hh: (bias_ih + bias_hh,),
            )
        )
    return conversions


def _prelu(keys: LayerKeys, layer: PReLU) -> list[Conversion]:
    shape = np.shape(layer.negative_slope)
    return [Conversion((keys("weight"),), (keys("negative_slope"),), *reshaped(shape, (int(np.prod(shape)),)))]


_TORCH = Convention(
    [
        (Conv, _conv),
        (ConvTranspose, _conv_transpose),
        (BatchNorm, _batch_norm),
        (MultiheadAttention, _attention),
        (GRUCell, _gru),
        (LSTMCell, _lstm),
        (PReLU, _prelu),
    ],
    name=lambda key: key,
)


def from_torch(tree: Any, state_dict: Mapping[str, Any], *, strict: bool = True, rename: Rename = None) -> Any:
    """Load a PyTorch `state_dict` into a larix model.

    The keys are PyTorch's (`"layers.0.weight"`, `"bn.running_mean"`,
    `"attention.in_proj_weight"`), matched to the larix model's fields with PyTorch's
    names and layouts; `rename` maps names that differ. Everything is checked first: ONE
    `ValueError` names every missing, unexpected or mismatched entry.

    What is converted, and how:

    - `Conv*d`: the same `(out, in, *kernel)` weight; the bias `(out,)` becomes `(out, 1, ...)`.
    - `ConvTranspose*d`: PyTorch's `(in, out // groups, *kernel)` weight is regrouped and
      flipped into larix's `(out, in // groups, *kernel)`.
    - `BatchNorm*d`: `weight`, `bias`; `running_mean` and `running_var` go to the state
      (so pass `(model, state)`); `num_batches_tracked` is read and not used. PyTorch's
      `momentum=0.1` is larix's `momentum=0.9`.
    - `MultiheadAttention`: `in_proj_weight` (or `q/k/v_proj_weight`) and `in_proj_bias`
      are split into the query, key and value projections; `out_proj` is `output_proj`.
    - `GRUCell`, `LSTMCell`: `weight_ih`, `weight_hh`, and the two biases `bias_ih`,
      `bias_hh` are folded into larix's (for an `nn.LSTM`/`nn.GRU` layer, rename
      `weight_ih_l0` to `weight_ih`, and so on).
    - `PReLU`: `weight` is `negative_slope`.
    - Everything else (`Linear`, `LayerNorm`, `GroupNorm`, `Embedding`, ...): the same key
      and layout.

    **Arguments:**

    - `tree`: the larix model, or the pair `(model, state)` if it has `BatchNorm` layers.
    - `state_dict`: a mapping from PyTorch's keys to tensors or NumPy arrays.
    - `strict`: keyword-only. `False`: load what matches, warn `SkippedKeysWarning`
      naming what was left out.
    - `rename`: keyword-only; applied to the keys of `state_dict` first: a mapping, a
      function, or a list of `(regex, replacement)` rules (as in `larix.io.load_state_dict`).

    **Returns:** `tree` with the weights loaded: a model, or a `(model, state)` pair.

    **Raises:** `ValueError` listing every mismatch; `TypeError` if the model has
    `BatchNorm` layers but no state was passed.

    !!! example
        ```python
        >>> import jax, numpy as np, larix, larix.interop
        >>> torch_weights = {"0.weight": np.ones((4, 2), np.float32), "0.bias": np.zeros(4, np.float32)}
        >>> linear = larix.nn.Linear(2, 4, key=jax.random.key(0))
        >>> linear = larix.interop.from_torch(linear, torch_weights, rename=[(r"^0\\.", "")])
        >>> linear.weight.shape
        (4, 2)

        ```
    """
    return load_into(
        tree, state_dict, _TORCH, strict=strict, rename=rename, who="larix.interop.from_torch",
        planner="larix.interop.plan_torch(model, state_dict, rename=...)",
    )  # fmt: skip


def to_torch(tree: Any) -> dict[str, np.ndarray]:
    """Export a larix model as a PyTorch state dict of NumPy arrays.

    The inverse of [`from_torch`][larix.interop.from_torch]. Load it into the PyTorch
    model with `module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})`.
    A `BatchNorm`'s statistics are exported as PyTorch uses them, and its
    `num_batches_tracked` is larix's step count (mode `"batch"`) or 0 / 1 (mode `"ema"`,
    which counts no steps). A `GRUCell` or `LSTMCell` bias goes to `bias_ih` (with
    `bias_hh` holding only the GRU's new-state bias), which computes the same function.

    **Arguments:**

    - `tree`: the larix model, or the pair `(model, state)` if it has `BatchNorm` layers.

    **Returns:** a `dict` from PyTorch's keys to NumPy arrays (copies).
    """
    return export(tree, _TORCH, "larix.interop.to_torch")


def plan_torch(tree: Any, state_dict: Mapping[str, Any], *, rename: Rename = None) -> StateDictPlan:
    """A dry run of [`from_torch`][larix.interop.from_torch]: which PyTorch key goes to
    which larix key, with both shapes, before anything is loaded.

    **Arguments:** as `from_torch` (without `strict`).

    **Returns:** a `StateDictPlan`, shown as a table.

    !!! example
        ```python
        >>> import jax, numpy as np, larix, larix.interop
        >>> attention = larix.nn.MultiheadAttention(2, 4, key=jax.random.key(0))
        >>> torch_weights = {
        ...     "attn.in_proj_weight": np.zeros((12, 4), np.float32),
        ...     "attn.out_proj.weight": np.zeros((4, 4), np.float32),
        ... }
        >>> larix.interop.plan_torch(attention, torch_weights, rename=[(r"^attn\\.", "")])
        foreign key           foreign shape  larix key            larix shape  status
        attn.in_proj_weight   f32[12,4]      query_proj.weight    f32[4,4]     ok
                                             key_proj.weight      f32[4,4]
                                             value_proj.weight    f32[4,4]
        attn.out_proj.weight  f32[4,4]       output_proj.weight   f32[4,4]     ok

        ```
    """
    return plan_for(tree, state_dict, _TORCH, rename=rename, who="larix.interop.plan_torch")
