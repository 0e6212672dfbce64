"""Tests for larix.interop's PyTorch converter.

torch is not installed here, so the state dicts are NumPy arrays laid out exactly as
torch lays them out, and each layer's PyTorch forward pass is reimplemented in NumPy from
PyTorch's documented formulas (`torch_*` below), independently of larix.
"""

from __future__ import annotations

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import larix
import larix.interop
from interop_helpers import zoo_inputs
from larix._state_dict import SkippedKeysWarning

# ----------------------------------------------------------- PyTorch's forward, in NumPy


def torch_conv(x, w, b, stride, padding, dilation, groups):
    """torch.nn.functional.conv{n}d on one example `x` of shape (C, *spatial)."""
    n = x.ndim - 1
    xp = np.pad(x, [(0, 0)] + [(p, p) for p in padding])
    kernel = w.shape[2:]
    out = [(xp.shape[1 + i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in range(n)]
    o, per_group = w.shape[:2]
    y = np.zeros((o, *out))
    for k in itertools.product(*map(range, kernel)):
        window = tuple(slice(k[i] * dilation[i], k[i] * dilation[i] + stride[i] * (out[i] - 1) + 1, stride[i]) for i in range(n))
        patch = xp[(slice(None), *window)]
        for g in range(groups):
            outs, ins = slice(g * o // groups, (g + 1) * o // groups), slice(g * per_group, (g + 1) * per_group)
            y[outs] += np.einsum("oi,i...->o...", w[(outs, slice(None), *k)], patch[ins])
    return y + b.reshape(-1, *[1] * n)


def torch_conv_transpose(x, w, b, stride, padding, output_padding, dilation, groups):
    """torch.nn.functional.conv_transpose{n}d: each input scatters `w[i]` into the output."""
    n = x.ndim - 1
    c_in, per_group = w.shape[:2]
    size = x.shape[1:]
    kernel = w.shape[2:]
    full = [(size[i] - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1 + output_padding[i] for i in range(n)]
    y = np.zeros((per_group * groups, *full))
    for k in itertools.product(*map(range, kernel)):
        window = tuple(slice(k[i] * dilation[i], k[i] * dilation[i] + stride[i] * (size[i] - 1) + 1, stride[i]) for i in range(n))
        for g in range(groups):
            ins, outs = slice(g * c_in // groups, (g + 1) * c_in // groups), slice(g * per_group, (g + 1) * per_group)
            y[(outs, *window)] += np.einsum("io,i...->o...", w[(ins, slice(None), *k)], x[ins])
    crop = tuple(slice(padding[i], full[i] - padding[i]) for i in range(n))
    return y[(slice(None), *crop)] + b.reshape(-1, *[1] * n)


def torch_batch_norm_eval(x, sd, p, eps=1e-5):
    shape = (-1,) + (1,) * (x.ndim - 1)
    normalised = (x - sd[p + "running_mean"].reshape(shape)) / np.sqrt(sd[p + "running_var"].reshape(shape) + eps)
    return normalised * sd[p + "weight"].reshape(shape) + sd[p + "bias"].reshape(shape)


def torch_layer_norm(x, weight, bias, eps=1e-5):
    return (x - x.mean()) / np.sqrt(x.var() + eps) * weight + bias


def torch_group_norm(x, groups, weight, bias, eps=1e-5):
    grouped = x.reshape(groups, -1)
    y = ((grouped - grouped.mean(1, keepdims=True)) / np.sqrt(grouped.var(1, keepdims=True) + eps)).reshape(x.shape)
    shape = (-1,) + (1,) * (x.ndim - 1)
    return y * weight.reshape(shape) + bias.reshape(shape)


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def torch_attention(q, k, v, sd, p, heads):
    """torch.nn.MultiheadAttention (unbatched inputs, no mask), from its state dict."""
    if p + "in_proj_weight" in sd:
        wq, wk, wv = np.split(sd[p + "in_proj_weight"], 3)
    else:
        wq, wk, wv = (sd[p + n] for n in ("q_proj_weight", "k_proj_weight", "v_proj_weight"))
    bq, bk, bv = np.split(sd[p + "in_proj_bias"], 3)
    q, k, v = q @ wq.T + bq, k @ wk.T + bk, v @ wv.T + bv
    head = q.shape[-1] // heads
    q, k, v = (a.reshape(a.shape[0], heads, head).transpose(1, 0, 2) for a in (q, k, v))
    out = softmax(q @ k.transpose(0, 2, 1) / np.sqrt(head)) @ v
    out = out.transpose(1, 0, 2).reshape(q.shape[1], -1)
    return out @ sd[p + "out_proj.weight"].T + sd[p + "out_proj.bias"]


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def torch_gru_cell(x, h, sd, p):
    gi = sd[p + "weight_ih"] @ x + sd[p + "bias_ih"]
    gh = sd[p + "weight_hh"] @ h + sd[p + "bias_hh"]
    (ir, iz, i_n), (hr, hz, hn) = np.split(gi, 3), np.split(gh, 3)
    r, z = sigmoid(ir + hr), sigmoid(iz + hz)
    n = np.tanh(i_n + r * hn)
    return (1 - z) * n + z * h


def torch_lstm_cell(x, h, c, sd, p):
    gates = sd[p + "weight_ih"] @ x + sd[p + "bias_ih"] + sd[p + "weight_hh"] @ h + sd[p + "bias_hh"]
    i, f, g, o = np.split(gates, 4)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    return sigmoid(o) * np.tanh(c), c


# ------------------------------------------------------------------ the test network


class Zoo(larix.Module):
    """One of each layer that the converter knows, named like the PyTorch module's fields."""

    fc: larix.nn.Linear
    conv: larix.nn.Conv2d
    up: larix.nn.ConvTranspose2d
    bn: larix.nn.BatchNorm
    ln: larix.nn.LayerNorm
    gn: larix.nn.GroupNorm
    embedding: larix.nn.Embedding
    attention: larix.nn.MultiheadAttention
    gru: larix.nn.GRUCell
    lstm: larix.nn.LSTMCell
    act: larix.nn.PReLU

    def __init__(self, mode="batch", *, key):
        keys = jax.random.split(key, 8)
        self.fc = larix.nn.Linear(3, 4, key=keys[0])
        self.conv = larix.nn.Conv2d(4, 6, 3, padding=1, groups=2, key=keys[1])
        self.up = larix.nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1, groups=2, key=keys[2])
        self.bn = larix.nn.BatchNorm(6, "batch", momentum=0.9, mode=mode)
        self.ln = larix.nn.LayerNorm(5)
        self.gn = larix.nn.GroupNorm(3, 6)
        self.embedding = larix.nn.Embedding(10, 5, key=keys[3])
        self.attention = larix.nn.MultiheadAttention(
            2, 8, use_query_bias=True, use_key_bias=True, use_value_bias=True, use_output_bias=True, key=keys[4]
        )
        self.gru = larix.nn.GRUCell(5, 6, key=keys[5])
        self.lstm = larix.nn.LSTMCell(5, 6, key=keys[6])
        self.act = larix.nn.PReLU()


SHAPES = {
    "fc.weight": (4, 3), "fc.bias": (4,),
    "conv.weight": (6, 2, 3, 3), "conv.bias": (6,),
    "up.weight": (6, 2, 3, 3), "up.bias": (4,),
    "bn.weight": (6,), "bn.bias": (6,), "bn.running_mean": (6,), "bn.running_var": (6,),
    "ln.weight": (5,), "ln.bias": (5,),
    "gn.weight": (6,), "gn.bias": (6,),
    "embedding.weight": (10, 5),
    "attention.in_proj_weight": (24, 8), "attention.in_proj_bias": (24,),
    "attention.out_proj.weight": (8, 8), "attention.out_proj.bias": (8,),
    "gru.weight_ih": (18, 5), "gru.weight_hh": (18, 6), "gru.bias_ih": (18,), "gru.bias_hh": (18,),
    "lstm.weight_ih": (24, 5), "lstm.weight_hh": (24, 6), "lstm.bias_ih": (24,), "lstm.bias_hh": (24,),
    "act.weight": (1,),
}  # fmt: skip


def torch_state_dict(seed=0):
    rng = np.random.default_rng(seed)
    sd = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    sd["bn.running_var"] = rng.uniform(0.5, 2, 6).astype(np.float32)
    sd["bn.num_batches_tracked"] = np.asarray(17, np.int64)
    return sd


def inputs(seed=1):
    return zoo_inputs(seed)


def torch_outputs(sd, x):
    return {
        "fc": sd["fc.weight"] @ x["fc"] + sd["fc.bias"],
        "conv": torch_conv(x["conv"], sd["conv.weight"], sd["conv.bias"], (1, 1), (1, 1), (1, 1), 2),
        "up": torch_conv_transpose(x["up"], sd["up.weight"], sd["up.bias"], (2, 2), (1, 1), (1, 1), (1, 1), 2),
        "bn": torch_batch_norm_eval(x["bn"], sd, "bn."),
        "ln": torch_layer_norm(x["ln"], sd["ln.weight"], sd["ln.bias"]),
        "gn": torch_group_norm(x["gn"], 3, sd["gn.weight"], sd["gn.bias"]),
        "embedding": sd["embedding.weight"][x["embedding"]],
        "attention": torch_attention(x["attention"], x["attention"], x["attention"], sd, "attention.", 2),
        "gru": torch_gru_cell(x["x"], x["h"], sd, "gru."),
        "lstm": torch_lstm_cell(x["x"], x["h"], x["c"], sd, "lstm."),
        "act": np.maximum(x["act"], 0) + sd["act.weight"] * np.minimum(x["act"], 0),
    }


def larix_outputs(model, state, x):
    f32 = {k: jnp.asarray(v, jnp.float32) if v.dtype.kind == "f" else jnp.asarray(v) for k, v in x.items()}
    return {
        "fc": model.fc(f32["fc"]),
        "conv": model.conv(f32["conv"]),
        "up": model.up(f32["up"]),
        "bn": model.bn(f32["bn"], state, inference=True)[0],
        "ln": model.ln(f32["ln"]),
        "gn": model.gn(f32["gn"]),
        "embedding": jax.vmap(model.embedding)(f32["embedding"]),
        "attention": model.attention(f32["attention"], f32["attention"], f32["attention"]),
        "gru": model.gru(f32["x"], f32["h"]),
        "lstm": model.lstm(f32["x"], (f32["h"], f32["c"])),
        "act": model.act(f32["act"]),
    }


def assert_outputs_close(larix_out, torch_out):
    for name in torch_out:
        np.testing.assert_allclose(
            np.stack(jax.tree.leaves(larix_out[name])), np.stack(jax.tree.leaves(torch_out[name])), rtol=2e-5, atol=2e-5, err_msg=name
        )


def fresh(mode="batch", seed=5):
    return larix.nn.make_with_state(Zoo)(mode, key=jax.random.key(seed))


# ------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("mode", ["batch", "ema"])
def test_from_torch_computes_what_torch_computes(mode):
    sd = torch_state_dict()
    model, state = larix.interop.from_torch(fresh(mode), sd)
    assert_outputs_close(larix_outputs(model, state, inputs()), torch_outputs(sd, inputs()))


@pytest.mark.parametrize("mode", ["batch", "ema"])
def test_to_torch_computes_what_larix_computes(mode):
    model, state = fresh(mode)
    # Statistics as after some training (larix's own update rule), so that the export's
    # bias correction (mode "batch") is exercised.
    train = larix.filter_vmap(lambda m, x, s: m(x, s), in_axes=(None, 0, None), out_axes=(0, None), axis_name="batch")
    for seed in range(3):
        x = jax.random.normal(jax.random.key(seed), (4, 6, 3, 3)) * 2 + 1
        _, state = train(model.bn, x, state)
    sd = larix.interop.to_torch((model, state))
    assert set(sd) == {*SHAPES, "bn.num_batches_tracked"}
    assert all(sd[k].shape == s and sd[k].dtype == np.float32 for k, s in SHAPES.items())
    assert sd["bn.num_batches_tracked"].dtype == np.int64
    assert int(sd["bn.num_batches_tracked"]) == (3 if mode == "batch" else 1)
    assert all(v.flags.writeable for v in sd.values())  # torch.from_numpy wants writable arrays
    assert_outputs_close(larix_outputs(model, state, inputs()), torch_outputs(sd, inputs()))


def test_round_trip_torch_larix_torch():
    sd = torch_state_dict()
    back = larix.interop.to_torch(larix.interop.from_torch(fresh(), sd))
    # The GRU and LSTM biases come back folded (same function, checked above); the step
    # count is not kept; everything else exactly.
    folded = {"gru.bias_ih", "gru.bias_hh", "lstm.bias_ih", "lstm.bias_hh", "bn.num_batches_tracked"}
    for key in sd.keys() - folded:
        np.testing.assert_array_equal(back[key], sd[key], err_msg=key)
    np.testing.assert_allclose(back["lstm.bias_ih"] + back["lstm.bias_hh"], sd["lstm.bias_ih"] + sd["lstm.bias_hh"], rtol=1e-6)


@pytest.mark.parametrize("mode", ["batch", "ema"])
def test_round_trip_larix_torch_larix(mode):
    model, state = fresh(mode)
    state = state.set(model.bn.batch_counter or model.bn.ema_first_time_index, jnp.array(7 if mode == "batch" else False))
    stats = model.bn.batch_state_index or model.bn.ema_state_index
    state = state.set(stats, (jnp.arange(6.0), jnp.arange(1.0, 7.0)))
    model2, state2 = larix.interop.from_torch(fresh(mode, seed=9), larix.interop.to_torch((model, state)))
    assert larix.tree_equal(model2, model)
    if mode == "ema":
        assert larix.tree_equal(state2, state)
    else:  # the statistics that inference uses are kept, not the step count
        x = jnp.asarray(inputs()["bn"], jnp.float32)
        np.testing.assert_allclose(model2.bn(x, state2, inference=True)[0], model.bn(x, state, inference=True)[0], rtol=1e-5)


@pytest.mark.parametrize(
    "n, stride, padding, dilation, groups, output_padding",
    [
        (1, (1,), (0,), (1,), 1, (0,)),
        (1, (2,), (2,), (2,), 3, (1,)),
        (2, (1, 2), (1, 0), (1, 1), 1, (0, 1)),
        (2, (2, 2), (0, 1), (2, 1), 3, (1, 0)),
        (3, (1, 2, 1), (0, 1, 1), (1, 1, 2), 3, (0, 1, 0)),
    ],
)
def test_convolutions_of_every_rank(n, stride, padding, dilation, groups, output_padding):
    rng = np.random.default_rng(n)
    kernel = (3, 2, 3)[:n]
    x = rng.normal(size=(6, *(5,) * n)).astype(np.float32)
    conv_sd = {"weight": rng.normal(size=(9, 6 // groups, *kernel)).astype(np.float32), "bias": rng.normal(size=9).astype(np.float32)}
    conv = larix.nn.Conv(n, 6, 9, kernel, stride, padding, dilation, groups, key=jax.random.key(0))
    conv = larix.interop.from_torch(conv, conv_sd)
    expected = torch_conv(x, conv_sd["weight"], conv_sd["bias"], stride, padding, dilation, groups)
    np.testing.assert_allclose(conv(jnp.asarray(x)), expected, rtol=1e-4, atol=1e-4)

    up_sd = {"weight": rng.normal(size=(6, 9 // groups, *kernel)).astype(np.float32), "bias": rng.normal(size=9).astype(np.float32)}
    up = larix.nn.ConvTranspose(n, 6, 9, kernel, stride, padding, output_padding, dilation, groups, key=jax.random.key(0))
    up = larix.interop.from_torch(up, up_sd)
    expected = torch_conv_transpose(x, up_sd["weight"], up_sd["bias"], stride, padding, output_padding, dilation, groups)
    np.testing.assert_allclose(up(jnp.asarray(x)), expected, rtol=1e-4, atol=1e-4)
    for layer, sd in ((conv, conv_sd), (up, up_sd)):
        back = larix.interop.to_torch(layer)
        np.testing.assert_array_equal(back["weight"], sd["weight"])
        np.testing.assert_array_equal(back["bias"], sd["bias"])


def test_attention_with_other_key_and_value_sizes_uses_separate_projections():
    rng = np.random.default_rng(0)
    shapes = {
        "q_proj_weight": (8, 8), "k_proj_weight": (8, 3), "v_proj_weight": (8, 5), "in_proj_bias": (24,),
        "out_proj.weight": (8, 8), "out_proj.bias": (8,),
    }  # fmt: skip
    sd = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    attention = larix.nn.MultiheadAttention(
        2, 8, 3, 5, use_query_bias=True, use_key_bias=True, use_value_bias=True, use_output_bias=True, key=jax.random.key(0)
    )
    attention = larix.interop.from_torch(attention, sd)
    q, k, v = rng.normal(size=(4, 8)), rng.normal(size=(6, 3)), rng.normal(size=(6, 5))
    expected = torch_attention(q, k, v, sd, "", 2)
    actual = attention(*(jnp.asarray(a, jnp.float32) for a in (q, k, v)))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    assert set(larix.interop.to_torch(attention)) == set(shapes)


def test_attention_with_some_biases_has_no_torch_counterpart():
    attention = larix.nn.MultiheadAttention(2, 8, use_query_bias=True, key=jax.random.key(0))
    with pytest.raises(ValueError, match=re.escape("use_query_bias, use_key_bias, use_value_bias = (True, False, False)")):
        larix.interop.to_torch(attention)


def test_nn_lstm_layer_keys_with_rename():
    sd = {k.removeprefix("lstm.") + "_l0": v for k, v in torch_state_dict().items() if k.startswith("lstm.")}
    cell = larix.nn.LSTMCell(5, 6, key=jax.random.key(0))
    cell = larix.interop.from_torch(cell, sd, rename=[(r"_l0$", "")])
    x = inputs()
    f32 = {k: jnp.asarray(x[k], jnp.float32) for k in "xhc"}
    h, _ = cell(f32["x"], (f32["h"], f32["c"]))
    expected = torch_lstm_cell(x["x"], x["h"], x["c"], {k.removesuffix("_l0"): v for k, v in sd.items()}, "")
    np.testing.assert_allclose(h, expected[0], rtol=1e-5, atol=1e-5)


def test_a_model_with_batch_norm_needs_its_state():
    model, _ = fresh()
    with pytest.raises(TypeError, match=re.escape("BatchNorm layers (at 'bn')")):
        larix.interop.from_torch(model, torch_state_dict())
    with pytest.raises(TypeError, match="Pass the pair"):
        larix.interop.to_torch(model)


def test_mismatch_error_names_torch_keys_and_torch_layouts():
    sd = torch_state_dict()
    sd["up.weight"] = sd["up.weight"][:, :, :2]
    sd["attention.in_proj_weight"] = sd["attention.in_proj_weight"][:21]
    del sd["gru.bias_hh"]
    sd["head.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError) as error:
        larix.interop.from_torch(fresh(), sd)
    message = str(error.value)
    assert message.startswith("larix.interop.from_torch: the state dict does not match the model:\n")
    assert "  - 'up.weight': expected f32[6,2,3,3], found f32[6,2,2,3]\n" in message
    assert "  - 'attention.in_proj_weight': expected f32[24,8], found f32[21,8]\n" in message
    assert "missing from the state dict: 'gru.bias_hh' (f32[18]) for larix 'gru.bias', 'gru.bias_n'" in message
    assert "unexpected in the state dict: 'head.weight' (f32[2,2])" in message
    assert "larix.interop.plan_torch" in message


def test_strict_false_loads_the_rest():
    sd = torch_state_dict()
    del sd["fc.bias"]
    sd["head.weight"] = np.zeros(2, np.float32)
    original, state = fresh()
    with pytest.warns(SkippedKeysWarning, match="missing 'fc.bias'"):
        model, _ = larix.interop.from_torch((original, state), sd, strict=False)
    assert model.fc.bias is original.fc.bias
    np.testing.assert_array_equal(model.fc.weight, sd["fc.weight"])


def test_plan_shows_the_mapping():
    sd = {"linear.weight": np.zeros((4, 3), np.float32), "linear.bias": np.zeros(4, np.float32)}
    sd.update({k: v for k, v in torch_state_dict().items() if k.startswith(("attention.", "gru."))})
    model, state = fresh()
    plan = larix.interop.plan_torch((model, state), sd, rename={"linear.weight": "fc.weight", "linear.bias": "fc.bias"})
    text = repr(plan)
    assert re.search(r"\nlinear.weight +f32\[4,3\] +fc.weight +f32\[4,3\] +ok\n", text)
    assert re.search(r"\nattention.in_proj_weight +f32\[24,8\] +attention.query_proj.weight +f32\[8,8\] +ok\n", text)
    assert re.search(r"\n +attention.key_proj.weight +f32\[8,8\]\n", text)
    assert "  - missing: 'conv.weight' (f32[6,2,3,3])\n" in text
    assert "  - missing: 'lstm.bias_ih' (f32[24]), 'lstm.bias_hh' (f32[24]) for larix 'lstm.bias'\n" in text
    assert plan.missing[:2] == ["conv.weight", "conv.bias"] and not plan.ok
    assert [r.status for r in plan.rows if r.foreign == ("gru.bias_ih", "gru.bias_hh")] == ["ok"]


def test_torch_like_tensors():
    class Tensor:
        def __init__(self, array):
            self.array = array

        def detach(self):
            return self

        def cpu(self):
            return self

        def numpy(self):
            return self.array

    sd = torch_state_dict()
    model, state = larix.interop.from_torch(fresh(), {k: Tensor(v) for k, v in sd.items()})
    assert_outputs_close(larix_outputs(model, state, inputs()), torch_outputs(sd, inputs()))


def test_unknown_layers_pass_through_by_name():
    tree = {"encoder": [larix.nn.Linear(2, 2, key=jax.random.key(0))], "scale": jnp.ones(3)}
    sd = larix.interop.to_torch(tree)
    assert list(sd) == ["encoder.0.weight", "encoder.0.bias", "scale"]
    assert larix.tree_equal(larix.interop.from_torch(tree, sd), tree)
