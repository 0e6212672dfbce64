"""Tests for larix._ad: filter_grad, filter_value_and_grad, filter_jacfwd, filter_jacrev,
filter_hessian (and the wrapper they share, larix._wrappers)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest
from hypothesis import given

import larix
from conftest import Linear, Pair, is_none, make_linear, pytrees


def _loss(model, x):
    return jnp.sum(jnp.tanh(model(x)) ** 2)


def _pure_loss(params, x):
    w, b = params
    return jnp.sum(jnp.tanh(w @ x + b) ** 2)


# --------------------------------------------------------------------------- against JAX


def test_grad_matches_jax_grad_on_arrays():
    m = make_linear()
    x = jnp.arange(4.0)
    expected = jax.grad(_pure_loss)((m.weight, m.bias), x)
    got = larix.filter_grad(_pure_loss)((m.weight, m.bias), x)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-6)
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-6)


def test_value_and_grad_matches_jax():
    m = make_linear()
    x = jnp.arange(4.0)
    value, grad = larix.filter_value_and_grad(_pure_loss)((m.weight, m.bias), x)
    expected_value, expected_grad = jax.value_and_grad(_pure_loss)((m.weight, m.bias), x)
    np.testing.assert_allclose(value, expected_value, rtol=1e-6)
    np.testing.assert_allclose(grad[0], expected_grad[0], rtol=1e-6)


def test_grad_on_a_module_keeps_static_fields_and_type():
    m = Linear(jnp.ones((2, 3)), jnp.zeros(2), activation="tanh")
    grad = larix.filter_grad(_loss)(m, jnp.ones(3))
    assert type(grad) is Linear
    assert grad.activation == "tanh"
    expected = jax.grad(_pure_loss)((m.weight, m.bias), jnp.ones(3))
    np.testing.assert_allclose(grad.weight, expected[0], rtol=1e-6)
    np.testing.assert_allclose(grad.bias, expected[1], rtol=1e-6)


def test_non_inexact_leaves_get_none():
    x = {"w": jnp.array([1.0, 2.0]), "n": jnp.array(3), "f": 2.0, "name": "x", "np": np.array([1.0])}
    grad = larix.filter_grad(lambda t: jnp.sum(t["w"] * t["n"] * t["f"]) + jnp.sum(t["np"]))(x)
    assert grad["n"] is None and grad["f"] is None and grad["name"] is None
    np.testing.assert_allclose(grad["w"], [6.0, 6.0])
    np.testing.assert_allclose(grad["np"], [1.0])  # NumPy float arrays are differentiated too


@given(pytrees)
def test_gradient_tree_has_input_structure_with_none_exactly_at_non_inexact_leaves(tree):
    def loss(t):
        return sum((jnp.sum(x) for x in jtu.tree_leaves(t) if larix.is_inexact_array(x)), jnp.float32(0))

    grad = larix.filter_grad(loss)(tree)
    assert jtu.tree_structure(grad, is_leaf=is_none) == jtu.tree_structure(tree, is_leaf=is_none)
    for g, leaf in zip(jtu.tree_leaves(grad, is_leaf=is_none), jtu.tree_leaves(tree, is_leaf=is_none)):
        if larix.is_inexact_array(leaf):
            assert g is not None and g.shape == leaf.shape
            np.testing.assert_array_equal(g, np.ones(leaf.shape))
        else:
            assert g is None


def test_only_the_first_argument_is_differentiated():
    seen = []

    def f(x, y):
        seen.append(isinstance(y, jax.Array) and not isinstance(y, jax.core.Tracer))
        return jnp.sum(x * y)

    grad = larix.filter_grad(f)(jnp.array([1.0, 2.0]), jnp.array([3.0, 4.0]))
    np.testing.assert_allclose(grad, [3.0, 4.0])
    assert seen == [True]  # the second argument arrived untouched, not as a tracer


def test_keyword_arguments_are_passed_through():
    grad = larix.filter_grad(lambda x, *, scale: jnp.sum(x * scale))(jnp.ones(2), scale=jnp.array(3.0))
    np.testing.assert_allclose(grad, [3.0, 3.0])


# --------------------------------------------------------------------------- has_aux


def test_grad_has_aux_returns_arbitrary_aux():
    def f(x):
        return jnp.sum(x**2), {"pred": x * 2, "label": "aux", "n": 3}

    grad, aux = larix.filter_grad(f, has_aux=True)(jnp.array([1.0, 2.0]))
    np.testing.assert_allclose(grad, [2.0, 4.0])
    np.testing.assert_allclose(aux["pred"], [2.0, 4.0])
    assert aux["label"] == "aux" and aux["n"] == 3


def test_value_and_grad_has_aux():
    (value, aux), grad = larix.filter_value_and_grad(lambda x: (jnp.sum(x**2), "a"), has_aux=True)(jnp.array(3.0))
    assert float(value) == 9.0 and aux == "a" and float(grad) == 6.0


def test_has_aux_requires_a_pair():
    with pytest.raises(TypeError, match=r"has_aux=True.*must return a pair `\(output, aux\)`.*float32 array of shape \(\)"):
        larix.filter_grad(lambda x: x**2, has_aux=True)(jnp.array(1.0))


def test_tuple_output_without_has_aux_suggests_it():
    with pytest.raises(TypeError, match=r"returned a tuple.*pass `has_aux=True`"):
        larix.filter_value_and_grad(lambda x: (x**2, "aux"))(jnp.array(1.0))


# --------------------------------------------------------------------------- call forms


def test_decorator_forms():
    def f(x):
        return jnp.sum(x**2)

    x = jnp.array([1.0, 2.0])
    bare = larix.filter_grad(f)
    called = larix.filter_grad()(f)
    with_options = larix.filter_grad(has_aux=False)(f)
    for g in (bare, called, with_options):
        np.testing.assert_allclose(g(x), [2.0, 4.0])
    assert bare.__name__ == "f"
    (value, aux), grad = larix.filter_value_and_grad(has_aux=True)(lambda x: (f(x), 1))(x)
    assert float(value) == 5.0 and aux == 1
    np.testing.assert_allclose(grad, [2.0, 4.0])


def test_positional_option_is_refused_with_the_keyword_form():
    with pytest.raises(TypeError, match=r"larix.filter_grad takes the function.*@larix.filter_grad\(has_aux=...\)"):
        larix.filter_grad(True)


def test_module_as_fun_is_called_not_differentiated():
    m = make_linear()
    x = jnp.arange(4.0)
    grad = larix.filter_grad(larix.Partial(lambda model, x: jnp.sum(model(x)), m))(x)
    np.testing.assert_allclose(grad, jnp.sum(m.weight, 0), rtol=1e-6)
    wrapped = larix.filter_grad(m)
    # The wrapper is a pytree holding the model's arrays, so it can cross jit boundaries.
    assert len(jtu.tree_leaves(wrapped)) == 2
    assert all(a is b for a, b in zip(jtu.tree_leaves(wrapped), jtu.tree_leaves(m)))


def test_bound_method_of_a_module_differentiates_its_first_argument():
    class Scaler(larix.Module):
        factor: jax.Array

        def energy(self, x):
            return jnp.sum(self.factor * x**2)

    s = Scaler(jnp.array(3.0))
    grad = larix.filter_grad(s.energy)(jnp.array([1.0, 2.0]))
    np.testing.assert_allclose(grad, [6.0, 12.0])


def test_decorating_a_method_differentiates_self():
    class Model(larix.Module):
        w: jax.Array
        name: str = larix.field(static=True, default="m")

        @larix.filter_grad
        def grad_energy(self, x):
            return jnp.sum(self.w * x)

    m = Model(jnp.array([1.0, 2.0]))
    grad = m.grad_energy(jnp.array([3.0, 4.0]))
    assert type(grad) is Model and grad.name == "m"
    np.testing.assert_allclose(grad.w, [3.0, 4.0])


# --------------------------------------------------------------------------- errors


def test_error_without_positional_argument():
    with pytest.raises(TypeError, match=r"larix.filter_grad: the function was called without arguments.*grad_fn\(model, \.\.\.\)"):
        larix.filter_grad(lambda x: x)()


def test_error_when_first_argument_is_passed_by_keyword():
    with pytest.raises(TypeError, match=r"keyword arguments only \(x\).*first \*positional\* argument.*by position"):
        larix.filter_value_and_grad(lambda x: x)(x=jnp.array(1.0))


def test_error_on_non_scalar_output_comes_from_jax():
    with pytest.raises(TypeError, match="scalar"):
        larix.filter_grad(lambda x: x)(jnp.ones(2))


# --------------------------------------------------------------------------- nesting


def test_per_example_gradients_under_jit_and_vmap_match_jax():
    m = make_linear()
    xs = jnp.arange(12.0).reshape(3, 4) / 10

    per_example = jax.jit(larix.filter_vmap(larix.filter_grad(_loss), in_axes=(None, 0)))(m, xs)
    expected = jax.jit(jax.vmap(jax.grad(_pure_loss), in_axes=(None, 0)))((m.weight, m.bias), xs)
    assert type(per_example) is Linear
    np.testing.assert_allclose(per_example.weight, expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(per_example.bias, expected[1], rtol=1e-5, atol=1e-6)


def test_grad_through_filter_checkpoint_matches():
    m = make_linear()
    x = jnp.arange(4.0)
    checkpointed = larix.filter_checkpoint(lambda model, x, act: act(model(x)))
    grad = jax.jit(larix.filter_grad(lambda model: jnp.sum(checkpointed(model, x, jnp.tanh) ** 2)))(m)
    expected = jax.jit(larix.filter_grad(_loss))(m, x)
    np.testing.assert_allclose(grad.weight, expected.weight, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad.bias, expected.bias, rtol=1e-5, atol=1e-6)


def test_second_order_grad():
    f = larix.filter_grad(lambda x: jnp.sum(jnp.sin(x[0])))
    second = larix.filter_grad(lambda x: jnp.sum(f(x)[0]))((jnp.array([0.5]), "static"))
    np.testing.assert_allclose(second[0], -jnp.sin(0.5), rtol=1e-6)
    assert second[1] is None


# --------------------------------------------------------------------------- Jacobians and Hessian


def _vector_fn(params, x):
    w, b = params
    return jnp.tanh(w @ x + b)


@pytest.mark.parametrize(("ours", "theirs"), [(larix.filter_jacfwd, jax.jacfwd), (larix.filter_jacrev, jax.jacrev)])
def test_jacobians_match_jax(ours, theirs):
    m = make_linear()
    x = jnp.arange(4.0)
    got = ours(_vector_fn)((m.weight, m.bias), x)
    expected = theirs(_vector_fn)((m.weight, m.bias), x)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5)
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-5)


@pytest.mark.parametrize("transform", [larix.filter_jacfwd, larix.filter_jacrev])
def test_jacobian_on_a_module_with_static_leaves(transform):
    m = Linear(jnp.ones((2, 3)), jnp.zeros(2), activation="relu")
    jac = transform(lambda model, x: model(x))(m, jnp.arange(3.0))
    assert type(jac) is Linear and jac.activation == "relu"
    assert jac.weight.shape == (2, 2, 3)
    np.testing.assert_allclose(jac.bias, jnp.eye(2))


@pytest.mark.parametrize("transform", [larix.filter_jacfwd, larix.filter_jacrev, larix.filter_hessian])
def test_jacobian_has_aux(transform):
    out, aux = transform(lambda p: (jnp.sum(p[0] ** 3), ("aux", p[0])), has_aux=True)((jnp.array([1.0, 2.0]), 7))
    assert aux[0] == "aux"
    np.testing.assert_allclose(aux[1], [1.0, 2.0])
    assert out[1] is None


def test_hessian_matches_jax():
    def f(p):
        return jnp.sum(jnp.sin(p["a"]) * p["b"] ** 2)

    p = {"a": jnp.array([0.1, 0.2]), "b": jnp.array([1.0, 3.0]), "name": "p"}
    got = larix.filter_hessian(f)(p)
    arrays = {"a": p["a"], "b": p["b"]}
    expected = jax.hessian(lambda q: f({**q, "name": "p"}))(arrays)
    for i in "ab":
        for j in "ab":
            np.testing.assert_allclose(got[i][j], expected[i][j], rtol=1e-6)
    assert got["name"] is None and got["a"]["name"] is None


def test_jacobian_errors():
    with pytest.raises(TypeError, match="called without arguments"):
        larix.filter_jacrev(lambda x: x)()
    with pytest.raises(TypeError, match=r"larix\.filter_hessian takes the function"):
        larix.filter_hessian("not a function")


def test_jacobian_keyword_arguments_are_passed_through():
    jac = larix.filter_jacfwd(lambda x, *, k: x * k)(jnp.array([1.0, 2.0]), k=jnp.array(3.0))
    np.testing.assert_allclose(jac, 3.0 * jnp.eye(2))


# --------------------------------------------------------------------------- docs



def test_pair_gradient_with_module_inside_tuple():
    tree = (Pair(jnp.array(2.0), "s"), jnp.array(3))
    grad = larix.filter_grad(lambda t: t[0].a ** 2 * t[1])(tree)
    assert float(grad[0].a) == 12.0 and grad[0].b is None and grad[1] is None


def test_trainable_part_chosen_by_a_mistyped_path_warns_before_a_gradient_of_nothing():
    # Equinox's idiom: partition the model, differentiate the first part. A typo in a path
    # pattern would train nothing, silently; the partition warns instead.
    model = make_linear()
    with pytest.warns(UserWarning) as caught:
        trainable, frozen = larix.partition(model, larix.by_path("wieght"))
    message = str(caught[0].message)
    assert message.startswith("larix.by_path('wieght') selects no leaf of this tree")
    assert "did you mean 'weight'?" in message

    @larix.filter_grad
    def grad_fn(trainable, frozen, x):
        return _loss(larix.combine(trainable, frozen), x)

    assert jtu.tree_leaves(grad_fn(trainable, frozen, jnp.ones(4))) == []  # what the warning prevents
    trainable, frozen = larix.partition(model, larix.by_path("weight"))
    grads = grad_fn(trainable, frozen, jnp.ones(4))
    assert grads.weight.shape == model.weight.shape and grads.bias is None


def test_transform_wrappers_keep_the_name_of_their_function_through_a_jit():
    def loss(x):
        return x**2

    seen = []

    @larix.filter_jit
    def g(k):
        seen.append((k.__name__, k.__qualname__))
        return 0

    for wrapper in (larix.filter_grad, larix.filter_value_and_grad, larix.filter_vmap):
        g(wrapper(loss))
    assert set(seen) == {("loss", loss.__qualname__)}
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        larix.filter_grad(loss).nope
