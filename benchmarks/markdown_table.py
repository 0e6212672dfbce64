"""Print a run's results (the JSON that run.py writes) as a Markdown table, for the docs.

Usage: python benchmarks/markdown_table.py benchmarks/results/<run>.json [--only SECTION ...]
"""

from __future__ import annotations

import argparse
import json


def _time(ns: float) -> str:
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json")
    parser.add_argument("--only", action="append", default=[])
    args = parser.parse_args()
    results = json.load(open(args.json))["results"]
    print("| section | case | N | median | vs baseline | goal |")
    print("|---|---|---:|---:|---|---|")
    for r in results:
        if r["status"] != "ok" or (args.only and not any(s in r["section"] for s in args.only)):
            continue
        ratio = "baseline" if r["ratio"] is None else f"{r['ratio']:.2f}x {r['baseline']}"
        goal = ""
        if r["goal"] is not None and r["ratio"] is not None:
            goal = f"≤ {r['goal']}x " + ("ok" if r["ratio"] <= r["goal"] else "**missed**")
        n = "" if r["n"] is None else f"{r['n']:,}"
        print(f"| {r['section']} | {r['case']} | {n} | {_time(r['median_ns'])} | {ratio} | {goal} |")


if __name__ == "__main__":
    main()
