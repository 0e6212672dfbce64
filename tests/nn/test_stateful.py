"""Tests of State, StateIndex, StatefulLayer, make_with_state, delete_init_state
(src/larix/nn/_stateful.py)."""

from __future__ import annotations

import pickle

import jax
import jax.numpy as jnp
import pytest
from nn_helpers import close, equinox, key

import larix


class Counter(larix.Module):
    index: larix.nn.StateIndex

    def __init__(self):
        self.index = larix.nn.StateIndex(jnp.array(0, jnp.int32))

    def __call__(self, x, state):
        count = state.get(self.index)
        return x + count, state.set(self.index, count + 1)


class Net(larix.Module):
    linear: larix.nn.Linear
    norm: larix.nn.BatchNorm
    counters: tuple

    def __init__(self, key):
        self.linear = larix.nn.Linear(2, 3, key=key)
        self.norm = larix.nn.BatchNorm(3, "batch", mode="ema")
        shared = Counter()
        self.counters = (shared, shared)  # one layer used twice: one state entry


def test_make_with_state_names_entries_by_path():
    model, state = larix.nn.make_with_state(Net)(key())
    assert isinstance(state, larix.nn.State)
    assert model.norm.ema_state_index.marker == "norm.ema_state_index"
    assert model.counters[0].index.marker == "counters.0.index"
    _, arrays = larix.split(state)
    assert sorted(arrays) == [
        "counters.0.index",
        "norm.ema_first_time_index",
        "norm.ema_state_index.0",
        "norm.ema_state_index.1",
    ]


def test_initial_state_is_deleted_from_the_model():
    model, state = larix.nn.make_with_state(Net)(key())
    # The model keeps no state arrays: only the parameters are inexact arrays.
    _, params, _ = larix.split(model, larix.is_inexact_array)
    assert sorted(params) == ["linear.bias", "linear.weight", "norm.bias", "norm.weight"]
    assert "deleted" in repr(model.norm.ema_state_index.init)
    with pytest.raises(ValueError, match="deleted"):
        larix.nn.State(model)
    assert state.get(model.norm.ema_state_index)[0].shape == (3,)


def test_split_separates_parameters_from_initial_state():
    # A model built without make_with_state still holds its initial state: select the
    # StateIndex nodes by type (as leaves), then the parameters.
    model = Net(key())
    is_index = lambda x: isinstance(x, larix.nn.StateIndex)  # noqa: E731
    skeleton, state_part, params, rest = larix.split(
        model, larix.by_type(larix.nn.StateIndex), larix.is_inexact_array, is_leaf=is_index
    )
    assert sorted(state_part) == ["counters.0.index", "counters.1.index", "norm.ema_first_time_index", "norm.ema_state_index"]
    assert sorted(params) == ["linear.bias", "linear.weight", "norm.bias", "norm.weight"]
    assert larix.tree_equal(larix.merge(skeleton, state_part, params, rest), model)


def test_model_and_state_in_one_checkpoint():
    model, state = larix.nn.make_with_state(Net)(key())
    tree = {"model": model, "state": state}
    skeleton, state_arrays, params, rest = larix.split(tree, larix.by_path("state.**"), larix.is_inexact_array)
    assert "state.norm.ema_state_index.0" in state_arrays and "model.linear.weight" in params
    rebuilt = larix.merge(skeleton, state_arrays, params, rest)
    assert close(rebuilt["state"].get(model.norm.ema_state_index)[1], state.get(model.norm.ema_state_index)[1])


def test_get_set_are_functional():
    model, state = larix.nn.make_with_state(Counter)()
    y, new_state = model(jnp.array(10), state)
    assert int(y) == 10 and int(new_state.get(model.index)) == 1
    with pytest.raises(AttributeError, match="immutable"):
        new_state.foo = 1


def _uses_of(state, model):
    return {
        "get": lambda: state.get(model.index),
        "set": lambda: state.set(model.index, jnp.array(0, jnp.int32)),
        "substate": lambda: state.substate(model),
        "update": lambda: state.update(larix.nn.State(Counter())),
        "flatten": lambda: jax.tree_util.tree_leaves(state),
        "jit": lambda: jax.jit(lambda s: s)(state),
        "pickle": lambda: pickle.dumps(state),
    }


@pytest.mark.parametrize("use", list(_uses_of(None, None)))
@pytest.mark.parametrize("retire", ["set", "update", "layer"])
def test_an_old_state_raises_as_in_equinox(retire, use):
    # `set` and `update` retire the State they are called on (Equinox does the same): the
    # usual bug is passing the old state to the next step, which must not run silently.
    model, state = larix.nn.make_with_state(Counter)()
    if retire == "set":
        new = state.set(model.index, jnp.array(3, jnp.int32))
    elif retire == "update":
        new = state.update(state.substate(model))
    else:
        _, new = model(jnp.array(1), state)
    with pytest.raises(ValueError, match=r"(?s)already used.*y, state = layer\(x, state\)") as info:
        _uses_of(state, model)[use]()
    assert "tree_map(lambda x: x, state)" in str(info.value)  # how to keep a state on purpose
    assert "retired" in repr(state)
    assert int(new.get(model.index)) in (0, 1, 3)  # the new state works


def test_an_old_state_raises_like_equinox():
    eqx = equinox()
    for lib in (eqx, larix):
        index = lib.nn.StateIndex(jnp.array(0))
        state = lib.nn.State(index)
        state.set(index, jnp.array(1))
        with pytest.raises(ValueError):
            state.get(index)
        with pytest.raises(ValueError):
            jax.tree_util.tree_leaves(state)


def test_a_copied_state_can_be_reused():
    model, state = larix.nn.make_with_state(Counter)()
    saved = jax.tree_util.tree_map(lambda x: x, state)
    _, state = model(jnp.array(1), state)
    _, again = model(jnp.array(1), saved)
    assert int(again.get(model.index)) == int(state.get(model.index)) == 1
    # A failed `set` does not retire the state.
    with pytest.raises(ValueError, match="f32"):
        state.set(model.index, jnp.array(1.0))
    assert int(state.get(model.index)) == 1


def test_a_state_inside_a_transform_is_not_the_callers():
    # jit and vmap hand the function a new State object: the caller's stays usable.
    model, state = larix.nn.make_with_state(Counter)()
    step = jax.jit(lambda s: model(jnp.array(0), s)[1])
    assert int(step(state).get(model.index)) == int(step(state).get(model.index)) == 1
    step = larix.filter_jit(lambda m, s: m(jnp.array(0), s)[1])
    assert int(step(model, state).get(model.index)) == int(step(model, state).get(model.index)) == 1
    step = larix.filter_vmap(lambda m, x, s: m(x, s), in_axes=(None, 0, None), out_axes=(0, None))
    step(model, jnp.arange(2), state)
    assert int(step(model, jnp.arange(2), state)[1].get(model.index)) == 1


def test_set_checks_structure_shape_dtype():
    model, state = larix.nn.make_with_state(Counter)()
    with pytest.raises(ValueError, match=r"`index`.*f32\[\].*i32\[\]"):
        state.set(model.index, jnp.array(1.0))
    with pytest.raises(ValueError, match="index"):
        state.set(model.index, jnp.zeros(2, jnp.int32))


def test_lookup_of_a_foreign_index_explains():
    _, state = larix.nn.make_with_state(Counter)()
    with pytest.raises(KeyError, match="make_with_state") as info:
        state.get(Counter().index)
    assert not str(info.value).startswith("'")
    with pytest.raises(TypeError, match="StateIndex"):
        state.get("index")


def test_substate_and_update():
    model, state = larix.nn.make_with_state(Net)(key())
    sub = state.substate(model.counters)
    assert len(jax.tree_util.tree_leaves(sub)) == 1
    sub = sub.set(model.counters[0].index, jnp.array(5, jnp.int32))
    state = state.update(sub)
    assert int(state.get(model.counters[1].index)) == 5
    other = larix.nn.State(Counter())
    with pytest.raises(KeyError, match="no entries"):
        state.update(other)


def test_state_through_jit_and_pickle():
    model, state = larix.nn.make_with_state(Counter)()
    step = larix.filter_jit(lambda m, x, s: m(x, s))
    for _ in range(3):
        _, state = step(model, jnp.array(0), state)
    assert int(state.get(model.index)) == 3
    # Markers are paths after make_with_state, so a model and a state pickled separately
    # still belong together.
    model2, state2 = pickle.loads(pickle.dumps(model)), pickle.loads(pickle.dumps(state))
    assert int(state2.get(model2.index)) == 3
    assert repr(state2) == "State(index=i32[])"


def test_state_index_repr_and_generic():
    index = larix.nn.StateIndex(jnp.zeros(2))
    assert repr(index).startswith("StateIndex(marker=<object object")
    assert larix.nn.StateIndex[jax.Array] is not None
    assert larix.nn.State(index).get(index).shape == (2,)


def test_delete_init_state_keeps_shapes():
    model = larix.nn.delete_init_state(Counter())
    assert "deleted: i32[]" in repr(model)
    assert larix.nn.delete_init_state(model).index.init == model.index.init  # idempotent
    assert hash(model.index.init) == hash(model.index.init)


def test_stateful_layer_default():
    assert larix.nn.BatchNorm(2, "b", mode="batch").is_stateful()
    assert issubclass(larix.nn.BatchNorm, larix.nn.StatefulLayer)
