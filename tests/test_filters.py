"""Tests for larix._filters: the leaf predicates, by_type, by_path and filter combinators."""

from __future__ import annotations

import pickle
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import larix
from conftest import Box, Pair, filters, leaves, spec_selects


class JaxArrayLike:
    """An object that JAX can turn into an array."""

    def __init__(self, value):
        self.value = value

    def __jax_array__(self):
        return jnp.asarray(self.value)


# value, is_array, is_array_like, is_inexact_array, is_inexact_array_like
PREDICATE_TABLE = [
    (jnp.ones(2), True, True, True, True),
    (jnp.ones(2, jnp.int32), True, True, False, False),
    (jnp.ones(2, jnp.bool_), True, True, False, False),
    (jnp.ones(2, jnp.complex64), True, True, True, True),
    (jnp.ones(2, jnp.float16), True, True, True, True),
    (jnp.ones(2, jnp.bfloat16), True, True, True, True),
    (jnp.ones(2, jnp.float8_e4m3fn), True, True, True, True),
    (jax.random.key(0), True, True, False, False),
    (np.ones(2), True, True, True, True),
    (np.ones(2, np.int64), True, True, False, False),
    (np.float32(1.0), True, True, True, True),
    (np.int8(1), True, True, False, False),
    (1, False, True, False, False),
    (True, False, True, False, False),
    (1.0, False, True, False, True),
    (1j, False, True, False, True),
    ("a", False, False, False, False),
    (None, False, False, False, False),
    (JaxArrayLike(1.0), False, True, False, True),
    (JaxArrayLike(1), False, True, False, False),
    (jax.ShapeDtypeStruct((2,), jnp.float32), False, False, False, False),
    (object(), False, False, False, False),
]

PREDICATES = [larix.is_array, larix.is_array_like, larix.is_inexact_array, larix.is_inexact_array_like]


@pytest.mark.parametrize("row", PREDICATE_TABLE, ids=lambda row: type(row[0]).__name__)
def test_predicates(row):
    value, *expected = row
    assert [p(value) for p in PREDICATES] == expected


def test_bfloat16_and_prng_keys_regression():
    # Regression: np.issubdtype does not count bfloat16/float8 as inexact, so mixed-precision
    # parameters were not selected by is_inexact_array (and filter_grad would skip them);
    # PRNG key arrays made it raise TypeError.
    params = {"w": jnp.ones(2, jnp.bfloat16), "key": jax.random.key(0), "n": jnp.arange(2)}
    floats, rest = larix.partition(params, larix.is_inexact_array)
    assert floats["w"] is params["w"]
    assert floats["key"] is None and floats["n"] is None
    assert rest["key"] is params["key"]


def test_predicates_see_tracers():
    @jax.jit
    def f(x, n):
        assert larix.is_array(x) and larix.is_inexact_array(x) and larix.is_array_like(x)
        assert larix.is_array(n) and not larix.is_inexact_array(n)
        return x

    f(jnp.ones(2), jnp.arange(2))


@pytest.mark.parametrize("row", PREDICATE_TABLE, ids=lambda row: type(row[0]).__name__)
def test_predicates_match_equinox(row):
    eqx = pytest.importorskip("equinox")
    value = row[0]
    theirs = [eqx.is_array, eqx.is_array_like, eqx.is_inexact_array, eqx.is_inexact_array_like]
    assert [p(value) for p in PREDICATES] == [bool(p(value)) for p in theirs]


@given(leaves)
def test_predicates_match_equinox_on_random_leaves(leaf):
    eqx = pytest.importorskip("equinox")
    theirs = [eqx.is_array, eqx.is_array_like, eqx.is_inexact_array, eqx.is_inexact_array_like]
    assert [p(leaf) for p in PREDICATES] == [bool(p(leaf)) for p in theirs]


def test_predicates_are_documented_filters_that_pickle():
    for p in PREDICATES:
        assert isinstance(p, larix.Filter)
        assert p.__doc__ and p.__name__ in repr(p)
        assert p.__module__ == "larix"
        assert pickle.loads(pickle.dumps(p)) is p


# --------------------------------------------------------------------------- by_type


def test_by_type():
    f = larix.by_type(int)
    assert f(1) and f(True)  # bool is an int, as isinstance says
    assert not f(1.0) and not f(jnp.ones(()))
    g = larix.by_type(float, str)
    assert g(1.0) and g("s") and not g(1)
    assert larix.by_type(Pair)(Pair(1, 2))
    assert larix.by_type(jax.Array)(jnp.ones(2)) and not larix.by_type(jax.Array)(np.ones(2))
    assert repr(g) == "by_type(float, str)"


def test_by_type_in_partition():
    tree = [1, 2.0, "a", jnp.ones(2)]
    floats, rest = larix.partition(tree, larix.by_type(float))
    assert floats == [None, 2.0, None, None]
    assert rest[:3] == [1, None, "a"]


def test_class_as_spec_is_called_on_the_leaf():
    # Equinox's rule: a class is a callable like any other, so `bool` filters truthiness.
    assert larix.filter([0, 1, "", "x"], bool) == [None, 1, None, "x"]
    assert larix.filter([0, 1, "", "x"], larix.by_type(int)) == [0, 1, None, None]


@pytest.mark.parametrize("bad", [(), (1,), ("int",), (int, 3)])
def test_by_type_errors(bad):
    with pytest.raises(TypeError, match=r"larix\.by_type takes one or more classes"):
        larix.by_type(*bad)


# --------------------------------------------------------------------------- by_path

PATH_CASES = [
    # pattern, path, matches
    ("**.bias", "bias", True),
    ("**.bias", "layers.0.bias", True),
    ("**.bias", "layers.0.biasx", False),
    ("**.bias", "bias.w", False),
    ("*", "w", True),
    ("*", "a.w", False),
    ("*.w", "a.w", True),
    ("*.w", "a.b.w", False),
    ("layers.*.weight", "layers.3.weight", True),
    ("layers.*.weight", "layers.3.x.weight", False),
    ("encoder.**", "encoder", True),
    ("encoder.**", "encoder.layer.w", True),
    ("encoder.**", "encoderx.w", False),
    ("encoder.**", "decoder.encoder.w", False),
    ("**", "anything.at.all", True),
    ("a.**.w", "a.w", True),
    ("a.**.w", "a.b.c.w", True),
    ("a.**.w", "a.b.c.v", False),
    ("w?", "w1", True),
    ("w?", "w12", False),
    ("w?", "w", False),
    ("lay[0]", "lay[0]", True),  # regex metacharacters are literal
    ("lay[0]", "lay0", False),
    ("a+b", "a+b", True),
    ("a+b", "aab", False),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), PATH_CASES)
def test_by_path_glob(pattern, path, expected):
    assert larix.by_path(pattern).match(path, object()) is expected


def test_by_path_regex_matches_whole_path():
    f = larix.by_path(re.compile(r"layers\.\d+\.(weight|bias)"))
    assert f.match("layers.12.bias", 0)
    assert not f.match("layers.12.bias.x", 0)
    assert not f.match("xlayers.1.bias", 0)


def test_by_path_several_patterns():
    f = larix.by_path("**.bias", re.compile(r"head\..*"))
    assert f.match("x.bias", 0) and f.match("head.w", 0)
    assert not f.match("x.w", 0)
    assert repr(f) == "by_path('**.bias', re.compile('head\\\\..*'))"


def test_by_path_in_partition_on_modules_lists_and_dicts():
    tree = {"layers": [Pair(1.0, 2.0), Pair(3.0, 4.0)], "head": Box(5.0)}
    biases, rest = larix.partition(tree, larix.by_path("layers.*.b"))
    assert biases["layers"][0].b == 2.0 and biases["layers"][1].b == 4.0
    assert biases["layers"][0].a is None and biases["head"].value is None
    assert rest["head"].value == 5.0
    first, _ = larix.partition(tree, larix.by_path("layers.0.**"))
    assert (first["layers"][0].a, first["layers"][0].b, first["layers"][1].a) == (1.0, 2.0, None)


def test_path_filter_cannot_be_called_on_a_leaf():
    f = larix.is_array & ~larix.by_path("**.bias")
    assert f.uses_path
    with pytest.raises(TypeError) as info:
        f(jnp.ones(2))
    message = str(info.value)
    assert "looks at the leaf's path" in message
    assert ".match(path, leaf)" in message
    assert "larix.partition" in message


@pytest.mark.parametrize("bad", [(), (3,), ("**.w", None)])
def test_by_path_errors(bad):
    with pytest.raises(TypeError, match=r"larix\.by_path takes"):
        larix.by_path(*bad)


def test_by_path_allow_empty_is_keyword_only_and_changes_no_match():
    quiet, loud = larix.by_path("layer.*", allow_empty=True), larix.by_path("layer.*")
    assert (quiet.allow_empty, loud.allow_empty) == (True, False)
    for path in ("layer.0", "layers.0", "layer"):
        assert quiet.match(path, 0) == loud.match(path, 0)
    with pytest.raises(TypeError, match=r"larix\.by_path takes glob strings"):
        larix.by_path("layer.*", True)


def test_by_path_mistakes_are_found_only_for_patterns_that_match_nothing():
    paths = ["layers.0.weight", "layers.1.weight", "head.bias"]
    names = {s for p in paths for s in p.split(".")}
    f = larix.by_path("**.weight", "layer.*.weight", "**.norm", re.compile("nothing"))
    assert f._mistakes(paths, names) == [
        "the tree has no 'layer' (did you mean 'layers'?); 'layers.*.weight' would select "
        "'layers.0.weight', 'layers.1.weight'"
    ]


# --------------------------------------------------------------------------- combinators


def test_combinators():
    is_float_array = larix.is_array & larix.by_type(jax.Array) & ~larix.by_type(int)
    assert is_float_array(jnp.ones(2))
    assert not is_float_array(np.ones(2))
    either = larix.by_type(str) | larix.is_inexact_array
    assert either("s") and either(jnp.ones(2)) and not either(1)
    assert (~larix.is_array)(1) and not (~larix.is_array)(jnp.ones(2))


def test_combinators_accept_bools_and_plain_callables_on_either_side():
    def is_one(x):
        return x == 1

    assert (larix.is_array_like & is_one)(1)
    assert not (larix.is_array_like & is_one)(2)
    assert (is_one | larix.by_type(str))("s")
    assert (True & larix.by_type(str))("s")
    assert not (False & larix.by_type(str))("s")
    assert (larix.by_type(str) | True)(1)
    assert repr(larix.by_type(str) | True) == "(by_type(str) | True)"
    assert repr(is_one & larix.is_array) == "(is_one & is_array)"


def test_combinator_errors():
    with pytest.raises(TypeError, match="Cannot combine a filter with 3"):
        larix.is_array & 3
    with pytest.raises(TypeError, match=r"larix\.by_type and larix\.by_path"):
        "**.bias" | larix.is_array


def test_uses_path_propagates():
    path = larix.by_path("*")
    assert not (larix.is_array & larix.by_type(int)).uses_path
    assert (larix.is_array & path).uses_path
    assert (path | larix.is_array).uses_path
    assert (~path).uses_path
    assert (~(larix.is_array | (True & path))).uses_path


def test_custom_filter_subclass_gets_paths():
    class Deep(larix.Filter):
        uses_path = True

        def match(self, path: str, leaf: Any) -> bool:
            return path.count(".") >= 1

    tree = {"a": 1, "b": {"c": 2}}
    assert larix.filter(tree, Deep()) == {"a": None, "b": {"c": 2}}
    assert larix.filter(tree, ~Deep()) == {"a": 1, "b": {"c": None}}


def test_filter_base_match_is_abstract():
    with pytest.raises(NotImplementedError):
        larix.Filter().match("", 1)


@given(filters, filters, leaves, st.sampled_from(["", "a", "b.0", "w.bias", "a.b.c"]))
def test_combinator_truth_tables(f, g, leaf, path):
    a, b = f.match(path, leaf), g.match(path, leaf)
    assert (f & g).match(path, leaf) == (a and b)
    assert (f | g).match(path, leaf) == (a or b)
    assert (~f).match(path, leaf) == (not a)
    assert spec_selects(f, path, leaf) == a
    if not (f.uses_path or g.uses_path):
        assert bool((f & g)(leaf)) == (a and b)
