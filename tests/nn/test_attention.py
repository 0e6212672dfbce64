"""Tests of larix.nn.MultiheadAttention, dot_product_attention and
dot_product_attention_weights (src/larix/nn/_attention.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_helpers import (
    assert_bitwise_equal,
    check_transforms,
    close,
    equinox,
    key,
    pickle_roundtrip,
    same_arrays,
)

import larix

Q = jax.random.normal(key(1), (4, 6))
KV = jax.random.normal(key(2), (5, 6))


def _reference(mha, q, k, v, mask=None):
    h = mha.num_heads
    qs = (q @ mha.query_proj.weight.T).reshape(q.shape[0], h, -1)
    ks = (k @ mha.key_proj.weight.T).reshape(k.shape[0], h, -1)
    vs = (v @ mha.value_proj.weight.T).reshape(v.shape[0], h, -1)
    out = []
    for i in range(h):
        logits = qs[:, i] @ ks[:, i].T / jnp.sqrt(qs.shape[-1])
        if mask is not None:
            logits = jnp.where(mask if mask.ndim == 2 else mask[i], logits, -jnp.inf)
        out.append(jax.nn.softmax(logits, axis=-1) @ vs[:, i])
    return jnp.concatenate(out, axis=-1) @ mha.output_proj.weight.T


def test_fields_and_defaults():
    mha = larix.nn.MultiheadAttention(2, 6, key=key())
    assert (mha.qk_size, mha.vo_size, mha.key_size, mha.output_size) == (3, 3, 6, 6)
    assert mha.query_proj.weight.shape == (6, 6) and mha.query_proj.bias is None
    custom = larix.nn.MultiheadAttention(
        3, 6, key_size=4, value_size=2, output_size=5, qk_size=7, vo_size=1, key=key()
    )
    assert custom.key_proj.weight.shape == (21, 4) and custom.output_proj.weight.shape == (5, 3)


def test_matches_plain_jax_with_masks():
    mha = larix.nn.MultiheadAttention(2, 6, key=key())
    assert close(mha(Q, KV, KV), _reference(mha, Q, KV, KV), atol=1e-5)
    mask = jax.random.bernoulli(key(3), 0.7, (4, 5)).at[:, 0].set(True)
    assert close(mha(Q, KV, KV, mask), _reference(mha, Q, KV, KV, mask), atol=1e-5)
    per_head = jnp.stack([mask, ~mask.at[:, 1].set(False)])
    assert close(mha(Q, KV, KV, per_head), _reference(mha, Q, KV, KV, per_head), atol=1e-5)


def test_process_heads_and_dropout():
    mha = larix.nn.MultiheadAttention(2, 6, dropout_p=0.5, key=key())
    with pytest.raises(RuntimeError, match="key"):
        mha(Q, KV, KV)
    assert mha(Q, KV, KV, key=key()).shape == (4, 6)
    assert close(mha(Q, KV, KV, inference=True), larix.nn.inference_mode(mha)(Q, KV, KV))
    rope = larix.nn.RotaryPositionalEmbedding(2)  # qk_size = 4 // 2
    rope_mha = larix.nn.MultiheadAttention(2, 4, key=key())

    def process_heads(q, k, v):
        return jax.vmap(rope, in_axes=1, out_axes=1)(q), jax.vmap(rope, in_axes=1, out_axes=1)(k), v

    x = jax.random.normal(key(5), (3, 4))
    assert not close(rope_mha(x, x, x, process_heads=process_heads), rope_mha(x, x, x))
    with pytest.raises(ValueError, match="process_heads"):
        rope_mha(x, x, x, process_heads=lambda q, k, v: (q[:1], k, v))


def test_errors_name_every_bad_input():
    mha = larix.nn.MultiheadAttention(2, 6, key=key())
    with pytest.raises(ValueError, match=r"`key_` must have shape \(seq_length, 6\).*`value`"):
        mha(Q, jnp.ones((5, 3)), jnp.ones((5, 2)))
    with pytest.raises(ValueError, match="mask"):
        mha(Q, KV, KV, jnp.ones((5, 4), bool))
    with pytest.raises(ValueError, match="vmap"):
        mha(Q[None], KV[None], KV[None])
    with pytest.raises(ValueError, match="qk_size"):
        larix.nn.MultiheadAttention(4, 2, key=key())


def test_bfloat16():
    mha = larix.nn.MultiheadAttention(2, 6, dtype=jnp.bfloat16, key=key())
    assert mha(Q.astype(jnp.bfloat16), KV.astype(jnp.bfloat16), KV.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_transforms_pickle_repr():
    mha = larix.nn.MultiheadAttention(2, 6, use_query_bias=True, key=key())

    class SelfAttention(larix.Module):
        attention: larix.nn.MultiheadAttention

        def __call__(self, x, *, key=None):
            return self.attention(x, x, x)

    check_transforms(SelfAttention(mha), Q)
    assert same_arrays(pickle_roundtrip(mha), mha)
    assert repr(mha).startswith("MultiheadAttention(")


def test_dot_product_attention_weights():
    q = jnp.array([[0.0, 2**0.5]])
    k = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    weights = larix.nn.dot_product_attention_weights(q, k)
    assert close(weights, jnp.array([[1, jnp.e]]) / (1 + jnp.e))
    assert close(
        larix.nn.dot_product_attention_weights(q, k, jnp.array([[True, False]])), jnp.array([[1.0, 0.0]])
    )
    # float16 logits: the softmax runs in float32, the weights come back in float16.
    weights = larix.nn.dot_product_attention_weights(
        jnp.array([[1.0]], jnp.float16), jnp.array([[9.0], [1.0]], jnp.float16)
    )
    assert weights.dtype == jnp.float16 and float(weights.max()) < 1
    with pytest.raises(ValueError, match=r"`mask` must have shape .*\(1, 2\), got \(2, 1\)"):
        larix.nn.dot_product_attention_weights(q, k, jnp.ones((2, 1), bool))


def test_dot_product_attention():
    q = jnp.array([[0.0, 2**0.5]])
    k = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    v = jnp.array([[1.0], [0.0]])
    assert close(larix.nn.dot_product_attention(q, k, v), jnp.array([[1 / (1 + jnp.e)]]))
    assert close(larix.nn.dot_product_attention(q, k, v, jnp.array([[True, False]])), jnp.array([[1.0]]))
    dropout = larix.nn.Dropout(0.5)
    with pytest.raises(RuntimeError, match="key"):
        larix.nn.dot_product_attention(q, k, v, dropout=dropout)
    assert close(
        larix.nn.dot_product_attention(q, k, v, dropout=dropout, inference=True),
        jnp.array([[1 / (1 + jnp.e)]]),
    )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("masked", [False, True])
def test_dot_product_attention_matches_equinox_to_the_bit(dtype, masked):
    eqx = equinox()
    q, k, v = (jax.random.normal(key(i), shape, dtype) for i, shape in enumerate([(5, 8), (7, 8), (7, 3)]))
    mask = jax.random.bernoulli(key(9), 0.6, (5, 7)) if masked else None
    ours = larix.nn.dot_product_attention_weights(q, k, mask)
    assert_bitwise_equal(ours, eqx.nn._attention.dot_product_attention_weights(q, k, mask))
    dropout_ours, dropout_theirs = larix.nn.Dropout(0.4), eqx.nn.Dropout(0.4)
    assert_bitwise_equal(
        larix.nn.dot_product_attention(q, k, v, mask, dropout_ours, key=key(8)),
        eqx.nn._attention.dot_product_attention(q, k, v, mask, dropout_theirs, key=key(8)),
    )


CONFIGS = {
    "default": dict(num_heads=2, query_size=8),
    "sizes": dict(num_heads=3, query_size=6, key_size=5, value_size=4, output_size=7, qk_size=4, vo_size=2),
    "biases": dict(
        num_heads=4,
        query_size=8,
        use_query_bias=True,
        use_key_bias=True,
        use_value_bias=True,
        use_output_bias=True,
    ),
    "dropout": dict(num_heads=2, query_size=8, dropout_p=0.3),
    "wide": dict(num_heads=8, query_size=128),  # before larix attended head by head, this differed
}


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("mask", [None, "shared", "per_head"])
def test_matches_equinox_to_the_bit(config, mask):
    eqx = equinox()
    kwargs = CONFIGS[config]
    theirs = eqx.nn.MultiheadAttention(**kwargs, key=key(4))
    ours = larix.nn.MultiheadAttention(**kwargs, key=key(4))
    assert same_arrays(ours, theirs)  # the same key gives the same parameters
    q = jax.random.normal(key(1), (31, ours.query_size))
    k = jax.random.normal(key(2), (40, ours.key_size))
    v = jax.random.normal(key(3), (40, ours.value_size))
    if mask is not None:
        shape = (31, 40) if mask == "shared" else (ours.num_heads, 31, 40)
        mask = jax.random.bernoulli(key(5), 0.7, shape)
    assert_bitwise_equal(ours(q, k, v, mask, inference=True), theirs(q, k, v, mask, inference=True))
    jitted = (
        larix.filter_jit(lambda m, *args: m(*args, inference=True)),
        eqx.filter_jit(lambda m, *args: m(*args, inference=True)),
    )
    assert_bitwise_equal(jitted[0](ours, q, k, v, mask), jitted[1](theirs, q, k, v, mask))
    # The same dropout key drops the same attention weights as in Equinox.
    assert_bitwise_equal(ours(q, k, v, mask, key=key(9)), theirs(q, k, v, mask, key=key(9)))
    rope = (larix.nn.RotaryPositionalEmbedding(ours.qk_size), eqx.nn.RotaryPositionalEmbedding(ours.qk_size))

    def process_heads(rope):
        def process(q, k, v):
            return jax.vmap(rope, in_axes=1, out_axes=1)(q), jax.vmap(rope, in_axes=1, out_axes=1)(k), v

        return process

    assert_bitwise_equal(
        ours(q, k, v, mask, key=key(9), process_heads=process_heads(rope[0])),
        theirs(q, k, v, mask, key=key(9), process_heads=process_heads(rope[1])),
    )


def test_deterministic_is_a_deprecated_inference():
    eqx = equinox()
    ours = larix.nn.MultiheadAttention(2, 6, dropout_p=0.5, key=key())
    theirs = eqx.nn.MultiheadAttention(2, 6, dropout_p=0.5, key=key())
    with pytest.warns(UserWarning, match=r"deterministic=.*deprecated.*inference=") as caught:
        y = ours(Q, KV, KV, deterministic=True)
    assert caught[0].filename == __file__  # the warning points at the caller's line
    assert_bitwise_equal(y, ours(Q, KV, KV, inference=True))
    with pytest.warns(UserWarning, match="deterministic"):
        assert_bitwise_equal(theirs(Q, KV, KV, deterministic=True), y)
    with pytest.warns(UserWarning, match="deterministic"):
        with pytest.raises(RuntimeError, match="key"):
            ours(Q, KV, KV, deterministic=False, inference=True)  # `deterministic` wins, as in Equinox


# Initialisers and dtypes (issue 9): the defaults are Equinox's to the bit; custom
# initialisers reach the four projections with their keys, shapes and `param_dtype`;
# `dtype` is the computation dtype of the projections and the attention.

PROJECTIONS = ("query_proj", "key_proj", "value_proj", "output_proj")


def _params(mha):
    return [
        p
        for name in PROJECTIONS
        for p in (getattr(mha, name).weight, getattr(mha, name).bias)
        if p is not None
    ]


@pytest.mark.parametrize("config", ["default", "sizes", "biases"])
@pytest.mark.parametrize("dtype", [None, jnp.float16, jnp.bfloat16])
def test_default_init_is_equinox_bit_for_bit(config, dtype):
    eqx = equinox()
    ours = larix.nn.MultiheadAttention(**CONFIGS[config], dtype=dtype, key=key(6))
    theirs = eqx.nn.MultiheadAttention(**CONFIGS[config], dtype=dtype, key=key(6))
    assert len(_params(ours)) == len(_params(theirs))
    for a, b in zip(_params(ours), _params(theirs)):
        np.testing.assert_array_equal(a, b, strict=True)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_low_precision_matches_equinox_to_the_bit(dtype):
    # A layer built in one low precision computes as Equinox's does, softmax in float32.
    eqx = equinox()
    ours = larix.nn.MultiheadAttention(**CONFIGS["biases"], dtype=dtype, key=key(4))
    theirs = eqx.nn.MultiheadAttention(**CONFIGS["biases"], dtype=dtype, key=key(4))
    q, k = (jax.random.normal(key(i), (n, 8), dtype) for i, n in ((1, 9), (2, 11)))
    assert_bitwise_equal(ours(q, k, k), theirs(q, k, k))


def test_custom_initialisers_get_keys_shapes_and_param_dtype():
    calls = []

    def recording(init):
        def wrapped(k, shape, dtype):
            calls.append((k, shape, jnp.dtype(dtype)))
            return init(k, shape, dtype)

        return wrapped

    lecun = jax.nn.initializers.lecun_normal()
    mha = larix.nn.MultiheadAttention(
        3,
        6,
        key_size=5,
        value_size=4,
        output_size=7,
        qk_size=2,
        vo_size=1,
        use_query_bias=True,
        use_output_bias=True,
        dtype=jnp.bfloat16,
        param_dtype=jnp.float32,
        weight_init=recording(lecun),
        bias_init=recording(jax.nn.initializers.zeros),
        key=key(1),
    )
    # Each projection splits its own key into a weight key and a bias key, as Linear does;
    # `bias_init` is called only for the projections with a bias.
    (q_w, q_b), (k_w, _), (v_w, _), (o_w, o_b) = (jax.random.split(k) for k in jax.random.split(key(1), 4))
    expected = [
        (q_w, (6, 6)),
        (q_b, (6,)),
        (k_w, (6, 5)),
        (v_w, (3, 4)),
        (o_w, (7, 3)),
        (o_b, (7,)),
    ]
    assert [(shape, dtype) for _, shape, dtype in calls] == [(shape, jnp.float32) for _, shape in expected]
    for (got, _, _), (want, _) in zip(calls, expected):
        assert jnp.array_equal(jax.random.key_data(got), jax.random.key_data(want))
    assert jnp.array_equal(mha.key_proj.weight, lecun(k_w, (6, 5), jnp.float32))
    assert jnp.array_equal(mha.output_proj.bias, jnp.zeros(7)) and mha.key_proj.bias is None
    assert all(getattr(mha, name).dtype == jnp.bfloat16 for name in PROJECTIONS)
    # Only the initialiser given is replaced: the biases keep Equinox's default.
    default = larix.nn.MultiheadAttention(**CONFIGS["biases"], key=key(2))
    half = larix.nn.MultiheadAttention(**CONFIGS["biases"], weight_init=jax.nn.initializers.ones, key=key(2))
    for name in PROJECTIONS:
        assert jnp.array_equal(getattr(half, name).weight, jnp.ones_like(getattr(default, name).weight))
        np.testing.assert_array_equal(getattr(half, name).bias, getattr(default, name).bias, strict=True)


def test_initialiser_of_the_wrong_shape_or_dtype_is_named():
    with pytest.raises(
        ValueError,
        match=r"MultiheadAttention: `weight_init` must return .* float32\[6, 4\], it returned float32\[4, 6\]",
    ):
        larix.nn.MultiheadAttention(
            2, 4, qk_size=3, weight_init=lambda k, s, d: jnp.zeros(s[::-1], d), key=key()
        )
    with pytest.raises(
        ValueError,
        match=r"MultiheadAttention: `bias_init` .* asked for bfloat16\[6\], it returned float32\[6\]",
    ):
        larix.nn.MultiheadAttention(
            2, 6, use_key_bias=True, dtype=jnp.bfloat16, bias_init=lambda k, s, d: jnp.zeros(s), key=key()
        )


def test_param_dtype_defaults_to_dtype_as_in_equinox():
    mha = larix.nn.MultiheadAttention(2, 6, use_value_bias=True, dtype=jnp.bfloat16, key=key())
    assert mha.dtype == jnp.bfloat16 and all(p.dtype == jnp.bfloat16 for p in _params(mha))
    assert mha(Q.astype(jnp.bfloat16), KV.astype(jnp.bfloat16), KV.astype(jnp.bfloat16)).dtype == jnp.bfloat16
    stored = larix.nn.MultiheadAttention(2, 6, use_value_bias=True, param_dtype=jnp.float16, key=key())
    assert stored.dtype is None and all(p.dtype == jnp.float16 for p in _params(stored))
    # The new field is static: the leaves are still Equinox's.
    theirs = equinox().nn.MultiheadAttention(2, 6, use_value_bias=True, dtype=jnp.bfloat16, key=key())
    assert len(jax.tree_util.tree_leaves(mha)) == len(jax.tree_util.tree_leaves(theirs))
    assert same_arrays(mha, theirs)


def test_dtype_is_the_computation_dtype():
    # Flax's mixed precision: float32 parameters, bfloat16 arithmetic. By hand: the same
    # parameters cast to bfloat16, in Equinox's bfloat16 layer, given bfloat16 inputs.
    eqx = equinox()
    config = CONFIGS["biases"]
    mha = larix.nn.MultiheadAttention(**config, dtype=jnp.bfloat16, param_dtype=jnp.float32, key=key(3))
    assert all(p.dtype == jnp.float32 for p in _params(mha))
    q, k = jax.random.normal(key(1), (5, 8)), jax.random.normal(key(2), (6, 8))
    mask = jax.random.bernoulli(key(7), 0.7, (5, 6)).at[:, 0].set(True)
    got = mha(q, k, k, mask)
    assert got.dtype == jnp.bfloat16
    by_hand = jax.tree_util.tree_map(
        lambda a: a.astype(jnp.bfloat16) if eqx.is_inexact_array(a) else a,
        eqx.nn.MultiheadAttention(**config, key=key(3)),
    )
    bf16 = [x.astype(jnp.bfloat16) for x in (q, k)]
    assert_bitwise_equal(got, by_hand(bf16[0], bf16[1], bf16[1], mask))
    # process_heads sees the heads in the computation dtype.
    seen = []
    mha(q, k, k, process_heads=lambda *heads: seen.extend(h.dtype for h in heads) or heads)
    assert seen == [jnp.bfloat16] * 3
    # dtype=None: the common type of the inputs and the parameters.
    low = larix.nn.MultiheadAttention(2, 6, param_dtype=jnp.bfloat16, key=key())
    assert low(Q, KV.astype(jnp.bfloat16), KV.astype(jnp.bfloat16)).dtype == jnp.float32
    low_kv = KV.astype(jnp.bfloat16)
    assert low(Q.astype(jnp.bfloat16), low_kv, low_kv).dtype == jnp.bfloat16


def test_mixed_dtypes_work_under_strict_promotion():
    # A float32 query, bfloat16 keys and values and parameters: the heads are given one
    # dtype explicitly, so strict promotion accepts it and computes as standard does.
    mha = larix.nn.MultiheadAttention(2, 6, use_output_bias=True, param_dtype=jnp.bfloat16, key=key())
    kv = KV.astype(jnp.bfloat16)
    run = larix.filter_jit(lambda m, q, k, v: m(q, k, v, inference=True))
    with jax.numpy_dtype_promotion("standard"):
        expected = run(mha, Q, kv, kv)
    with jax.numpy_dtype_promotion("strict"):
        got = run(mha, Q, kv, kv)
    assert got.dtype == jnp.float32
    assert_bitwise_equal(got, expected)


def test_default_path_adds_no_casts_to_the_jaxpr():
    # Same dtypes everywhere: the jaxpr is Equinox's, operation for operation.
    eqx = equinox()

    def primitives(mha):
        return [e.primitive.name for e in jax.make_jaxpr(lambda q, k: mha(q, k, k))(Q, KV).eqns]

    config = CONFIGS["biases"] | dict(query_size=6, num_heads=2)
    ours = primitives(larix.nn.MultiheadAttention(**config, key=key()))
    assert "convert_element_type" not in ours
    assert ours == primitives(eqx.nn.MultiheadAttention(**config, key=key()))
