"""Leaf predicates and the filters built from them.

A *filter spec* (what `partition`, `split`, `filter` and the filtered transforms accept) is
one of:

- a `bool`: every leaf below it is selected (`True`) or not (`False`);
- a callable `leaf -> bool`, such as [`larix.is_array`][] or `lambda x: isinstance(x, float)`.
  A class passed here keeps Equinox's meaning: it is *called* on the leaf;
- a [`larix.Filter`][]: a callable that can also look at the leaf's path, and that combines
  with `&`, `|` and `~`. Build them with [`larix.by_type`][] and [`larix.by_path`][], or
  combine the predicates below (`larix.is_array & ~larix.by_path("**.bias")`);
- a pytree *prefix* of the tree whose leaves are any of the above, each applying to the
  subtree below it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Filter",
    "by_path",
    "by_type",
    "is_array",
    "is_array_like",
    "is_inexact_array",
    "is_inexact_array_like",
]

_ARRAY_TYPES = (jax.Array, np.ndarray, np.generic)
_SCALAR_TYPES = (bool, int, float, complex)


class Filter:
    """A leaf predicate that may also look at the leaf's path, combinable with `&`, `|`, `~`.

    Subclasses implement `match(path, leaf)`, where `path` is the leaf's dotted path
    (`"layers.0.weight"`). Filters that ignore the path can be called on a leaf alone.
    """

    #: Whether `match` reads the path; partition only computes paths when some filter does.
    uses_path: bool = False

    def match(self, path: str, leaf: Any) -> bool:
        raise NotImplementedError

    def __call__(self, leaf: Any) -> bool:
        if self.uses_path:
            raise TypeError(
                f"{self!r} looks at the leaf's path, so it cannot be called on a leaf alone. "
                "Pass it as a filter spec to larix.partition / larix.split / larix.filter, "
                "which supply the path, or call `.match(path, leaf)`."
            )
        return self.match("", leaf)

    def __and__(self, other: Any) -> Filter:
        return _And(self, _as_filter(other))

    def __rand__(self, other: Any) -> Filter:
        return _And(_as_filter(other), self)

    def __or__(self, other: Any) -> Filter:
        return _Or(self, _as_filter(other))

    def __ror__(self, other: Any) -> Filter:
        return _Or(_as_filter(other), self)

    def __invert__(self) -> Filter:
        return _Not(self)


def _as_filter(spec: Any) -> Filter:
    if isinstance(spec, Filter):
        return spec
    if isinstance(spec, bool):
        return _Const(spec)
    if callable(spec):
        return _Predicate(spec)
    raise TypeError(
        f"Cannot combine a filter with {spec!r}: a filter is a bool, a callable `leaf -> bool` "
        "or a larix.Filter (see larix.by_type and larix.by_path)."
    )


class _Const(Filter):
    def __init__(self, value: bool):
        self.value = value

    def match(self, path: str, leaf: Any) -> bool:
        return self.value

    def __repr__(self) -> str:
        return repr(self.value)


class _Predicate(Filter):
    def __init__(self, fn: Callable[[Any], bool]):
        self.fn = fn

    def match(self, path: str, leaf: Any) -> bool:
        return bool(self.fn(leaf))

    def __repr__(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


class _FunctionFilter(_Predicate):
    """A documented predicate function that also combines with `&`, `|`, `~`."""

    def __init__(self, fn: Callable[[Any], bool]):
        super().__init__(fn)
        self.__name__ = fn.__name__
        self.__qualname__ = fn.__qualname__
        self.__doc__ = fn.__doc__
        self.__module__ = "larix"
        self.__wrapped__ = fn

    def __call__(self, leaf: Any) -> bool:
        # The hot path of every partition: skip `match` and its bool().
        return self.fn(leaf)

    def __reduce__(self) -> str:
        return self.__name__  # pickles as `larix.<name>`


class _And(Filter):
    def __init__(self, left: Filter, right: Filter):
        self.left, self.right = left, right
        self.uses_path = left.uses_path or right.uses_path

    def match(self, path: str, leaf: Any) -> bool:
        return self.left.match(path, leaf) and self.right.match(path, leaf)

    def __repr__(self) -> str:
        return f"({self.left!r} & {self.right!r})"


class _Or(Filter):
    def __init__(self, left: Filter, right: Filter):
        self.left, self.right = left, right
        self.uses_path = left.uses_path or right.uses_path

    def match(self, path: str, leaf: Any) -> bool:
        return self.left.match(path, leaf) or self.right.match(path, leaf)

    def __repr__(self) -> str:
        return f"({self.left!r} | {self.right!r})"


class _Not(Filter):
    def __init__(self, inner: Filter):
        self.inner = inner
        self.uses_path = inner.uses_path

    def match(self, path: str, leaf: Any) -> bool:
        return not self.inner.match(path, leaf)

    def __repr__(self) -> str:
        return f"~{self.inner!r}"


class by_type(Filter):  # noqa: N801 - reads as a function at the call site
    """Select the leaves that are instances of any of `types`.

    Use this rather than passing a class directly: a class passed as a filter spec is
    *called* on each leaf (Equinox's rule), which is rarely what is meant.

    **Arguments:**

    - `*types`: one or more classes; a leaf is selected if `isinstance(leaf, types)`.

    !!! example
        ```python
        >>> import larix
        >>> larix.partition([1, 2.0, "a"], larix.by_type(float))
        ([None, 2.0, None], [1, None, 'a'])

        ```
    """

    def __init__(self, *types: type):
        if not types or not all(isinstance(t, type) for t in types):
            raise TypeError(f"larix.by_type takes one or more classes, got {types!r}.")
        self.types = types

    def match(self, path: str, leaf: Any) -> bool:
        return isinstance(leaf, self.types)

    def __repr__(self) -> str:
        return f"by_type({', '.join(t.__name__ for t in self.types)})"


def _compile_glob(pattern: str) -> re.Pattern[str]:
    # Matched against "." + path, so that every segment is `\.name`. Then `*` and `?` stay
    # within one segment, and `**` is "any number of whole segments, also none", which
    # lets `encoder.**` match `encoder` itself and `**.bias` match a top-level `bias`.
    regex = []
    for segment in pattern.split("."):
        if segment == "**":
            regex.append(r"(?:\.[^.]*)*")
            continue
        chars = [r"[^.]*" if c == "*" else r"[^.]" if c == "?" else re.escape(c) for c in segment]
        regex.append(r"\." + "".join(chars))
    return re.compile("".join(regex))


class by_path(Filter):  # noqa: N801 - reads as a function at the call site
    """Select the leaves whose dotted path matches any of `patterns`.

    Paths are the keys of [`larix.split`][]: `layers.0.weight`. In a pattern, `*` matches
    within one segment and `**` matches any number of whole segments, so `"**.bias"` selects
    every bias and `"encoder.**"` everything below `encoder`. A compiled `re.Pattern` is
    matched against the whole path instead.

    A spec that selects no leaf because of a mistaken glob pattern warns when it is used:
    when a name in the pattern is missing from the tree but close to one that is there
    (`layer.*.weight` for `layers`), or when a pattern without wildcards names segments
    that all exist but no path they form (`layers.weight` for `layers.0.weight`). A
    pattern that names something the tree lacks altogether (`**.bias` on a model without
    biases) selects nothing silently. See [Filters](../filters.md#when-a-path-filter-selects-nothing).

    **Arguments:**

    - `*patterns`: glob strings or compiled regular expressions.
    - `allow_empty`: keyword-only; `True` to say that selecting nothing is intended, which
      turns the warning off for this filter.

    !!! example
        ```python
        >>> import larix
        >>> tree = {"encoder": {"w": 1.0, "b": 2.0}, "head": {"w": 3.0}}
        >>> larix.filter(tree, larix.by_path("**.w"))
        {'encoder': {'b': None, 'w': 1.0}, 'head': {'w': 3.0}}

        ```
    """

    uses_path = True

    def __init__(self, *patterns: str | re.Pattern[str], allow_empty: bool = False):
        if not patterns:
            raise TypeError("larix.by_path takes at least one pattern, e.g. by_path('**.bias').")
        compiled = []
        for p in patterns:
            if isinstance(p, re.Pattern):
                compiled.append(p)
            elif isinstance(p, str):
                compiled.append(_compile_glob(p))
            else:
                raise TypeError(
                    f"larix.by_path takes glob strings or re.Pattern objects, got {p!r}."
                )
        self.patterns = patterns
        self.allow_empty = allow_empty
        self._compiled = compiled

    def match(self, path: str, leaf: Any) -> bool:
        dotted = "." + path
        return any(
            c.fullmatch(path if isinstance(p, re.Pattern) else dotted) is not None
            for p, c in zip(self.patterns, self._compiled)
        )

    def __repr__(self) -> str:
        return f"by_path({', '.join(map(repr, self.patterns))})"

    def _mistakes(self, paths: list[str], names: set[str]) -> list[str]:
        """Explain each glob pattern that matches none of `paths` and looks mistaken.

        `names` holds the segments of `paths`. Regular expressions are never reported:
        larix cannot tell what they meant. Only called once a filter spec has selected
        nothing, so its cost does not touch the common case.
        """
        found = []
        for pattern, compiled in zip(self.patterns, self._compiled):
            if isinstance(pattern, re.Pattern) or any(compiled.fullmatch("." + p) for p in paths):
                continue
            why = _explain_glob_miss(pattern, paths, names)
            if why is not None:
                found.append(why)
        return found


def _quote(items: list[str], limit: int = 3) -> str:
    shown = ", ".join(repr(x) for x in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _explain_glob_miss(pattern: str, paths: list[str], names: set[str]) -> str | None:
    """Why `pattern`, which matches none of `paths`, looks like a mistake; `None` if it does not."""
    segments = pattern.split(".")
    literal = [s for s in segments if "*" not in s and "?" not in s]
    missing = [s for s in literal if s not in names]
    if any(s.isdigit() for s in missing):
        return None  # an index this tree does not have (`layers.7`): not a typo of `layers.1`
    if missing:
        candidates = [n for n in names if not n.isdigit()]
        fixes = {s: difflib.get_close_matches(s, candidates, n=1, cutoff=0.75) for s in missing}
        if not all(fixes.values()):
            return None  # it names something this tree lacks, such as `bias`: often on purpose
        fixed = ".".join(fixes[s][0] if s in fixes else s for s in segments)
        hits = [p for p in paths if _compile_glob(fixed).fullmatch("." + p)]
        names_text = ", ".join(f"no {s!r} (did you mean {fixes[s][0]!r}?)" for s in missing)
        text = f"the tree has {names_text}"
        if hits:
            text += f"; {fixed!r} would select {_quote(hits)}"
        return text
    if len(literal) < len(segments):
        return None  # wildcards that happen to match nothing: generic code does this on purpose
    # Every name in it exists, but no path is spelled this way: a missing index
    # (`layers.weight`) or a missing prefix (`bias` for `encoder.bias`).
    text = f"every name in {pattern!r} occurs in the tree, but no path is {pattern!r}"
    for wider in (f"**.{pattern}", f"{pattern}.**"):
        hits = [p for p in paths if _compile_glob(wider).fullmatch("." + p)]
        if hits:
            return f"{text}; {wider!r} would select {_quote(hits)}"
    close = difflib.get_close_matches(pattern, paths, n=3, cutoff=0.6)
    return f"{text}; close paths: {_quote(close)}" if close else text


def path_filter_mistakes(spec_leaves: list[Any], paths: list[str]) -> list[tuple[by_path, list[str]]]:
    """The `by_path` filters of a spec that selected no leaf, whose patterns look mistaken.

    Only filters whose match would *add* leaves are looked at: a `by_path` under `~`
    that matches nothing makes its spec select more, never nothing.
    """
    filters: list[by_path] = []
    for leaf in spec_leaves:
        if isinstance(leaf, Filter):
            filters.extend(f for f in _selecting_path_filters(leaf, True) if not f.allow_empty)
    if not filters:
        return []
    names = {s for p in paths for s in p.split(".")}
    found = []
    for f in filters:
        reasons = f._mistakes(paths, names)
        if reasons:
            found.append((f, reasons))
    return found


def _selecting_path_filters(f: Filter, positive: bool) -> list[by_path]:
    if isinstance(f, by_path):
        return [f] if positive else []
    if isinstance(f, _And | _Or):
        return _selecting_path_filters(f.left, positive) + _selecting_path_filters(f.right, positive)
    if isinstance(f, _Not):
        return _selecting_path_filters(f.inner, not positive)
    return []


@_FunctionFilter
def is_array(element: Any) -> bool:
    """Whether `element` is a JAX array or a NumPy array (or NumPy scalar).

    Tracers count as JAX arrays, so this holds inside `jax.jit` too. Python scalars do not.
    """
    return isinstance(element, _ARRAY_TYPES)


@_FunctionFilter
def is_array_like(element: Any) -> bool:
    """Whether `element` can be turned into a JAX array: an array, a Python `bool`, `int`,
    `float` or `complex`, or any object with a `__jax_array__` method."""
    return isinstance(element, _ARRAY_TYPES + _SCALAR_TYPES) or hasattr(element, "__jax_array__")


_INEXACT_DTYPE_CACHE: dict[Any, bool] = {}


def _is_inexact_dtype(dtype: Any) -> bool:
    # `jnp.issubdtype`, not `np.issubdtype`: NumPy does not count the ml_dtypes floats
    # (bfloat16, float8_*) as inexact, and raises on extended dtypes such as PRNG keys.
    known = _INEXACT_DTYPE_CACHE.get(dtype)
    if known is None:
        known = _INEXACT_DTYPE_CACHE[dtype] = bool(jnp.issubdtype(dtype, jnp.inexact))
    return known


@_FunctionFilter
def is_inexact_array(element: Any) -> bool:
    """Whether `element` is an array (see [`larix.is_array`][]) of floating or complex dtype.

    These are the leaves that [`larix.filter_grad`][] differentiates.
    """
    return isinstance(element, _ARRAY_TYPES) and _is_inexact_dtype(element.dtype)


@_FunctionFilter
def is_inexact_array_like(element: Any) -> bool:
    """Whether `element` is an inexact array, a Python `float` or `complex`, or an object
    with a `__jax_array__` method whose result is inexact."""
    if isinstance(element, _ARRAY_TYPES):
        return _is_inexact_dtype(element.dtype)
    if isinstance(element, (float, complex)):
        return True
    if hasattr(element, "__jax_array__"):
        return _is_inexact_dtype(element.__jax_array__().dtype)
    return False
