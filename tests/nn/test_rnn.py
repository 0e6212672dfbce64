"""Tests of larix.nn.GRUCell and larix.nn.LSTMCell (src/larix/nn/_rnn.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_helpers import assert_bitwise_equal, close, equinox, key, pickle_roundtrip, same_arrays

import larix


def test_gru_fields_and_formula():
    cell = larix.nn.GRUCell(2, 3, key=key())
    assert cell.weight_ih.shape == (9, 2) and cell.weight_hh.shape == (9, 3)
    assert cell.bias.shape == (9,) and cell.bias_n.shape == (3,)
    x, h = jnp.array([0.5, -1.0]), jnp.array([0.1, 0.2, -0.3])
    wi, wh, b = cell.weight_ih, cell.weight_hh, cell.bias
    r = jax.nn.sigmoid(wi[:3] @ x + b[:3] + wh[:3] @ h)
    z = jax.nn.sigmoid(wi[3:6] @ x + b[3:6] + wh[3:6] @ h)
    n = jnp.tanh(wi[6:] @ x + b[6:] + r * (wh[6:] @ h + cell.bias_n))
    assert close(cell(x, h), (1 - z) * n + z * h)


def test_lstm_fields_and_formula():
    cell = larix.nn.LSTMCell(2, 3, key=key())
    assert cell.weight_ih.shape == (12, 2) and cell.weight_hh.shape == (12, 3) and cell.bias.shape == (12,)
    x, h, c = jnp.array([0.5, -1.0]), jnp.array([0.1, 0.2, -0.3]), jnp.array([1.0, 0.0, -1.0])
    gates = cell.weight_ih @ x + cell.weight_hh @ h + cell.bias
    i, f, g, o = (
        jax.nn.sigmoid(gates[:3]),
        jax.nn.sigmoid(gates[3:6]),
        jnp.tanh(gates[6:9]),
        jax.nn.sigmoid(gates[9:]),
    )
    new_c = f * c + i * g
    new_h, got_c = cell(x, (h, c))
    assert close(got_c, new_c) and close(new_h, o * jnp.tanh(new_c))


def test_init_bound_and_no_bias():
    cell = larix.nn.LSTMCell(4, 16, key=key(1))
    assert float(jnp.abs(cell.weight_hh).max()) <= 1 / np.sqrt(16)
    assert larix.nn.GRUCell(2, 3, use_bias=False, key=key()).bias_n is None
    assert (
        larix.nn.LSTMCell(2, 3, use_bias=False, dtype=jnp.float16, key=key()).weight_ih.dtype == jnp.float16
    )


def test_errors():
    gru = larix.nn.GRUCell(2, 3, key=key())
    with pytest.raises(
        ValueError, match=r"GRUCell\(input_size=2, hidden_size=3\) expects `hidden` of shape \(3,\)"
    ):
        gru(jnp.ones(2), jnp.ones(4))
    with pytest.raises(ValueError, match="vmap"):
        gru(jnp.ones((5, 2)), jnp.ones(3))
    with pytest.raises(TypeError, match=r"pair \(h, c\)"):
        larix.nn.LSTMCell(2, 3, key=key())(jnp.ones(2), jnp.ones(3))


def test_scan_jit_grad_vmap_pickle():
    cell = larix.nn.GRUCell(2, 3, key=key())
    xs = jax.random.normal(key(2), (4, 2))

    @larix.filter_jit
    def run(cell, xs):
        final, _ = jax.lax.scan(lambda h, x: (cell(x, h), None), jnp.zeros(3), xs)
        return final

    expected = jnp.zeros(3)
    for x in xs:
        expected = cell(x, expected)
    assert close(run(cell, xs), expected)
    grads = larix.filter_grad(lambda c, v: jnp.sum(run(c, v)))(cell, xs)
    assert grads.weight_ih.shape == (9, 2)
    assert larix.filter_vmap(run, in_axes=(None, 0))(cell, jnp.stack([xs, xs])).shape == (2, 3)
    assert same_arrays(pickle_roundtrip(cell), cell)
    assert repr(cell).startswith("GRUCell(")


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize(("input_size", "hidden_size"), [(2, 3), (5, 16), (7, 12)])
def test_matches_equinox_to_the_bit(cell, use_bias, input_size, hidden_size):
    # The same key gives the same parameters, and a run over a sequence the same hidden
    # states as Equinox, to the bit.
    eqx = equinox()
    make = (lambda lib: lib.nn.GRUCell) if cell == "gru" else (lambda lib: lib.nn.LSTMCell)
    theirs = make(eqx)(input_size, hidden_size, use_bias=use_bias, key=key(3))
    ours = make(larix)(input_size, hidden_size, use_bias=use_bias, key=key(3))
    assert same_arrays(ours, theirs)
    xs = jax.random.normal(key(4), (20, input_size))
    h0 = jax.random.normal(key(5), (hidden_size,))
    start = h0 if cell == "gru" else (h0, -h0)

    def run(model):
        return jax.lax.scan(lambda h, x: (model(x, h),) * 2, start, xs)[1]

    assert_bitwise_equal(run(ours), run(theirs))
    assert_bitwise_equal(ours(xs[0], start), theirs(xs[0], start))


def test_init_matches_equinox_in_64_bit_mode():
    # The bound is sqrt(1 / hidden_size), as in Equinox: 1 / sqrt(hidden_size) differs from
    # it in the last bit for some sizes, which float64 parameters show.
    eqx = equinox()
    with jax.enable_x64(True):
        for hidden_size in (2, 3, 6):
            assert same_arrays(
                larix.nn.GRUCell(2, hidden_size, key=key()), eqx.nn.GRUCell(2, hidden_size, key=key())
            )
            assert same_arrays(
                larix.nn.LSTMCell(2, hidden_size, key=key()), eqx.nn.LSTMCell(2, hidden_size, key=key())
            )


# Initialisers and dtypes (issue 9): the defaults are Equinox's to the bit; a custom
# initialiser gets the key, shape and `param_dtype`; `dtype` is the computation dtype.

CELLS = {"gru": (lambda lib: lib.nn.GRUCell, 3), "lstm": (lambda lib: lib.nn.LSTMCell, 4)}


def _params(cell):
    return [
        p for p in (cell.weight_ih, cell.weight_hh, cell.bias, getattr(cell, "bias_n", None)) if p is not None
    ]


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize(
    ("input_size", "hidden_size", "use_bias"), [(2, 3, True), (5, 16, False), (7, 6, True)]
)
@pytest.mark.parametrize("dtype", [None, jnp.float16, jnp.bfloat16])
def test_default_init_is_equinox_bit_for_bit(cell, input_size, hidden_size, use_bias, dtype):
    eqx = equinox()
    make = CELLS[cell][0]
    ours = make(larix)(input_size, hidden_size, use_bias, dtype, key=key(3))
    theirs = make(eqx)(input_size, hidden_size, use_bias, dtype, key=key(3))
    assert len(_params(ours)) == len(_params(theirs))
    for a, b in zip(_params(ours), _params(theirs)):
        np.testing.assert_array_equal(a, b, strict=True)


def _recording(init, calls):
    def wrapped(k, shape, dtype):
        calls.append((k, shape, jnp.dtype(dtype)))
        return init(k, shape, dtype)

    return wrapped


def _same_key(a, b):
    return bool(jnp.array_equal(jax.random.key_data(a), jax.random.key_data(b)))


def test_gru_custom_initialisers_get_key_shape_and_param_dtype():
    calls = []
    lecun, orthogonal, zeros = (
        jax.nn.initializers.lecun_normal(),
        jax.nn.initializers.orthogonal(),
        jax.nn.initializers.zeros,
    )
    cell = larix.nn.GRUCell(
        2,
        3,
        dtype=jnp.bfloat16,
        param_dtype=jnp.float32,
        weight_ih_init=_recording(lecun, calls),
        weight_hh_init=_recording(orthogonal, calls),
        bias_init=_recording(zeros, calls),
        key=key(1),
    )
    # `bias_init` initialises both biases, each with its own shape and subkey.
    assert [(shape, dtype) for _, shape, dtype in calls] == [
        ((9, 2), jnp.float32),
        ((9, 3), jnp.float32),
        ((9,), jnp.float32),
        ((3,), jnp.float32),
    ]
    keys = jax.random.split(key(1), 4)
    assert all(_same_key(got, want) for (got, _, _), want in zip(calls, keys))
    assert jnp.array_equal(cell.weight_ih, lecun(keys[0], (9, 2), jnp.float32))
    assert jnp.array_equal(cell.weight_hh, orthogonal(keys[1], (9, 3), jnp.float32))
    assert jnp.array_equal(cell.bias, jnp.zeros(9)) and jnp.array_equal(cell.bias_n, jnp.zeros(3))
    # Only the initialiser given is replaced: the others keep Equinox's default.
    default = larix.nn.GRUCell(2, 3, key=key(1))
    half = larix.nn.GRUCell(2, 3, weight_hh_init=jax.nn.initializers.ones, key=key(1))
    assert jnp.array_equal(half.weight_hh, jnp.ones((9, 3)))
    for name in ("weight_ih", "bias", "bias_n"):
        np.testing.assert_array_equal(getattr(half, name), getattr(default, name), strict=True)
    # No bias: `bias_init` is not called.
    assert larix.nn.GRUCell(2, 3, use_bias=False, bias_init=lambda *_: 1 / 0, key=key()).bias_n is None


def test_lstm_custom_initialisers_get_key_shape_and_param_dtype():
    calls = []
    cell = larix.nn.LSTMCell(
        2,
        3,
        param_dtype=jnp.float16,
        weight_ih_init=_recording(jax.nn.initializers.glorot_uniform(), calls),
        weight_hh_init=_recording(jax.nn.initializers.he_uniform(), calls),
        bias_init=_recording(jax.nn.initializers.ones, calls),
        key=key(2),
    )
    assert [(shape, dtype) for _, shape, dtype in calls] == [
        ((12, 2), jnp.float16),
        ((12, 3), jnp.float16),
        ((12,), jnp.float16),
    ]
    keys = jax.random.split(key(2), 3)
    assert all(_same_key(got, want) for (got, _, _), want in zip(calls, keys))
    assert jnp.array_equal(
        cell.weight_ih, jax.nn.initializers.glorot_uniform()(keys[0], (12, 2), jnp.float16)
    )
    assert cell.bias.dtype == jnp.float16 and jnp.array_equal(cell.bias, jnp.ones(12))
    default = larix.nn.LSTMCell(2, 3, key=key(2))
    half = larix.nn.LSTMCell(2, 3, bias_init=jax.nn.initializers.zeros, key=key(2))
    np.testing.assert_array_equal(half.weight_ih, default.weight_ih, strict=True)
    np.testing.assert_array_equal(half.weight_hh, default.weight_hh, strict=True)
    assert jnp.array_equal(half.bias, jnp.zeros(12))


def test_initialiser_of_the_wrong_shape_or_dtype_is_named():
    with pytest.raises(
        ValueError,
        match=r"GRUCell: `weight_ih_init` must return .* float32\[9, 2\], it returned float32\[2, 9\]",
    ):
        larix.nn.GRUCell(2, 3, weight_ih_init=lambda k, s, d: jnp.zeros(s[::-1], d), key=key())
    # One array for both GRU biases: `bias_n` is smaller than `bias`.
    with pytest.raises(
        ValueError, match=r"GRUCell: `bias_init` .* asked for float32\[3\], it returned float32\[9\]"
    ):
        larix.nn.GRUCell(2, 3, bias_init=lambda k, s, d: jnp.zeros(9, d), key=key())
    with pytest.raises(
        ValueError, match=r"LSTMCell: `weight_hh_init` .* float32\[12, 3\], it returned bfloat16"
    ):
        larix.nn.LSTMCell(2, 3, weight_hh_init=lambda k, s, d: jnp.zeros(s, jnp.bfloat16), key=key())
    with pytest.raises(
        ValueError, match=r"LSTMCell: `bias_init` .* asked for float32\[12\], it returned int32\[12\]"
    ):
        larix.nn.LSTMCell(2, 3, bias_init=lambda k, s, d: jnp.zeros(s, jnp.int32), key=key())


@pytest.mark.parametrize("cell", list(CELLS))
def test_param_dtype_defaults_to_dtype_as_in_equinox(cell):
    make, _ = CELLS[cell]
    layer = make(larix)(2, 3, dtype=jnp.bfloat16, key=key())
    assert layer.dtype == jnp.bfloat16 and all(p.dtype == jnp.bfloat16 for p in _params(layer))
    h = jnp.zeros(3, jnp.bfloat16)
    out = layer(jnp.ones(2, jnp.bfloat16), h if cell == "gru" else (h, h))
    assert all(o.dtype == jnp.bfloat16 for o in jax.tree_util.tree_leaves(out))
    stored = make(larix)(2, 3, param_dtype=jnp.float16, key=key())
    assert stored.dtype is None and all(p.dtype == jnp.float16 for p in _params(stored))
    assert make(larix)(2, 3, key=key()).weight_ih.dtype == jnp.float32


def _gru_by_hand(cell, x, h, dtype):
    wi, wh, b, bn = (p.astype(dtype) for p in _params(cell))
    x, h = x.astype(dtype), h.astype(dtype)
    ir, iz, i_n = jnp.split(wi @ x + b, 3)
    hr, hz, hn = jnp.split(wh @ h, 3)
    r, z = jax.nn.sigmoid(ir + hr), jax.nn.sigmoid(iz + hz)
    new = jnp.tanh(i_n + r * (hn + bn))
    return new + z * (h - new)


def _lstm_by_hand(cell, x, h, c, dtype):
    wi, wh, b = (p.astype(dtype) for p in _params(cell))
    x, h, c = x.astype(dtype), h.astype(dtype), c.astype(dtype)
    i, f, g, o = jnp.split(wi @ x + wh @ h + b, 4)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c), c


def _bits(a):
    return np.asarray(a, np.float32)


def test_dtype_is_the_computation_dtype():
    # Flax's mixed precision: float32 parameters, bfloat16 arithmetic.
    x = jnp.array([0.5, -1.0, 2.0, 0.25])
    h = jnp.array([0.1, -0.2, 0.3])
    gru = larix.nn.GRUCell(4, 3, dtype=jnp.bfloat16, param_dtype=jnp.float32, key=key(1))
    assert gru.weight_ih.dtype == gru.bias_n.dtype == jnp.float32
    new = gru(x, h)
    assert new.dtype == jnp.bfloat16
    np.testing.assert_array_equal(_bits(new), _bits(_gru_by_hand(gru, x, h, jnp.bfloat16)))
    lstm = larix.nn.LSTMCell(4, 3, dtype=jnp.bfloat16, param_dtype=jnp.float32, key=key(1))
    new_h, new_c = lstm(x, (h, -h))
    assert new_h.dtype == new_c.dtype == jnp.bfloat16
    want_h, want_c = _lstm_by_hand(lstm, x, h, -h, jnp.bfloat16)
    np.testing.assert_array_equal(_bits(new_h), _bits(want_h))
    np.testing.assert_array_equal(_bits(new_c), _bits(want_c))
    # A scan keeps its carry in the computation dtype.
    final, _ = jax.lax.scan(lambda h, x: (gru(x, h), None), jnp.zeros(3, jnp.bfloat16), jnp.ones((5, 4)))
    assert final.dtype == jnp.bfloat16
    # dtype=None: the common type of the input, the state(s) and the parameters.
    low = larix.nn.GRUCell(4, 3, param_dtype=jnp.bfloat16, key=key(1))
    assert low(x, h.astype(jnp.bfloat16)).dtype == jnp.float32
    assert low(x.astype(jnp.bfloat16), h.astype(jnp.bfloat16)).dtype == jnp.bfloat16
    np.testing.assert_array_equal(low(x, h), _gru_by_hand(low, x, h, jnp.float32), strict=True)
    low_lstm = larix.nn.LSTMCell(4, 3, param_dtype=jnp.bfloat16, key=key(1))
    out = low_lstm(x.astype(jnp.bfloat16), (h.astype(jnp.bfloat16), -h))
    assert out[0].dtype == out[1].dtype == jnp.float32


@pytest.mark.parametrize("cell", list(CELLS))
def test_mixed_dtypes_work_under_strict_promotion(cell):
    make, _ = CELLS[cell]
    layer = make(larix)(2, 3, param_dtype=jnp.bfloat16, key=key())
    x = jnp.array([0.5, -1.0])
    h = jnp.array([0.1, -0.2, 0.3], jnp.bfloat16)
    hidden = h if cell == "gru" else (h, jnp.ones(3, jnp.float32))
    run = larix.filter_jit(lambda m, x, h: m(x, h))
    with jax.numpy_dtype_promotion("standard"):
        expected = run(layer, x, hidden)
    with jax.numpy_dtype_promotion("strict"):
        got = run(layer, x, hidden)
    for g, e in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)):
        assert g.dtype == jnp.float32
        np.testing.assert_array_equal(g, e, strict=True)


def test_default_path_adds_no_casts_to_the_jaxpr():
    # Same dtypes everywhere: the jaxprs are those from before `dtype` was the computation
    # dtype (Equinox's operations; the GRU splits its gates in another order).
    gru = larix.nn.GRUCell(2, 3, key=key())
    lstm = larix.nn.LSTMCell(2, 3, key=key())
    x, h = jnp.ones(2), jnp.ones(3)
    gru_primitives = [e.primitive.name for e in jax.make_jaxpr(lambda m, x, h: m(x, h))(gru, x, h).eqns]
    lstm_primitives = [
        e.primitive.name for e in jax.make_jaxpr(lambda m, x, h: m(x, h))(lstm, x, (h, h)).eqns
    ]
    assert gru_primitives == [
        "dot_general", "add", "dot_general", "split", "split", "add", "logistic", "add", "logistic",
        "add", "mul", "add", "tanh", "sub", "mul", "add",
    ]  # fmt: skip
    assert lstm_primitives == [
        "dot_general", "dot_general", "add", "add", "split", "logistic", "mul", "logistic", "tanh",
        "mul", "add", "logistic", "tanh", "mul",
    ]  # fmt: skip
