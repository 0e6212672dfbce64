"""What the converters share: the larix side of a conversion, and loading or exporting it.

A converter is a `Convention`: for each kind of larix layer it knows, a function that
gives the `Conversion`s between that layer's arrays and the other library's entries, and a
rule to name every other array. The engine of `larix._state_dict` does the matching and
the error reporting, so every converter reports mismatches the same way.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.tree_util as jtu
import numpy as np

from .._filters import is_array
from .._flat import merge, split
from .._paths import dotted_path
from .._state_dict import Conversion, Rename, StateDictPlan, load, plan
from ..nn._batch_norm import BatchNorm
from ..nn._stateful import State, StateIndex

__all__ = ["CONVERGED_STEPS", "Convention", "LayerKeys", "export", "join", "load_into", "plan_for", "require"]

# The step count given to a mode="batch" BatchNorm whose statistics come from a library
# that keeps them without a counter (PyTorch, Flax): its inference divides the running
# averages by 1 - momentum ** steps, which is exactly 1 in float32 and float64 at this
# count (for any momentum below 1 - 1e-7), so the loaded statistics are used as they are,
# and training on continues them without bias correction, as the other library would.
CONVERGED_STEPS = 2**30


def require(package: str, extra: str, feature: str) -> Any:
    """Import `package`, or raise an ImportError that says how to install it."""
    try:
        return importlib.import_module(package)
    except ImportError as error:
        raise ImportError(
            f"{feature} needs the optional package {extra}, which is not installed. Install it "
            f'with: pip install -e ".[{extra}]"  (from a clone of larix)'
        ) from error


def join(*parts: str, separator: str = ".") -> str:
    """Join the non-empty `parts`: `join("", "weight") == "weight"`."""
    return separator.join(p for p in parts if p)


class LayerKeys:
    """The larix keys of one layer's arrays: `keys("weight")` -> `"layers.0.weight"`."""

    def __init__(self, path: str, layer: Any):
        self.path = path
        self.layer = layer

    def __call__(self, *fields: Any) -> str:
        return join(self.path, *map(str, fields))


Handler = Callable[[LayerKeys, Any], list[Conversion]]


class Convention:
    """A converter: `handlers` for the layers it knows, `name` for any other array.

    **Arguments:**

    - `handlers`: `(layer type, function)` pairs, the first `isinstance` match wins; each
      function takes the layer's `LayerKeys` and the layer, and returns its `Conversion`s.
    - `name`: `larix key -> foreign key` for arrays outside known layers (same layout).
    """

    def __init__(self, handlers: Sequence[tuple[type, Handler]], name: Callable[[str], str]):
        self.handlers = tuple(handlers)
        self.name = name
        self.types = tuple(t for t, _ in handlers)

    def handler(self, layer: Any) -> Handler:
        return next(h for t, h in self.handlers if isinstance(layer, t))


class _Side:
    """The larix side of a conversion: every array to convert, by larix key."""

    def __init__(self, tree: Any, convention: Convention, who: str):
        is_pair = isinstance(tree, tuple) and len(tree) == 2 and isinstance(tree[1], State)
        self.is_pair = is_pair
        self.model, self.state = tree if is_pair else (tree, None)
        if isinstance(self.model, State):
            raise TypeError(f"{who}: pass the model, or the pair (model, state); got a larix.nn.State alone.")
        self.skeleton, self.arrays, self.rest = split(self.model, is_array)
        known = (*convention.types, StateIndex)
        found = jtu.tree_flatten_with_path(self.model, is_leaf=lambda x: isinstance(x, known))[0]
        self.layers = [(dotted_path(p), x) for p, x in found if isinstance(x, convention.types)]
        # The initial values inside StateIndexes are not parameters: leave them out.
        inits = [dotted_path(p) + "." for p, x in found if isinstance(x, StateIndex)]
        self.leaves = {k: v for k, v in self.arrays.items() if not k.startswith(tuple(inits))}
        self.indexes: dict[str, Any] = {}  # larix key of a state entry -> (index, position)
        # Where each key sits in the model, so that conversions (and plans) follow its order;
        # a state entry sits where its StateIndex does.
        self.order = {k: i for i, k in enumerate(self.skeleton.keys)}
        stateful = [path or "<the root>" for path, layer in self.layers if isinstance(layer, BatchNorm)]
        if stateful and self.state is None:
            raise TypeError(
                f"{who}: the model has BatchNorm layers (at {', '.join(map(repr, stateful))}), whose "
                "running statistics live in a larix.nn.State. Pass the pair instead of the model: "
                "`model, state = ...((model, state), ...)`."
            )
        for path, layer in self.layers:
            if isinstance(layer, BatchNorm):
                self._add_state(path, layer)

    def _add_state(self, path: str, layer: BatchNorm) -> None:
        pairs = ("ema_state_index", "batch_state_index")
        for field in ("ema_first_time_index", "ema_state_index", "batch_counter", "batch_state_index"):
            index = getattr(layer, field)
            if index is None:
                continue
            value = self.state.get(index)
            prefix = join(path, field)
            here = min((i for k, i in self.order.items() if k == prefix or k.startswith(prefix + ".")), default=len(self.order))
            if field in pairs:
                for position in (0, 1):
                    key = join(path, field, str(position))
                    self.leaves[key] = value[position]
                    self.indexes[key] = (index, position)
                    self.order[key] = here
            else:
                self.leaves[prefix] = value
                self.indexes[prefix] = (index, None)
                self.order[prefix] = here

    def conversions(self, convention: Convention) -> list[Conversion]:
        conversions: list[Conversion] = []
        for path, layer in self.layers:
            conversions.extend(convention.handler(layer)(LayerKeys(path, layer), layer))
        claimed = {k for c in conversions for k in c.larix}
        for key in self.leaves:
            if key not in claimed:
                conversions.append(Conversion((convention.name(key),), (key,)))
        return sorted(conversions, key=lambda c: min((self.order[k] for k in c.larix), default=0))

    def rebuild(self, new: Mapping[str, Any]) -> Any:
        arrays = {k: new.get(k, v) for k, v in self.arrays.items()}
        model = merge(self.skeleton, arrays, self.rest)
        if self.state is None:
            return model
        # A copy: State.set retires the State it is called on, and this one is the user's.
        state = jtu.tree_map(lambda x: x, self.state)
        updates: dict[Any, dict[Any, Any]] = {}
        for key, (index, position) in self.indexes.items():
            if key in new:
                updates.setdefault(index, {})[position] = new[key]
        for index, parts in updates.items():
            if None in parts:
                state = state.set(index, parts[None])
            else:
                old = state.get(index)
                state = state.set(index, tuple(parts.get(i, old[i]) for i in range(len(old))))
        return model, state


def load_into(
    tree: Any, foreign: Mapping[str, Any], convention: Convention, *, strict: bool, rename: Rename, who: str, planner: str
) -> Any:
    """Load the flat foreign dict into `tree` (a model or a `(model, state)` pair)."""
    side = _Side(tree, convention, who)
    new = load(side.leaves, side.conversions(convention), foreign, strict=strict, rename=rename, who=who, planner=planner)
    return side.rebuild(new)


def plan_for(tree: Any, foreign: Mapping[str, Any], convention: Convention, *, rename: Rename, who: str) -> StateDictPlan:
    side = _Side(tree, convention, who)
    return plan(side.leaves, side.conversions(convention), foreign, rename)


def export(tree: Any, convention: Convention, who: str) -> dict[str, np.ndarray]:
    """The flat foreign dict of `tree`'s arrays, as NumPy arrays, in the tree's order."""
    side = _Side(tree, convention, who)
    placeholders = [k for k, v in side.leaves.items() if isinstance(v, jax.ShapeDtypeStruct)]
    if placeholders:
        raise TypeError(
            f"{who}: the model has placeholders without values (from larix.filter_eval_shape) at "
            f"{', '.join(map(repr, placeholders))}; export a model with arrays."
        )
    out: dict[str, np.ndarray] = {}
    for conversion in side.conversions(convention):
        values = [np.asarray(side.leaves[k]) for k in conversion.larix]
        converted = values if conversion.to_foreign is None else conversion.to_foreign(*values)
        for key, value in zip(conversion.foreign, converted):
            # A copy: writable (torch.from_numpy warns on read-only arrays) and not shared.
            out[key] = np.array(value)
    return out


# ----------------------------------------------------------------------- array layouts


def transpose() -> tuple[Callable[..., tuple[Any, ...]], Callable[..., tuple[Any, ...]]]:
    """A matrix stored transposed: larix `(out, in)` <-> `(in, out)`."""
    return (lambda w: (w.T,)), (lambda k: (k.T,))


def conv_kernel(n: int, *, out_last: bool = True) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """larix `(O, I, *kernel)` <-> channels-last `(*kernel, I, O)` (or `(*kernel, O, I)`)."""
    channels = (1, 0) if out_last else (0, 1)
    axes = (*range(2, n + 2), *channels)
    inverse = tuple(int(i) for i in np.argsort(axes))
    return (lambda w: (w.transpose(axes),)), (lambda k: (k.transpose(inverse),))


def reshaped(larix_shape: tuple[int, ...], foreign_shape: tuple[int, ...]) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The same values in another shape (a conv bias `(O, 1, 1)` <-> `(O,)`)."""
    return (lambda x: (x.reshape(foreign_shape),)), (lambda x: (x.reshape(larix_shape),))


def split_rows(parts: int) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """One larix array <-> `parts` foreign arrays stacked along the first axis."""
    return (lambda x: tuple(np.split(x, parts))), (lambda *xs: (np.concatenate(xs),))


def split_transposed(parts: int) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """A larix `(parts * H, in)` matrix <-> `parts` `(in, H)` kernels."""
    return (lambda w: tuple(b.T for b in np.split(w, parts))), (lambda *ks: (np.concatenate([k.T for k in ks]),))


def batch_statistics(layer: BatchNorm, mean: Any, var: Any, extra: Any) -> tuple[Any, Any]:
    """The statistics a BatchNorm normalises by at inference, from its state."""
    if layer.mode == "ema":
        return mean, var
    steps = int(extra)
    if steps == 0:  # before any training step: mean 0, variance 1
        return np.zeros_like(mean), np.ones_like(var)
    correction = 1 - layer.momentum**steps
    return (mean / correction).astype(mean.dtype), (var / correction).astype(var.dtype)


def batch_norm_state(layer: BatchNorm, mean: Any, var: Any) -> tuple[Any, Any, Any]:
    """A BatchNorm's state (mean, variance, flag or counter) that normalises by these statistics."""
    if layer.mode == "ema":
        return mean, var, np.asarray(False)
    return mean, var, np.asarray(CONVERGED_STEPS, np.int32)


def batch_norm_keys(keys: LayerKeys, layer: BatchNorm) -> tuple[str, str, str]:
    """The larix keys of a BatchNorm's running mean, running variance, and flag or counter."""
    if layer.mode == "ema":
        return keys("ema_state_index", 0), keys("ema_state_index", 1), keys("ema_first_time_index")
    return keys("batch_state_index", 0), keys("batch_state_index", 1), keys("batch_counter")


def reorder_blocks(x: Any, order: Sequence[int], axis: int = 0) -> Any:
    """Permute the equal blocks of `x` along `axis` (gate layouts: i, g, f, o <-> i, f, g, o)."""
    blocks = np.split(x, len(order), axis=axis)
    return np.concatenate([blocks[i] for i in order], axis=axis)


def module_path(path: str) -> str:
    """A dotted larix path as Flax linen and Haiku name modules: `"encoder.layers.0.attn"`
    -> `"encoder/layers_0/attn"` (a list item is named after its list, with its index)."""
    parts: list[str] = []
    for part in path.split(".") if path else []:
        if part.isdigit() and parts:
            parts[-1] += f"_{part}"
        else:
            parts.append(part)
    return "/".join(parts)
