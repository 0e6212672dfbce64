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


# --------------------------------------------- larix.interop: optional packages, lazily

_MODULES_SCRIPT = """
import json, sys
{imports}
print(json.dumps(sorted(sys.modules)))
"""


def _run(script: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120, check=False)


@pytest.mark.parametrize("imports", ["import larix", "import larix, larix.interop"])
def test_larix_and_its_converters_import_no_framework(imports):
    result = _run(_MODULES_SCRIPT.format(imports=imports))
    assert result.returncode == 0, result.stderr
    modules = json.loads(result.stdout.strip().splitlines()[-1])
    for name in ("flax", "haiku", "torch", "safetensors", "optax", "equinox"):
        loaded = [m for m in modules if m == name or m.startswith(name + ".")]
        assert loaded == [], f"`{imports}` imported {loaded}; import optional packages lazily."


_BLOCKED_SCRIPT = """
import sys
sys.modules[{package!r}] = None  # as if the package were not installed
import jax, larix, larix.interop
try:
    larix.interop.{function}(larix.nn.Linear(2, 3, key=jax.random.key(0)))
except ImportError as error:
    print(error)
else:
    print("no error")
"""


@pytest.mark.parametrize(
    "package, function, feature, extra",
    [
        ("flax", "to_linen", "larix.interop.to_linen", "flax"),
        ("flax", "to_nnx", "larix.interop.to_nnx", "flax"),
        ("haiku", "to_haiku", "larix.interop.to_haiku", "haiku"),
    ],
)
def test_a_missing_extra_names_the_feature_and_the_command(package, function, feature, extra):
    result = _run(_BLOCKED_SCRIPT.format(package=package, function=function))
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert message.startswith(f"{feature} needs the optional package {extra}, which is not installed."), message
    assert f'pip install -e ".[{extra}]"' in message


def test_the_torch_converter_needs_no_torch():
    result = _run(_BLOCKED_SCRIPT.format(package="torch", function="to_torch"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no error"
