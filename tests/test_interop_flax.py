"""Tests for larix.interop's Flax converters, against the real Flax (linen and NNX)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import larix
import larix.interop
from interop_helpers import channels_last, zoo_jax_inputs

flax = pytest.importorskip("flax")  # in the `test` extra: runs in CI
import flax.linen as nn  # noqa: E402
from flax import nnx  # noqa: E402


class Zoo(larix.Module):
    """One of each layer the converter knows, with the Flax modules' attribute names."""

    fc: larix.nn.Linear
    layers: tuple[larix.nn.Linear, ...]
    conv: larix.nn.Conv2d
    up: larix.nn.ConvTranspose2d
    bn: larix.nn.BatchNorm
    ln: larix.nn.LayerNorm
    gn: larix.nn.GroupNorm
    embedding: larix.nn.Embedding
    attention: larix.nn.MultiheadAttention
    gru: larix.nn.GRUCell
    lstm: larix.nn.LSTMCell

    def __init__(self, mode="batch", *, key):
        keys = jax.random.split(key, 9)
        self.fc = larix.nn.Linear(3, 4, key=keys[0])
        self.layers = (larix.nn.Linear(4, 4, key=keys[1]), larix.nn.Linear(4, 2, key=keys[2]))
        self.conv = larix.nn.Conv2d(4, 6, 3, padding=1, groups=2, key=keys[3])
        self.up = larix.nn.ConvTranspose2d(6, 4, 3, stride=2, key=keys[4])
        self.bn = larix.nn.BatchNorm(6, "batch", momentum=0.9, mode=mode)
        self.ln = larix.nn.LayerNorm(5)
        self.gn = larix.nn.GroupNorm(3, 6)
        self.embedding = larix.nn.Embedding(10, 5, key=keys[5])
        self.attention = larix.nn.MultiheadAttention(
            2, 8, use_query_bias=True, use_key_bias=True, use_value_bias=True, use_output_bias=True, key=keys[6]
        )
        self.gru = larix.nn.GRUCell(5, 6, key=keys[7])
        self.lstm = larix.nn.LSTMCell(5, 6, key=keys[8])


def fresh(mode="batch", seed=5):
    return larix.nn.make_with_state(Zoo)(mode, key=jax.random.key(seed))


def inputs(seed=1):
    return zoo_jax_inputs(seed)


def larix_outputs(model, state, x):
    return {
        "fc": model.fc(x["fc"]),
        "layers": model.layers[1](model.layers[0](x["fc"][:1].repeat(4))),
        "conv": channels_last(model.conv(x["conv"])),
        "up": channels_last(model.up(x["up"])),
        "bn": channels_last(model.bn(x["bn"], state, inference=True)[0]),
        "ln": model.ln(x["ln"]),
        "gn": channels_last(model.gn(x["gn"])),
        "embedding": jax.vmap(model.embedding)(x["embedding"]),
        "attention": model.attention(x["attention"], x["attention"], x["attention"]),
        "gru": model.gru(x["x"], x["h"]),
        "lstm": model.lstm(x["x"], (x["h"], x["c"]))[0],
    }


def assert_close(actual, expected):
    assert set(actual) == set(expected)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=2e-5, atol=2e-5, err_msg=name)


# ---------------------------------------------------------------------------- linen


class LinenZoo(nn.Module):
    def setup(self):
        self.fc = nn.Dense(4)
        self.layers = [nn.Dense(4), nn.Dense(2)]
        self.conv = nn.Conv(6, (3, 3), padding=1, feature_group_count=2)
        self.up = nn.ConvTranspose(4, (3, 3), strides=(2, 2), padding="VALID")
        self.bn = nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5)
        self.ln = nn.LayerNorm(epsilon=1e-5)
        self.gn = nn.GroupNorm(num_groups=3, epsilon=1e-5)
        self.embedding = nn.Embed(10, 5)
        self.attention = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8, out_features=8)
        self.gru = nn.GRUCell(6)
        self.lstm = nn.LSTMCell(6)

    def __call__(self, x):
        return {
            "fc": self.fc(x["fc"]),
            "layers": self.layers[1](self.layers[0](x["fc"][:1].repeat(4))),
            "conv": self.conv(channels_last(x["conv"])),
            "up": self.up(channels_last(x["up"])),
            "bn": self.bn(channels_last(x["bn"])),
            "ln": self.ln(x["ln"]),
            "gn": self.gn(channels_last(x["gn"])[None])[0],  # Flax: the first axis is a batch
            "embedding": self.embedding(x["embedding"]),
            "attention": self.attention(x["attention"]),
            "gru": self.gru(x["h"], x["x"])[0],
            "lstm": self.lstm((x["c"], x["h"]), x["x"])[0][1],
        }


def linen_variables(seed=0):
    variables = LinenZoo().init(jax.random.key(seed), inputs())
    rng = np.random.default_rng(seed)
    stats = {"mean": jnp.asarray(rng.normal(size=6), jnp.float32), "var": jnp.asarray(rng.uniform(0.5, 2, 6), jnp.float32)}
    params = jax.tree.map(lambda p: p + jnp.asarray(rng.normal(size=p.shape) * 0.1, p.dtype), variables["params"])
    return {"params": params, "batch_stats": {"bn": stats}}


@pytest.mark.parametrize("mode", ["batch", "ema"])
def test_from_linen_computes_what_linen_computes(mode):
    variables = linen_variables()
    model, state = larix.interop.from_linen(fresh(mode), variables)
    assert_close(larix_outputs(model, state, inputs()), LinenZoo().apply(variables, inputs()))


@pytest.mark.parametrize("mode", ["batch", "ema"])
def test_to_linen_computes_what_larix_computes(mode):
    model, state = fresh(mode)
    index = model.bn.batch_state_index or model.bn.ema_state_index
    state = state.set(index, (jnp.arange(6.0) / 3, jnp.arange(1.0, 7.0)))
    if mode == "batch":
        state = state.set(model.bn.batch_counter, jnp.array(3))
    variables = larix.interop.to_linen((model, state))
    assert jax.tree.structure(variables) == jax.tree.structure(linen_variables())
    assert_close(larix_outputs(model, state, inputs()), LinenZoo().apply(variables, inputs()))


def test_round_trips_through_linen():
    variables = linen_variables()
    model, state = larix.interop.from_linen(fresh(), variables)
    back = larix.interop.to_linen((model, state))
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), back, variables))
    model2, _ = larix.interop.from_linen(fresh(seed=9), back)
    assert larix.tree_equal(model2, model)


def test_compact_modules_are_named_by_class_and_renamed():
    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            hidden = jax.nn.relu(nn.Dense(8)(x))  # Dense_0 (named in the order of creation)
            return nn.Dense(1)(hidden)  # Dense_1

    x = jnp.arange(2.0)
    variables = MLP().init(jax.random.key(0), x)
    mlp = larix.nn.MLP(2, 1, 8, 1, key=jax.random.key(1))
    mlp = larix.interop.from_linen(mlp, variables, rename=[(r"/Dense_", "/layers_")])
    np.testing.assert_allclose(mlp(x), MLP().apply(variables, x), rtol=1e-6)
    assert repr(larix.interop.plan_linen(mlp, variables, rename=[(r"/Dense_", "/layers_")])).splitlines()[1].split() == [
        "params/Dense_0/kernel", "f32[2,8]", "layers.0.weight", "f32[8,2]", "ok",
    ]  # fmt: skip


def test_a_root_layer_has_no_module_name():
    dense = nn.Dense(3)
    variables = dense.init(jax.random.key(0), jnp.ones(2))
    assert set(larix.interop.to_linen(larix.nn.Linear(2, 3, key=jax.random.key(0)))["params"]) == {"kernel", "bias"}
    linear = larix.interop.from_linen(larix.nn.Linear(2, 3, key=jax.random.key(0)), variables)
    np.testing.assert_allclose(linear(jnp.ones(2)), dense.apply(variables, jnp.ones(2)), rtol=1e-6)


def test_params_alone_are_refused_with_a_hint():
    variables = linen_variables()
    with pytest.raises(ValueError, match=re.escape("pass {'params': params}")):
        larix.interop.from_linen(fresh(), variables["params"])


def test_linen_mismatch_error():
    variables = linen_variables()
    variables["params"]["fc"]["kernel"] = jnp.zeros((4, 4))
    del variables["batch_stats"]
    with pytest.raises(ValueError) as error:
        larix.interop.from_linen(fresh(), variables)
    message = str(error.value)
    assert "  - 'params/fc/kernel': expected f32[3,4], found f32[4,4]\n" in message
    assert "'batch_stats/bn/mean' (f32[6]), 'batch_stats/bn/var' (f32[6]) for larix 'bn.batch_state_index.0'" in message


def test_grouped_conv_transpose_has_no_flax_counterpart():
    up = larix.nn.ConvTranspose2d(4, 4, 3, groups=2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="Flax's ConvTranspose has no groups"):
        larix.interop.to_linen(up)


def test_cells_without_bias_have_no_flax_counterpart():
    with pytest.raises(ValueError, match="use_bias=True"):
        larix.interop.to_linen(larix.nn.GRUCell(2, 3, use_bias=False, key=jax.random.key(0)))


# ------------------------------------------------------------------------------ NNX


class NNXZoo(nnx.Module):
    def __init__(self, rngs):
        self.fc = nnx.Linear(3, 4, rngs=rngs)
        self.layers = nnx.List([nnx.Linear(4, 4, rngs=rngs), nnx.Linear(4, 2, rngs=rngs)])
        self.conv = nnx.Conv(4, 6, (3, 3), padding=1, feature_group_count=2, rngs=rngs)
        self.up = nnx.ConvTranspose(6, 4, (3, 3), strides=(2, 2), padding="VALID", rngs=rngs)
        self.bn = nnx.BatchNorm(6, use_running_average=True, momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.ln = nnx.LayerNorm(5, epsilon=1e-5, rngs=rngs)
        self.gn = nnx.GroupNorm(6, num_groups=3, epsilon=1e-5, rngs=rngs)
        self.embedding = nnx.Embed(10, 5, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(2, 8, 8, 8, decode=False, rngs=rngs)
        self.gru = nnx.GRUCell(5, 6, rngs=rngs)
        self.lstm = nnx.LSTMCell(5, 6, rngs=rngs)

    def __call__(self, x):
        return {
            "fc": self.fc(x["fc"]),
            "layers": self.layers[1](self.layers[0](x["fc"][:1].repeat(4))),
            "conv": self.conv(channels_last(x["conv"])),
            "up": self.up(channels_last(x["up"])),
            "bn": self.bn(channels_last(x["bn"])),
            "ln": self.ln(x["ln"]),
            "gn": self.gn(channels_last(x["gn"])[None])[0],  # Flax: the first axis is a batch
            "embedding": self.embedding(x["embedding"]),
            "attention": self.attention(x["attention"]),
            "gru": self.gru(x["h"], x["x"])[0],
            "lstm": self.lstm((x["c"], x["h"]), x["x"])[0][1],
        }


def nnx_zoo(seed=0):
    module = NNXZoo(nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    module.bn.mean[...] = jnp.asarray(rng.normal(size=6), jnp.float32)
    module.bn.var[...] = jnp.asarray(rng.uniform(0.5, 2, 6), jnp.float32)
    module.ln.scale[...] = jnp.asarray(rng.normal(size=5), jnp.float32)
    return module


def test_from_nnx_computes_what_nnx_computes():
    module = nnx_zoo()
    for source in (module, nnx.state(module), nnx.to_pure_dict(nnx.state(module))):
        model, state = larix.interop.from_nnx(fresh(), source)
        assert not np.any(model.gru.bias_n)
        assert_close(larix_outputs(model, state, inputs()), module(inputs()))


def test_to_nnx_computes_what_larix_computes():
    model, state = fresh()
    model = larix.tree_at(lambda m: m.gru.bias_n, model, jnp.zeros(6))
    state = state.set(model.bn.batch_state_index, (jnp.arange(6.0) / 3, jnp.arange(1.0, 7.0)))
    state = state.set(model.bn.batch_counter, jnp.array(3))
    module = NNXZoo(nnx.Rngs(0))
    nnx_state = nnx.state(module)
    nnx.replace_by_pure_dict(nnx_state, larix.interop.to_nnx((model, state)))
    nnx.update(module, nnx_state)
    assert_close(larix_outputs(model, state, inputs()), module(inputs()))


def test_to_nnx_refuses_a_gru_hidden_bias():
    with pytest.raises(ValueError, match="non-zero `bias_n`"):
        larix.interop.to_nnx(larix.nn.GRUCell(2, 3, key=jax.random.key(0)))


def test_plan_nnx():
    module = nnx_zoo()
    plan = larix.interop.plan_nnx(fresh(), module)
    assert plan.ok
    text = repr(plan)
    assert re.search(r"\nlayers/1/kernel +f32\[4,2\] +layers.1.weight +f32\[2,4\] +ok\n", text)
    assert re.search(r"\n- +gru.bias_n +f32\[6\] +ok\n", text)
