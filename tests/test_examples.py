"""The examples run and learn: each is run as a user would, in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ACCURACY = re.compile(r"test accuracy: ([\d.]+) before training, ([\d.]+) after")


def _run_example(*args: str) -> tuple[float, float]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "train_mlp.py"), *args],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    match = ACCURACY.search(result.stdout)
    assert match, result.stdout
    return float(match.group(1)), float(match.group(2))


def test_train_mlp_synthetic():
    # Needs only larix and optax (a test dependency): always runs.
    pytest.importorskip("optax")
    before, after = _run_example("--synthetic", "--steps", "60")
    assert after > before + 0.2 and after > 0.7


def test_train_mlp_digits():
    pytest.importorskip("optax")
    pytest.importorskip("sklearn")
    before, after = _run_example("--steps", "150")
    assert after > before + 0.5 and after > 0.8


def test_train_mlp_without_scikit_learn_names_the_extra(tmp_path):
    # Hide scikit-learn: a `sklearn` package that fails to import shadows the real one.
    (tmp_path / "sklearn").mkdir()
    (tmp_path / "sklearn" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "train_mlp.py"), "--steps", "1"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "pip install -e '.[examples]'" in result.stderr
