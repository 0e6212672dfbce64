"""Tests for larix._partition: filter, n-way partition, combine and leaf_owners."""

from __future__ import annotations

import re
import warnings

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import larix
from conftest import (
    Box,
    Linear,
    Pair,
    expected_owners,
    filter_specs,
    is_none,
    make_linear,
    path_free_specs,
    pytrees,
    spec_selects,
)
from larix._partition import leaf_owners
from larix._paths import dotted_path

# --------------------------------------------------------------------------- examples


def test_two_way_partition_and_combine():
    tree = {"w": jnp.ones(2), "n": 3, "act": "relu"}
    arrays, rest = larix.partition(tree, larix.is_array)
    assert arrays == {"w": tree["w"], "n": None, "act": None}
    assert rest == {"w": None, "n": 3, "act": "relu"}
    assert larix.combine(arrays, rest) == tree


def test_n_way_partition_first_matching_spec_wins():
    tree = [jnp.ones(2), jnp.arange(2), 1.5, "s", 7]
    floats, arrays, scalars, rest = larix.partition(
        tree, larix.is_inexact_array, larix.is_array, larix.is_array_like
    )
    assert floats[0] is tree[0] and floats[1:] == [None] * 4
    assert arrays[1] is tree[1] and arrays[0] is None  # the float array went to part 0
    assert scalars == [None, None, 1.5, None, 7]
    assert rest == [None, None, None, "s", None]


def test_partition_with_many_specs_and_overlaps():
    tree = list(range(6))
    parts = larix.partition(tree, lambda x: x < 2, lambda x: x < 4, lambda x: x % 2 == 0)
    assert parts == (
        [0, 1, None, None, None, None],
        [None, None, 2, 3, None, None],
        [None, None, None, None, 4, None],
        [None, None, None, None, None, 5],
    )


def test_partition_of_module_keeps_type_and_static_fields():
    lin = Linear(jnp.ones((2, 2)), jnp.ones(2), activation="relu")
    params, static = larix.partition(lin, larix.is_array)
    assert type(params) is Linear and type(static) is Linear
    assert params.activation == "relu" and static.activation == "relu"
    assert static.weight is None and params.weight is lin.weight
    assert bool(larix.combine(params, static) == lin)


def test_partition_replace_and_is_leaf():
    tree = {"a": (1, 2), "b": 3.0}
    kept, rest = larix.partition(tree, larix.by_type(tuple), replace=0, is_leaf=lambda x: isinstance(x, tuple))
    assert kept == {"a": (1, 2), "b": 0}
    assert rest == {"a": 0, "b": 3.0}
    ints, floats = larix.partition(tree, larix.by_type(int), replace="-")
    assert ints == {"a": (1, 2), "b": "-"}
    assert floats == {"a": ("-", "-"), "b": 3.0}


def test_partition_keeps_none_nodes():
    tree = {"a": None, "b": [1, None]}
    left, right = larix.partition(tree, True)
    assert left == tree
    assert right == {"a": None, "b": [None, None]}
    assert larix.combine(left, right) == tree


def test_prefix_filter_spec():
    tree = {"encoder": [1, 2.0], "decoder": {"w": 3.0, "n": 4}}
    spec = {"encoder": True, "decoder": larix.by_type(float)}
    chosen, rest = larix.partition(tree, spec)
    assert chosen == {"encoder": [1, 2.0], "decoder": {"w": 3.0, "n": None}}
    assert rest == {"encoder": [None, None], "decoder": {"w": None, "n": 4}}


def test_prefix_spec_on_module_built_with_tree_at():
    model = Pair(make_linear(), Box(jnp.ones(2)))
    spec = jtu.tree_map(lambda _: False, model)
    spec = larix.tree_at(lambda m: m.a.bias, spec, True)
    bias, rest = larix.partition(model, spec)
    assert bias.a.bias is model.a.bias
    assert bias.a.weight is None and bias.b.value is None
    assert bool(larix.combine(bias, rest) == model)


def test_path_filters_inside_a_prefix_spec_see_full_paths():
    tree = {"enc": {"w": 1.0, "b": 2.0}, "dec": {"w": 3.0, "b": 4.0}}
    spec = {"enc": larix.by_path("enc.w"), "dec": larix.by_path("**.b")}
    chosen, _ = larix.partition(tree, spec)
    assert chosen == {"enc": {"w": 1.0, "b": None}, "dec": {"w": None, "b": 4.0}}


def test_filter_and_inverse():
    tree = [1, jnp.ones(2), "x"]
    kept = larix.filter(tree, larix.is_array)
    dropped = larix.filter(tree, larix.is_array, inverse=True)
    assert kept[0] is None and kept[1] is tree[1] and kept[2] is None
    assert dropped == [1, None, "x"]
    assert larix.filter(tree, larix.is_array, replace=0)[0] == 0
    assert larix.filter({"a": (1, 2)}, larix.by_type(tuple), is_leaf=lambda x: isinstance(x, tuple)) == {
        "a": (1, 2)
    }


def test_combine_first_non_none_wins_and_single_tree():
    assert larix.combine([1, None, None], [2, 3, None], [4, 5, 6]) == [1, 3, 6]
    assert larix.combine([1, None]) == [1, None]
    assert larix.combine({"a": None}, {"a": None}) == {"a": None}


def test_combine_is_leaf():
    a = [(1, 2), None]
    b = [None, (3,)]
    assert larix.combine(a, b, is_leaf=lambda x: isinstance(x, tuple)) == [(1, 2), (3,)]


def test_partition_and_combine_under_jit():
    model = make_linear()
    params, static = larix.partition(model, larix.is_array)

    @jax.jit
    def f(p):
        m = larix.combine(p, static)
        inner_params, inner_static = larix.partition(m, larix.is_inexact_array)
        return larix.combine(inner_params, inner_static)(jnp.ones(4))

    np.testing.assert_allclose(f(params), model(jnp.ones(4)), rtol=1e-6)


def test_leaf_owners():
    tree = {"a": 1, "b": [2.0, "s"], "c": jnp.ones(2)}
    leaves = jtu.tree_leaves(tree)
    specs = (larix.by_type(float), larix.by_path("b.*"), larix.is_array)
    assert leaf_owners(tree, leaves, specs, None) == [3, 0, 1, 2]
    assert leaf_owners(tree, leaves, (), None) == [0, 0, 0, 0]


def test_partition_matches_equinox_two_way():
    eqx = pytest.importorskip("equinox")
    model = Pair(make_linear(), [1, 2.5, "s", np.ones(2)])
    for spec in (larix.is_array, larix.is_inexact_array, True, lambda x: isinstance(x, float)):
        ours = larix.partition(model, spec)
        theirs = eqx.partition(model, spec)
        assert len(ours) == len(theirs) == 2
        for a, b in zip(ours, theirs):
            assert jtu.tree_structure(a, is_leaf=is_none) == jtu.tree_structure(b, is_leaf=is_none)
            assert bool(larix.tree_equal(a, b))
        assert bool(larix.tree_equal(larix.filter(model, spec), eqx.filter(model, spec)))


# --------------------------------------------------------------------------- errors


def test_partition_without_specs_is_type_error():
    with pytest.raises(TypeError, match=r"larix\.partition\(model, larix\.is_array\)"):
        larix.partition([1])


@pytest.mark.parametrize(
    ("spec", "where", "why"),
    [
        ({"a": True}, "at tree it has", "children ['a'] on one side, ['a', 'b'] on the other"),
        ({"a": True, "b": [True]}, r"at tree['b']", "children ['0'] on one side, ['0', '1'] on the other"),
        ({"a": True, "b": (True, False)}, r"at tree['b']", "a tuple on one side, a list on the other"),
        ({"a": [True], "b": True}, r"at tree['a']", "a list on one side, a leaf (1) on the other"),
    ],
)
def test_spec_not_a_prefix_names_the_path(spec, where, why):
    tree = {"a": 1, "b": [2, 3]}
    with pytest.raises(ValueError) as info:
        larix.partition(tree, True, spec)
    message = str(info.value)
    assert "Filter spec 1 is not a pytree prefix of the tree" in message
    assert where in message
    assert why in message
    assert "mirror the tree's structure" in message  # the fix
    with pytest.raises(ValueError, match="Filter spec 0 is not a pytree prefix"):
        larix.filter(tree, spec)


def test_spec_prefix_mismatch_inside_module_names_attribute_path():
    model = Pair(make_linear(), 1)
    spec = Pair({"weight": True}, True)
    with pytest.raises(ValueError, match=r"at tree\.a it has a dict on one side, a Linear on the other"):
        larix.partition(model, spec)


@pytest.mark.parametrize(
    ("spec", "where"),
    [
        (3, "the root of the filter spec"),
        ("**.bias", "the root of the filter spec"),
        ({"a": True, "b": [True, 3]}, "filter_spec['b'][1]"),
        ({"a": None, "b": True}, None),
    ],
)
def test_invalid_spec_leaf_names_the_path(spec, where):
    tree = {"a": 1, "b": [2, 3]}
    if where is None:
        # None is an empty subtree in JAX, so it is not a prefix of a leaf.
        with pytest.raises(ValueError, match=r"tree\['a'\]"):
            larix.partition(tree, spec)
        return
    with pytest.raises(ValueError) as info:
        larix.partition(tree, spec)
    message = str(info.value)
    assert f"Invalid filter spec at {where}" in message
    assert "bools and callables" in message


def test_bad_later_spec_raises_even_when_earlier_specs_take_every_leaf():
    # Regression: partition stopped evaluating specs once every leaf was assigned, so a bad
    # spec raised or not depending on the values in the tree.
    tree = {"a": 1, "b": [2, 3]}
    with pytest.raises(ValueError, match=r"Filter spec 1 is not a pytree prefix.*at tree\['b'\]"):
        larix.partition(tree, True, {"a": True, "b": (True, False)})
    with pytest.raises(ValueError, match=r"Invalid filter spec at the root of the filter spec: 3"):
        larix.partition(tree, True, False, 3)  # (a third-argument 3 would be Equinox's `replace`)
    with pytest.raises(ValueError, match=r"Invalid filter spec at filter_spec\['b'\]\[1\]: 3"):
        larix.partition(tree, larix.by_path("b.1"), {"a": True, "b": [True, 3]})
    with pytest.raises(ValueError, match=r"Invalid filter spec at filter_spec\['b'\]: 'x'"):
        larix.partition({"a": 1, "b": None}, {"a": True, "b": "x"})


def test_combine_fills_a_hole_of_the_first_tree_with_a_subtree():
    # As in Equinox: the first tree's structure decides, and a None there is a hole that
    # any subtree of a later tree may fill.
    assert larix.combine({"a": 1, "b": [2, None]}, {"a": None, "b": [None, [3]]}) == {"a": 1, "b": [2, [3]]}
    # A leaf of the first tree wins over whatever a later tree has there.
    assert larix.combine([1], [[2]]) == [1]


def test_combine_without_trees_is_type_error():
    with pytest.raises(TypeError, match="at least one pytree"):
        larix.combine()


@pytest.mark.parametrize(
    ("second", "where", "why"),
    [
        ({"a": None, "b": [None, 3, 4]}, r"tree['b']", "children ['0', '1'] on one side, ['0', '1', '2']"),
        ({"a": None, "c": [None, 3]}, "at tree there is", "children ['a', 'b'] on one side, ['a', 'c']"),
        ({"a": None, "b": (None, 3)}, r"tree['b']", "a list on one side, a tuple on the other"),
    ],
)
def test_combine_structure_mismatch_names_the_path(second, where, why):
    first = {"a": 1, "b": [2, None]}
    with pytest.raises(ValueError) as info:
        larix.combine(first, second)
    message = str(info.value)
    assert "tree 0 and tree 1 have different structures" in message
    assert where in message
    assert why in message
    assert "Combine only the parts that one partition" in message


def test_combine_mismatch_in_static_field_names_the_path():
    a = {"m": Linear(1, None, activation="relu")}
    b = {"m": Linear(None, 2, activation="gelu")}
    with pytest.raises(ValueError, match=r"at tree\['m'\]\.activation there is static field changed: 'relu' -> 'gelu'"):
        larix.combine(a, b)
    with pytest.raises(ValueError, match=r"at tree\[0\]\.tag there is static field changed: 'p' -> 'q'"):
        larix.combine([Pair(1, None, tag="p")], [Pair(None, 2, tag="q")])


def test_combine_mismatch_reports_later_tree_index():
    with pytest.raises(ValueError, match="tree 0 and tree 2"):
        larix.combine([1, None], [None, 2], [None])


# --------------------------------------------------------------------------- properties

spec_tuples = st.lists(filter_specs, min_size=1, max_size=3).map(tuple)


@given(pytrees, spec_tuples)
def test_partition_parts_are_disjoint_covering_and_first_match_wins(tree, specs):
    parts = larix.partition(tree, *specs)
    assert len(parts) == len(specs) + 1
    original, treedef = jtu.tree_flatten(tree, is_leaf=is_none)
    flat_parts = []
    for part in parts:
        part_leaves, part_def = jtu.tree_flatten(part, is_leaf=is_none)
        assert part_def == treedef  # same structure as the tree
        flat_parts.append(part_leaves)
    owners = iter(expected_owners(tree, specs))
    for position, leaf in enumerate(original):
        if leaf is None:  # an empty node of the tree, None in every part
            assert all(p[position] is None for p in flat_parts)
            continue
        holders = [i for i, p in enumerate(flat_parts) if p[position] is not None]
        assert holders == [next(owners)]
        assert flat_parts[holders[0]][position] is leaf


@given(pytrees, spec_tuples)
def test_combine_of_partition_is_the_tree(tree, specs):
    parts = larix.partition(tree, *specs)
    combined = larix.combine(*parts)
    assert jtu.tree_structure(combined) == jtu.tree_structure(tree)
    assert bool(larix.tree_equal(combined, tree))
    # The parts are disjoint, so their order does not matter.
    assert bool(larix.tree_equal(larix.combine(*reversed(parts)), tree))


@given(pytrees, filter_specs)
def test_filter_and_inverse_combine_to_the_tree(tree, spec):
    kept = larix.filter(tree, spec)
    dropped = larix.filter(tree, spec, inverse=True)
    assert bool(larix.tree_equal(larix.combine(kept, dropped), tree))
    first, second = larix.partition(tree, spec)
    assert bool(larix.tree_equal(first, kept))
    assert jtu.tree_structure(first, is_leaf=is_none) == jtu.tree_structure(kept, is_leaf=is_none)
    assert jtu.tree_structure(second, is_leaf=is_none) == jtu.tree_structure(dropped, is_leaf=is_none)


@given(pytrees, spec_tuples)
def test_partition_is_idempotent(tree, specs):
    parts = larix.partition(tree, *specs)
    for i, part in enumerate(parts):
        again = larix.partition(part, *specs)
        assert jtu.tree_structure(again[i], is_leaf=is_none) == jtu.tree_structure(part, is_leaf=is_none)
        assert bool(larix.tree_equal(again[i], part))
        for j, other in enumerate(again):
            if j != i:
                assert jtu.tree_leaves(other) == []


@given(pytrees, spec_tuples)
def test_prefix_spec_of_top_level_children(tree, specs):
    # A spec that mirrors the tree's first level, with a spec per child, selects like the
    # child's spec would on the child (with full paths).
    try:
        children, treedef = jtu.tree_flatten(tree, is_leaf=lambda x: x is not tree)
    except ValueError:
        return
    if treedef.num_nodes == 1:  # a leaf or an empty node: nothing to mirror
        return
    per_child = [specs[i % len(specs)] for i in range(len(children))]
    prefix = jtu.tree_unflatten(treedef, per_child)
    chosen, _ = larix.partition(tree, prefix)
    expected = []
    for child, spec, (path, _) in zip(children, per_child, jtu.tree_flatten_with_path(prefix)[0]):
        for sub_path, leaf in jtu.tree_flatten_with_path(child)[0]:
            expected.append(spec_selects(spec, dotted_path((*path, *sub_path)), leaf))
    got = [x is not None for x in jtu.tree_leaves(chosen, is_leaf=is_none)]
    original = jtu.tree_leaves(tree, is_leaf=is_none)
    assert [g for g, o in zip(got, original) if o is not None] == expected


@given(pytrees, path_free_specs)
def test_partition_matches_equinox_on_random_trees(tree, spec):
    eqx = pytest.importorskip("equinox")
    ours = larix.partition(tree, spec)
    theirs = eqx.partition(tree, spec)
    for a, b in zip(ours, theirs):
        assert jtu.tree_structure(a, is_leaf=is_none) == jtu.tree_structure(b, is_leaf=is_none)
        assert all(
            x is y for x, y in zip(jtu.tree_leaves(a, is_leaf=is_none), jtu.tree_leaves(b, is_leaf=is_none))
        )


# --------------------------------------------------------------------------- Equinox's positional `replace`


@pytest.mark.parametrize("replace", [None, 0, float("nan"), "-", jnp.zeros(())], ids=repr)
def test_positional_replace_is_a_type_error_that_shows_the_keyword(replace):
    # Equinox's signature is partition(pytree, filter_spec, replace=None, is_leaf=None);
    # larix reads a third positional argument as a second filter spec.
    tree = {"w": jnp.ones(2), "n": 3}
    with pytest.raises(TypeError) as info:
        larix.partition(tree, larix.is_array, replace)
    message = str(info.value)
    assert "the third positional argument" in message and "is not a filter spec" in message
    assert "`replace` and `is_leaf` are keyword-only" in message
    assert "write `larix.partition(pytree, filter_spec, replace=" in message


def test_positional_replace_message_texts():
    tree = {"w": jnp.ones(2), "n": 3}
    with pytest.raises(TypeError) as info:
        larix.partition(tree, larix.is_array, None)
    assert str(info.value) == (
        "larix.partition: the third positional argument, None, is not a filter spec. In Equinox "
        "it is `replace`, but larix reads further positional arguments as further filter specs "
        "(an n-way partition), so `replace` and `is_leaf` are keyword-only: write "
        "`larix.partition(pytree, filter_spec, replace=None)`."
    )
    with pytest.raises(TypeError, match=r"replace=None, is_leaf=\.\.\.\)`\.$"):
        larix.partition(tree, larix.is_array, None, lambda x: False)  # Equinox's positional is_leaf


def test_legitimate_second_filter_specs_are_not_taken_for_replace():
    tree = {"a": 1.5, "b": [2, "s"]}
    assert larix.partition(tree, larix.by_type(float), True)[1] == {"a": None, "b": [2, "s"]}
    assert larix.partition(tree, False, lambda x: isinstance(x, int))[1] == {"a": None, "b": [2, None]}
    assert larix.partition(tree, False, {"a": False, "b": [True, False]})[1] == {"a": None, "b": [2, None]}
    assert larix.partition(tree, False, larix.by_type(str))[1] == {"a": None, "b": [None, "s"]}
    # a pytree that is not a valid spec keeps its own error
    with pytest.raises(ValueError, match=r"Invalid filter spec at filter_spec\['b'\]: 3"):
        larix.partition(tree, False, {"a": True, "b": 3})
    # replace by keyword, as larix wants it
    assert larix.partition(tree, larix.by_type(float), replace="-")[0] == {"a": 1.5, "b": ["-", "-"]}


def test_positional_replace_check_matches_equinox_when_written_by_keyword():
    eqx = pytest.importorskip("equinox")
    tree = {"w": jnp.ones(2), "n": 3}
    ours = larix.partition(tree, larix.is_array, replace=0)
    theirs = eqx.partition(tree, eqx.is_array, 0)
    assert ours[0]["n"] == theirs[0]["n"] == 0 and ours[1]["w"] == theirs[1]["w"] == 0


# --------------------------------------------------------------------------- path filters that select nothing


class _Layer(larix.Module):
    weight: jax.Array
    bias: jax.Array


class _MLP(larix.Module):
    layers: list
    step: int = 0


def _mlp(use_bias=True):
    def bias():
        return jnp.zeros(2) if use_bias else None

    return _MLP([_Layer(jnp.ones((2, 2)), bias()) for _ in range(3)])


_FIX = (
    "If selecting nothing is intended, pass `larix.by_path(..., allow_empty=True)`, or silence this "
    'with `warnings.filterwarnings("ignore", message="larix.by_path")`.'
)


def test_mistyped_name_in_path_pattern_warns_with_the_fix():
    with pytest.warns(UserWarning) as caught:
        params, _ = larix.partition(_mlp(), larix.by_path("layer.*.weight"))
    assert jtu.tree_leaves(params) == []  # the result is unchanged: nothing selected
    assert len(caught) == 1
    assert str(caught[0].message) == (
        "larix.by_path('layer.*.weight') selects no leaf of this tree: the tree has no 'layer' "
        "(did you mean 'layers'?); 'layers.*.weight' would select 'layers.0.weight', "
        "'layers.1.weight', 'layers.2.weight'.\n" + _FIX
    )
    assert caught[0].filename == __file__  # points at the caller's line


@pytest.mark.parametrize(
    ("pattern", "explained"),
    [
        ("**.wieght", "no 'wieght' (did you mean 'weight'?); '**.weight' would select 'layers.0.weight'"),
        ("layers.*.bais", "no 'bais' (did you mean 'bias'?); 'layers.*.bias' would select 'layers.0.bias'"),
        # every name exists, but the path does not: a missing index
        (
            "layers.weight",
            "every name in 'layers.weight' occurs in the tree, but no path is 'layers.weight'; "
            "close paths: 'layers.2.weight', 'layers.1.weight', 'layers.0.weight'",
        ),
        # a missing prefix, and a subtree named as if it were a leaf
        ("bias", "no path is 'bias'; '**.bias' would select 'layers.0.bias', 'layers.1.bias', 'layers.2.bias'"),
        ("layers", "'layers.**' would select 'layers.0.weight', 'layers.0.bias', 'layers.1.weight' and 3 more"),
    ],
)
def test_mistaken_path_patterns_warn(pattern, explained):
    with pytest.warns(UserWarning, match=r"larix\.by_path") as caught:
        larix.partition(_mlp(), larix.by_path(pattern))
    message = str(caught[0].message)
    assert message.startswith(f"larix.by_path({pattern!r}) selects no leaf of this tree: ")
    assert explained in message
    assert message.endswith(_FIX)


@pytest.mark.parametrize(
    "spec",
    [
        larix.by_path("**.bias"),  # a model without biases: generic code does this on purpose
        larix.by_path("**.norm.**"),  # a name the tree lacks, close to none of its names
        larix.by_path("layers.7.weight"),  # an index the tree does not have
        larix.by_path("*"),  # wildcards only
        larix.by_path("layers.*.*.weight"),  # wildcards that happen to match nothing
        larix.by_path(re.compile(r"layer\.\d+\.weight")),  # regular expressions are not guessed at
        larix.by_path("layer.*.weight", allow_empty=True),  # the user said so
        ~larix.by_path("layer.*.weight"),  # selects more, not nothing
        larix.is_inexact_array & larix.by_path("step"),  # the pattern matches; the predicate does not
        larix.by_path("**.weight", "**.wieght"),  # selects something
    ],
    ids=repr,
)
def test_no_warning_when_selecting_nothing_is_plausible(spec):
    larix.partition(_mlp(use_bias=False), spec)  # warnings are errors in this suite


def test_empty_tree_never_warns():
    assert larix.partition({}, larix.by_path("layer.*.weight")) == ({}, {})
    assert larix.partition([None, ()], larix.by_path("bias")) == ([None, ()], [None, ()])


@pytest.mark.parametrize(
    ("call", "which"),
    [
        (lambda m, f: larix.filter(m, f), ""),
        (lambda m, f: larix.partition(m, larix.is_array & f), ""),
        (lambda m, f: larix.partition(m, larix.by_type(str), f), " (filter spec 1)"),
        (lambda m, f: larix.partition(m, _MLP(f, step=False)), ""),  # a leaf of a prefix spec
        # an earlier spec took every leaf: whether a typo warns must not depend on that
        (lambda m, f: larix.partition(m, True, f), " (filter spec 1)"),
        (lambda m, f: larix.split(m, f), ""),
        (lambda m, f: larix.split(m, larix.by_path("**.bias"), f), " (filter spec 1)"),
    ],
)
def test_every_way_of_using_a_spec_warns(call, which):
    with pytest.warns(UserWarning) as caught:
        call(_mlp(), larix.by_path("layer.*.weight"))
    assert len(caught) == 1
    assert str(caught[0].message).startswith(f"larix.by_path('layer.*.weight'){which} selects no leaf")
    assert caught[0].filename == __file__  # the user's line, also through split


def test_several_mistaken_patterns_in_one_spec_are_all_named():
    with pytest.warns(UserWarning) as caught:
        larix.partition(_mlp(), larix.by_path("layer.*.weight") | larix.by_path("lyers.0.bias", "bias"))
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "larix.by_path('layer.*.weight') selects no leaf of this tree: the tree has no 'layer'" in message
    assert (
        "larix.by_path('lyers.0.bias', 'bias') selects no leaf of this tree: the tree has no 'lyers' "
        "(did you mean 'layers'?); 'layers.0.bias' would select 'layers.0.bias'; and every name in 'bias'"
    ) in message


def test_warning_can_be_silenced_by_a_filter():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="larix.by_path")
        larix.partition(_mlp(), larix.by_path("layer.*.weight"))


def test_check_costs_nothing_when_something_is_selected(monkeypatch):
    import larix._partition as partition_module

    def fail(*args):
        raise AssertionError("the mistake check ran although the spec selected leaves")

    monkeypatch.setattr(partition_module, "path_filter_mistakes", fail)
    larix.partition(_mlp(), larix.by_path("layers.*.weight"))
    larix.partition(_mlp(), larix.is_array, larix.by_type(str))  # no path filters at all
    with pytest.raises(AssertionError, match="mistake check ran"):
        larix.partition(_mlp(), larix.by_path("layer.*.weight"))


def test_partition_takes_equinox_filter_spec_keyword():
    tree = [1, "a", 2.0]
    assert larix.partition(tree, filter_spec=lambda x: isinstance(x, int)) == larix.partition(
        tree, lambda x: isinstance(x, int)
    )
    with pytest.raises(TypeError, match="either positionally or as one `filter_spec=`"):
        larix.partition(tree, True, filter_spec=False)
