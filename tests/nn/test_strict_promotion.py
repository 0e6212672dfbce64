"""Every layer of larix.nn under JAX's strictest settings: `jax_numpy_dtype_promotion="strict"`
(no implicit dtype promotion) and `jax_numpy_rank_promotion="raise"` (no implicit
broadcasting of ranks), which Equinox's own test suite runs with.

Each case builds a layer and its inputs for one input dtype; the layer must be built and
run under `filter_jit` in strict mode, and give an output of the expected dtype. Low precision (bfloat16) runs wherever a layer has floating-point inputs (with
parameters of the same dtype, except for normalisations, whose float32 parameters are cast
to the computation's dtype); integer inputs where they make sense (pooling, PReLU, indices,
BatchNorm of raw pixel values).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import pytest
from nn_helpers import key

import larix

F32, BF16, F16 = jnp.float32, jnp.bfloat16, jnp.float16
I32, U8 = jnp.int32, jnp.uint8
FLOATS = (F32, BF16)
POOL_DTYPES = (F32, BF16, I32, U8)


def _x(shape: tuple[int, ...], dtype: Any, seed: int = 1) -> jax.Array:
    if jnp.issubdtype(dtype, jnp.integer):
        return jax.random.randint(key(seed), shape, 0, 100).astype(dtype)
    return jax.random.normal(key(seed), shape, dtype)


def _call(layer: Any, *args: Any, **kwargs: Any) -> Callable[[], tuple[Any, tuple[Any, ...]]]:
    return lambda: (lambda m, *a: m(*a, **kwargs), (layer, *args))


def _batched(layer: Any, state: Any, x: Any) -> tuple[Any, tuple[Any, ...]]:
    # A stateful layer over a batch, as it is trained: the state is shared by the batch.
    def run(m: Any, x: Any, s: Any) -> Any:
        return larix.filter_vmap(
            lambda m, x, s: m(x, s), in_axes=(None, 0, None), out_axes=(0, None), axis_name="batch"
        )(m, x, s)

    return run, (layer, x, state)


def _stateful(make: Callable[[], tuple[Any, Any]], x: Any) -> Callable[[], tuple[Any, tuple[Any, ...]]]:
    def build() -> tuple[Any, tuple[Any, ...]]:
        layer, state = make()
        return (lambda m, x, s: m(x, s)), (layer, x, state)

    return build


def _attention(dtype: Any, mask: bool) -> Callable[[], tuple[Any, tuple[Any, ...]]]:
    def build() -> tuple[Any, tuple[Any, ...]]:
        layer = larix.nn.MultiheadAttention(2, 8, use_query_bias=True, dtype=dtype, key=key())
        x = _x((5, 8), dtype)
        m = jnp.tril(jnp.ones((5, 5), bool)) if mask else None
        return (lambda layer, x, m: layer(x, x, x, m)), (layer, x, m)

    return build


# (name, input dtypes, build(dtype) -> (function, arguments), expected output dtype or None
# for the input's dtype)
CASES: list[tuple[str, tuple[Any, ...], Callable[[Any], Callable[[], Any]], Any]] = [
    ("Linear", FLOATS, lambda d: _call(larix.nn.Linear(3, 4, dtype=d, key=key()), _x((3,), d)), None),
    (
        "Linear-scalar",
        FLOATS,
        lambda d: _call(larix.nn.Linear("scalar", 0, dtype=d, key=key()), _x((), d)),
        None,
    ),
    ("Identity", (F32, BF16, I32), lambda d: _call(larix.nn.Identity(), _x((3,), d)), None),
    ("MLP", FLOATS, lambda d: _call(larix.nn.MLP(3, 2, 4, 2, dtype=d, key=key()), _x((3,), d)), None),
    (
        "MLP-scan",
        FLOATS,
        lambda d: _call(larix.nn.MLP(3, 2, 4, 3, scan=True, dtype=d, key=key()), _x((3,), d)),
        None,
    ),
    (
        "MLP-prelu",
        FLOATS,
        lambda d: _call(
            larix.nn.MLP(3, 2, 4, 1, activation=larix.nn.PReLU(), dtype=d, key=key()), _x((3,), d)
        ),
        None,
    ),
    (
        "Conv1d",
        FLOATS,
        lambda d: _call(larix.nn.Conv1d(2, 3, 3, padding=1, dtype=d, key=key()), _x((2, 7), d)),
        None,
    ),
    (
        "Conv2d",
        FLOATS,
        lambda d: _call(larix.nn.Conv2d(2, 3, 3, stride=2, dtype=d, key=key()), _x((2, 7, 6), d)),
        None,
    ),
    (
        "Conv3d",
        FLOATS,
        lambda d: _call(larix.nn.Conv3d(1, 2, 2, dtype=d, key=key()), _x((1, 4, 4, 3), d)),
        None,
    ),
    (
        "ConvTranspose2d",
        FLOATS,
        lambda d: _call(larix.nn.ConvTranspose2d(2, 3, 3, stride=2, dtype=d, key=key()), _x((2, 4, 5), d)),
        None,
    ),
    (
        "Embedding",
        (I32, U8, jnp.int8),
        lambda d: _call(larix.nn.Embedding(120, 4, key=key()), _x((), d)),
        F32,
    ),
    (
        "Embedding-bf16",
        (I32,),
        lambda d: _call(larix.nn.Embedding(120, 4, dtype=BF16, key=key()), _x((), d)),
        BF16,
    ),
    (
        "RotaryPositionalEmbedding",
        FLOATS,
        lambda d: _call(larix.nn.RotaryPositionalEmbedding(6, dtype=d), _x((5, 6), d)),
        None,
    ),
    ("MultiheadAttention", FLOATS, lambda d: _attention(d, mask=False), None),
    ("MultiheadAttention-mask", FLOATS, lambda d: _attention(d, mask=True), None),
    (
        "dot_product_attention",
        (F32, BF16, F16),
        lambda d: (
            lambda: (larix.nn.dot_product_attention, (_x((4, 8), d), _x((5, 8), d, 2), _x((5, 3), d, 3)))
        ),
        None,
    ),
    ("Dropout", FLOATS, lambda d: _call(larix.nn.Dropout(0.3), _x((6,), d), key=key(5)), None),
    ("LayerNorm", FLOATS, lambda d: _call(larix.nn.LayerNorm((3, 4)), _x((3, 4), d)), None),
    ("LayerNorm-bf16-params", FLOATS, lambda d: _call(larix.nn.LayerNorm(4, param_dtype=BF16), _x((4,), d)), None),
    ("RMSNorm", FLOATS, lambda d: _call(larix.nn.RMSNorm(4), _x((4,), d)), None),
    ("GroupNorm", FLOATS, lambda d: _call(larix.nn.GroupNorm(2, 4), _x((4, 3, 2), d)), None),
    (
        "GroupNorm-bf16-params",
        FLOATS,
        lambda d: _call(larix.nn.GroupNorm(2, 4, param_dtype=BF16), _x((4, 3), d)),
        None,
    ),
    (
        "BatchNorm",
        FLOATS,
        lambda d: (
            lambda: _batched(
                *larix.nn.make_with_state(larix.nn.BatchNorm)(3, "batch", mode="batch"), _x((5, 3, 2), d)
            )
        ),
        None,
    ),
    (
        "BatchNorm-ema-pixels",
        (U8, I32),
        lambda d: (
            lambda: _batched(
                *larix.nn.make_with_state(larix.nn.BatchNorm)(3, "batch", mode="ema"), _x((5, 3, 2), d)
            )
        ),
        F32,
    ),
    (
        "GRUCell",
        FLOATS,
        lambda d: _call(larix.nn.GRUCell(3, 4, dtype=d, key=key()), _x((3,), d), _x((4,), d, 2)),
        None,
    ),
    (
        "GRUCell-no-bias",
        FLOATS,
        lambda d: _call(
            larix.nn.GRUCell(3, 4, use_bias=False, dtype=d, key=key()), _x((3,), d), _x((4,), d, 2)
        ),
        None,
    ),
    (
        "LSTMCell",
        FLOATS,
        lambda d: _call(
            larix.nn.LSTMCell(3, 4, dtype=d, key=key()), _x((3,), d), (_x((4,), d, 2), _x((4,), d, 3))
        ),
        None,
    ),
    ("PReLU", (F32, BF16, I32), lambda d: _call(larix.nn.PReLU(), _x((2, 3), d)), "float"),
    (
        "PReLU-per-channel",
        (F32, I32),
        lambda d: _call(larix.nn.PReLU(jnp.array([0.1, 0.2, 0.3])), _x((2, 3), d)),
        "float",
    ),
    *[
        (
            pool.__name__,
            POOL_DTYPES,
            lambda d, pool=pool, n=n: _call(pool(2, stride=2, padding=1), _x((2,) + (5,) * n, d)),
            out,
        )
        for pool, n, out in [
            (larix.nn.MaxPool1d, 1, None),
            (larix.nn.MaxPool2d, 2, None),
            (larix.nn.MaxPool3d, 3, None),
            (larix.nn.AvgPool1d, 1, "float"),
            (larix.nn.AvgPool2d, 2, "float"),
            (larix.nn.AvgPool3d, 3, "float"),
        ]
    ],
    (
        "MaxPool1d-ceil",
        POOL_DTYPES,
        lambda d: _call(larix.nn.MaxPool1d(3, 3, use_ceil=True), _x((2, 8), d)),
        None,
    ),
    *[
        (pool.__name__, POOL_DTYPES, lambda d, pool=pool, n=n: _call(pool(2), _x((2,) + (5,) * n, d)), out)
        for pool, n, out in [
            (larix.nn.AdaptiveMaxPool1d, 1, None),
            (larix.nn.AdaptiveMaxPool2d, 2, None),
            (larix.nn.AdaptiveAvgPool1d, 1, "float"),
            (larix.nn.AdaptiveAvgPool3d, 3, "float"),
        ]
    ],
    (
        "Sequential",
        FLOATS,
        lambda d: _call(
            larix.nn.Sequential(
                [
                    larix.nn.Linear(3, 4, dtype=d, key=key()),
                    larix.nn.Lambda(jax.nn.gelu),
                    larix.nn.LayerNorm(4),
                ]
            ),
            _x((3,), d),
        ),
        None,
    ),
    (
        "SpectralNorm",
        FLOATS,
        lambda d: _stateful(
            lambda: larix.nn.make_with_state(larix.nn.SpectralNorm)(
                larix.nn.Linear(3, 4, dtype=d, key=key()), key=key(1)
            ),
            _x((3,), d),
        ),
        None,
    ),
    (
        "WeightNorm",
        FLOATS,
        lambda d: _call(larix.nn.WeightNorm(larix.nn.Linear(3, 4, dtype=d, key=key())), _x((3,), d)),
        None,
    ),
]


def _expected_dtype(expected: Any, dtype: Any) -> Any:
    if expected is None:
        return jnp.dtype(dtype)
    if expected == "float":  # a float input keeps its dtype; an integer one gives float32
        return jnp.dtype(dtype) if jnp.issubdtype(dtype, jnp.floating) else jnp.dtype(F32)
    return jnp.dtype(expected)


def _first_output(output: Any) -> Any:
    while isinstance(output, tuple):  # (y, state) or (h, c)
        output = output[0]
    return output


@pytest.mark.parametrize(
    ("name", "dtype"), [(name, jnp.dtype(d).name) for name, dtypes, _, _ in CASES for d in dtypes]
)
def test_layer_under_strict_promotion(name, dtype):
    [(build, expected)] = [(build, expected) for n, _, build, expected in CASES if n == name]
    # Built and traced in strict mode (under filter_jit: tracing runs the same Python as an
    # eager call, at a fraction of the time of dispatching every operation).
    with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
        function, args = build(dtype)()
        output = _first_output(larix.filter_jit(function)(*args))
    assert output.dtype == _expected_dtype(expected, dtype), output.dtype
    if jnp.issubdtype(output.dtype, jnp.floating):
        assert bool(jnp.all(jnp.isfinite(output)))


def test_every_layer_is_covered():
    # A new layer must be added to CASES: list the public layers (classes with a
    # __call__) that no case's name starts with.
    public = {
        name
        for name in dir(larix.nn)
        if isinstance(getattr(larix.nn, name), type) and issubclass(getattr(larix.nn, name), larix.Module)
    }
    not_layers = {
        "StateIndex",
        "StatefulLayer",
        "Pool",  # the base of the pools above
        "AdaptivePool",
        "Conv",  # the base of Conv1d/2d/3d
        "ConvTranspose",
        "ConvTranspose1d",  # as ConvTranspose2d
        "ConvTranspose3d",
        "AdaptiveAvgPool2d",  # as their 1d and 3d versions
        "AdaptiveMaxPool3d",
        "Lambda",  # in Sequential
        "Shared",  # a container of other layers
        "DenseGeneral",  # tested with its own file
        "BatchApply",
    }
    covered = {name.split("-")[0] for name, *_ in CASES}
    assert public - not_layers - covered == set()
