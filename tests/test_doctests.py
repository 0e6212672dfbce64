"""Run the examples in every larix docstring, and in docs/**/*.md, as doctests."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import larix

FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
DOCS = Path(__file__).resolve().parents[1] / "docs"


def _module_names() -> list[str]:
    names = ["larix"]
    for info in pkgutil.walk_packages(larix.__path__, prefix="larix."):
        names.append(info.name)
    return sorted(names)


def _run(tests: list[doctest.DocTest]) -> tuple[int, int, str]:
    output: list[str] = []
    runner = doctest.DocTestRunner(optionflags=FLAGS, verbose=False)
    for test in tests:
        runner.run(test, out=output.append)
    result = runner.summarize(verbose=False)
    return result.failed, result.attempted, "".join(output)


@pytest.mark.parametrize("name", _module_names())
def test_docstring_examples(name):
    # Every module imports without the optional packages (tests/test_import.py), so none is
    # skipped: examples that need one import it themselves.
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, name)
    failed, _, report = _run(tests)
    assert failed == 0, f"{failed} docstring example(s) failed in {name}:\n{report}"


def test_docstring_examples_exist():
    # Guards the test above against silently finding nothing.
    finder = doctest.DocTestFinder(exclude_empty=True)
    found = {t.name for name in _module_names() for t in finder.find(importlib.import_module(name), name)}
    assert {"larix._partition.partition", "larix._tree.tree_at", "larix._module.Module"} <= found


def _doc_files() -> list[Path]:
    if not DOCS.is_dir():
        return []
    return sorted(p for p in DOCS.rglob("*.md") if ">>>" in p.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", _doc_files(), ids=lambda p: str(p.relative_to(DOCS)))
def test_docs_examples(path):
    text = path.read_text(encoding="utf-8")
    test = doctest.DocTestParser().get_doctest(text, {"__name__": "__docs__"}, str(path), str(path), 0)
    failed, attempted, report = _run([test])
    assert attempted > 0
    assert failed == 0, f"{failed} example(s) failed in {path}:\n{report}"
