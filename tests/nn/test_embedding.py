"""Tests of larix.nn.Embedding and RotaryPositionalEmbedding (src/larix/nn/_embedding.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_helpers import close, copy_arrays, equinox, key, pickle_roundtrip, same_arrays

import larix


def test_embedding_lookup():
    embed = larix.nn.Embedding(10, 4, key=key())
    assert embed.weight.shape == (10, 4) and (embed.num_embeddings, embed.embedding_size) == (10, 4)
    assert close(embed(3), embed.weight[3])
    assert close(jax.vmap(embed)(jnp.array([1, 2])), embed.weight[jnp.array([1, 2])])
    assert close(larix.filter_jit(lambda m, i: m(i))(embed, jnp.array(7)), embed.weight[7])


def test_embedding_init_is_standard_normal():
    weight = larix.nn.Embedding(200, 50, key=key(1)).weight
    assert abs(float(weight.mean())) < 0.03 and abs(float(weight.std()) - 1) < 0.03


def test_embedding_from_weight_and_dtype():
    table = jnp.arange(6.0).reshape(3, 2)
    embed = larix.nn.Embedding(weight=table)
    assert (embed.num_embeddings, embed.embedding_size) == (3, 2) and close(embed(2), table[2])
    assert larix.nn.Embedding(3, 2, dtype=jnp.bfloat16, key=key()).weight.dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="weight"):
        larix.nn.Embedding(4, 2, weight=table)
    with pytest.raises(ValueError, match="key"):
        larix.nn.Embedding(4, 2)


def test_embedding_errors():
    embed = larix.nn.Embedding(5, 2, key=key())
    with pytest.raises(ValueError, match=r"scalar index.*vmap"):
        embed(jnp.array([1, 2]))
    with pytest.raises(TypeError, match="integer"):
        embed(jnp.array(1.0))


def test_embedding_grad_pickle_repr():
    embed = larix.nn.Embedding(5, 2, key=key())
    grads = larix.filter_grad(lambda m: jnp.sum(m(3)))(embed)
    assert close(grads.weight, jnp.zeros((5, 2)).at[3].set(1.0))
    assert same_arrays(pickle_roundtrip(embed), embed)
    assert repr(embed) == "Embedding(num_embeddings=5, embedding_size=2, weight=f32[5,2])"


def _rope_reference(x, theta=10_000.0):
    seq, dim = x.shape
    freqs = 1.0 / theta ** (np.arange(0, dim, 2) / dim)
    angles = np.arange(seq)[:, None] * freqs[None, :]
    x = np.asarray(x, np.float64)
    x1, x2 = x[:, : dim // 2], x[:, dim // 2 :]
    return np.concatenate([x1 * np.cos(angles) - x2 * np.sin(angles), x2 * np.cos(angles) + x1 * np.sin(angles)], -1)


def test_rope_matches_reference():
    x = jax.random.normal(key(2), (6, 8))
    rope = larix.nn.RotaryPositionalEmbedding(8)
    assert close(rope(x), _rope_reference(x), atol=1e-5)
    assert close(larix.nn.RotaryPositionalEmbedding(8, theta=100.0)(x), _rope_reference(x, 100.0), atol=1e-5)
    assert rope(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_rope_relative_positions():
    # <rope(q)[i], rope(k)[j]> depends on i - j only.
    rope = larix.nn.RotaryPositionalEmbedding(4)
    q = jnp.tile(jnp.array([[1.0, 0.5, -0.3, 2.0]]), (5, 1))
    k = jnp.tile(jnp.array([[0.2, -1.0, 0.7, 0.1]]), (5, 1))
    scores = rope(q) @ rope(k).T
    assert close(scores[1, 0], scores[4, 3], atol=1e-5) and close(scores[0, 2], scores[2, 4], atol=1e-5)


def test_rope_errors_fields_repr():
    with pytest.raises(ValueError, match="even"):
        larix.nn.RotaryPositionalEmbedding(5)
    rope = larix.nn.RotaryPositionalEmbedding(4)
    with pytest.raises(ValueError, match=r"\(seq_length, 4\)"):
        rope(jnp.ones((3, 6)))
    assert jax.tree_util.tree_leaves(rope) == []
    text = larix.tree_pformat(pickle_roundtrip(rope), width=200)
    assert text == "RotaryPositionalEmbedding(embedding_size=4, theta=10000.0, dtype=dtype('float32'))"


def test_matches_equinox():
    eqx = equinox()
    theirs = eqx.nn.Embedding(6, 3, key=key(4))
    assert same_arrays(larix.nn.Embedding(6, 3, key=key(4)), theirs)
    ours = copy_arrays(theirs, larix.nn.Embedding(6, 3, key=key(0)))
    assert close(ours(4), theirs(4))
    x = jax.random.normal(key(3), (7, 6))
    assert close(larix.nn.RotaryPositionalEmbedding(6)(x), eqx.nn.RotaryPositionalEmbedding(6)(x), atol=1e-5)
