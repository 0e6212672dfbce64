"""What `benchmarks/run.py` prints under its table: the spread of each ratio, a line on the
goals (what they are, that a noisy machine can miss them, how to re-run one section), and
the cases that quick mode leaves out."""

from __future__ import annotations

import functools
import json
import sys
import types
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import harness  # noqa: E402 - benchmarks/ is not a package: after the sys.path line above
import report  # noqa: E402
import run  # noqa: E402


def _result(case, baseline=None, goal=None, median=100.0, q1=90.0, q3=110.0, ratio=None, n=None):
    return harness.Result(
        "section",
        case,
        n,
        baseline,
        goal,
        False,
        median_ns=median,
        q1_ns=q1,
        q3_ns=q3,
        samples=20,
        ratio=ratio,
    )


def test_each_ratio_shows_its_spread():
    base = _result("theirs", q1=97.0, q3=103.0)  # ±3%
    mine = _result("mine", baseline="theirs", median=200.0, q1=192.0, q3=208.0, ratio=2.0)  # ±4%
    table = report.format_table([base, mine])
    row = next(line for line in table.splitlines() if "| mine " in line)
    assert "2.00x ±5% theirs" in row  # 3% and 4% in quadrature
    assert row.split("|")[4].strip() == "±4%"  # the median's own spread


def _fake_module(quick_only_small: bool, ratio_goal: float) -> types.ModuleType:
    """A benchmark module of two trivial cases per size; quick mode may keep only N = 1."""
    module = types.ModuleType("bench_fake")

    def cases(settings):
        for n in (1, 1000):
            yield harness.Case("fake", "base", functools.partial(lambda: int), n=n, block=False)
            yield harness.Case(
                "fake",
                "same",
                functools.partial(lambda: int),
                n=n,
                baseline="base",
                goal=ratio_goal,
                block=False,
            )
            if n == 1 or not (settings.quick and quick_only_small):
                yield harness.Case(
                    "fake", "peer", functools.partial(lambda: int), n=n, baseline="base", block=False
                )

    module.cases = cases
    return module


def test_the_cases_quick_mode_leaves_out_are_named():
    left_out = run.left_out_in_quick_mode([_fake_module(True, 2.0)], [])
    assert left_out == [("fake", "peer", 1000)]
    line = report.format_left_out(left_out)
    assert (
        line
        == "left out in quick mode, to keep it short: fake / peer at N = 1k. Run without --quick to measure them."
    )
    assert run.left_out_in_quick_mode([_fake_module(False, 2.0)], []) == []
    assert report.format_left_out([]) is None


def test_a_missed_goal_is_explained_under_the_table(tmp_path, monkeypatch, capsys):
    # Two calls of the same function: their ratio is about 1, so a goal of 0.01 is missed.
    monkeypatch.setattr(run, "discover", lambda: [_fake_module(True, 0.01)])
    status = run.main(["--quick", "--json", str(tmp_path / "out.json")])
    out = capsys.readouterr().out
    assert status == 0, "a missed goal is not a failure: a noisy machine can miss one"
    lines = out.splitlines()
    legend = lines.index(report.SPREAD_LEGEND)
    assert lines[legend - 1] == "" and " | " in lines[legend - 2], "the footer is right under the table"
    goals = lines[legend + 1]
    assert goals.startswith("goals: 0 of 2 met (MISS: fake). A goal is the largest ratio to its baseline")
    assert "a busy or noisy machine can miss one, and a MISS does not fail the run" in goals
    assert goals.endswith('benchmarks/run.py --only "fake"')
    assert lines[legend + 2].startswith("left out in quick mode, to keep it short: fake / peer at N = 1k.")
    meta = json.loads((tmp_path / "out.json").read_text())["meta"]
    assert meta["left_out"] == [{"section": "fake", "case": "peer", "n": 1000}]


@pytest.mark.parametrize(
    ("cwd", "expected"),
    [("repo", "{python} benchmarks/run.py"), ("elsewhere", "{python} {script}")],
)
def test_the_rerun_command_is_the_one_that_was_typed(cwd, expected, tmp_path, monkeypatch):
    repo = BENCH_DIR.parent
    monkeypatch.chdir(repo if cwd == "repo" else tmp_path)
    python = Path(sys.executable)
    shown_python = (
        str(python.relative_to(repo)) if cwd == "repo" and python.is_relative_to(repo) else "python"
    )
    assert run._command() == expected.format(python=shown_python, script=BENCH_DIR / "run.py")
