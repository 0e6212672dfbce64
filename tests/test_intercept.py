"""Named scopes, method interception and captured intermediates (larix._intercept)."""

from __future__ import annotations

import re
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import larix


class Block(larix.Module):
    first: Any
    second: Any

    def __call__(self, x):
        return self.second(jax.nn.relu(self.first(x)))

    def encode(self, x):
        return larix.sow("hidden", self.first(x))


class Model(larix.Module):
    blocks: tuple
    head: Any

    def __call__(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _model() -> Model:
    keys = jax.random.split(jax.random.key(0), 5)
    lin = lambda k, i, o: larix.nn.Linear(i, o, key=k)  # noqa: E731
    return Model(
        (Block(lin(keys[0], 3, 4), lin(keys[1], 4, 3)), Block(lin(keys[2], 3, 4), lin(keys[3], 4, 3))),
        lin(keys[4], 3, 2),
    )


def _scope_names(fn, *args) -> set[str]:
    # A fresh function: scopes are decided when tracing, and filter_jit(model) would reuse
    # the trace of an earlier filter_jit of a model of the same structure.
    text = larix.filter_jit(lambda *a: fn(*a)).lower(*args).as_text(debug_info=True)
    return set(re.findall(r'"([^"]*/Linear)/[a-z_]+"', text))


def test_each_module_call_runs_under_a_named_scope_with_its_path():
    names = _scope_names(_model(), jnp.ones(3))
    assert "jit(<lambda>)/Model/blocks.0/Block/blocks.0.first/Linear" in names
    assert "jit(<lambda>)/Model/head/Linear" in names


def test_named_scopes_can_be_switched_off_and_are_restored():
    with larix.named_scopes(False):
        assert _scope_names(_model(), jnp.ones(3)) == set()
    assert _scope_names(_model(), jnp.ones(3))


def test_named_scopes_do_not_change_the_jaxpr():
    model = _model()
    with larix.named_scopes(False):
        plain = str(jax.make_jaxpr(model)(jnp.ones(3)))
    assert str(jax.make_jaxpr(model)(jnp.ones(3))) == plain


def test_an_interceptor_sees_every_call_with_its_path_and_may_log_shapes():
    seen = []

    def log(next_fn, args, kwargs, context):
        out = next_fn(args, kwargs)
        seen.append((context.path, type(context.module).__name__, context.method_name, out.shape))
        return out

    with larix.intercept_methods(log):
        _model()(jnp.ones(3))
    assert seen[:3] == [
        ("blocks.0.first", "Linear", "__call__", (4,)),
        ("blocks.0.second", "Linear", "__call__", (3,)),
        ("blocks.0", "Block", "__call__", (3,)),
    ]
    assert seen[-1] == ("", "Model", "__call__", (2,))


def test_an_interceptor_can_run_one_layer_type_in_float32_inside_a_bf16_model():
    model = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16) if larix.is_inexact_array(x) else x, _model())
    dtypes = []

    def head_in_float32(next_fn, args, kwargs, context):
        if context.path == "head":
            module = jax.tree_util.tree_map(lambda x: x.astype(jnp.float32) if larix.is_array(x) else x, context.module)
            out = type(module).__call__(module, *(a.astype(jnp.float32) for a in args), **kwargs)
            dtypes.append(out.dtype)
            return out
        return next_fn(args, kwargs)

    with larix.intercept_methods(head_in_float32):
        out = model(jnp.ones(3, jnp.bfloat16))
    assert out.dtype == jnp.float32 and dtypes == [jnp.float32]
    assert model(jnp.ones(3, jnp.bfloat16)).dtype == jnp.bfloat16  # only inside the block


def test_an_interceptor_can_replace_an_output_for_an_ablation_and_skip_the_call():
    model = _model()
    calls = []

    def ablate(next_fn, args, kwargs, context):
        if context.path == "blocks.1":
            return jnp.zeros(3)  # skipped: the block's layers never run
        calls.append(context.path)
        return next_fn(args, kwargs)

    with larix.intercept_methods(ablate):
        out = model(jnp.ones(3))
    np.testing.assert_allclose(out, model.head(jnp.zeros(3)))
    assert "blocks.1.first" not in calls


def test_interceptors_nest_innermost_first_and_errors_restore_the_state():
    order = []

    def tag(name):
        def interceptor(next_fn, args, kwargs, context):
            order.append(name)
            return next_fn(args, kwargs)

        return interceptor

    layer = larix.nn.Linear(2, 2, key=jax.random.key(1))
    with larix.intercept_methods(tag("outer")), larix.intercept_methods(tag("inner")):
        layer(jnp.ones(2))
    assert order == ["inner", "outer"]

    def boom(next_fn, args, kwargs, context):
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"), larix.intercept_methods(boom):
        layer(jnp.ones(2))
    order.clear()
    layer(jnp.ones(2))
    assert order == []  # nothing left active
    with pytest.raises(TypeError, match="expects a callable"):
        larix.intercept_methods("log")


def test_interception_is_thread_local():
    layer = larix.nn.Linear(2, 2, key=jax.random.key(1))
    seen = []
    started, release = threading.Event(), threading.Event()

    def other_thread():
        started.set()
        release.wait(10)
        layer(jnp.ones(2))

    thread = threading.Thread(target=other_thread)
    thread.start()
    started.wait(10)
    with larix.intercept_methods(lambda n, a, k, c: seen.append(threading.get_ident()) or n(a, k)):
        release.set()
        thread.join(10)
        layer(jnp.ones(2))
    assert seen == [threading.get_ident()]


def test_filter_jit_traced_under_an_interceptor_is_compiled_separately():
    layer = larix.nn.Linear(2, 2, key=jax.random.key(1))
    f = larix.filter_jit(lambda m, x: m(x))
    plain = f(layer, jnp.ones(2))

    def double(next_fn, args, kwargs, context):
        return 2 * next_fn(args, kwargs)

    with larix.intercept_methods(double):
        np.testing.assert_allclose(f(layer, jnp.ones(2)), 2 * plain)
    np.testing.assert_allclose(f(layer, jnp.ones(2)), plain)  # the cached plain trace again


def test_capture_by_type_path_glob_and_predicate():
    model = _model()
    out, found = larix.capture(model, larix.nn.Linear)(jnp.ones(3))
    np.testing.assert_array_equal(out, model(jnp.ones(3)))
    assert sorted(found) == ["blocks.0.first", "blocks.0.second", "blocks.1.first", "blocks.1.second", "head"]
    _, found = larix.capture(model, "blocks.*.first")(jnp.ones(3))
    assert sorted(found) == ["blocks.0.first", "blocks.1.first"]
    _, found = larix.capture(model, lambda context: isinstance(context.module, Block))(jnp.ones(3))
    assert sorted(found) == ["blocks.0", "blocks.1"]
    _, found = larix.capture(model, True)(jnp.ones(3))
    assert "__call__" in found  # the first Module called: the model itself
    with pytest.raises(TypeError, match=r"capture\(filter=3\)"):
        larix.capture(model, 3)


def test_repeated_calls_are_kept_in_order_and_sown_values_are_captured():
    layer = larix.nn.Linear(2, 2, key=jax.random.key(1))

    class Twice(larix.Module):
        layer: Any

        def __call__(self, x):
            return self.layer(self.layer(x))

    _, found = larix.capture(Twice(layer), larix.nn.Linear)(jnp.ones(2))
    first = layer(jnp.ones(2))
    np.testing.assert_allclose(found["layer"][0], first)
    np.testing.assert_allclose(found["layer"][1], layer(first))
    block = _model().blocks[0]
    out, found = larix.capture(block.encode)(jnp.ones(3))
    assert list(found) == ["hidden"]
    np.testing.assert_array_equal(found["hidden"][0], out)
    np.testing.assert_array_equal(block.encode(jnp.ones(3)), out)  # sow is a no-op outside


def test_capture_works_under_jit_vmap_and_grad():
    model = _model()
    out, found = larix.filter_jit(larix.capture(model, "head"))(jnp.ones(3))
    np.testing.assert_allclose(found["head"][0], out)
    _, found = larix.filter_vmap(larix.capture(model, "head"))(jnp.ones((5, 3)))
    assert found["head"][0].shape == (5, 2)

    def loss(m):
        _, found = larix.capture(m, "blocks.0")(jnp.ones(3))
        return jnp.sum(found["blocks.0"][0] ** 2)

    grads = larix.filter_grad(loss)(model)
    assert np.any(np.asarray(grads.blocks[0].first.weight) != 0)
    assert np.all(np.asarray(grads.head.weight) == 0)


def test_a_filter_jit_function_inside_capture_raises_instead_of_losing_values():
    layer = larix.nn.Linear(2, 2, key=jax.random.key(1))
    jitted = larix.filter_jit(lambda x: layer(x))
    with pytest.raises(RuntimeError, match=r"inside larix\.capture"):
        larix.capture(jitted, True)(jnp.ones(2))
    jitted(jnp.ones(2))  # and nothing stays active afterwards


def test_nothing_leaks_into_the_jaxpr_of_a_model_traced_without_capture():
    model = _model()
    before = str(jax.make_jaxpr(model)(jnp.ones(3)))
    larix.capture(model, True)(jnp.ones(3))
    assert str(jax.make_jaxpr(model)(jnp.ones(3))) == before


def test_paths_are_relative_to_the_first_module_called_inside_the_block_even_under_jit_of_vmap():
    model = _model()
    _, found = larix.filter_jit(larix.filter_vmap(larix.capture(model, larix.nn.Linear)))(jnp.ones((2, 3)))
    assert sorted(found) == ["blocks.0.first", "blocks.0.second", "blocks.1.first", "blocks.1.second", "head"]
    _, found = larix.capture(lambda x: model.blocks[1](x), larix.nn.Linear)(jnp.ones(3))
    assert sorted(found) == ["first", "second"]
