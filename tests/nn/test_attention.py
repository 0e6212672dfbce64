"""Tests of larix.nn.MultiheadAttention (src/larix/nn/_attention.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from nn_helpers import check_transforms, close, copy_arrays, equinox, key, pickle_roundtrip, same_arrays

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
    custom = larix.nn.MultiheadAttention(3, 6, key_size=4, value_size=2, output_size=5, qk_size=7, vo_size=1, key=key())
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


def test_matches_equinox():
    eqx = equinox()
    kwargs = dict(key_size=5, use_query_bias=True, use_output_bias=True, dropout_p=0.3)
    theirs = eqx.nn.MultiheadAttention(2, 6, **kwargs, key=key(4))
    ours = larix.nn.MultiheadAttention(2, 6, **kwargs, key=key(4))
    assert same_arrays(ours, theirs)
    ours = copy_arrays(theirs, ours)
    kv = KV[:, :5]
    mask = jnp.tril(jnp.ones((4, 5), bool))
    assert close(ours(Q, kv, KV, mask, inference=True), theirs(Q, kv, KV, mask, inference=True), atol=1e-5)
    # The same dropout key drops the same attention weights as in Equinox.
    assert close(ours(Q, kv, KV, key=key(9)), theirs(Q, kv, KV, key=key(9)), atol=1e-5)
