"""Tests for larix._jvp_vjp: filter_jvp and filter_vjp."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import larix
from conftest import Linear, make_linear


def _f(w, x):
    return jnp.tanh(w @ x) * 2.0


# --------------------------------------------------------------------------- filter_jvp


def test_jvp_matches_jax_on_arrays():
    w, x = jnp.arange(6.0).reshape(2, 3) / 5, jnp.array([1.0, -1.0, 0.5])
    tw, tx = jnp.ones((2, 3)), jnp.array([0.1, 0.2, 0.3])
    out, tangent = larix.filter_jvp(_f, (w, x), (tw, tx))
    expected_out, expected_tangent = jax.jvp(_f, (w, x), (tw, tx))
    np.testing.assert_allclose(out, expected_out, rtol=1e-6)
    np.testing.assert_allclose(tangent, expected_tangent, rtol=1e-6)


def test_jvp_with_module_static_leaves_and_outputs():
    m = Linear(jnp.ones((2, 3)), jnp.zeros(2), activation="relu")
    tangent_model = Linear(jnp.zeros((2, 3)), jnp.ones(2), activation="relu")

    def f(model, x):
        return model(x), model.activation, jnp.arange(2)

    (y, act, ints), (ty, tact, tints) = larix.filter_jvp(f, (m, jnp.ones(3)), (tangent_model, None))
    np.testing.assert_allclose(y, [3.0, 3.0])
    np.testing.assert_allclose(ty, [1.0, 1.0])
    assert act == "relu" and tact is None
    assert tints is None  # integer outputs have no tangent
    np.testing.assert_array_equal(ints, [0, 1])


def test_jvp_none_covers_a_whole_subtree_and_python_floats_can_be_perturbed():
    def f(x, params):
        return x * params["w"]

    out, tangent = larix.filter_jvp(f, (2.0, {"w": jnp.array(3.0), "n": 1}), (1.0, None))
    assert float(out) == 6.0 and float(tangent) == 3.0


def test_jvp_keyword_arguments_are_not_perturbed():
    out, tangent = larix.filter_jvp(lambda x, *, k: x * k, (jnp.array(2.0),), (jnp.array(1.0),), k=jnp.array(5.0))
    assert float(out) == 10.0 and float(tangent) == 5.0


def test_jvp_errors():
    with pytest.raises(TypeError, match=r"a tangent was given for primals\[0\]\['n'\], which is a int32 array.*pass None"):
        larix.filter_jvp(lambda p: p["n"], ({"n": jnp.array(1)},), ({"n": jnp.array(1.0)},))
    with pytest.raises(TypeError, match=r"tangent was given for primals\[1\], which is str 'a'"):
        larix.filter_jvp(lambda x, s: x, (jnp.array(1.0), "a"), (jnp.array(1.0), 1.0))
    with pytest.raises(ValueError, match=r"2 primals but 1 tangents.*None for an argument"):
        larix.filter_jvp(lambda x, y: x, (jnp.array(1.0), 2), (jnp.array(1.0),))
    with pytest.raises(TypeError, match=r"`primals` must be a tuple or list.*\(p,\)"):
        larix.filter_jvp(lambda x: x, jnp.array(1.0), (jnp.array(1.0),))
    with pytest.raises(ValueError, match=r"structure of `primals`.*at tangents\[0\]\['a'\] there is one tangent for a whole tuple"):
        larix.filter_jvp(lambda x: x, ({"a": (1.0, 2.0)},), ({"a": jnp.array(1.0)},))
    with pytest.raises(ValueError, match=r"structure of `primals`.*at tangents\[0\] there is children \['b'\]"):
        larix.filter_jvp(lambda x: x, ({"a": 1.0},), ({"b": 1.0},))


def test_jvp_under_jit():
    @jax.jit
    def f(w, x):
        (out, tag), (tangent, none) = larix.filter_jvp(lambda w: (_f(w, x), "tag"), (w,), (jnp.ones_like(w),))
        assert tag == "tag" and none is None
        return out, tangent

    out, tangent = f(jnp.ones((2, 3)), jnp.ones(3))
    expected = jax.jvp(lambda w: _f(w, jnp.ones(3)), (jnp.ones((2, 3)),), (jnp.ones((2, 3)),))
    np.testing.assert_allclose(out, expected[0], rtol=1e-6)
    np.testing.assert_allclose(tangent, expected[1], rtol=1e-6)


# --------------------------------------------------------------------------- filter_vjp


def test_vjp_matches_jax_on_arrays():
    w, x = jnp.arange(6.0).reshape(2, 3) / 5, jnp.array([1.0, -1.0, 0.5])
    out, vjp_fn = larix.filter_vjp(_f, w, x)
    expected_out, expected_vjp = jax.vjp(_f, w, x)
    ct = jnp.array([1.0, 2.0])
    np.testing.assert_allclose(out, expected_out, rtol=1e-6)
    for got, expected in zip(vjp_fn(ct), expected_vjp(ct)):
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_vjp_with_static_leaves_int_outputs_and_none_cotangents():
    m = make_linear()

    def f(model, x, label):
        return {"y": model(x), "label": label, "count": jnp.array(3)}

    out, vjp_fn = larix.filter_vjp(f, m, jnp.ones(4), "lbl")
    assert out["label"] == "lbl" and int(out["count"]) == 3
    grad_model, grad_x, grad_label = vjp_fn({"y": jnp.ones(3), "label": None, "count": None})
    assert type(grad_model) is Linear and grad_label is None
    np.testing.assert_allclose(grad_model.bias, jnp.ones(3))
    np.testing.assert_allclose(grad_x, jnp.sum(m.weight, 0), rtol=1e-6)
    # None for a floating-point output counts as a zero cotangent.
    zero_model, _, _ = vjp_fn({"y": None, "label": None, "count": None})
    np.testing.assert_array_equal(zero_model.weight, jnp.zeros_like(m.weight))


def test_vjp_has_aux_and_pullback_is_a_pytree_through_jit():
    out, vjp_fn, aux = larix.filter_vjp(lambda x: (x * 3.0, {"aux": "a", "x": x}), jnp.array([1.0, 2.0]), has_aux=True)
    np.testing.assert_allclose(out, [3.0, 6.0])
    assert aux["aux"] == "a"
    np.testing.assert_allclose(aux["x"], [1.0, 2.0])
    (grad,) = jax.jit(lambda fn, ct: fn(ct))(vjp_fn, jnp.ones(2))
    np.testing.assert_allclose(grad, [3.0, 3.0])


def test_vjp_errors():
    _, vjp_fn = larix.filter_vjp(lambda x: (x, x), jnp.array(1.0))
    with pytest.raises(ValueError, match=r"cotangent must have the structure of the output.*None elsewhere"):
        vjp_fn(jnp.array(1.0))
    with pytest.raises(TypeError, match=r"has_aux=True.*must return a pair"):
        larix.filter_vjp(lambda x: x, jnp.array(1.0), has_aux=True)
    with pytest.raises(TypeError, match=r"larix.filter_vjp takes the function"):
        larix.filter_vjp(jnp.array(1.0))


def test_vjp_under_vmap_gives_per_example_cotangents():
    def per_example(x):
        _, vjp_fn = larix.filter_vjp(lambda x: jnp.sin(x), x)
        return vjp_fn(jnp.ones_like(x))[0]

    xs = jnp.linspace(0, 1, 5)
    np.testing.assert_allclose(larix.filter_vmap(per_example)(xs), jnp.cos(xs), rtol=1e-6)


def test_jvp_outputs_that_do_not_depend_on_the_perturbed_inputs_get_none():
    # As in Equinox: JAX's symbolic zeros come back as None, also for an array carrying a
    # tangent of an enclosing filter_jvp.
    def outer(x):
        def inner(y):
            return y, x, jnp.ones(2)

        (a, _, _), (ta, tb, tc) = larix.filter_jvp(inner, (x,), (1.0,))
        assert ta is not None and tb is None and tc is None
        return a

    larix.filter_jvp(outer, (1.0,), (1.0,))
    _, tangents = larix.filter_jvp(
        lambda x, y: (x * 2, y * 2), (jnp.array(1.0), jnp.array(1.0)), (None, None)
    )
    assert tangents == (None, None)
