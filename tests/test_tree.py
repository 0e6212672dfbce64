"""Tests for larix._tree: tree_at, tree_equal, apply_updates, tree_flatten_one_level,
tree_check and if_array."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import larix
from conftest import Box, Linear, Pair, get_at, is_none, leaves, make_linear, node_paths, pytrees

# --------------------------------------------------------------------------- tree_at


def test_tree_at_replaces_a_leaf_out_of_place():
    tree = {"a": 1, "b": [2, 3]}
    new = larix.tree_at(lambda t: t["b"][0], tree, 20)
    assert new == {"a": 1, "b": [20, 3]}
    assert tree == {"a": 1, "b": [2, 3]}


def test_tree_at_on_a_module_field():
    lin = make_linear()
    new = larix.tree_at(lambda m: m.bias, lin, jnp.zeros(3))
    assert type(new) is Linear
    assert new.weight is lin.weight
    assert float(jnp.sum(jnp.abs(new.bias))) == 0.0
    assert float(jnp.sum(jnp.abs(lin.bias))) != 0.0
    assert new.activation == lin.activation


def test_tree_at_replaces_a_subtree_and_the_root():
    tree = Pair([1, 2], {"x": 3})
    new = larix.tree_at(lambda t: t.a, tree, Box(9))
    assert new.a == Box(9) and new.b == {"x": 3}
    assert larix.tree_at(lambda t: t, tree, "whole") == "whole"


def test_tree_at_several_nodes_and_replace_fn():
    tree = {"a": 1, "b": [2, 3], "c": 4}
    assert larix.tree_at(lambda t: (t["a"], t["b"][1]), tree, (10, 30)) == {"a": 10, "b": [2, 30], "c": 4}
    assert larix.tree_at(lambda t: [t["a"], t["c"]], tree, replace_fn=lambda x: -x) == {
        "a": -1,
        "b": [2, 3],
        "c": -4,
    }
    assert larix.tree_at(lambda t: t["b"], tree, replace_fn=lambda b: [*b, 4]) == {"a": 1, "b": [2, 3, 4], "c": 4}


def test_tree_at_none_fields_and_is_leaf():
    lin = Linear(jnp.ones((2, 2)), None)
    new = larix.tree_at(lambda m: m.bias, lin, jnp.zeros(2))
    assert new.bias.shape == (2,)
    back = larix.tree_at(lambda m: m.bias, new, None)
    assert back.bias is None
    tree = [(1, 2), 3]
    new = larix.tree_at(lambda t: t[0], tree, replace_fn=lambda p: p[::-1], is_leaf=lambda x: isinstance(x, tuple))
    assert new == [(2, 1), 3]


def test_tree_at_repeated_leaf_objects_are_distinct_positions():
    x = jnp.ones(2)
    tree = [x, x, 5, 5]
    new = larix.tree_at(lambda t: t[1], tree, "y")
    assert new[0] is x and new[1] == "y"
    again = larix.tree_at(lambda t: t[3], tree, 6)
    assert again[0] is x and again[1] is x and again[2:] == [5, 6]


def test_tree_at_inside_jit():
    @jax.jit
    def f(m, b):
        return larix.tree_at(lambda m: m.bias, m, b)(jnp.ones(4))

    lin = make_linear()
    np.testing.assert_allclose(f(lin, jnp.zeros(3)), lin.weight @ jnp.ones(4), rtol=1e-6)


def test_tree_at_matches_equinox():
    eqx = pytest.importorskip("equinox")
    tree = {"a": [1, (2, 3)], "m": Pair(make_linear(), None)}
    cases = [
        (lambda t: t["a"][1][0], 20),
        (lambda t: t["m"].a.bias, jnp.zeros(3)),
        (lambda t: t["m"].b, 5.0),
        (lambda t: (t["a"][0], t["m"].a), (0, "layer")),
    ]
    for where, value in cases:
        ours = larix.tree_at(where, tree, value)
        theirs = eqx.tree_at(where, tree, value, is_leaf=is_none)
        assert jtu.tree_structure(ours) == jtu.tree_structure(theirs)
        assert bool(larix.tree_equal(ours, theirs))


def test_tree_at_needs_exactly_one_of_replace_and_replace_fn():
    for kwargs in ({}, {"replace": 1, "replace_fn": lambda x: x}):
        with pytest.raises(ValueError, match="exactly one of `replace=` and `replace_fn=`"):
            larix.tree_at(lambda t: t[0], [1], **kwargs)


def test_tree_at_selecting_a_node_twice_names_the_path():
    tree = {"a": 1, "b": [2, 3]}
    with pytest.raises(ValueError, match=r"selected tree\['b'\]\[0\] twice"):
        larix.tree_at(lambda t: (t["b"][0], t["b"][0]), tree, (1, 2))


def test_tree_at_selecting_nested_nodes_names_both_paths():
    tree = {"a": 1, "b": [2, 3]}
    with pytest.raises(ValueError) as info:
        larix.tree_at(lambda t: (t["b"][1], t["b"]), tree, (1, 2))
    message = str(info.value)
    assert "both tree['b'] and tree['b'][1], which is inside it" in message
    assert "Select one or the other" in message


def test_tree_at_where_that_uses_values_is_explained():
    tree = {"w": jnp.ones(3), "n": 2}
    for where in (
        lambda t: t["w"].shape,
        lambda t: t["n"] + 1,
        lambda t: t["w"] if t["n"] > 1 else t["n"],
        lambda t: t["w"] if t["n"] == 1 else t["n"],
        lambda t: -t["w"],
        lambda t: t["w"] @ t["w"],
        lambda t: t["w"][0],
        lambda t: jnp.asarray(t["w"]),
    ):
        with pytest.raises(ValueError) as info:
            larix.tree_at(where, tree, 0)
        message = str(info.value)
        assert "`where` used the value of a leaf" in message
        assert "lambda m: m.layers[0].weight" in message  # shows the fix


def test_tree_at_where_returning_a_foreign_object():
    tree = {"a": 1}
    with pytest.raises(TypeError, match=r"`where` returned 5, which is not a node of the tree"):
        larix.tree_at(lambda t: 5, tree, 0)
    with pytest.raises(TypeError, match=r"returned \[1\], which is not a node.*not new objects"):
        larix.tree_at(lambda t: [t["a"], [1]], tree, (0, 0))


def test_tree_at_static_field_is_explained():
    # Regression: a static string was taken for a sequence of nodes, and the error named
    # its first character ('r').
    lin = Linear(jnp.ones((2, 2)), jnp.ones(2), activation="relu")
    with pytest.raises(TypeError) as info:
        larix.tree_at(lambda m: m.activation, lin, "gelu")
    message = str(info.value)
    assert "returned 'relu', which is not a node" in message
    assert "Static fields are part of the structure" in message


def test_tree_at_replace_count_mismatch_is_value_error():
    with pytest.raises(ValueError) as info:
        larix.tree_at(lambda t: (t[0], t[1]), [1, 2], (5,))
    message = str(info.value)
    assert "selected 2 nodes, so `replace` must be a sequence of 2 values" in message
    assert "got 1: (5,)" in message


@pytest.mark.parametrize("replace", [5, np.array(7), None, object()])
def test_tree_at_replace_without_length_is_type_error(replace):
    # Regression: larix raised ValueError where Equinox raises TypeError.
    with pytest.raises(TypeError) as info:
        larix.tree_at(lambda t: (t[0], t[1]), [1, 2], replace)
    message = str(info.value)
    assert "selected 2 nodes, so `replace` must be a sequence of 2 values" in message
    assert "which has no length" in message
    assert "replace_fn=lambda _: value" in message  # the fix for one value everywhere


def test_tree_at_replace_errors_have_equinox_types():
    eqx = pytest.importorskip("equinox")
    where = lambda t: (t[0], t[1])  # noqa: E731
    for replace in (5, np.array(7), (5,), (1, 2, 3)):
        with pytest.raises(Exception) as theirs:
            eqx.tree_at(where, [1, 2, 3], replace)
        with pytest.raises(Exception) as ours:
            larix.tree_at(where, [1, 2, 3], replace)
        assert type(ours.value) is type(theirs.value)


@pytest.mark.parametrize(
    "replace",
    ["ab", [7, 8], np.array([7, 8]), jnp.array([7.0, 8.0]), {"x": 1, "y": 2}, range(7, 9)],
    ids=["str", "list", "numpy", "jax", "dict", "range"],
)
def test_tree_at_replace_is_anything_with_a_length_like_equinox(replace):
    eqx = pytest.importorskip("equinox")
    ours = larix.tree_at(lambda t: (t[0], t[1]), [1, 2, 3], replace)
    theirs = eqx.tree_at(lambda t: (t[0], t[1]), [1, 2, 3], replace)
    assert larix.tree_equal(ours, theirs, typematch=True) is not False
    assert ours[2] == 3 and all(bool(a == b) for a, b in zip(ours, theirs))


@pytest.mark.parametrize(
    ("where", "tree", "replace"),
    [
        (lambda t: t[1], [(), ()], 5),
        (lambda t: t["a"], {"a": (), "b": ()}, 1),
        (lambda t: (t[0], t[1]), [(), ()], (5, 6)),
        (lambda t: t[0][1], [(1, ()), ()], "x"),
        (lambda t: t, (), 5),
        (lambda t: (), [(), 1], ()),  # `where` returns no node at all
    ],
)
def test_tree_at_selects_one_of_several_empty_tuples_like_equinox(where, tree, replace):
    # Regression: Python shares one `()` object, so larix called such a selection
    # ambiguous; Equinox tells the positions apart, and so does larix now.
    eqx = pytest.importorskip("equinox")
    ours = larix.tree_at(where, tree, replace)
    assert ours == eqx.tree_at(where, tree, replace)
    assert jtu.tree_structure(ours) == jtu.tree_structure(eqx.tree_at(where, tree, replace))


def test_tree_at_where_using_tree_functions_does_not_see_empty_tuples_as_leaves():
    tree = {"a": 1, "b": (), "c": [2, ()]}
    new = larix.tree_at(lambda t: jtu.tree_leaves(t), tree, [10, 20])
    assert new == {"a": 10, "b": (), "c": [20, ()]}
    assert jtu.tree_structure(new) == jtu.tree_structure(tree)


def test_tree_at_empty_tuple_with_replace_fn_sees_the_empty_tuple():
    seen = []
    new = larix.tree_at(lambda t: t["b"], {"a": (), "b": ()}, replace_fn=lambda old: seen.append(old) or [0])
    assert new == {"a": (), "b": [0]}
    assert seen == [()] and type(seen[0]) is tuple  # the original, not the stand-in


class _Interned:
    """A childless pytree node whose unflatten always returns the same object."""


_INTERNED = _Interned()
jtu.register_pytree_node(_Interned, lambda x: ((), None), lambda aux, children: _INTERNED)


def test_tree_at_node_that_unflattens_to_a_shared_object_is_ambiguous():
    with pytest.raises(ValueError) as info:
        larix.tree_at(lambda t: t[0], [_INTERNED, _INTERNED], 1)
    message = str(info.value)
    assert "a _Interned node that occurs more than once in the tree as the very same object" in message
    assert "Select its parent instead" in message
    # once in the tree, it has one position
    assert larix.tree_at(lambda t: t[0], [_INTERNED, 1], 0) == [0, 1]
    # an empty list is a fresh object, so it can be selected
    assert larix.tree_at(lambda t: t["a"], {"a": [], "b": []}, 1) == {"a": 1, "b": []}


def test_tree_at_missing_key_is_python_error():
    with pytest.raises(KeyError, match="'c'"):
        larix.tree_at(lambda t: t["c"], {"a": 1}, 0)


def _where_from(path):
    return lambda t: get_at(t, path)


@given(pytrees, st.data())
def test_tree_at_replace_then_read_round_trip(tree, data):
    flat = jtu.tree_flatten_with_path(tree)[0]
    if not flat:
        return
    index = data.draw(st.integers(0, len(flat) - 1))
    path = flat[index][0]
    marker = object()
    new = larix.tree_at(_where_from(path), tree, marker)
    assert get_at(new, path) is marker
    new_flat, new_def = jtu.tree_flatten_with_path(new)
    assert new_def == jtu.tree_structure(tree)
    for j, ((p, old), (q, value)) in enumerate(zip(flat, new_flat)):
        assert p == q
        assert value is (marker if j == index else old)
    # the input is untouched
    assert get_at(tree, path) is flat[index][1]


@given(pytrees, st.data())
def test_tree_at_replace_any_node_round_trip(tree, data):
    nodes = node_paths(tree)  # empty tuples included, though Python shares one `()`
    if not nodes:
        return
    path, node = data.draw(st.sampled_from(nodes))
    # As in Equinox, a None is selectable as a node only when it is the only one; with
    # `is_leaf=lambda x: x is None` every None is (see the test of Nones above).
    kwargs = {"is_leaf": is_none} if node is None else {}
    replacement = data.draw(leaves)
    new = larix.tree_at(_where_from(path), tree, replacement, **kwargs)
    assert get_at(new, path) is replacement
    # replace_fn sees the old node
    seen = []
    larix.tree_at(_where_from(path), tree, replace_fn=lambda old: seen.append(old) or old, **kwargs)
    assert len(seen) == 1 and seen[0] is node
    # putting the old node back gives the original tree
    assert bool(larix.tree_equal(larix.tree_at(_where_from(path), new, node, **kwargs), tree))


# --------------------------------------------------------------------------- tree_equal


def test_tree_equal_examples():
    assert larix.tree_equal([1, "a"], [1, "a"]) is True
    assert larix.tree_equal([1, "a"], [1, "b"]) is False
    assert larix.tree_equal([1], (1,)) is False
    assert larix.tree_equal({"a": 1}, {"b": 1}) is False
    assert larix.tree_equal() is True
    assert larix.tree_equal(3) is True
    assert larix.tree_equal(1, 1, 1) is True
    assert larix.tree_equal(1, 1, 2) is False
    assert larix.tree_equal(1, 1.0) is True
    assert larix.tree_equal(1, 1.0, typematch=True) is False


def test_tree_equal_arrays():
    a = jnp.arange(3.0)
    assert bool(larix.tree_equal(a, jnp.arange(3.0)))
    assert not bool(larix.tree_equal(a, a + 1))
    assert larix.tree_equal(a, jnp.arange(4.0)) is False  # shape
    assert larix.tree_equal(a, jnp.arange(3)) is False  # dtype
    assert larix.tree_equal(a, [0.0, 1.0, 2.0]) is False  # array vs non-array
    assert bool(larix.tree_equal(np.arange(3), np.arange(3)))
    assert bool(larix.tree_equal(np.arange(3.0, dtype=np.float32), a))
    assert not bool(larix.tree_equal(a, a + 1e-4))
    assert bool(larix.tree_equal(a, a + 1e-4, atol=1e-3))
    assert bool(larix.tree_equal(a + 1, (a + 1) * (1 + 1e-4), rtol=1e-3))
    assert bool(larix.tree_equal([a, 1], [a, 1], [a, 1]))


def test_tree_equal_under_jit_returns_traced_bool():
    @jax.jit
    def f(x, y):
        out = larix.tree_equal({"x": x, "n": 1}, {"x": y, "n": 1})
        assert isinstance(out, jax.Array)
        return out

    assert bool(f(jnp.ones(2), jnp.ones(2)))
    assert not bool(f(jnp.ones(2), jnp.zeros(2)))


def test_tree_equal_modules_and_static_fields():
    lin = make_linear()
    assert bool(larix.tree_equal(lin, make_linear()))
    assert larix.tree_equal(lin, Linear(lin.weight, lin.bias, activation="x")) is False


def test_tree_equal_unusual_eq_is_false_not_error():
    class Weird:
        def __eq__(self, other):
            raise RuntimeError("no")

    w = Weird()
    assert larix.tree_equal([w], [w]) is False


@given(pytrees)
def test_tree_equal_is_reflexive(tree):
    assert bool(larix.tree_equal(tree, tree))
    assert bool(larix.tree_equal(tree, jtu.tree_map(lambda x: x, tree)))


@given(pytrees, pytrees)
def test_tree_equal_is_symmetric(a, b):
    assert bool(larix.tree_equal(a, b)) == bool(larix.tree_equal(b, a))


def _same_result(ours, theirs):
    """Equal results of the same kind: both Python bools, or both JAX boolean scalars."""
    if isinstance(theirs, bool):
        return type(ours) is bool and ours == theirs
    return isinstance(ours, jax.Array) and ours.shape == () and bool(ours) == bool(theirs)


_EQUAL_CASES = [
    ((1, 1), {}),
    ((1, 2), {}),
    ((np.ones(2), np.ones(2)), {}),
    ((np.ones(2), np.zeros(2)), {}),
    ((np.float32(1), np.float32(1)), {}),
    ((np.float32(1), np.array(1, np.float32)), {}),
    ((np.float32(1), 1.0), {}),
    ((jnp.ones(2), jnp.ones(2)), {}),
    ((jnp.ones(2), jnp.zeros(2)), {}),
    ((np.ones(2, np.float32), jnp.ones(2)), {}),
    ((jnp.ones(2), np.ones(2, np.float32)), {"typematch": True}),
    (([np.ones(1), jnp.ones(2)], [np.zeros(1), jnp.ones(2)]), {}),
    (([1, jnp.ones(2)], [1, jnp.ones(2)]), {}),
    ((jnp.ones(()), 1.0), {}),
    ((1, True), {}),
    ((1, True), {"typematch": True}),
    ((float("nan"), float("nan")), {}),
    ((jnp.arange(3), jnp.arange(3) + 1), {"atol": 5}),
    ((np.arange(3), np.arange(3) + 1), {"atol": 5}),
    ((jnp.ones(2), jnp.ones(2) + 1e-3), {"atol": 1e-2}),
    ((np.ones(2), np.ones(2) + 1e-3), {"rtol": 1e-2}),
    ((np.ones(2), np.ones(2) + 1e-3), {"rtol": jnp.array(1e-2)}),
    ((np.ones(2), np.ones(2) + 1e-3), {"rtol": jnp.array(0.0)}),
    ((jnp.ones(2, jnp.bfloat16), jnp.ones(2, jnp.bfloat16) * 1.01), {"rtol": 1e-1}),
    ((jax.random.key(0), jax.random.key(0)), {}),
    ((None, None), {}),
    (("a", "a"), {}),
]


@pytest.mark.parametrize(("trees", "kwargs"), _EQUAL_CASES)
def test_tree_equal_result_and_its_type_match_equinox(trees, kwargs):
    # Regression: two NumPy arrays gave a NumPy bool (Equinox: a Python bool), and
    # tolerances were applied to integer arrays (Equinox compares them exactly).
    eqx = pytest.importorskip("equinox")
    ours, theirs = larix.tree_equal(*trees, **kwargs), eqx.tree_equal(*trees, **kwargs)
    assert _same_result(ours, theirs), (ours, theirs)


def test_tree_equal_return_types():
    assert larix.tree_equal({"n": 1, "w": np.ones(2)}, {"n": 1, "w": np.ones(2)}) is True
    assert larix.tree_equal(np.ones(2), np.zeros(2)) is False
    out = larix.tree_equal(jnp.ones(2), jnp.ones(2))
    assert isinstance(out, jax.Array) and out.dtype == jnp.bool_ and out.shape == ()
    # a JAX value difference is an array (it may be traced), not an early False
    assert larix.tree_equal(jnp.ones(2), jnp.zeros(2)) is not False
    assert not bool(larix.tree_equal(jnp.ones(2), jnp.zeros(2)))


def test_tree_equal_tolerances_apply_to_inexact_arrays_only():
    assert larix.tree_equal(np.arange(3), np.arange(3) + 1, atol=5) is False
    assert not bool(larix.tree_equal(jnp.arange(3), jnp.arange(3) + 1, atol=5))
    assert larix.tree_equal(np.ones(2), np.ones(2) + 1e-3, atol=1e-2) is True
    assert bool(larix.tree_equal(jnp.ones(2), jnp.ones(2) + 1e-3, rtol=1e-2))


def test_tree_equal_with_traced_tolerances():
    # Regression: a traced rtol raised TracerBoolConversionError.
    @jax.jit
    def f(rtol):
        return (
            larix.tree_equal(jnp.ones(2), jnp.ones(2) + 1e-3, rtol=rtol),
            larix.tree_equal(np.ones(2), np.ones(2) + 1e-3, rtol=rtol),
        )

    close, close_np = f(1e-2)
    assert bool(close) and bool(close_np)
    far, far_np = f(0.0)
    assert not bool(far) and not bool(far_np)


def test_tree_equal_with_scalars():
    assert larix.tree_equal(1, 1.0) is True
    assert larix.tree_equal(1, 1.0, typematch=True) is False
    assert larix.tree_equal(1.0, 1.0 + 1e-9, atol=1e-3) is False  # Python floats use ==
    assert larix.tree_equal(np.float32(1), 1.0) is False  # an array is not a Python float
    assert larix.tree_equal(np.float64(1), np.float64(1 + 1e-9), atol=1e-6) is True
    assert bool(larix.tree_equal(jnp.float32(1), jnp.float32(1)))


@given(pytrees, pytrees, st.sampled_from([{}, {"typematch": True}, {"atol": 1e-3}, {"rtol": 1e-2}]))
def test_tree_equal_matches_equinox(a, b, kwargs):
    eqx = pytest.importorskip("equinox")
    assert _same_result(larix.tree_equal(a, b, **kwargs), eqx.tree_equal(a, b, **kwargs))
    assert _same_result(larix.tree_equal(a, a, **kwargs), eqx.tree_equal(a, a, **kwargs))


# --------------------------------------------------------------------------- tree_allclose


def _equinox_tree_allclose(x, y, *, rtol=1e-5, atol=1e-8):
    # The helper of Equinox's test suite (tests/helpers.py), which larix.tree_allclose matches.
    eqx = pytest.importorskip("equinox")
    return eqx.tree_equal(x, y, typematch=True, rtol=rtol, atol=atol)


def test_tree_allclose():
    a = {"w": jnp.ones(3), "n": 2}
    assert bool(larix.tree_allclose(a, {"w": jnp.ones(3) + 1e-7, "n": 2}))
    assert not bool(larix.tree_allclose(a, {"w": jnp.ones(3) + 1e-3, "n": 2}))
    assert bool(larix.tree_allclose(a, {"w": jnp.ones(3) + 1e-3, "n": 2}, atol=1e-2))
    assert bool(larix.tree_allclose(a, {"w": jnp.ones(3) * 1.001, "n": 2}, rtol=1e-2))
    assert larix.tree_allclose(a, {"w": jnp.ones(3), "n": 3}) is False
    # leaf types must match, as in Equinox's helper
    assert larix.tree_allclose(1, 1.0) is False
    assert larix.tree_allclose(jnp.ones(2), np.ones(2, np.float32)) is False
    assert larix.tree_allclose(np.ones(2), np.ones(2) + 1e-9) is True


def test_tree_allclose_tolerances_are_keyword_only():
    with pytest.raises(TypeError):
        larix.tree_allclose(1.0, 1.0, 1e-3)  # type: ignore[misc]


@given(pytrees, pytrees)
def test_tree_allclose_matches_equinox_helper(a, b):
    assert _same_result(larix.tree_allclose(a, b), _equinox_tree_allclose(a, b))
    assert _same_result(larix.tree_allclose(a, a, atol=1.0), _equinox_tree_allclose(a, a, atol=1.0))


# --------------------------------------------------------------------------- apply_updates


def test_apply_updates_adds_and_skips_none():
    model = {"w": jnp.ones(2), "n": 3, "act": "relu"}
    updates = {"w": jnp.full(2, 0.5), "n": None, "act": None}
    new = larix.apply_updates(model, updates)
    np.testing.assert_allclose(new["w"], 1.5)
    assert new["n"] == 3 and new["act"] == "relu"


def test_apply_updates_on_module_with_partition():
    lin = make_linear()
    params, _ = larix.partition(lin, larix.is_inexact_array)
    updates = jtu.tree_map(jnp.ones_like, params)
    new = larix.apply_updates(lin, updates)
    assert type(new) is Linear
    np.testing.assert_allclose(new.weight, lin.weight + 1)
    assert new.activation == lin.activation


def test_apply_updates_with_optax():
    optax = pytest.importorskip("optax")
    model = Pair(make_linear(), 3, tag="t")
    params = larix.filter(model, larix.is_inexact_array)
    optimiser = optax.sgd(0.1)
    state = optimiser.init(params)

    def loss(p):
        return jnp.sum(larix.combine(p, model).a(jnp.ones(4)) ** 2)

    grads = jax.grad(loss)(params)
    updates, state = optimiser.update(grads, state, params)
    new = larix.apply_updates(model, updates)
    np.testing.assert_allclose(new.a.weight, model.a.weight - 0.1 * grads.a.weight, rtol=1e-6)
    assert new.b == 3
    assert loss(larix.filter(new, larix.is_inexact_array)) < loss(params)


def test_apply_updates_structure_mismatch_names_the_path():
    with pytest.raises(ValueError, match=r"\['b'\]"):
        larix.apply_updates({"a": 1.0, "b": [2.0]}, {"a": 1.0, "b": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"'c'"):
        larix.apply_updates({"a": 1.0, "b": 2.0}, {"a": 1.0, "c": 2.0})


def test_apply_updates_matches_equinox():
    eqx = pytest.importorskip("equinox")
    model = {"w": jnp.ones(2), "s": "x", "m": make_linear()}
    updates = {"w": jnp.ones(2), "s": None, "m": larix.filter(jtu.tree_map(lambda x: x, make_linear(seed=3)), True)}
    assert bool(larix.tree_equal(larix.apply_updates(model, updates), eqx.apply_updates(model, updates)))


# --------------------------------------------------------------------------- small helpers


def test_tree_flatten_one_level():
    children, treedef = larix.tree_flatten_one_level({"a": [1, 2], "b": 3})
    assert children == [[1, 2], 3]
    assert jtu.tree_unflatten(treedef, ["x", "y"]) == {"a": "x", "b": "y"}
    lin = make_linear()
    children, treedef = larix.tree_flatten_one_level(lin)
    assert children[0] is lin.weight and children[1] is lin.bias
    assert jtu.tree_unflatten(treedef, children).activation == lin.activation
    assert larix.tree_flatten_one_level(5) == ([5], jtu.tree_structure(5))
    assert larix.tree_flatten_one_level(None) == ([], jtu.tree_structure(None))


@given(pytrees)
def test_tree_flatten_one_level_matches_equinox(tree):
    eqx = pytest.importorskip("equinox")
    ours, our_def = larix.tree_flatten_one_level(tree)
    theirs, their_def = eqx.tree_flatten_one_level(tree)
    assert our_def == their_def
    assert len(ours) == len(theirs) and all(a is b for a, b in zip(ours, theirs))


def test_tree_check_accepts_well_formed_trees():
    x = jnp.ones(2)
    assert larix.tree_check({"a": x, "b": x, "c": [1, 1], "d": [], "e": []}) is None
    assert larix.tree_check(Pair(make_linear(), None)) is None


def test_tree_check_shared_node_names_both_paths():
    shared = [1]
    with pytest.raises(ValueError) as info:
        larix.tree_check({"p": shared, "q": {"r": shared}})
    message = str(info.value)
    assert "the same list appears at both tree['p'] and tree['q']['r']" in message
    assert "use distinct objects" in message
    layer = make_linear()
    with pytest.raises(ValueError, match=r"same Linear appears at both tree\.a and tree\.b"):
        larix.tree_check(Pair(layer, layer))


def test_tree_check_cycle_names_the_path():
    cyclic: list = [1]
    cyclic.append({"back": cyclic})
    with pytest.raises(ValueError, match=r"cycle at tree\[1\]\['back'\]"):
        larix.tree_check(cyclic)


def test_if_array():
    f = larix.if_array(1)
    assert f(jnp.ones(2)) == 1 and f(np.ones(2)) == 1
    assert f(1.0) is None and f("s") is None
    axes = jtu.tree_map(larix.if_array(0), {"w": jnp.ones((3, 2)), "n": 4})
    assert axes == {"w": 0, "n": None}
    out = jax.vmap(lambda t: t["w"].sum() + t["n"], in_axes=(axes,))({"w": jnp.ones((3, 2)), "n": 4})
    np.testing.assert_allclose(out, jnp.full(3, 6.0))


@given(leaves)
def test_if_array_matches_equinox(leaf):
    eqx = pytest.importorskip("equinox")
    assert larix.if_array(2)(leaf) == eqx.if_array(2)(leaf)


def test_tree_at_keeps_nones_as_nones_for_where_as_equinox_does():
    # diffrax selects `[x for x in t if x is not None]`: the Nones must not be selected.
    out = larix.tree_at(lambda t: [x for x in t if x is not None], [None, jnp.ones(2)], replace_fn=lambda x: x + 1)
    assert out[0] is None
    np.testing.assert_array_equal(out[1], 2 * np.ones(2))
    assert larix.tree_at(lambda t: t.a, Pair(None, 1), 5).a == 5  # the only None: selectable
    with pytest.raises(ValueError, match=r"has 2 None values.*is_leaf=lambda x: x is None"):
        larix.tree_at(lambda y: y[0], (None, None, 0), True)
    assert larix.tree_at(lambda y: y[0], (None, None, 0), True, is_leaf=lambda x: x is None) == (True, None, 0)
