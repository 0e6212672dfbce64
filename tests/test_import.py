"""`import larix` is light: no optional dependency is imported, and it is quick."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

OPTIONAL = ["optax", "flax", "equinox", "inox", "matplotlib", "beartype", "safetensors", "torch"]
SRC = str(Path(__file__).resolve().parents[1] / "src")

_SCRIPT = """
import json, sys, time
start = time.perf_counter()
import jax, jax.numpy
after_jax = time.perf_counter()
import larix
end = time.perf_counter()
from jax._src import xla_bridge
print(json.dumps({
    "backends_started": bool(xla_bridge._backends),
    "modules": sorted(sys.modules),
    "jax_s": after_jax - start,
    "larix_s": end - after_jax,
    "file": larix.__file__,
}))
"""


@pytest.fixture(scope="module")
def fresh_import():
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_imports_the_source_tree(fresh_import):
    assert Path(fresh_import["file"]).resolve().is_relative_to(Path(SRC).resolve())


@pytest.mark.parametrize("name", OPTIONAL)
def test_import_larix_does_not_import_optional_packages(fresh_import, name):
    loaded = [m for m in fresh_import["modules"] if m == name or m.startswith(name + ".")]
    assert loaded == [], f"`import larix` imported {loaded}; import optional packages lazily."


def test_import_time_is_reasonable(fresh_import):
    # On top of JAX itself, larix should cost a fraction of a second (measured: ~0.02 s).
    assert fresh_import["larix_s"] < 2.0, fresh_import["larix_s"]


def test_import_does_not_start_jax_backends(fresh_import):
    # Starting them (by creating an array) at import would make a later
    # `jax.distributed.initialize()` or a change of platform fail.
    assert fresh_import["backends_started"] is False
