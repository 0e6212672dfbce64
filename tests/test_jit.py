"""Tests for larix._jit: filter_jit's semantics, retracing, donation, AOT, weakrefs, threads."""

from __future__ import annotations

import copy
import dataclasses
import gc
import math
import pickle
import sys
import threading
import time
import traceback
import weakref
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import larix
from conftest import Box, Linear, Pair, make_linear
from larix.debug import assert_max_traces, get_num_traces


class Holder(larix.Module):
    """A Module holding a list: a mutable container inside a frozen Module."""

    items: list


class Tagged(larix.Module):
    value: Any
    tag: Any = larix.field(static=True, default=None)


class WithMethods(larix.Module):
    weight: Any

    @larix.filter_jit
    def apply(self, x, scale=1.0):
        return scale * self.weight * x

    @larix.filter_jit
    def __call__(self, x):
        return self.weight + x

    def plain(self, x):
        return self.weight - x


def counted(fn):
    """`filter_jit` of `fn`, counting traces with an independent Python-side counter too."""
    calls = []

    def inner(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    jitted = larix.filter_jit(inner)
    return jitted, calls


def assert_tree_equal(a, b):
    assert jtu.tree_structure(a) == jtu.tree_structure(b), (a, b)
    for x, y in zip(jtu.tree_leaves(a), jtu.tree_leaves(b)):
        if larix.is_array(x) or larix.is_array(y):
            assert larix.is_array(x) and larix.is_array(y)
            assert np.shape(x) == np.shape(y)
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6)
        else:
            assert type(x) is type(y) and x == y, (x, y)


# --------------------------------------------------------------------------- semantics


def test_arrays_are_traced_and_other_leaves_are_static():
    seen = []

    @larix.filter_jit
    def f(tree):
        seen.append(jtu.tree_map(lambda leaf: isinstance(leaf, jax.core.Tracer), tree))
        return tree["x"] * tree["n"]

    out = f({"x": jnp.arange(3.0), "n": 2, "s": "name", "np": np.ones(2)})
    np.testing.assert_allclose(out, [0.0, 2.0, 4.0])
    assert seen == [{"x": True, "n": False, "s": False, "np": True}]


def test_array_values_do_not_retrace_but_are_used():
    f, calls = counted(lambda x, y: x * y)
    np.testing.assert_allclose(f(jnp.ones(3), jnp.full(3, 2.0, jnp.float32)), [2.0, 2.0, 2.0])
    np.testing.assert_allclose(f(jnp.arange(3.0), jnp.full(3, 3.0, jnp.float32)), [0.0, 3.0, 6.0])
    assert len(calls) == 1 and get_num_traces(f) == 1


def test_numpy_arrays_are_traced():
    f, calls = counted(lambda x: x + 1)
    out = f(np.ones(3, np.float32))
    assert isinstance(out, jax.Array)
    np.testing.assert_allclose(out, [2.0, 2.0, 2.0])
    np.testing.assert_allclose(f(np.zeros(3, np.float32)), [1.0, 1.0, 1.0])
    assert len(calls) == 1


def test_python_scalars_are_static_and_retrace_when_changed():
    f, calls = counted(lambda x, n: (x * n, n))
    out, n = f(jnp.ones(2), 2)
    assert n == 2 and type(n) is int
    np.testing.assert_allclose(out, [2.0, 2.0])
    f(jnp.ones(2), 2)
    assert len(calls) == 1
    out, n = f(jnp.ones(2), 3)
    np.testing.assert_allclose(out, [3.0, 3.0])
    assert len(calls) == 2 and get_num_traces(f) == 2


def test_one_one_point_zero_and_true_do_not_share_a_trace():
    f, calls = counted(lambda x, n: (x * n, type(n).__name__))
    assert f(jnp.ones(2), 1)[1] == "int"
    assert f(jnp.ones(2), 1.0)[1] == "float"
    assert f(jnp.ones(2), True)[1] == "bool"
    assert len(calls) == 3
    # Same in nested positions.
    g, calls = counted(lambda tree: type(tree["n"][0]).__name__)
    assert [g({"n": (v,)}) for v in (1, 1.0, True, 1)] == ["int", "float", "bool", "int"]
    assert len(calls) == 3


def test_static_fields_1_1_point_0_and_true_do_not_share_a_trace():
    f, calls = counted(lambda t: (t.value * 2, t.tag, t))
    for tag in (1, 1.0, True):
        _, out_tag, out_model = f(Tagged(jnp.ones(2), tag))
        assert type(out_tag) is type(tag), (tag, out_tag)
        assert type(out_model.tag) is type(tag), (tag, out_model.tag)
    assert len(calls) == 3


def test_keyword_arguments():
    f, calls = counted(lambda x, *, scale, name="a": (x * scale, name))
    out, name = f(jnp.ones(2), scale=jnp.asarray(3.0), name="b")
    np.testing.assert_allclose(out, [3.0, 3.0])
    assert name == "b"
    out, name = f(jnp.ones(2), scale=jnp.asarray(4.0), name="b")
    np.testing.assert_allclose(out, [4.0, 4.0])
    assert len(calls) == 1
    f(jnp.ones(2), scale=jnp.asarray(4.0), name="c")
    assert len(calls) == 2


def test_keyword_argument_order_does_not_retrace():
    f, calls = counted(lambda x, n: x * n)
    a = jnp.ones(3)
    np.testing.assert_allclose(f(x=a, n=2), 2 * a)
    np.testing.assert_allclose(f(n=2, x=a), 2 * a)
    assert len(calls) == 1


def test_module_arguments_are_traced():
    model = make_linear()
    f, calls = counted(lambda m, x: m(x))
    x = jnp.arange(4.0)
    np.testing.assert_allclose(f(model, x), model(x), rtol=1e-6)
    other = make_linear(seed=1)  # equal statics, other values: no retrace
    np.testing.assert_allclose(f(other, x), other(x), rtol=1e-6)
    assert len(calls) == 1


def test_methods_decorated_with_filter_jit():
    model = WithMethods(jnp.arange(3.0))
    x = jnp.ones(3)
    np.testing.assert_allclose(model.apply(x), [0.0, 1.0, 2.0])
    np.testing.assert_allclose(model.apply(x, scale=2.0), [0.0, 2.0, 4.0])
    np.testing.assert_allclose(model(x), [1.0, 2.0, 3.0])
    np.testing.assert_allclose(WithMethods.apply(model, x), [0.0, 1.0, 2.0])
    other = WithMethods(jnp.full(3, 5.0, jnp.float32))
    np.testing.assert_allclose(other.apply(x), [5.0, 5.0, 5.0])
    # The calls without `scale` share one compilation (the model swap included); the call
    # with the keyword `scale=2.0` is another.
    assert get_num_traces(WithMethods.apply) == 2
    assert get_num_traces(WithMethods.__call__) == 1


def test_method_instance_arrays_are_traced():
    class Checked(larix.Module):
        weight: Any

        @larix.filter_jit
        def positive(self):
            return bool(self.weight.sum() > 0)  # needs a concrete value

    with pytest.raises(jax.errors.TracerBoolConversionError):
        Checked(jnp.ones(2)).positive()


def test_module_as_fun():
    model = make_linear()
    f = larix.filter_jit(model)
    x = jnp.arange(4.0)
    np.testing.assert_allclose(f(x), model(x), rtol=1e-6)
    np.testing.assert_allclose(f(x + 1), model(x + 1), rtol=1e-6)
    assert get_num_traces(f) == 1


def test_module_fun_arrays_are_traced():
    class Checked(larix.Module):
        weight: Any

        def __call__(self):
            return bool(self.weight.sum() > 0)

    with pytest.raises(jax.errors.TracerBoolConversionError):
        larix.filter_jit(Checked(jnp.ones(2)))()


def test_bound_method_as_fun():
    model = make_linear()
    f = larix.filter_jit(model.scaled)
    x = jnp.arange(4.0)
    np.testing.assert_allclose(f(x), model.scaled(x), rtol=1e-6)
    np.testing.assert_allclose(f(x, scale=3.0), model.scaled(x, scale=3.0), rtol=1e-6)

    class Checked(larix.Module):
        weight: Any

        def positive(self):
            return bool(self.weight.sum() > 0)

    with pytest.raises(jax.errors.TracerBoolConversionError):
        larix.filter_jit(Checked(jnp.ones(2)).positive)()


def test_jax_partial_as_fun_has_its_arrays_traced():
    def add(a, b):
        assert isinstance(a, jax.core.Tracer)
        return a + b

    f = larix.filter_jit(jtu.Partial(add, jnp.ones(2)))
    np.testing.assert_allclose(f(jnp.ones(2)), [2.0, 2.0])


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        (lambda x: None, None),
        (lambda x: 3, 3),
        (lambda x: "text", "text"),
        (lambda x: (), ()),
        (lambda x: [], []),
        (lambda x: (x, 1, "a", None), (jnp.ones(2), 1, "a", None)),
        (lambda x: [x * 2, {"k": x, "n": 2}], [jnp.full(2, 2.0, jnp.float32), {"k": jnp.ones(2), "n": 2}]),
        (lambda x: {"a": (x, 2), "b": None}, {"a": (jnp.ones(2), 2), "b": None}),
        (
            lambda x: Pair(x, Box(x, scale=2.0), tag="t"),
            Pair(jnp.ones(2), Box(jnp.ones(2), scale=2.0), tag="t"),
        ),
        (lambda x: (Box(x), Box("s")), (Box(jnp.ones(2)), Box("s"))),
        (lambda x: jax.nn.relu, jax.nn.relu),
    ],
)
def test_any_pytree_output(fn, expected):
    f = larix.filter_jit(fn)
    for _ in range(2):  # the first call traces; the second is served from the cache
        out = f(jnp.ones(2))
        assert_tree_equal(out, expected)
        if isinstance(expected, (tuple, list)):
            assert type(out) is type(expected)


def test_unhashable_non_array_output():
    @dataclasses.dataclass
    class Stats:
        n: int

    f = larix.filter_jit(lambda x: (x * 2, Stats(3)))
    out, stats = f(jnp.ones(2))
    np.testing.assert_allclose(out, [2.0, 2.0])
    assert stats == Stats(3)


def test_returning_the_input_model_and_feeding_it_back():
    f, calls = counted(lambda m: larix.tree_at(lambda t: t.bias, m, m.bias + 1))
    model = make_linear()
    for step in range(1, 5):
        model = f(model)
        np.testing.assert_allclose(model.bias, make_linear().bias + step, rtol=1e-6)
        assert model.activation == "identity"
    assert len(calls) == 1


def test_returned_model_with_aux_output_fed_back():
    f, calls = counted(lambda m, x: (m, m(x).sum()))
    model = make_linear()
    x = jnp.ones(4)
    for _ in range(3):
        model, loss = f(model, x)
    np.testing.assert_allclose(loss, make_linear()(x).sum(), rtol=1e-6)
    assert len(calls) == 1


def test_output_static_part_that_depends_on_the_input_shape():
    f = larix.filter_jit(lambda x: (x * 2, x.shape[0]))
    for n in [3, 4, 3, 5, 4, 3, 1]:
        out, size = f(jnp.ones(n))
        assert size == n
        np.testing.assert_allclose(out, np.full(n, 2.0))


@settings(max_examples=10)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=6), st.booleans())
def test_output_static_part_depends_on_shape_for_any_shape_sequence(sizes, with_model):
    def fn(x, box):
        return {"y": x + box.value, "size": x.shape[0], "box": box, "even": x.shape[0] % 2 == 0}

    f = larix.filter_jit(fn)
    for n in sizes:
        box = Box(jnp.ones(())) if with_model else Box(1.0)
        out = f(jnp.arange(float(n)), box)
        assert out["size"] == n and out["even"] == (n % 2 == 0)
        np.testing.assert_allclose(out["y"], np.arange(float(n)) + 1)
        assert_tree_equal(out["box"], box)


def test_function_with_no_arguments():
    f = larix.filter_jit(lambda: jnp.arange(3))
    np.testing.assert_array_equal(f(), [0, 1, 2])
    np.testing.assert_array_equal(f(), [0, 1, 2])
    assert get_num_traces(f) == 1


def test_filter_jit_inside_jax_transforms():
    f = larix.filter_jit(lambda m, x: m(x).sum())
    model = make_linear()
    x = jnp.ones(4)
    grads = jax.grad(lambda m: f(m, x))(model)
    expected = jax.grad(lambda m: m(x).sum())(model)
    np.testing.assert_allclose(grads.weight, expected.weight, rtol=1e-6)
    batched = jax.vmap(lambda x: f(model, x))(jnp.ones((5, 4)))
    assert batched.shape == (5,)


def test_decorator_forms_and_wrapper_metadata():
    @larix.filter_jit
    def a(x):
        """Doc of a."""
        return x

    @larix.filter_jit(donate="none")
    def b(x):
        return x

    assert a.__name__ == "a" and a.__doc__ == "Doc of a."
    assert b.__name__ == "b"
    np.testing.assert_allclose(b(jnp.ones(1)), [1.0])


# --------------------------------------------------------------------------- retracing


def test_retracing_is_exactly_right():
    @larix.filter_jit
    @assert_max_traces(max_traces=None)
    def f(model, x, n):
        return (model.weight @ x) * n  # the bias is not used: its structure may change

    model = make_linear()
    x = jnp.ones(4)
    f(model, x, 2)
    f(model, x + 1, 2)  # new values: no retrace
    f(make_linear(seed=5), x, 2)  # an equal-structured, distinct model: no retrace
    f(copy.copy(model), x, 2)
    f(pickle.loads(pickle.dumps(model)), x, 2)
    assert get_num_traces(f) == 1
    f(model, x, 3)  # static value
    assert get_num_traces(f) == 2
    f(Linear(model.weight, model.bias, activation="relu"), x, 3)  # static field
    assert get_num_traces(f) == 3
    f(model, jnp.ones((2, 4)).T[:, 0], 3)  # same shape from another array: no retrace
    assert get_num_traces(f) == 3
    f(make_linear(n_in=5), jnp.ones(5), 3)  # array shapes
    assert get_num_traces(f) == 4
    f(Linear(model.weight.astype(jnp.float16), model.bias, activation="identity"), x, 3)  # dtype
    assert get_num_traces(f) == 5
    f(Linear(model.weight, (model.bias,), activation="identity"), x, 3)  # tree structure
    assert get_num_traces(f) == 6
    # Everything seen before: no retrace.
    f(model, x, 2)
    f(model, x, 3)
    f(make_linear(n_in=5), jnp.ones(5), 3)
    assert get_num_traces(f) == 6


def test_no_retrace_with_assert_max_traces_inside():
    @larix.filter_jit
    @assert_max_traces(max_traces=1)
    def f(model, x, options):
        return model, model(x) * options["scale"]

    model = make_linear()
    for i in range(4):
        f(model, jnp.full(4, float(i), jnp.float32), {"scale": 2, "name": "a"})
        f(make_linear(seed=i), jnp.full(4, float(i), jnp.float32), {"name": "a", "scale": 2})
        model, _ = f(model, jnp.ones(4), {"scale": 2, "name": "a"})  # the returned model
    assert get_num_traces(f) == 1
    with pytest.raises(RuntimeError, match="max_traces=1"):
        f(model, jnp.ones(4), {"scale": 3, "name": "a"})


def test_deep_copied_model_does_not_retrace():
    f, calls = counted(lambda m, x: m(x))
    model = make_linear()
    x = jnp.ones(4)
    f(model, x)
    twin = copy.deepcopy(model)
    np.testing.assert_allclose(f(twin, x), model(x), rtol=1e-6)
    assert len(calls) == 1


def test_dtype_and_weak_type_changes_retrace():
    f, calls = counted(lambda x: x * 2)
    f(jnp.ones(3, jnp.float32))
    f(jnp.ones(3, jnp.int32))
    out = f(jnp.ones(3, jnp.float16))
    assert out.dtype == jnp.float16
    assert len(calls) == 3


def test_tree_structure_changes_retrace():
    f, calls = counted(lambda t: jtu.tree_map(lambda v: v + 1, t))
    f({"a": jnp.ones(1)})
    f({"a": jnp.ones(1), "b": jnp.ones(1)})
    f([jnp.ones(1)])
    f((jnp.ones(1),))
    f({"a": None})
    assert len(calls) == 5
    f({"a": jnp.zeros(1)})
    assert len(calls) == 5


# --------------------------------------------------------------------------- memo safety


def test_module_with_a_list_mutated_in_place_is_not_served_stale():
    f = larix.filter_jit(lambda h: sum(jnp.sum(v) for v in h.items if larix.is_array(v)))
    holder = Holder([jnp.ones(2)])
    assert float(f(holder)) == 2.0
    holder.items[0] = jnp.full(2, 5.0, jnp.float32)  # same shape, new values
    assert float(f(holder)) == 10.0
    holder.items[0] = jnp.ones(3)  # new shape
    assert float(f(holder)) == 3.0
    holder.items.append(jnp.ones(4))  # new structure
    assert float(f(holder)) == 7.0
    holder.items.append("static")
    assert float(f(holder)) == 7.0


def test_module_with_a_list_of_statics_mutated_in_place_retraces():
    f = larix.filter_jit(lambda h, x: x * h.items[0])
    holder = Holder([2])
    np.testing.assert_allclose(f(holder, jnp.ones(1)), [2.0])
    holder.items[0] = 3
    np.testing.assert_allclose(f(holder, jnp.ones(1)), [3.0])


def test_module_holding_a_dict_mutated_in_place_is_not_served_stale():
    class Table(larix.Module):
        entries: dict

    f = larix.filter_jit(lambda t: sorted(t.entries))
    table = Table({"a": jnp.ones(1)})
    assert f(table) == ["a"]
    table.entries["b"] = jnp.ones(1)
    assert f(table) == ["a", "b"]


def test_numpy_array_in_a_module_mutated_in_place_is_not_served_stale():
    f = larix.filter_jit(lambda b: b.value * 1)
    box = Box(np.ones(2, np.float32))
    np.testing.assert_allclose(f(box), [1.0, 1.0])
    box.value[:] = 4.0
    np.testing.assert_allclose(f(box), [4.0, 4.0])


# --------------------------------------------------------------------------- errors


def test_unhashable_static_value_names_its_path():
    f = larix.filter_jit(lambda tree: tree["x"])
    with pytest.raises(TypeError) as info:
        f({"x": jnp.ones(1), "s": {1, 2}})
    message = str(info.value)
    assert "args[0]['s']" in message
    assert "unhashable" in message and "set" in message
    assert "tuple" in message  # the fix
    with pytest.raises(TypeError, match=r"kwargs\['tree'\]\['s'\]"):
        f(tree={"x": jnp.ones(1), "s": {1, 2}})


def test_unhashable_static_field_is_accepted_as_in_equinox_and_never_stale():
    # lineax keeps lists in static fields; JAX compares aux data with == without hashing it.
    f = larix.filter_jit(lambda t: t.value * len(t.tag))
    tag = [1, 2]
    tagged = Tagged(jnp.ones(1), tag=tag)
    np.testing.assert_array_equal(f(tagged), [2.0])
    tag.append(3)  # changed in place: the same Module must not be answered from a memo
    np.testing.assert_array_equal(f(tagged), [3.0])
    np.testing.assert_array_equal(f(Tagged(jnp.ones(1), tag=[1, 2, 3])), [3.0])


def test_invalid_donate_value():
    with pytest.raises(ValueError) as info:
        larix.filter_jit(lambda x: x, donate="some")
    message = str(info.value)
    assert "'some'" in message
    for option in ("'none'", "'all'", "'all-except-first'", "'warn'", "'warn-except-first'"):
        assert option in message
    with pytest.raises(ValueError, match="donate must be one of"):
        larix.filter_jit(donate=True)


@pytest.mark.parametrize("name", ["static_argnums", "static_argnames", "donate_argnums", "donate_argnames"])
def test_jit_arguments_that_filter_jit_decides_are_rejected(name):
    with pytest.raises(TypeError) as info:
        larix.filter_jit(lambda x: x, **{name: 0})
    message = str(info.value)
    assert name in message
    assert "donate=" in message  # the fix


def test_non_callable_is_rejected():
    with pytest.raises(TypeError, match="expected a callable"):
        larix.filter_jit(3)


def test_other_jit_arguments_are_passed_on():
    kept = larix.filter_jit(lambda x, y: x, keep_unused=True)
    np.testing.assert_allclose(kept(jnp.ones(1), jnp.ones(2)), [1.0])
    assert "tensor<2xf32>" in kept.lower(jnp.ones(1), jnp.ones(2)).as_text()
    dropped = larix.filter_jit(lambda x, y: x)
    assert "tensor<2xf32>" not in dropped.lower(jnp.ones(1), jnp.ones(2)).as_text()


# --------------------------------------------------------------------------- donation


@pytest.mark.parametrize("donate", ["none", "all", "all-except-first", "warn", "warn-except-first"])
def test_donate_modes_give_correct_values(donate):
    f = larix.filter_jit(lambda m, x: (larix.tree_at(lambda t: t.bias, m, m.bias + x), x * 2), donate=donate)
    model = make_linear()
    expected_bias = np.asarray(model.bias) + 1
    for _ in range(2):
        new_model, y = f(model, jnp.ones(3))
        np.testing.assert_allclose(new_model.bias, expected_bias, rtol=1e-6)
        np.testing.assert_allclose(y, [2.0, 2.0, 2.0])
        model = make_linear()


@pytest.mark.parametrize(
    ("donate", "first_deleted", "second_deleted"),
    [
        ("none", False, False),
        ("all", True, True),
        ("all-except-first", False, True),
        ("warn", True, True),
        ("warn-except-first", False, True),
    ],
)
def test_donate_modes_donate_the_right_buffers(donate, first_deleted, second_deleted):
    f = larix.filter_jit(lambda a, b: (a + 1, b + 1), donate=donate)
    a, b = jnp.ones(3), jnp.ones(3)
    out = f(a, b)
    np.testing.assert_allclose(out[0], [2.0, 2.0, 2.0])
    assert a.is_deleted() == first_deleted
    assert b.is_deleted() == second_deleted


@pytest.mark.parametrize("donate", ["all", "all-except-first"])
def test_quiet_donate_modes_do_not_warn_about_unusable_buffers(donate):
    # x.sum() cannot reuse x's buffer: JAX warns, and these modes must silence it
    # (pytest turns the warning into an error).
    f = larix.filter_jit(lambda m, x: x.sum() + m.bias.sum(), donate=donate)
    model = make_linear()
    out = f(model, jnp.ones(3))
    np.testing.assert_allclose(out, 3.0 + float(model.bias.sum()), rtol=1e-6)


@pytest.mark.parametrize("donate", ["all", "all-except-first"])
def test_quiet_donate_modes_do_not_warn_when_lowering(donate):
    f = larix.filter_jit(lambda m, x: x.sum() + m.bias.sum(), donate=donate)
    model = make_linear()
    compiled = f.lower(model, jnp.ones(3)).compile()
    np.testing.assert_allclose(compiled(model, jnp.ones(3)), 3.0 + float(model.bias.sum()), rtol=1e-6)


@pytest.mark.parametrize("donate", ["warn", "warn-except-first"])
def test_warn_donate_modes_let_the_warning_through(donate):
    f = larix.filter_jit(lambda x, y: x.sum() + y.sum(), donate=donate)
    with pytest.warns(UserWarning, match="donated buffers were not usable"):
        f(jnp.ones(3), jnp.ones(3))


# --------------------------------------------------------------------------- AOT


def test_lower_and_compile():
    f = larix.filter_jit(lambda m, x, n: (m(x) * n, n))
    model = make_linear()
    x = jnp.ones(4)
    lowered = f.lower(model, x, 2)
    assert "stablehlo" in lowered.as_text() or "func" in lowered.as_text()
    compiled = lowered.compile()
    out, n = compiled(model, x, 2)
    np.testing.assert_allclose(out, model(x) * 2, rtol=1e-6)
    assert n == 2
    out, _ = compiled(make_linear(seed=2), x + 1, 2)  # other values, same statics
    np.testing.assert_allclose(out, make_linear(seed=2)(x + 1) * 2, rtol=1e-6)


def test_compiled_rejects_arguments_with_other_statics():
    f = larix.filter_jit(lambda m, x, n: m(x) * n)
    model = make_linear()
    compiled = f.lower(model, jnp.ones(4), 2).compile()
    with pytest.raises(TypeError, match=r"\.lower\(\.\.\.\)"):
        compiled(model, jnp.ones(4), 3)
    with pytest.raises(TypeError, match="other static values or structure"):
        compiled(Linear(model.weight, model.bias, activation="relu"), jnp.ones(4), 2)
    with pytest.raises(TypeError):
        compiled(model, jnp.ones(5), 2)  # another shape: JAX's own check


def test_compiled_stays_valid_after_later_calls_with_other_shapes():
    f = larix.filter_jit(lambda x: (x * 2, x.shape[0]))
    compiled = f.lower(jnp.ones(3)).compile()
    f(jnp.ones(3))
    f(jnp.ones(4))  # another output static for another shape
    out, size = compiled(jnp.ones(3))
    assert size == 3
    np.testing.assert_allclose(out, [2.0, 2.0, 2.0])


# --------------------------------------------------------------------------- weakrefs


def _collected(ref: weakref.ref) -> bool:
    gc.collect()
    return ref() is None


def test_model_used_in_a_call_can_be_collected():
    f = larix.filter_jit(lambda m, x: m(x))
    model = make_linear()
    ref = weakref.ref(model)
    f(model, jnp.ones(4))
    f(model, jnp.ones(4))
    del model
    assert _collected(ref)
    assert get_num_traces(f) == 1  # and the function still works afterwards
    np.testing.assert_allclose(f(make_linear(), jnp.ones(4)), make_linear()(jnp.ones(4)), rtol=1e-6)


def test_returned_model_can_be_collected():
    f = larix.filter_jit(lambda m: larix.tree_at(lambda t: t.bias, m, m.bias * 2))
    model = make_linear()
    out = f(model)
    again = f(out)  # uses the memo that the output was born with
    refs = [weakref.ref(model), weakref.ref(out), weakref.ref(again)]
    del model, out, again
    assert all(_collected(r) for r in refs)


def test_module_fun_and_its_wrapper_can_be_collected():
    model = make_linear()
    ref = weakref.ref(model)
    f = larix.filter_jit(model)
    f(jnp.ones(4))
    wrapper_ref = weakref.ref(f)
    del model, f
    assert _collected(ref)
    assert _collected(wrapper_ref)


def test_wrapped_function_can_be_collected():
    def fn(x):
        return x * 2

    ref = weakref.ref(fn)
    f = larix.filter_jit(fn)
    f(jnp.ones(2))
    del fn, f
    assert _collected(ref)


def test_static_argument_can_be_collected_after_the_function():
    def activation(x):
        return x + 1

    ref = weakref.ref(activation)
    f = larix.filter_jit(lambda x, act: act(x))
    np.testing.assert_allclose(f(jnp.ones(2), activation), [2.0, 2.0])
    del activation, f
    assert _collected(ref)


def test_static_field_value_can_be_collected_after_the_function():
    class Marker:
        pass

    marker = Marker()
    ref = weakref.ref(marker)
    f = larix.filter_jit(lambda t: t.value + 1)
    f(Tagged(jnp.ones(2), tag=marker))
    del marker, f
    assert _collected(ref)


# --------------------------------------------------------------------------- threads


def test_concurrent_calls_with_different_shapes_and_statics():
    @larix.filter_jit
    def f(model, x, n):
        return model.value * x * n, x.shape[0] * 0 + n  # the static output does not vary

    def worker(i: int, results: list) -> None:
        size, n = i % 4 + 1, i // 4 + 2
        try:
            for step in range(20):
                model = Box(jnp.full((size,), float(step), jnp.float32))
                out, static = f(model, jnp.ones(size), n)
                ok = out.shape == (size,) and bool(jnp.all(out == step * n)) and static == n
                if not ok:
                    results.append(f"thread {i} step {step}: {out} {static}")
                    return
        except Exception as error:  # noqa: BLE001 - reported below
            results.append(f"thread {i}: {error!r}")

    results: list = []
    barrier = threading.Barrier(8)

    def run(i):
        barrier.wait()
        worker(i, results)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == []
    # 8 distinct (shape, n) combinations, each traced exactly once.
    assert get_num_traces(f) == 8


def test_concurrent_first_calls_with_the_same_signature_trace_once():
    f, calls = counted(lambda x, n: x * n)
    barrier = threading.Barrier(8)
    errors: list = []

    def run():
        barrier.wait()
        try:
            for _ in range(10):
                assert bool(jnp.all(f(jnp.ones(3), 2) == 2.0))
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert len(calls) == 1 == get_num_traces(f)


def test_concurrent_calls_while_the_output_static_starts_to_depend_on_the_shape():
    # One thread sees a new output static part for a new shape while others call the same
    # compiled function with an old shape: every call must still return the right value.
    @larix.filter_jit
    def f(x, r):
        return x * 2, x.shape[0] > 3

    errors: list = []
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for r in range(12):  # the race is hit within a round or two; stop at the first
            small, large = jnp.ones(1), jnp.ones(5)
            f(small, r)
            stop = threading.Event()

            def call_small(r=r, small=small, stop=stop):
                while not stop.is_set():
                    try:
                        out, is_large = f(small, r)
                        assert is_large is False and float(out[0]) == 2.0
                    except Exception as error:  # noqa: BLE001
                        errors.append(error)
                        return

            threads = [threading.Thread(target=call_small) for _ in range(3)]
            for t in threads:
                t.start()
            time.sleep(0.005)
            out, is_large = f(large, r)
            stop.set()
            for t in threads:
                t.join(timeout=60)
            assert is_large is True and out.shape == (5,)
            assert errors == [], errors[:1]
    finally:
        sys.setswitchinterval(previous)


# --------------------------------------------------------------------------- vs Equinox


def _equinox():
    return pytest.importorskip("equinox")


def test_outputs_match_equinox():
    eqx = _equinox()
    model = make_linear()
    cases = [
        (lambda m, x: m(x), (model, jnp.ones(4))),
        (lambda m, x: (m, x.sum(), "s", None), (model, jnp.ones(4))),
        (lambda t: {"n": t["n"] + 1, "y": t["x"] * 2}, ({"n": 1, "x": np.ones(2, np.float32)},)),
        (lambda x, n: [x] * n, (jnp.ones(1), 3)),
    ]
    for fn, args in cases:
        assert_tree_equal(larix.filter_jit(fn)(*args), eqx.filter_jit(fn)(*args))


def test_trace_counts_match_equinox():
    eqx = _equinox()
    model = make_linear()
    calls = [
        (model, jnp.ones(4), 2),
        (model, jnp.zeros(4), 2),
        (make_linear(seed=1), jnp.ones(4), 2),
        (model, jnp.ones(4), 3),
        (Linear(model.weight, model.bias, activation="relu"), jnp.ones(4), 3),
        (make_linear(n_in=2), jnp.ones(2), 3),
        (model, jnp.ones(4, jnp.int32), 2),
        (model, jnp.ones(4), 2),
    ]
    counts = {}
    for name, jit in (("larix", larix.filter_jit), ("equinox", eqx.filter_jit)):
        traces = []

        def fn(m, x, n, traces=traces):
            traces.append(1)
            return m(x) * n

        f = jit(fn)
        counts[name] = []
        for args in calls:
            f(*args)
            counts[name].append(len(traces))
    assert counts["larix"] == counts["equinox"]


def test_clear_caches_makes_every_filter_jit_function_compile_again():
    f = larix.filter_jit(lambda x: x + 1)
    g = larix.filter_jit(lambda x: x * 2)
    x = jnp.arange(3.0)
    f(x), g(x), f(x), g(x)
    assert (larix.debug.get_num_traces(f), larix.debug.get_num_traces(g)) == (1, 1)
    larix.clear_caches()
    assert jnp.array_equal(f(x), x + 1) and jnp.array_equal(g(x), x * 2)
    assert (larix.debug.get_num_traces(f), larix.debug.get_num_traces(g)) == (2, 2)


# --------------------------------------------------------------------------- fast paths


def test_long_tuple_in_a_static_field_retraces_and_explains():
    f = larix.filter_jit(lambda t: t.value * t.tag[0])
    x = jnp.ones(2)
    base = tuple(range(100))
    f(Tagged(x, base))
    changed = (*base[:7], -7, *base[8:])
    with larix.debug.explain_recompiles(False):
        f(Tagged(x, changed))
    assert get_num_traces(f) == 2
    assert "7" in larix.debug.recompile_reasons(f)[-1]
    f(Tagged(x, base))
    assert get_num_traces(f) == 2


class Plain(larix.Module):
    value: Any
    numbers: Any


def test_long_plain_tuple_in_a_field_retraces_per_element_and_type():
    f, calls = counted(lambda m: m.value + m.numbers[3])
    x = jnp.ones(2)
    base = tuple(range(80))
    outs = [f(Plain(x, numbers)) for numbers in (base, (*base[:3], 10, *base[4:]), (*base[:3], 3.0, *base[4:]))]
    assert len(calls) == 3
    np.testing.assert_allclose(outs[1], x + 10)
    assert outs[2].dtype == jnp.float32
    f(Plain(x, tuple(range(80))))  # equal, not identical: no retrace
    assert len(calls) == 3
    message = larix.debug.recompile_reasons(f)[-1]
    assert "args[0].numbers[3]" in message, message


def test_returned_model_with_a_long_tuple_is_fed_back_without_retracing():
    f, calls = counted(lambda m: Plain(m.value + 1, m.numbers))
    model = Plain(jnp.zeros(2), tuple(range(1000)))
    for _ in range(3):
        model = f(model)
    assert len(calls) == 1
    assert model.numbers == tuple(range(1000))
    np.testing.assert_allclose(model.value, 3.0)


def test_optimiser_state_like_argument_of_only_arrays():
    import collections

    State = collections.namedtuple("State", ["count", "mu"])
    f, calls = counted(lambda s: State(s.count + 1, jtu.tree_map(lambda v: v * 2, s.mu)))
    state = (State(jnp.zeros((), jnp.int32), {"a": jnp.ones(2), "b": jnp.ones(3)}), ())
    for _ in range(3):
        state = (f(state[0]), ())
    assert len(calls) == 1
    assert int(state[0].count) == 3
    np.testing.assert_allclose(state[0].mu["a"], 8.0)
    f(State(jnp.zeros((), jnp.int32), {"a": jnp.ones(2), "b": jnp.ones(4)}))  # a shape
    f(State(jnp.zeros((), jnp.float32), {"a": jnp.ones(2), "b": jnp.ones(3)}))  # a dtype
    f(State(jnp.zeros((), jnp.int32), {"a": jnp.ones(2)}))  # the structure
    f(State(jnp.zeros((), jnp.int32), {"a": jnp.ones(2), "b": 1}))  # a static leaf
    assert len(calls) == 5
    f(State(jnp.zeros((), jnp.int32), {"a": jnp.ones(2), "b": jnp.ones(3)}))
    assert len(calls) == 5


def test_single_argument_calls_switch_between_compilations():
    f, calls = counted(lambda t: t.value * 2 if t.tag == "double" else t.value)
    a, b = Tagged(jnp.ones(2), "double"), Tagged(jnp.ones(2), "same")
    for _ in range(2):
        np.testing.assert_allclose(f(a), 2.0)
        np.testing.assert_allclose(f(b), 1.0)
    assert len(calls) == 2
    g, g_calls = counted(lambda x: x * 3)
    for n in (2, 2, 3, 2):
        np.testing.assert_allclose(g(jnp.ones(n)), 3.0)
    assert len(g_calls) == 2
    larix.clear_caches()
    np.testing.assert_allclose(f(a), 2.0)
    assert len(calls) == 3


def test_modules_inside_returned_tuples_are_born_with_their_split():
    import collections

    State = collections.namedtuple("State", ["count", "model", "extra"])
    f, calls = counted(lambda s, x: (State(s[0] + 1, Linear(s[1].weight + x, s[1].bias), None), x))
    state = (State(jnp.zeros((), jnp.int32), make_linear(), None), ())
    x = jnp.ones(())
    for _ in range(3):
        inner, _ = f(state[0], x)
        state = (inner, ())
    assert len(calls) == 1
    assert "__larix_jit__" in state[0].model.__dict__  # its split came with it
    np.testing.assert_allclose(state[0].model.weight, make_linear().weight + 3)
    assert int(state[0].count) == 3
    # Another Module of the same structure in the tuple: the same compilation.
    f(State(jnp.zeros((), jnp.int32), make_linear(seed=3), None), x)
    assert len(calls) == 1
    # Another static value inside the Module, or another kind of tuple: compiles again.
    f(State(jnp.zeros((), jnp.int32), Linear(make_linear().weight, make_linear().bias, activation="relu"), None), x)
    f((jnp.zeros((), jnp.int32), make_linear(), None), x)
    f(State(jnp.zeros((), jnp.int32), make_linear(), 1), x)
    f(State(jnp.zeros((), jnp.int32), make_linear(), [jnp.ones(1)]), x)
    assert len(calls) == 5
    f(State(jnp.zeros((), jnp.int32), make_linear(), 1), x)
    f(State(jnp.zeros((), jnp.int32), make_linear(), [jnp.ones(1)]), x)
    assert len(calls) == 5


def test_adam_training_loop_traces_once_and_matches_equinox_style_updates():
    import optax

    model = make_linear()
    optim = optax.adam(1e-2)
    x = jnp.ones(4)

    def loss(m):
        return jnp.sum(m(x) ** 2)

    @larix.filter_jit
    def step(model, opt_state):
        grads = larix.filter_grad(loss)(model)
        updates, opt_state = optim.update(grads, opt_state, model)
        return larix.apply_updates(model, updates), opt_state

    @jax.jit
    def reference(params, opt_state):
        grads = jax.grad(lambda p: loss(larix.combine(p, static)))(params)
        updates, opt_state = optim.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params, static = larix.partition(model, larix.is_array)
    state, ref_state = optim.init(larix.filter(model, larix.is_array)), optim.init(params)
    for _ in range(5):
        model, state = step(model, state)
        params, ref_state = reference(params, ref_state)
    assert get_num_traces(step) == 1
    assert_tree_equal(larix.filter(model, larix.is_array), params)


def test_remembered_structures_stay_bounded(monkeypatch):
    monkeypatch.setattr(larix._jit, "_INFO_MAX", 16)
    f = larix.filter_jit(lambda s, x: x)
    x = jnp.ones(())
    remember = larix.filter_jit(lambda m: None)  # gives each Module its remembered split
    for n in range(40):  # one treedef, but a new static value inside the tuple every call
        model = Tagged(n)
        remember(model)
        f((model,), x)
    assert len(f._larix_jit._info) <= larix._jit._INFO_MAX + 1


# --------------------------------------------------------------------------- exact caches


class _Layer(larix.Module):
    weight: Any


class _Net(larix.Module):
    layers: tuple


def test_errors_while_tracing_name_the_function_and_the_argument_path():
    def loss(model, x):
        if model.layers[1].weight.sum() > 0:  # a Python branch on a traced value
            return x
        return -x

    net = _Net((_Layer(jnp.ones(3)), _Layer(jnp.ones(3))))
    with pytest.raises(jax.errors.TracerBoolConversionError) as info:
        larix.filter_jit(loss)(net, jnp.ones(3))
    text = str(info.value)
    assert f"the function loss at {__file__}:" in text
    assert "argument model.layers[1].weight" in text
    assert "<generated>" not in "".join(traceback.format_exception(info.value))


def test_the_generated_call_shows_its_real_source_line():
    import linecache

    from larix import _jit

    assert "return fn(a0, a1, ...)" in linecache.getline(_jit.__file__, _jit._FIXED_LINE + 1)


def test_a_function_may_call_itself_while_tracing():
    @larix.filter_jit
    def depth(x, n):
        return x if n == 0 else depth(x, n - 1) + 1

    assert depth(jnp.array(0.0), 3) == 3.0


@pytest.mark.parametrize(
    ("a", "b"),
    [({1: 0}, {1.0: 0}), ({1: 0}, {True: 0}), ({0.0: 0}, {-0.0: 0}), ({frozenset({1}): 0}, {frozenset({1.0}): 0})],
)
def test_dict_keys_that_compare_equal_do_not_share_a_trace(a, b):
    f = larix.filter_jit(lambda d: (d[next(iter(d))], repr(next(iter(d)))))
    for d in (a, b, a):  # the dicts of arrays take the remembered path after the first call
        d = {k: jnp.ones(()) for k in d}
        assert f(d)[1] == repr(next(iter(d)))


def test_statics_equal_by_value_but_not_by_type_or_sign_do_not_share_a_trace():
    f = larix.filter_jit(lambda x, s: (x, jnp.arctan2(jnp.asarray(s[0], jnp.float32), -1.0), type(s[1]).__name__))
    for s in [(0.0, 1), (-0.0, 1), (0.0, 1.0), (0.0, True)]:
        _, angle, name = f(jnp.ones(()), s)
        assert math.copysign(1.0, float(angle)) == math.copysign(1.0, math.atan2(s[0], -1.0))
        assert name == type(s[1]).__name__


def test_lowered_compile_takes_compiler_options_and_exposes_jax_stages():
    lowered = larix.filter_jit(lambda x: x * 2).lower(jnp.ones(3))
    assert "stablehlo" in str(lowered.compiler_ir())
    compiled = lowered.compile(compiler_options={"xla_cpu_enable_fast_math": False})
    np.testing.assert_array_equal(compiled(jnp.ones(3)), 2 * np.ones(3))
    assert callable(compiled.memory_analysis)  # delegated to jax.stages.Compiled
    with pytest.raises(AttributeError):
        compiled.no_such_attribute


def test_aot_compiled_call_refuses_other_statics_after_clear_caches():
    class K(larix.Module):
        w: Any
        k: int = larix.field(static=True)

    compiled = larix.filter_jit(lambda m: m.w * m.k).lower(K(jnp.array(1.0), 2)).compile()
    larix.clear_caches()
    gc.collect()
    for k in range(3, 300):  # give the freed static part's id every chance to be reused
        with pytest.raises(TypeError, match="lowered for arguments with other static values"):
            compiled(K(jnp.array(1.0), k))
    assert compiled(K(jnp.array(1.0), 2)) == 2.0


@pytest.mark.parametrize("form", ["method", "jit_of_grad", "jit_of_vmap", "donated"])
def test_traces_as_often_as_equinox(form):
    """Where Equinox traces once, larix traces once (and never more often)."""
    eqx = pytest.importorskip("equinox")
    counts = {}
    for lib in (larix, eqx):
        traces: list[int] = []

        class M(lib.Module):
            w: Any

            def __call__(self, x, traces=traces):
                traces.append(1)
                return self.w * x

            @lib.filter_jit
            def method(self, x, traces=traces):
                traces.append(1)
                return self.w * x

        def loss(m, x):
            return jnp.sum(m(x))

        calls = {
            "method": lambda m, x: m.method(x),
            "jit_of_grad": lib.filter_jit(lib.filter_grad(loss)),
            "jit_of_vmap": lib.filter_jit(lib.filter_vmap(lambda m, x: m(x), in_axes=(None, 0))),
            "donated": lib.filter_jit(lambda m, x: M(m.w + m(x)), donate="all"),
        }
        call = calls[form]
        m = M(jnp.ones(3))
        x = jnp.ones((2, 3)) if form == "jit_of_vmap" else jnp.ones(3)
        for _ in range(3):
            out = call(m, x)
            if form == "donated":
                m = out
            else:
                m = M(jnp.ones(3) * 2)  # a new instance of the same structure
        counts[lib.__name__] = len(traces)
    assert counts["larix"] <= counts["equinox"]
    assert counts["larix"] == 1


def test_fresh_filter_jit_of_the_same_function_shares_its_compilations():
    traces = []

    def f(x):
        traces.append(1)
        return x + 1

    larix.filter_jit(larix.filter_grad(f))(jnp.array(1.0))
    larix.filter_jit(larix.filter_grad(f))(jnp.array(2.0))  # a new wrapper of an equal function
    assert len(traces) == 1
    larix.filter_jit(f)(jnp.ones(2))
    larix.filter_jit(f, donate="all")(jnp.ones(2))  # other options: compiled on its own
    assert len(traces) == 3
    ref = weakref.ref(f)
    del f
    # A pytree callable (the filter_grad wrapper) is remembered, as JAX remembers a static
    # argument, until larix.clear_caches() or 256 others; a plain function never is.
    larix.clear_caches()
    assert _collected(ref)


class _Key(str):
    """A str subclass: equal to its str, but not the same key (its type is visible)."""

    __hash__ = str.__hash__


@pytest.mark.parametrize("call", ["alone", "with another argument"])
def test_dicts_of_arrays_on_the_fast_path_never_share_a_wrong_trace(call, monkeypatch):
    # Dicts of arrays under str keys are keyed by their treedef alone (_is_array_dict): a
    # differential test of that memo against the answer computed without it.
    jitted = larix.filter_jit(lambda d, *rest: ([(type(k).__name__, k) for k in d], {k: v * 2 for k, v in d.items()}))
    extra = (jnp.ones(()),) if call != "alone" else ()
    dicts = [
        {"a": jnp.ones(2), "b": jnp.zeros(3)},
        {"b": jnp.zeros(3), "a": jnp.ones(2)},  # insertion order: the same trace
        {"a": jnp.ones(2), "c": jnp.zeros(3)},
        {_Key("a"): jnp.ones(2), "b": jnp.zeros(3)},  # a str subclass: general path
        {"a": np.ones(2), "b": np.zeros(3)},
        {"a": jnp.ones(4), "b": jnp.zeros(1)},  # other shapes: jax.jit retraces
        {"a": jnp.ones(2), "b": 3.0},  # a static value: general path
        {"a": jnp.ones(2)},
    ]
    for _ in range(2):
        for d in dicts:
            names, doubled = jitted(dict(d), *extra)
            assert names == [(type(k).__name__, k) for k in sorted(d, key=str)]
            assert set(doubled) == set(d)
            for k in d:
                np.testing.assert_array_equal(doubled[k], np.asarray(d[k]) * 2)
    # A fresh dict with the keys of one seen before takes the remembered static part.
    from larix import _jit

    def fail(*args, **kwargs):
        raise AssertionError("the remembered dict of arrays was split again")

    monkeypatch.setattr(_jit, "_split_arg", fail)
    names, _ = jitted({"b": jnp.ones(3), "a": jnp.ones(2)}, *extra)
    assert names == [("str", "a"), ("str", "b")]
