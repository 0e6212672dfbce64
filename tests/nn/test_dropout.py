"""Tests of larix.nn.Dropout (src/larix/nn/_dropout.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from nn_helpers import assert_bitwise_equal, close, equinox, key, pickle_roundtrip

import larix


def test_drops_and_rescales():
    y = larix.nn.Dropout(0.25)(jnp.ones(4000), key=key())
    kept = y != 0
    assert close(y[kept], 1 / 0.75)
    assert abs(float(kept.mean()) - 0.75) < 0.03
    assert abs(float(y.mean()) - 1.0) < 0.05


def test_inference_and_p_zero_are_identity():
    x = jnp.arange(5.0)
    assert larix.nn.Dropout(0.5, inference=True)(x) is x
    assert larix.nn.Dropout(0.5)(x, inference=True) is x
    assert larix.nn.Dropout(0.0)(x) is x
    # The per-call flag overrides the field both ways.
    assert not close(larix.nn.Dropout(0.5, inference=True)(x, key=key(), inference=False), x)


def test_missing_key_explains():
    with pytest.raises(RuntimeError, match=r"dropout\(x, key=key\).*inference_mode"):
        larix.nn.Dropout(0.5)(jnp.ones(3))


def test_bad_p():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        larix.nn.Dropout(1.0)


def test_dtype_kept():
    assert larix.nn.Dropout(0.5)(jnp.ones(8, jnp.bfloat16), key=key()).dtype == jnp.bfloat16


def test_jit_grad_vmap():
    dropout = larix.nn.Dropout(0.5)
    x = jnp.ones(6)
    jitted = larix.filter_jit(lambda m, v, k: m(v, key=k))(dropout, x, key())
    assert close(jitted, dropout(x, key=key()))
    grad = jax.grad(lambda v: jnp.sum(dropout(v, key=key())))(x)
    assert close(grad, dropout(x, key=key()))  # d/dx of mask * x / q is mask / q
    keys = jax.random.split(key(), 3)
    batched = larix.filter_vmap(lambda m, v, k: m(v, key=k), in_axes=(None, None, 0))(dropout, x, keys)
    assert batched.shape == (3, 6) and close(batched[1], dropout(x, key=keys[1]))


def test_fields_pickle_repr():
    dropout = larix.nn.Dropout(0.3)
    assert (dropout.p, dropout.inference) == (0.3, False)
    assert repr(pickle_roundtrip(dropout)) == "Dropout(p=0.3, inference=False)"


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_matches_equinox(dtype):
    eqx = equinox()
    x = jnp.linspace(-1, 1, 50, dtype=dtype)
    for p in (0.1, 0.5):
        assert_bitwise_equal(larix.nn.Dropout(p)(x, key=key(7)), eqx.nn.Dropout(p)(x, key=key(7)))


def test_deterministic_is_a_deprecated_inference():
    # Equinox still accepts `deterministic=` (its old name of `inference=`), with a warning.
    eqx = equinox()
    x = jnp.arange(5.0)
    with pytest.warns(
        UserWarning, match=r"Dropout\(deterministic=...\) is deprecated.*Dropout\(inference=...\)"
    ) as caught:
        dropout = larix.nn.Dropout(0.5, deterministic=True)
    assert caught[0].filename == __file__  # the warning points at the caller's line
    assert dropout.inference is True and dropout.deterministic is True and dropout(x) is x
    with pytest.warns(UserWarning, match=r"Dropout\(\)\(deterministic=...\) is deprecated") as caught:
        assert larix.nn.Dropout(0.5)(x, deterministic=True) is x
    assert caught[0].filename == __file__
    with pytest.warns(UserWarning, match="deterministic"):
        # `deterministic` wins over `inference`, as in Equinox.
        dropped = larix.nn.Dropout(0.5, inference=True)(x, key=key(), inference=True, deterministic=False)
    with pytest.warns(UserWarning, match="deterministic"):
        theirs = eqx.nn.Dropout(0.5, inference=True)(x, key=key(), inference=True, deterministic=False)
    assert_bitwise_equal(dropped, theirs)
    with pytest.warns(UserWarning, match="deterministic"):
        assert eqx.nn.Dropout(0.5, deterministic=True).deterministic is True
    assert larix.nn.Dropout(0.5).deterministic is False
