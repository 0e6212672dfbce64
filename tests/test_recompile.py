"""Tests for larix._recompile: why a filter_jit function compiled again, and the fresh-lambda warning."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import pytest

import larix
from conftest import make_linear
from larix.debug import explain_recompiles, recompile_reasons


def relu(x):
    return jnp.maximum(x, 0)


def gelu(x):
    return x * 0.5


class MLP(larix.Module):
    weight: Any
    act: Any = larix.field(static=True, default=relu)

    def __call__(self, x):
        return self.act(self.weight @ x)


class Stack(larix.Module):
    layers: tuple


class Holder(larix.Module):
    fn: Any  # a leaf, not a static field

    def __call__(self, x):
        return self.fn(x)


@pytest.fixture(autouse=True)
def explanations_off():
    # Every test starts with explanations off and leaves the setting as it found it.
    with explain_recompiles(False):
        yield


@pytest.fixture
def log(caplog):
    caplog.set_level(logging.WARNING, logger="larix")

    def messages() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "larix"]

    return messages


def _forward(model, x):
    return model(x)


# --------------------------------------------------------------------------- what is logged


def test_static_field_change_is_explained(log):
    f = larix.filter_jit(_forward)
    x = jnp.ones(3)
    with explain_recompiles():
        f(MLP(jnp.ones((2, 3)), relu), x)
        assert log() == []  # the first trace is not a recompilation
        f(MLP(jnp.ones((2, 3)), gelu), x)
    (message,) = log()
    assert "args[0].act changed: <function relu> -> <function gelu>" in message
    assert "_forward" in message  # names the function that compiles again
    assert recompile_reasons(f) == ["static field args[0].act changed: <function relu> -> <function gelu>"]


def test_static_field_change_of_jax_functions_is_explained(log):
    f = larix.filter_jit(_forward)
    x = jnp.ones(3)
    with explain_recompiles():
        f(MLP(jnp.ones((2, 3)), jax.nn.relu), x)
        f(MLP(jnp.ones((2, 3)), jax.nn.gelu), x)
    (message,) = log()
    assert "args[0].act changed: <function relu> -> <function gelu>" in message


def test_array_shape_change_is_explained(log):
    f = larix.filter_jit(lambda n, x: x * n)
    with explain_recompiles():
        f(2, jnp.ones((32, 64)))
        f(2, jnp.ones((16, 64)))
    (message,) = log()
    assert "array at args[1] changed: f32[32,64] -> f32[16,64]" in message


def test_array_dtype_change_is_explained(log):
    f = larix.filter_jit(_forward)
    with explain_recompiles():
        f(MLP(jnp.ones((2, 3))), jnp.ones(3))
        f(MLP(jnp.ones((2, 3), jnp.int32)), jnp.ones(3))
    (message,) = log()
    assert "args[0].weight changed: f32[2,3] -> i32[2,3]" in message


def test_nested_array_path_is_explained(log):
    f = larix.filter_jit(lambda s: [layer.weight.sum() for layer in s.layers])
    with explain_recompiles():
        f(Stack((MLP(jnp.ones((2, 3))), MLP(jnp.ones((2, 3))))))
        f(Stack((MLP(jnp.ones((2, 3))), MLP(jnp.ones((4, 3))))))
    (message,) = log()
    assert "args[0].layers[1].weight changed: f32[2,3] -> f32[4,3]" in message


def test_structure_change_is_explained(log):
    f = larix.filter_jit(lambda tree: tree["a"])
    with explain_recompiles():
        f({"a": jnp.ones(2)})
        f({"a": jnp.ones(2), "b": 1})
    (message,) = log()
    assert "structure" in message
    assert "args[0]" in message
    assert "'b'" in message  # the new key


def test_static_value_change_is_explained(log):
    f = larix.filter_jit(lambda x, n: x * n)
    with explain_recompiles():
        f(jnp.ones(2), 2)
        f(jnp.ones(2), 3)
        f(jnp.ones(2), True)
    first, second = log()
    assert "static value at args[1] changed: 2 -> 3" in first
    assert "args[1]" in second and "True" in second


def test_keyword_argument_path_is_explained(log):
    f = larix.filter_jit(lambda *, x: x)
    with explain_recompiles():
        f(x=jnp.ones(2))
        f(x=jnp.ones(3))
    (message,) = log()
    assert "kwargs['x'] changed: f32[2] -> f32[3]" in message


def test_explanation_is_against_the_closest_earlier_trace(log):
    f = larix.filter_jit(lambda x, n: x * n)
    with explain_recompiles():
        f(jnp.ones(3), 1)
        f(jnp.ones(5), 2)
        f(jnp.ones(3), 3)  # only `n` differs from the first trace
    assert len(log()) == 2
    last = recompile_reasons(f)[-1]
    assert "static value at args[1] changed: 1 -> 3" in last
    assert "f32[5]" not in last


def test_explanation_prefers_a_trace_with_the_same_call_signature(log):
    f = larix.filter_jit(lambda x, n, flag=False: x * n)
    with explain_recompiles():
        f(jnp.ones(3), n=2)
        f(jnp.ones(3), n=2, flag=True)
        f(jnp.ones(4), n=2)  # differs from the first trace only in one array's shape
    last = recompile_reasons(f)[-1]
    assert "f32[3] -> f32[4]" in last, last


# --------------------------------------------------------------------------- switching it on and off


def test_no_log_when_explanations_are_off_but_reasons_are_recorded(log):
    f = larix.filter_jit(lambda x: x)
    f(jnp.ones(2))
    f(jnp.ones(3))
    assert log() == []
    assert recompile_reasons(f) == ["array at args[0] changed: f32[2] -> f32[3]"]


def test_call_form_switches_on_and_off(log):
    f = larix.filter_jit(lambda x: x)
    explain_recompiles()
    try:
        f(jnp.ones(2))
        f(jnp.ones(3))
        assert len(log()) == 1
    finally:
        explain_recompiles(False)
    f(jnp.ones(4))
    assert len(log()) == 1
    assert len(recompile_reasons(f)) == 2


def test_context_manager_restores_the_previous_setting(log):
    f = larix.filter_jit(lambda x: x)
    with explain_recompiles():
        with explain_recompiles(False):
            f(jnp.ones(1))
            f(jnp.ones(2))
        assert log() == []
        f(jnp.ones(3))
        assert len(log()) == 1
    f(jnp.ones(4))
    assert len(log()) == 1


def test_recompile_reasons_returns_a_copy():
    f = larix.filter_jit(lambda x: x)
    f(jnp.ones(1))
    f(jnp.ones(2))
    reasons = recompile_reasons(f)
    reasons.clear()
    assert len(recompile_reasons(f)) == 1


def test_no_reason_without_a_recompilation():
    f = larix.filter_jit(lambda m, x: m(x))
    model = make_linear()
    for seed in range(3):
        f(make_linear(seed=seed), jnp.ones(4))
    f(model, jnp.zeros(4))
    assert recompile_reasons(f) == []


def test_recompile_reasons_rejects_other_functions():
    with pytest.raises(TypeError, match=r"not a larix\.filter_jit function"):
        recompile_reasons(lambda x: x)


_SCRIPT = textwrap.dedent(
    """
    import jax.numpy as jnp
    import larix

    @larix.filter_jit
    def f(x):
        return x

    f(jnp.ones((32, 64)))
    f(jnp.ones((16, 64)))
    """
)


def _run_script(env_value: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    src = str(Path(larix.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("LARIX_EXPLAIN_RECOMPILES", None)
    if env_value is not None:
        env["LARIX_EXPLAIN_RECOMPILES"] = env_value
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )


def test_environment_variable_switches_explanations_on():
    result = _run_script("1")
    assert result.returncode == 0, result.stderr
    assert "filter_jit(f) is compiling again" in result.stderr
    assert "array at args[0] changed: f32[32,64] -> f32[16,64]" in result.stderr


# --------------------------------------------------------------------------- fresh-lambda warning


def test_fresh_lambda_each_call_warns_once():
    f = larix.filter_jit(lambda x, fn: fn(x))
    with pytest.warns(UserWarning) as record:
        for _ in range(5):
            f(jnp.ones(2), lambda x: x + 1)
    fresh = [w for w in record if "new object with the same code" in str(w.message)]
    assert len(fresh) == 1
    message = str(fresh[0].message)
    assert "args[1]" in message and "<lambda>" in message
    assert "Create it once outside the loop" in message  # the fix
    assert len(record) == 1  # nothing else was warned about
    assert len(recompile_reasons(f)) == 4  # it does recompile every call


def test_fresh_lambda_warning_points_at_the_call_site():
    f = larix.filter_jit(lambda x, fn: fn(x))
    with pytest.warns(UserWarning) as record:
        for _ in range(2):
            f(jnp.ones(2), lambda x: x + 1)
    assert Path(record[0].filename).resolve() == Path(__file__).resolve()


def test_fresh_lambda_in_a_module_field_warns_once():
    f = larix.filter_jit(lambda m, x: m(x))
    with pytest.warns(UserWarning, match="new object with the same code") as record:
        for _ in range(3):
            f(Holder(lambda x: x * 2), jnp.ones(2))
    assert len(record) == 1


def test_fresh_lambda_in_a_static_field_warns_once():
    f = larix.filter_jit(_forward)
    with pytest.warns(UserWarning, match="new object with the same code") as record:
        for _ in range(3):
            f(MLP(jnp.ones((2, 3)), act=lambda x: x * 2), jnp.ones(3))
    assert len(record) == 1


def test_no_warning_for_a_normal_retrace():
    f = larix.filter_jit(lambda x, fn, n: fn(x) * n)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f(jnp.ones(2), relu, 1)
        f(jnp.ones(3), relu, 1)  # shape
        f(jnp.ones(3), gelu, 1)  # another function, other code
        f(jnp.ones(3), relu, 2)  # a static value
        f(jnp.ones(3), relu, 2)  # no retrace at all
        g = larix.filter_jit(_forward)
        g(MLP(jnp.ones((2, 3)), relu), jnp.ones(3))
        g(MLP(jnp.ones((2, 3)), gelu), jnp.ones(3))
    assert len(recompile_reasons(f)) == 3


def test_same_lambda_object_each_call_does_not_retrace_or_warn():
    f = larix.filter_jit(lambda x, fn: fn(x))
    double = lambda x: x * 2  # noqa: E731 - the point is a lambda made once
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            f(jnp.ones(2), double)
    assert recompile_reasons(f) == []
