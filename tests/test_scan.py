"""Stacked and stack: N blocks with a leading layer axis, applied with jax.lax.scan."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import larix

NUM_LAYERS = 5
WIDTH = 6


class Block(larix.Module):
    """A residual MLP block with a static field and a non-array leaf."""

    weight: jax.Array
    bias: jax.Array
    scale: float  # a non-array leaf: shared by all layers, not scanned
    steps: jax.Array  # an integer array: scanned, not differentiated
    activation: Callable[[jax.Array], jax.Array] = larix.field(static=True, default=jnp.tanh)

    def __init__(self, key: Any, width: int = WIDTH, activation: Callable[[jax.Array], jax.Array] = jnp.tanh):
        wkey, bkey = jax.random.split(key)
        self.weight = jax.random.normal(wkey, (width, width)) / np.sqrt(width)
        self.bias = 0.1 * jax.random.normal(bkey, (width,))
        self.scale = 0.5
        self.steps = jnp.array(2)
        self.activation = activation

    def __call__(self, x: jax.Array, gain: float = 1.0) -> jax.Array:
        traces.append(None)
        return x + gain * self.scale * self.activation(self.weight @ x + self.bias) / self.steps


traces: list[None] = []


class Unrolled(larix.Module):
    blocks: tuple[Block, ...]

    def __call__(self, x: jax.Array, gain: float = 1.0) -> jax.Array:
        for block in self.blocks:
            x = block(x, gain)
        return x


def keys(n: int = NUM_LAYERS) -> jax.Array:
    return jax.random.split(jax.random.key(0), n)


@pytest.fixture(scope="module")
def stacked() -> larix.Stacked:
    return larix.stack(Block, keys())


def unroll(stacked: larix.Stacked) -> Unrolled:
    return Unrolled(tuple(stacked[i] for i in range(len(stacked))))


def loss(model: Any, x: jax.Array) -> jax.Array:
    return jnp.sum(model(x) ** 2)


def test_stack_adds_a_layer_axis_and_keeps_statics(stacked):
    block = stacked.block
    assert isinstance(block, Block)
    assert block.weight.shape == (NUM_LAYERS, WIDTH, WIDTH) and block.bias.shape == (NUM_LAYERS, WIDTH)
    assert block.steps.shape == (NUM_LAYERS,)
    assert block.scale == 0.5 and block.activation is jnp.tanh
    assert len(stacked) == NUM_LAYERS
    # Layer i is the block that make_block builds from key i.
    for i, k in enumerate(keys()):
        assert larix.tree_equal(stacked[i], Block(k), rtol=1e-6, atol=1e-7)


def test_stack_matches_filter_vmap(stacked):
    by_vmap = larix.Stacked(larix.filter_vmap(Block)(keys()))
    assert larix.tree_equal(by_vmap, stacked)


def test_outputs_match_the_unrolled_model(stacked):
    x = jnp.linspace(-1.0, 1.0, WIDTH)
    unrolled = unroll(stacked)
    np.testing.assert_allclose(stacked(x), unrolled(x), rtol=1e-6, atol=1e-6)
    jitted = larix.filter_jit(lambda m, x: m(x, gain=0.5))
    np.testing.assert_allclose(jitted(stacked, x), jitted(unrolled, x), rtol=1e-6, atol=1e-6)


def test_gradients_match_the_unrolled_model(stacked):
    x = jnp.linspace(-1.0, 1.0, WIDTH)
    grad = larix.filter_jit(larix.filter_grad(loss))
    got = grad(stacked, x)
    want = grad(unroll(stacked), x)
    assert isinstance(got, larix.Stacked)
    assert got.block.scale is None and got.block.steps is None  # not differentiated
    for name in ("weight", "bias"):
        want_stacked = jnp.stack([getattr(b, name) for b in want.blocks])
        np.testing.assert_allclose(getattr(got.block, name), want_stacked, rtol=1e-5, atol=1e-6)
    # And an optimiser step on the stacked model is the step on each layer.
    updated = larix.apply_updates(stacked, jax.tree_util.tree_map(lambda g: -0.1 * g, got))
    assert larix.tree_equal(updated[2].weight, stacked[2].weight - 0.1 * want.blocks[2].weight, rtol=1e-5, atol=1e-6)


def test_the_block_is_traced_once(stacked):
    x = jnp.ones(WIDTH)
    traces.clear()
    jax.make_jaxpr(lambda m, x: m(x))(stacked, x)
    assert len(traces) == 1
    traces.clear()
    jax.make_jaxpr(lambda m, x: m(x))(unroll(stacked), x)
    assert len(traces) == NUM_LAYERS


def test_static_fields_apply_to_every_layer():
    relu_blocks = larix.stack(lambda k: Block(k, activation=jax.nn.relu), keys())
    assert relu_blocks.block.activation is jax.nn.relu
    x = jnp.linspace(-1.0, 1.0, WIDTH)
    np.testing.assert_allclose(relu_blocks(x), unroll(relu_blocks)(x), rtol=1e-6, atol=1e-6)
    # Changing the static field changes the function, as it would unrolled.
    tanh_blocks = larix.stack(Block, keys())
    assert not np.allclose(relu_blocks(x), tanh_blocks(x))


def test_extra_arguments_reach_every_block(stacked):
    x = jnp.linspace(-1.0, 1.0, WIDTH)
    np.testing.assert_allclose(stacked(x, 0.25), unroll(stacked)(x, 0.25), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stacked(x, gain=0.0), x)


class PairBlock(larix.Module):
    weight: jax.Array

    def __call__(self, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        h, total = carry
        h = jnp.tanh(self.weight * h)
        return h, total + h.sum()


def test_pytree_carry():
    blocks = larix.stack(lambda k: PairBlock(jax.random.normal(k, (3,))), keys(4))
    h, total = blocks((jnp.ones(3), jnp.zeros(())))
    want_h, want_total = jnp.ones(3), jnp.zeros(())
    for i in range(4):
        want_h, want_total = blocks[i]((want_h, want_total))
    np.testing.assert_allclose(h, want_h, rtol=1e-6)
    np.testing.assert_allclose(total, want_total, rtol=1e-6)


def test_indexing_and_slicing(stacked):
    assert larix.tree_equal(stacked[-1], stacked[NUM_LAYERS - 1])
    head = stacked[:2]
    assert isinstance(head, larix.Stacked) and len(head) == 2
    x = jnp.ones(WIDTH)
    np.testing.assert_allclose(stacked[2:](head(x)), stacked(x), rtol=1e-6, atol=1e-6)
    with pytest.raises(IndexError, match="layer 5 does not exist; there are 5 layers"):
        stacked[NUM_LAYERS]


def test_stacked_works_under_filter_jit_without_retracing(stacked):
    @larix.filter_jit
    def step(model, x):
        grads = larix.filter_grad(loss)(model, x)
        return larix.apply_updates(model, jax.tree_util.tree_map(lambda g: -0.01 * g, grads))

    model = stacked
    for _ in range(3):
        model = step(model, jnp.ones(WIDTH))
    assert larix.debug.get_num_traces(step) == 1
    assert model.block.scale == 0.5 and model.block.activation is jnp.tanh


def test_errors():
    with pytest.raises(ValueError, match=r"block\['b'\] has 3 layers \(shape \(3, 2\)\) but block\['a'\] has 4"):
        larix.Stacked({"a": jnp.ones((4, 2)), "b": jnp.ones((3, 2))})
    for no_layers in ({"a": 1.0}, {"a": jnp.ones(())}):
        with pytest.raises(ValueError, match="no arrays with a leading layer axis"):
            larix.Stacked(no_layers)
    with pytest.raises(TypeError, match="make_block must be a function"):
        larix.stack(Block(jax.random.key(0)).weight, keys())
    shrinking = larix.stack(lambda k: Shrink(jax.random.normal(k, (3,))), keys(2))
    with pytest.raises(TypeError, match="each block must return an output with the structure"):
        shrinking(jnp.ones((3,)))


class Shrink(larix.Module):
    weight: jax.Array

    def __call__(self, x: jax.Array) -> jax.Array:
        return (self.weight * x)[:-1]


def test_zero_dimensional_arrays_are_shared(stacked):
    # Under jax.jit a whole model's Python floats become 0-d arrays: shared, not scanned.
    x = jnp.linspace(-1.0, 1.0, WIDTH)
    out = jax.jit(lambda m, x: m(x))(stacked, x)
    np.testing.assert_allclose(out, unroll(stacked)(x), rtol=1e-6, atol=1e-6)
    with_array_scale = larix.tree_at(lambda s: s.block.scale, stacked, jnp.asarray(0.5))
    assert len(with_array_scale) == NUM_LAYERS
    assert with_array_scale[1].scale is with_array_scale.block.scale
