"""Differential fuzz tests of larix's caches, and regression tests for known cache bugs.

larix caches hard: filter_jit memoises the split of frozen Modules, interns static parts
and keys its compilations by their ids, remembers static parts per treedef and per tuple
shape, and gives outputs their split at birth; `split` memoises per Module and caches
treedefs by a structural signature; Modules cache their flatten. A cache that confuses two
inputs gives a silent wrong answer. So every cached answer here is compared with an
uncached one (the same Python function run directly, JAX's own key paths), exactly:
Python types of static values, signs of zeros, which attribute holds which array.

The trees are built from blueprints (see fuzz_helpers): one blueprint gives trees that are
equal under `==` but differ in types and signs (`(1, 2)` / `(1.0, 2)`, `0.0` / `-0.0`,
dict keys `1` / `1.0` / `True`), which must never share a cached answer.

CI runs a few examples (derandomized). A long, random run:

    LARIX_FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest tests/test_fuzz_caches.py -s
    LARIX_HYPOTHESIS_PROFILE=thorough .venv/bin/python -m pytest tests/test_fuzz_caches.py -s

It prints how many cases it compared at the end.
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import math
import os
import random
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

import larix
import larix.io
from fuzz_helpers import (
    GROUPS,
    Deep,
    Fn,
    FreshNode,
    Leafy,
    Lin,
    Node,
    ReorderedPair,
    assert_exact,
    blueprints,
    build,
    exact_repr,
    numbers_in,
    reference_keys,
    reveal,
)

# --------------------------------------------------------------------------- run length

_ENV_EXAMPLES = os.environ.get("LARIX_FUZZ_EXAMPLES")
_PROFILE_EXAMPLES = settings.default.max_examples  # 50 in the default profile ("larix")
LONG_RUN = bool(_ENV_EXAMPLES) or _PROFILE_EXAMPLES > 50


def _fuzz(ci_examples: int) -> settings:
    """Settings for one fuzz test: `ci_examples` derandomized examples in CI; in a long run
    LARIX_FUZZ_EXAMPLES examples (or the profile's count scaled alike), random."""
    if _ENV_EXAMPLES:
        count = int(_ENV_EXAMPLES)
    else:
        count = max(1, ci_examples * _PROFILE_EXAMPLES // 50)
    # No shrinking in CI: each example compiles, and shrinking a failure took minutes. The
    # regression tests below are the small reproducers; a long run shrinks what it finds.
    extra: dict[str, Any] = (
        {"print_blob": True}
        if LONG_RUN
        else {"derandomize": True, "database": None, "phases": [Phase.explicit, Phase.generate]}
    )
    return settings(
        max_examples=count,
        deadline=None,
        report_multiple_bugs=False,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
        **extra,
    )


CASES: collections.Counter[str] = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_cases(request):
    yield
    if not CASES:
        return
    text = "fuzz_caches covered " + ", ".join(f"{n} {what}" for what, n in sorted(CASES.items()))
    text += f": {sum(CASES.values())} cases in all"
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if LONG_RUN and reporter is not None:
        reporter.write_line(text)  # shown even without -s
    else:
        print("\n" + text)  # shown with -s


# --------------------------------------------------------------------------- filter_jit


def _pick(data: Any, pool: list[tuple[Any, Any]]) -> tuple[Any, Any]:
    return pool[data.draw(st.integers(0, len(pool) - 1), label="pool index")]


def _call_form(data: Any, pool: list[tuple[Any, Any]]) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """Random arguments, as ((args, kwargs) for filter_jit, (args, kwargs) for the reference)."""
    form = data.draw(st.sampled_from(["one", "two", "keyword", "state", "keywords"]), label="call form")
    (xj, xr), (yj, yr) = _pick(data, pool), _pick(data, pool)
    if form == "one":
        return ((xj,), {}), ((xr,), {})
    if form == "two":
        return ((xj, yj), {}), ((xr, yr), {})
    if form == "keyword":
        return ((xj,), {"k": yj}), ((xr,), {"k": yr})
    if form == "state":  # like an optimiser state: nested tuples of trees and None
        return (((xj, (yj, None)),), {}), (((xr, (yr, None)),), {})
    return ((), {"b": yj, "a": xj}), ((), {"a": xr, "b": yr})  # keyword order must not matter


def _new_function(data: Any) -> tuple[Any, Any]:
    """(filter_jit function, the uncached function it must agree with)."""
    kind = data.draw(st.sampled_from(["function", "module", "method"]), label="function kind")
    if kind == "function":
        return larix.filter_jit(reveal), reveal
    seed = data.draw(st.integers(0, 2**16), label="function seed")
    group = data.draw(st.integers(0, len(GROUPS) - 1), label="mode group")
    mode = random.Random(seed).choice(GROUPS[group])
    fn = Fn(jnp.full((2,), float(seed % 5), jnp.float32), mode=mode)
    reference = fn if kind == "module" else fn.method
    return larix.filter_jit(reference), reference


def _remember_outputs(pool: list[tuple[Any, Any]], out_jit: Any, out_ref: Any) -> None:
    """Outputs go back into the pool: the next calls feed them in (born with their split)."""
    pool.append((out_jit[3], out_ref[3]))  # ReorderedPair of Modules
    pool.append((out_jit[3].a, out_ref[3].a))  # a Module from inside it
    for got, want in zip(out_jit[2][0], out_ref[2][0]):  # the positional inputs, passed back
        pool.append((got, want))
    del pool[:-12]


@_fuzz(15)
@given(data=st.data())
def test_filter_jit_agrees_with_the_uncached_function(data):
    bps = data.draw(st.lists(blueprints, min_size=1, max_size=3), label="blueprints")
    pool: list[tuple[Any, Any]] = []
    functions: list[tuple[Any, Any]] = []

    def new_value() -> None:
        bp = bps[data.draw(st.integers(0, len(bps) - 1), label="blueprint")]
        tree = build(bp, random.Random(data.draw(st.integers(0, 2**16), label="seed")))
        pool.append((tree, tree))

    new_value()
    new_value()
    steps = data.draw(st.integers(3, 8), label="steps")
    for _ in range(steps):
        action = data.draw(
            st.sampled_from(
                [
                    "value",
                    "value",
                    "call",
                    "call",
                    "call",
                    "call",
                    "aot",
                    "del",
                    "clear",
                    "drop function",
                    "mutate",
                ]
            ),
            label="action",
        )
        if action == "value":
            new_value()
        elif action == "del" and len(pool) > 2:
            del pool[data.draw(st.integers(0, len(pool) - 1), label="delete")]
            gc.collect()
        elif action == "mutate":
            # Past the frozen dataclass, as some code does: caches must not serve the old value.
            got, want = _pick(data, pool)
            names = (
                [f.name for f in dataclasses.fields(want) if not f.metadata.get("static")]
                if isinstance(want, larix.Module)
                else []
            )
            if names:
                name = names[0]
                new = jnp.full((), float(len(pool)), jnp.float32)
                for m in {id(got): got, id(want): want}.values():
                    object.__setattr__(m, name, new)
                note(f"mutate: {type(want).__name__}.{name} = {new}")
        elif action == "clear":
            larix.clear_caches()
            gc.collect()
        elif action == "drop function" and functions:
            del functions[data.draw(st.integers(0, len(functions) - 1), label="drop")]
            gc.collect()
        elif action in ("call", "aot"):
            if not functions or data.draw(st.booleans(), label="new function"):
                functions.append(_new_function(data))
            jitted, reference = functions[data.draw(st.integers(0, len(functions) - 1), label="function")]
            (args_j, kw_j), (args_r, kw_r) = _call_form(data, pool)
            want = reference(*args_r, **kw_r)
            if action == "call":
                got = jitted(*args_j, **kw_j)
            else:
                compiled = jitted.lower(*args_j, **kw_j).compile()
                got = compiled(*args_j, **kw_j)
            note(f"{action}: {want[0]}")
            assert_exact(got, want)
            CASES["filter_jit calls"] += 1
            _remember_outputs(pool, got, want)
            if action == "aot":
                # Other arguments: the compiled function must refuse them or be right.
                (args_j, kw_j), (args_r, kw_r) = _call_form(data, pool)
                try:
                    got = compiled(*args_j, **kw_j)
                except TypeError:
                    CASES["AOT refusals"] += 1
                else:
                    assert_exact(got, reference(*args_r, **kw_r), "AOT with other arguments")
                    CASES["filter_jit calls"] += 1


# --------------------------------------------------------------------------- split / merge

BIG = tuple(range(1100))  # with it, a tree has >= 1024 leaves: split's treedef cache applies


def _is_number(x: Any) -> bool:
    return type(x) in (int, float, bool)


SPECS = [(), (larix.is_array,), (True,), (_is_number,), (larix.is_array, _is_number)]


def _owner(specs: tuple[Any, ...], leaf: Any) -> int:
    for i, spec in enumerate(specs):
        if spec is True or (callable(spec) and spec(leaf)):
            return i
    return len(specs)


def check_split(tree: Any, specs: tuple[Any, ...]) -> None:
    """split gives every leaf its JAX key path, in the right part; merge gives `tree` back
    exactly (static types and signs included, the very same leaf objects)."""
    keys = reference_keys(tree)
    leaves = jtu.tree_leaves(tree)
    if len(set(keys)) < len(keys):
        with pytest.raises(ValueError):
            larix.split(tree, *specs)
        return
    skeleton, *parts = larix.split(tree, *specs)
    assert sum(map(len, parts)) == len(leaves)
    for key, leaf in zip(keys, leaves):
        part = parts[_owner(specs, leaf)]
        assert key in part, f"key {key!r} missing from its part: {sorted(part)[:10]}"
        assert part[key] is leaf, f"key {key!r} holds {part[key]!r}, not {leaf!r}"
    merged = larix.merge(skeleton, *parts)
    assert_exact(merged, tree, "merged")
    # The very same leaf objects. (Not compared in order: JAX sorts dict keys, and keys
    # without a total order, such as frozensets, may sort otherwise once rebuilt.)
    assert sorted(map(id, jtu.tree_leaves(merged))) == sorted(map(id, leaves))
    CASES["split/merge round trips"] += 1


@_fuzz(40)
@given(
    bp=blueprints,
    seeds=st.lists(st.integers(0, 2**16), min_size=2, max_size=4),
    big=st.booleans(),
    specs=st.sampled_from(SPECS),
    pad_group=st.integers(0, len(GROUPS) - 1),
    clear=st.booleans(),
)
def test_split_merge_round_trip_is_exact(bp, seeds, big, specs, pad_group, clear):
    # Trees of one structure, split one after the other: equal under == but not the same.
    members = GROUPS[pad_group]
    for i, seed in enumerate(seeds):
        rng = random.Random(seed)
        tree = build(bp, rng)
        if big:  # every member of the group in turn: each split after one of another
            tree = Deep(BIG, tree, pad=members[i % len(members)], name=rng.choice(members))
        check_split(tree, specs)
        check_split(tree, specs)  # a Module's split is memoised now
        if clear:
            larix.clear_caches()


@_fuzz(15)
@given(bp=blueprints, seed=st.integers(0, 2**16))
def test_io_save_load_round_trip(bp, seed, tmp_path_factory):
    tree = build(bp, random.Random(seed))
    path = tmp_path_factory.mktemp("fuzz") / "tree.safetensors"
    if len(set(reference_keys(tree))) < len(reference_keys(tree)):
        with pytest.raises(ValueError):
            larix.io.save(path, tree)
        return
    larix.io.save(path, tree)
    like = jtu.tree_map(_zeros_like, tree)
    loaded = larix.io.load(path, like)
    assert_exact(loaded, tree, "loaded")
    CASES["io round trips"] += 1


def _zeros_like(x: Any) -> Any:
    if isinstance(x, jax.Array):
        return jnp.zeros_like(x)
    if isinstance(x, np.ndarray):
        return np.zeros_like(x)
    if isinstance(x, np.generic):
        return type(x)(0)
    return x


# ============================================================================ regressions
# Known reproducers (issue 8 §5). Each fails without the fix it names.

# --------------------------------------------------------------------------- a. reordering NamedTuple


def test_regression_reordering_namedtuple_argument():
    # filter_jit's tuple fast path took the children in attribute order, JAX in flatten order.
    f = larix.filter_jit(lambda p: p.a - p.b)
    assert float(f(ReorderedPair(jnp.array(10.0), jnp.array(1.0)))) == 9.0
    assert float(f(ReorderedPair(jnp.array(10.0), jnp.array(1.0)))) == 9.0  # cached


def test_regression_reordering_namedtuple_output_fed_back():
    # The Modules inside a returned NamedTuple were given the arrays of their neighbour.
    f = larix.filter_jit(lambda x: ReorderedPair(a=Lin(10 * x), b=Lin(x)))
    out = f(jnp.array(1.0))
    assert float(out.a.w) == 10.0 and float(out.b.w) == 1.0
    weight = larix.filter_jit(lambda m: m.w)
    assert float(weight(out.a)) == 10.0
    assert float(weight(out.b)) == 1.0
    assert float(larix.filter_jit(lambda m, n: m.w * n)(out.a, 1)) == 10.0
    assert float(larix.filter_jit(lambda p: p.a.w - p.b.w)(out)) == 9.0
    assert [float(x) for x in jtu.tree_leaves(out.a)] == [10.0]


def test_regression_split_keys_of_reordering_namedtuple():
    # split named the children by attribute, but they come in flatten order (b, a).
    pair = ReorderedPair(np.full((), 10.0), np.full((), 1.0))
    _, arrays = larix.split(pair)
    want = dict(zip(reference_keys(pair), jtu.tree_leaves(pair)))
    assert {k: float(v) for k, v in arrays.items()} == {k: float(v) for k, v in want.items()}


# --------------------------------------------------------------------------- b. split's treedef cache


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ((1, 2), (1.0, 2.0)),
        ((1.0, 2.0), (1, 2)),
        (0.0, -0.0),
        (-0.0, 0.0),
        ((1,), (True,)),
        ((0.0,), (-0.0,)),
        (frozenset({1}), frozenset({1.0})),
    ],
    ids=repr,
)
def test_regression_split_treedef_cache_keeps_static_field_types(first, second):
    larix.split(Deep(BIG, None, pad=first))
    merged = larix.merge(*larix.split(Deep(BIG, None, pad=second)))
    assert exact_repr(merged.pad) == exact_repr(second)


@pytest.mark.parametrize(
    ("first", "second"),
    [(frozenset({1}), frozenset({True})), ((1, 2), (True, 2)), ((0, 1), (False, 1)), (1, True)],
    ids=repr,
)
def test_regression_split_treedef_cache_keeps_dict_keys(first, second):
    # NEW: the signature holds dict keys and their types, but compares the keys with ==:
    # the cached treedef of {frozenset({1}): ...} rebuilt {frozenset({True}): ...} with the
    # key frozenset({1}). (Keys whose text holds a dot, such as 1.0, skip the cache.)
    larix.split({first: BIG})
    tree = {second: BIG}
    skeleton, leaves = larix.split(tree)
    assert sorted(leaves) == sorted(reference_keys(tree))
    (key,) = larix.merge(skeleton, leaves).keys()
    assert exact_repr(key) == exact_repr(second)


# --------------------------------------------------------------------------- c. AOT after id reuse


class Scaled(larix.Module):
    w: Any
    k: Any = larix.field(static=True, default=None)


def _times_k(m: Scaled) -> Any:
    return m.w * m.k


def test_regression_compiled_refuses_other_statics_after_clear_caches():
    # The compiled function kept the *ids* of the static parts it was lowered for, not the
    # parts: once they died, a new static part at the same address matched.
    w = jnp.ones(())
    jitted = larix.filter_jit(_times_k)
    compiled = jitted.lower(Scaled(w, k=2)).compile()
    assert float(compiled(Scaled(w, k=2))) == 2.0
    for i in range(40):  # push the k=2 trace out of the recompile log, which holds it
        jitted(Scaled(w, k=1000 + i))
    larix.clear_caches()
    gc.collect()
    kept = []  # kept alive, so that each new static part takes a new address
    for k in range(114, 114 + 1000):
        model = Scaled(w, k=k)
        kept.append(model)
        try:
            out = compiled(model)
        except TypeError:
            continue
        pytest.fail(f"compiled for k=2 ran for k={k} and returned {float(out)} (want TypeError)")


# --------------------------------------------------------------------------- d. long tuples, fresh nodes


INTS = tuple(range(70))
FLOATS = tuple(float(i) for i in range(70))


def _first_type(m: Deep) -> Any:
    return m.extra.rest, type(m.inner.items[0]).__name__


def test_regression_long_tuples_in_fresh_nodes_do_not_share_a_trace():
    # `_inspect` recorded long tuples to keep whole by id; a node that builds fresh tuples
    # gave the id to another tuple, which was labelled with the first one's element types.
    f = larix.filter_jit(_first_type)
    w = jnp.ones(())
    for _ in range(3):
        assert f(Deep(FreshNode(FLOATS, None), FreshNode(INTS, w)))[1] == "float"
        assert f(Deep(FreshNode(INTS, None), FreshNode(INTS, w)))[1] == "int"
        assert f(Deep(FreshNode(FLOATS, None), FreshNode(FLOATS, w)))[1] == "float"


def test_regression_long_tuple_of_arrays_in_fresh_node_is_not_refused():
    # The same id confusion kept a tuple of 70 *arrays* whole: "unhashable static value".
    arrays = tuple(jnp.full((), float(i)) for i in range(70))
    f = larix.filter_jit(lambda m: sum(m.inner.items) + m.extra.items[0])
    for _ in range(3):
        assert float(f(Deep(FreshNode(arrays, None), FreshNode(INTS, None)))) == sum(range(70))


def test_regression_long_tuples_int_vs_float_do_not_share_a_trace():
    f = larix.filter_jit(lambda m: (m.extra, type(m.inner[0]).__name__, type(m.pad[0]).__name__))
    w = jnp.ones(())
    for items in (INTS, FLOATS, INTS, tuple(bool(i % 2) for i in range(70))):
        _, inner, pad = f(Deep(items, w, pad=items))
        assert inner == pad == type(items[0]).__name__


# --------------------------------------------------------------------------- e. equal-but-different statics


def _sign_of(x: Any, s: Any) -> Any:
    return x + jnp.arctan2(s, -1.0)


@pytest.mark.parametrize("order", [(0.0, -0.0), (-0.0, 0.0)], ids=repr)
def test_regression_zero_signs_do_not_share_a_trace(order):
    f = larix.filter_jit(_sign_of)
    x = jnp.zeros(())
    for s in order:
        got, want = float(f(x, s)), float(_sign_of(x, s))
        assert got == want and math.copysign(1.0, got) == math.copysign(1.0, s)
    g = larix.filter_jit(lambda m: (m.value, jnp.arctan2(m.tag, -1.0), m.tag))
    for s in order:
        _, angle, tag = g(Leafy(x, tag=s))
        assert math.copysign(1.0, float(angle)) == math.copysign(1.0, s) == math.copysign(1.0, tag)


@pytest.mark.parametrize(
    "values",
    [((1.0, 2), (1, 2), (True, 2)), ((0.0,), (-0.0,)), (frozenset({1}), frozenset({1.0}), frozenset({True}))],
    ids=repr,
)
def test_regression_nested_static_field_values_do_not_share_a_trace(values):
    f = larix.filter_jit(lambda m: (m.value, exact_repr(m.tag)))
    for _ in range(2):
        for tag in values:
            assert f(Leafy(jnp.ones(()), tag=tag))[1] == exact_repr(tag)


@pytest.mark.parametrize(
    "keys", [(1, 1.0, True), (0.0, -0.0, 0), (frozenset({1}), frozenset({1.0})), ((1, 2), (1.0, 2))], ids=repr
)
@pytest.mark.parametrize("leaf", ["array", "static"])
@pytest.mark.parametrize("kind", ["dict", "OrderedDict", "defaultdict"])
def test_regression_equal_dict_keys_do_not_share_a_trace(keys, leaf, kind):
    # OrderedDict and defaultdict: NEW beyond the list (the same bug).
    make = {
        "dict": dict,
        "OrderedDict": collections.OrderedDict,
        "defaultdict": lambda items: collections.defaultdict(int, items),
    }[kind]
    f = larix.filter_jit(lambda d: ([exact_repr(k) for k in d], d))
    for _ in range(2):
        for key in keys:
            value = jnp.ones(()) if leaf == "array" else "v"
            names, out = f(make({key: value}))
            assert names == [exact_repr(key)]
            assert [exact_repr(k) for k in out] == [exact_repr(key)]


@pytest.mark.parametrize("values", [(0.0, -0.0), (-0.0, 0.0), ((1, 2), (1.0, 2)), (1, True)], ids=repr)
def test_regression_custom_node_aux_data_does_not_share_a_trace(values):
    # NEW: the aux data of a registered pytree node (here Node's) was compared with ==
    # only. (`jax.jit` itself tells 0.0 and -0.0 apart here.)
    f = larix.filter_jit(
        lambda n: (n.children, exact_repr(n.aux), jnp.arctan2(numbers_in(n.aux)[0] * 0.0, -1.0))
    )
    x = jnp.ones(())
    for aux in values:
        _, text, angle = f(Node((x,), aux))
        assert text == exact_repr(aux)
        assert math.copysign(1.0, float(angle)) == math.copysign(1.0, numbers_in(aux)[0])


def test_regression_output_dict_keys_keep_their_type():
    # NEW: output static parts are interned, and {1: x} and {1.0: x} have equal treedefs.
    g = larix.filter_jit(lambda x, flag: ({(1 if flag else 1.0): x}, {"s": 0.0 if flag else -0.0}))
    for flag in (True, False, True):
        keyed, signed = g(jnp.ones(()), flag)
        assert list(map(exact_repr, keyed)) == [exact_repr(1 if flag else 1.0)]
        assert exact_repr(signed["s"]) == exact_repr(0.0 if flag else -0.0)


@pytest.mark.parametrize("flags", [(True, False), (False, True)], ids=repr)
def test_regression_static_outputs_keep_their_type_and_sign(flags):
    # NEW: static parts of outputs are interned too: two traces (True and False are not
    # equal) whose static outputs are equal but not the same got one static part.
    g = larix.filter_jit(
        lambda x, flag: (x, 0.0 if flag else -0.0, 1 if flag else 1.0, (1, 2) if flag else (1.0, 2))
    )
    for flag in flags:
        _, zero, one, pair = g(jnp.ones(()), flag)
        assert exact_repr(zero) == exact_repr(0.0 if flag else -0.0)
        assert exact_repr(one) == exact_repr(1 if flag else 1.0)
        assert exact_repr(pair) == exact_repr((1, 2) if flag else (1.0, 2))


# --------------------------------------------------------------------------- f. keys without a total order


def test_regression_split_keys_of_frozenset_dict_keys():
    # frozensets compare by inclusion, not a total order: split's own sort and JAX's
    # ordering disagreed, and leaves were filed under the wrong keys.
    keys = [frozenset({2, 3}), frozenset({3}), frozenset({1, 2}), frozenset({4}), frozenset({2})]
    tree = {k: np.full((), float(i)) for i, k in enumerate(keys)}
    _, leaves = larix.split(tree)
    want = dict(zip(reference_keys(tree), jtu.tree_leaves(tree)))
    assert {k: float(v) for k, v in leaves.items()} == {k: float(v) for k, v in want.items()}


@_fuzz(50)
@given(st.lists(st.sets(st.integers(0, 4), max_size=3).map(frozenset), min_size=2, max_size=6, unique=True))
def test_split_keys_of_frozenset_dict_keys_match_jax(keys):
    tree = {k: np.full((), float(i)) for i, k in enumerate(keys)}
    check_split(tree, ())
    check_split(Lin(tree), ())


# --------------------------------------------------------------------------- g. stale memos


def test_regression_object_setattr_is_seen_by_filter_jit_and_tree_leaves():
    m = Leafy(jnp.ones(()), tag="t")
    f = larix.filter_jit(lambda m: m.value * 1)
    f(m)
    jtu.tree_leaves(m)
    larix.split(m)
    new = jnp.full((), 5.0)
    object.__setattr__(m, "value", new)
    assert float(f(m)) == 5.0
    assert jtu.tree_leaves(m) == [new]
    assert larix.split(m)[1] == {"value": new}


class _Switch:
    """A filter spec (callable object) whose answer depends on mutable state."""

    def __init__(self) -> None:
        self.on = True

    def __call__(self, leaf: Any) -> bool:
        return self.on


def test_regression_mutable_filter_spec_is_not_answered_from_memo():
    m = Leafy(jnp.ones(()), tag="t")
    spec = _Switch()
    _, selected, rest = larix.split(m, spec)
    assert list(selected) == ["value"] and rest == {}
    spec.on = False
    _, selected, rest = larix.split(m, spec)
    assert selected == {} and list(rest) == ["value"]


@pytest.mark.parametrize(("valid", "invalid"), [(True, 1), (False, 0), (True, 1.0)], ids=repr)
def test_regression_split_memo_does_not_accept_an_invalid_spec(valid, invalid):
    fresh = Leafy(jnp.ones(()), tag="t")
    with pytest.raises(Exception) as not_memoised:
        larix.split(fresh, invalid)
    m = Leafy(jnp.ones(()), tag="t")
    larix.split(m, valid)
    with pytest.raises(not_memoised.type):
        larix.split(m, invalid)


# --------------------------------------------------------------------------- h. no repr on retrace


class _NoRepr:
    """Hashable, comparable, and refuses to be printed."""

    def __init__(self, v: int):
        self.v = v

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _NoRepr) and other.v == self.v

    def __hash__(self) -> int:
        return hash(self.v)

    def __repr__(self) -> str:
        raise RuntimeError("repr() must not be called")


def test_regression_retrace_does_not_repr_statics():
    f = larix.filter_jit(lambda m: m.value + m.tag.v)
    with larix.debug.explain_recompiles(False):
        assert float(f(Leafy(jnp.ones(()), tag=_NoRepr(1)))) == 2.0
        assert float(f(Leafy(jnp.ones(()), tag=_NoRepr(2)))) == 3.0
        assert float(f(Leafy(jnp.ones(()), _NoRepr(3)))) == 4.0
