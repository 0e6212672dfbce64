"""Tests of larix.nn.BatchApply (src/larix/nn/_batch_apply.py)."""

from __future__ import annotations

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest
from hypothesis import given, settings
from nn_helpers import close, key

import larix


class BatchedLinear(larix.Module):
    """A user's layer that takes a batch with one leading axis."""

    weight: jax.Array

    def __call__(self, x, scale=1.0):
        return scale * x @ self.weight


def test_merges_and_splits_leading_axes():
    seen = []

    def f(x):
        seen.append(x.shape)
        return x * 2, x.sum(-1)

    y, total = larix.nn.BatchApply(f)(jnp.arange(24.0).reshape(2, 3, 4))
    assert seen == [(6, 4)]
    assert y.shape == (2, 3, 4) and total.shape == (2, 3)
    assert close(y, jnp.arange(24.0).reshape(2, 3, 4) * 2)
    assert close(total, jnp.arange(24.0).reshape(2, 3, 4).sum(-1))


@pytest.mark.parametrize("num_dims", [1, 2, 3])
def test_num_dims(num_dims):
    x = jax.random.normal(key(), (2, 3, 4, 5))
    seen = []

    def f(v):
        seen.append(v.shape)
        return v + 1

    y = larix.nn.BatchApply(f, num_dims=num_dims)(x)
    assert seen[0][0] == int(np.prod(x.shape[:num_dims])) and seen[0][1:] == x.shape[num_dims:]
    assert close(y, x + 1)


def test_pytree_inputs_and_pass_through():
    seen = {}

    def f(inputs, bias, scale, nothing, *, name, mask):
        seen.update(x=inputs["x"].shape, y=inputs["y"].shape, bias=bias.shape, mask=mask.shape)
        assert scale == 3.0 and nothing is None and name == "label"
        return {"out": inputs["x"] * scale + bias, "mask": mask}

    x, y = jnp.ones((2, 5, 4)), jnp.ones((2, 5, 4, 7))
    out = larix.nn.BatchApply(f)({"x": x, "y": y}, jnp.arange(4.0), 3.0, None, name="label", mask=jnp.ones((2, 5)))
    # Arrays with at least 2 dimensions are merged, the bias (1-D) is passed through as is.
    assert seen == {"x": (10, 4), "y": (10, 4, 7), "bias": (4,), "mask": (10,)}
    assert out["out"].shape == (2, 5, 4) and out["mask"].shape == (2, 5)
    assert close(out["out"], 3 + jnp.arange(4.0) + jnp.zeros((2, 5, 4)))


def test_numpy_inputs():
    out = larix.nn.BatchApply(lambda v: v * 2)(np.ones((2, 3, 4)))
    assert out.shape == (2, 3, 4)


def test_none_output_is_fine():
    assert larix.nn.BatchApply(lambda v: (v, None))(jnp.ones((2, 3)))[1] is None


def test_zero_sized_leading_axis():
    assert larix.nn.BatchApply(lambda v: v + 1)(jnp.ones((0, 3, 4))).shape == (0, 3, 4)


def test_no_input_to_merge():
    apply = larix.nn.BatchApply(lambda *a: a)
    with pytest.raises(ValueError, match=r"num_dims=2\): no input is an array with at least 2 dimensions"):
        apply(jnp.ones(3), 1.0, None)
    with pytest.raises(ValueError, match="no input"):
        apply()


def test_leading_dims_must_agree_and_the_path_is_named():
    apply = larix.nn.BatchApply(lambda *a, **k: a[0])
    with pytest.raises(ValueError, match=r"args\[1\]\['x'\] has leading dimensions \(2, 4\), but args\[0\] has \(2, 3\)"):
        apply(jnp.ones((2, 3)), {"x": jnp.ones((2, 4, 1))})
    with pytest.raises(ValueError, match=r"kwargs\['mask'\] has leading dimensions \(3, 2\), but args\[0\]"):
        apply(jnp.ones((2, 3)), mask=jnp.ones((3, 2)))


def test_outputs_must_carry_the_merged_axis():
    x = jnp.ones((2, 3, 4))
    with pytest.raises(ValueError, match=r"output has shape \(\), but .* size 6 .*\(2, 3\)"):
        larix.nn.BatchApply(lambda v: v.sum())(x)
    with pytest.raises(ValueError, match=r"output\[1\]\['b'\] has shape \(4,\)"):
        larix.nn.BatchApply(lambda v: (v, {"a": v, "b": v[0]}))(x)
    with pytest.raises(ValueError, match=r"output has shape \(4, 6\)"):
        larix.nn.BatchApply(lambda v: v.T)(x)
    with pytest.raises(TypeError, match=r"output\[1\] is a str, not an array"):
        larix.nn.BatchApply(lambda v: (v, "label"))(x)
    with pytest.raises(TypeError, match=r"output\[1\] is a float"):
        larix.nn.BatchApply(lambda v: (v, 1.0))(x)


def test_bad_construction():
    with pytest.raises(ValueError, match=r"`num_dims` must be an int >= 1, got 0"):
        larix.nn.BatchApply(lambda v: v, num_dims=0)
    with pytest.raises(ValueError, match="num_dims"):
        larix.nn.BatchApply(lambda v: v, num_dims=True)
    with pytest.raises(TypeError, match=r"`f` must be callable, got int"):
        larix.nn.BatchApply(3)


def test_a_module_is_part_of_the_tree():
    layer = BatchedLinear(jax.random.normal(key(), (4, 5)))
    apply = larix.nn.BatchApply(layer, num_dims=2)
    assert [leaf.shape for leaf in jtu.tree_leaves(apply)] == [(4, 5)]
    x = jax.random.normal(key(1), (2, 3, 4))
    assert close(apply(x, 2.0), 2.0 * jnp.einsum("abi,io->abo", x, layer.weight), atol=1e-5)

    def loss(model, v):
        return jnp.sum(model(v) ** 2)

    grads = larix.filter_grad(loss)(apply, x)
    expected = jax.grad(lambda w: jnp.sum(jnp.einsum("abi,io->abo", x, w) ** 2))(layer.weight)
    assert close(grads.f.weight, expected, atol=1e-4)
    assert close(larix.filter_jit(lambda m, v: m(v))(apply, x), apply(x))
    stacked = jnp.stack([x, 2 * x])
    batched = larix.filter_vmap(lambda m, v: m(v), in_axes=(None, 0))(apply, stacked)
    assert close(batched[1], apply(2 * x), atol=1e-5)


def test_a_larix_layer_mapped_with_filter_vmap():
    linear = larix.nn.Linear(4, 3, key=key())
    apply = larix.nn.BatchApply(larix.filter_vmap(linear))
    x = jax.random.normal(key(1), (5, 2, 4))
    assert close(apply(x), jax.vmap(jax.vmap(linear))(x), atol=1e-5)
    grads = larix.filter_grad(lambda m, v: jnp.sum(m(v)))(apply, x)
    assert jtu.tree_leaves(grads)[0].shape == (3, 4)


def test_static_field_and_repr():
    apply = larix.nn.BatchApply(jnp.tanh, num_dims=3)
    assert apply.num_dims == 3 and "BatchApply" in repr(apply)
    assert jtu.tree_leaves(apply) == [jnp.tanh]


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=3), st.lists(st.integers(1, 3), max_size=2))
def test_same_as_mapping_over_every_leading_index(lead, rest):
    x = jnp.arange(float(np.prod(lead + rest))).reshape(lead + rest)
    inner = int(np.prod(rest))

    def f(v):
        assert v.shape == (int(np.prod(lead)), *rest)
        return v**2, v.reshape(v.shape[0], inner).sum(-1)

    squares, sums = larix.nn.BatchApply(f, num_dims=len(lead))(x)
    assert squares.shape == x.shape and sums.shape == tuple(lead)
    assert close(squares, x**2)
    assert close(sums, x.reshape(*lead, inner).sum(-1))
