"""The docs as a reader meets them: code that runs when copied, outputs that match, a home
page that links every API page, install hints that work from a clone, and a built site
whose signatures fit their boxes and which asks nothing of other hosts.

The `>>>` examples themselves are run by test_doctests.py, the multi-host recipe by
test_multihost.py, the README by test_readme.py. The tests of the built site need the
`docs` extra (they are skipped without mkdocs); the browser tests also need Playwright and
a Chromium (`pip install playwright`, and `apt-get install chromium` or
`playwright install chromium`), and are skipped without them.
"""

from __future__ import annotations

import code
import contextlib
import doctest
import functools
import gc
import html
import importlib
import importlib.util
import io
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import larix
from markdown_code import DOCS, REPO, code_blocks, run_plain_blocks, shows_printed_output

# The copy hook of the site (docs/hooks/copy_runnable.py), imported from its file.
_spec = importlib.util.spec_from_file_location("copy_runnable", DOCS / "hooks" / "copy_runnable.py")
assert _spec is not None and _spec.loader is not None
copy_runnable = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(copy_runnable)
runnable_code = copy_runnable.runnable_code

PAGES = sorted(p for p in DOCS.rglob("*.md"))
TRACEBACK = "Traceback (most recent call last)"


def _page_id(path: Path) -> str:
    return str(path.relative_to(DOCS))


# --------------------------------------------------------------------------- copied code


class _Prompt(code.InteractiveConsole):
    """Python's interactive prompt (the plain `python` one), fed pasted text line by line.

    A blank line ends a compound statement there, and a statement that starts before the
    previous one has ended is a syntax error: the layout that the copy hook must produce.
    Errors are collected rather than printed. With `execute=False` the statements are only
    compiled, as the prompt would cut them.
    """

    def __init__(self, namespace: dict[str, object], execute: bool = True) -> None:
        super().__init__(namespace)
        self.execute = execute
        self.errors: list[str] = []

    def runcode(self, code_object) -> None:
        if self.execute:
            super().runcode(code_object)

    def write(self, data: str) -> None:
        self.errors.append(data)

    def paste(self, text: str) -> str:
        """Paste `text` and press Enter once more; returns the error output, if any."""
        self.errors = []
        more = False
        with contextlib.redirect_stdout(io.StringIO()):
            for line in text.splitlines():
                more = self.push(line)
            if more:
                self.push("")
        return "".join(self.errors)


def test_copied_code_drops_prompts_and_outputs_and_keeps_statements_apart():
    text = """\
>>> import math
>>> class Point:
...     x: float
...
...     def norm(self):
...         return math.hypot(self.x, 0.0)
>>> doc = '''one
...
... two'''
>>> Point().__class__.__name__
'Point'
>>> for _ in range(2): pass
>>> print(doc)
one
<BLANKLINE>
two
"""
    assert (
        runnable_code(text)
        == """\
import math

class Point:
    x: float
    def norm(self):
        return math.hypot(self.x, 0.0)

doc = '''one

two'''

Point().__class__.__name__
for _ in range(2): pass
print(doc)
"""
    )
    assert runnable_code("python3 -m venv .venv\n") is None
    assert runnable_code("x = 1  # a plain block\nprint(x)\n") is None


def test_the_copy_hook_adds_the_copied_code_to_code_blocks():
    page = '<div class="highlight"><pre><span></span><code><span class="gp">&gt;&gt;&gt; </span>x = 1\n&gt;&gt;&gt; x\n1\n</code></pre></div><pre><code>plain</code></pre>'
    out = copy_runnable.on_page_content(page, page=None, config=None, files=None)
    assert '<pre data-copy="x = 1\nx\n"><span></span>' in out
    assert "<pre><code>plain</code></pre>" in out


# Pages whose copied code is only cut into statements, not run: their examples are slow
# (test_doctests.py runs them).
_SLOW_PAGES = {"transforms.md": "30 s of compiling, on a 2-core machine"}


@pytest.mark.parametrize("path", [p for p in PAGES if ">>>" in p.read_text(encoding="utf-8")], ids=_page_id)
def test_copied_code_of_each_page_runs_at_a_plain_python_prompt(path, tmp_path, monkeypatch):
    # A reader pastes each block's copied code into one `python` session, top to bottom.
    monkeypatch.chdir(tmp_path)  # examples may write files
    namespace: dict[str, object] = {"__name__": "__main__"}
    prompt = _Prompt(namespace, execute=_page_id(path) not in _SLOW_PAGES)
    try:
        for block in code_blocks(path, "python"):
            copied = runnable_code(block.code)
            if copied is None:
                continue
            errors = prompt.paste(copied)
            if TRACEBACK in block.code:
                continue  # the block shows an error on purpose
            assert not errors, (
                f"{_page_id(path)}, the block at line {block.line}, pasted:\n{copied}\n{errors}"
            )
    finally:
        # A page that stopped half-way leaves its temporary directories to the garbage
        # collector, which warns; collect them here rather than in a later test.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            namespace.clear()
            gc.collect()


def _docstring_blocks() -> Iterator[tuple[str, str]]:
    names = ["larix", *(m.name for m in pkgutil.walk_packages(larix.__path__, prefix="larix."))]
    finder = doctest.DocTestFinder(exclude_empty=True)
    for name in sorted(names):
        for test in finder.find(importlib.import_module(name), name):
            yield test.name, test.docstring or ""


def test_copied_docstring_examples_paste_at_a_plain_python_prompt():
    # The API pages' examples come from docstrings, which test_doctests.py runs; here the
    # copied code of each docstring is only cut into statements, as the prompt would.
    problems = []
    for name, docstring in _docstring_blocks():
        copied = runnable_code(docstring)
        if copied is None:
            continue
        errors = _Prompt({}, execute=False).paste(copied)
        if errors:
            problems.append(f"{name}, pasted:\n{copied}\n{errors}")
    assert not problems, "\n\n".join(problems)


# --------------------------------------------------------------------------- plain blocks


@pytest.mark.parametrize("path", [p for p in PAGES if shows_printed_output(p)], ids=_page_id)
def test_plain_code_blocks_print_what_the_page_shows(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    problems = run_plain_blocks(path)
    assert not problems, "\n\n".join(problems)


def test_every_recipe_on_the_site_is_run_by_a_test():
    # A recipe is a file of its own (its first line is `# name.py: ...`), run as a program:
    # no doctest runs it, so a test must, as written on the page.
    tested = {("transforms.md", "train.py"): "test_multihost.py::test_the_docs_recipe_runs_as_written"}
    recipes = {
        (_page_id(page), block.code.split(":", 1)[0].removeprefix("# "))
        for page in PAGES
        for block in code_blocks(page, "python")
        if block.is_recipe
    }
    assert recipes == set(tested), f"recipes on the site: {sorted(recipes)}; run each as written in a test"


# --------------------------------------------------------------------------- links and hints


def test_the_home_page_links_every_api_page():
    nav_pages = re.findall(
        r"^\s*- [^:]+: (api/[\w-]+\.md)\s*$", (REPO / "mkdocs.yml").read_text(), re.MULTILINE
    )
    assert len(nav_pages) >= 10
    home = (DOCS / "index.md").read_text(encoding="utf-8")
    missing = [page for page in nav_pages if f"]({page})" not in home]
    assert not missing, f"docs/index.md's API reference list omits {missing}"


def test_mkdocs_serve_names_the_virtual_environment():
    # `mkdocs serve` alone fails outside an activated environment; the README's commands
    # all run from .venv/bin.
    for path in [REPO / "README.md", *PAGES]:
        bare = re.findall(r"(?<![/\w])mkdocs serve", path.read_text(encoding="utf-8"))
        assert not bare, f"{path.relative_to(REPO)}: write `.venv/bin/mkdocs serve`, not `mkdocs serve`"


# larix is not on a package index: `pip install "larix[io]"` fails outside a clone.
_INDEX_INSTALL = re.compile(r"""pip install (?:-U )?['"]?larix\b""")
def _hint_files() -> list:
    paths = [REPO / "README.md", REPO / "benchmarks" / "README.md", *PAGES]
    for folder in ("benchmarks", "examples", "src/larix"):
        paths += sorted((REPO / folder).rglob("*.py"))
    params = []
    for path in paths:
        name = str(path.relative_to(REPO))
        params.append(pytest.param(path, id=name))
    return params


@pytest.mark.parametrize("path", _hint_files())
def test_install_hints_work_from_a_clone(path):
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if _INDEX_INSTALL.search(line)]
    assert not lines, 'write `pip install -e ".[extra]"` (from a clone) instead of:\n' + "\n".join(lines)


# --------------------------------------------------------------------------- the built site

# The content column of a page is 688 px wide at a 1280 px wide window (both side bars
# shown), 656 px inside its padding; the code font is 13.6 px, 8.2 px per character: 80
# columns. mkdocs.yml has Ruff format signatures at 60 (`line_length`); Ruff lets a line
# run longer only when it cannot break it.
SIGNATURE_COLUMNS = 72


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> tuple[Path, str]:
    """The site, built as CI builds it; and the build's log."""
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip('mkdocs is not installed (pip install -e ".[docs]")')
    site_dir = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stderr[-4000:]}"
    return site_dir, done.stdout + done.stderr


def _html_pages(site_dir: Path) -> list[Path]:
    return sorted(site_dir.rglob("index.html"))


def _text(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def test_signatures_are_formatted(site):
    _, log = site
    assert "Formatting signatures requires" not in log, (
        "install the docs extra: it has Ruff, which formats signatures"
    )


def test_every_signature_fits_the_content_column(site):
    site_dir, _ = site
    too_wide, count = [], 0
    for page in _html_pages(site_dir):
        text = page.read_text(encoding="utf-8")
        for signature in re.findall(r'<div class="doc-signature[^"]*"[^>]*>(.*?)</div>', text, re.DOTALL):
            count += 1
            too_wide += [
                f"{page.parent.relative_to(site_dir)}: {line!r}"
                for line in _text(signature).splitlines()
                if len(line) > SIGNATURE_COLUMNS
            ]
    assert count > 100, "no signatures found: has the markup of mkdocstrings changed?"
    assert not too_wide, f"signature lines over {SIGNATURE_COLUMNS} columns:\n" + "\n".join(too_wide)


def test_copy_buttons_copy_runnable_code(site):
    site_dir, _ = site
    blocks = 0
    for page in _html_pages(site_dir):
        for match in re.finditer(
            r"<pre(?P<attributes>[^>]*)>(?P<body>.*?)</pre>", page.read_text(encoding="utf-8"), re.DOTALL
        ):
            expected = runnable_code(_text(match["body"]))
            if expected is None:
                continue
            blocks += 1
            copied = re.search(r'data-copy="([^"]*)"', match["attributes"])
            assert copied is not None, f"{page}: a block of >>> examples copies its prompts"
            assert html.unescape(copied[1]) == expected
    assert blocks > 50


def test_the_site_loads_nothing_from_other_hosts(site):
    # Offline, a request to Google Fonts (mkdocs-material's default) stalls the page.
    site_dir, _ = site
    external = re.compile(r"""<(?:link|script|img)\b[^>]*\b(?:href|src)=["']?(?:https?:)?//""")
    found = []
    for page in [*_html_pages(site_dir), site_dir / "404.html"]:
        found += [f"{page}: {m[0]}" for m in external.finditer(page.read_text(encoding="utf-8"))]
    for css in site_dir.rglob("*.css"):
        if "fonts.googleapis" in css.read_text(encoding="utf-8"):
            found.append(f"{css}: fonts.googleapis")
    assert not found, "\n".join(found)


# --------------------------------------------------------------------------- in a browser


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def served(site) -> Iterator[str]:
    """The built site over HTTP on localhost (the clipboard needs a secure origin)."""
    site_dir, _ = site
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(site_dir)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser():
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("Playwright is not installed (pip install playwright)")
    from playwright.sync_api import Error, sync_playwright

    with sync_playwright() as playwright:
        executable = _chromium()
        try:
            browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        except Error as error:
            pytest.skip(
                f"no Chromium to drive (apt-get install chromium, or playwright install chromium): {error}"
            )
        yield browser
        browser.close()


API_PAGES = sorted(p.stem for p in (DOCS / "api").glob("*.md"))


@pytest.mark.parametrize("width", [1280, 390], ids=["desktop", "phone"])
def test_no_signature_box_overflows(browser, served, width):
    page = browser.new_page(viewport={"width": width, "height": 900})
    overflowing = []
    for name in API_PAGES:
        page.goto(f"{served}/api/{name}/")
        overflowing += page.evaluate(
            """(name) => [...document.querySelectorAll('.doc-signature pre, .doc-signature code')]
                .filter((e) => e.scrollWidth > e.clientWidth + 1)
                .map((e) => `${name}: ${e.scrollWidth} px in a ${e.clientWidth} px box: ${e.textContent.slice(0, 60)}`)""",
            name,
        )
    page.close()
    assert not overflowing, "\n".join(overflowing)


def test_the_copy_button_copies_runnable_code(browser, served):
    context = browser.new_context(permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.goto(f"{served}/quickstart/")
    block = page.locator("pre[data-copy]").first
    shown = block.locator("code").text_content()
    block.hover()
    block.locator("button[data-clipboard-target]").click()  # mkdocs-material's copy button
    copied = page.evaluate("navigator.clipboard.readText()")
    context.close()
    assert shown.startswith(">>> import jax\n")
    assert copied.startswith("import jax\nimport jax.numpy as jnp\nimport larix\n")
    assert copied == runnable_code(shown).rstrip()


def test_pages_request_nothing_from_other_hosts(browser, served):
    page = browser.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    for path in ("", "quickstart/", "api/nn/"):
        page.goto(f"{served}/{path}", wait_until="networkidle")
    page.close()
    assert requests, "no requests seen"
    assert all(url.startswith(served) for url in requests), [u for u in requests if not u.startswith(served)]
