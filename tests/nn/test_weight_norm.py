"""Tests of larix.nn.WeightNorm (src/larix/nn/_weight_norm.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_helpers import check_transforms, close, copy_arrays, equinox, key, pickle_roundtrip, same_arrays

import larix


class IntWeight(larix.Module):
    weight: jax.Array

    def __call__(self, x):
        return self.weight @ x


class PropertyWeight(larix.Module):
    raw: jax.Array

    @property
    def weight(self):
        return self.raw * 2


def test_fields_and_initial_norm():
    linear = larix.nn.Linear(3, 4, key=key())
    normed = larix.nn.WeightNorm(linear)
    assert (normed.weight_name, normed.axis) == ("weight", 0) and normed.layer is linear
    assert normed.g.shape == (4, 1)
    assert close(normed.g[:, 0], jnp.linalg.norm(linear.weight, axis=1))
    assert larix.nn.WeightNorm(linear, axis=1).g.shape == (1, 3)
    assert larix.nn.WeightNorm(linear, axis=-1).g.shape == (1, 3)
    whole = larix.nn.WeightNorm(linear, axis=None)
    assert whole.g.shape == (1, 1) and close(whole.g[0, 0], jnp.linalg.norm(linear.weight))
    conv = larix.nn.Conv2d(2, 3, 3, key=key(1))
    g = larix.nn.WeightNorm(conv).g
    assert g.shape == (3, 1, 1, 1) and close(g.ravel(), jnp.linalg.norm(conv.weight.reshape(3, -1), axis=1))
    # Static fields are not leaves: the layer's two arrays and g.
    assert len(jax.tree_util.tree_leaves(normed)) == 3


def test_starts_as_the_layer_and_separates_direction_from_norm():
    linear = larix.nn.Linear(3, 4, key=key())
    normed = larix.nn.WeightNorm(linear)
    x = jnp.array([0.5, -1.0, 2.0])
    assert close(normed(x), linear(x))
    # Scaling the direction changes nothing; the weight's row norms are g.
    scaled = larix.tree_at(lambda m: m.layer.weight, normed, normed.layer.weight * 7.0)
    assert close(scaled(x), normed(x), atol=1e-5)
    g = jnp.array([[1.0], [2.0], [3.0], [4.0]])
    regauged = larix.tree_at(lambda m: m.g, normed, g)
    weight = g * linear.weight / jnp.linalg.norm(linear.weight, axis=1, keepdims=True)
    assert close(regauged(x), weight @ x + linear.bias)


def test_conv_and_other_weight_names():
    conv = larix.nn.Conv1d(2, 3, 2, key=key(2))
    x = jax.random.normal(key(3), (2, 6))
    assert close(larix.nn.WeightNorm(conv)(x), conv(x), atol=1e-5)
    on_bias = larix.nn.WeightNorm(larix.nn.Linear(3, 2, key=key()), weight_name="bias")
    assert on_bias.g.shape == (2,)


def test_transforms_pickle_repr():
    normed = larix.nn.WeightNorm(larix.nn.Linear(3, 2, key=key()))
    check_transforms(normed, jnp.arange(3.0))
    grads = larix.filter_grad(lambda m: jnp.sum(m(jnp.ones(3)) ** 2))(normed)
    assert grads.g.shape == (2, 1) and float(jnp.abs(grads.layer.weight).sum()) > 0
    assert same_arrays(pickle_roundtrip(normed), normed)
    assert repr(normed).startswith("WeightNorm(") and "g=f32[2,1]" in repr(normed)


def test_bad_arguments():
    linear = larix.nn.Linear(3, 2, key=key())
    with pytest.raises(ValueError, match=r"Linear has no array field 'weights'.*\['weight', 'bias'\]"):
        larix.nn.WeightNorm(linear, weight_name="weights")
    with pytest.raises(ValueError, match="no array field 'bias'"):
        larix.nn.WeightNorm(larix.nn.Linear(3, 2, use_bias=False, key=key()), weight_name="bias")
    with pytest.raises(TypeError, match=r"`weight_name` must be the name of a field of the layer \(a str\), got 0"):
        larix.nn.WeightNorm(linear, 0)
    with pytest.raises(TypeError, match=r"`IntWeight.weight` must be a real floating-point array.*int32"):
        larix.nn.WeightNorm(IntWeight(jnp.ones((2, 2), jnp.int32)))
    with pytest.raises(TypeError, match=r"`Linear.in_features` must be a real floating-point array.*int"):
        larix.nn.WeightNorm(linear, "in_features")
    with pytest.raises(ValueError, match="is a scalar"):
        larix.nn.WeightNorm(IntWeight(jnp.array(1.0)))
    with pytest.raises(ValueError, match="PropertyWeight has no array field 'weight'"):
        larix.nn.WeightNorm(PropertyWeight(jnp.ones((2, 2))))
    for axis in (2, -3, 0.0, True):
        with pytest.raises(ValueError, match=r"`axis` must be None or an int in \[-2, 2\)"):
            larix.nn.WeightNorm(linear, axis=axis)


@pytest.mark.parametrize("axis", [0, 1, -1, None])
@pytest.mark.parametrize("layer", ["linear", "conv2d"])
def test_matches_equinox(axis, layer):
    eqx = equinox()

    def make(lib):
        if layer == "linear":
            return lib.nn.Linear(5, 4, key=key(4))
        return lib.nn.Conv2d(2, 3, 3, key=key(4))

    theirs = eqx.nn.WeightNorm(make(eqx), axis=axis)
    ours = larix.nn.WeightNorm(make(larix), axis=axis)
    # The same key gives the same parameters, g included, to the bit.
    assert same_arrays(ours, theirs)
    x = jnp.linspace(-1, 1, 5) if layer == "linear" else jax.random.normal(key(5), (2, 6, 6))
    assert close(ours(x), theirs(x))
    # Away from the initial point (g no longer the norm of v), and with gradients.
    theirs = eqx.tree_at(lambda m: m.g, theirs, theirs.g * 1.5 + 0.25)
    ours = copy_arrays(theirs, ours)
    assert close(ours(x), theirs(x))
    their_grads = eqx.filter_grad(lambda m: jnp.sum(m(x) ** 2))(theirs)
    our_grads = larix.filter_grad(lambda m: jnp.sum(m(x) ** 2))(ours)
    for ours_, theirs_ in zip(jax.tree_util.tree_leaves(our_grads), [g for g in jax.tree_util.tree_leaves(their_grads) if eqx.is_array(g)]):
        assert close(ours_, theirs_, atol=1e-4, rtol=1e-4)
    assert np.shape(ours.g) == np.shape(theirs.g)
