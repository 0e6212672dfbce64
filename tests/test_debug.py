"""Tests for larix.debug: assert_max_traces, get_num_traces, and the re-exports."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import larix
from conftest import make_linear
from larix import debug
from larix.debug import assert_max_traces, get_num_traces

# --------------------------------------------------------------------------- assert_max_traces


def test_decorator_without_fn_inside_filter_jit():
    @larix.filter_jit
    @assert_max_traces(max_traces=1)
    def double(x):
        return 2 * x

    np.testing.assert_allclose(double(jnp.ones(2)), [2.0, 2.0])
    np.testing.assert_allclose(double(jnp.zeros(2)), [0.0, 0.0])  # same shape: no trace
    assert get_num_traces(double) == 1
    with pytest.raises(RuntimeError) as info:
        double(jnp.ones(3))
    message = str(info.value)
    assert "double" in message
    assert "traced 2 times" in message and "max_traces=1" in message
    assert "explain_recompiles" in message  # how to find out why
    # Already compiled calls still work after the error.
    np.testing.assert_allclose(double(jnp.ones(2)), [2.0, 2.0])


def test_with_fn_inside_jax_jit():
    def square(x):
        return x * x

    counted = assert_max_traces(square, max_traces=2)
    jitted = jax.jit(counted)
    jitted(jnp.ones(1))
    jitted(jnp.ones(2))
    jitted(jnp.ones(1))
    assert get_num_traces(counted) == 2
    with pytest.raises(RuntimeError, match="traced 3 times, more than max_traces=2"):
        jitted(jnp.ones(3))


def test_max_traces_zero_refuses_the_first_trace():
    f = larix.filter_jit(assert_max_traces(lambda x: x, max_traces=0))
    with pytest.raises(RuntimeError, match="max_traces=0"):
        f(jnp.ones(1))


def test_max_traces_none_only_counts():
    counted = assert_max_traces(lambda x: x + 1, max_traces=None)
    f = larix.filter_jit(counted)
    for n in range(1, 6):
        f(jnp.ones(n))
    assert get_num_traces(counted) == 5 == get_num_traces(f)


def test_each_call_outside_a_jit_counts():
    counted = assert_max_traces(lambda x: x + 1, max_traces=2)
    assert counted(1) == 2
    assert counted(2) == 3
    with pytest.raises(RuntimeError):
        counted(3)


@pytest.mark.parametrize("bad", [-1, 1.5, "2", [1]])
def test_invalid_max_traces(bad):
    with pytest.raises(ValueError) as info:
        assert_max_traces(lambda x: x, max_traces=bad)
    message = str(info.value)
    assert repr(bad) in message
    assert "non-negative int or None" in message
    with pytest.raises(ValueError):
        assert_max_traces(max_traces=bad)


def test_max_traces_is_required_and_keyword_only():
    with pytest.raises(TypeError):
        assert_max_traces(lambda x: x)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        assert_max_traces(lambda x: x, 1)  # type: ignore[misc]


def test_wrapper_keeps_the_function_metadata():
    def named(x):
        """Docstring."""
        return x

    counted = assert_max_traces(named, max_traces=3)
    assert counted.__name__ == "named"
    assert counted.__doc__ == "Docstring."
    assert counted.__wrapped__ is named


def test_on_a_method_of_a_plain_class():
    class Scaler:
        def __init__(self, factor):
            self.factor = factor

        @assert_max_traces(max_traces=None)
        def scale(self, x):
            return self.factor * x

    scaler = Scaler(3.0)
    np.testing.assert_allclose(jax.jit(scaler.scale)(jnp.ones(2)), [3.0, 3.0])
    assert get_num_traces(Scaler.scale) == 1


def test_inside_a_filter_jit_module_method():
    class Model(larix.Module):
        weight: jax.Array

        @larix.filter_jit
        @assert_max_traces(max_traces=1)
        def apply(self, x):
            return self.weight * x

    for value in (1.0, 2.0, 3.0):
        model = Model(jnp.full(2, value, jnp.float32))
        np.testing.assert_allclose(model.apply(jnp.ones(2)), [value, value])
    assert get_num_traces(Model.apply) == 1
    with pytest.raises(RuntimeError, match="max_traces=1"):
        Model(jnp.ones(3)).apply(jnp.ones(3))


# --------------------------------------------------------------------------- get_num_traces


def test_get_num_traces_of_a_filter_jit_function():
    f = larix.filter_jit(lambda m, x, n: m(x) * n)
    model = make_linear()
    assert get_num_traces(f) == 0
    f(model, jnp.ones(4), 1)
    f(model, jnp.ones(4), 1)
    assert get_num_traces(f) == 1
    f(model, jnp.ones(4), 2)
    assert get_num_traces(f) == 2


def test_get_num_traces_of_a_filter_jit_of_a_module():
    model = make_linear()
    f = larix.filter_jit(model)
    f(jnp.ones(4))
    f(jnp.ones(4))
    assert get_num_traces(f) == 1


def test_get_num_traces_through_functools_wraps():
    f = larix.filter_jit(lambda x: x)

    @functools.wraps(f)
    def outer(x):
        return f(x)

    outer(jnp.ones(1))
    outer(jnp.ones(2))
    assert get_num_traces(outer) == 2


def test_get_num_traces_of_jax_jit_of_a_counter():
    counted = assert_max_traces(lambda x: x, max_traces=None)
    jitted = jax.jit(counted)
    jitted(jnp.ones(1))
    jitted(jnp.ones(1))
    assert get_num_traces(counted) == 1


@pytest.mark.parametrize("fn", [lambda x: x, len, jax.jit(lambda x: x), functools.partial(max, 1)])
def test_get_num_traces_rejects_functions_that_count_nothing(fn):
    with pytest.raises(TypeError) as info:
        get_num_traces(fn)
    message = str(info.value)
    assert "does not count its traces" in message
    assert "assert_max_traces" in message and "filter_jit" in message  # the fixes


# --------------------------------------------------------------------------- backward_nan


@jax.custom_vjp
def _nan_cotangent(x):
    return x


_nan_cotangent.defvjp(lambda x: (x, None), lambda _, g: (jnp.nan * g,))


def test_backward_nan_prints_primal_and_cotangent_and_stops_on_a_nan(capfd):
    @larix.filter_jit
    @jax.grad
    def grad(x, terminate):
        return _nan_cotangent(debug.backward_nan(x, name="foo", terminate=terminate))

    capfd.readouterr()
    assert jnp.isnan(grad(jnp.array(1.0), False))
    jax.effects_barrier()
    printed = capfd.readouterr().out
    assert printed == "foo:\n   primals=Array(1., dtype=float32)\ncotangents=Array(nan, dtype=float32)\n"
    with pytest.raises(larix.EquinoxRuntimeError, match="foo: encountered a NaN in the cotangent"):
        grad(jnp.array(1.0), True)


def test_backward_nan_is_an_identity_that_prints_nothing_forward(capfd):
    x = (jnp.array([1.0, 2.0]), 3, "label", jnp.array([1, 2]))
    capfd.readouterr()
    out = debug.backward_nan(x)
    assert out[1:3] == (3, "label") and out[0] is not None
    np.testing.assert_array_equal(out[0], x[0])
    np.testing.assert_array_equal(out[3], x[3])
    assert debug.backward_nan(x[1:3]) == x[1:3]  # nothing to watch
    g = jax.grad(lambda v: jnp.sum(debug.backward_nan(v, terminate=True) ** 2))(jnp.array([1.0, 2.0]))
    np.testing.assert_allclose(g, [2.0, 4.0])  # gradients pass through unchanged
    jax.effects_barrier()
    printed = capfd.readouterr().out
    assert printed.startswith("   primals=Array([1., 2.], dtype=float32)")  # backward only, no name
    assert "cotangents=Array([2., 4.], dtype=float32)" in printed


# --------------------------------------------------------------------------- breakpoint_if


def test_breakpoint_if_opens_the_debugger_only_when_pred_holds(monkeypatch):
    # jax.debug.breakpoint replaced by a callback that records when it runs (at run time).
    opened = []

    def fake_breakpoint(**kwargs):
        jax.debug.callback(lambda: opened.append(kwargs))

    monkeypatch.setattr(jax.debug, "breakpoint", fake_breakpoint)

    def f(x):
        debug.breakpoint_if(x > 10, num_frames=2)
        return x + 1

    compiled = jax.jit(f)
    assert compiled(jnp.array(1.0)) == 2.0
    jax.effects_barrier()
    assert opened == []
    assert compiled(jnp.array(11.0)) == 12.0
    jax.effects_barrier()
    assert opened == [{"num_frames": 2}]
    opened.clear()
    assert jax.vmap(f)(jnp.array([1.0, 20.0])).tolist() == [2.0, 21.0]  # any element: once
    jax.effects_barrier()
    assert opened == [{"num_frames": 2}]
    opened.clear()
    jax.vmap(f)(jnp.array([1.0, 2.0]))
    jax.effects_barrier()
    assert opened == []


# --------------------------------------------------------------------------- the public surface


def test_debug_exports():
    assert set(debug.__all__) == {
        "assert_max_traces",
        "backward_nan",
        "breakpoint_if",
        "explain_recompiles",
        "get_num_traces",
        "recompile_reasons",
    }
    for name in debug.__all__:
        assert callable(getattr(debug, name))
    assert larix.debug is debug
