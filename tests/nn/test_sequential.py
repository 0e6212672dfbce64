"""Tests of larix.nn.Sequential and larix.nn.Lambda (src/larix/nn/_sequential.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from nn_helpers import check_transforms, close, copy_arrays, equinox, key, pickle_roundtrip, same_arrays

import larix


def _model():
    k1, k2 = jax.random.split(key())
    return larix.nn.Sequential([larix.nn.Linear(2, 4, key=k1), larix.nn.Lambda(jax.nn.relu), larix.nn.Linear(4, 1, key=k2)])


def test_applies_layers_in_order():
    model = _model()
    x = jnp.array([0.5, -1.0])
    assert close(model(x), model.layers[2](jax.nn.relu(model.layers[0](x))))
    assert isinstance(model.layers, tuple) and len(model) == 3


def test_indexing_and_slicing():
    model = _model()
    assert model[0] is model.layers[0]
    head = model[:2]
    assert isinstance(head, larix.nn.Sequential) and len(head) == 2
    assert close(head(jnp.ones(2)), jax.nn.relu(model[0](jnp.ones(2))))
    assert list(model) == list(model.layers)


def test_keys_are_split_per_layer():
    model = larix.nn.Sequential([larix.nn.Dropout(0.5), larix.nn.Dropout(0.5)])
    y = model(jnp.ones(100), key=key())
    assert set(jnp.unique(y).tolist()) <= {0.0, 4.0}
    with pytest.raises(RuntimeError, match="key"):
        model(jnp.ones(3))


def test_plain_function_error_suggests_lambda():
    model = larix.nn.Sequential([jnp.tanh])
    with pytest.raises(TypeError, match=r"larix\.nn\.Lambda"):
        model(jnp.ones(2))


def test_state_threading():
    model, state = larix.nn.make_with_state(larix.nn.Sequential)(
        [larix.nn.Linear(2, 3, key=key()), larix.nn.BatchNorm(3, "batch", mode="ema"), larix.nn.LayerNorm(3)]
    )
    assert model.is_stateful() and not _model().is_stateful()
    run = larix.filter_vmap(lambda m, x, s: m(x, s), in_axes=(None, 0, None), out_axes=(0, None), axis_name="batch")
    y, new_state = run(model, jnp.arange(8.0).reshape(4, 2), state)
    assert y.shape == (4, 3) and isinstance(new_state, larix.nn.State)
    assert not bool(new_state.get(model[1].ema_first_time_index))


def test_stateful_layer_without_state_explains():
    model, _ = larix.nn.make_with_state(larix.nn.Sequential)([larix.nn.BatchNorm(3, "batch", mode="ema")])
    with pytest.raises(TypeError, match="make_with_state"):
        model(jnp.ones(3))


def _softsign(x):
    return x / (1 + jnp.abs(x))


def test_transforms_pickle_repr():
    model = _model()
    check_transforms(model, jnp.array([0.5, -1.0]))
    # jax.nn.relu itself cannot be pickled (a JAX limitation): use a module-level function.
    picklable = larix.tree_at(lambda m: m.layers[1].fn, model, _softsign)
    assert same_arrays(pickle_roundtrip(picklable), picklable)
    assert repr(model).startswith("Sequential(")


def test_lambda():
    layer = larix.nn.Lambda(jnp.tanh)
    assert close(layer(jnp.array(0.5), key=key()), jnp.tanh(0.5))
    inner = larix.nn.Linear(2, 2, key=key())
    wrapped = larix.nn.Lambda(inner)
    # A Module inside Lambda keeps its parameters as leaves.
    assert len(jax.tree_util.tree_leaves(wrapped)) == 2
    assert "Lambda(fn=" in repr(layer)


def test_matches_equinox():
    eqx = equinox()
    k1, k2 = jax.random.split(key())
    theirs = eqx.nn.Sequential([eqx.nn.Linear(2, 4, key=k1), eqx.nn.Lambda(jax.nn.relu), eqx.nn.Linear(4, 1, key=k2)])
    ours = copy_arrays(theirs, _model())
    x = jnp.array([0.3, 0.7])
    assert close(ours(x), theirs(x))
    assert close(ours[1:](jnp.ones(4)), theirs[1:](jnp.ones(4)))
