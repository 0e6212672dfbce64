"""Tests for larix._pformat: tree_pformat and tree_pprint."""

from __future__ import annotations

import collections
import dataclasses
import functools
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import larix
from conftest import Box, Linear, Pair, make_linear, pytrees


@pytest.mark.parametrize(
    ("array", "text"),
    [
        (jnp.zeros((3, 4)), "f32[3,4]"),
        (jnp.zeros(()), "f32[]"),
        (jnp.zeros((0, 2)), "f32[0,2]"),
        (jnp.zeros(2, jnp.int32), "i32[2]"),
        (jnp.zeros(2, jnp.uint8), "u8[2]"),
        (jnp.zeros(2, jnp.int8), "i8[2]"),
        (jnp.zeros(2, jnp.bool_), "bool[2]"),
        (jnp.zeros(2, jnp.float16), "f16[2]"),
        (jnp.zeros(2, jnp.bfloat16), "bf16[2]"),
        (jnp.zeros(2, jnp.complex64), "c64[2]"),
        (np.zeros((2, 1)), "f64[2,1](numpy)"),
        (np.zeros(3, np.int64), "i64[3](numpy)"),
        (np.float32(2.0), "f32[](numpy)"),
    ],
)
def test_short_array_forms(array, text):
    assert larix.tree_pformat(array) == text
    assert larix.tree_pformat([array]) == f"[{text}]"


def test_matches_equinox_on_common_cases():
    eqx = pytest.importorskip("equinox")
    Point = collections.namedtuple("Point", "x y")
    for tree in (
        {"w": jnp.zeros((3, 4)), "act": "relu"},
        [1, (2,), (), [], {}, None, "s"],
        Point(1, jnp.ones(2)),
        functools.partial(max, 1, key=len),
        jnp.zeros(2, jnp.bfloat16),
        np.zeros(2),
    ):
        assert larix.tree_pformat(tree) == eqx.tree_pformat(tree)


def test_containers():
    assert larix.tree_pformat([]) == "[]"
    assert larix.tree_pformat(()) == "()"
    assert larix.tree_pformat({}) == "{}"
    assert larix.tree_pformat((1,)) == "(1,)"
    assert larix.tree_pformat((1, "a")) == "(1, 'a')"
    assert larix.tree_pformat({"a": None, 3: [1.5]}) == "{'a': None, 3: [1.5]}"
    Point = collections.namedtuple("Point", "x y")
    assert larix.tree_pformat(Point(1, jnp.ones(2))) == "Point(x=1, y=f32[2])"


def test_modules_dataclasses_and_bound_methods():
    lin = make_linear()
    # As in Equinox, a field still holding its default object is left out.
    assert larix.tree_pformat(lin) == "Linear(weight=f32[3,4], bias=f32[3])"
    assert larix.tree_pformat(Pair(Box(1), [lin.bias])) == "Pair(a=Box(value=1), b=[f32[3]])"
    assert larix.tree_pformat(Pair(Box(1, scale=2.0), None, tag="t")) == "Pair(a=Box(value=1, scale=2.0), b=None, tag='t')"
    relu = Linear(lin.weight, lin.bias, activation="relu")
    assert larix.tree_pformat(relu.scaled) == "Linear.scaled(self=Linear(weight=f32[3,4], bias=f32[3], activation='relu'))"

    @dataclasses.dataclass
    class Plain:
        p: int
        q: object
        hidden: int = dataclasses.field(default=0, repr=False)

    # Classes print by qualified name, as in Equinox: a class defined in a function shows it.
    text = larix.tree_pformat(Plain(1, jnp.zeros((2, 3), jnp.int8)))
    assert text == "test_modules_dataclasses_and_bound_methods.<locals>.Plain(p=1, q=i8[2,3])"
    assert larix.tree_pformat(larix.Partial(max, 1)) == "Partial(func=<built-in function max>, args=(1,), keywords={})"


def test_functions():
    def local(x):
        return x

    @functools.wraps(local)
    def wrapper(x):
        return x

    assert larix.tree_pformat(local) == "<function test_functions.<locals>.local>"
    assert larix.tree_pformat(wrapper) == "<wrapped function test_functions.<locals>.local>"
    assert larix.tree_pformat(jax.vmap(local)) == "<wrapped function test_functions.<locals>.local>"
    assert larix.tree_pformat(jax.custom_jvp(local)) == "<function test_functions.<locals>.local>"
    assert larix.tree_pformat(functools.partial(local, 1)) == (
        "partial(<function test_functions.<locals>.local>, 1)"
    )
    # Deliberately unlike Equinox (which prints a jitted function's repr, with its memory
    # address), a jitted function prints as the function it wraps: the text is stable.
    # jax.nn.relu is a custom_jvp of a jitted function.
    assert larix.tree_pformat(jax.jit(local)) == "<function test_functions.<locals>.local>"
    assert larix.tree_pformat(jax.nn.relu) == "<function relu>"
    assert larix.tree_pformat(jax.jit(jax.nn.relu)) == "<function relu>"
    assert larix.tree_pformat(print) == "<built-in function print>"
    # Classes by qualified name, builtins without their module.
    assert larix.tree_pformat([int, Linear]) == "[int, conftest.Linear]"


def test_functions_print_as_in_equinox():
    equinox = pytest.importorskip("equinox")

    class Local:
        pass

    def f(x):
        return x

    objects = [jax.vmap(f), jax.custom_vjp(f), jax.custom_jvp(f), jnp.sum, np.sum, Local, int, f, print]
    for obj in objects:
        assert larix.tree_pformat(obj) == equinox.tree_pformat(obj)


def test_short_arrays_false_struct_as_array_and_truncate_leaf():
    assert larix.tree_pformat([jnp.arange(3)], short_arrays=False) == "[Array([0, 1, 2], dtype=int32)]"
    struct = jax.ShapeDtypeStruct((2, 3), jnp.float32)
    assert larix.tree_pformat(struct) == repr(struct)
    assert larix.tree_pformat(struct, struct_as_array=True) == "f32[2,3]"
    text = larix.tree_pformat([make_linear(), 1], truncate_leaf=lambda x: isinstance(x, Linear))
    assert text == "[Linear(...), 1]"


def test_width_and_indent():
    # Equinox's layout: a container that does not fit puts its items on the next lines,
    # all on one line if they fit there, else one a line; a dict value that does not fit
    # after its key goes on the next line; no trailing commas.
    tree = {"a": [1, 2], "bb": Box(jnp.ones(2), scale=2.0)}
    assert larix.tree_pformat(tree) == "{'a': [1, 2], 'bb': Box(value=f32[2], scale=2.0)}"
    # The line with 'bb' is 36 characters long.
    assert larix.tree_pformat(tree, width=36) == "{\n  'a': [1, 2],\n  'bb': Box(value=f32[2], scale=2.0)\n}"
    assert larix.tree_pformat(tree, width=35) == (
        "{\n"
        "  'a': [1, 2],\n"
        "  'bb':\n"
        "  Box(value=f32[2], scale=2.0)\n"
        "}"
    )
    assert larix.tree_pformat(tree, width=20, indent=4) == (
        "{\n"
        "    'a': [1, 2],\n"
        "    'bb':\n"
        "    Box(\n"
        "        value=f32[2],\n"
        "        scale=2.0\n"
        "    )\n"
        "}"
    )
    # Items that fit on one line together stay together, after the opening bracket.
    linear = larix.nn.Linear(2, 3, key=jax.random.key(0))
    assert larix.tree_pformat(linear, width=88) == (
        "Linear(\n  weight=f32[3,2], bias=f32[3], in_features=2, out_features=3, use_bias=True, dtype=None\n)"
    )
    assert larix.tree_pformat(linear, width=87).count("\n") == 7  # one field a line
    assert larix.tree_pformat((1,), width=1) == "(\n  1,\n)"


def test_tree_pprint_prints(capsys):
    larix.tree_pprint({"w": jnp.zeros(2)})
    assert capsys.readouterr().out == "{'w': f32[2]}\n"
    larix.tree_pprint([1, 2], width=3)
    assert capsys.readouterr().out == "[\n  1,\n  2\n]\n"


def test_repr_of_partially_built_module_does_not_raise():
    seen = []

    class Talkative(larix.Module):
        a: int
        b: int

        def __init__(self):
            self.a = 1
            seen.append(repr(self))
            self.b = 2

    Talkative()
    assert seen == [f"{Talkative.__qualname__}(a=1)"]


def test_recursive_containers_print_as_recursive():
    # Regression: a container holding itself raised RecursionError (Equinox prints it).
    cyclic: list = [1]
    cyclic.append(cyclic)
    assert larix.tree_pformat(cyclic) == "[1, <recursive>]"
    box = Box([])
    box.value.append(box)
    assert repr(box) == "Box(value=[<recursive>])"
    shared = [1, 2]  # shared but not cyclic: printed in full each time
    assert larix.tree_pformat([shared, (shared,)]) == "[[1, 2], ([1, 2],)]"


def test_recursive_matches_equinox():
    eqx = pytest.importorskip("equinox")
    cyclic: list = [1]
    cyclic.append(cyclic)
    assert larix.tree_pformat(cyclic) == eqx.tree_pformat(cyclic)


def _normalise(text: str) -> str:
    # Remove line breaks/indentation and the trailing commas that multi-line output adds.
    return re.sub(r",([)\]}])", r"\1", re.sub(r"\s+", "", text))


@given(pytrees, st.integers(1, 100), st.integers(0, 4), st.booleans())
def test_pformat_never_raises_and_wrapping_only_changes_layout(tree, width, indent, short_arrays):
    flat = larix.tree_pformat(tree, width=10**9, short_arrays=short_arrays)
    wrapped = larix.tree_pformat(tree, width=width, indent=indent, short_arrays=short_arrays)
    assert isinstance(wrapped, str)
    if short_arrays:
        assert "\n" not in flat
    assert _normalise(wrapped) == _normalise(flat)


@given(pytrees, st.integers(10, 60))
def test_lines_fit_the_width_when_they_can(tree, width):
    # A line may only exceed the width if it cannot be split: it holds no ", " between items.
    # Its trailing comma does not count (nor does it in Equinox's layout, which larix's is).
    for line in larix.tree_pformat(tree, width=width).split("\n"):
        if len(line.removesuffix(",")) > width:
            body = line.strip().rstrip(",")
            assert not re.search(r"[(\[{].*, .*[)\]}]", re.sub(r"'[^']*'", "''", body)), line


@given(pytrees)
def test_module_repr_is_pformat(tree):
    box = Box(tree)
    assert repr(box) == larix.tree_pformat(box)
    assert repr(box).startswith("Box(")


class _Pair(larix.Module):
    a: Any
    b: Any


_Point = collections.namedtuple("_Point", "x y")
_layout_leaves = st.one_of(
    st.integers(-(10**12), 10**12),
    st.text("s", max_size=30),
    st.none(),
    st.just(1.5),
    st.booleans(),
    st.lists(st.integers(1, 300), max_size=2).map(lambda shape: jnp.zeros(tuple(shape))),
)
_layout_trees = st.recursive(
    _layout_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(st.text("kx", min_size=1, max_size=6), children, max_size=4),
        st.builds(_Point, children, children),
        st.builds(_Pair, children, children),
    ),
    max_leaves=25,
)


@settings(max_examples=150, deadline=None)
@given(_layout_trees, st.sampled_from([10, 20, 40, 60, 80, 100]), st.sampled_from([2, 4]))
def test_layout_matches_equinox_for_any_tree_and_width(tree, width, indent):
    eqx = pytest.importorskip("equinox")

    class _Pair(eqx.Module):  # the same name and fields, as an Equinox Module
        a: Any
        b: Any

    _Pair.__qualname__ = "_Pair"  # as the larix class's, defined at module level

    def to_equinox(node):
        if isinstance(node, larix.Module):
            return _Pair(to_equinox(node.a), to_equinox(node.b))
        if isinstance(node, _Point):
            return _Point(to_equinox(node.x), to_equinox(node.y))
        if isinstance(node, (list, tuple)):
            return type(node)(map(to_equinox, node))
        if isinstance(node, dict):
            return {k: to_equinox(v) for k, v in node.items()}
        return node

    expected = eqx.tree_pformat(to_equinox(tree), width=width, indent=indent)
    assert larix.tree_pformat(tree, width=width, indent=indent) == expected
