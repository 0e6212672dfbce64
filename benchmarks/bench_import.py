"""How long `import larix` takes, against `import jax`, each in a fresh Python process.

larix imports none of its optional packages (Flax, Haiku, safetensors, optax, ...) and
creates no array at import (which would start JAX's backends), so `import larix` should
cost little more than the `import jax` it needs (goal 1.2x).
"""

from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from harness import Case, Settings

_SRC = str(Path(__file__).resolve().parents[1] / "src")


def _importer(module: str) -> Callable[[], Any]:
    # Cold: a fresh process each time, so that nothing is imported already. `-X frozen_modules`
    # and bytecode caches are as a user has them after the first import.
    command = [sys.executable, "-c", f"import {module}"]
    env = {"PYTHONPATH": _SRC, "JAX_PLATFORMS": "cpu"}
    return functools.partial(subprocess.run, command, check=True, env=env, capture_output=True)


def cases(settings: Settings) -> Iterable[Case]:
    section = "import"
    yield Case(section, "import jax", functools.partial(_importer, "jax"), cold=True, block=False)
    yield Case(
        section,
        "import larix",
        functools.partial(_importer, "larix"),
        baseline="import jax",
        goal=1.2,
        cold=True,
        block=False,
    )
