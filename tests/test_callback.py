"""Tests for larix._callback: filter_pure_callback and filter_closure_convert."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest

import larix
from conftest import Linear, make_linear

# --------------------------------------------------------------------------- filter_pure_callback


def test_pure_callback_matches_jax_on_arrays():
    host = lambda x: np.sort(np.asarray(x))  # noqa: E731
    x = jnp.array([3.0, 1.0, 2.0])
    struct = jax.ShapeDtypeStruct((3,), jnp.float32)
    ours = jax.jit(lambda x: larix.filter_pure_callback(host, x, result_shape_dtypes=struct))(x)
    theirs = jax.jit(lambda x: jax.pure_callback(host, struct, x))(x)
    np.testing.assert_array_equal(ours, theirs)


def test_pure_callback_with_modules_static_leaves_and_keywords():
    seen = {}

    def host(model, x, *, mode):
        seen["types"] = (isinstance(model.weight, jax.core.Tracer), model.activation, mode)
        y = np.asarray(model.weight) @ np.asarray(x)
        return {"y": y, "mode": mode, "count": 2}

    m = make_linear()
    result = {"y": jax.ShapeDtypeStruct((3,), jnp.float32), "mode": "fast", "count": 2}

    @jax.jit
    def f(model, x):
        out = larix.filter_pure_callback(host, model, x, mode="fast", result_shape_dtypes=result)
        assert out["mode"] == "fast" and out["count"] == 2
        return out["y"]

    np.testing.assert_allclose(f(m, jnp.ones(4)), m.weight @ jnp.ones(4), rtol=1e-6)
    assert seen["types"] == (False, "identity", "fast")  # concrete values, on the host


def test_pure_callback_under_vmap_with_vmap_method():
    calls = []

    def host(x):
        calls.append(np.shape(x))
        return np.asarray(x) * 2

    def f(x):
        return larix.filter_pure_callback(
            host, x, result_shape_dtypes=jax.ShapeDtypeStruct((), jnp.float32), vmap_method="sequential"
        )

    np.testing.assert_allclose(jax.vmap(f)(jnp.arange(3.0)), [0.0, 2.0, 4.0])
    assert calls == [(), (), ()]
    with pytest.raises(NotImplementedError, match="vmap_method"):
        jax.vmap(lambda x: larix.filter_pure_callback(host, x, result_shape_dtypes=jax.ShapeDtypeStruct((), jnp.float32)))(
            jnp.arange(3.0)
        )


def test_pure_callback_checks_the_result():
    struct = jax.ShapeDtypeStruct((2,), jnp.float32)

    def run(host, result):
        arrays = lambda out: [x for x in jtu.tree_leaves(out) if larix.is_array(x)]  # noqa: E731
        f = jax.jit(lambda x: arrays(larix.filter_pure_callback(host, x, result_shape_dtypes=result)))
        return jax.block_until_ready(f(jnp.ones(2)))

    # Our ValueError is raised on the host, inside the compiled program; JAX re-raises it.
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"returned an array of shape \(3,\) where result_shape_dtypes says \(2,\)"):
        run(lambda x: np.ones(3), struct)
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"returned 'b' where result_shape_dtypes has the constant 'a'"):
        run(lambda x: (np.ones(2), "b"), (struct, "a"))
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"returned a value of structure.*but result_shape_dtypes has structure"):
        run(lambda x: [np.ones(2)], (struct, struct))


# --------------------------------------------------------------------------- filter_closure_convert


def test_closure_convert_hoists_closed_over_tracers():
    @jax.grad
    def f(x, y):
        z = x + y
        g = larix.filter_closure_convert(lambda a, label: (z * a, label), jnp.array(1.0), "q")
        assert len(g.consts) == 1 and g.consts[0] is z
        assert jtu.tree_leaves(larix.filter(g, larix.is_array)) == [z]
        out, label = g(jnp.array(2.0), "q")
        assert label == "q"
        return out

    np.testing.assert_allclose(f(1.0, 1.0), 2.0)


def test_closure_convert_matches_the_function_and_hoists_every_array():
    m = make_linear()
    x = jnp.arange(4.0)

    @jax.jit
    def run(m, n):
        fn = lambda x, scale: m(x) * scale + n  # noqa: E731
        g = larix.filter_closure_convert(fn, jnp.ones(4), 2.0)
        # Integer arrays are hoisted too, not only floating-point ones.
        assert any(c is n for c in g.consts) and any(c is m.weight for c in g.consts)
        return g(x, 2.0), fn(x, 2.0), larix.filter_jit(lambda g, x: g(x, 2.0))(g, x)

    out, expected, jitted = run(m, jnp.array([1, 2, 3]))
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_allclose(jitted, expected, rtol=1e-6)


def test_closure_convert_of_concrete_closures_and_structs():
    # A closure is traced (as in Equinox), even over concrete arrays: they become consts.
    z = jnp.arange(2.0)
    g = larix.filter_closure_convert(lambda a: a * z, jax.ShapeDtypeStruct((2,), jnp.float32))
    assert type(g).__name__ == "_ClosureConverted"
    assert any(c is z for c in g.consts)
    assert g.in_struct == ((jax.ShapeDtypeStruct((2,), jnp.float32),), {})
    np.testing.assert_allclose(g(jnp.array([3.0, 4.0])), [0.0, 4.0])

    @jax.jit
    def run(z):
        # Example arguments may be ShapeDtypeStructs.
        h = larix.filter_closure_convert(lambda a: a * z, jax.ShapeDtypeStruct((2,), jnp.float32))
        return h(jnp.ones(2))

    np.testing.assert_allclose(run(z), z)


def test_closure_convert_jaxpr_is_a_leaf_so_combine_takes_either():
    # optimistix combines the arrays of one conversion with the rest of another.
    @jax.jit
    def run(z):
        fn = lambda a: jnp.sin(a) * z  # noqa: E731
        first = larix.filter_closure_convert(fn, jnp.ones(2))
        second = larix.filter_closure_convert(fn, jnp.ones(2))
        assert first.jaxpr is not second.jaxpr
        mixed = larix.combine(
            larix.filter(first, larix.is_array), larix.filter(second, larix.is_array, inverse=True)
        )
        assert mixed.jaxpr is second.jaxpr
        return mixed(jnp.ones(2))

    np.testing.assert_allclose(run(jnp.ones(2)), jnp.sin(1.0) * jnp.ones(2), rtol=1e-6)


def test_closure_convert_with_modules_and_keywords_inside_custom_vjp():
    m = Linear(jnp.ones((2, 3)), jnp.zeros(2), activation="relu")

    @larix.filter_custom_vjp
    def apply(fn, x):
        return fn(x=x)

    @apply.def_fwd
    def fwd(perturbed, fn, x):
        return fn(x=x), None

    @apply.def_bwd
    def bwd(res, g, perturbed, fn, x):
        _, vjp_fn = larix.filter_vjp(lambda f: f(x=x), fn)
        return vjp_fn(g)[0]

    def loss(model):
        fn = larix.filter_closure_convert(lambda *, x: model(x), x=jnp.ones(3))
        return jnp.sum(apply(fn, jnp.ones(3)))

    grad = jax.grad(loss)(m)
    np.testing.assert_allclose(grad.weight, jnp.ones((2, 3)))


def test_closure_convert_errors():
    @jax.jit
    def run(z):
        g = larix.filter_closure_convert(lambda a, s: a * s + z, jnp.ones(2), 3)
        with pytest.raises(
            ValueError, match=r"shapes and dtypes of its example arguments.*float32\[2\].*float32\[3\].*again"
        ):
            g(jnp.ones(3), 3)
        with pytest.raises(ValueError, match=r"non-array arguments differ.*convert it again"):
            g(jnp.ones(2), 4)
        return z

    run(jnp.arange(2.0))
    with pytest.raises(TypeError, match=r"larix\.filter_closure_convert takes the function"):
        larix.filter_closure_convert(3)


def test_closure_convert_trivial_function_and_out_struct():
    g = larix.filter_closure_convert(lambda a: a + 1, jnp.array(1))
    assert type(g).__name__ == "_TrivialClosureConvert"  # Equinox's name, which its tests check
    assert g.out_struct == jax.ShapeDtypeStruct((), jnp.int32)
    assert int(g(jnp.array(2))) == 3
    z = jnp.ones(2)
    h = larix.filter_closure_convert(lambda a: (a * z, "tag"), jnp.array(1.0))
    assert h.out_struct == (jax.ShapeDtypeStruct((2,), jnp.float32), "tag")


def test_closure_convert_keeps_tracers_and_works_with_custom_jvp():
    @larix.filter_custom_jvp
    def call(f, x):
        return f(x)

    @call.def_jvp
    def call_jvp(primals, tangents):
        f, x = primals
        tf, tx = tangents
        total = sum(jnp.sum(t) for t in jax.tree_util.tree_leaves((tf, tx)))
        out = call(f, x)
        return out, jnp.full(out.shape, total, out.dtype)

    @jax.grad
    def run(x):
        x1, x2 = x
        f = larix.filter_closure_convert(lambda y: x1 * y + x2, 3.0)
        assert f.consts[0] is x1 or f.consts[0] is x2  # the tracers themselves
        return call(f, 3.0)

    grads = run((2.0, 4.0))
    assert [float(g) for g in grads] == [1.0, 1.0]


def test_converting_the_same_pytree_callable_twice_gives_the_same_structure():
    # A pytree callable whose static part is a new object each time (here a fresh
    # functools.partial in a jax.tree_util.Partial, as jax.linearize gives): its conversion
    # keeps it as a jaxpr leaf, so two conversions differ only there (diffrax relies on this).
    import functools

    def make():
        return jax.tree_util.Partial(functools.partial(lambda k, x: k * x, 3.0))

    a = larix.filter_closure_convert(make(), jnp.ones(2))
    b = larix.filter_closure_convert(make(), jnp.ones(2))
    is_jaxpr = lambda x: isinstance(x, (jax.extend.core.Jaxpr, jax.extend.core.ClosedJaxpr))  # noqa: E731
    static_a = larix.filter(larix.partition(a, larix.is_array)[1], is_jaxpr, inverse=True)
    static_b = larix.filter(larix.partition(b, larix.is_array)[1], is_jaxpr, inverse=True)
    assert larix.tree_equal(static_a, static_b, typematch=True) is True
    np.testing.assert_allclose(a(jnp.ones(2)), [3.0, 3.0])
    assert a.out_struct == jax.ShapeDtypeStruct((2,), jnp.float32)
