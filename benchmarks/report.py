"""Reporting benchmark results: the printed table, the machine, the JSON file and plots."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import INSTALL_HINT, Result, block_overhead_ns, loop_overhead_ns, missing_packages

__all__ = [
    "RESULTS_DIR",
    "SPREAD_LEGEND",
    "format_goals",
    "format_left_out",
    "format_machine",
    "format_n",
    "format_table",
    "format_time",
    "format_timing",
    "machine_info",
    "plot_scaling",
    "write_json",
]

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

OPTIONAL_PACKAGES = ("equinox", "inox", "flax", "optax", "matplotlib")


# Formatting numbers ---------------------------------------------------------------------------


def format_time(ns: float | None) -> str:
    """`1234.5` -> `"1.23 µs"`: three significant digits in the largest fitting unit."""
    if ns is None:
        return "-"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3), ("ns", 1.0)):
        # 999.7 µs would print as "1000 µs": compare after rounding to three digits.
        if float(f"{ns / scale:.3g}") >= 1 or unit == "ns":
            value = float(f"{ns / scale:.3g}")
            digits = 0 if value >= 100 else 1 if value >= 10 else 2
            return f"{value:.{digits}f} {unit}"
    raise AssertionError("unreachable")


def format_n(n: int | None) -> str:
    """`100000` -> `"100k"`, `None` -> `""`."""
    if n is None:
        return ""
    for suffix, scale in (("M", 1_000_000), ("k", 1_000)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{suffix}"
    return str(n)


def _relative_spread(r: Result) -> float | None:
    # Half the interquartile range relative to the median: how noisy the samples were.
    if r.median_ns is None or r.q1_ns is None or r.q3_ns is None or r.samples < 4:
        return None
    return (r.q3_ns - r.q1_ns) / (2 * r.median_ns)


def _spread(r: Result) -> str:
    spread = _relative_spread(r)
    return "" if spread is None else f"±{100 * spread:.0f}%"


def _ratio_spread(r: Result, base: Result | None) -> str:
    # A ratio is as noisy as its two medians together: their relative spreads, added in
    # quadrature (as for independent errors).
    spreads = (_relative_spread(r), None if base is None else _relative_spread(base))
    if spreads[0] is None or spreads[1] is None:
        return ""
    return f"±{100 * math.hypot(*spreads):.0f}%"


def _goal(r: Result) -> str:
    if r.goal is None:
        return ""
    met = r.goal_met
    return f"<= {r.goal:g}x " + ("ok" if met else "?" if met is None else "MISS")


# The table -----------------------------------------------------------------------------------


def format_table(results: Sequence[Result]) -> str:
    """The results as an aligned text table, a blank line between sections, notes below.

    The "vs baseline" column holds the ratio of the case's median to its baseline's, the
    spread of that ratio, and the baseline's name.
    """
    header = ("section", "case", "N", "median", "spread", "vs baseline", "goal")
    by_key = {(r.section, r.n, r.case): r for r in results}
    versus: list[tuple[str, str, str] | str] = []  # (ratio, its spread, baseline) or a word
    for r in results:
        if r.ratio is not None:
            base = by_key.get((r.section, r.n, r.baseline))
            versus.append((f"{r.ratio:.2f}x", _ratio_spread(r, base), str(r.baseline)))
        else:
            versus.append("(baseline)" if r.baseline is None and r.status == "ok" else "")
    ratio_width = max((len(v[0]) for v in versus if isinstance(v, tuple)), default=0)
    spread_width = max((len(v[1]) for v in versus if isinstance(v, tuple)), default=0)

    rows: list[tuple[str, ...] | None] = []
    notes: dict[str, str] = {}  # note text -> where it was first seen; repeats print once
    previous = None
    for r, v in zip(results, versus):
        if previous is not None and r.section != previous:
            rows.append(None)
        previous = r.section
        median = format_time(r.median_ns) if r.status == "ok" else r.status
        name = r.case + (" (first call)" if r.cold else "")
        vs = v if isinstance(v, str) else f"{v[0]:>{ratio_width}} {v[1]:>{spread_width}} {v[2]}"
        rows.append((r.section, name, format_n(r.n), median, _spread(r), vs, _goal(r)))
        if r.note and r.note not in notes:
            notes[r.note] = f"{r.section} / {r.case}" + (f" N={format_n(r.n)}" if r.n is not None else "")
    filled = [header, *(row for row in rows if row is not None)]
    widths = [max(len(row[i]) for row in filled) for i in range(len(header))]
    numeric = {2, 3, 4}

    def line(row: tuple[str, ...]) -> str:
        cells = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return " | ".join(cells).rstrip()

    out = [line(header), "-+-".join("-" * w for w in widths)]
    out += ["" if row is None else line(row) for row in rows]
    if notes:
        out += ["", "notes:", *(f"  [{where}] {note}" for note, where in notes.items())]
    return "\n".join(out)


def format_left_out(left_out: Sequence[tuple[str, str, int | None]]) -> str | None:
    """One line naming the `(section, case, n)`s that quick mode leaves out; `None` if none."""
    if not left_out:
        return None
    sizes: dict[tuple[str, str], list[int | None]] = {}
    for section, case, n in left_out:
        sizes.setdefault((section, case), []).append(n)
    # Cases left out at the same sizes are named together: "inox manual, nnx jit at N = 10k, 100k".
    groups: dict[tuple[str, tuple[int | None, ...]], list[str]] = {}
    for (section, case), ns in sizes.items():
        groups.setdefault((section, tuple(ns)), []).append(case)
    parts = []
    for (section, ns), cases in groups.items():
        at = "" if ns == (None,) else " at N = " + ", ".join(format_n(n) for n in ns if n is not None)
        parts.append(f"{section} / {', '.join(cases)}{at}")
    return (
        f"left out in quick mode, to keep it short: {'; '.join(parts)}. Run without --quick to measure them."
    )


def format_goals(results: Sequence[Result], command: str) -> str | None:
    """One line under the table: how many goals were met, what a goal is, how to re-run.

    `command` is how to run `run.py` (e.g. `.venv/bin/python benchmarks/run.py`). `None`
    when no case has a goal.
    """
    judged = [r for r in results if r.goal is not None and r.goal_met is not None]
    if not judged:
        return None
    missed = [r for r in judged if not r.goal_met]
    sections = list(dict.fromkeys(r.section for r in missed))
    tally = f"all {len(judged)} met" if not missed else f"{len(judged) - len(missed)} of {len(judged)} met"
    if missed:
        tally += f" (MISS: {', '.join(sections)})"
    example = sections[0] if sections else judged[0].section
    return (
        f"goals: {tally}. A goal is the largest ratio to its baseline that larix aims for; a busy or "
        "noisy machine can miss one, and a MISS does not fail the run. To re-run one section with "
        f'more samples: {command} --only "{example}"'
    )


SPREAD_LEGEND = (
    "spread: half the interquartile range of the samples, relative to the median; "
    "a ratio's spread combines those of its two medians."
)


def format_timing(results: Sequence[Result], elapsed_s: float, slowest: int = 3) -> str:
    """Where the suite's running time went: set-up vs sampling, and the slowest cases."""
    setup = sum(r.setup_s for r in results)
    sampling = sum(r.sampling_s for r in results)
    ranked = sorted(results, key=lambda r: r.setup_s + r.sampling_s, reverse=True)[:slowest]
    worst = ", ".join(
        f"{r.section} / {r.case}"
        + (f" N={format_n(r.n)}" if r.n is not None else "")
        + f" {r.setup_s + r.sampling_s:.1f} s"
        for r in ranked
    )
    return (
        f"{len(results)} cases in {elapsed_s:.1f} s: {setup:.1f} s building and warming up, "
        f"{sampling:.1f} s sampling; slowest: {worst}"
    )


# The machine ---------------------------------------------------------------------------------


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_describe() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_DIR), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_info() -> dict[str, Any]:
    """Versions, hardware and the harness's own overheads, for the header and the JSON."""
    import jax

    import larix

    try:
        usable_cpus: int | None = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
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
        "device": f"{getattr(device, 'device_kind', device.platform)} x{jax.device_count()}",
        "larix": getattr(larix, "__version__", "?"),
        "larix_path": str(Path(larix.__file__).resolve().parent),
        "git": _git_describe(),
        "optional": {name: _package_version(name) for name in OPTIONAL_PACKAGES},
        "loop_overhead_ns": round(loop_overhead_ns(), 1),
        "block_overhead_ns": round(block_overhead_ns(), 1),
    }


def format_machine(info: dict[str, Any]) -> str:
    optional = ", ".join(f"{k} {v}" if v else f"{k} (not installed)" for k, v in info["optional"].items())
    return "\n".join(
        [
            f"machine:  {info['processor']}, {info['cpu_count']} CPUs ({info['usable_cpus']} usable), {info['platform']}",
            f"jax:      {info['jax']} (jaxlib {info['jaxlib']}), backend {info['backend']}, device {info['device']}",
            f"larix:    {info['larix']} from {info['larix_path']} (git {info['git']}); python {info['python']}",
            f"optional: {optional}",
            f"harness:  timing loop {info['loop_overhead_ns']:.0f} ns per call, blocking on a ready array "
            f"{info['block_overhead_ns'] / 1e3:.2f} µs (both inside every median)",
        ]
    )


def write_json(path: Path, results: Sequence[Result], meta: dict[str, Any]) -> None:
    """Write `{"meta": ..., "results": [...]}`; times are in nanoseconds per call."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "results": [dataclasses.asdict(r) for r in results]}
    path.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


# Plots -----------------------------------------------------------------------------------------


def plot_scaling(
    results: Sequence[Result],
    section: str,
    paths: Sequence[Path],
    *,
    title: str | None = None,
    cases: Sequence[str] | None = None,
) -> str:
    """Save a log-log plot of median time per call against `n`, one line per case name.

    Lines follow `cases` (default: every case of `section`, in first-seen order). `N = 0`
    cannot sit on a log axis: it is drawn one decade left of the smallest positive `N` and
    labelled 0. matplotlib is imported here, not at start-up; without it nothing is drawn.

    **Returns:** a one-line message saying what was written, or why nothing was.
    """
    if missing_packages(["matplotlib"]):
        return f"plot '{section}' skipped: matplotlib not installed ({INSTALL_HINT})"
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    points: dict[str, list[tuple[int, float]]] = {}
    for r in results:
        if r.section == section and r.n is not None and r.median_ns is not None and not r.cold:
            points.setdefault(r.case, []).append((r.n, r.median_ns / 1e3))
    names = [name for name in (cases or points) if name in points]
    if not names:
        return f"plot '{section}' skipped: nothing was measured"
    sizes = sorted({n for name in names for n, _ in points[name]})
    positive = [n for n in sizes if n > 0]
    zero_at = min(positive) / 10 if positive else 1.0

    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.subplots()
    for name in names:
        pts = sorted(points[name])
        ax.plot([n or zero_at for n, _ in pts], [us for _, us in pts], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks([n or zero_at for n in sizes], [format_n(n) for n in sizes])
    ax.xaxis.set_minor_locator(_null_locator())
    ax.set_xlabel("N")
    ax.set_ylabel("µs per call (median)")
    ax.set_title(title or section)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small")
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return f"plot '{section}' saved: {', '.join(str(p) for p in paths)}"


def _null_locator() -> Any:
    from matplotlib.ticker import NullLocator

    return NullLocator()
