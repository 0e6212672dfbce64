"""Tests for larix._partial: Partial, functools.partial as a Module."""

from __future__ import annotations

import dataclasses
import functools
import pickle

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest

import larix
from conftest import make_linear


def _affine(x, w, b=0.0):
    return w * x + b


def test_partial_calls_like_functools_partial():
    add = larix.Partial(lambda a, b: a + b, 1)
    assert add(2) == 3
    f = larix.Partial(_affine, 2.0, b=1.0)
    ref = functools.partial(_affine, 2.0, b=1.0)
    assert f(3.0) == ref(3.0) == 7.0
    assert larix.Partial(_affine)(1.0, 2.0, b=3.0) == 5.0
    assert larix.Partial(sorted, key=lambda s: -s)([1, 3, 2]) == [3, 2, 1]


def test_partial_duplicate_keyword_is_an_error_like_equinox():
    f = larix.Partial(_affine, b=1.0)
    with pytest.raises(TypeError, match="multiple values for keyword argument 'b'"):
        f(1.0, 2.0, b=5.0)


def test_partial_is_a_pytree_of_func_args_and_keywords():
    w, b = jnp.ones(2), jnp.zeros(2)
    f = larix.Partial(_affine, w, b=b)
    leaves = jtu.tree_leaves(f)
    assert leaves[0] is _affine and leaves[1] is w and leaves[2] is b
    names = [jtu.keystr(p) for p, _ in jtu.tree_flatten_with_path(f)[0]]
    assert names == [".func", ".args[0]", ".keywords['b']"]
    params, static = larix.partition(f, larix.is_array)
    assert params.func is None and static.func is _affine
    assert bool(larix.combine(params, static) == f)


def test_partial_passes_through_jit_and_grad():
    # `func` is a leaf (a function), so plain jax.jit needs it split off as static.
    traces = []
    static = larix.filter(larix.Partial(_affine, jnp.ones(2)), larix.is_array, inverse=True)

    @jax.jit
    def run(params, x):
        traces.append(1)
        return larix.combine(params, static)(x)

    x = jnp.arange(2.0)
    for w in (jnp.ones(2), jnp.array([3.0, 3.0])):
        params = larix.filter(larix.Partial(_affine, w), larix.is_array)
        np.testing.assert_allclose(run(params, x), w * x)
    assert len(traces) == 1  # bound arrays are traced, not baked into the trace
    f = larix.Partial(_affine, jnp.ones(2), b=jnp.zeros(2))
    params, rest = larix.partition(f, larix.is_inexact_array)
    grads = jax.grad(lambda p: jnp.sum(larix.combine(p, rest)(x)))(params)
    assert isinstance(grads, larix.Partial)
    np.testing.assert_allclose(grads.args[0], x)
    np.testing.assert_allclose(grads.keywords["b"], jnp.ones(2))


def test_partial_of_a_module_exposes_its_parameters():
    lin = make_linear()
    f = larix.Partial(lin.scaled, scale=3.0)
    assert all(a is b for a, b in zip(jtu.tree_leaves(f)[:2], jtu.tree_leaves(lin)))
    np.testing.assert_allclose(f(jnp.ones(4)), lin.scaled(jnp.ones(4), scale=3.0), rtol=1e-6)
    doubled = jtu.tree_map(lambda a: 2 * a if isinstance(a, jax.Array) else a, f)
    np.testing.assert_allclose(doubled.func.__self__.weight, 2 * lin.weight)


def test_partial_is_frozen_and_round_trips():
    f = larix.Partial(_affine, 2.0, b=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError, match=r"Partial\.args.*tree_at"):
        f.args = ()
    g = pickle.loads(pickle.dumps(f))
    assert g(3.0) == 7.0
    assert g == f
    assert hash(g) == hash(f)
    assert repr(f) == "Partial(func=<function _affine>, args=(2.0,), keywords={'b': 1.0})"


def test_partial_with_non_callable_is_type_error():
    with pytest.raises(TypeError, match=r"larix\.Partial: the first argument must be callable, got 3"):
        larix.Partial(3)


def test_partial_matches_equinox():
    eqx = pytest.importorskip("equinox")
    w = jnp.ones(2)
    ours = larix.Partial(_affine, w, b=1.0)
    theirs = eqx.Partial(_affine, w, b=1.0)
    assert jtu.tree_leaves(ours) == jtu.tree_leaves(theirs)
    assert [jtu.keystr(p) for p, _ in jtu.tree_flatten_with_path(ours)[0]] == [
        jtu.keystr(p) for p, _ in jtu.tree_flatten_with_path(theirs)[0]
    ]
    np.testing.assert_allclose(ours(jnp.arange(2.0)), theirs(jnp.arange(2.0)))
