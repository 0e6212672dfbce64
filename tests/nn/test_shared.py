"""Tests of larix.nn.Shared (src/larix/nn/_shared.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest
from nn_helpers import close, copy_arrays, equinox, key

import larix
from conftest import Pair


def _tied_pair():
    embedding = larix.nn.Embedding(10, 4, key=key(0))
    linear = larix.nn.Linear(4, 10, use_bias=False, key=key(1))
    return larix.nn.Shared((embedding, linear), lambda p: p[1].weight, lambda p: p[0].weight)


def _run(shared, token):
    embedding, linear = shared()
    return linear(embedding(token))


def test_call_restores_the_tied_node():
    shared = _tied_pair()
    embedding, linear = shared()
    assert embedding.weight is linear.weight
    assert linear.weight.shape == (10, 4) and isinstance(linear, larix.nn.Linear)
    # Only one copy of the weight is stored: the other place holds no arrays.
    arrays = [x for x in jtu.tree_leaves(shared) if larix.is_array(x)]
    assert len(arrays) == 1 and jtu.tree_leaves(shared.pytree[1]) == []
    assert {f for f in ("pytree", "where", "get")} <= set(type(shared).__dataclass_fields__)


def test_gradients_from_both_uses_add_up():
    shared = _tied_pair()
    token = jnp.array(3)
    grads = larix.filter_grad(lambda s: jnp.sum(_run(s, token) ** 2))(shared)

    # The same model with two independent copies of the weight: the tied gradient is the sum.
    embedding, linear = shared()

    def untied(pair):
        return jnp.sum(pair[1](pair[0](token)) ** 2)

    g_embedding, g_linear = jax.grad(untied)((embedding, linear))
    assert close(grads.pytree[0].weight, g_embedding.weight + g_linear.weight)
    # A training step moves the one weight, and both uses see it.
    stepped = larix.apply_updates(shared, jtu.tree_map(lambda g: -0.1 * g, grads))
    new_embedding, new_linear = stepped()
    assert new_embedding.weight is new_linear.weight
    assert not np.array_equal(new_embedding.weight, embedding.weight)


def test_several_nodes_and_a_transform_in_get():
    first = larix.nn.Linear(3, 5, key=key(2))
    second = larix.nn.Linear(5, 3, key=key(3))
    shared = larix.nn.Shared(
        (first, second),
        lambda p: (p[1].weight, p[1].bias),
        lambda p: (p[0].weight.T, p[0].bias[:3]),
    )
    a, b = shared()
    assert np.array_equal(b.weight, a.weight.T) and np.array_equal(b.bias, a.bias[:3])
    x = jnp.arange(3.0)
    assert close(b(a(x)), a.weight.T @ (a.weight @ x + a.bias) + a.bias[:3])


def test_transforms():
    shared = _tied_pair()
    tokens = jnp.array([1, 2, 3])
    expected = jnp.stack([_run(shared, t) for t in tokens])
    assert close(larix.filter_jit(lambda s, t: jax.vmap(lambda u: _run(s, u))(t))(shared, tokens), expected)
    assert close(larix.filter_vmap(_run, in_axes=(None, 0))(shared, tokens), expected)
    assert "_SharedNode()" in repr(shared)


def test_bad_where_and_get():
    embedding = larix.nn.Embedding(10, 4, key=key(0))
    linear = larix.nn.Linear(4, 10, key=key(1))
    pair = (embedding, linear)
    with pytest.raises(TypeError, match=r"`where` must be a function of the pytree.*got 'weight'"):
        larix.nn.Shared(pair, "weight", lambda p: p[0].weight)
    with pytest.raises(TypeError, match=r"`get` must be a function of the pytree"):
        larix.nn.Shared(pair, lambda p: p[1].weight, None)
    with pytest.raises(TypeError, match="not a node of the tree"):
        larix.nn.Shared(pair, lambda p: jnp.ones(3), lambda p: p[0].weight)
    # get reads what where removes: where and get swapped.
    with pytest.raises(AttributeError, match=r"`get` read a node that `where` selects.*swap"):
        larix.nn.Shared(pair, lambda p: p[1].weight, lambda p: p[1].weight.T)
    with pytest.raises(ValueError, match=r"`get` read a node that `where` selects"):
        larix.nn.Shared(pair, lambda p: p[1].weight, lambda p: p[1].weight)


def test_values_must_match_the_nodes_they_replace():
    embedding = larix.nn.Embedding(10, 4, key=key(0))
    linear = larix.nn.Linear(10, 4, key=key(1))  # weight (4, 10): the transpose
    with pytest.raises(ValueError, match=r"pytree\[1\]\.weight is f32\[4,10\], but `get` gives f32\[10,4\].*\.T"):
        larix.nn.Shared((embedding, linear), lambda p: p[1].weight, lambda p: p[0].weight)
    transposed = larix.nn.Shared((embedding, linear), lambda p: p[1].weight, lambda p: p[0].weight.T)
    assert np.array_equal(transposed()[1].weight, embedding.weight.T)
    with pytest.raises(ValueError, match=r"`where` selects 2 node\(s\), so `get` must return a sequence of 2 values.*returned f32\[4,10\]"):
        larix.nn.Shared((embedding, linear), lambda p: (p[1].weight, p[1].bias), lambda p: p[0].weight.T)
    with pytest.raises(ValueError, match=r"pytree\[1\]\.bias is f32\[4\], but `get` gives a value of another structure"):
        larix.nn.Shared((embedding, linear), lambda p: p[1].bias, lambda p: (p[0].weight[0, :4],))
    with pytest.raises(ValueError, match=r"`get` gives f32\[4\] for pytree\[1\]\.b, which is empty"):
        larix.nn.Shared((embedding, Pair(jnp.ones(4), None)), lambda p: p[1].b, lambda p: p[0].weight[0])
    with pytest.raises(ValueError, match=r"static fields .* differ"):
        larix.nn.Shared((Pair(1.0, 2.0, tag="p"), Pair(1.0, 2.0, tag="q")), lambda p: p[1], lambda p: p[0])


def test_matches_equinox():
    eqx = equinox()
    theirs = eqx.nn.Shared(
        (eqx.nn.Embedding(10, 4, key=key(5)), eqx.nn.Linear(4, 10, key=key(6))),
        lambda p: p[1].weight,
        lambda p: p[0].weight,
    )
    ours = larix.nn.Shared(
        (larix.nn.Embedding(10, 4, key=key(5)), larix.nn.Linear(4, 10, key=key(6))),
        lambda p: p[1].weight,
        lambda p: p[0].weight,
    )
    (their_embedding, their_linear), (our_embedding, our_linear) = theirs(), ours()
    assert np.array_equal(our_linear.weight, their_linear.weight)
    assert np.array_equal(our_embedding.weight, their_embedding.weight)
    assert close(our_linear(our_embedding(jnp.array(7))), their_linear(their_embedding(jnp.array(7))))
    # Gradients too: copy Equinox's arrays into ours and differentiate both.
    ours = copy_arrays(theirs, ours)
    their_grads = eqx.filter_grad(lambda s: jnp.sum(_run(s, jnp.array(2)) ** 2))(theirs)
    our_grads = larix.filter_grad(lambda s: jnp.sum(_run(s, jnp.array(2)) ** 2))(ours)
    assert close(our_grads.pytree[0].weight, their_grads.pytree[0].weight)
