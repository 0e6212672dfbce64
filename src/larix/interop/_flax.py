"""Flax weights: linen variables (`from_linen`, ...) and NNX state (`from_nnx`, ...).

Flax stores kernels input-first: a Dense kernel is `(in, out)` and a Conv kernel
`(*kernel, in, out)`, where larix (like PyTorch) stores `(out, in)` and `(out, in, *kernel)`.
Norm layers have a `scale` where larix has a `weight`, and batch statistics are `mean`
and `var` (in linen's `batch_stats` collection, or in the NNX module itself).

Names: a larix field path becomes a Flax module path. In linen, list items are named
`layers_0`, as linen names the submodules that `setup` assigns in a list (compact modules
are named by class instead, `Dense_0`: map them with `rename`). In NNX, the path is the
attribute path (`layers/0`), as `nnx.state` gives it.
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
    Convention,
    LayerKeys,
    batch_norm_keys,
    batch_norm_state,
    batch_statistics,
    conv_kernel,
    export,
    join,
    load_into,
    module_path,
    plan_for,
    require,
    reshaped,
    split_rows,
    split_transposed,
    transpose,
)

__all__ = ["from_linen", "from_nnx", "plan_linen", "plan_nnx", "to_linen", "to_nnx"]


class _Names:
    """Flax's key of a parameter or statistic of the layer at a larix path."""

    def __init__(self, nnx: bool):
        self.nnx = nnx

    def param(self, keys: LayerKeys, *names: str) -> str:
        if self.nnx:
            return join(keys.path.replace(".", "/"), *names, separator="/")
        return join("params", module_path(keys.path), *names, separator="/")

    def stat(self, keys: LayerKeys, name: str) -> str:
        if self.nnx:
            return self.param(keys, name)
        return join("batch_stats", module_path(keys.path), name, separator="/")


def _bias(names: _Names, keys: LayerKeys, layer: Any, field: str = "bias", name: str = "bias") -> list[Conversion]:
    if getattr(layer, field) is None:
        return []
    return [Conversion((names.param(keys, name),), (keys(field),))]


def _handlers(names: _Names) -> list[tuple[type, Any]]:
    def linear(keys: LayerKeys, layer: Linear) -> list[Conversion]:
        return [Conversion((names.param(keys, "kernel"),), (keys("weight"),), *transpose()), *_bias(names, keys, layer)]

    def conv(keys: LayerKeys, layer: Conv | ConvTranspose) -> list[Conversion]:
        if isinstance(layer, ConvTranspose) and layer.groups != 1:
            raise ValueError(
                f"larix.interop: Flax's ConvTranspose has no groups, but the ConvTranspose at "
                f"'{keys.path}' has groups={layer.groups}."
            )
        # Flax's ConvTranspose (with transpose_kernel=False, its default) has the larix
        # kernel's orientation, in Flax's (*kernel, in, out) layout, like its Conv.
        kernel = Conversion((names.param(keys, "kernel"),), (keys("weight"),), *conv_kernel(layer.num_spatial_dims))
        if layer.bias is None:
            return [kernel]
        bias = reshaped(layer.bias.shape, (layer.out_channels,))
        return [kernel, Conversion((names.param(keys, "bias"),), (keys("bias"),), *bias)]

    def norm(keys: LayerKeys, layer: LayerNorm | GroupNorm | RMSNorm) -> list[Conversion]:
        return [*_bias(names, keys, layer, "weight", "scale"), *_bias(names, keys, layer)]

    def batch_norm(keys: LayerKeys, layer: BatchNorm) -> list[Conversion]:
        statistics = Conversion(
            (names.stat(keys, "mean"), names.stat(keys, "var")),
            batch_norm_keys(keys, layer),
            lambda mean, var, extra: batch_statistics(layer, mean, var, extra),
            lambda mean, var: batch_norm_state(layer, mean, var),
        )
        return [*norm(keys, layer), statistics]

    def embedding(keys: LayerKeys, layer: Embedding) -> list[Conversion]:
        return [Conversion((names.param(keys, "embedding"),), (keys("weight"),))]

    def attention(keys: LayerKeys, layer: MultiheadAttention) -> list[Conversion]:
        # Flax: kernels (in, heads, head size) and biases (heads, head size) for the
        # query, key and value; the output kernel is (heads, head size, out).
        h = layer.num_heads
        conversions = []
        for flax_name, field, use_bias in (
            ("query", "query_proj", layer.use_query_bias),
            ("key", "key_proj", layer.use_key_bias),
            ("value", "value_proj", layer.use_value_bias),
        ):
            conversions.append(
                Conversion(
                    (names.param(keys, flax_name, "kernel"),),
                    (keys(field, "weight"),),
                    lambda w: (w.T.reshape(w.shape[1], h, -1),),
                    lambda k: (k.reshape(k.shape[0], -1).T,),
                )
            )
            if use_bias:
                size = getattr(layer, field).out_features
                bias = reshaped((size,), (h, size // h))
                conversions.append(Conversion((names.param(keys, flax_name, "bias"),), (keys(field, "bias"),), *bias))
        conversions.append(
            Conversion(
                (names.param(keys, "out", "kernel"),),
                (keys("output_proj", "weight"),),
                lambda w: (w.T.reshape(h, -1, w.shape[0]),),
                lambda k: (k.reshape(-1, k.shape[-1]).T,),
            )
        )
        if layer.use_output_bias:
            conversions.append(Conversion((names.param(keys, "out", "bias"),), (keys("output_proj", "bias"),)))
        return conversions

    def gru(keys: LayerKeys, layer: GRUCell) -> list[Conversion]:
        _needs_bias(keys, layer, "GRUCell")
        if names.nnx:
            return _nnx_gru(names, keys, layer)
        # linen: r, z and n each have an input Dense `i*` (with a bias) and a hidden Dense
        # `h*` (only `hn` with a bias): the larix layout, one block per Dense.
        param = names.param
        return [
            Conversion(tuple(param(keys, g, "kernel") for g in ("ir", "iz", "in")), (keys("weight_ih"),), *split_transposed(3)),
            Conversion(tuple(param(keys, g, "kernel") for g in ("hr", "hz", "hn")), (keys("weight_hh"),), *split_transposed(3)),
            Conversion(tuple(param(keys, g, "bias") for g in ("ir", "iz", "in")), (keys("bias"),), *split_rows(3)),
            Conversion((param(keys, "hn", "bias"),), (keys("bias_n"),)),
        ]

    def lstm(keys: LayerKeys, layer: LSTMCell) -> list[Conversion]:
        _needs_bias(keys, layer, "LSTMCell")
        # Gates i, f, g, o as in larix; input Denses `i*` without bias, hidden `h*` with.
        inputs = ("ii", "if_" if names.nnx else "if", "ig", "io")
        hidden = ("hi", "hf", "hg", "ho")
        param = names.param
        return [
            Conversion(tuple(param(keys, g, "kernel") for g in inputs), (keys("weight_ih"),), *split_transposed(4)),
            Conversion(tuple(param(keys, g, "kernel") for g in hidden), (keys("weight_hh"),), *split_transposed(4)),
            Conversion(tuple(param(keys, g, "bias") for g in hidden), (keys("bias"),), *split_rows(4)),
        ]

    return [
        (Linear, linear),
        (Conv, conv),
        (ConvTranspose, conv),
        (LayerNorm, norm),
        (GroupNorm, norm),
        (RMSNorm, norm),
        (BatchNorm, batch_norm),
        (Embedding, embedding),
        (MultiheadAttention, attention),
        (GRUCell, gru),
        (LSTMCell, lstm),
    ]


def _needs_bias(keys: LayerKeys, layer: GRUCell | LSTMCell, name: str) -> None:
    if not layer.use_bias:
        raise ValueError(
            f"larix.interop: Flax's {name} always has biases, but the {name} at '{keys.path}' has "
            "use_bias=False: build it with use_bias=True."
        )


def _nnx_gru(names: _Names, keys: LayerKeys, layer: GRUCell) -> list[Conversion]:
    # nnx.GRUCell: one input Dense `dense_i` (with a bias) and one hidden Dense `dense_h`
    # (without): it has no new-state hidden bias, so larix's `bias_n` is zero.
    h = layer.hidden_size

    def no_bias_n(bias_n: Any) -> tuple[()]:
        if np.any(bias_n):
            raise ValueError(
                f"larix.interop.to_nnx: nnx.GRUCell has no hidden bias in its new-state gate, "
                f"but the GRUCell at '{keys.path}' has a non-zero `bias_n`; it cannot be exported."
            )
        return ()

    return [
        Conversion((names.param(keys, "dense_i", "kernel"),), (keys("weight_ih"),), *transpose()),
        Conversion((names.param(keys, "dense_i", "bias"),), (keys("bias"),)),
        Conversion((names.param(keys, "dense_h", "kernel"),), (keys("weight_hh"),), *transpose()),
        Conversion((), (keys("bias_n"),), no_bias_n, lambda: (np.zeros(h, np.dtype(layer.bias_n.dtype)),)),
    ]


_LINEN = Convention(_handlers(_Names(nnx=False)), name=lambda key: join("params", module_path(key), separator="/"))
_NNX = Convention(_handlers(_Names(nnx=True)), name=lambda key: key.replace(".", "/"))


def _flatten(tree: Mapping[Any, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = join(prefix, str(key), separator="/")
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name))
        else:
            flat[name] = value
    return flat


def _unflatten(flat: Mapping[str, Any], *, int_keys: bool) -> dict[Any, Any]:
    import jax.numpy as jnp

    tree: dict[Any, Any] = {}
    for key, value in flat.items():
        parts: list[Any] = [int(p) if int_keys and p.isdigit() else p for p in key.split("/")]
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = jnp.asarray(value)
    return tree


def _linen_variables(variables: Any, who: str) -> dict[str, Any]:
    require("flax", "flax", who)
    if not isinstance(variables, Mapping):
        raise TypeError(f"{who}: `variables` must be the dict that a linen module's `init` returns, got {type(variables).__name__}.")
    if variables and "params" not in variables:
        raise ValueError(
            f"{who}: `variables` must be the dict of collections that `init` returns, such as "
            f"{{'params': ..., 'batch_stats': ...}}; its keys are {sorted(map(str, variables))}. If "
            "this is the params collection alone, pass {'params': params}."
        )
    return _flatten(variables)


def from_linen(tree: Any, variables: Mapping[str, Any], *, strict: bool = True, rename: Rename = None) -> Any:
    """Load the variables of a Flax linen module into a larix model.

    `variables` is what `module.init(...)` returns: `{"params": ...}`, plus
    `"batch_stats"` for a model with `BatchNorm`. Its entries are named by their path
    joined with `/`, such as `"params/layers_0/kernel"`: that is the name to use in
    `rename` (compact linen modules are named by class, `Dense_0`, so an MLP needs
    `rename=[(r"Dense_", "layers_")]`), and the name errors report.

    Layouts: `Dense` kernels `(in, out)` are transposed, `Conv` and `ConvTranspose`
    (default `transpose_kernel=False`) kernels `(*kernel, in, out)` are moved to
    `(out, in, *kernel)`, norms' `scale` is `weight`, `Embed`'s `embedding` is `weight`,
    `MultiHeadDotProductAttention`'s `query`/`key`/`value`/`out` kernels are reshaped
    into the four projections, `LSTMCell` and `GRUCell` gates are stacked. `BatchNorm`'s
    `mean` and `var` go to the state (pass `(model, state)`); linen's `momentum` is larix's.

    **Arguments:**

    - `tree`: the larix model, or the pair `(model, state)` if it has `BatchNorm` layers.
    - `variables`: the linen variables, a nested dict of arrays.
    - `strict`, `rename`: keyword-only; as in [`from_torch`][larix.interop.from_torch],
      with the `/`-joined names.

    **Returns:** `tree` with the weights loaded: a model, or a `(model, state)` pair.

    **Raises:** `ValueError` listing every mismatch; `ImportError` if flax is not installed.

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, flax.linen, larix, larix.interop
        >>> dense = flax.linen.Dense(3)
        >>> variables = dense.init(jax.random.key(0), jnp.ones(2))
        >>> linear = larix.nn.Linear(2, 3, key=jax.random.key(1))
        >>> linear = larix.interop.from_linen(linear, variables)
        >>> x = jnp.arange(2.0)
        >>> bool(jnp.allclose(linear(x), dense.apply(variables, x)))
        True

        ```
    """
    who = "larix.interop.from_linen"
    flat = _linen_variables(variables, who)
    return load_into(
        tree, flat, _LINEN, strict=strict, rename=rename, who=who,
        planner="larix.interop.plan_linen(model, variables, rename=...)",
    )  # fmt: skip


def to_linen(tree: Any) -> dict[str, Any]:
    """Export a larix model as Flax linen variables, the inverse of
    [`from_linen`][larix.interop.from_linen].

    **Arguments:**

    - `tree`: the larix model, or the pair `(model, state)` if it has `BatchNorm` layers.

    **Returns:** `{"params": ...}` (and `"batch_stats"` if there are `BatchNorm` layers),
    nested dicts of JAX arrays, ready for `module.apply`.

    **Raises:** `ImportError` if flax is not installed.
    """
    who = "larix.interop.to_linen"
    require("flax", "flax", who)
    return _unflatten(export(tree, _LINEN, who), int_keys=False)


def plan_linen(tree: Any, variables: Mapping[str, Any], *, rename: Rename = None) -> StateDictPlan:
    """A dry run of [`from_linen`][larix.interop.from_linen]: each Flax entry, the larix
    key it goes to, and both shapes, before anything is loaded.

    **Arguments:** as `from_linen` (without `strict`).

    **Returns:** a `StateDictPlan`, shown as a table.
    """
    who = "larix.interop.plan_linen"
    return plan_for(tree, _linen_variables(variables, who), _LINEN, rename=rename, who=who)


def _nnx_state(state: Any, who: str) -> dict[str, Any]:
    flax = require("flax.nnx", "flax", who)
    if isinstance(state, flax.Module):
        state = flax.state(state)
    if isinstance(state, flax.State):
        state = flax.to_pure_dict(state)
    if not isinstance(state, Mapping):
        raise TypeError(f"{who}: expected an nnx.Module, an nnx.State or a nested dict, got {type(state).__name__}.")
    return _flatten(state)


def from_nnx(tree: Any, state: Any, *, strict: bool = True, rename: Rename = None) -> Any:
    """Load the weights of a Flax NNX module into a larix model.

    The layouts are those of [`from_linen`][larix.interop.from_linen]; the names are the
    attribute paths of the NNX module joined with `/` (`"layers/0/kernel"`), and a
    `BatchNorm`'s `mean` and `var` sit in the module next to its `scale` and `bias`. An
    `nnx.GRUCell` has no new-state hidden bias: larix's `bias_n` is set to zero.

    **Arguments:**

    - `tree`: the larix model, or the pair `(model, state)` if it has `BatchNorm` layers.
    - `state`: the NNX module itself, its `nnx.state(...)`, or that state as a pure dict
      (`nnx.to_pure_dict`).
    - `strict`, `rename`: keyword-only; as in [`from_torch`][larix.interop.from_torch],
      with the `/`-joined names.

    **Returns:** `tree` with the weights loaded: a model, or a `(model, state)` pair.

    **Raises:** `ValueError` listing every mismatch; `ImportError` if flax is not installed.
    """
    who = "larix.interop.from_nnx"
    flat = _nnx_state(state, who)
    return load_into(
        tree, flat, _NNX, strict=strict, rename=rename, who=who,
        planner="larix.interop.plan_nnx(model, state, rename=...)",
    )  # fmt: skip


def to_nnx(tree: Any) -> dict[Any, Any]:
    """Export a larix model as the pure dict of an NNX module's state, the inverse of
    [`from_nnx`][larix.interop.from_nnx].

    Put it into an NNX module with `state = nnx.state(module)`,
    `nnx.replace_by_pure_dict(state, pure)` and `nnx.update(module, state)`.

    **Arguments:**

    - `tree`: the larix model, or the pair `(model, state)` if it has `BatchNorm` layers.

    **Returns:** nested dicts of JAX arrays, list items under `int` keys (as
    `nnx.to_pure_dict` gives them).

    **Raises:** `ValueError` for a `GRUCell` with a non-zero `bias_n` (NNX's has none);
    `ImportError` if flax is not installed.
    """
    who = "larix.interop.to_nnx"
    require("flax", "flax", who)
    return _unflatten(export(tree, _NNX, who), int_keys=True)


def plan_nnx(tree: Any, state: Any, *, rename: Rename = None) -> StateDictPlan:
    """A dry run of [`from_nnx`][larix.interop.from_nnx], shown as a table.

    **Arguments:** as `from_nnx` (without `strict`).

    **Returns:** a `StateDictPlan`.
    """
    who = "larix.interop.plan_nnx"
    return plan_for(tree, _nnx_state(state, who), _NNX, rename=rename, who=who)
