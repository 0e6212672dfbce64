"""Tests of larix.nn.Embedding and RotaryPositionalEmbedding (src/larix/nn/_embedding.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_helpers import assert_bitwise_equal, close, copy_arrays, equinox, key, pickle_roundtrip, same_arrays

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


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16, jnp.bfloat16])
def test_rope_frequencies_match_equinox(dtype):
    # Equinox's static helper: the cos and sin tables, computed in float32 and then cast.
    eqx = equinox()
    ours = larix.nn.RotaryPositionalEmbedding.precompute_freqs_cis(8, 16, 10_000.0, dtype)
    theirs = eqx.nn.RotaryPositionalEmbedding.precompute_freqs_cis(8, 16, 10_000.0, dtype)
    assert_bitwise_equal(ours, theirs)
    assert ours[0].shape == (16, 4)
    angles = np.arange(16)[:, None] * 10_000.0 ** (-np.arange(0, 8, 2) / 8)
    assert close(ours[0].astype(jnp.float32), np.cos(angles), atol=1e-2) and close(
        ours[1].astype(jnp.float32), np.sin(angles), atol=1e-2
    )
    assert_bitwise_equal(
        larix.nn.RotaryPositionalEmbedding.rotate_half(jnp.arange(4.0)), jnp.array([-2.0, -3.0, 0.0, 1.0])
    )


@pytest.mark.parametrize(
    ("table", "data"),
    [("float32", "float32"), ("bfloat16", "bfloat16"), ("float16", "float32"), ("float32", "bfloat16")],
)
def test_rope_matches_equinox_to_the_bit(table, data):
    # Only the default theta: Equinox caches its tables by (embedding_size, dtype) alone,
    # so once one theta has been used, a layer with another theta of the same size gets
    # the first one's tables. larix computes the tables of each layer's own theta.
    eqx = equinox()
    x = jax.random.normal(key(3), (9, 6), data)
    ours = larix.nn.RotaryPositionalEmbedding(6, dtype=table)(x)
    assert_bitwise_equal(ours, eqx.nn.RotaryPositionalEmbedding(6, dtype=table)(x))
    assert ours.dtype == x.dtype


def test_rope_mixed_dtypes_under_strict_promotion_explain():
    # As in Equinox: strict promotion forbids mixing the input's dtype with the table's.
    rope = larix.nn.RotaryPositionalEmbedding(4)
    x = jnp.ones((3, 4), jnp.float16)
    with jax.numpy_dtype_promotion("strict"):
        with pytest.raises(jax.dtypes.TypePromotionError, match=r"dtype=jnp.float16"):
            rope(x)
        assert larix.nn.RotaryPositionalEmbedding(4, dtype=jnp.float16)(x).dtype == jnp.float16
