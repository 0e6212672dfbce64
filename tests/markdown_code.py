"""Helpers for the tests that run the code shown in README.md and docs/ (test_docs.py,
test_readme.py, test_multihost.py).

Two kinds of Python block are shown. `>>>` examples are run by tests/test_doctests.py.
Plain blocks (the README's, the home page's) show what a `print` writes as the comment
right after it, on the same line or on the comment lines below:

    print(model.weight.shape)  # (3, 2)
    print(model)
    # Linear(
    #   ...
    # )

`run_plain_blocks` runs such blocks in order in one namespace and compares each `print`'s
output with its comment (doctest's `...` matches anything). A page whose plain blocks
print nothing (snippets for another environment, say) is not run.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"

_FENCE = re.compile(
    r"^(?P<indent>[ ]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<code>.*?)^(?P=indent)```[ ]*$", re.MULTILINE | re.DOTALL
)
_PRINT = re.compile(r"^print\(.*?\)\s*(?:#\s?(?P<inline>.*))?$")
_RECIPE = re.compile(r"^# [\w/.-]+\.py:")  # "# train.py: every process runs this file."


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int  # of the opening fence, 1-based

    @property
    def is_doctest(self) -> bool:
        return any(line.lstrip().startswith(">>>") for line in self.code.splitlines())

    @property
    def is_recipe(self) -> bool:
        """A file of its own (its first line names it), run as a program, not in a session."""
        return bool(_RECIPE.match(self.code))


def code_blocks(path: Path, lang: str | None = None) -> list[Block]:
    """The fenced code blocks of a Markdown file, optionally only those of one language."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for match in _FENCE.finditer(text):
        if lang is not None and match["lang"] != lang:
            continue
        line = text.count("\n", 0, match.start()) + 1
        blocks.append(Block(match["lang"], textwrap.dedent(match["code"]), line))
    return blocks


def _checks(code: str) -> list[tuple[str, str | None]]:
    """Cut a block into (code, shown output) pieces: each `print` line ends a piece."""
    pieces: list[tuple[str, str | None]] = []
    lines = code.splitlines()
    start, i = 0, 0
    while i < len(lines):
        match = _PRINT.match(lines[i])
        if match is None:
            i += 1
            continue
        shown = [match["inline"]] if match["inline"] else []
        j = i + 1
        while not shown and j < len(lines) and lines[j].startswith("#"):
            j += 1
        if not shown:
            shown = [re.sub(r"^# ?", "", line) for line in lines[i + 1 : j]]
        if lines[start:i]:
            pieces.append(("\n".join(lines[start:i]), None))
        pieces.append((lines[i], "\n".join(shown) + "\n" if shown else None))
        start = i = max(j, i + 1)
    if lines[start:]:
        pieces.append(("\n".join(lines[start:]), None))
    return pieces


def _plain_blocks(path: Path) -> list[Block]:
    return [b for b in code_blocks(path, "python") if not b.is_doctest and not b.is_recipe]


def shows_printed_output(path: Path) -> bool:
    """Whether a plain block of `path` prints something (so that the page is run)."""
    return any(_PRINT.match(line) for block in _plain_blocks(path) for line in block.code.splitlines())


def run_plain_blocks(path: Path) -> list[str]:
    """Run the plain (not `>>>`, not recipe) Python blocks of `path` in order.

    **Returns:** one message per `print` whose output differs from its comment, or that
    shows no output at all.
    """
    namespace: dict[str, object] = {"__name__": "__main__"}
    checker = doctest.OutputChecker()
    problems = []
    for block in _plain_blocks(path):
        for piece, shown in _checks(block.code):
            where = f"{path.name}, the block at line {block.line}"
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(piece, where, "exec"), namespace)
            if not _PRINT.match(piece):
                continue
            got = out.getvalue()
            if shown is None:
                problems.append(f"{where}: `{piece}` shows no output; it prints:\n{got}")
            elif not checker.check_output(shown, got, doctest.ELLIPSIS):
                problems.append(f"{where}: `{piece}` shows\n{shown}but prints\n{got}")
    return problems
