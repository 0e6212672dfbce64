"""Tests of larix.summary (src/larix/_summary.py)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import larix
from larix._summary import ArrayInfo, Summary, summary


def mlp():
    k1, k2 = jax.random.split(jax.random.key(0))
    return larix.nn.Sequential(
        [larix.nn.Linear(3, 8, key=k1), larix.nn.Lambda(jax.nn.relu), larix.nn.Linear(8, 1, key=k2)]
    )


class CNN(larix.Module):
    conv: larix.nn.Conv2d
    norm: larix.nn.BatchNorm
    dropout: larix.nn.Dropout
    head: larix.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.conv = larix.nn.Conv2d(1, 4, 3, key=k1)
        self.norm = larix.nn.BatchNorm(4, "batch", mode="batch")
        self.dropout = larix.nn.Dropout(0.25)
        self.head = larix.nn.Linear(4 * 6 * 6, 10, key=k2)

    def __call__(self, x, state, *, key=None):
        x = self.conv(x)
        x, state = self.norm(x, state)
        x = self.dropout(jax.nn.relu(x), key=key)
        return self.head(x.reshape(-1)), state


MLP_TABLE = """\
path      type        input   output  arrays           trainable  bytes
--------  ----------  ------  ------  ---------------  ---------  -----
          Sequential  f32[3]  f32[1]
layers.0  Linear      f32[3]  f32[8]  weight f32[8,3]         32  128 B
                                      bias f32[8]
layers.1  Lambda      f32[8]  f32[8]
layers.2  Linear      f32[8]  f32[1]  weight f32[1,8]          9   36 B
                                      bias f32[1]
--------  ----------  ------  ------  ---------------  ---------  -----
total                                                         41  164 B"""


def test_table_of_an_mlp():
    table = summary(mlp(), jnp.ones(3))
    assert isinstance(table, Summary)
    assert str(table) == MLP_TABLE == repr(table) == table.table()


def test_rows():
    rows = summary(mlp(), jnp.ones(3)).rows
    assert [(r.path, r.type, r.depth) for r in rows] == [
        ("", "Sequential", 0),
        ("layers.0", "Linear", 1),
        ("layers.1", "Lambda", 1),
        ("layers.2", "Linear", 1),
    ]
    first = rows[1]
    assert first.arrays == (
        ArrayInfo("weight", (8, 3), jnp.dtype(jnp.float32), "trainable"),
        ArrayInfo("bias", (8,), jnp.dtype(jnp.float32), "trainable"),
    )
    assert (first.trainable, first.frozen, first.state, first.bytes) == (32, 0, 0, 128)
    (call,) = first.calls
    assert call.args == (jax.ShapeDtypeStruct((3,), jnp.float32),)
    assert call.kwargs == {"key": None}  # what Sequential passes to each layer
    assert call.output == jax.ShapeDtypeStruct((8,), jnp.float32)


def test_as_dicts_and_totals():
    result = summary(mlp())
    assert result.totals == {"trainable": 41, "frozen": 0, "state": 0, "bytes": 164}
    dicts = result.as_dicts()
    assert dicts[1]["path"] == "layers.0" and dicts[1]["trainable"] == 32 and dicts[1]["calls"] == []
    assert dicts[1]["arrays"][0] == {"name": "weight", "shape": (8, 3), "dtype": jnp.dtype(jnp.float32), "kind": "trainable"}
    assert "input" not in str(result).splitlines()[0]  # no example arguments: no call columns


def test_cnn_with_state_and_dropout():
    model, state = larix.nn.make_with_state(CNN)(jax.random.key(0))
    result = summary(larix.nn.inference_mode(model), jnp.ones((1, 8, 8)), state)
    rows = {r.path: r for r in result.rows}
    assert rows["norm"].trainable == 8 and rows["norm"].state == 9
    assert {a.name: a.kind for a in rows["norm"].arrays} == {
        "weight": "trainable",
        "bias": "trainable",
        "batch_counter": "state",
        "batch_state_index.0": "state",
        "batch_state_index.1": "state",
    }
    assert rows["conv"].calls[0].output == jax.ShapeDtypeStruct((4, 6, 6), jnp.float32)
    assert rows["head"].calls[0].args == (jax.ShapeDtypeStruct((144,), jnp.float32),)
    assert result.totals == {"trainable": 40 + 8 + 1450, "frozen": 0, "state": 9, "bytes": 4 * (1498 + 9)}
    text = str(result)
    assert "f32[1,8,8], State" in text and "(f32[4,6,6], State)" in text and "(state)" in text
    assert text.splitlines()[0].split() == ["path", "type", "input", "output", "arrays", "trainable", "state", "bytes"]
    # The caller's state is left usable.
    assert larix.nn.inference_mode(model)(jnp.ones((1, 8, 8)), state)[0].shape == (10,)
    # The state of a model built without make_with_state is counted the same way.
    assert summary(CNN(jax.random.key(0))).totals == summary(model).totals


def test_stateful_layer_in_a_sequential_under_vmap():
    # The recording modules keep their class, so Sequential still passes the state to BatchNorm.
    net, state = larix.nn.make_with_state(larix.nn.Sequential)(
        [larix.nn.Linear(3, 4, key=jax.random.key(0)), larix.nn.BatchNorm(4, "batch", mode="batch")]
    )

    class Batched(larix.Module):
        net: larix.nn.Sequential

        def __call__(self, xs, state):
            run = larix.filter_vmap(
                lambda m, x, s: m(x, s), in_axes=(None, 0, None), out_axes=(0, None), axis_name="batch"
            )
            return run(self.net, xs, state)

    rows = {r.path: r for r in summary(Batched(net), jnp.ones((5, 3)), state).rows}
    assert rows[""].calls[0].args[0] == jax.ShapeDtypeStruct((5, 3), jnp.float32)
    assert rows["net.layers.1"].calls[0].args[0] == jax.ShapeDtypeStruct((4,), jnp.float32)  # per example


def test_frozen_module_is_one_row():
    model = larix.tree_at(lambda m: m.layers[2], mlp(), replace_fn=larix.Frozen)
    result = summary(model, jnp.ones(3))
    row = result.rows[3]
    assert (row.path, row.type) == ("layers.2", "Frozen(Linear)")
    assert [(a.name, a.dtype, a.kind) for a in row.arrays] == [
        ("weight", jnp.dtype(jnp.float32), "frozen"),
        ("bias", jnp.dtype(jnp.float32), "frozen"),
    ]
    assert row.calls[0].output == jax.ShapeDtypeStruct((1,), jnp.float32)
    assert result.totals == {"trainable": 32, "frozen": 9, "state": 0, "bytes": 164}
    assert "weight f32[1,8] (frozen)" in str(result)


def test_frozen_keeps_original_dtypes_and_shapes():
    frozen = larix.Frozen({"w": jnp.ones((2, 3), jnp.complex64), "b": jnp.ones(3, jnp.bfloat16), "n": jnp.arange(2)})
    row = summary({"f": frozen}).rows[1]
    assert (row.path, row.type) == ("f", "Frozen")
    assert {a.name: (a.shape, a.dtype, a.kind) for a in row.arrays} == {
        "bits.b": ((3,), jnp.dtype(jnp.bfloat16), "frozen"),
        "bits.n": ((2,), jnp.dtype(jnp.int32), "frozen"),
        "bits.w": ((2, 3), jnp.dtype(jnp.complex64), "frozen"),
    }
    assert row.bytes == 48 + 6 + 8


def test_frozen_list_of_modules():
    linear = larix.nn.Linear(2, 2, key=jax.random.key(0))
    rows = summary(larix.Frozen([linear, linear])).rows
    assert [(r.path, r.type, r.frozen) for r in rows] == [("", "Frozen", 0), ("bits.0", "Linear", 6), ("bits.1", "Linear", 6)]


def test_depth_limits_the_rows_and_keeps_the_totals():
    model, _ = larix.nn.make_with_state(CNN)(jax.random.key(0))
    full = summary(model)
    shallow = summary(model, depth=0)
    assert len(shallow.rows) == 1 and shallow.totals == full.totals
    names = [a.name for a in shallow.rows[0].arrays]
    assert names[:2] == ["conv.weight", "conv.bias"] and "norm.batch_state_index.0" in names
    assert "... 2 more" in str(shallow) and "head.bias" not in str(shallow)
    assert "head.bias f32[10]" in shallow.table(max_arrays=20)
    nested = larix.nn.Sequential([mlp(), mlp()])
    assert [r.path for r in summary(nested, depth=1).rows] == ["", "layers.0", "layers.1"]
    assert summary(nested, depth=1).rows[1].arrays[0].name == "layers.0.weight"
    assert len(summary(nested).rows) == 9


def test_repeated_and_missing_calls():
    linear = larix.nn.Linear(3, 3, key=jax.random.key(0))

    class Twice(larix.Module):
        layer: larix.nn.Linear
        unused: larix.nn.Linear

        def __call__(self, x):
            return self.layer(self.layer(x))

    result = summary(Twice(linear, linear), jnp.ones(3))
    rows = {r.path: r for r in result.rows}
    assert len(rows["layer"].calls) == 2 and rows["unused"].calls == ()
    assert "1) f32[3]" in str(result) and "2) f32[3]" in str(result)


def test_runs_abstractly():
    ran = []

    class Spy(larix.Module):
        layer: larix.nn.Linear

        def __call__(self, x):
            jax.debug.callback(lambda: ran.append(True))
            assert isinstance(x, jax.core.Tracer)
            return self.layer(x)

    result = summary(Spy(larix.nn.Linear(3, 2, key=jax.random.key(0))), jnp.ones(3))
    assert ran == [] and result.rows[1].calls[0].output.shape == (2,)


def test_a_model_skeleton_and_shape_arguments():
    skeleton = larix.filter_eval_shape(larix.nn.Linear, 1000, 1000, key=jax.random.key(0))
    result = summary(skeleton, jax.ShapeDtypeStruct((1000,), jnp.float32))
    assert result.totals["trainable"] == 1_001_000 and "4.0 MB" in str(result)
    assert result.rows[0].calls[0].output == jax.ShapeDtypeStruct((1000,), jnp.float32)


def test_a_model_that_jits_itself_is_recorded_every_time():
    class Jitted(larix.Module):
        layer: larix.nn.Linear

        @larix.filter_jit
        def __call__(self, x):
            return self.layer(x)

    model = Jitted(larix.nn.Linear(3, 2, key=jax.random.key(0)))
    for _ in range(2):  # the second summary must not reuse the first one's trace
        assert len(summary(model, jnp.ones(3)).rows[1].calls) == 1


def test_batch_apply_and_dense_general():
    dense = larix.nn.DenseGeneral((2, 3), 4, axis=(0, 1), key=jax.random.key(0))
    rows = summary(larix.nn.BatchApply(larix.filter_vmap(dense)), jnp.ones((6, 5, 2, 3))).rows
    assert rows[0].calls[0].output == jax.ShapeDtypeStruct((6, 5, 4), jnp.float32)
    assert rows[-1].type == "DenseGeneral" and rows[-1].calls[0].args[0].shape == (2, 3)


def test_containers_and_non_float_arrays():
    linear = larix.nn.Linear(2, 2, key=jax.random.key(0))
    result = summary({"a": [linear], "step": jnp.array(3), "key": jax.random.key(0), "scale": 2.0})
    assert [(r.path, r.type, r.depth) for r in result.rows] == [("", "dict", 0), ("a.0", "Linear", 1)]
    assert {a.name: a.kind for a in result.rows[0].arrays} == {"key": "frozen", "step": "frozen"}
    assert result.totals == {"trainable": 6, "frozen": 2, "state": 0, "bytes": 24 + 4 + 8}


def test_the_model_is_left_unchanged():
    linear = larix.nn.Linear(3, 2, key=jax.random.key(0))
    model = larix.nn.Sequential([linear])
    summary(model, jnp.ones(3))
    assert type(model.layers[0]) is larix.nn.Linear and larix.nn.Linear.__call__.__qualname__ == "Linear.__call__"
    assert model(jnp.ones(3)).shape == (2,)


def test_errors_of_the_model_carry_a_note_and_leave_nothing_behind():
    linear = larix.nn.Linear(3, 2, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"expects `x` of shape \(3,\)") as info:
        summary(linear, jnp.ones(4))
    assert any("larix.summary" in note for note in info.value.__notes__)
    assert type(linear) is larix.nn.Linear and linear(jnp.ones(3)).shape == (2,)
    assert len(summary(linear, jnp.ones(3)).rows[0].calls) == 1


def test_bad_arguments():
    with pytest.raises(TypeError, match="a list is not callable"):
        summary([larix.nn.Linear(2, 2, key=jax.random.key(0))], jnp.ones(2))
    with pytest.raises(ValueError, match=r"`depth` must be None or an int >= 0, got -1"):
        summary(mlp(), depth=-1)


def test_threads_do_not_see_each_others_calls():
    models = [larix.nn.Sequential([larix.nn.Linear(n, 2, key=jax.random.key(n))]) for n in range(1, 9)]
    barrier = threading.Barrier(4)

    def run(n):
        if n <= 4:  # the first four run at once
            barrier.wait()
        return summary(models[n - 1], jnp.ones(n)).rows

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, range(1, 9)))
    for n, rows in enumerate(results, 1):
        assert [len(r.calls) for r in rows] == [1, 1]
        assert rows[1].calls[0].args == (jax.ShapeDtypeStruct((n,), jnp.float32),)


def test_bytes_format():
    big = {"w": jax.ShapeDtypeStruct((1500,), jnp.float32), "v": np.zeros((3,), np.float16)}
    text = str(summary(big))
    assert "6.0 kB" in text and "v f16[3]" in text
