"""Tests of error_if, branched_error_if and EquinoxRuntimeError (src/larix/_errors.py)."""

from __future__ import annotations

import pickle
import re

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import larix
import larix._errors as errors_module
from conftest import Pair

MSG = "x must be >= 0"


def _check(x):
    return larix.error_if(x, x < 0, MSG)


def _raises_compiled(message):
    """The error a failed check raises from compiled code: JAX's, depending on its dispatch
    path, with our message in the text."""
    return pytest.raises((jax.errors.JaxRuntimeError, ValueError), match="EquinoxRuntimeError: " + re.escape(message))


@pytest.fixture
def callback_calls(monkeypatch):
    """Replace the host callback (before tracing) by one that records, and does not raise."""
    calls = []
    jax.clear_caches()  # functions compiled by other tests hold the real callback
    def record(failed, index, arrays, *, msgs):
        calls.append(errors_module._failure_text(msgs, failed, index))
        return arrays

    monkeypatch.setattr(errors_module, "_raise_in_callback", record)
    yield calls
    jax.clear_caches()


# --------------------------------------------------------------------------- outside jit


def test_eager_passes_x_through_unchanged():
    x = {"a": jnp.array([1.0, 2.0]), "b": "not an array", "c": None}
    assert larix.error_if(x, jnp.array([False, False]), MSG) is x
    assert larix.error_if(3.0, False, MSG) == 3.0  # no arrays needed when nothing is traced


def test_eager_raises_at_once_with_the_message():
    with pytest.raises(larix.EquinoxRuntimeError) as info:
        larix.error_if(jnp.array(-1.0), jnp.array(-1.0) < 0, MSG)
    assert str(info.value) == MSG
    assert "JAX_DISABLE_JIT" not in str(info.value)  # the hint is for compiled code only


@pytest.mark.parametrize(
    "pred",
    [True, np.bool_(True), jnp.array([False, True, False]), jnp.zeros((2, 3), bool).at[1, 2].set(True), jnp.array(2), 0.5],
)
def test_any_true_element_fails(pred):
    with pytest.raises(larix.EquinoxRuntimeError, match=MSG):
        larix.error_if(jnp.ones(2), pred, MSG)


@pytest.mark.parametrize("pred", [False, jnp.zeros((2, 3), bool), jnp.array(0), jnp.zeros(0, bool)])
def test_no_true_element_passes(pred):
    x = jnp.ones(2)
    assert larix.error_if(x, pred, MSG) is x


def test_exception_type():
    assert issubclass(larix.EquinoxRuntimeError, RuntimeError)
    assert larix.EquinoxRuntimeError.__module__ == "larix"  # tracebacks print the public name
    error = pickle.loads(pickle.dumps(larix.EquinoxRuntimeError(MSG)))
    assert type(error) is larix.EquinoxRuntimeError and str(error) == MSG


@settings(max_examples=25)
@given(st.lists(st.booleans(), min_size=1, max_size=4))
def test_raises_exactly_when_some_element_is_true(flags):
    pred = np.array(flags)
    x = jnp.arange(len(flags), dtype=jnp.float32)
    failing = jax.jit(lambda x, p: larix.error_if(x, p, MSG))
    if any(flags):
        with pytest.raises(larix.EquinoxRuntimeError, match=MSG):
            larix.error_if(x, pred, MSG)
        with _raises_compiled(MSG):
            jax.block_until_ready(failing(x, pred))
    else:
        assert larix.error_if(x, pred, MSG) is x
        assert np.array_equal(failing(x, pred), x)


# --------------------------------------------------------------------------- jit


def test_jit_passes_values_and_raises_at_run_time_with_message():
    compiled = jax.jit(_check)
    assert float(compiled(2.0)) == 2.0
    with _raises_compiled(MSG) as info:
        jax.block_until_ready(compiled(-2.0))
    # The message says how to get a plain traceback.
    assert "JAX_DISABLE_JIT=1" in str(info.value)
    assert float(compiled(3.0)) == 3.0  # the same compiled function, passing again


def test_filter_jit_and_pytrees():
    @larix.filter_jit
    def f(pair):
        pair = larix.error_if(pair, pair.a < 0, "a is negative")
        return pair.a + pair.b

    assert float(f(Pair(jnp.array(1.0), jnp.array(2.0), tag="t"))) == 3.0
    # filter_jit re-raises a failed check as EquinoxRuntimeError, as Equinox does: the
    # message, and how to get a plain traceback, without JAX's callback traceback.
    for _ in range(2):  # the first call traces; the second takes the fast path
        with pytest.raises(larix.EquinoxRuntimeError, match="a is negative") as info:
            jax.block_until_ready(f(Pair(jnp.array(-1.0), jnp.array(2.0), tag="t")))
        assert "JAX_DISABLE_JIT=1" in str(info.value)
        assert "Traceback" not in str(info.value)
        assert info.value.__cause__ is None and info.value.__suppress_context__


def test_filter_jit_passes_other_runtime_errors_through():
    def fail(x):
        raise KeyError("not an error_if check")

    @larix.filter_jit
    def f(x):
        return jax.pure_callback(fail, jax.ShapeDtypeStruct((), jnp.float32), x)

    for _ in range(2):
        with pytest.raises((jax.errors.JaxRuntimeError, ValueError), match="not an error_if check") as info:
            jax.block_until_ready(f(jnp.array(1.0)))
        assert not isinstance(info.value, larix.EquinoxRuntimeError)

    # Non-array leaves and static fields come back as they were.
    out = larix.filter_jit(lambda a: larix.error_if(Pair(a, "text", tag="t"), a < 0, MSG))(jnp.array(1.0))
    assert isinstance(out, Pair) and out.b == "text" and out.tag == "t"


def test_known_pred_inside_jit_raises_when_traced():
    with pytest.raises(larix.EquinoxRuntimeError, match=MSG):
        jax.jit(lambda x: larix.error_if(x, True, MSG))(1.0)


def test_no_callback_when_pred_is_false(callback_calls):
    compiled = jax.jit(_check)
    jax.block_until_ready(compiled(jnp.array(1.0)))
    assert callback_calls == []
    jax.block_until_ready(compiled(jnp.array(-1.0)))
    assert callback_calls == [MSG]


def _walk(jaxpr, inside_cond=False):
    """Every equation of `jaxpr` and of the jaxprs in its parameters, with whether it sits
    in a branch of a cond, and the jaxpr that holds it."""
    for eqn in jaxpr.eqns:
        yield eqn, inside_cond, jaxpr
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else [value]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _walk(inner, inside_cond or eqn.primitive.name == "cond")


def test_callback_only_in_the_failing_branch_and_result_depends_on_check():
    jaxpr = jax.make_jaxpr(_check)(1.0).jaxpr
    found = [(eqn, inside) for eqn, inside, _ in _walk(jaxpr) if "callback" in eqn.primitive.name]
    assert found and all(inside for _, inside in found)
    # The returned value depends on the cond's output: whatever uses x runs after the check.
    (cond, _, holder), *_ = [e for e in _walk(jaxpr) if e[0].primitive.name == "cond"]
    assert cond.outvars
    dependent = {id(v) for v in cond.outvars}
    for eqn in holder.eqns:
        if any(id(v) in dependent for v in eqn.invars):
            dependent.update(id(v) for v in eqn.outvars)
    assert all(id(v) in dependent for v in holder.outvars)


def test_unused_result_drops_the_check():
    # As in Equinox: the check is part of computing the returned value.
    def f(x):
        larix.error_if(x, x < 0, MSG)
        return x + 1

    assert float(jax.jit(f)(-1.0)) == 0.0


def test_disable_jit_raises_at_the_call():
    with jax.disable_jit():
        with pytest.raises(larix.EquinoxRuntimeError, match=MSG):
            larix.filter_jit(_check)(jnp.array(-1.0))


# --------------------------------------------------------------------------- vmap


@pytest.mark.parametrize("vmap", [jax.vmap, larix.filter_vmap])
def test_vmap_raises_if_any_batch_element_fails(vmap):
    batched = vmap(_check)
    assert np.array_equal(batched(jnp.array([1.0, 2.0])), [1.0, 2.0])
    with pytest.raises(larix.EquinoxRuntimeError) as info:
        batched(jnp.array([1.0, -2.0]))
    assert str(info.value) == f"Batch index (1,) had error:\n{MSG}"  # only the failing one
    compiled = jax.jit(vmap(_check))
    assert np.array_equal(compiled(jnp.array([1.0, 2.0])), [1.0, 2.0])
    with _raises_compiled(f"Batch index (1,) had error:\n{MSG}"):
        jax.block_until_ready(compiled(jnp.array([1.0, -2.0])))
    with pytest.raises(larix.EquinoxRuntimeError, match=r"^Batch index \(1,\) had error:\n"):
        larix.filter_jit(vmap(_check))(jnp.array([1.0, -2.0]))


def test_a_failed_compiled_check_is_not_logged_twice(caplog):
    # JAX logs an exception raised in a host callback; ours reaches the caller anyway.
    compiled = jax.jit(_check)
    with pytest.raises((RuntimeError, ValueError), match=MSG):
        jax.block_until_ready(compiled(jnp.array(-1.0)))
    with pytest.raises(larix.EquinoxRuntimeError):
        larix.filter_jit(_check)(jnp.array(-1.0))
    assert "pure_callback failed" not in caplog.text
    # Other callbacks' failures are still logged.
    def broken(x):
        raise KeyError("not ours")

    with pytest.raises(Exception, match="not ours"):
        jax.block_until_ready(jax.jit(lambda x: jax.pure_callback(broken, x, x))(jnp.ones(())))
    assert "pure_callback failed" in caplog.text


def test_nested_vmap_and_unbatched_pred(callback_calls):
    nested = jax.jit(jax.vmap(jax.vmap(_check)))
    jax.block_until_ready(nested(jnp.array([[1.0, -2.0], [-3.0, 4.0]])))
    # Once for the whole batch, naming every failing element, outermost axis first.
    assert callback_calls == [f"Batch index (0, 1) had error:\n{MSG}\n\nBatch index (1, 0) had error:\n{MSG}"]
    # A batched x with an unbatched pred.
    f = jax.vmap(lambda x, flag: larix.error_if(x, flag, MSG), in_axes=(0, None))
    assert np.array_equal(f(jnp.ones(3), False), jnp.ones(3))
    with pytest.raises(larix.EquinoxRuntimeError):
        f(jnp.ones(3), True)


# --------------------------------------------------------------------------- autodiff


def test_gradients_pass_through_unchanged():
    def loss(x, check):
        y = larix.error_if(x, x < 0, MSG) if check else x
        return jnp.sum(jnp.sin(y) * y)

    x = jnp.array([0.5, 1.5, 2.0])
    expected = jax.grad(loss)(x, False)
    assert np.allclose(jax.grad(loss)(x, True), expected)
    assert np.allclose(jax.jit(jax.grad(loss), static_argnums=1)(x, True), expected)
    assert np.allclose(larix.filter_grad(loss)(x, True), expected)
    assert np.allclose(jax.vmap(jax.grad(loss), in_axes=(0, None))(x[:, None], True)[:, 0], expected)
    assert np.allclose(jax.jacfwd(lambda v: loss(v, True))(x), expected)
    assert np.allclose(jax.grad(lambda v: jnp.sum(jax.vmap(_check)(v) ** 2))(x), 2 * x)
    with pytest.raises(larix.EquinoxRuntimeError):
        jax.grad(loss)(-x, True)
    with _raises_compiled(MSG):
        jax.block_until_ready(jax.jit(jax.grad(loss), static_argnums=1)(-x, True))


def test_key_leaves_pass_through():
    key = jax.random.key(0)
    x, same_key = jax.jit(lambda x, k: larix.error_if((x, k), x < 0, MSG))(1.0, key)
    assert float(x) == 1.0 and np.array_equal(jax.random.key_data(same_key), jax.random.key_data(key))
    with _raises_compiled(MSG):
        jax.block_until_ready(jax.jit(lambda x, k: larix.error_if((x, k), x < 0, MSG))(-1.0, key))
    with pytest.raises(ValueError, match="`x` has no arrays"):
        jax.jit(lambda x, k: larix.error_if(k, x < 0, MSG))(1.0, key)


def test_integer_leaves_and_grad():
    def f(x, n):
        x, n = larix.error_if((x, n), n < 0, "n must be >= 0")
        return x * n

    assert float(jax.grad(f)(2.0, 3)) == 3.0
    with _raises_compiled("n must be >= 0"):
        jax.block_until_ready(jax.jit(jax.grad(f))(2.0, -3))


# --------------------------------------------------------------------------- loops


def test_scan_and_while_loop():
    def total(xs):
        return jax.lax.scan(lambda carry, x: (carry + _check(x), None), 0.0, xs)[0]

    assert float(jax.jit(total)(jnp.array([1.0, 2.0]))) == 3.0
    with _raises_compiled(MSG):
        jax.block_until_ready(jax.jit(total)(jnp.array([1.0, -2.0])))

    def countdown(x):
        # Each step checks the value it is about to use.
        return jax.lax.while_loop(lambda c: c[1] < 3, lambda c: (_check(c[0] - 1.0), c[1] + 1), (x, 0))[0]

    assert float(jax.jit(countdown)(5.0)) == 2.0
    with _raises_compiled(MSG):
        jax.block_until_ready(jax.jit(countdown)(2.0))


# --------------------------------------------------------------------------- branched_error_if

MSGS = ("no error", "x is NaN", "x is infinite")


def _classify(x):
    index = jnp.where(jnp.isnan(x), 1, jnp.where(jnp.isinf(x), 2, 0))
    return larix.branched_error_if(x, index > 0, index, MSGS)


def test_branched_picks_the_message():
    assert float(_classify(jnp.array(1.0))) == 1.0
    with pytest.raises(larix.EquinoxRuntimeError, match="x is infinite"):
        _classify(jnp.array(jnp.inf))
    compiled = jax.jit(_classify)
    with _raises_compiled("x is NaN"):
        jax.block_until_ready(compiled(jnp.array(jnp.nan)))
    with _raises_compiled("x is infinite"):
        jax.block_until_ready(compiled(jnp.array(-jnp.inf)))


def test_branched_array_index_uses_largest_failing_index_and_vmap_names_each(callback_calls):
    # An index per element of one call: the largest among the failing elements, not among all.
    pred, index = jnp.array([True, False, True]), jnp.array([1, 2, 0])
    with pytest.raises(larix.EquinoxRuntimeError, match=r"^x is NaN\b"):
        larix.branched_error_if(jnp.ones(3), pred, index, MSGS)
    # Under vmap, every failing element with its own message; passing ones are not named.
    each = "Batch index (0,) had error:\nx is NaN\n\nBatch index (2,) had error:\nno error"
    batched = jax.jit(jax.vmap(lambda p, i: larix.branched_error_if(jnp.ones(()), p, i, MSGS)))
    jax.block_until_ready(batched(pred, index))
    jax.block_until_ready(batched(jnp.array([False, False, True]), jnp.array([2, 2, 1])))
    assert callback_calls == [each, "Batch index (2,) had error:\nx is NaN"]
    with pytest.raises(larix.EquinoxRuntimeError) as info:
        jax.vmap(lambda p, i: larix.branched_error_if(jnp.ones(()), p, i, MSGS))(pred, index)
    assert str(info.value) == each
    # An unbatched index with a batched pred: the same message for each failing element.
    shared = jax.vmap(lambda p: larix.branched_error_if(jnp.ones(()), p, 2, MSGS))
    with pytest.raises(larix.EquinoxRuntimeError, match=r"^Batch index \(0,\) had error:\nx is infinite\n\nBatch index \(2,\)"):
        shared(pred)


def test_branched_index_out_of_range_still_raises():
    with pytest.raises(larix.EquinoxRuntimeError, match=r"index 5, but there is no message for it: `msgs` has 3"):
        larix.branched_error_if(jnp.ones(()), True, 5, MSGS)
    with _raises_compiled("larix.branched_error_if: a check failed with index -1, but there is no message"):
        jax.block_until_ready(jax.jit(lambda i: larix.branched_error_if(jnp.ones(()), True, i, MSGS))(-1))


# --------------------------------------------------------------------------- on_error


def test_on_error_nan():
    x = (jnp.array([1.0, -2.0]), jnp.array([1, 2]))
    out = larix.error_if(x, x[0] < 0, MSG, on_error="nan")
    assert np.isnan(out[0]).all() and np.array_equal(out[1], x[1])  # integers stay
    out = jax.jit(lambda v: larix.error_if(v, v < 0, MSG, on_error="nan"))(jnp.array([1.0, -2.0]))
    assert np.isnan(out).all()
    out = jax.vmap(lambda v: larix.error_if(v, v < 0, MSG, on_error="nan"))(jnp.array([1.0, -2.0]))
    assert out[0] == 1.0 and np.isnan(out[1])  # per batch element
    assert larix.error_if(x, False, MSG, on_error="nan") is x


def test_on_error_off_skips_the_check(callback_calls):
    x = jnp.array(-1.0)
    assert larix.error_if(x, True, MSG, on_error="off") is x
    assert float(jax.jit(lambda v: larix.error_if(v, v < 0, MSG, on_error="off"))(x)) == -1.0
    assert callback_calls == []


def test_environment_variable(monkeypatch):
    monkeypatch.setenv("EQX_ON_ERROR", "nan")
    assert np.isnan(larix.error_if(jnp.array(-1.0), True, MSG))
    monkeypatch.setenv("EQX_ON_ERROR", "off")
    assert float(larix.error_if(jnp.array(-1.0), True, MSG)) == -1.0
    # An explicit on_error wins over the variable.
    with pytest.raises(larix.EquinoxRuntimeError):
        larix.error_if(jnp.array(-1.0), True, MSG, on_error="raise")
    monkeypatch.setenv("EQX_ON_ERROR", "raise")
    with pytest.raises(larix.EquinoxRuntimeError):
        larix.error_if(jnp.array(-1.0), True, MSG)
    monkeypatch.setenv("EQX_ON_ERROR", "loud")
    with pytest.raises(ValueError, match=r"EQX_ON_ERROR='loud' is not a known mode; use 'raise', 'nan' or 'off'"):
        larix.error_if(jnp.array(-1.0), False, MSG)
    monkeypatch.setenv("EQX_ON_ERROR", "breakpoint")
    with pytest.raises(ValueError, match=r"EQX_ON_ERROR='breakpoint'.*not support.*jax.debug.breakpoint"):
        larix.error_if(jnp.array(-1.0), False, MSG)


# --------------------------------------------------------------------------- bad input


def test_bad_on_error():
    with pytest.raises(ValueError, match=r"on_error='loud' is not a known mode; use 'default', 'raise'"):
        larix.error_if(jnp.ones(()), False, MSG, on_error="loud")
    with pytest.raises(ValueError, match="does not support"):
        larix.branched_error_if(jnp.ones(()), False, 0, MSGS, on_error="breakpoint")


def test_bad_msg_and_pred():
    with pytest.raises(TypeError, match=r"`msg` must be a string, got 3.*error_if\(x, pred, msg\)"):
        larix.error_if(jnp.ones(()), False, 3)
    with pytest.raises(TypeError, match=r"`msg` must be a string"):
        larix.error_if(jnp.ones(()), "swapped arguments", jnp.array(True))
    with pytest.raises(TypeError, match=r"`pred` must be a boolean array .* e\.g\. `x < 0`, got None"):
        larix.error_if(jnp.ones(()), None, MSG)
    with pytest.raises(TypeError, match="`pred` must be a boolean array"):
        larix.error_if(jnp.ones(()), "yes", MSG)
    with pytest.raises(TypeError, match="`pred` must be a boolean array"):
        jax.jit(lambda key: larix.error_if(jnp.ones(()), key, MSG))(jax.random.key(0))


def test_bad_index_and_msgs():
    with pytest.raises(TypeError, match=r"`index` must be an integer .*float32"):
        larix.branched_error_if(jnp.ones(()), False, jnp.array(1.0), MSGS)
    with pytest.raises(TypeError, match=r"`index` must be an integer"):
        larix.branched_error_if(jnp.ones(()), False, "one", MSGS)
    with pytest.raises(TypeError, match=r"`msgs` must be a list or tuple of strings.*larix.error_if"):
        larix.branched_error_if(jnp.ones(()), False, 0, "one message")
    with pytest.raises(TypeError, match=r"`msgs\[1\]` must be a string, got 2"):
        larix.branched_error_if(jnp.ones(()), False, 0, ["a", 2])
    with pytest.raises(ValueError, match="`msgs` is empty"):
        larix.branched_error_if(jnp.ones(()), False, 0, [])
    with pytest.raises(ValueError, match=r"`index` of shape \(2,\) does not broadcast with `pred` of shape \(3,\)"):
        larix.branched_error_if(jnp.ones(()), jnp.zeros(3, bool), jnp.array([0, 1]), MSGS)


def test_traced_check_needs_an_array_in_x():
    with pytest.raises(ValueError, match=r"`x` has no arrays.*pass the array\(s\) the check protects"):
        jax.jit(lambda v: larix.error_if(1.0, v < 0, MSG))(1.0)


def test_matches_equinox_on_concrete_inputs():
    eqx = pytest.importorskip("equinox")
    cases = [(True, MSG), (False, MSG), (jnp.array([False, True]), MSG), (jnp.array(0), MSG), (jnp.array(3), MSG)]
    for pred, msg in cases:
        outcomes = []
        for error_if in (eqx.error_if, larix.error_if):
            try:
                error_if(jnp.ones(2), pred, msg)
                outcomes.append(None)
            except RuntimeError as error:
                outcomes.append(str(error).strip().splitlines()[-1] if error_if is larix.error_if else msg)
        assert outcomes[0] == outcomes[1], (pred, outcomes)
