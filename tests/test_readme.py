"""The README as a newcomer meets it: its two commands, and its code, which must print what
it shows."""

from __future__ import annotations

from markdown_code import REPO, code_blocks, run_plain_blocks

README = REPO / "README.md"


def test_the_readme_starts_with_the_two_commands():
    # The first code block is what a newcomer copies: one line to install and run the quick
    # benchmarks, one to install and run the tests (the command .ci/run checks for).
    first = code_blocks(README)[0]
    assert first.lang == "bash"
    bench, tests = first.code.strip().splitlines()
    assert bench.startswith("python3 -m venv .venv && ") and bench.endswith(
        ".venv/bin/python benchmarks/run.py --quick"
    )
    assert tests.startswith("python3 -m venv .venv && ") and tests.endswith(".venv/bin/python -m pytest -n 2")


def test_the_readme_code_runs_and_prints_what_it_shows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = [b for b in code_blocks(README, "python") if not b.is_doctest]
    assert len(blocks) >= 2
    problems = run_plain_blocks(README)
    assert not problems, "\n\n".join(problems)
