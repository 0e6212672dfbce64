"""Shared test helpers: small Module classes and hypothesis strategies for random pytrees
and random filter specs.

Test files import these as `from conftest import ...` (pytest puts `tests/` on sys.path).
The Module classes live here, at module level, so that pickle can find them.
"""

from __future__ import annotations

import os
import re
from typing import Any

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import larix
from larix._paths import dotted_path

# Modest example counts: the machine that runs the suite has two cores.
settings.register_profile(
    "larix",
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# `LARIX_HYPOTHESIS_PROFILE=thorough pytest ...` for a long bug hunt.
settings.register_profile("thorough", parent=settings.get_profile("larix"), max_examples=1000)
settings.load_profile(os.environ.get("LARIX_HYPOTHESIS_PROFILE", "larix"))


@pytest.fixture(autouse=True)
def _independent_filter_jit_caches():
    # `filter_jit(f)` shares one cache per function, as Equinox's does (through JAX's): a
    # test that counts traces of a module-level function must not see another test's.
    from larix._jit import forget_shared_wrappers

    forget_shared_wrappers()
    yield


class Pair(larix.Module):
    """Two children and a static tag."""

    a: Any
    b: Any
    tag: str = larix.field(static=True, default="pair")


class Box(larix.Module):
    """One child and a static float."""

    value: Any
    scale: float = larix.field(static=True, default=1.0)


class Linear(larix.Module):
    """A small layer with array fields, a static field and a method."""

    weight: Any
    bias: Any
    activation: str = larix.field(static=True, default="identity")

    def __call__(self, x):
        return self.weight @ x + self.bias

    def scaled(self, x, scale=2.0):
        return scale * (self.weight @ x + self.bias)


def make_linear(n_in: int = 4, n_out: int = 3, seed: int = 0) -> Linear:
    rng = np.random.default_rng(seed)
    return Linear(
        jnp.asarray(rng.normal(size=(n_out, n_in)), jnp.float32),
        jnp.asarray(rng.normal(size=(n_out,)), jnp.float32),
    )


# --------------------------------------------------------------------------- leaves

_small_shapes = hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3)
_finite = st.floats(-100, 100, allow_nan=False, allow_infinity=False, width=32)
_ints = st.integers(-1000, 1000)

jax_float_arrays = hnp.arrays(np.float32, _small_shapes, elements=_finite).map(jnp.asarray)
jax_int_arrays = hnp.arrays(np.int32, _small_shapes, elements=_ints).map(jnp.asarray)
numpy_float_arrays = hnp.arrays(np.float64, _small_shapes, elements=_finite)
numpy_int_arrays = hnp.arrays(np.int64, _small_shapes, elements=_ints)
python_scalars = st.one_of(
    _ints,
    st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.text(alphabet="xyz, ", max_size=4),
)

# NaN is excluded on purpose: `tree_equal` (like Equinox's) compares with `==`, so a NaN
# leaf is unequal to itself.
leaves = st.one_of(jax_float_arrays, jax_int_arrays, numpy_float_arrays, numpy_int_arrays, python_scalars)

# Letters only, so that dotted paths are unique (a dict key "0" would collide with index 0).
dict_keys = st.sampled_from(["a", "b", "c", "w", "bias"])


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=3),
        st.lists(children, max_size=3).map(tuple),
        st.dictionaries(dict_keys, children, max_size=3),
        st.builds(Pair, children, children, tag=st.sampled_from(["p", "q"])),
        st.builds(Box, children),
    )


pytrees = st.recursive(st.one_of(leaves, st.none()), _containers, max_leaves=10)
"""Random pytrees: nested dict/list/tuple/None/Modules with array and scalar leaves."""

pytrees_no_arrays = st.recursive(st.one_of(python_scalars, st.none()), _containers, max_leaves=10)
"""Random pytrees without arrays (hashable when they hold no lists or dicts)."""


# --------------------------------------------------------------------------- filter specs

def _is_str(x: Any) -> bool:
    return isinstance(x, str)


def _is_positive_scalar(x: Any) -> bool:
    return isinstance(x, (int, float)) and x > 0


base_filters = st.sampled_from(
    [
        larix.is_array,
        larix.is_inexact_array,
        larix.is_array_like,
        larix.is_inexact_array_like,
        larix.by_type(int),
        larix.by_type(float, str),
        larix.by_type(np.ndarray),
        larix.by_path("**.a"),
        larix.by_path("*"),
        larix.by_path("**.0.**"),
        larix.by_path("a.**", "**.bias"),
        larix.by_path(re.compile(r".*b.*")),
    ]
)

filters = st.recursive(
    base_filters,
    lambda inner: st.one_of(
        st.tuples(inner, inner).map(lambda ab: ab[0] & ab[1]),
        st.tuples(inner, inner).map(lambda ab: ab[0] | ab[1]),
        inner.map(lambda a: ~a),
        st.tuples(inner, st.booleans()).map(lambda ab: ab[0] & ab[1]),
        st.tuples(st.booleans(), inner).map(lambda ab: ab[0] | ab[1]),
    ),
    max_leaves=4,
)
"""Random `larix.Filter`s: predicates, by_type, by_path, combined with & | ~."""

filter_specs = st.one_of(st.booleans(), st.sampled_from([_is_str, _is_positive_scalar]), filters)
"""Random single-leaf filter specs: bools, plain callables and Filters."""

path_free_specs = st.one_of(
    st.booleans(),
    st.sampled_from(
        [
            _is_str,
            _is_positive_scalar,
            larix.is_array,
            larix.is_inexact_array,
            larix.is_array_like,
            larix.is_inexact_array_like,
        ]
    ),
)
"""Specs that Equinox understands as well (no path filters)."""


def spec_selects(spec: Any, path: str, leaf: Any) -> bool:
    """Reference semantics of one filter-spec leaf, written independently of partition."""
    if isinstance(spec, bool):
        return spec
    if isinstance(spec, larix.Filter):
        return bool(spec.match(path, leaf))
    return bool(spec(leaf))


def expected_owners(tree: Any, specs: tuple[Any, ...]) -> list[int]:
    """For each leaf of `tree`, the index of the first spec that selects it, else len(specs)."""
    owners = []
    for key_path, leaf in jtu.tree_flatten_with_path(tree)[0]:
        path = dotted_path(key_path)
        owners.append(next((i for i, s in enumerate(specs) if spec_selects(s, path, leaf)), len(specs)))
    return owners


def is_none(x: Any) -> bool:
    return x is None


def node_paths(tree: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    """Every node of `tree` (leaves, `None`s and internal nodes) with its key path."""
    out = [(path, tree)]
    if tree is None:
        return out
    try:
        children, _ = jtu.flatten_one_level_with_keys(tree)
    except ValueError:
        return out
    for key, child in children:
        out.extend(node_paths(child, (*path, key)))
    return out


def get_at(tree: Any, path: tuple[Any, ...]) -> Any:
    """Follow a key path with ordinary Python indexing and attribute access."""
    for entry in path:
        if isinstance(entry, jtu.GetAttrKey):
            tree = getattr(tree, entry.name)
        elif isinstance(entry, jtu.DictKey):
            tree = tree[entry.key]
        elif isinstance(entry, jtu.SequenceKey):
            tree = tree[entry.idx]
        else:  # pragma: no cover - the strategies above build no other nodes
            raise AssertionError(f"unexpected key path entry {entry!r}")
    return tree
