"""Compile time of a deep MLP: N blocks unrolled vs stacked and applied with `jax.lax.scan`.

The model is N residual MLP blocks `x + tanh(x @ W1 + b1) @ W2 + b2` (width 32, hidden 64)
on a batch of 8; the activation is a static field. Timed: the
first call of `filter_jit(filter_value_and_grad(loss))` on a fresh function, i.e. trace +
compile + one run of the forward and backward pass (`cold` cases), for

- `unrolled`: a Module holding a tuple of N blocks, applied in a Python loop (the baseline);
- `scanned`: the same weights as one `larix.Stacked` (arrays with a leading layer axis).

Goal (transforms issue): at N = 64 the scanned model compiles at least 5x faster (ratio
at most 0.2). Measured on the shared 2-core CPU machine, jax 0.10.2: unrolled 8.2 s,
scanned 0.83 s, ratio 0.10 (9.9x); under heavier load 14.7 s vs 1.86 s, ratio 0.13.
Quick mode times N = 64 only; 3 first calls of each take about 30 s, nearly all of it
compiling the unrolled model. Full mode adds N = 16.

The block has two matmuls on purpose: it is the usual MLP block, and XLA's compile time of
the unrolled model grows quickly with such blocks (same machine, N = 64, first call: one
matmul per block ~1.5 s, two ~10 s, a LayerNorm + GELU MLP block over 10 minutes), while
the scanned model stays near its fixed cost of about a second at any depth.

Run on its own with `python benchmarks/bench_scan.py` (prints the N = 64 figures), or as
part of the suite with `python benchmarks/run.py --only scan`.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from harness import Case, Settings

try:
    import larix
except ImportError:  # `python benchmarks/bench_scan.py` from a checkout without larix installed
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    import larix

WIDTH, HIDDEN, BATCH = 32, 64, 8
GOAL_N = 64
GOAL = 0.2  # "scanned compiles at least 5x faster"
SECTION = "scan compile"


class Block(larix.Module):
    w1: jax.Array
    b1: jax.Array
    w2: jax.Array
    b2: jax.Array
    activation: Callable[[jax.Array], jax.Array] = larix.field(static=True, default=jnp.tanh)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.activation(x @ self.w1 + self.b1) @ self.w2 + self.b2


class Unrolled(larix.Module):
    blocks: tuple[Block, ...]

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.blocks:
            x = block(x)
        return x


def _weights(n: int) -> list[np.ndarray]:
    """Each array of the block, with a leading axis of N layers."""
    # NumPy, not jax.random: building the model must stay cheap and untimed.
    rng = np.random.default_rng(0)
    shapes = [(WIDTH, HIDDEN), (HIDDEN,), (HIDDEN, WIDTH), (WIDTH,)]
    return [(rng.normal(size=(n, *shape)) / np.sqrt(4 * shape[0])).astype(np.float32) for shape in shapes]


def make_unrolled(n: int) -> Unrolled:
    weights = _weights(n)
    return Unrolled(tuple(Block(*(jnp.asarray(w[i]) for w in weights)) for i in range(n)))


def make_scanned(n: int) -> larix.Stacked:
    return larix.Stacked(Block(*(jnp.asarray(w) for w in _weights(n))))


def loss(model: Any, x: jax.Array) -> jax.Array:
    return jnp.mean(model(x) ** 2)


def _batch() -> jax.Array:
    return jnp.asarray(np.random.default_rng(1).normal(size=(BATCH, WIDTH)).astype(np.float32))


def _first_call(make_model: Callable[[int], Any], n: int) -> Callable[[], Any]:
    """A fresh filter_jit of forward + backward: calling it traces, compiles and runs."""
    step = larix.filter_jit(larix.filter_value_and_grad(loss))
    return functools.partial(step, make_model(n), _batch())


def _block_on_loss(out: Any) -> None:
    out[0].block_until_ready()


def cases(settings: Settings) -> Iterable[Case]:
    # Compiling the unrolled 64-block model takes ~8 s a sample: the goal is checked in full
    # mode; quick mode times 16 blocks, to stay within its one-minute budget.
    sizes = (16,) if settings.quick else (16, GOAL_N)
    for n in sizes:
        common = {"n": n, "cold": True, "block": _block_on_loss}
        yield Case(SECTION, "unrolled", functools.partial(_first_call, make_unrolled, n), **common)
        goal = GOAL if n == GOAL_N else None
        yield Case(
            SECTION, "scanned", functools.partial(_first_call, make_scanned, n), baseline="unrolled", goal=goal, **common
        )


def main() -> None:
    """Time the N = 64 first calls a few times each and print the ratio."""
    samples = 3
    results = {}
    for name, make_model in (("unrolled", make_unrolled), ("scanned", make_scanned)):
        times = []
        for _ in range(samples):
            call = _first_call(make_model, GOAL_N)
            t0 = time.perf_counter()
            _block_on_loss(call())
            times.append(time.perf_counter() - t0)
        results[name] = float(np.median(times))
        print(f"{name:>9}: {results[name]:.3f} s (median of {samples}; {', '.join(f'{t:.3f}' for t in times)})")
    ratio = results["scanned"] / results["unrolled"]
    verdict = "ok" if ratio <= GOAL else "MISS"
    print(f"N = {GOAL_N} blocks: scanned / unrolled = {ratio:.3f} ({1 / ratio:.1f}x faster; goal <= {GOAL}: {verdict})")


if __name__ == "__main__":
    main()
