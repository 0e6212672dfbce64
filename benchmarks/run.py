"""Run larix's microbenchmark suite and print a table of medians.

    python benchmarks/run.py --quick            # every section, well under a minute
    python benchmarks/run.py                    # full mode: more samples, a few minutes
    python benchmarks/run.py --only partition   # sections whose name contains "partition"
    python benchmarks/run.py --list             # the cases, without running them

Every `benchmarks/bench_*.py` module is part of the suite: `harness.py` says what such a
module defines and how its cases are timed. The results go to
`benchmarks/results/<date>-<time>-<mode>.json` (or `--name`, `--json`), plots beside them.
Works with larix installed, and from a checkout (it then imports larix from `src/`).
Exits non-zero if a case failed with an error (a missing optional package is not an error).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
if str(BENCH_DIR) not in sys.path:  # `python benchmarks/run.py` adds it; other launchers may not
    sys.path.insert(0, str(BENCH_DIR))


def ensure_larix_importable() -> None:
    """Use the installed larix if there is one, else this checkout's `src/`."""
    try:
        import larix
    except ImportError:
        sys.path.insert(0, str(REPO_DIR / "src"))
        import larix  # noqa: F401


ensure_larix_importable()

import harness  # noqa: E402 - after the sys.path set-up above
import report  # noqa: E402


def discover() -> list[ModuleType]:
    """Import the `bench_*.py` modules in name order. One that fails to import is reported."""
    modules = []
    for path in sorted(BENCH_DIR.glob("bench_*.py")):
        try:
            modules.append(importlib.import_module(path.stem))
        except Exception:  # noqa: BLE001 - a broken module must not hide the others
            print(f"warning: cannot import {path.name}; its cases are skipped:", file=sys.stderr)
            traceback.print_exc()
    return modules


def collect(modules: list[ModuleType], settings: harness.Settings, only: list[str]) -> tuple[list, list]:
    """The selected cases of every module, and the plots of the selected sections."""
    cases: list[harness.Case] = []
    plots: list[harness.Plot] = []
    for module in modules:
        try:
            module_cases = list(module.cases(settings))
        except Exception:  # noqa: BLE001
            print(f"warning: {module.__name__}.cases() failed; its cases are skipped:", file=sys.stderr)
            traceback.print_exc()
            continue
        selected = [c for c in module_cases if not only or any(s in c.section.lower() for s in only)]
        sections = {c.section for c in selected}
        cases += selected
        plots += [p for p in getattr(module, "PLOTS", ()) if p.section in sections]
    return cases, plots


def left_out_in_quick_mode(modules: list[ModuleType], only: list[str]) -> list[tuple[str, str, int | None]]:
    """The `(section, case, n)` of the selected cases that the full run has and quick mode not.

    A module may leave out cases whose set-up is slow in quick mode; the report names them,
    so that no row vanishes unexplained.
    """
    quick = {(c.section, c.name, c.n) for c in collect(modules, harness.QUICK, only)[0]}
    full = [(c.section, c.name, c.n) for c in collect(modules, harness.FULL, only)[0]]
    return [key for key in full if key not in quick]


def _command() -> str:
    """How to start this script again from here, e.g. `.venv/bin/python benchmarks/run.py`."""
    script = Path(__file__).resolve()
    shown = []
    # The interpreter is not resolved: a virtual environment's python is a link out of it.
    for path, fallback in ((Path(sys.executable), "python"), (script, str(script))):
        try:
            shown.append(str(path.relative_to(Path.cwd())))
        except ValueError:
            shown.append(fallback)
    return " ".join(shown)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run larix's microbenchmarks and print a table of medians.",
        epilog="Benchmarks are the benchmarks/bench_*.py modules; see benchmarks/harness.py.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer samples: the whole suite in under a minute"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="SUBSTRING",
        help="run the sections whose name contains SUBSTRING (case-insensitive; repeatable)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results to PATH")
    parser.add_argument("--name", help="write the results to benchmarks/results/NAME.json")
    parser.add_argument("--list", action="store_true", help="list the selected cases and exit")
    parser.add_argument("--docs", action="store_true", help="also save plots that name a docs path there")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = harness.QUICK if args.quick else harness.FULL
    mode = "quick" if args.quick else "full"
    only = [s.lower() for s in args.only]
    modules = discover()
    cases, plots = collect(modules, settings, only)
    left_out = left_out_in_quick_mode(modules, only) if args.quick else []

    if args.list:
        for c in cases:
            n = f" N={report.format_n(c.n)}" if c.n is not None else ""
            print(f"{c.section} / {c.name}{n}" + (f"  (vs {c.baseline})" if c.baseline else ""))
        return 0
    if not cases:
        print("no benchmark cases selected (see --list)", file=sys.stderr)
        return 1

    info = report.machine_info()
    print(report.format_machine(info))
    print(f"mode:     {mode}, {len(cases)} cases\n", flush=True)

    def progress(r: harness.Result) -> None:  # to stderr, so that stdout is just the report
        n = f" N={report.format_n(r.n)}" if r.n is not None else ""
        shown = report.format_time(r.median_ns) if r.status == "ok" else r.status
        print(f"  {r.section} / {r.case}{n}: {shown}", file=sys.stderr, flush=True)

    started = time.localtime()
    t0 = time.perf_counter()
    results = harness.run_cases(cases, settings, progress=progress)
    elapsed = time.perf_counter() - t0

    name = args.name or f"{time.strftime('%Y%m%d-%H%M%S', started)}-{mode}"
    json_path = args.json or report.RESULTS_DIR / f"{name}.json"
    messages = []
    for plot in plots:
        paths = [json_path.parent / f"{json_path.stem}-{plot.filename}"]
        if args.docs and plot.docs_path:
            paths.append(REPO_DIR / plot.docs_path)
        try:
            messages.append(
                report.plot_scaling(results, plot.section, paths, title=plot.title, cases=plot.cases)
            )
        except Exception as error:  # noqa: BLE001 - a failed plot must not lose the results
            messages.append(f"plot '{plot.section}' failed: {type(error).__name__}: {error}")
    meta = {
        **info,
        "mode": mode,
        "settings": dataclasses.asdict(settings),
        "argv": sys.argv[1:] if argv is None else argv,
        "left_out": [{"section": s, "case": c, "n": n} for s, c, n in left_out],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", started),
        "wall_s": round(elapsed, 2),
    }
    report.write_json(json_path, results, meta)

    print(report.format_table(results))
    print()
    print(report.SPREAD_LEGEND)
    for line in (report.format_goals(results, _command()), report.format_left_out(left_out)):
        if line:
            print(line)
    print()
    for message in messages:
        print(message)
    print(f"results:  {json_path}")
    print(report.format_timing(results, elapsed))
    return 1 if any(r.status == "error" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
