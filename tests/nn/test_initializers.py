"""Initialisers and dtypes across every layer of larix.nn with parameters (issue 9).

Each layer's own test file checks its defaults against Equinox to the bit; this file checks
the conventions that hold for all of them: one `<field>_init` per parameter field (it fills
exactly that field, with that field's shape and `param_dtype`), `param_dtype` defaulting to
`dtype`, `dtype` as the computation dtype, and mixed dtypes under strict promotion.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_helpers import key

import larix

F32, BF16, F16 = jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)


def _normal(shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    return jax.random.normal(key(9), shape, dtype)


def _attention_fields(kind: str) -> list[str]:
    return [f"{name}_proj.{kind}" for name in ("query", "key", "value", "output")]


# name -> (build(**kwargs), the initialiser arguments and the fields each fills, a call on
# one float32 example, or None for layers that are tested with their state elsewhere).
LAYERS: dict[str, tuple[Callable[..., Any], dict[str, list[str]], Callable[[Any], Any] | None]] = {
    "Linear": (
        lambda **kw: larix.nn.Linear(3, 4, **kw, key=key()),
        {"weight_init": ["weight"], "bias_init": ["bias"]},
        lambda m: m(_normal((3,))),
    ),
    "DenseGeneral": (
        lambda **kw: larix.nn.DenseGeneral((2, 3), 4, **kw, key=key()),
        {"kernel_init": ["kernel"], "bias_init": ["bias"]},
        lambda m: m(_normal((2, 3))),
    ),
    "Conv1d": (
        lambda **kw: larix.nn.Conv1d(2, 3, 3, **kw, key=key()),
        {"weight_init": ["weight"], "bias_init": ["bias"]},
        lambda m: m(_normal((2, 6))),
    ),
    "Conv2d": (
        lambda **kw: larix.nn.Conv2d(2, 3, 3, groups=1, **kw, key=key()),
        {"weight_init": ["weight"], "bias_init": ["bias"]},
        lambda m: m(_normal((2, 5, 5))),
    ),
    "Conv3d": (
        lambda **kw: larix.nn.Conv3d(1, 2, 2, **kw, key=key()),
        {"weight_init": ["weight"], "bias_init": ["bias"]},
        lambda m: m(_normal((1, 3, 3, 3))),
    ),
    "ConvTranspose1d": (
        lambda **kw: larix.nn.ConvTranspose1d(2, 3, 3, **kw, key=key()),
        {"weight_init": ["weight"], "bias_init": ["bias"]},
        lambda m: m(_normal((2, 4))),
    ),
    "ConvTranspose2d": (
        lambda **kw: larix.nn.ConvTranspose2d(2, 3, 3, stride=2, **kw, key=key()),
        {"weight_init": ["weight"], "bias_init": ["bias"]},
        lambda m: m(_normal((2, 4, 4))),
    ),
    "ConvTranspose3d": (
        lambda **kw: larix.nn.ConvTranspose3d(1, 2, 2, **kw, key=key()),
        {"weight_init": ["weight"], "bias_init": ["bias"]},
        lambda m: m(_normal((1, 2, 2, 2))),
    ),
    "Embedding": (
        lambda **kw: larix.nn.Embedding(10, 4, **kw, key=key()),
        {"weight_init": ["weight"]},
        lambda m: m(jnp.int32(3)),
    ),
    "MultiheadAttention": (
        lambda **kw: larix.nn.MultiheadAttention(
            2, 8, use_query_bias=True, use_key_bias=True, use_value_bias=True, use_output_bias=True, **kw, key=key()
        ),
        {"weight_init": _attention_fields("weight"), "bias_init": _attention_fields("bias")},
        lambda m: m(_normal((5, 8)), _normal((5, 8)), _normal((5, 8))),
    ),
    "LayerNorm": (
        lambda **kw: larix.nn.LayerNorm(4, **kw),
        {"weight_init": ["weight"], "bias_init": ["bias"]},
        lambda m: m(_normal((4,))),
    ),
    "RMSNorm": (
        lambda **kw: larix.nn.RMSNorm(4, use_bias=True, **kw),
        {"weight_init": ["weight"], "bias_init": ["bias"]},
        lambda m: m(_normal((4,))),
    ),
    "GroupNorm": (
        lambda **kw: larix.nn.GroupNorm(2, 4, **kw),
        {"weight_init": ["weight"], "bias_init": ["bias"]},
        lambda m: m(_normal((4, 3))),
    ),
    "BatchNorm": (
        lambda **kw: larix.nn.BatchNorm(4, "batch", mode="batch", **kw),
        {"weight_init": ["weight"], "bias_init": ["bias"]},
        None,
    ),
    "GRUCell": (
        lambda **kw: larix.nn.GRUCell(3, 4, **kw, key=key()),
        {"weight_ih_init": ["weight_ih"], "weight_hh_init": ["weight_hh"], "bias_init": ["bias", "bias_n"]},
        lambda m: m(_normal((3,)), _normal((4,))),
    ),
    "LSTMCell": (
        lambda **kw: larix.nn.LSTMCell(3, 4, **kw, key=key()),
        {"weight_ih_init": ["weight_ih"], "weight_hh_init": ["weight_hh"], "bias_init": ["bias"]},
        lambda m: m(_normal((3,)), (_normal((4,)), _normal((4,))))[0],
    ),
}

# Layers with a `dtype` argument that are not in LAYERS, and why.
NOT_HERE = {
    "MLP": "passes its initialisers and dtypes to its Linear layers (tests/nn/test_mlp.py)",
    "RotaryPositionalEmbedding": "no parameters: `dtype` is that of its sine and cosine tables",
}


def _get(tree: Any, path: str) -> Any:
    for name in path.split("."):
        tree = getattr(tree, name)
    return tree


def test_every_layer_with_a_dtype_is_covered():
    with_dtype = {
        name
        for name, obj in vars(larix.nn).items()
        if inspect.isclass(obj) and issubclass(obj, larix.Module) and "dtype" in inspect.signature(obj).parameters
    }
    # The N-dimensional bases are covered through their 1d/2d/3d subclasses.
    assert with_dtype - {"Conv", "ConvTranspose"} == set(LAYERS) | set(NOT_HERE)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_initialisers_are_keyword_only_and_named_after_fields(name):
    build, inits, _ = LAYERS[name]
    parameters = inspect.signature(type(build())).parameters
    for argument in [*inits, "param_dtype"]:
        assert parameters[argument].kind is inspect.Parameter.KEYWORD_ONLY, argument
        assert parameters[argument].default is None, argument
    assert {p for p in parameters if p.endswith("_init")} == set(inits)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_each_initialiser_fills_exactly_its_fields(name):
    build, inits, _ = LAYERS[name]
    default = build(param_dtype=F16)
    for i, (argument, fields) in enumerate(inits.items()):
        calls = []

        def init(k, shape, dtype, value=float(i + 2), calls=calls):
            calls.append((tuple(shape), jnp.dtype(dtype)))
            return jnp.full(shape, value, dtype)

        layer = build(param_dtype=F16, **{argument: init})
        assert sorted(calls) == sorted((_get(default, f).shape, F16) for f in fields), argument
        for field in fields:
            value = _get(layer, field)
            assert value.dtype == F16 and bool(jnp.all(value == i + 2)), (argument, field)
        # Every other parameter keeps its default, to the bit.
        others = [f for other, fs in inits.items() if other != argument for f in fs]
        for field in others:
            np.testing.assert_array_equal(_get(layer, field), _get(default, field), strict=True)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_param_dtype_defaults_to_dtype(name):
    build, inits, _ = LAYERS[name]
    fields = [f for fs in inits.values() for f in fs]
    for kwargs, stored in [({}, F32), ({"dtype": F16}, F16), ({"param_dtype": F16}, F16), ({"dtype": BF16, "param_dtype": F32}, F32)]:
        layer = build(**kwargs)
        assert {_get(layer, f).dtype for f in fields} == {stored}, kwargs
        assert layer.dtype == kwargs.get("dtype"), kwargs


@pytest.mark.parametrize("name", sorted(n for n, (_, _, call) in LAYERS.items() if call is not None))
def test_dtype_is_the_computation_dtype_even_under_strict_promotion(name):
    build, _, call = LAYERS[name]
    run = larix.filter_jit(call)
    with jax.numpy_dtype_promotion("strict"):
        # Flax's mixed precision: float32 parameters, bfloat16 output.
        assert jnp.result_type(run(build(dtype=BF16, param_dtype=F32))) == BF16
        # dtype=None and bfloat16 parameters: float32 inputs win (the common type), for
        # Embedding the table's dtype, for the normalisations the input's.
        expected = BF16 if name == "Embedding" else F32
        assert jnp.result_type(run(build(param_dtype=BF16))) == expected


def test_bfloat16_computation_trains_float32_parameters_with_optax():
    optax = pytest.importorskip("optax")
    k1, k2, k3 = jax.random.split(key(4), 3)
    mixed = dict(dtype=BF16, param_dtype=F32)
    model = larix.nn.Sequential(
        [
            larix.nn.Conv1d(1, 4, 3, **mixed, key=k1),
            larix.nn.LayerNorm((4, 6), **mixed),
            larix.nn.Lambda(lambda x: x.reshape(-1)),
            larix.nn.Linear(24, 1, **mixed, key=k2),
        ]
    )
    x, y = jax.random.normal(k3, (16, 1, 8)), jnp.ones((16, 1))
    optimiser = optax.adam(1e-2)
    opt_state = optimiser.init(larix.filter(model, larix.is_inexact_array))

    @larix.filter_jit
    def step(model, opt_state):
        def loss(model):
            out = jax.vmap(model)(x)
            assert out.dtype == BF16  # computed in bfloat16 ...
            return jnp.mean((out.astype(F32) - y) ** 2)

        value, grads = larix.filter_value_and_grad(loss)(model)
        updates, opt_state = optimiser.update(grads, opt_state)
        return larix.apply_updates(model, updates), opt_state, value, grads

    losses = []
    for _ in range(30):
        model, opt_state, value, grads = step(model, opt_state)
        losses.append(float(value))
    # ... while gradients, parameters and optimiser state stay float32.
    for tree in (grads, model, opt_state):
        floats = [a for a in jax.tree_util.tree_leaves(tree) if larix.is_inexact_array(a)]
        assert floats and {a.dtype for a in floats} == {F32}
    assert losses[-1] < 0.5 * losses[0]
