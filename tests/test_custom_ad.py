"""Tests for larix._custom_ad: filter_custom_jvp and filter_custom_vjp."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import larix
from conftest import Linear, make_linear

# --------------------------------------------------------------------------- filter_custom_jvp


def _make_apply():
    seen = {}

    @larix.filter_custom_jvp
    def apply(x, y, *, fn):
        return fn(x, y)

    @apply.def_jvp
    def apply_jvp(primals, tangents, *, fn):
        x, y = primals
        tx, ty = tangents
        seen["tangents"] = (tx, ty)
        # A deliberately "wrong" rule, so that the test sees the rule is used: d/dx = 2.
        t_out = 2.0 * tx if tx is not None else None
        return apply(x, y, fn=fn), t_out

    return apply, seen


def test_custom_jvp_rule_is_used_and_undifferentiated_args_get_none():
    apply, seen = _make_apply()
    grad = larix.filter_grad(apply)(jnp.array(1.0), jnp.array(5.0), fn=lambda a, b: a * b)
    assert float(grad) == 2.0
    assert seen["tangents"][1] is None  # y is a float array, but not perturbed


def test_custom_jvp_primal_value_and_jit():
    apply, _ = _make_apply()
    out = jax.jit(lambda x: apply(x, jnp.array(4.0), fn=jnp.add))(jnp.array(1.0))
    assert float(out) == 5.0


def test_custom_jvp_with_non_array_arguments_and_modules():
    @larix.filter_custom_jvp
    def scaled(model, x, mode):
        return model(x) * (2.0 if mode == "double" else 1.0)

    @scaled.def_jvp
    def scaled_jvp(primals, tangents, **kwargs):
        model, x, mode = primals
        t_model, _, t_mode = tangents
        assert t_mode is None and type(t_model) is Linear and t_model.activation == model.activation
        out = scaled(model, x, mode)
        return out, 2.0 * (t_model.weight @ x + t_model.bias) if mode == "double" else None

    m = make_linear()
    x = jnp.arange(4.0)
    grad = larix.filter_grad(lambda m: jnp.sum(scaled(m, x, "double")))(m)
    np.testing.assert_allclose(grad.weight, 2.0 * jnp.tile(x, (3, 1)), rtol=1e-6)
    # `None` as the output tangent means zero.
    grad = larix.filter_grad(lambda m: jnp.sum(scaled(m, x, "single")))(m)
    np.testing.assert_array_equal(grad.weight, jnp.zeros_like(m.weight))


def test_custom_jvp_matches_jax_custom_jvp_in_forward_mode():
    @larix.filter_custom_jvp
    def f(x, n):
        return jnp.sin(x) * n

    @f.def_jvp
    def f_jvp(primals, tangents):
        x, n = primals
        tx, tn = tangents
        assert tn is None  # an integer array
        return f(x, n), jnp.cos(x) * n * tx

    x = jnp.array([0.1, 0.2])
    out, tangent = jax.jvp(lambda x: f(x, jnp.array(3)), (x,), (jnp.ones(2),))
    np.testing.assert_allclose(out, 3 * jnp.sin(x), rtol=1e-6)
    np.testing.assert_allclose(tangent, 3 * jnp.cos(x), rtol=1e-6)


def test_custom_jvp_errors():
    @larix.filter_custom_jvp
    def f(x):
        return x

    with pytest.raises(TypeError, match=r"f has no JVP rule. Define one with `@f.def_jvp`"):
        f(jnp.array(1.0))

    @f.def_jvp
    def f_jvp(primals, tangents):
        return f(*primals), (tangents[0], tangents[0])

    with pytest.raises(ValueError, match=r"JVP rule returned a tangent with structure.*output's structure"):
        jax.jvp(f, (jnp.array(1.0),), (jnp.array(1.0),))

    with pytest.raises(TypeError, match=r"larix\.filter_custom_jvp takes the function"):
        larix.filter_custom_jvp(3)


def test_custom_jvp_non_array_outputs_and_python_numbers():
    # As in Equinox: non-array outputs are returned as they are, with a None tangent; a
    # Python number computed from Python numbers stays one.
    @larix.filter_custom_jvp
    def g(x, fn):
        return fn(x), "label"

    @g.def_jvp
    def g_jvp(primals, tangents):
        x, fn = primals
        tx, tfn = tangents
        assert tfn is None
        return g(x, fn), (3.0 * tx, None)

    def square(a):
        return a**2 + 1

    assert g(1, square) == (2, "label")
    assert g(2.0, square) == (5.0, "label")
    (out, label), (t_out, t_label) = larix.filter_jvp(
        lambda x: g(x, square), (jnp.array(2.0),), (jnp.array(1.0),)
    )
    assert float(out) == 5.0 and label == "label" and float(t_out) == 3.0 and t_label is None
    # A Python float perturbed by jax.jvp reaches the rule with its tangent (JAX hands the
    # rule a float subclass, not an array).
    _, t_out = jax.jvp(lambda x: g(x, square)[0], (2.0,), (1.0,))
    assert float(t_out) == 3.0


# --------------------------------------------------------------------------- filter_custom_vjp


def _make_clip():
    calls = {}

    @larix.filter_custom_vjp
    def clip_grad(x, bound, *, label):
        return x[0] * x[1]

    @clip_grad.def_fwd
    def fwd(perturbed, x, bound, *, label):
        calls["perturbed"] = perturbed
        return x[0] * x[1], {"saved": x[0], "name": label}

    @clip_grad.def_bwd
    def bwd(residuals, grad_out, perturbed, x, bound, *, label):
        calls["residuals"] = residuals
        calls["bound"] = bound
        g = jnp.clip(grad_out * x[1], -bound, bound)
        return (g, None, None)

    return clip_grad, calls


def test_custom_vjp_rules_and_perturbed_flags():
    clip_grad, calls = _make_clip()
    x = (jnp.array(2.0), jnp.array(10.0), "tag")
    grad = larix.filter_grad(lambda x: clip_grad(x, 3.0, label="lbl"))(x)
    assert float(grad[0]) == 3.0  # clipped from 10
    assert float(grad[1]) == 0.0  # the rule gave None: a zero gradient
    assert grad[2] is None  # not an array: no gradient
    assert calls["perturbed"] == (True, True, False)
    assert calls["residuals"]["name"] == "lbl" and calls["bound"] == 3.0
    np.testing.assert_allclose(calls["residuals"]["saved"], 2.0)


def test_custom_vjp_forward_without_differentiation_calls_fn():
    clip_grad, calls = _make_clip()
    out = clip_grad((jnp.array(2.0), jnp.array(10.0), "tag"), 3.0, label="l")
    assert float(out) == 20.0 and "perturbed" not in calls


def test_custom_vjp_differentiating_another_argument_raises_and_unperturbed_leaves_are_false():
    clip_grad, calls = _make_clip()
    bound = jnp.array(100.0)
    # Differentiating w.r.t. `bound` (a later argument) raises, as in Equinox: the rule only
    # gives the gradient of vjp_arg.
    with pytest.raises(RuntimeError, match=r"not in its first argument.*move everything"):
        jax.grad(lambda b: clip_grad((jnp.array(2.0), jnp.array(3.0), "t"), b, label="l"))(bound)
    # Only the first leaf of vjp_arg is perturbed.
    grad = jax.grad(lambda a: clip_grad((a, jnp.array(3.0), "t"), bound, label="l"))(jnp.array(2.0))
    assert float(grad) == 3.0
    assert calls["perturbed"] == (True, False, False)


def test_custom_vjp_matches_plain_gradient_when_rule_is_exact_under_jit_and_vmap():
    @larix.filter_custom_vjp
    def square(x):
        return x["v"] ** 2

    @square.def_fwd
    def fwd(perturbed, x):
        return x["v"] ** 2, x["v"]

    @square.def_bwd
    def bwd(v, g, perturbed, x):
        return {"v": 2 * v * g, "name": None}

    per_example_grad = larix.filter_vmap(larix.filter_grad(lambda x: square(x)))

    @jax.jit
    def f(xs):
        grads = per_example_grad({"v": xs, "name": "n"})
        assert grads["name"] is None
        return grads["v"]

    xs = jnp.linspace(-1, 1, 4)
    np.testing.assert_allclose(f(xs), 2 * xs, rtol=1e-6)


def test_custom_vjp_errors():
    @larix.filter_custom_vjp
    def f(x):
        return x

    with pytest.raises(TypeError, match=r"f has no rule registered with def_fwd and def_bwd"):
        f(jnp.array(1.0))
    f.def_fwd(lambda perturbed, x: (x, None))
    with pytest.raises(TypeError, match=r"registered with def_bwd\. Define both"):
        f(jnp.array(1.0))
    f.def_bwd(lambda res, g, perturbed, x: (g, g))
    with pytest.raises(TypeError, match=r"called with the argument to differentiate first, by position"):
        f(x=jnp.array(1.0))
    with pytest.raises(ValueError, match=r"backward rule of f returned a gradient with structure.*structure of the first argument"):
        jax.grad(f)(jnp.array(1.0))


def test_custom_vjp_non_array_outputs_residuals_and_symbolic_zero_cotangents():
    seen = {}

    @larix.filter_custom_vjp
    def f(x_y, *, foo):
        x, y = x_y
        return x + y + foo, x, y, foo

    @f.def_fwd
    def f_fwd(perturbed, x_y, *, foo):
        seen["perturbed"] = perturbed
        return f(x_y, foo=foo), object()  # a residual that is not an array

    @f.def_bwd
    def f_bwd(residuals, ct, perturbed, x_y, *, foo):
        seen["ct"] = ct
        ct1, _, ct3, _ = ct
        return ct1, ct3

    def loss(x, y):
        out1, _, out3, _ = f((x, jnp.array(1.0)), foo=y)
        return out1 + out3

    assert float(jax.grad(loss)(1.0, 2.0)) == 1.0
    assert seen["perturbed"] == (True, False)
    ct1, ct2, ct3, ct4 = seen["ct"]
    # out2 is unused (a symbolic zero) and out4 is a Python float: None for both.
    assert ct1 is not None and ct2 is None and ct3 is not None and ct4 is None


def test_custom_vjp_defvjp_is_deprecated_but_works():
    @larix.filter_custom_vjp
    def f(x):
        a, b = x
        return a + 1, b + 2, b + 3

    def f_fwd(x):
        return f(x), None

    def f_bwd(res, g, x):
        g0, g1, g2 = g  # the older form: zeros, never None, for floating-point outputs
        return g0 + g1, g2

    with pytest.warns(UserWarning, match="defvjp is deprecated"):
        f.defvjp(f_fwd, f_bwd)
    grads = jax.grad(lambda x: f(x)[0] + f(x)[2])((jnp.array(1.0), jnp.array(1.0)))
    assert [float(g) for g in grads] == [1.0, 1.0]


def test_custom_jvp_differentiating_a_keyword_argument_raises():
    @larix.filter_custom_jvp
    def h(x, *, k):
        return x * k

    @h.def_jvp
    def h_jvp(primals, tangents, *, k):
        return h(*primals, k=k), tangents[0] * k

    assert float(jax.grad(lambda x: h(x, k=jnp.array(3.0)))(jnp.array(1.0))) == 3.0
    with pytest.raises(ValueError, match="keyword arguments are never differentiated"):
        jax.grad(lambda k: h(jnp.array(1.0), k=k))(2.0)


def test_wrapped_functions_may_take_a_keyword_argument_named_self():
    # diffrax's BacksolveAdjoint calls its filter_custom_vjp function with `self=...`.
    @larix.filter_custom_vjp
    def f(x, *, self):
        return x * self

    def f_fwd(perturbed, x, *, self):
        return f(x, self=self), None

    def f_bwd(residuals, grad, perturbed, x, *, self):
        return grad * self

    f.def_fwd(f_fwd)
    f.def_bwd(f_bwd)
    assert f(jnp.array(2.0), self=3.0) == 6.0
    assert larix.filter_grad(lambda x: f(x, self=3.0))(jnp.array(2.0)) == 3.0
    assert larix.filter_jit(lambda x, self: x * self)(jnp.array(2.0), self=3.0) == 6.0
    assert larix.filter_vmap(lambda x, self: x * self)(jnp.ones(2), self=3.0).tolist() == [3.0, 3.0]
