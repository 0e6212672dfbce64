"""Tests for larix._paths: dotted and Python spellings of key paths, structure_mismatch."""

from __future__ import annotations

import collections

import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest
from hypothesis import given

from conftest import Box, Linear, Pair, get_at, pytrees
from larix._paths import dotted_path, entry_name, python_path, structure_mismatch

A, D, S, F = jtu.GetAttrKey, jtu.DictKey, jtu.SequenceKey, jtu.FlattenedIndexKey


def test_entry_name():
    assert entry_name(A("weight")) == "weight"
    assert entry_name(D("w")) == "w"
    assert entry_name(D(3)) == "3"
    assert entry_name(S(2)) == "2"
    assert entry_name(F(5)) == "5"
    assert entry_name("custom") == "custom"


def test_dotted_path():
    assert dotted_path(()) == ""
    assert dotted_path((A("layers"), S(0), A("weight"))) == "layers.0.weight"
    assert dotted_path((D("enc"), D("w"))) == "enc.w"


def test_python_path():
    assert python_path(()) == "tree"
    assert python_path((A("layers"), S(0), A("weight"))) == "tree.layers[0].weight"
    assert python_path((D("enc"), D(1)), root="model") == "model['enc'][1]"
    assert python_path((F(4),)) == "tree[<flat 4>]"


def test_paths_of_a_real_tree():
    tree = {"layers": [Linear(jnp.ones((2, 2)), jnp.ones(2))], "head": Box(1.0)}
    paths = [p for p, _ in jtu.tree_flatten_with_path(tree)[0]]
    assert [dotted_path(p) for p in paths] == ["head.value", "layers.0.weight", "layers.0.bias"]
    assert [python_path(p, "model") for p in paths] == [
        "model['head'].value",
        "model['layers'][0].weight",
        "model['layers'][0].bias",
    ]


def test_namedtuple_paths():
    Point = collections.namedtuple("Point", "x y")
    paths = [dotted_path(p) for p, _ in jtu.tree_flatten_with_path(Point(1, 2))[0]]
    assert paths == ["x", "y"]


@given(pytrees)
def test_dotted_paths_are_unique(tree):
    paths = [dotted_path(p) for p, _ in jtu.tree_flatten_with_path(tree)[0]]
    assert len(paths) == len(set(paths))


# --------------------------------------------------------------------------- structure_mismatch


def test_structure_mismatch_none_when_equal():
    assert structure_mismatch({"a": [1, 2]}, {"a": [3, 4]}) is None
    assert structure_mismatch(Pair(1, 2), Pair("x", "y")) is None
    assert structure_mismatch(1, 2) is None


def test_structure_mismatch_reasons_and_paths():
    assert structure_mismatch({"a": [1, 2]}, {"a": [1]}) == (
        (D("a"),),
        "children ['0', '1'] on one side, ['0'] on the other",
    )
    assert structure_mismatch([1, (2,)], [1, [2]]) == ((S(1),), "a tuple on one side, a list on the other")
    assert structure_mismatch({"a": 1}, {"a": [1]}) == ((D("a"),), "a leaf (1) on one side, a list on the other")
    assert structure_mismatch({"a": [1]}, {"a": 1}) == ((D("a"),), "a list on one side, a leaf (1) on the other")
    assert structure_mismatch(Pair(1, 2), Box(1)) == ((), "a Pair on one side, a Box on the other")


def test_structure_mismatch_names_the_changed_static_field():
    found = structure_mismatch([Linear(1, 2, activation="relu")], [Linear(1, 2, activation="gelu")])
    assert found == ((S(0), A("activation")), "static field changed: 'relu' -> 'gelu'")


def test_structure_mismatch_array_metadata_does_not_raise():
    # A static field holding an array: `==` gives an array, which counts as different.
    with pytest.warns(UserWarning, match="static field"):
        a, b = Box(1, scale=np.ones(2)), Box(1, scale=np.zeros(2))
    found = structure_mismatch(a, b)
    assert found is not None
    path, why = found
    assert path == (A("scale"),)
    assert why.startswith("static field changed: ") and "[2]" in why


def test_structure_mismatch_prefix():
    tree = {"a": [1, 2], "b": Pair(1, 2)}
    assert structure_mismatch({"a": True, "b": False}, tree, prefix=True) is None
    assert structure_mismatch(True, tree, prefix=True) is None
    assert structure_mismatch({"a": [True, False], "b": Pair(True, False)}, tree, prefix=True) is None
    assert structure_mismatch({"a": True}, tree, prefix=True) == (
        (),
        "children ['a'] on one side, ['a', 'b'] on the other",
    )
    # without prefix=True, a leaf does not match a subtree
    assert structure_mismatch({"a": True, "b": False}, tree) == (
        (D("a"),),
        "a leaf (True) on one side, a list on the other",
    )


def test_structure_mismatch_is_leaf():
    a, b = [(1, 2), 3], [(1,), 3]
    assert structure_mismatch(a, b) is not None
    assert structure_mismatch(a, b, is_leaf=lambda x: isinstance(x, tuple)) is None


def test_structure_mismatch_long_leaves_are_shortened():
    _, why = structure_mismatch(["x" * 100], [[1]])
    assert "..." in why
    assert len(why) < 120


@given(pytrees)
def test_structure_mismatch_none_for_same_structure(tree):
    assert structure_mismatch(tree, tree) is None
    assert structure_mismatch(tree, jtu.tree_map(lambda x: 0, tree)) is None
    assert structure_mismatch(True, tree, prefix=True) is None


@given(pytrees, pytrees)
def test_structure_mismatch_agrees_with_treedef_equality(a, b):
    same = jtu.tree_structure(a) == jtu.tree_structure(b)
    found = structure_mismatch(a, b)
    assert (found is None) == same
    if found is not None:
        path, why = found
        assert isinstance(why, str) and why
        # the path leads to a node in both trees, reachable with ordinary indexing
        for tree in (a, b):
            get_at(tree, tuple(k for k in path))


def test_broadcast_prefix_gives_each_tree_leaf_its_prefix_leaf_and_path():
    import jax.tree_util as jtu

    from larix._paths import PrefixMismatchError, broadcast_prefix

    tree = {"a": (1, 2), "b": {"c": 3, "d": None}}
    per_leaf = broadcast_prefix({"a": "A", "b": {"c": "C", "d": "D"}}, tree)
    assert [leaf for _, leaf in per_leaf] == ["A", "A", "C"]  # "D" covers no leaf
    assert per_leaf[0][0] == (jtu.DictKey("a"),)
    assert broadcast_prefix("everything", tree) == [((), "everything")] * 3
    with pytest.raises(PrefixMismatchError) as info:
        broadcast_prefix({"a": 0, "x": 0}, tree)
    assert isinstance(info.value, ValueError) and info.value.path == ()
    assert "['a', 'x']" in info.value.why
