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
    i, f, g, o = jax.nn.sigmoid(gates[:3]), jax.nn.sigmoid(gates[3:6]), jnp.tanh(gates[6:9]), jax.nn.sigmoid(gates[9:])
    new_c = f * c + i * g
    new_h, got_c = cell(x, (h, c))
    assert close(got_c, new_c) and close(new_h, o * jnp.tanh(new_c))


def test_init_bound_and_no_bias():
    cell = larix.nn.LSTMCell(4, 16, key=key(1))
    assert float(jnp.abs(cell.weight_hh).max()) <= 1 / np.sqrt(16)
    assert larix.nn.GRUCell(2, 3, use_bias=False, key=key()).bias_n is None
    assert larix.nn.LSTMCell(2, 3, use_bias=False, dtype=jnp.float16, key=key()).weight_ih.dtype == jnp.float16


def test_errors():
    gru = larix.nn.GRUCell(2, 3, key=key())
    with pytest.raises(ValueError, match=r"GRUCell\(input_size=2, hidden_size=3\) expects `hidden` of shape \(3,\)"):
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
