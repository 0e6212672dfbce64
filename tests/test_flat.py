"""Tests for larix._flat: the dict strategy (split, merge, Skeleton) and its split memo."""

from __future__ import annotations

import pickle
from collections import namedtuple
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import larix
from conftest import Box, Linear, Pair, expected_owners, filter_specs, leaves, make_linear, pytrees

Point = namedtuple("Point", ["x", "y"])


class Seq(larix.Module):
    """A Module holding a list of layers (a mutable container inside a frozen Module)."""

    layers: list
    name: str = larix.field(static=True, default="seq")


class Table(larix.Module):
    entries: dict


class _Hole:
    """A value no tree contains: marks the positions that a partition part does not hold."""

    def __repr__(self) -> str:
        return "HOLE"


HOLE = _Hole()


def _entry(e: Any) -> str:
    # Written independently of larix._paths, so that the key format is checked, not mirrored.
    if isinstance(e, jtu.GetAttrKey):
        return e.name
    if isinstance(e, jtu.DictKey):
        return str(e.key)
    if isinstance(e, jtu.SequenceKey):
        return str(e.idx)
    raise AssertionError(f"unexpected key path entry {e!r}")


def reference_keys(tree: Any) -> list[str]:
    return [".".join(_entry(e) for e in path) for path, _ in jtu.tree_flatten_with_path(tree)[0]]


def same(a: Any, b: Any) -> bool:
    """Same structure, same leaf types and equal leaves."""
    return jtu.tree_structure(a) == jtu.tree_structure(b) and bool(larix.tree_equal(a, b, typematch=True))


# --------------------------------------------------------------------------- split: examples


def test_split_with_no_spec_puts_every_leaf_in_one_dict():
    tree = {"w": jnp.ones(2), "n": 3, "act": "relu"}
    skeleton, everything = larix.split(tree)
    assert isinstance(skeleton, larix.Skeleton)
    assert skeleton.num_parts == 1
    assert everything == {"act": "relu", "n": 3, "w": tree["w"]}
    assert everything["w"] is tree["w"]


def test_split_n_way_first_matching_spec_wins():
    tree = [jnp.ones(2), jnp.arange(2), 1.5, "s", 7]
    skeleton, floats, arrays, scalars, rest = larix.split(
        tree, larix.is_inexact_array, larix.is_array, larix.is_array_like
    )
    assert skeleton.num_parts == 4
    assert list(floats) == ["0"] and floats["0"] is tree[0]
    assert list(arrays) == ["1"] and arrays["1"] is tree[1]  # the float array went to part 0
    assert scalars == {"2": 1.5, "4": 7}
    assert rest == {"3": "s"}


def test_split_of_a_module_uses_attribute_index_and_dict_key_paths():
    model = Seq([make_linear(seed=0), Table({"scale": jnp.ones(1), "w": (jnp.zeros(2), 3)})])
    skeleton, arrays, rest = larix.split(model, larix.is_array)
    assert sorted(arrays) == [
        "layers.0.bias",
        "layers.0.weight",
        "layers.1.entries.scale",
        "layers.1.entries.w.0",
    ]
    assert rest == {"layers.1.entries.w.1": 3}
    assert arrays["layers.0.weight"] is model.layers[0].weight
    # The static fields (Seq.name, Linear.activation) are structure, not leaves.
    assert "name" not in arrays and "name" not in rest
    assert list(skeleton.keys) == reference_keys(model)


def test_split_key_of_a_root_leaf_is_the_empty_string():
    x = jnp.ones(3)
    skeleton, arrays, rest = larix.split(x, larix.is_array)
    assert arrays == {"": x} and rest == {}
    assert larix.merge(skeleton, arrays, rest) is x
    skeleton, arrays, rest = larix.split("relu", larix.is_array)
    assert arrays == {} and rest == {"": "relu"}


def test_split_keys_of_namedtuples_and_non_string_dict_keys():
    tree = {"p": Point(1, [2, 3]), "q": {5: 4.0, 7: None, 9: (1.5,)}}
    _, everything = larix.split(tree)
    assert everything == {"p.x": 1, "p.y.0": 2, "p.y.1": 3, "q.5": 4.0, "q.9.0": 1.5}


def test_split_of_a_namedtuple_keeps_every_leaf():
    point3 = namedtuple("Point3", ["x", "y", "z"])
    tree = point3(1, 2, 3)
    skeleton, everything = larix.split(tree)
    assert everything == {"x": 1, "y": 2, "z": 3}
    assert list(skeleton.keys) == ["x", "y", "z"]
    assert larix.merge(skeleton, everything) == tree


def test_split_and_merge_of_an_optax_state():
    model = make_linear()
    state = optax.adam(1e-3).init(larix.filter(model, larix.is_array))
    skeleton, arrays, rest = larix.split(state, larix.is_array)
    assert "0.mu.weight" in arrays and "0.nu.bias" in arrays and "0.count" in arrays
    assert len(arrays) + len(rest) == len(jtu.tree_leaves(state))
    assert same(larix.merge(skeleton, arrays, rest), state)


def test_split_of_empty_trees():
    for tree in (None, [], {}, (), Seq([])):
        skeleton, arrays, rest = larix.split(tree, larix.is_array)
        assert arrays == {} and rest == {}
        assert skeleton.keys == ()
        assert same(larix.merge(skeleton, arrays, rest), tree)


def test_split_respects_is_leaf():
    tree = {"a": (1, 2), "b": [3]}
    skeleton, tuples, rest = larix.split(
        tree, lambda x: isinstance(x, tuple), is_leaf=lambda x: isinstance(x, tuple)
    )
    assert tuples == {"a": (1, 2)}
    assert rest == {"b.0": 3}
    assert larix.merge(skeleton, tuples, rest) == tree


def test_split_dict_key_with_a_dot_is_kept_when_nothing_collides():
    tree = {"a.b": 1, "c": 2}
    skeleton, everything = larix.split(tree)
    assert everything == {"a.b": 1, "c": 2}
    assert larix.merge(skeleton, everything) == tree


def test_split_key_collision_names_both_paths():
    tree = {"a.b": 1, "a": {"b": 2}}
    with pytest.raises(ValueError) as info:
        larix.split(tree)
    message = str(info.value)
    assert "tree['a.b']" in message
    assert "tree['a']['b']" in message
    assert "'a.b'" in message
    assert "Rename the dict key" in message  # the fix


def test_split_key_collision_through_an_empty_dict_key():
    # {"": {"a": 1}} would get the key "a" (or ".a"); beside "a" itself, two leaves must not
    # silently share a key: either split raises, or the keys differ and merge round-trips.
    tree = {"": {"a": 1}, "a": 2}
    try:
        skeleton, everything = larix.split(tree)
    except ValueError as error:
        assert "tree['']['a']" in str(error) and "tree['a']" in str(error)
        return
    assert len(everything) == 2, f"two leaves share a key: {everything}"
    assert larix.merge(skeleton, everything) == tree


def test_split_rejects_invalid_filter_spec():
    with pytest.raises(ValueError, match="Invalid filter spec"):
        larix.split([1, 2], 3)


# --------------------------------------------------------------------------- split: properties

spec_tuples = st.lists(filter_specs, min_size=0, max_size=3).map(tuple)

trees_with_namedtuples = st.recursive(
    st.one_of(leaves, st.none()),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.builds(Point, children, children),
        st.dictionaries(st.sampled_from(["a", "b", "x"]), children, max_size=3),
        st.builds(Pair, children, children),
    ),
    max_leaves=10,
)


@given(pytrees, spec_tuples)
def test_split_assigns_each_leaf_like_partition(tree, specs):
    skeleton, *dicts = larix.split(tree, *specs)
    assert len(dicts) == len(specs) + 1 == skeleton.num_parts
    tree_leaves = jtu.tree_leaves(tree)
    keys = reference_keys(tree)
    assert list(skeleton.keys) == keys
    assert sum(map(len, dicts)) == len(tree_leaves)
    if specs:
        parts = larix.partition(tree, *specs, replace=HOLE)
        part_leaves = [jtu.tree_leaves(p) for p in parts]
    else:
        part_leaves = [tree_leaves]
    for j, (key, leaf) in enumerate(zip(keys, tree_leaves)):
        (in_part,) = [i for i, p in enumerate(part_leaves) if p[j] is not HOLE]
        (in_dict,) = [i for i, d in enumerate(dicts) if key in d]
        assert in_dict == in_part
        assert dicts[in_dict][key] is leaf
    assert list(skeleton.owners) == expected_owners(tree, specs)


@given(trees_with_namedtuples)
def test_split_keys_are_the_key_paths_with_namedtuples(tree):
    skeleton, everything = larix.split(tree)
    assert list(skeleton.keys) == reference_keys(tree)
    assert len(everything) == len(jtu.tree_leaves(tree))
    assert same(larix.merge(skeleton, everything), tree)


@settings(max_examples=30)
@given(pytrees, spec_tuples)
def test_merge_of_split_is_the_tree(tree, specs):
    parts = larix.split(tree, *specs)
    rebuilt = larix.merge(*parts)
    assert same(rebuilt, tree)
    assert same(parts[0](*parts[1:]), tree)  # calling the skeleton merges


@given(pytrees, spec_tuples)
def test_split_twice_gives_equal_results(tree, specs):
    first = larix.split(tree, *specs)
    second = larix.split(tree, *specs)
    assert first[0] == second[0] and hash(first[0]) == hash(second[0])
    for a, b in zip(first[1:], second[1:]):
        assert a.keys() == b.keys()
        assert all(a[k] is b[k] for k in a)


@given(pytrees, spec_tuples, st.data())
def test_split_depends_only_on_the_tree_not_on_how_it_was_built(tree, specs, data):
    # Replace every leaf by another leaf (possibly of another kind), once through merge and
    # once through tree_unflatten: splitting both must give the same assignment.
    skeleton, *dicts = larix.split(tree, *specs)
    replacement = {k: data.draw(leaves) for k in skeleton.keys}
    new_dicts = [{k: replacement[k] for k in d} for d in dicts]
    merged = larix.merge(skeleton, *new_dicts)
    rebuilt = jtu.tree_unflatten(jtu.tree_structure(tree), [replacement[k] for k in skeleton.keys])
    from_merge = larix.split(merged, *specs)
    from_scratch = larix.split(rebuilt, *specs)
    assert from_merge[0] == from_scratch[0]
    for a, b in zip(from_merge[1:], from_scratch[1:]):
        assert a.keys() == b.keys()


# --------------------------------------------------------------------------- merge errors


def _split_example():
    tree = {"w": jnp.ones(2), "b": jnp.zeros(2), "n": 3, "act": "relu"}
    return tree, larix.split(tree, larix.is_array)


def test_merge_rejects_missing_keys_naming_them_and_the_part():
    _, (skeleton, arrays, rest) = _split_example()
    del arrays["w"]
    with pytest.raises(ValueError) as info:
        larix.merge(skeleton, arrays, rest)
    message = str(info.value)
    assert "part 0" in message and "missing 'w'" in message
    assert "split" in message  # points back at where the dicts should come from


def test_merge_rejects_unexpected_keys_naming_them():
    _, (skeleton, arrays, rest) = _split_example()
    arrays["extra"] = jnp.ones(1)
    with pytest.raises(ValueError) as info:
        larix.merge(skeleton, arrays, rest)
    message = str(info.value)
    assert "part 0" in message and "unexpected 'extra'" in message


def test_merge_rejects_a_key_in_the_wrong_part():
    _, (skeleton, arrays, rest) = _split_example()
    rest["w"] = arrays.pop("w")
    with pytest.raises(ValueError) as info:
        larix.merge(skeleton, arrays, rest)
    message = str(info.value)
    assert "the dict for part 0 is missing 'w'" in message
    assert "the dict for part 1 has unexpected 'w'" in message
    assert "belongs to another part" in message


def test_merge_lists_every_problem_at_once():
    _, (skeleton, arrays, rest) = _split_example()
    del arrays["w"], arrays["b"]
    rest["zzz"] = 1
    rest["b"] = 0
    del rest["n"]
    with pytest.raises(ValueError) as info:
        larix.merge(skeleton, arrays, rest)
    message = str(info.value)
    for fragment in ("'w'", "'b'", "'zzz'", "'n'", "part 0", "part 1", "missing", "unexpected"):
        assert fragment in message, fragment


def test_merge_rejects_a_part_that_is_not_a_dict():
    _, (skeleton, arrays, _) = _split_example()
    with pytest.raises(ValueError, match="part 1 is a list, not a dict"):
        larix.merge(skeleton, arrays, [3, "relu"])


def test_merge_rejects_the_wrong_number_of_dicts():
    _, (skeleton, arrays, rest) = _split_example()
    with pytest.raises(ValueError) as info:
        larix.merge(skeleton, arrays)
    message = str(info.value)
    assert "2 parts" in message and "1 dicts" in message
    assert "Pass every dict that larix.split returned" in message
    with pytest.raises(ValueError, match="3 dicts"):
        larix.merge(skeleton, arrays, rest, {})


def test_merge_rejects_a_first_argument_that_is_not_a_skeleton():
    tree, (_, arrays, rest) = _split_example()
    with pytest.raises(TypeError) as info:
        larix.merge(arrays, rest)
    message = str(info.value)
    assert "Skeleton" in message and "got dict" in message
    assert "larix.merge(skeleton, *dicts)" in message
    with pytest.raises(TypeError, match="got PyTreeDef"):
        larix.merge(jtu.tree_structure(tree), arrays, rest)


# --------------------------------------------------------------------------- Skeleton


def test_skeleton_part_keys_num_parts_and_call():
    model = make_linear()
    tree = {"model": model, "steps": 3, "name": "run"}
    skeleton, arrays, ints, rest = larix.split(tree, larix.is_array, larix.by_type(int))
    assert skeleton.num_parts == 3
    assert skeleton.part_keys(0) == ["model.weight", "model.bias"]
    assert skeleton.part_keys(1) == ["steps"]
    assert skeleton.part_keys(2) == ["name"]
    assert skeleton.part_keys(3) == []
    assert same(skeleton(arrays, ints, rest), tree)
    assert "Skeleton(" in repr(skeleton)


def test_skeleton_hash_is_stable_and_equal_for_equal_structures():
    a, *_ = larix.split(make_linear(seed=0), larix.is_array)
    b, *_ = larix.split(make_linear(seed=1), larix.is_array)
    assert a is not b
    assert hash(a) == hash(a) == hash(b)
    assert a == b
    assert len({a, b}) == 1
    assert a != "not a skeleton"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # a static field differs
        (
            lambda: larix.split(Pair(1, 2, tag="p"), larix.is_array),
            lambda: larix.split(Pair(1, 2, tag="q"), larix.is_array),
        ),
        (
            lambda: larix.split(Linear(jnp.ones(2), jnp.ones(1), activation="relu"), larix.is_array),
            lambda: larix.split(Linear(jnp.ones(2), jnp.ones(1), activation="gelu"), larix.is_array),
        ),
        # the structure differs
        (
            lambda: larix.split({"a": 1}, larix.is_array),
            lambda: larix.split({"a": 1, "b": 2}, larix.is_array),
        ),
        (lambda: larix.split([1, 2], larix.is_array), lambda: larix.split((1, 2), larix.is_array)),
        (lambda: larix.split(Box(1), larix.is_array), lambda: larix.split(Box([1]), larix.is_array)),
        # which leaf goes to which part differs
        (
            lambda: larix.split([1, 2.0], larix.by_type(int)),
            lambda: larix.split([1, 2.0], larix.by_type(float)),
        ),
        # the number of parts differs
        (lambda: larix.split([1, 2]), lambda: larix.split([1, 2], False)),
    ],
)
def test_skeletons_differ_when_structure_statics_or_assignment_differ(first, second):
    a, b = first()[0], second()[0]
    assert a != b
    assert not (a == b)
    assert len({a, b}) == 2


def test_skeleton_pickle_round_trip():
    model = Seq([make_linear(), Pair(jnp.ones(2), "x", tag="q"), Box(None, scale=2.5)], name="net")
    skeleton, arrays, rest = larix.split(model, larix.is_array)
    restored = pickle.loads(pickle.dumps(skeleton))
    assert restored == skeleton and hash(restored) == hash(skeleton)
    assert restored.keys == skeleton.keys
    assert restored.part_keys(0) == skeleton.part_keys(0)
    rebuilt = larix.merge(restored, arrays, rest)
    assert same(rebuilt, model)
    assert rebuilt.name == "net" and rebuilt.layers[1].tag == "q"


def test_skeleton_pickle_round_trip_with_is_leaf():
    tree = {"a": (1, 2), "b": [3]}
    skeleton, everything = larix.split(tree, is_leaf=lambda x: isinstance(x, tuple))
    restored = pickle.loads(pickle.dumps(skeleton))
    assert restored == skeleton
    assert larix.merge(restored, everything) == tree


def test_skeleton_as_static_argnums_of_jax_jit():
    traces = []

    def forward(skeleton, arrays, rest):
        traces.append(1)
        model = larix.merge(skeleton, arrays, rest)
        return model(jnp.ones(4))

    jitted = jax.jit(forward, static_argnums=0)
    model = make_linear()
    skeleton, arrays, rest = larix.split(model, larix.is_array)
    expected = model(jnp.ones(4))
    np.testing.assert_allclose(jitted(skeleton, arrays, rest), expected, rtol=1e-6)
    # An equal skeleton, from another (equal-structured) model: no retrace.
    other = make_linear(seed=3)
    skeleton2, arrays2, rest2 = larix.split(other, larix.is_array)
    np.testing.assert_allclose(jitted(skeleton2, arrays2, rest2), other(jnp.ones(4)), rtol=1e-6)
    assert len(traces) == 1
    # A different static field: retrace.
    relu_model = Linear(model.weight, model.bias, activation="relu")
    skeleton3, arrays3, rest3 = larix.split(relu_model, larix.is_array)
    jitted(skeleton3, arrays3, rest3)
    assert len(traces) == 2


def test_skeleton_in_a_closure_of_jax_jit():
    model = make_linear()
    skeleton, arrays, rest = larix.split(model, larix.is_array)

    @jax.jit
    def forward(arrays, x):
        return skeleton(arrays, rest)(x)

    x = jnp.arange(4.0)
    np.testing.assert_allclose(forward(arrays, x), model(x), rtol=1e-6)


# --------------------------------------------------------------------------- the split memo


def test_split_of_the_same_module_twice_is_equal():
    model = make_linear()
    first = larix.split(model, larix.is_array)
    second = larix.split(model, larix.is_array)
    assert first[0] == second[0]
    assert first[1] == second[1] and first[2] == second[2]


def test_mutating_a_returned_dict_does_not_affect_the_next_split():
    model = make_linear()
    _, arrays, rest = larix.split(model, larix.is_array)
    arrays["weight"] = "clobbered"
    arrays["new"] = 1
    del arrays["bias"]
    rest["junk"] = 2
    _, arrays2, rest2 = larix.split(model, larix.is_array)
    assert sorted(arrays2) == ["bias", "weight"]
    assert arrays2["weight"] is model.weight and arrays2["bias"] is model.bias
    assert rest2 == {}


def test_split_with_other_specs_is_not_served_from_the_memo():
    model = Pair(jnp.ones(2), 3)
    _, arrays, rest = larix.split(model, larix.is_array)
    assert list(arrays) == ["a"] and rest == {"b": 3}
    _, ints, rest = larix.split(model, larix.by_type(int))
    assert ints == {"b": 3} and list(rest) == ["a"]
    _, everything = larix.split(model)
    assert sorted(everything) == ["a", "b"]
    _, none, everything = larix.split(model, False)
    assert none == {} and sorted(everything) == ["a", "b"]


def test_split_after_replacing_a_list_element_in_place_is_not_stale():
    model = Seq([jnp.ones(2), 1])
    _, arrays, rest = larix.split(model, larix.is_array)
    assert list(arrays) == ["layers.0"] and rest == {"layers.1": 1}
    model.layers[0] = "now a string"
    model.layers[1] = jnp.zeros(3)
    skeleton, arrays, rest = larix.split(model, larix.is_array)
    assert list(arrays) == ["layers.1"] and arrays["layers.1"] is model.layers[1]
    assert rest == {"layers.0": "now a string"}
    assert same(larix.merge(skeleton, arrays, rest), model)


def test_split_after_appending_to_a_list_in_place_is_not_stale():
    model = Seq([make_linear()])
    larix.split(model, larix.is_array)
    model.layers.append(jnp.ones(1))
    skeleton, arrays, rest = larix.split(model, larix.is_array)
    assert sorted(arrays) == ["layers.0.bias", "layers.0.weight", "layers.1"]
    assert rest == {}
    assert len(skeleton.keys) == 3


def test_split_after_mutating_a_nested_dict_or_list_in_place_is_not_stale():
    inner = Table({"w": jnp.ones(2)})
    model = Pair((inner, [1]), None)  # containers below a tuple and below another Module
    larix.split(model, larix.is_array)
    inner.entries["v"] = jnp.zeros(1)
    model.a[1].append(2)
    _, arrays, rest = larix.split(model, larix.is_array)
    assert sorted(arrays) == ["a.0.entries.v", "a.0.entries.w"]
    assert rest == {"a.1.0": 1, "a.1.1": 2}


def test_merge_result_is_split_by_its_own_leaves():
    # merge may give the Module it builds a split memo, but that memo must not assign the
    # new leaves by the old ones: integer arrays are not inexact arrays.
    model = make_linear()
    skeleton, floats, rest = larix.split(model, larix.is_inexact_array)
    assert sorted(floats) == ["bias", "weight"]
    ints = {k: v.astype(jnp.int32) for k, v in floats.items()}
    merged = larix.merge(skeleton, ints, rest)
    _, floats2, rest2 = larix.split(merged, larix.is_inexact_array)
    assert floats2 == {}
    assert sorted(rest2) == ["bias", "weight"]


def test_merge_result_is_split_by_its_own_leaves_when_arrays_become_scalars():
    model = Pair(jnp.ones(2), jnp.ones((2, 2)))
    skeleton, arrays, rest = larix.split(model, larix.is_array)
    assert sorted(arrays) == ["a", "b"]
    merged = larix.merge(skeleton, {"a": 1.0, "b": "text"}, rest)
    _, arrays2, rest2 = larix.split(merged, larix.is_array)
    assert arrays2 == {}
    assert rest2 == {"a": 1.0, "b": "text"}


# --------------------------------------------------------------------------- large trees


class Tagged(larix.Module):
    value: Any
    tag: Any = larix.field(static=True, default=None)


def _large(tree: Any) -> Any:
    """`tree` with over a thousand more leaves: large enough for split to remember its
    structure (and skip JAX's flatten next time)."""
    return {"pad": tuple(range(1100)), "tree": tree}


@settings(max_examples=40)
@given(pytrees, pytrees, spec_tuples)
def test_large_trees_of_remembered_structures_split_like_fresh_ones(first, second, specs):
    larix.clear_caches()
    larix.split(_large(first), *specs)  # remembers the structure of `first`
    tree = _large(second)
    skeleton, *dicts = larix.split(tree, *specs)
    assert skeleton.treedef == jtu.tree_structure(tree)
    assert list(skeleton.keys) == reference_keys(tree)
    assert same(larix.merge(skeleton, *dicts), tree)
    larix.clear_caches()
    fresh = larix.split(tree, *specs)
    assert fresh[0] == skeleton
    for a, b in zip(fresh[1:], dicts):
        assert a.keys() == b.keys() and all(a[k] is b[k] for k in a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({1: 0.5}, {1.0: 0.5}),  # dict keys that compare equal but differ in type
        ({True: 0.5}, {1: 0.5}),
        (Tagged(0.5, tag=1), Tagged(0.5, tag=1.0)),  # static fields likewise
        (Tagged(0.5, tag="a"), Tagged(0.5, tag="b")),
        ((0.5, None), (None, 0.5)),
        (Point(0.5, 1), (0.5, 1)),  # a namedtuple and a tuple with the same leaves
    ],
)
def test_large_trees_that_differ_only_in_structure_are_told_apart(a, b):
    for tree in (_large(a), _large(b), _large(a)):
        skeleton, rest = larix.split(tree)
        rebuilt = larix.merge(skeleton, rest)
        assert skeleton.treedef == jtu.tree_structure(tree)
        assert same(rebuilt, tree)
        assert [type(k) for k in jtu.tree_leaves(jtu.tree_map(lambda _: 0, rebuilt))] == [int] * len(rest)
        if isinstance(tree["tree"], dict):
            assert [type(k) for k in rebuilt["tree"]] == [type(k) for k in tree["tree"]]
        if isinstance(tree["tree"], Tagged):
            assert type(rebuilt["tree"].tag) is type(tree["tree"].tag)


@jtu.register_pytree_node_class
class Scaled:
    """A custom pytree node whose aux data is a number: never remembered by structure."""

    def __init__(self, value: Any, scale: float):
        self.value, self.scale = value, scale

    def tree_flatten(self):
        return (self.value,), self.scale

    @classmethod
    def tree_unflatten(cls, scale, children):
        return cls(children[0], scale)


def test_large_trees_with_custom_nodes_keep_their_aux_data():
    for scale in (1, 1.0, 2):
        tree = _large(Scaled(0.5, scale))
        skeleton, rest = larix.split(tree)
        rebuilt = larix.merge(skeleton, rest)
        assert type(rebuilt["tree"].scale) is type(scale) and rebuilt["tree"].scale == scale


def test_clear_caches_forgets_remembered_structures():
    from larix import _flat

    larix.split(_large(0.5))
    assert _flat._TREEDEFS
    larix.clear_caches()
    assert not _flat._TREEDEFS
