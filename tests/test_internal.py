"""Tests for larix.internal: Equinox's `equinox.internal` names used by diffrax, lineax, optimistix."""

from __future__ import annotations

import functools as ft

import jax
import jax.extend.core
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax
import pytest
from jax.interpreters import ad

import larix
import larix.internal as lxi
from larix.internal import ω

# --------------------------------------------------------------------------- re-exports


def test_reexports_are_larix_objects():
    assert lxi.AbstractVar is larix.AbstractVar
    assert lxi.AbstractClassVar is larix.AbstractClassVar
    assert lxi.error_if is larix.error_if
    assert lxi.branched_error_if is larix.branched_error_if


# --------------------------------------------------------------------------- ω


def test_omega_arithmetic_matches_tree_map():
    a = {"x": jnp.array([1.0, 2.0]), "y": (jnp.array(3.0), None)}
    b = {"x": jnp.array([0.5, 0.5]), "y": (jnp.array(1.0), None)}
    out = (a**ω * 2 + b**ω * a**ω - 3).ω
    expected = jtu.tree_map(lambda p, q: p * 2 + q * p - 3, a, b)
    assert larix.tree_equal(out, expected)
    assert (1 - ω([1.0, 2.0])).ω == [0.0, -1.0]
    assert (-ω([1.0])).ω == [-1.0] and abs(ω([-2.0])).ω == [2.0]
    assert (ω([1.0, 3.0]) < 2).ω == [True, False]
    assert ω([jnp.arange(3.0)]).at[1].set(5.0).ω[0].tolist() == [0.0, 5.0, 2.0]
    assert ω([jnp.arange(3.0)])[1:].ω[0].tolist() == [1.0, 2.0]
    assert ω([1.0, 2.0]).call(lambda v: v * 10).ω == [10.0, 20.0]


def test_omega_structure_and_is_leaf_mismatch_raise():
    with pytest.raises(ValueError, match="same structure"):
        ω([1.0, 2.0]) + ω((1.0, 2.0))
    with pytest.raises(ValueError, match="is_leaf"):
        ω([1.0], is_leaf=lambda x: isinstance(x, int)) + ω([1.0])
    # Two copies of the same lambda are the same predicate.
    out = ω([1], is_leaf=lambda x: isinstance(x, int)) + ω([2], is_leaf=lambda x: isinstance(x, int))
    assert out.ω == [3] and out.is_leaf(4)


# --------------------------------------------------------------------------- guards


def test_nondifferentiable():
    assert lxi.nondifferentiable((1.0, "a")) == (1.0, "a")
    assert float(jax.jit(lxi.nondifferentiable)(jnp.array(2.0))) == 2.0
    with pytest.raises(RuntimeError, match=r"Unexpected tangent\. foo cannot be autodifferentiated"):
        jax.grad(lambda x: lxi.nondifferentiable(x, name="foo"))(1.0)
    with pytest.raises(RuntimeError, match="MSG"):
        jax.jvp(lambda x: lxi.nondifferentiable(x, msg="MSG"), (1.0,), (1.0,))
    # Unperturbed inputs are fine under differentiation.
    assert float(jax.grad(lambda x, y: x * lxi.nondifferentiable(y))(1.0, jnp.array(3.0))) == 3.0


def test_nondifferentiable_backward():
    _, tangent = jax.jvp(lxi.nondifferentiable_backward, (jnp.array(1.0),), (jnp.array(2.0),))
    assert float(tangent) == 2.0
    with pytest.raises(RuntimeError, match="Unexpected cotangent"):
        jax.grad(lxi.nondifferentiable_backward)(1.0)
    with pytest.raises(RuntimeError, match="Unexpected cotangent"):
        jax.jit(jax.grad(lxi.nondifferentiable_backward))(1.0)


def test_guards_leave_python_scalars_as_they_are_under_jvp():
    # As Equinox: only arrays go through the guard, so a Python float stays a float.
    assert lxi.nondifferentiable_backward(1.0) == 1.0
    primal, tangent = jax.jvp(lxi.nondifferentiable_backward, (1.0,), (1.0,))
    assert type(primal) is float and type(tangent) is float
    x, t = jax.jvp(lxi.nondifferentiable_backward, ((jnp.array(1.0), 2.0),), ((jnp.array(3.0), 4.0),))
    assert isinstance(x[0], jax.Array) and x[1] == 2.0 and float(t[0]) == 3.0


def test_nonbatchable_and_nontraceable():
    assert float(lxi.nonbatchable(jnp.array(1.0))) == 1.0
    with pytest.raises(ValueError, match="cannot be vmap'd"):
        jax.vmap(lxi.nonbatchable)(jnp.ones(2))
    out = jax.vmap(lambda x: lxi.nonbatchable(x, allow_constant_across_batch=True))(jnp.ones(2))
    assert out.tolist() == [1.0, 1.0]
    with pytest.raises(larix.EquinoxRuntimeError, match="Nonconstant batch"):
        jax.vmap(lambda x: lxi.nonbatchable(x, allow_constant_across_batch=True))(jnp.arange(2.0))
    assert float(jax.jit(lxi.nontraceable)(1.0)) == 1.0
    with pytest.raises(RuntimeError, match="Detected differentiation of nontraceable operation"):
        jax.jvp(lxi.nontraceable, (1.0,), (1.0,))
    with pytest.raises(RuntimeError, match="Detected batching of my op"):
        jax.vmap(ft.partial(lxi.nontraceable, name="my op"))(jnp.ones(2))


@pytest.mark.parametrize(
    ("fn", "batch", "expected"),
    [
        (lxi.unvmap_any, [True, False], True),
        (lxi.unvmap_any, [False, False], False),
        (lxi.unvmap_all, [True, False], False),
        (lxi.unvmap_all, [True, True], True),
        (lxi.unvmap_max, [2, 1], 2),
        (lxi.unvmap_min, [2, 1], 1),
    ],
)
def test_unvmap_reduces_over_the_batch(fn, batch, expected):
    x = jnp.array(batch)
    assert fn(x).item() == expected
    assert jax.jit(fn)(x).item() == expected
    # Under vmap the result is the reduction over the whole batch, and is unbatched.
    assert jax.vmap(fn, out_axes=None)(x).item() == expected
    assert jax.jit(jax.vmap(fn, out_axes=None))(x).item() == expected


# --------------------------------------------------------------------------- Enumeration


class _Results(lxi.Enumeration):
    successful = ""
    failed = "It failed."


class _MoreResults(_Results):
    exploded = "It exploded."


def test_enumeration_equality_where_and_messages():
    assert bool(_Results.successful == _Results.successful)
    assert bool(_Results.successful != _Results.failed)
    with pytest.raises(ValueError, match="compare"):
        _Results.successful == 0  # noqa: B015
    with pytest.raises(ValueError, match="different enumerations"):
        _Results.successful == _MoreResults.successful  # noqa: B015
    result = jax.jit(lambda x: _Results.where(x > 0, _Results.successful, _Results.failed))(-1.0)
    assert _Results[result] == "It failed."
    assert repr(result).endswith("_Results<It failed.>")
    assert isinstance(_Results.failed, _Results) and not isinstance(_Results.failed, _MoreResults)
    assert len(_Results) == 2 and len(_MoreResults) == 3
    assert bool(_MoreResults.promote(_Results.failed) == _MoreResults.failed)
    batched = jax.vmap(lambda x: _Results.where(x > 0, _Results.successful, _Results.failed))(
        jnp.array([1.0, -1.0])
    )
    assert repr(batched).endswith("<['' 'It failed.']>")


def test_enumeration_error_if():
    token = jnp.array(1.0)
    _Results.failed.error_if(token, False)
    with pytest.raises(larix.EquinoxRuntimeError, match=r"It failed\."):
        _Results.failed.error_if(token, True)
    with pytest.raises(Exception, match=r"It failed\."):
        larix.filter_jit(lambda r, t: r.error_if(t, True))(_Results.failed, token)


def test_enumeration_overriding_a_message_warns():
    with pytest.warns(UserWarning, match="overrides"):

        class _Other(_Results):
            failed = "Something else."

    assert _Other[_Other.failed] == "Something else."


# --------------------------------------------------------------------------- loops


def _problem():
    def cond(carry):
        step, _, _ = carry
        return step < 5

    def body(carry):
        step, x, buf = carry
        x = jnp.sin(x) * 1.5
        return step + 1, x, buf.at[step].set(x)

    return cond, body, (0, jnp.array(0.3), jnp.zeros(8))


def _as_scan(cond, body, init, n):
    return lax.scan(lambda c, _: (lax.cond(cond(c), body, lambda v: v, c), None), init, None, length=n)[0]


@pytest.mark.parametrize("kind", ["lax", "checkpointed", "bounded"])
@pytest.mark.parametrize("buffers", [None, lambda carry: carry[2]])
def test_while_loop_forward(kind, buffers):
    cond, body, init = _problem()
    expected = lax.while_loop(cond, body, init)
    out = jax.jit(lambda i: lxi.while_loop(cond, body, i, max_steps=7, kind=kind, buffers=buffers))(init)
    assert larix.tree_equal(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("kind", "checkpoints"), [("checkpointed", None), ("checkpointed", 2), ("bounded", None)]
)
def test_while_loop_reverse_mode_matches_scan(kind, checkpoints):
    cond, body, init = _problem()

    def loss(x, loop):
        _, y, buf = loop((0, x, jnp.zeros(8)))
        return y + jnp.sum(buf**2)

    ours = ft.partial(
        lxi.while_loop, cond, body, max_steps=7, kind=kind, checkpoints=checkpoints, buffers=lambda c: c[2]
    )
    value, grad = jax.value_and_grad(loss)(init[1], ours)
    true_value, true_grad = jax.value_and_grad(loss)(init[1], lambda i: _as_scan(cond, body, i, 7))
    np.testing.assert_allclose(value, true_value, rtol=1e-6)
    np.testing.assert_allclose(grad, true_grad, rtol=1e-5)


def test_while_loop_max_steps_and_vmap():
    out = lxi.while_loop(lambda c: True, lambda c: c + 1, 0, max_steps=4, kind="lax")
    assert int(out) == 4
    batched = jax.vmap(
        lambda n: lxi.while_loop(lambda c: c < n, lambda c: c + 1, 0, max_steps=10, kind="checkpointed")
    )
    assert batched(jnp.array([2, 5, 20])).tolist() == [2, 5, 10]


def test_while_loop_errors():
    with pytest.raises(ValueError, match="kind"):
        lxi.while_loop(lambda c: True, lambda c: c, 0, kind="fast")
    with pytest.raises(ValueError, match="bounded"):
        lxi.while_loop(lambda c: True, lambda c: c, 0, kind="bounded")
    unbounded = ft.partial(lxi.while_loop, lambda c: c < 3.0, lambda c: c + 1.0, kind="checkpointed")
    with pytest.raises(RuntimeError, match="max_steps"):
        jax.grad(unbounded)(0.5)


def test_buffer_at_set_with_pred():
    buf = jnp.zeros(3)
    assert lxi.buffer_at_set(buf, 1, 5.0, pred=jnp.array(False)).tolist() == [0.0, 0.0, 0.0]
    assert lxi.buffer_at_set(buf, 1, 5.0, pred=jnp.array(True)).tolist() == [0.0, 5.0, 0.0]

    def body(carry):
        i, b = carry
        return i + 1, lxi.buffer_at_set(b, i, 2.0 * i, pred=i % 2 == 0)

    _, out = lxi.while_loop(lambda c: c[0] < 3, body, (0, jnp.zeros(3)), buffers=lambda c: c[1], kind="lax")
    assert out.tolist() == [0.0, 0.0, 4.0]


@pytest.mark.parametrize(
    ("kind", "checkpoints"),
    [("lax", None), ("checkpointed", None), ("checkpointed", "all"), ("checkpointed", 2)],
)
def test_scan_matches_lax_scan(kind, checkpoints):
    def f(carry, x):
        carry = carry * 0.9 + x
        return carry, jnp.sin(carry)

    xs = jnp.linspace(0.0, 1.0, 7)

    def loss(c, scan):
        final, ys = scan(f, c, xs)
        return final + jnp.sum(ys)

    ours = ft.partial(lxi.scan, kind=kind, checkpoints=checkpoints)
    np.testing.assert_allclose(loss(0.5, ours), loss(0.5, lax.scan), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(loss)(0.5, ours), jax.grad(loss)(0.5, lax.scan), rtol=1e-5)


def test_scan_trick_calls_fn_between_intermediates():
    calls = []

    def fn(c):
        calls.append(None)
        return c * 2

    out = lxi.scan_trick(fn, [lambda c: c + 1, lambda c: c + 10], jnp.array(1.0))
    assert float(out) == ((1 * 2 + 1) * 2 + 10) * 2
    assert len(calls) == 1  # traced once


# --------------------------------------------------------------------------- primitives


def _vprim():
    def impl(x):
        return [2 * x, jnp.concatenate([x, jnp.flip(x)])]

    def abstract(x):
        return [x, jax.core.ShapedArray((4,), x.dtype)]

    def jvp(primals, tangents):
        (x,) = primals
        (tx,) = tangents
        return prim.bind(x), (jnp.flip(tx), jnp.concatenate([x, x + 1]))

    def transpose(cts_out, x):
        ct1, ct2 = cts_out
        return [ct1 + ct2[:2]]

    prim = lxi.create_vprim("test_vprim", impl, abstract, jvp, transpose)
    return prim


def test_create_vprim_under_jit_vmap_jvp_and_transpose():
    prim = _vprim()
    y = jnp.array([1.0, 3.5])
    ys = jnp.array([[1.0, 3.5], [2.0, 1.5], [0.0, 0.2]])
    expected = [jnp.array([2.0, 7.0]), jnp.array([1.0, 3.5, 3.5, 1.0])]
    assert larix.tree_equal(prim.bind(y), expected)
    assert larix.tree_equal(jax.jit(prim.bind)(y), expected)
    batched = jax.vmap(prim.bind)(ys)
    assert batched[0].shape == (3, 2) and batched[1].shape == (3, 4)
    assert larix.tree_equal(jax.vmap(jax.vmap(prim.bind))(ys[None])[1][0], batched[1])
    assert larix.tree_equal(
        jax.eval_shape(jax.vmap(prim.bind), ys)[1], jax.ShapeDtypeStruct((3, 4), jnp.float32)
    )
    # The JVP rule still applies after batching (the primitive survives vmap).
    _, tangents = jax.jvp(jax.vmap(prim.bind), (ys,), (ys + 2,))
    np.testing.assert_allclose(tangents[0], jnp.flip(ys + 2, axis=1))
    (ct,) = jax.linear_transpose(jax.vmap(prim.bind), ys)(batched)
    np.testing.assert_allclose(ct, batched[0] + batched[1][:, :2])


def test_def_impl_replaces_only_the_unbatched_impl():
    prim = _vprim()
    prim.def_impl(lambda x: [3 * x, jnp.concatenate([x, x])])
    assert prim.bind(jnp.array([1.0, 2.0]))[0].tolist() == [3.0, 6.0]
    assert jax.vmap(prim.bind)(jnp.ones((2, 2)))[0].tolist() == [[2.0, 2.0], [2.0, 2.0]]


def _filtered_call_primitive():
    prim = jax.extend.core.Primitive("test_filtered_call")
    prim.multiple_results = True

    @lxi.filter_primitive_def
    def impl(f, x):
        return f(x)

    @lxi.filter_primitive_def
    def abstract(f, x):
        structs = jtu.tree_map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype) if isinstance(a, jax.core.ShapedArray) else a, x
        )
        out = larix.filter_eval_shape(f, structs)
        return jtu.tree_map(
            lambda s: jax.core.ShapedArray(s.shape, s.dtype) if isinstance(s, jax.ShapeDtypeStruct) else s,
            out,
        )

    @lxi.filter_primitive_jvp
    def jvp(primals, tangents):
        f, x = primals
        _, tx = tangents
        _, t_out = larix.filter_jvp(f, (x,), (tx,))
        return lxi.filter_primitive_bind(prim, f, x), t_out

    @lxi.filter_primitive_batching
    def batching(inputs, axes):
        f, x = inputs
        _, x_axis = axes
        out = lxi.filter_primitive_bind(prim, larix.filter_vmap(f, in_axes=x_axis), x)
        return out, jtu.tree_map(lambda o: 0 if larix.is_array(o) else None, out)

    from jax.interpreters import batching as jax_batching
    from jax.interpreters import mlir

    prim.def_impl(impl)
    prim.def_abstract_eval(abstract)
    ad.primitive_jvps[prim] = jvp
    jax_batching.primitive_batchers[prim] = batching
    mlir.register_lowering(prim, mlir.lower_fun(impl, multiple_results=True))
    return prim


def test_filter_primitive_pytrees_and_static_outputs():
    prim = _filtered_call_primitive()

    def f(x):
        return {"square": x**2, "label": "sq"}

    out = lxi.filter_primitive_bind(prim, f, 3)  # no arrays at all: a Python result
    assert out == {"square": 9, "label": "sq"}
    out = larix.filter_jit(lambda x: lxi.filter_primitive_bind(prim, f, x))(jnp.array(3.0))
    assert float(out["square"]) == 9.0 and out["label"] == "sq"
    _, tangent = jax.jvp(lambda x: lxi.filter_primitive_bind(prim, f, x)["square"], (3.0,), (1.0,))
    assert float(tangent) == 6.0
    batched = jax.vmap(lambda x: lxi.filter_primitive_bind(prim, f, x)["square"])(jnp.arange(3.0))
    assert batched.tolist() == [0.0, 1.0, 4.0]


def test_filter_primitive_bind_needs_a_filtered_abstract_rule():
    prim = jax.extend.core.Primitive("test_unfiltered")
    prim.multiple_results = True
    prim.def_abstract_eval(lambda *avals, **params: list(avals))
    with pytest.raises(TypeError, match="filter_primitive_def"):
        lxi.filter_primitive_bind(prim, jnp.ones(2))


def test_materialise_zeros():
    assert lxi.materialise_zeros(jnp.ones(2), None).tolist() == [0.0, 0.0]
    assert lxi.materialise_zeros(
        jax.ShapeDtypeStruct((1,), jnp.float32), None, allow_struct=True
    ).tolist() == [0.0]
    t = jnp.ones(2)
    assert lxi.materialise_zeros(jnp.ones(2), t) is t


def test_finalise_replaces_registered_primitives():
    def fn(x):
        return jnp.invert(lxi.unvmap_any(jnp.invert(x)))

    jaxpr = lxi.finalise_jaxpr(jax.make_jaxpr(fn)(jnp.array([True, False])))
    assert lxi.unvmap_any_p not in {eqn.primitive for eqn in jaxpr.eqns}
    assert bool(lxi.finalise_fn(fn)(jnp.array([True, True]))) == bool(fn(jnp.array([True, True])))


# --------------------------------------------------------------------------- misc


def test_noinline_gives_the_same_numbers():
    mlp = larix.nn.MLP(2, 2, 8, 2, key=jax.random.key(0))
    x = jnp.array([0.5, -1.0])
    fast = lxi.noinline(mlp)
    np.testing.assert_allclose(fast(x), mlp(x), rtol=1e-6)
    np.testing.assert_allclose(
        jax.jit(jax.grad(lambda v: jnp.sum(fast(v))))(x), jax.grad(lambda v: jnp.sum(mlp(v)))(x), rtol=1e-5
    )
    np.testing.assert_allclose(jax.vmap(fast)(jnp.stack([x, x])), jnp.stack([mlp(x), mlp(x)]), rtol=1e-6)


def test_noinline_traces_once_for_calls_with_the_same_shapes():
    traces = []

    @lxi.noinline
    def double(x):
        traces.append(None)
        return x * 2

    out = jax.jit(lambda x: double(x) + double(x) + double(x + 1))(jnp.array(1.0))
    assert float(out) == 8.0 and len(traces) == 1


def test_static_and_str2jax_cross_jit():
    static = lxi.Static({"a": "b"})
    assert jtu.tree_leaves(static) == [] and static.value == {"a": "b"}
    token = lxi.str2jax("hello")
    assert jtu.tree_leaves(token) == []
    assert str(jax.jit(lambda t: lxi.str2jax(str(t) + "!"))(token)) == "hello!"


def test_nextafter_and_prevbefore():
    x = jnp.array(1.0)
    assert float(lxi.nextafter(x)) > 1.0 > float(lxi.prevbefore(x))
    assert float(jax.grad(lxi.nextafter)(x)) == 1.0


def test_eval_helpers_and_left_broadcast():
    zero = lxi.eval_zero(lambda x: (x, 2 * x), jnp.ones(3))
    assert larix.tree_equal(zero, (jnp.zeros(3), jnp.zeros(3)))
    assert lxi.eval_empty(lambda x: x, jnp.ones(2)).shape == (2,)
    assert lxi.eval_full(lambda x: x, jnp.ones(2), fill_value=7.0).tolist() == [7.0, 7.0]
    assert lxi.left_broadcast_to(jnp.arange(2.0), (2, 3)).tolist() == [[0.0] * 3, [1.0] * 3]
    dynamic, static = lxi.hashable_partition({"a": jnp.ones(1), "b": "x"}, larix.is_array)
    hash(static)
    assert lxi.hashable_combine(dynamic, static)["b"] == "x"


def test_closure_to_pytree_makes_closures_leaves_and_compiles_once():
    def make(lr):
        return lxi.closure_to_pytree(optax.adam(lr))

    lr = jnp.array(1e-3)
    optim = make(lr)
    # optax closes over `-lr`: it is now a leaf.
    assert any(larix.is_array(leaf) and bool(leaf == -lr) for leaf in jtu.tree_leaves(optim))
    traces = []

    @larix.filter_jit
    def init(optim, params):
        traces.append(None)
        return optim.init(params)

    params = {"w": jnp.ones(2)}
    init(optim, params)
    init(make(jnp.array(1e-2)), params)
    assert len(traces) == 1


def test_getkey_gives_fresh_keys():
    getkey = lxi.GetKey(seed=0)
    assert not bool(jnp.all(getkey() == getkey()))


def test_doc_helpers_are_identities():
    def fn():
        pass

    assert lxi.doc_repr(fn, "fn") is fn
    assert lxi.doc_remove_args("a")(fn) is fn
