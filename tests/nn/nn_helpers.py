"""Helpers shared by the tests of larix.nn (imported as `from nn_helpers import ...`).

Not a conftest.py: `tests/conftest.py` already has that module name, and this folder has
no `__init__.py`.
"""

from __future__ import annotations

import pickle
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest

import larix


def key(seed: int = 0) -> jax.Array:
    return jax.random.key(seed)


def equinox() -> Any:
    """The equinox module, or skip the test: it is a behavioural reference only."""
    return pytest.importorskip("equinox")


def copy_arrays(source: Any, target: Any) -> Any:
    """`target` with its arrays replaced, in order, by those of `source` (an Equinox layer
    with the same field layout)."""
    src = [x for x in jtu.tree_leaves(source) if larix.is_array(x)]
    arrays, rest = larix.partition(target, larix.is_array)
    leaves, treedef = jtu.tree_flatten(arrays)
    assert [x.shape for x in src] == [x.shape for x in leaves], "the two layers' arrays differ"
    return larix.combine(jtu.tree_unflatten(treedef, [jnp.asarray(x) for x in src]), rest)


def same_arrays(a: Any, b: Any) -> bool:
    xs = [x for x in jtu.tree_leaves(a) if larix.is_array(x)]
    ys = [y for y in jtu.tree_leaves(b) if larix.is_array(y)]
    return len(xs) == len(ys) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(xs, ys))


def assert_bitwise_equal(ours: Any, theirs: Any) -> None:
    """The two pytrees have the same structure and their arrays the same dtypes, shapes
    and values, to the bit (NaNs in the same places)."""
    a, b = jtu.tree_leaves(ours), jtu.tree_leaves(theirs)
    assert len(a) == len(b), f"{len(a)} leaves against {len(b)}"
    for x, y in zip(a, b):
        assert jnp.result_type(x) == jnp.result_type(y), (jnp.result_type(x), jnp.result_type(y))
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), strict=True)


def fresh(state: Any) -> Any:
    """A copy of a `State` (or a pytree of them) that can be used once more: calling a
    stateful layer retires the State it was given, as in Equinox."""
    return jtu.tree_map(lambda a: a, state)


def randomise(layer: Any, seed: int) -> Any:
    """`layer` with every inexact array replaced by normal noise (same shape and dtype):
    non-trivial parameters, the same for two layers with the same field layout."""
    arrays, rest = larix.partition(layer, larix.is_inexact_array)
    leaves, treedef = jtu.tree_flatten(arrays)
    keys = jax.random.split(jax.random.key(seed), max(len(leaves), 1))
    noisy = [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    return larix.combine(jtu.tree_unflatten(treedef, noisy), rest)


def close(a: Any, b: Any, atol: float = 1e-5, rtol: float = 1e-5) -> bool:
    return bool(np.allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=rtol))


def pickle_roundtrip(x: Any) -> Any:
    return pickle.loads(pickle.dumps(x))


def check_transforms(layer: Any, x: Any, **kwargs: Any) -> None:
    """`layer(x)` is the same eagerly and under filter_jit; filter_grad gives gradients
    of the parameters' shapes; filter_vmap over a batch of two matches two calls."""
    expected = layer(x, **kwargs)
    got = larix.filter_jit(lambda m, v: m(v, **kwargs))(layer, x)
    assert close(got, expected, atol=1e-5)

    def loss(m: Any, v: Any) -> Any:
        return jnp.sum(jnp.asarray(m(v, **kwargs), jnp.float32) ** 2)

    grads = larix.filter_grad(loss)(layer, x)
    params = larix.filter(layer, larix.is_inexact_array)
    assert jtu.tree_structure(grads) == jtu.tree_structure(params)
    for g, p in zip(jtu.tree_leaves(grads), jtu.tree_leaves(params)):
        assert g.shape == p.shape and g.dtype == p.dtype
    batch = jnp.stack([x, x * 0.5]) if jnp.issubdtype(jnp.result_type(x), jnp.inexact) else jnp.stack([x, x])
    batched = larix.filter_vmap(lambda m, v: m(v, **kwargs), in_axes=(None, 0))(layer, batch)
    assert close(batched[0], expected) and close(batched[1], layer(batch[1], **kwargs))
