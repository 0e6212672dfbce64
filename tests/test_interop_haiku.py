"""Tests for larix.interop's Haiku converter, against the real dm-haiku."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import larix
import larix.interop
from interop_helpers import channels_last, zoo_jax_inputs

hk = pytest.importorskip("haiku")  # in the `test` extra: runs in CI


class Zoo(larix.Module):
    """One of each layer the converter knows, named like the Haiku modules."""

    fc: larix.nn.Linear
    conv: larix.nn.Conv2d
    up: larix.nn.ConvTranspose2d
    bn: larix.nn.BatchNorm
    ln: larix.nn.LayerNorm
    gn: larix.nn.GroupNorm
    embedding: larix.nn.Embedding
    attention: larix.nn.MultiheadAttention
    lstm: larix.nn.LSTMCell

    def __init__(self, mode="batch", *, key):
        keys = jax.random.split(key, 6)
        self.fc = larix.nn.Linear(3, 4, key=keys[0])
        self.conv = larix.nn.Conv2d(4, 6, 3, padding=1, groups=2, key=keys[1])
        self.up = larix.nn.ConvTranspose2d(6, 4, 3, stride=2, key=keys[2])
        self.bn = larix.nn.BatchNorm(6, "batch", momentum=0.9, mode=mode)
        self.ln = larix.nn.LayerNorm(5)
        self.gn = larix.nn.GroupNorm(3, 6)
        self.embedding = larix.nn.Embedding(10, 5, key=keys[3])
        self.attention = larix.nn.MultiheadAttention(
            2, 8, use_query_bias=True, use_key_bias=True, use_value_bias=True, use_output_bias=True, key=keys[4]
        )
        self.lstm = larix.nn.LSTMCell(5, 6, key=keys[5])


def fresh(mode="batch", seed=5):
    return larix.nn.make_with_state(Zoo)(mode, key=jax.random.key(seed))


def inputs(seed=1):
    return zoo_jax_inputs(seed)


def larix_outputs(model, state, x):
    return {
        "fc": model.fc(x["fc"]),
        "conv": channels_last(model.conv(x["conv"])),
        "up": channels_last(model.up(x["up"])),
        "bn": channels_last(model.bn(x["bn"], state, inference=True)[0]),
        "ln": model.ln(x["ln"]),
        "gn": channels_last(model.gn(x["gn"])),
        "embedding": jax.vmap(model.embedding)(x["embedding"]),
        "attention": model.attention(x["attention"], x["attention"], x["attention"]),
        "lstm": model.lstm(x["x"], (x["h"], x["c"]))[0],
    }


def haiku_zoo(x, training=False):
    a = x["attention"]
    return {
        "fc": hk.Linear(4, name="fc")(x["fc"]),
        "conv": hk.Conv2D(6, 3, padding=((1, 1), (1, 1)), feature_group_count=2, name="conv")(channels_last(x["conv"])),
        "up": hk.Conv2DTranspose(4, 3, stride=2, padding="VALID", name="up")(channels_last(x["up"])),
        "bn": hk.BatchNorm(True, True, 0.9, eps=1e-5, name="bn")(channels_last(x["bn"])[None], is_training=training)[0],
        "ln": hk.LayerNorm(-1, True, True, eps=1e-5, name="ln")(x["ln"]),
        "gn": hk.GroupNorm(3, eps=1e-5, name="gn")(channels_last(x["gn"])[None])[0],
        "embedding": hk.Embed(10, 5, name="embedding")(x["embedding"]),
        "attention": hk.MultiHeadAttention(2, 4, w_init=hk.initializers.VarianceScaling(1.0), name="attention")(a, a, a),
        "lstm": hk.LSTM(6, name="lstm")(x["x"], hk.LSTMState(x["h"], x["c"]))[0],
    }


FORWARD = hk.without_apply_rng(hk.transform_with_state(haiku_zoo))


def haiku_weights(seed=0, steps=5):
    params, state = FORWARD.init(jax.random.key(seed), inputs(), training=True)  # creates the statistics
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda p: p + jnp.asarray(rng.normal(size=p.shape) * 0.1, p.dtype), params)
    for name, low in (("bn/~/mean_ema", -1), ("bn/~/var_ema", 0.5)):
        hidden = jnp.asarray(rng.uniform(low, 2, (1, 1, 1, 6)), jnp.float32)
        state[name] = {"hidden": hidden, "average": hidden / (1 - 0.9**steps), "counter": jnp.asarray(steps, jnp.int32)}
    return params, state


def assert_close(actual, expected):
    assert set(actual) == set(expected)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=2e-5, atol=2e-5, err_msg=name)


@pytest.mark.parametrize("mode", ["batch", "ema"])
def test_from_haiku_computes_what_haiku_computes(mode):
    params, state = haiku_weights()
    model, larix_state = larix.interop.from_haiku(fresh(mode), params, state)
    expected, _ = FORWARD.apply(params, state, inputs())
    assert_close(larix_outputs(model, larix_state, inputs()), expected)
    if mode == "batch":  # Haiku's moving averages are the state as they are
        assert int(larix_state.get(model.bn.batch_counter)) == 5


@pytest.mark.parametrize("mode", ["batch", "ema"])
def test_to_haiku_computes_what_larix_computes(mode):
    model, state = fresh(mode)
    index = model.bn.batch_state_index or model.bn.ema_state_index
    state = state.set(index, (jnp.arange(6.0) / 3, jnp.arange(1.0, 7.0)))
    if mode == "batch":
        state = state.set(model.bn.batch_counter, jnp.array(3))
    params, haiku_state = larix.interop.to_haiku((model, state))
    like_params, like_state = FORWARD.init(jax.random.key(0), inputs(), training=True)
    assert jax.tree.structure(params) == jax.tree.structure(like_params)
    assert jax.tree.structure(haiku_state) == jax.tree.structure(like_state)
    # hk.BatchNorm's arrays have its input's rank: the export is (C,), reshaped here.
    params, haiku_state = jax.tree.map(lambda a, b: a.reshape(b.shape), (params, haiku_state), (like_params, like_state))
    expected, _ = FORWARD.apply(params, haiku_state, inputs())
    assert_close(larix_outputs(model, state, inputs()), expected)


def test_round_trips_through_haiku():
    params, state = haiku_weights()
    model, larix_state = larix.interop.from_haiku(fresh(), params, state)
    back_params, back_state = larix.interop.to_haiku((model, larix_state))
    for original, back in ((params, back_params), (state, back_state)):
        back = jax.tree.map(lambda a, b: a.reshape(b.shape), back, original)
        assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.allclose(a, b, rtol=1e-6)), back, original))
    model2, state2 = larix.interop.from_haiku(fresh(seed=9), back_params, back_state)
    assert larix.tree_equal(model2, model) and larix.tree_equal(state2, larix_state)


def test_root_layers_get_haiku_default_names():
    forward = hk.without_apply_rng(hk.transform(lambda x: hk.Conv2D(3, 2)(x)))
    params = forward.init(jax.random.key(0), jnp.ones((4, 4, 2)))
    conv = larix.nn.Conv2d(2, 3, 2, padding="SAME", key=jax.random.key(1))
    conv = larix.interop.from_haiku(conv, params)
    x = jax.random.normal(jax.random.key(2), (4, 4, 2))
    np.testing.assert_allclose(channels_last(conv(jnp.moveaxis(x, -1, 0))), forward.apply(params, x), rtol=1e-5, atol=1e-5)
    assert list(larix.interop.to_haiku(larix.nn.Linear(2, 3, key=jax.random.key(0)))[0]) == ["linear"]


def test_mlp_with_rename():
    forward = hk.without_apply_rng(hk.transform(lambda x: hk.nets.MLP([8, 1])(x)))
    params = forward.init(jax.random.key(0), jnp.ones(2))
    mlp = larix.nn.MLP(2, 1, 8, 1, key=jax.random.key(1))
    mlp = larix.interop.from_haiku(mlp, params, rename=[(r"^mlp/~/linear_", "layers_")])
    np.testing.assert_allclose(mlp(jnp.arange(2.0)), forward.apply(params, jnp.arange(2.0)), rtol=1e-6)


def test_haiku_gru_is_refused():
    with pytest.raises(ValueError, match=re.escape("W (r * h)")):
        larix.interop.to_haiku(larix.nn.GRUCell(2, 3, key=jax.random.key(0)))


def test_haiku_mismatch_error_and_plan():
    params, state = haiku_weights()
    params["fc"]["w"] = jnp.zeros((4, 4))
    with pytest.raises(ValueError) as error:
        larix.interop.from_haiku(fresh(), params, {})
    message = str(error.value)
    assert "  - 'fc/w': expected f32[3,4], found f32[4,4]\n" in message
    assert "'bn/~/mean_ema/hidden' (f32[6]), 'bn/~/mean_ema/average' (f32[6]), 'bn/~/mean_ema/counter' (i32[])" in message
    plan = larix.interop.plan_haiku(fresh(), params, state)
    assert plan.mismatched == ["fc/w"]
    assert re.search(r"\nlstm/linear/w +f32\[11,24\] +lstm.weight_ih +f32\[24,5\] +ok\nlstm/linear/b +f32\[24\] +lstm.weight_hh", repr(plan))
