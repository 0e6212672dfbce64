"""Run larix's microbenchmark suite and print a table of medians.

    python benchmarks/run.py --quick            # every section, about half a minute
    python benchmarks/run.py                    # full mode: more samples, a few minutes
    python benchmarks/run.py --only partition   # sections whose name contains "partition"
    python benchmarks/run.py --list             # the cases, without running them

Every `benchmarks/bench_*.py` module is a benchmark: see `harness.py` for what it defines
and how cases are timed. Results go to `benchmarks/results/<time>.json` (or `--json PATH`).
Works with larix installed, or from a checkout (it then imports larix from `src/`).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import time
import traceback
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import harness  # noqa: E402 - needs the sys.path entry above when run from elsewhere


def discover(names: list[str] | None = None) -> list[tuple[str, object]]:
    """Import `bench_*.py` modules in name order; a module that fails to import is reported."""
    modules = []
    for path in sorted(BENCH_DIR.glob("bench_*.py")):
        if names and path.stem not in names:
            continue
        try:
            modules.append((path.stem, importlib.import_module(path.stem)))
        except Exception:  # noqa: BLE001 - a broken module must not hide the others
            print(f"warning: could not import {path.name}; its cases are skipped:", file=sys.stderr)
            traceback.print_exc()
    return modules


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (the whole suite in under a minute)")
    parser.add_argument(
        "--only",
        action="append",
        metavar="SUBSTRING",
        help="run only sections whose name contains SUBSTRING (case-insensitive; repeatable)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="where to write the results JSON")
    parser.add_argument("--name", help="write benchmarks/results/NAME.json (default: date and time)")
    parser.add_argument("--list", action="store_true", help="list the selected cases and exit")
    parser.add_argument(
        "--docs", action="store_true", help="also save plots that name a docs path into docs/ (for the docs pages)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    harness.ensure_larix_importable()
    settings = harness.QUICK if args.quick else harness.FULL

    modules = discover()
    cases: list[harness.Case] = []
    plots: list[harness.Plot] = []
    only = [s.lower() for s in args.only or []]
    for stem, module in modules:
        try:
            module_cases = list(module.cases(settings))
        except Exception:  # noqa: BLE001
            print(f"warning: {stem}.cases() failed; its cases are skipped:", file=sys.stderr)
            traceback.print_exc()
            continue
        cases += [c for c in module_cases if not only or any(s in c.section.lower() for s in only)]
        plots += list(getattr(module, "PLOTS", ()))

    if args.list:
        for c in cases:
            n = f" N={harness.format_n(c.n)}" if c.n is not None else ""
            print(f"{c.section} / {c.name}{n}" + (f" (vs {c.baseline})" if c.baseline else ""))
        return 0
    if not cases:
        print("no benchmark cases selected", file=sys.stderr)
        return 1

    info = harness.machine_info()
    print(harness.format_machine(info))
    mode = "quick" if settings.quick else "full"
    print(f"mode: {mode}; {len(cases)} cases\n", flush=True)

    started = time.time()
    t0 = time.perf_counter()

    def progress(r: harness.Result) -> None:
        n = f" N={harness.format_n(r.n)}" if r.n is not None else ""
        shown = harness.format_time(r.median_ns) if r.status == "ok" else r.status
        print(f"  {r.section} / {r.case}{n}: {shown}", file=sys.stderr, flush=True)

    results = harness.run_cases(cases, settings, progress=progress)
    elapsed = time.perf_counter() - t0

    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    name = args.name or f"{stamp}-{mode}"
    json_path = args.json or harness.RESULTS_DIR / f"{name}.json"
    messages = []
    sections = {c.section for c in cases}
    for plot in plots:
        if plot.section not in sections:
            continue
        paths = [json_path.parent / f"{json_path.stem}-{plot.filename}"]
        if args.docs and plot.docs_path:
            paths.append(harness.REPO_DIR / plot.docs_path)
        try:
            messages.append(harness.plot_scaling(results, plot.section, paths, title=plot.title, cases=plot.cases))
        except Exception as error:  # noqa: BLE001 - a plot must not lose the results
            messages.append(f"plot '{plot.section}' failed: {type(error).__name__}: {error}")

    meta = {
        **info,
        "mode": mode,
        "settings": dataclasses.asdict(settings),
        "argv": sys.argv[1:] if argv is None else argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_s": round(elapsed, 2),
    }
    harness.write_json(json_path, results, meta)

    print()
    print(harness.format_table(results))
    print()
    for message in messages:
        print(message)
    print(f"results: {json_path}")
    print(f"{len(results)} cases in {elapsed:.1f} s ({mode} mode)")
    return 1 if any(r.status == "error" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
