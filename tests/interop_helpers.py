"""Inputs shared by the interop tests: one example for each layer of their `Zoo` models."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def zoo_inputs(seed: int = 1) -> dict[str, np.ndarray]:
    """NumPy inputs (float64, and int indices for the embedding), keyed by layer."""
    rng = np.random.default_rng(seed)
    return {
        "fc": rng.normal(size=3), "conv": rng.normal(size=(4, 5, 5)), "up": rng.normal(size=(6, 4, 4)),
        "bn": rng.normal(size=(6, 3, 3)), "ln": rng.normal(size=5), "gn": rng.normal(size=(6, 2)),
        "embedding": np.array([0, 3, 9]), "attention": rng.normal(size=(3, 8)),
        "x": rng.normal(size=5), "h": rng.normal(size=6), "c": rng.normal(size=6), "act": rng.normal(size=7),
    }  # fmt: skip


def zoo_jax_inputs(seed: int = 1) -> dict[str, jnp.ndarray]:
    """The same as JAX arrays: float32, int32 indices."""
    return {k: jnp.asarray(v) if k == "embedding" else jnp.asarray(v, jnp.float32) for k, v in zoo_inputs(seed).items()}


def channels_last(x: jnp.ndarray) -> jnp.ndarray:
    return jnp.moveaxis(x, 0, -1)
