"""Tree-strategy partition and combine on a tree of 1 array and N static leaves.

The tree is `(jnp.zeros(8), tuple(range(N)))`: one float32[8] array beside N Python ints,
the shape of a model with much static configuration. Timed for N in {0, 100, 1k, 10k, 100k}
(all of them in quick mode too; only the sample counts shrink):

- `partition+combine`: `combine(*partition(tree, is_array))`, the round trip;
- `partition` and `combine` alone, to show which half the time goes to;

for larix and, when installed, Equinox (the baseline). Goal (foundation issue): at
N = 100k larix's partition takes at most half of Equinox's time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import jax.numpy as jnp

import larix
from harness import Case, Plot, Settings

SIZES = (0, 100, 1_000, 10_000, 100_000)
GOAL_N = 100_000
GOAL = 0.5  # "at N = 100k our partition takes at most half of Equinox's time"

PLOTS = (
    Plot(
        section="partition+combine",
        filename="partition_scaling.png",
        title="combine(*partition(tree, is_array)), tree = (f32[8], N ints)",
    ),
)


def make_tree(n: int) -> tuple[Any, tuple[int, ...]]:
    return (jnp.zeros(8, jnp.float32), tuple(range(n)))


def _library(name: str) -> Any:
    if name == "larix":
        return larix
    import equinox

    return equinox


def _round_trip(lib_name: str, n: int) -> Callable[[], Any]:
    lib, tree = _library(lib_name), make_tree(n)
    partition, combine, is_array = lib.partition, lib.combine, lib.is_array

    def run() -> Any:
        return combine(*partition(tree, is_array))

    return run


def _partition(lib_name: str, n: int) -> Callable[[], Any]:
    lib = _library(lib_name)
    return functools.partial(lib.partition, make_tree(n), lib.is_array)


def _combine(lib_name: str, n: int) -> Callable[[], Any]:
    lib = _library(lib_name)
    parts = lib.partition(make_tree(n), lib.is_array)
    return functools.partial(lib.combine, *parts)


SECTIONS = {"partition+combine": _round_trip, "partition": _partition, "combine": _combine}


def cases(settings: Settings) -> Iterable[Case]:
    for section, maker in SECTIONS.items():
        for n in SIZES:
            yield Case(
                section=section,
                name="larix",
                n=n,
                make=functools.partial(maker, "larix", n),
                baseline="equinox",
                goal=GOAL if n == GOAL_N and section != "combine" else None,
                block=False,  # the outputs hold the input's array: no device work to wait for
            )
            yield Case(
                section=section,
                name="equinox",
                n=n,
                make=functools.partial(maker, "equinox", n),
                requires=("equinox",),
                block=False,
            )
