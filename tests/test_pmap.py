"""Tests for larix._pmap: filter_pmap, on one CPU device and on four simulated ones."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import larix
from conftest import make_linear


def test_pmap_matches_jax_pmap_with_static_arguments():
    n = jax.local_device_count()
    x = jnp.arange(n * 3.0).reshape(n, 3)
    traces = []

    def f(x, scale, name):
        traces.append(name)
        return x * scale, name

    p = larix.filter_pmap(f)
    out, name = p(x, 2.0, "a")
    np.testing.assert_allclose(out, jax.pmap(lambda x: x * 2.0)(x))
    assert name == "a"
    p(x + 1, 2.0, "a")
    larix.filter_pmap(f)(x, 2.0, "a")  # a new wrapper of the same function: no new compilation
    assert traces == ["a"]
    assert p(x, 3.0, "b")[1] == "b" and traces == ["a", "b"]


def test_pmap_module_out_axes_and_axis_name():
    n = jax.local_device_count()
    m = make_linear()
    xs = jnp.ones((n, 4))
    np.testing.assert_allclose(larix.filter_pmap(m)(xs), jax.vmap(m)(xs), rtol=1e-6)
    out = larix.filter_pmap(lambda x, w: (jax.lax.psum(x, "d"), w), axis_name="d", out_axes=(0, None), in_axes=(0, None))(
        xs, jnp.arange(2.0)
    )
    np.testing.assert_allclose(out[0], n * jnp.ones((n, 4)))
    np.testing.assert_allclose(out[1], jnp.arange(2.0))


def test_pmap_keyword_arguments_and_decorator_form():
    n = jax.local_device_count()

    @larix.filter_pmap(in_axes={"y": None})
    def f(x, *, y, label):
        return x + y, label

    out, label = f(jnp.ones((n, 2)), y=jnp.arange(2.0), label="l")
    np.testing.assert_allclose(out, jnp.ones((n, 2)) + jnp.arange(2.0))
    assert label == "l" and f.__name__ == "f"


def test_pmap_errors():
    with pytest.raises(TypeError, match=r"must be hashable.*pass it as an array"):
        larix.filter_pmap(lambda x, s: x)(jnp.ones((1, 2)), _Unhashable())
    with pytest.raises(ValueError, match=r"in_axes maps args\[0\]"):
        larix.filter_pmap(lambda x: x, in_axes=0)("a")


def test_pmap_with_nothing_mapped_runs_axis_size_times():
    # jax.pmap itself needs a mapped argument; filter_pmap honours axis_size without one.
    calls = []

    def f(x):
        calls.append(1)
        return x

    replicated = larix.filter_pmap(f, in_axes=None, out_axes=None, axis_size=1)
    np.testing.assert_array_equal(replicated(jnp.array([3, 4])), [3, 4])
    assert larix.filter_pmap(f, out_axes=None, axis_size=1)(1) == 1  # no array at all
    stacked = larix.filter_pmap(f, in_axes=None, out_axes=0, axis_size=1)(jnp.array([3, 4]))
    np.testing.assert_array_equal(stacked, [[3, 4]])
    with pytest.raises(ValueError, match="axis_size"):
        larix.filter_pmap(f, in_axes=None)(jnp.array([3, 4]))


@pytest.mark.parametrize("donate", ["all", "warn", "none"])
def test_pmap_donate(donate):
    n = jax.local_device_count()
    x = jnp.arange(n * 2.0).reshape(n, 2)
    out = larix.filter_pmap(lambda x, y: 2 * x + y, donate=donate)(x, 1.0)
    np.testing.assert_allclose(out, 2 * jnp.arange(n * 2.0).reshape(n, 2) + 1)
    assert x.is_deleted() == (donate != "none")


def test_pmap_donate_errors():
    with pytest.raises(ValueError, match=r'donate must be "all", "warn" or "none", got True'):
        larix.filter_pmap(lambda x: x, donate=True)


class _Unhashable:
    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other):
        return isinstance(other, _Unhashable)


_MULTI_DEVICE_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, larix

    assert jax.local_device_count() == 4, jax.devices()

    class Linear(larix.Module):
        weight: jax.Array
        name: str = larix.field(static=True, default="lin")
        def __call__(self, x):
            return self.weight @ x

    def loss(model, x):
        return jnp.sum(model(x) ** 2)

    @larix.filter_pmap(in_axes=(None, 0), out_axes=(None, 0), axis_name="devices")
    def step(model, x):
        grads = larix.filter_grad(loss)(model, x)
        return jax.lax.pmean(grads, "devices"), jax.lax.axis_index("devices")

    model = Linear(jnp.arange(6.0).reshape(2, 3) / 6)
    xs = jnp.arange(12.0).reshape(4, 3)
    grads, index = step(model, xs)
    expected = jax.grad(lambda w: jnp.mean(jax.vmap(lambda x: jnp.sum((w @ x) ** 2))(xs)))(model.weight)
    np.testing.assert_allclose(grads.weight, expected, rtol=1e-5)
    assert grads.name == "lin"
    assert index.tolist() == [0, 1, 2, 3]
    print("ok")
    """
)


def test_pmap_over_four_simulated_devices():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(Path(larix.__file__).parents[1])
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", _MULTI_DEVICE_SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
