"""The benchmark harness: cases, timing, tables, JSON and plots.

A benchmark module (`benchmarks/bench_<topic>.py`) defines

- `cases(settings: Settings) -> Iterable[Case]`: the cases, grouped by `Case.section`;
- optionally `PLOTS: Sequence[Plot]`: log-log plots of time against `N` to save.

and `run.py` finds, runs and reports them. A `Case` holds a *factory* (`make`) rather than
the timed function itself, so that listing and selecting cases costs nothing: trees of 100k
leaves, models and jitted functions are only built when their case runs.

How a case is timed:

1. `make()` builds the zero-argument callable to time (untimed).
2. Warm-up: it is called a few times (at least once, so compilation is never timed).
3. Calibration: from the fastest warm-up call, choose how many calls make one *sample*
   (so one sample lasts at least `Settings.sample_s`, and the clock's resolution and the
   loop's overhead stay small), and how many samples fit the time budget.
4. Timing: the cases of one `(section, N)` group are sampled in interleaved rounds (a
   sample of each case, then the next round), so a slow drift of the machine affects the
   case and its baseline alike. Python's garbage collector is off while timing (as in
   `timeit`) and a collection runs between groups.
5. The reported figure is the median time per call over the samples; the ratio is taken to
   the median of the baseline case (same section, same `N`) measured in the same process.

Outputs of JAX functions are dispatched asynchronously, so by default the harness blocks on
every call's result *inside* the timed loop (`Case.block`). Cases whose output holds no
freshly computed array (tree manipulation) set `block=False`: blocking walks the whole
output tree, which for 100k leaves would cost as much as the thing measured.

A case with `cold=True` measures a first call instead: each sample calls `make()` afresh
(untimed) and times one call of the result, e.g. trace + compile + run of a new jitted
function.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.metadata
import importlib.util
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "Case",
    "Plot",
    "Result",
    "Settings",
    "format_n",
    "format_table",
    "format_time",
    "machine_info",
    "missing_packages",
    "plot_scaling",
    "run_cases",
    "write_json",
]

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

# Optional packages a case may need, and how to get them.
INSTALL_HINT = "pip install 'larix[bench]'"


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
    - `block`: block on the result of every call (see the module docstring).
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
    block: bool = True
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


def _block(out: Any) -> None:
    import jax

    if isinstance(out, jax.Array):
        out.block_until_ready()
    else:
        jax.block_until_ready(out)


def _one_sample(fn: Callable[[], Any], calls: int, block: bool) -> int:
    """Nanoseconds taken by `calls` calls of `fn` (blocking on each result if `block`)."""
    perf = time.perf_counter_ns
    if block:
        blocker = _block
        t0 = perf()
        for _ in itertools.repeat(None, calls):
            blocker(fn())
        return perf() - t0
    t0 = perf()
    for _ in itertools.repeat(None, calls):
        fn()
    return perf() - t0


@dataclasses.dataclass
class _Running:
    """A case of the group being timed."""

    case: Case
    result: Result
    fn: Callable[[], Any] | None = None
    calls: int = 1
    sample_ns: float = 0.0
    times: list[float] = dataclasses.field(default_factory=list)  # ns per call, one per sample


def _warm_up(r: _Running, settings: Settings) -> None:
    """Call a few times (compiling, filling caches) and choose the calls per sample."""
    fn, block = r.fn, r.case.block
    assert fn is not None
    deadline = time.perf_counter() + settings.budget_s / 2
    fastest = math.inf
    for i in range(settings.warmup):
        t = _one_sample(fn, 1, block)
        if i > 0 or settings.warmup == 1:
            fastest = min(fastest, t)  # the first call may include compilation
        if i > 0 and time.perf_counter() > deadline:
            break
    fastest = max(fastest if fastest < math.inf else 1.0, 1.0)
    r.calls = max(1, math.ceil(settings.sample_s * 1e9 / fastest))
    r.sample_ns = r.calls * fastest


def _start(case: Case, settings: Settings) -> _Running:
    result = Result(case.section, case.name, case.n, case.baseline, case.goal, case.cold, note=case.note)
    r = _Running(case, result)
    missing = missing_packages(case.requires)
    if missing:
        result.status = "skipped"
        result.note = f"{', '.join(missing)} not installed ({INSTALL_HINT})"
        return r
    try:
        r.fn = case.make()
        if case.cold:
            r.sample_ns = 0.0
        else:
            _warm_up(r, settings)
    except Exception as error:  # noqa: BLE001 - one broken case must not stop the suite
        _fail(r, error)
    return r


def _fail(r: _Running, error: BaseException) -> None:
    r.fn = None
    r.result.status = "skipped" if isinstance(error, ImportError) else "error"
    r.result.note = f"{type(error).__name__}: {error}".splitlines()[0][:160]


def _time_group(group: list[Case], settings: Settings) -> list[Result]:
    """Time the cases of one (section, n) group in interleaved rounds."""
    gc.collect()
    running = [_start(case, settings) for case in group]
    live = [r for r in running if r.fn is not None]
    steady = [r for r in live if not r.case.cold]
    if steady:
        round_ns = sum(r.sample_ns for r in steady)
        rounds = int(settings.budget_s * 1e9 * len(steady) / max(round_ns, 1.0))
        rounds = min(max(rounds, settings.min_samples), settings.max_samples)
    else:
        rounds = 0
    cold_rounds = settings.cold_samples if len(live) > len(steady) else 0
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(max(rounds, cold_rounds)):
            # Rotate the order so that no case always runs right after the same neighbour.
            order = live[i % len(live) :] + live[: i % len(live)]
            for r in order:
                if r.fn is None or len(r.times) >= (cold_rounds if r.case.cold else rounds):
                    continue
                try:
                    if r.case.cold:
                        r.fn = r.case.make() if r.times else r.fn
                        gc.collect()
                        r.times.append(float(_one_sample(r.fn, 1, r.case.block)))
                    else:
                        r.times.append(_one_sample(r.fn, r.calls, r.case.block) / r.calls)
                except Exception as error:  # noqa: BLE001 - report and go on
                    _fail(r, error)
    finally:
        if gc_was_enabled:
            gc.enable()
    for r in running:
        r.fn = None  # drop the trees and compiled functions before the next group
        res = r.result
        if res.status == "ok" and r.times:
            q1, med, q3 = statistics.quantiles(r.times, n=4) if len(r.times) > 1 else [r.times[0]] * 3
            res.median_ns, res.q1_ns, res.q3_ns = statistics.median(r.times), q1, q3
            res.min_ns = min(r.times)
            res.samples, res.calls_per_sample = len(r.times), (1 if r.case.cold else r.calls)
    gc.collect()
    return [r.result for r in running]


def run_cases(
    cases: Sequence[Case], settings: Settings, progress: Callable[[Result], None] | None = None
) -> list[Result]:
    """Time `cases` group by group, then fill in each result's ratio to its baseline."""
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


def call_overhead_ns() -> float:
    """Time per call of the harness's loop around a no-op: included in every measurement."""
    noop = int  # a C callable that returns 0, like a functools.partial would
    times = [_one_sample(noop, 10_000, False) / 10_000 for _ in range(7)]
    return statistics.median(times)


# --------------------------------------------------------------------------------------------
# Reporting


def format_time(ns: float | None) -> str:
    """`1234.5` -> `"1.23 µs"`: three significant digits in the largest fitting unit."""
    if ns is None:
        return "-"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            value = ns / scale
            break
    else:
        unit, value = "ns", ns
    digits = 0 if value >= 100 else 1 if value >= 10 else 2
    return f"{value:.{digits}f} {unit}"


def format_n(n: int | None) -> str:
    """`100000` -> `"100k"`, `None` -> `""`."""
    if n is None:
        return ""
    for suffix, scale in (("M", 1_000_000), ("k", 1_000)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{suffix}"
    return str(n)


def _spread(r: Result) -> str:
    # Half the interquartile range, relative to the median: how noisy the samples were.
    if r.median_ns is None or r.q1_ns is None or r.q3_ns is None or r.samples < 4:
        return ""
    return f"±{50 * (r.q3_ns - r.q1_ns) / r.median_ns:.0f}%"


def format_table(results: Sequence[Result]) -> str:
    """The results as an aligned text table, with a blank line between sections."""
    header = ("section", "case", "N", "median", "spread", "vs baseline", "goal")
    rows: list[tuple[str, ...] | None] = []
    notes: list[str] = []
    previous = None
    for r in results:
        if previous is not None and r.section != previous:
            rows.append(None)
        previous = r.section
        name = r.case + (" (first call)" if r.cold else "")
        if r.status != "ok":
            median = r.status
        else:
            median = format_time(r.median_ns)
        versus = f"{r.ratio:.2f}x {r.baseline}" if r.ratio is not None else ("baseline" if r.baseline is None and r.status == "ok" else "")
        goal = ""
        if r.goal is not None:
            met = r.goal_met
            goal = f"<= {r.goal:g}x " + ("ok" if met else "MISS" if met is not None else "?")
        rows.append((r.section, name, format_n(r.n), median, _spread(r), versus, goal))
        if r.note:
            notes.append(f"  [{r.section} / {r.case}{' N=' + format_n(r.n) if r.n is not None else ''}] {r.note}")
    cells = [header] + [row for row in rows if row is not None]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    right = {2, 3, 4}  # numbers align right

    def line(row: tuple[str, ...]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return " | ".join(parts).rstrip()

    out = [line(header), "-+-".join("-" * w for w in widths)]
    for row in rows:
        out.append("" if row is None else line(row))
    # Notes that repeat (a missing package) are printed once.
    seen: set[str] = set()
    unique_notes = []
    for note in notes:
        key = note.split("] ", 1)[1]
        if key not in seen:
            seen.add(key)
            unique_notes.append(note)
    if unique_notes:
        out += ["", "notes:", *unique_notes]
    return "\n".join(out)


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_DIR), "describe", "--always", "--dirty"],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_info() -> dict[str, Any]:
    """Versions and hardware, to print above the table and store in the JSON."""
    import jax

    import larix

    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cpus = os.cpu_count()
    device = jax.devices()[0]
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus,
        "jax": jax.__version__,
        "jaxlib": _package_version("jaxlib"),
        "backend": jax.default_backend(),
        "device": f"{device.platform}:{getattr(device, 'device_kind', '?')} x{jax.device_count()}",
        "larix": getattr(larix, "__version__", "?"),
        "larix_path": str(Path(larix.__file__).resolve().parent),
        "git": _git_commit(),
        "optional": {name: _package_version(name) for name in ("equinox", "inox", "flax", "optax", "matplotlib")},
        "call_overhead_ns": round(call_overhead_ns(), 1),
    }


def format_machine(info: dict[str, Any]) -> str:
    optional = ", ".join(f"{k} {v}" if v else f"{k} (missing)" for k, v in info["optional"].items())
    return "\n".join(
        [
            f"machine: {info['processor']}, {info['cpu_count']} CPUs ({info['usable_cpus']} usable), {info['platform']}",
            f"jax {info['jax']} (jaxlib {info['jaxlib']}), backend {info['backend']}, device {info['device']}",
            f"python {info['python']}, larix {info['larix']} from {info['larix_path']} (git {info['git']})",
            f"optional: {optional}",
            f"harness loop overhead: {info['call_overhead_ns']:.0f} ns per call (included in every median)",
        ]
    )


def write_json(path: Path, results: Sequence[Result], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "results": [dataclasses.asdict(r) for r in results]}
    path.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Plots


def plot_scaling(
    results: Sequence[Result],
    section: str,
    paths: Sequence[Path],
    *,
    title: str | None = None,
    cases: Sequence[str] | None = None,
) -> str:
    """Save a log-log plot of median time per call against `n` for `section`.

    One line per case name (in `cases` order, default: first-seen order). `N = 0` cannot sit
    on a log axis; it is drawn one decade left of the smallest positive `N` and labelled 0.
    matplotlib is imported here, not at start-up; without it the plot is skipped.

    **Returns:** a one-line message saying what was written or why nothing was.
    """
    if missing_packages(["matplotlib"]):
        return f"plot '{section}' skipped: matplotlib not installed ({INSTALL_HINT})"
    from matplotlib.figure import Figure

    points: dict[str, list[tuple[int, float]]] = {}
    for r in results:
        if r.section == section and r.n is not None and r.median_ns is not None and not r.cold:
            points.setdefault(r.case, []).append((r.n, r.median_ns / 1e3))
    names = [c for c in (cases or points) if c in points]
    if not names:
        return f"plot '{section}' skipped: no measured points"
    positive = [n for pts in points.values() for n, _ in pts if n > 0]
    zero_at = (min(positive) / 10) if positive else 1.0

    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.subplots()
    for name in names:
        pts = sorted(points[name])
        ax.plot([n if n > 0 else zero_at for n, _ in pts], [us for _, us in pts], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = sorted({n for pts in points.values() for n, _ in pts})
    ax.set_xticks([n if n > 0 else zero_at for n in ticks], [format_n(n) for n in ticks])
    ax.minorticks_off()
    ax.set_xlabel("N")
    ax.set_ylabel("µs per call (median)")
    ax.set_title(title or section)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small")
    written = []
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        written.append(str(path))
    return f"plot '{section}' saved: {', '.join(written)}"


def ensure_larix_importable() -> None:
    """Import larix from the environment, or else from this checkout's `src/`."""
    try:
        import larix  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(REPO_DIR / "src"))
