"""Tests of larix.nn.MLP (src/larix/nn/_mlp.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from nn_helpers import (
    assert_bitwise_equal,
    check_transforms,
    close,
    equinox,
    key,
    pickle_roundtrip,
    randomise,
    same_arrays,
)

import larix


def _swish(x):
    return x * jax.nn.sigmoid(x)


def test_layers_and_fields():
    mlp = larix.nn.MLP(3, 2, width_size=5, depth=2, key=key())
    assert [layer.weight.shape for layer in mlp.layers] == [(5, 3), (5, 5), (2, 5)]
    assert (mlp.in_size, mlp.out_size, mlp.width_size, mlp.depth) == (3, 2, 5, 2)
    assert mlp.activation is jax.nn.relu
    assert [layer.weight.shape for layer in larix.nn.MLP(3, 2, 5, 0, key=key()).layers] == [(2, 3)]


def test_matches_plain_jax():
    mlp = larix.nn.MLP(3, 2, 4, 2, activation=jnp.tanh, final_activation=jax.nn.sigmoid, key=key())
    x = jnp.array([0.1, -0.2, 0.3])
    h = x
    for layer in mlp.layers[:-1]:
        h = jnp.tanh(layer.weight @ h + layer.bias)
    expected = jax.nn.sigmoid(mlp.layers[-1].weight @ h + mlp.layers[-1].bias)
    assert close(mlp(x), expected)


def test_bias_options_and_scalar_sizes():
    mlp = larix.nn.MLP("scalar", "scalar", 4, 1, use_bias=False, use_final_bias=True, key=key())
    assert mlp.layers[0].bias is None and mlp.layers[1].bias is not None
    assert mlp(jnp.array(1.0)).shape == ()


def test_dtype():
    mlp = larix.nn.MLP(2, 2, 3, 1, dtype=jnp.bfloat16, key=key())
    assert all(layer.weight.dtype == jnp.bfloat16 for layer in mlp.layers)
    assert mlp(jnp.ones(2, jnp.bfloat16)).dtype == jnp.bfloat16


def test_scan_matches_loop():
    loop = larix.nn.MLP(3, 2, 4, 4, activation=jnp.tanh, key=key())
    scanned = larix.nn.MLP(3, 2, 4, 4, activation=jnp.tanh, scan=True, key=key())
    assert scanned.layers[1].weight.shape == (3, 4, 4)
    x = jnp.array([0.3, 0.1, -0.5])
    assert close(scanned(x), loop(x))
    # depth=1 has no middle layer: a stacked Linear of none, so that the structure is
    # the same for every depth (as in Equinox).
    one = larix.nn.MLP(3, 2, 4, 1, scan=True, key=key())
    assert one.layers[1].weight.shape == (0, 4, 4) and one.layers[1].bias.shape == (0, 4)
    assert_bitwise_equal(one(x), larix.nn.MLP(3, 2, 4, 1, key=key())(x))
    assert len(larix.nn.MLP(3, 2, 4, 0, scan=True, key=key()).layers) == 1


def test_learnt_activation_is_per_neuron():
    mlp = larix.nn.MLP(2, 3, 4, 2, activation=larix.nn.PReLU(0.1), final_activation=larix.nn.PReLU(0.2), key=key())
    assert mlp.activation.negative_slope.shape == (2, 4)
    assert mlp.final_activation.negative_slope.shape == (3,)
    x = jnp.array([1.0, -1.0])
    h = x
    for layer in mlp.layers[:-1]:
        z = layer(h)
        h = jnp.where(z >= 0, z, 0.1 * z)
    z = mlp.layers[-1](h)
    assert close(mlp(x), jnp.where(z >= 0, z, 0.2 * z))
    grads = larix.filter_grad(lambda m, v: jnp.sum(m(v)))(mlp, x)
    assert grads.activation.negative_slope.shape == (2, 4)
    scanned = larix.nn.MLP(2, 3, 4, 3, activation=larix.nn.PReLU(0.1), scan=True, key=key())
    looped = larix.nn.MLP(2, 3, 4, 3, activation=larix.nn.PReLU(0.1), key=key())
    assert close(scanned(x), looped(x))


def test_bad_sizes():
    with pytest.raises(ValueError, match="depth"):
        larix.nn.MLP(2, 2, 4, -1, key=key())
    with pytest.raises(ValueError, match="width_size"):
        larix.nn.MLP(2, 2, 0, 1, key=key())


def test_transforms_pickle_repr():
    mlp = larix.nn.MLP(3, 2, 4, 2, activation=_swish, key=key())
    check_transforms(mlp, jnp.array([0.5, -1.0, 2.0]))
    assert same_arrays(pickle_roundtrip(mlp), mlp)
    assert "activation=<function _swish>" in repr(mlp)


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize(("in_size", "out_size"), [(3, 2), ("scalar", 2), (3, "scalar")])
def test_matches_equinox_to_the_bit(depth, scan, in_size, out_size):
    # The same key gives the same parameters in the same structure (with scan=True and
    # depth=1, a stacked Linear of zero layers), and the same outputs.
    eqx = equinox()
    theirs = eqx.nn.MLP(in_size, out_size, 4, depth, activation=jnp.tanh, scan=scan, key=key(1))
    ours = larix.nn.MLP(in_size, out_size, 4, depth, activation=jnp.tanh, scan=scan, key=key(1))
    assert len(ours.layers) == len(theirs.layers) == (1 if depth == 0 else 3 if scan else depth + 1)
    assert same_arrays(ours, theirs)
    x = jax.random.normal(key(2), () if in_size == "scalar" else (in_size,))
    assert_bitwise_equal(ours(x), theirs(x))
    grads = larix.filter_grad(lambda m: jnp.sum(m(x)))(ours), eqx.filter_grad(lambda m: jnp.sum(m(x)))(theirs)
    assert_bitwise_equal(larix.filter(grads[0], larix.is_array), eqx.filter(grads[1], eqx.is_array))


@pytest.mark.parametrize("depth", [1, 3])
def test_scan_with_learnt_activation_matches_equinox(depth):
    eqx = equinox()
    theirs = eqx.nn.MLP(2, 3, 4, depth, activation=eqx.nn.PReLU(0.1), scan=True, key=key(1))
    ours = larix.nn.MLP(2, 3, 4, depth, activation=larix.nn.PReLU(0.1), scan=True, key=key(1))
    theirs, ours = randomise(theirs, 5), randomise(ours, 5)
    x = jnp.array([1.0, -1.0])
    assert_bitwise_equal(ours(x), theirs(x))


def test_depth_zero_applies_final_activation():
    # A deliberate difference: Equinox 0.13 skips `final_activation` when depth=0 (its
    # documentation says it is applied after the output layer); larix applies it.
    mlp = larix.nn.MLP(3, 2, 4, 0, final_activation=jax.nn.sigmoid, key=key())
    x = jnp.array([0.2, -0.4, 0.9])
    assert_bitwise_equal(mlp(x), jax.nn.sigmoid(mlp.layers[0](x)))


def test_initialisers_and_dtypes_reach_every_layer():
    calls = []

    def weight_init(k, shape, dtype):
        calls.append((shape, jnp.dtype(dtype)))
        return jnp.full(shape, 0.5, dtype)

    for scan in (False, True):
        calls.clear()
        mlp = larix.nn.MLP(
            3,
            2,
            4,
            3,
            dtype=jnp.bfloat16,
            param_dtype=jnp.float32,
            weight_init=weight_init,
            bias_init=jax.nn.initializers.zeros,
            scan=scan,
            key=key(),
        )
        # Under scan the middle layers are built by one vmapped call: one trace.
        expected_calls = [(4, 3), (4, 4), (2, 4)] if scan else [(4, 3), (4, 4), (4, 4), (2, 4)]
        assert [shape for shape, _ in calls] == expected_calls
        assert {dtype for _, dtype in calls} == {jnp.dtype(jnp.float32)}
        for layer in mlp.layers:
            assert layer.weight.dtype == jnp.float32 and bool(jnp.all(layer.weight == 0.5))
            assert bool(jnp.all(layer.bias == 0)) and layer.dtype == jnp.bfloat16
        assert mlp(jnp.ones(3)).dtype == jnp.bfloat16


def test_default_initialisation_is_unchanged_by_the_new_arguments():
    eqx = equinox()
    ours = larix.nn.MLP(3, 2, 4, 2, key=key(7))
    theirs = eqx.nn.MLP(3, 2, 4, 2, key=key(7))
    assert_bitwise_equal([(a.weight, a.bias) for a in ours.layers], [(b.weight, b.bias) for b in theirs.layers])
