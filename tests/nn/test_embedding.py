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
    assert repr(embed) == "Embedding(num_embeddings=5, embedding_size=2, weight=f32[5,2], dtype=None)"


def _rope_reference(x, theta=10_000.0):
    seq, dim = x.shape
    freqs = 1.0 / theta ** (np.arange(0, dim, 2) / dim)
    angles = np.arange(seq)[:, None] * freqs[None, :]
    x = np.asarray(x, np.float64)
    x1, x2 = x[:, : dim // 2], x[:, dim // 2 :]
    return np.concatenate(
        [x1 * np.cos(angles) - x2 * np.sin(angles), x2 * np.cos(angles) + x1 * np.sin(angles)], -1
    )


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


# Initialisers and dtypes (issue 9): the default table is Equinox's to the bit; a custom
# initialiser gets the key, shape and `param_dtype`; `dtype` is the dtype of the output.


@pytest.mark.parametrize("sizes", [(6, 3), (10, 7), (0, 4), (5, 0)])
@pytest.mark.parametrize("dtype", [None, jnp.float16, jnp.bfloat16])
def test_default_init_is_equinox_bit_for_bit(sizes, dtype):
    eqx = equinox()
    ours = larix.nn.Embedding(*sizes, dtype=dtype, key=key(3))
    theirs = eqx.nn.Embedding(*sizes, dtype=dtype, key=key(3))
    np.testing.assert_array_equal(ours.weight, theirs.weight, strict=True)
    if sizes[0] > 0:
        np.testing.assert_array_equal(ours(sizes[0] - 1), theirs(sizes[0] - 1), strict=True)


def test_custom_initialiser_gets_key_shape_and_param_dtype():
    calls = []

    def recording(k, shape, dtype):
        calls.append((k, shape, jnp.dtype(dtype)))
        return jax.nn.initializers.normal(0.02)(k, shape, dtype)

    embed = larix.nn.Embedding(
        7, 3, dtype=jnp.bfloat16, param_dtype=jnp.float32, weight_init=recording, key=key(1)
    )
    assert [(shape, dtype) for _, shape, dtype in calls] == [((7, 3), jnp.float32)]
    # The key is used as it is, as by the default.
    assert jnp.array_equal(jax.random.key_data(calls[0][0]), jax.random.key_data(key(1)))
    assert jnp.array_equal(embed.weight, jax.nn.initializers.normal(0.02)(key(1), (7, 3), jnp.float32))
    # An initialiser that draws no random numbers needs no key; one that does says so.
    assert jnp.array_equal(
        larix.nn.Embedding(4, 2, weight_init=jax.nn.initializers.zeros).weight, jnp.zeros((4, 2))
    )
    with pytest.raises(
        TypeError, match=r"Embedding: `weight_init` failed when called without a random key.*key="
    ):
        larix.nn.Embedding(4, 2, weight_init=jax.nn.initializers.normal())
    with pytest.raises(ValueError, match="key"):
        larix.nn.Embedding(4, 2, param_dtype=jnp.float16)


def test_initialiser_of_the_wrong_shape_or_dtype_is_named():
    with pytest.raises(
        ValueError,
        match=r"Embedding: `weight_init` must return .* float32\[4, 2\], it returned float32\[2, 4\]",
    ):
        larix.nn.Embedding(4, 2, weight_init=lambda k, s, d: jnp.zeros(s[::-1], d), key=key())
    with pytest.raises(
        ValueError, match=r"`weight_init` .* asked for float16\[4, 2\], it returned float32\[4, 2\]"
    ):
        larix.nn.Embedding(4, 2, param_dtype=jnp.float16, weight_init=lambda k, s, d: jnp.zeros(s), key=key())


def test_weight_with_param_dtype_or_weight_init_is_refused():
    table = jnp.arange(6.0).reshape(3, 2)
    with pytest.raises(
        ValueError,
        match=r"Embedding: `param_dtype` cannot be given with `weight=`: it only applies to a new table",
    ):
        larix.nn.Embedding(weight=table, param_dtype=jnp.bfloat16)
    with pytest.raises(
        ValueError, match=r"`param_dtype` and `weight_init` cannot be given with `weight=`: they only apply"
    ):
        larix.nn.Embedding(weight=table, param_dtype=jnp.bfloat16, weight_init=jax.nn.initializers.zeros)
    # `dtype` still applies: it is the dtype of the output, and the table is kept as given.
    embed = larix.nn.Embedding(weight=table, dtype=jnp.bfloat16)
    assert embed.weight.dtype == jnp.float32 and embed(1).dtype == jnp.bfloat16


def test_param_dtype_defaults_to_dtype_as_in_equinox():
    embed = larix.nn.Embedding(3, 2, dtype=jnp.bfloat16, key=key())
    assert (
        embed.weight.dtype == jnp.bfloat16 and embed.dtype == jnp.bfloat16 and embed(0).dtype == jnp.bfloat16
    )
    stored = larix.nn.Embedding(3, 2, param_dtype=jnp.float16, key=key())
    assert stored.weight.dtype == jnp.float16 and stored.dtype is None
    assert stored(2).dtype == jnp.float16  # dtype=None: the table's dtype


def test_dtype_is_the_output_dtype():
    # Flax's mixed precision: a float32 table, bfloat16 embeddings.
    embed = larix.nn.Embedding(5, 3, dtype=jnp.bfloat16, param_dtype=jnp.float32, key=key(2))
    assert embed.weight.dtype == jnp.float32
    got = embed(jnp.array(4, jnp.uint8))
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        np.asarray(got, np.float32), np.asarray(embed.weight[4].astype(jnp.bfloat16), np.float32)
    )
    rows = jax.vmap(embed)(jnp.array([0, 3]))
    assert rows.dtype == jnp.bfloat16 and rows.shape == (2, 3)
    # The gradient reaches the float32 table.
    grads = larix.filter_grad(lambda m: jnp.sum(m(1).astype(jnp.float32)))(embed)
    assert grads.weight.dtype == jnp.float32 and jnp.array_equal(
        grads.weight, jnp.zeros((5, 3)).at[1].set(1.0)
    )
    # The index stays an integer, whatever `dtype` is.
    with pytest.raises(TypeError, match="integer"):
        embed(jnp.array(1.0, jnp.bfloat16))


def test_mixed_dtypes_work_under_strict_promotion():
    embed = larix.nn.Embedding(5, 3, dtype=jnp.bfloat16, param_dtype=jnp.float32, key=key())
    with jax.numpy_dtype_promotion("standard"):
        expected = embed(jnp.array(2))
    with jax.numpy_dtype_promotion("strict"):
        got = larix.filter_jit(lambda m, i: m(i))(embed, jnp.array(2, jnp.int16))
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(expected, np.float32))


def test_default_path_adds_no_casts_to_the_jaxpr():
    # Same dtypes: the lookup's jaxpr is Equinox's (its one convert is of the index).
    embed = larix.nn.Embedding(5, 2, key=key())
    primitives = [e.primitive.name for e in jax.make_jaxpr(lambda m, i: m(i))(embed, jnp.array(1)).eqns]
    assert primitives == [
        "convert_element_type", "lt", "add", "select_n", "lt", "add", "select_n", "dynamic_slice", "squeeze",
    ]  # fmt: skip
    eqx = equinox()
    theirs = eqx.nn.Embedding(5, 2, key=key())
    assert primitives == [
        e.primitive.name for e in jax.make_jaxpr(lambda m, i: m(i))(theirs, jnp.array(1)).eqns
    ]
