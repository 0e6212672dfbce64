"""Module flatten / unflatten against an equivalent `jax.tree_util.register_dataclass` class.

Two shapes of tree, each written with the same fields as a `larix.Module`, as a frozen
dataclass registered with `register_dataclass` (the baseline: jaxlib flattens it in C++,
and unflattens it by calling the class), and as an `equinox.Module` when Equinox is
installed:

- `small`: one node, 3 array fields and 1 static field;
- `mlp8`: an MLP of 8 `Linear(weight, bias; in_size, out_size static)` layers held in a
  tuple, with a static activation: 10 nodes, 16 leaves.

Timed: `jax.tree_util.tree_flatten(obj)`, `treedef.unflatten(leaves)` and
`jax.tree_util.tree_flatten_with_path(obj)` (what a path-keyed split flattens with).
Goal (foundation issue): Module within 1.2x of `register_dataclass` for flatten and unflatten.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu

import larix
from harness import Case, Settings

GOAL = 1.2  # the foundation issue: "keep Module within 1.2x" of register_dataclass
DEPTH = 8
WIDTH = 4  # array sizes are irrelevant to flattening; keep them tiny


# The larix side ------------------------------------------------------------------------------


class Small(larix.Module):
    weight: jax.Array
    bias: jax.Array
    scale: jax.Array
    name: str = larix.field(static=True, default="small")


class Linear(larix.Module):
    weight: jax.Array
    bias: jax.Array
    in_size: int = larix.field(static=True)
    out_size: int = larix.field(static=True)


class MLP(larix.Module):
    layers: tuple[Linear, ...]
    activation: Callable[[jax.Array], jax.Array] = larix.field(static=True)


# The register_dataclass side: the same fields, frozen like a Module -------------------------


@functools.partial(jtu.register_dataclass, data_fields=["weight", "bias", "scale"], meta_fields=["name"])
@dataclasses.dataclass(frozen=True)
class SmallDC:
    weight: jax.Array
    bias: jax.Array
    scale: jax.Array
    name: str = "small"


@functools.partial(
    jtu.register_dataclass, data_fields=["weight", "bias"], meta_fields=["in_size", "out_size"]
)
@dataclasses.dataclass(frozen=True)
class LinearDC:
    weight: jax.Array
    bias: jax.Array
    in_size: int
    out_size: int


@functools.partial(jtu.register_dataclass, data_fields=["layers"], meta_fields=["activation"])
@dataclasses.dataclass(frozen=True)
class MLPDC:
    layers: tuple[LinearDC, ...]
    activation: Callable[[jax.Array], jax.Array]


@functools.cache
def _equinox_classes() -> tuple[type, type, type]:
    """The same three classes as `equinox.Module`s (Equinox is optional: built on first use)."""
    import equinox as eqx

    class SmallEqx(eqx.Module):
        weight: jax.Array
        bias: jax.Array
        scale: jax.Array
        name: str = eqx.field(static=True, default="small")

    class LinearEqx(eqx.Module):
        weight: jax.Array
        bias: jax.Array
        in_size: int = eqx.field(static=True)
        out_size: int = eqx.field(static=True)

    class MLPEqx(eqx.Module):
        layers: tuple[LinearEqx, ...]
        activation: Callable[[jax.Array], jax.Array] = eqx.field(static=True)

    return SmallEqx, LinearEqx, MLPEqx


def _small(cls: type) -> Any:
    return cls(jnp.ones((WIDTH, WIDTH)), jnp.zeros(WIDTH), jnp.ones(()))


def _mlp(mlp_cls: type, linear_cls: type) -> Any:
    layers = tuple(linear_cls(jnp.ones((WIDTH, WIDTH)), jnp.zeros(WIDTH), WIDTH, WIDTH) for _ in range(DEPTH))
    return mlp_cls(layers, jax.nn.relu)


BASELINE = "register_dataclass"
# tree -> implementation -> (builder, packages it needs)
TREES: dict[str, dict[str, tuple[Callable[[], Any], tuple[str, ...]]]] = {
    "small": {
        "larix.Module": (lambda: _small(Small), ()),
        "equinox.Module": (lambda: _small(_equinox_classes()[0]), ("equinox",)),
        BASELINE: (lambda: _small(SmallDC), ()),
    },
    "mlp8": {
        "larix.Module": (lambda: _mlp(MLP, Linear), ()),
        "equinox.Module": (lambda: _mlp(_equinox_classes()[2], _equinox_classes()[1]), ("equinox",)),
        BASELINE: (lambda: _mlp(MLPDC, LinearDC), ()),
    },
}


# What is timed: each maker returns the zero-argument callable; partial keeps its overhead low.


def _flatten(build: Callable[[], Any]) -> Callable[[], Any]:
    return functools.partial(jtu.tree_flatten, build())


def _unflatten(build: Callable[[], Any]) -> Callable[[], Any]:
    leaves, treedef = jtu.tree_flatten(build())
    return functools.partial(treedef.unflatten, leaves)


def _flatten_with_path(build: Callable[[], Any]) -> Callable[[], Any]:
    return functools.partial(jtu.tree_flatten_with_path, build())


OPERATIONS = {
    "flatten": _flatten,
    "unflatten": _unflatten,
    "flatten_with_path": _flatten_with_path,
}


def cases(settings: Settings) -> Iterable[Case]:
    for op, maker in OPERATIONS.items():
        for tree, implementations in TREES.items():
            for impl, (build, requires) in implementations.items():
                yield Case(
                    section=f"module {op} ({tree})",
                    name=impl,
                    make=functools.partial(maker, build),
                    baseline=None if impl == BASELINE else BASELINE,
                    # The goal is about flatten and unflatten; the path variant is for information.
                    goal=GOAL if impl == "larix.Module" and op != "flatten_with_path" else None,
                    requires=requires,
                    block=False,  # nothing is computed: there is no device work to wait for
                )
