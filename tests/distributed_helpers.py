"""Helpers for the multi-device and multi-process tests (test_shard.py, test_multihost.py).

JAX fixes its device count when its backend starts, so code that needs 8 simulated CPU
devices (`XLA_FLAGS=--xla_force_host_platform_device_count=8`) runs in a fresh Python
process: `run_python(code)`. The small MLP and its training step live here, at module level,
so that the test process, the 8-device subprocesses and the multi-host workers all train
the very same model (they import this module with `tests/` on `PYTHONPATH`).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import larix

TESTS_DIR = Path(__file__).resolve().parent
SRC_DIR = Path(larix.__file__).resolve().parent.parent


def subprocess_env(devices: int) -> dict[str, str]:
    """The environment of a child Python with `devices` CPU devices and larix importable."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(SRC_DIR), str(TESTS_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_python(code: str, *, devices: int = 8, timeout: float = 180) -> str:
    """Run `code` in a fresh Python with `devices` CPU devices; return its stdout.

    Warnings are errors there too, as in the test process. Fails the test with the child's
    stderr if it exits with an error or runs past `timeout` seconds.
    """
    try:
        done = subprocess.run(
            [sys.executable, "-W", "error", "-c", textwrap.dedent(code)],
            env=subprocess_env(devices),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f"the subprocess ran for more than {timeout} s:\n{error.stderr}") from None
    if done.returncode != 0:
        raise AssertionError(f"the subprocess failed (exit {done.returncode}):\n{done.stderr}\n{done.stdout}")
    return done.stdout


# --------------------------------------------------------------------------- the model


class Linear(larix.Module):
    weight: jax.Array
    bias: jax.Array

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.weight.T + self.bias


class MLP(larix.Module):
    layers: tuple[Linear, ...]
    activation: Callable[[jax.Array], jax.Array] = larix.field(static=True, default=jax.nn.tanh)
    name: str = "mlp"  # a non-array leaf: filtered transforms must leave it alone

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)


SIZES = (16, 32, 32, 8)  # every weight's first dimension divides by 4 and by 8


def make_model(seed: int = 0) -> MLP:
    # NumPy's generator, not jax.random: eager JAX ops compile one by one, and the
    # subprocesses of these tests start cold.
    rng = np.random.default_rng(seed)
    layers = []
    for n_in, n_out in itertools.pairwise(SIZES):
        weight = rng.normal(size=(n_out, n_in)) / np.sqrt(n_in)
        bias = 0.1 * rng.normal(size=(n_out,))
        layers.append(Linear(jnp.asarray(weight, jnp.float32), jnp.asarray(bias, jnp.float32)))
    return MLP(tuple(layers))


def make_data(batch: int = 32, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, SIZES[0])).astype(np.float32)
    y = np.sin(x[:, : SIZES[-1]] * 2.0).astype(np.float32)
    return x, y


def loss_fn(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((model(x) - y) ** 2)


OPTIMISER = optax.adam(1e-2)


def make_step(model_shardings: Any = None) -> Any:
    """One filter_jit training step; its output model keeps `model_shardings` if given."""

    @larix.filter_jit
    def step(model: MLP, opt_state: Any, x: jax.Array, y: jax.Array) -> tuple[MLP, Any, jax.Array]:
        loss, grads = larix.filter_value_and_grad(loss_fn)(model, x, y)
        updates, opt_state = OPTIMISER.update(grads, opt_state, model)
        model = larix.apply_updates(model, updates)
        if model_shardings is not None:
            model = larix.filter_shard(model, model_shardings)
            # Adam's moments mirror the parameters: the same shardings, as a prefix of each.
            opt_state = larix.filter_shard(opt_state, (optax.ScaleByAdamState(None, model_shardings, model_shardings), None))
        return model, opt_state, loss

    return step


def train(model: MLP, x: Any, y: Any, steps: int, model_shardings: Any = None) -> tuple[list[float], MLP, Any]:
    """`steps` steps of Adam; returns the losses, the final model and optimiser state."""
    opt_state = OPTIMISER.init(larix.filter(model, larix.is_inexact_array))
    if model_shardings is not None:
        opt_state = larix.filter_shard(opt_state, (optax.ScaleByAdamState(None, model_shardings, model_shardings), None))
    step = make_step(model_shardings)
    losses = []
    for _ in range(steps):
        model, opt_state, loss = step(model, opt_state, x, y)
        losses.append(loss)
    return [float(loss) for loss in losses], model, opt_state


def parameters(model: MLP) -> dict[str, np.ndarray]:
    """The model's arrays as host NumPy arrays, keyed by path (this process's copy)."""
    _, arrays, _ = larix.split(model, larix.is_array)
    # An array of a multi-process mesh is not fully addressable; a replicated one holds the
    # whole value on each of this process's devices.
    return {k: np.asarray(v if v.is_fully_addressable else v.addressable_data(0)) for k, v in arrays.items()}
