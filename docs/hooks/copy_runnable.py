"""MkDocs hook: the copy button of a `>>>` example copies code that runs.

mkdocs-material's copy button copies a code block's text, prompts and outputs included, so
a pasted doctest fails. Material copies an element's `data-copy` attribute instead when it
has one; this hook gives every code block that holds `>>>` examples a `data-copy` with the
examples' source alone, laid out so that it runs both as a script and when pasted into a
plain `python` prompt:

- prompts and outputs are dropped (doctest's own parser finds the examples);
- blank lines inside a statement are dropped (the prompt would end the statement there);
- a blank line sets apart every statement of several lines (the prompt needs one to end it).

`tests/test_docs.py` pastes every page's copied code into a simulated prompt.
"""

from __future__ import annotations

import doctest
import html
import io
import itertools
import re
import tokenize

__all__ = ["on_page_content", "runnable_code"]

_PRE = re.compile(r"<pre(?P<attributes>[^>]*)>(?P<body>.*?)</pre>", re.DOTALL)
_TAG = re.compile(r"<[^>]+>")
_PROMPT = re.compile(r"^\s*>>>( |$)", re.MULTILINE)


def _string_lines(source: str) -> set[int]:
    """The 0-based numbers of the lines that lie inside a string of several lines."""
    inside: set[int] = set()
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.STRING and token.end[0] > token.start[0]:
                inside.update(range(token.start[0], token.end[0] - 1))
    except (tokenize.TokenError, SyntaxError):
        pass  # an example that does not tokenize is shown as written
    return inside


def runnable_code(text: str) -> str | None:
    """The source of the `>>>` examples in `text`, ready to paste; `None` if it has none."""
    if not _PROMPT.search(text):
        return None
    statements = []
    for example in doctest.DocTestParser().get_examples(text):
        lines = example.source.rstrip("\n").split("\n")
        strings = _string_lines(example.source)
        statements.append([line for i, line in enumerate(lines) if line.strip() or i in strings])
    if not statements:
        return None
    out = statements[0][:]
    for previous, statement in itertools.pairwise(statements):
        if len(previous) > 1 or len(statement) > 1:
            out.append("")  # ends the statement at a prompt; sets a class or loop apart
        out += statement
    return "\n".join(out) + "\n"


def on_page_content(html_text: str, **kwargs: object) -> str:
    """Add `data-copy` to each `<pre>` whose code holds `>>>` examples."""

    def add_copy(match: re.Match[str]) -> str:
        if "data-copy" in match["attributes"]:
            return match[0]
        code = runnable_code(html.unescape(_TAG.sub("", match["body"])))
        if code is None:
            return match[0]
        return f'<pre{match["attributes"]} data-copy="{html.escape(code, quote=True)}">{match["body"]}</pre>'

    return _PRE.sub(add_copy, html_text)
