"""The benchmark harness: declaring cases and timing them.

A benchmark module (`benchmarks/bench_<topic>.py`) defines

- `cases(settings: Settings) -> Iterable[Case]`: its cases, grouped by `Case.section`;
- optionally `PLOTS: Sequence[Plot]`: log-log plots of time against `Case.n` to save;

and `run.py` finds, runs and reports them (the table, JSON and plots are in `report.py`). A
`Case` holds a *factory* (`make`) rather than the timed callable itself, so that listing and
selecting cases costs nothing: trees of 100k leaves, models and jitted functions are built
only when their case runs, and dropped when it is done.

How a case is timed:

1. `make()` builds the zero-argument callable to time (untimed).
2. Warm-up: it is called a few times (always at least twice, so compilation and first-call
   caching are never timed).
3. Calibration: from the fastest warm-up call, choose how many calls make one *sample* (so a
   sample lasts at least `Settings.sample_s`, and the clock's resolution stays negligible)
   and how many samples fit the time budget.
4. Timing: the cases of one `(section, n)` group are sampled in interleaved rounds (a sample
   of each case, then the next round, the order rotating), so a drift in the machine's speed
   hits a case and its baseline alike. Python's garbage collector is off while timing (as in
   `timeit`); a collection runs between groups. When a case is fast enough that a sample
   holds several calls, one untimed call precedes each sample, so the data its neighbours
   evicted from the CPU caches is back (a sample measures the steady state).
5. The reported figure is the median time per call over the samples, with its quartiles; the
   ratio is to the median of the baseline case (same section, same `n`) measured in the same
   process, in the same rounds.

JAX dispatches asynchronously, so by default every call's result is blocked on *inside* the
timed loop (`Case.block`): otherwise a loop would time only the dispatch. Blocking costs
about 1 µs even on a ready array, identically for a case and its baseline. Cases whose
output holds no freshly computed array (tree manipulation) set `block=False`: blocking walks
the whole output tree, which for 100k leaves costs as much as the thing measured. A callable
`block` blocks on part of the output (e.g. `lambda out: out[0].block_until_ready()` for a
jitted step that returns a model with many static leaves and its loss).

A case with `cold=True` measures a first call instead: each sample calls `make()` afresh
(untimed) and times one call of the result, e.g. trace + compile + run of a new jitted
function. Its warm-up is skipped.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import itertools
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "FULL",
    "INSTALL_HINT",
    "QUICK",
    "Case",
    "Plot",
    "Result",
    "Settings",
    "block_overhead_ns",
    "loop_overhead_ns",
    "missing_packages",
    "run_cases",
]

# Optional packages a case may need, and how to get them.
INSTALL_HINT = 'pip install -e ".[bench]" in a clone'


# --------------------------------------------------------------------------------------------
# Declaring cases


@dataclasses.dataclass(frozen=True)
class Settings:
    """How long to spend on each case. `run.py` picks `QUICK` or `FULL`."""

    quick: bool
    #: Seconds of timed calls to aim for per case (a group of k cases gets k times this).
    budget_s: float
    #: Bounds on the number of samples per case.
    min_samples: int
    max_samples: int
    #: Each sample repeats the call until it lasts at least this long.
    sample_s: float
    #: Warm-up calls (at most; warm-up also stops after `budget_s / 2`).
    warmup: int
    #: Samples of a `cold=True` case (each is one fresh `make()` and one call).
    cold_samples: int


QUICK = Settings(
    quick=True, budget_s=0.1, min_samples=5, max_samples=150, sample_s=2e-4, warmup=3, cold_samples=3
)
FULL = Settings(
    quick=False, budget_s=1.0, min_samples=15, max_samples=2000, sample_s=5e-4, warmup=10, cold_samples=7
)


@dataclasses.dataclass(frozen=True)
class Case:
    """One thing to time.

    - `section`: the group it is reported in, e.g. `"partition+combine"`; `--only` selects
      sections by substring.
    - `name`: the case's name within its section, e.g. `"larix"` or `"equinox"`.
    - `make`: builds (untimed) the zero-argument callable to time. Prefer
      `functools.partial(f, x)` over `lambda: f(x)` for sub-microsecond calls: it adds less.
    - `n`: the size parameter (static leaves, layers, ...) or `None`. Plots use it as x.
    - `baseline`: the `name` of the case, in the same section and with the same `n`, that
      the ratio is taken to. `None` for the baseline itself.
    - `goal`: the largest acceptable ratio to the baseline, shown as ok / MISS.
    - `requires`: importable packages the case needs; when one is missing the case is
      reported as skipped, with a hint, instead of failing.
    - `block`: `True` to block on each call's whole result, `False` not to, or a callable
      that blocks on the part of the result that matters (see the module docstring).
    - `cold`: time the first call of a freshly made callable instead of the steady state.
    - `note`: a short remark printed under the table.
    """

    section: str
    name: str
    make: Callable[[], Callable[[], Any]]
    n: int | None = None
    baseline: str | None = None
    goal: float | None = None
    requires: tuple[str, ...] = ()
    block: bool | Callable[[Any], Any] = True
    cold: bool = False
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Plot:
    """A log-log plot of time per call against `Case.n`, one line per case name.

    Saved as `benchmarks/results/<run name>-<filename>`; with `run.py --docs`, also at
    `docs_path` (relative to the repository root) when one is given.
    """

    section: str
    filename: str
    title: str | None = None
    #: Case names to draw (default: all in the section), in legend order.
    cases: tuple[str, ...] | None = None
    docs_path: str | None = None


@dataclasses.dataclass
class Result:
    """What one case measured. `status` is "ok", "skipped" or "error"."""

    section: str
    case: str
    n: int | None
    baseline: str | None
    goal: float | None
    cold: bool
    status: str = "ok"
    note: str = ""
    median_ns: float | None = None
    min_ns: float | None = None
    q1_ns: float | None = None
    q3_ns: float | None = None
    samples: int = 0
    calls_per_sample: int = 0
    #: Wall seconds spent building and warming up the case, and taking its samples (for
    #: keeping the suite's running time in check; `cold` cases build in every sample).
    setup_s: float = 0.0
    sampling_s: float = 0.0
    ratio: float | None = None

    @property
    def goal_met(self) -> bool | None:
        if self.goal is None or self.ratio is None:
            return None
        return self.ratio <= self.goal


def missing_packages(names: Iterable[str]) -> list[str]:
    """The names among `names` that cannot be imported (without importing them)."""
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


# --------------------------------------------------------------------------------------------
# Timing


# This runs inside timed loops, so it is kept cheap: `type(x) is _ARRAY_TYPE` costs 30 ns
# where isinstance(x, jax.Array) costs 370 ns, and on a ready array x.block_until_ready()
# costs 1.1 µs where jax.block_until_ready(x) costs 2.5 µs (2-core CPU machine, jax 0.10.2).
_ARRAY_TYPE = type(jnp.zeros(()))


def _block_any(out: Any) -> None:
    if type(out) is _ARRAY_TYPE:
        out.block_until_ready()
    else:
        jax.block_until_ready(out)


def _blocker(block: bool | Callable[[Any], Any]) -> Callable[[Any], Any] | None:
    if block is True:
        return _block_any
    return block or None


def _one_sample(fn: Callable[[], Any], calls: int, block: Callable[[Any], Any] | None) -> int:
    """Nanoseconds taken by `calls` calls of `fn`, blocking on each result with `block`."""
    perf = time.perf_counter_ns
    if block is not None:
        t0 = perf()
        for _ in itertools.repeat(None, calls):
            block(fn())
        return perf() - t0
    t0 = perf()
    for _ in itertools.repeat(None, calls):
        fn()
    return perf() - t0


@dataclasses.dataclass
class _Running:
    """A case of the group being timed, and its samples so far."""

    case: Case
    result: Result
    block: Callable[[Any], Any] | None
    fn: Callable[[], Any] | None = None
    calls: int = 1  # calls per sample
    sample_ns: float = 0.0  # expected duration of one sample
    times: list[float] = dataclasses.field(default_factory=list)  # ns per call, one per sample


def _start(case: Case, settings: Settings) -> _Running:
    """Build the case's callable, warm it up and calibrate it; or mark it skipped / failed."""
    result = Result(case.section, case.name, case.n, case.baseline, case.goal, case.cold, note=case.note)
    r = _Running(case, result, _blocker(case.block))
    missing = missing_packages(case.requires)
    if missing:
        result.status = "skipped"
        result.note = f"{', '.join(missing)} not installed ({INSTALL_HINT})"
        return r
    t0 = time.perf_counter()
    try:
        r.fn = case.make()
        if not case.cold:
            _warm_up(r, settings)
    except Exception as error:  # noqa: BLE001 - one broken case must not stop the suite
        _fail(r, error)
    result.setup_s = time.perf_counter() - t0
    return r


def _warm_up(r: _Running, settings: Settings) -> None:
    """Call a few times (compiling, filling caches), then choose the calls per sample."""
    assert r.fn is not None
    deadline = time.perf_counter() + settings.budget_s / 2
    fastest = math.inf
    for i in range(max(settings.warmup, 2)):
        t = _one_sample(r.fn, 1, r.block)
        if i > 0:  # the first call may include tracing and compilation
            fastest = min(fastest, t)
            if time.perf_counter() > deadline:
                break
    fastest = max(fastest, 1.0)
    r.calls = max(1, math.ceil(settings.sample_s * 1e9 / fastest))
    r.sample_ns = r.calls * fastest


def _fail(r: _Running, error: BaseException) -> None:
    r.fn = None
    r.result.status = "skipped" if isinstance(error, ImportError) else "error"
    r.result.note = f"{type(error).__name__}: {error}".splitlines()[0][:160]


def _take_sample(r: _Running) -> None:
    assert r.fn is not None
    t0 = time.perf_counter()
    if r.case.cold:
        if r.times:  # the first sample uses the callable that _start made
            r.fn = r.case.make()
        gc.collect()  # collect the previous sample's garbage outside the timed call
        r.times.append(float(_one_sample(r.fn, 1, r.block)))
    else:
        if r.calls > 1:
            # One untimed call first: the group's other cases ran in between and may have
            # evicted this one's data from the CPU caches (100k-leaf trees do). A sample
            # measures the steady state; for calls slower than a sample this is negligible.
            _one_sample(r.fn, 1, r.block)
        r.times.append(_one_sample(r.fn, r.calls, r.block) / r.calls)
    r.result.sampling_s += time.perf_counter() - t0


def _summarise(r: _Running) -> Result:
    res = r.result
    if res.status == "ok" and r.times:
        times = sorted(r.times)
        q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
        res.median_ns, res.min_ns, res.q1_ns, res.q3_ns = statistics.median(times), times[0], q1, q3
        res.samples, res.calls_per_sample = len(times), r.calls
    elif res.status == "ok":
        res.status, res.note = "error", "no samples were taken"
    return res


def _time_group(group: list[Case], settings: Settings) -> list[Result]:
    """Time the cases of one (section, n) group in interleaved rounds."""
    # Collect the previous group's garbage, then freeze what survives (imports, JAX's caches):
    # a full collection of this process takes ~0.3 s, later ones only look at new objects.
    gc.collect()
    gc.freeze()
    running = [_start(case, settings) for case in group]
    live = [r for r in running if r.fn is not None]
    steady = [r for r in live if not r.case.cold]
    # Equal sample counts for the steady cases of a group, as many as fit its budget.
    rounds = int(settings.budget_s * 1e9 * len(steady) / max(sum(r.sample_ns for r in steady), 1.0))
    rounds = min(max(rounds, settings.min_samples), settings.max_samples) if steady else 0
    wanted = {id(r): settings.cold_samples if r.case.cold else rounds for r in live}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(max(wanted.values(), default=0)):
            # Rotate the order so that no case always runs right after the same neighbour.
            for r in live[i % len(live) :] + live[: i % len(live)]:
                if r.fn is None or len(r.times) >= wanted[id(r)]:
                    continue
                try:
                    _take_sample(r)
                except Exception as error:  # noqa: BLE001 - report it and go on
                    _fail(r, error)
    finally:
        if gc_was_enabled:
            gc.enable()
    results = [_summarise(r) for r in running]
    del running, live, steady  # drop the trees and compiled functions before the next group
    return results


def run_cases(
    cases: Sequence[Case], settings: Settings, progress: Callable[[Result], None] | None = None
) -> list[Result]:
    """Time `cases` group by group, then fill in each result's ratio to its baseline.

    **Returns:** one `Result` per case, in the order of `cases` within each group.
    """
    groups: dict[tuple[str, int | None], list[Case]] = {}
    for case in cases:
        groups.setdefault((case.section, case.n), []).append(case)
    results: list[Result] = []
    for group in groups.values():
        for res in _time_group(group, settings):
            results.append(res)
            if progress is not None:
                progress(res)
    _fill_ratios(results)
    return results


def _fill_ratios(results: list[Result]) -> None:
    by_key = {(r.section, r.n, r.case): r for r in results}
    for r in results:
        if r.baseline is None or r.median_ns is None:
            continue
        base = by_key.get((r.section, r.n, r.baseline))
        if base is None or not base.median_ns:
            if not r.note:
                r.note = f"no ratio: baseline '{r.baseline}' was not measured"
            continue
        r.ratio = r.median_ns / base.median_ns


def loop_overhead_ns() -> float:
    """Time per call of the timing loop around a C no-op; it is part of every median."""
    times = [_one_sample(int, 10_000, None) / 10_000 for _ in range(7)]
    return statistics.median(times)


def block_overhead_ns() -> float:
    """Time per call of blocking on an array that is already computed (`block=True`)."""
    ready = jnp.zeros(())
    ready.block_until_ready()
    times = [_one_sample(lambda: ready, 1_000, _block_any) / 1_000 for _ in range(7)]
    return statistics.median(times) - loop_overhead_ns()
