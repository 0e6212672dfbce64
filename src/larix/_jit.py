"""filter_jit: `jax.jit` for whole models, with near-raw per-call overhead.

Per call, the work is: look up each argument's cached static part (memoised on frozen
Modules), look up the compiled function for that tuple of static parts in a dict, call a
`jax.jit` that takes only the flat list of arrays, and rebuild the outputs from a static
part recorded at trace time. Nothing here waits for the device.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import inspect
import itertools
import threading
import typing
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import jax
import jax.tree_util as jtu
import numpy as np

from . import _flat, _intercept
from ._errors import from_compiled
from ._exact import exact_field_keys, exact_key, exact_keys
from ._field import EPOCH
from ._filters import is_array
from ._flat import _LEAF_TYPES, ArrayImpl, _dynamic_field_names
from ._module import MODULE_TYPES, BoundMethod, Module
from ._paths import CUSTOM_NODES, dict_keys_in_order, flatten_one_level_with_keys, python_path
from ._recompile import TraceLog, explain, record_trace

__all__ = ["clear_caches", "filter_jit"]

# Memo on a Module instance: (its _Static, its arrays). See _split_arg.
_JIT_MEMO = "__larix_jit__"
_CONCRETE_ARRAY_TYPES = (ArrayImpl, np.ndarray)
_CONCRETE_SET = frozenset(_CONCRETE_ARRAY_TYPES)
_INFO_MAX = 512  # entries of a wrapper's `info`: a stream of ever-new structures must not leak


class _Static:
    """The static part of one argument (or output): structure, static leaves, array slots.

    Compared (and interned) by its *exact* key (see `_exact`): the treedef, the array slots,
    and the exact keys of the non-array leaves, of every Module static field and of every
    other aux datum in the tree (dict keys, custom nodes' aux). A treedef alone compares aux
    data with `==`, which would let `{1: x}` and `{1.0: x}`, or static fields `0.0` and
    `-0.0`, share a compilation.
    """

    __slots__ = (
        "__weakref__",
        "_hash",
        "all_arrays",
        "bare",
        "exact",
        "fields",
        "memoisable",
        "num_arrays",
        "positions",
        "template",
        "treedef",
        "values",
    )

    def __init__(
        self,
        treedef: Any,
        template: list[Any],
        positions: tuple[int, ...],
        memoisable: bool,
        fields: tuple[Any, ...] = (),
        tokens: tuple[Any, ...] = (),
        hashable: bool = True,
    ):
        # `template` holds the leaves with None in the array slots `positions`; `fields` the
        # values of every Module static field in the tree, in traversal order; `tokens` the
        # exact keys of the other aux data, in traversal order (see _inspect).
        self.treedef = treedef
        self.template = template
        self.positions = positions
        self.num_arrays = len(positions)
        self.bare = treedef.num_nodes == 1 and len(positions) == 1
        self.memoisable = memoisable
        self.values = tuple(template)
        self.all_arrays = len(positions) == len(template)
        self.fields = fields
        field_keys, fields_hashable = exact_field_keys(fields)
        if not fields_hashable:  # a list in a static field: it may change in place
            self.memoisable = False
        self.exact = (exact_keys(self.values), field_keys, tokens)
        # Hashing also rejects an unhashable static value (a list) up front.
        try:
            self._hash: int | None = hash((treedef, positions, self.exact))
        except TypeError:
            if hashable:
                raise
            self._hash = None  # an output: compared by value, never a cache key

    def rebuild(self, arrays: Any) -> Any:
        if self.bare:
            return arrays[0]
        if self.all_arrays:  # an optimiser state: nothing to interleave
            return self.treedef.unflatten(arrays)
        leaves = self.template.copy()
        for p, a in zip(self.positions, arrays):
            leaves[p] = a
        return self.treedef.unflatten(leaves)

    def __hash__(self) -> int:
        return id(self) if self._hash is None else self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, _Static) or self._hash != other._hash:
            return False
        return self.positions == other.positions and self.exact == other.exact and self.treedef == other.treedef


# Interned static parts: hash -> weak references. Not a WeakValueDictionary, whose keys
# (here the statics themselves) would be held strongly and never freed.
_INTERNED: dict[int, list[weakref.ref[_Static]]] = {}
_INTERN_LOCK = threading.Lock()
# Hashes of buckets that hold a dead reference. The weakref callback only appends here
# (atomic under the GIL) and never takes the lock: it can run inside `_intern` itself, when
# a garbage collection happens while the lock is held, and a lock taken there would
# deadlock every thread.
_DEAD: list[int] = []


def _intern(static: _Static) -> _Static:
    """One object per distinct static part, so that the static part of a model that a
    jitted call returned *is* the one of the model that went in: the cache key is then
    the ids of the static parts, a tuple of ints hashed and compared in C.

    No user code runs under the lock: the candidates are compared (their values' `__eq__`)
    outside it. Two threads may then intern equal parts twice; that costs a second
    compilation, never a wrong one, since the cache compares exact keys by identity.
    """
    h = static._hash
    if h is None:
        return static
    with _INTERN_LOCK:
        _prune()
        candidates = [ref() for ref in _INTERNED.get(h, ())]
    for existing in candidates:
        if existing is not None and existing == static:
            return existing
    with _INTERN_LOCK:
        _INTERNED.setdefault(h, []).append(weakref.ref(static, lambda _, h=h: _DEAD.append(h)))
    return static


def _prune() -> None:
    """Drop dead references (lock held)."""
    while _DEAD:
        h = _DEAD.pop()
        refs = _INTERNED.get(h)
        if refs is not None:
            refs[:] = [r for r in refs if r() is not None]
            if not refs:
                del _INTERNED[h]


# Tuples at least this long whose items are all plain Python values are kept whole, as one
# static leaf (for Modules, whose walk in _inspect finds them): a Module holding
# `tuple(range(100_000))` then costs one hash on its first call instead of 100k leaves to
# flatten, check and rebuild (benchmarks: first call). Decided by the tuple's own content
# (`_is_whole`), never by its id, which a tuple built afresh by a custom node's flatten
# could share with another one.
_WHOLE_TUPLE_MIN = 64
_PLAIN_TYPES = frozenset({int, float, complex, bool, str, bytes, type(None)})


_STR = frozenset({str})


def _is_whole(node: Any) -> bool:
    return type(node) is tuple and len(node) >= _WHOLE_TUPLE_MIN and _PLAIN_TYPES.issuperset(map(type, node))


def _inspect(node: Any, fields: list[Any], tokens: list[Any], whole: list[bool]) -> bool:
    """Walk `node`: collect the values of all Module static fields into `fields` and the
    exact keys of all other aux data (dict keys, custom nodes' aux) into `tokens`, both in
    traversal order, and return whether every container in it is immutable (so that its
    split may be memoised). Sets `whole[0]` if a tuple is to be kept whole."""
    t = type(node)
    if t in _LEAF_TYPES or node is None:
        return True
    if t in MODULE_TYPES:
        d = node.__dict__
        fields.extend(d[name] for name in t._larix_static_fields)  # type: ignore[attr-defined]
        return all([_inspect(d[name], fields, tokens, whole) for name in _dynamic_field_names(t)])
    if t is dict:
        # In JAX's order (sorted keys), as the treedef's: a walk in insertion order could
        # line up the statics of two dicts that the treedef pairs differently.
        keys = tuple(dict_keys_in_order(node))
        # str keys are exact by ==; a tuple of them cannot equal exact_keys' `(types, values)`.
        tokens.append(keys if _STR.issuperset(map(type, keys)) else exact_keys(keys))
        if not _LEAF_TYPES.issuperset(map(type, node.values())):  # C-level: a dict of arrays is done
            [_inspect(node[k], fields, tokens, whole) for k in keys]
        return False
    if _is_tuple_node(node):
        if _LEAF_TYPES.issuperset(map(type, node)):  # C-level check: a tuple of plain leaves
            if not whole[0] and _is_whole(node):
                whole[0] = True
            return True
        return all([_inspect(child, fields, tokens, whole) for child in node])
    if t is list:
        if not _LEAF_TYPES.issuperset(map(type, node)):
            [_inspect(child, fields, tokens, whole) for child in node]
        return False
    try:
        children, aux = jtu.flatten_one_level(node)
    except ValueError:
        return True  # a leaf
    tokens.append(exact_key(aux))
    [_inspect(child, fields, tokens, whole) for child in children]
    return False  # a custom container: we cannot know that it is immutable


def _make_static(
    x: Any,
    where: Any,
    memoise: bool,
    hashable: bool = True,
    flat: tuple[list[Any], Any] | None = None,
) -> tuple[_Static, tuple[Any, ...]]:
    """Split `x` into its static part and its arrays. `flat` is `x` flattened already."""
    fields: list[Any] = []
    tokens: list[Any] = []
    whole = [False]
    immutable = _inspect(x, fields, tokens, whole)
    if flat is None:
        flat = jtu.tree_flatten(x, _is_whole if memoise and whole[0] else None)
        leaves, treedef = flat
    else:
        leaves, treedef = list(flat[0]), flat[1]
    # Decide "array or not" once per leaf *type*, and select with C-level map/compress:
    # 10x faster than calling is_array per leaf at 100k leaves (benchmarks: first call).
    leaf_types = list(map(type, leaves))
    distinct = set(leaf_types)
    # One example leaf per distinct type (few), found by C-level `index`: building a dict
    # over all leaves instead costs ~30 ms at 100k leaves (benchmarks: first call).
    array_types = {t for t in distinct if is_array(leaves[leaf_types.index(t)])}
    if len(array_types) == len(distinct):  # only arrays, as in an optimiser state
        positions = tuple(range(len(leaves)))
        arrays = tuple(leaves)
        template = [None] * len(leaves)
    elif array_types:
        mask = list(map(array_types.__contains__, leaf_types))
        positions = tuple(itertools.compress(range(len(leaves)), mask))
        arrays = tuple(itertools.compress(leaves, mask))
        template = leaves
        for p in positions:
            template[p] = None
    else:
        positions, arrays, template = (), (), leaves
    try:
        static = _Static(treedef, template, positions, memoise and immutable, tuple(fields), tuple(tokens), hashable)
    except TypeError:
        raise _unhashable_error(x, where) from None
    if static._hash is None:
        static.memoisable = False
    return static, arrays


def _unhashable_error(x: Any, where: Any) -> TypeError:
    where = str(where)  # may be a _Label, formatted only now
    for path, leaf in jtu.tree_flatten_with_path(x)[0]:
        if not is_array(leaf):
            try:
                hash(leaf)
            except TypeError:
                return TypeError(
                    f"filter_jit: the static value at {python_path(path, where)} is unhashable "
                    f"({type(leaf).__name__}). Non-array leaves are compile-time constants and "
                    "must be hashable: use a tuple instead of a list or set, an array if it is "
                    "data, or make the class hashable."
                )
    # Otherwise an unhashable static field (part of the treedef).
    stack: list[tuple[Any, tuple[Any, ...]]] = [(x, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, Module):
            for name in type(node)._larix_static_fields:  # type: ignore[attr-defined]
                try:
                    hash(node.__dict__[name])
                except TypeError:
                    field_path = python_path((*path, jtu.GetAttrKey(name)), where)
                    return TypeError(
                        f"filter_jit: the static field {field_path} holds an unhashable "
                        f"{type(node.__dict__[name]).__name__}. Static fields are part of the "
                        "tree structure and must be hashable: store a tuple instead of a list, "
                        "or declare the field without static=True if it holds arrays."
                    )
        try:
            children = flatten_one_level_with_keys(node)[0]
        except ValueError:
            continue
        stack.extend((child, (*path, key)) for key, child in children)
    return TypeError(f"filter_jit: {where} contains an unhashable static value.")


_ARRAY_STATIC = _intern(_Static(jtu.tree_structure(0), [None], (0,), False))
_ARRAY_ID = id(_ARRAY_STATIC)


def _split_arg(x: Any, where: Any, info: dict[Any, Any] | None = None) -> tuple[_Static, tuple[Any, ...]]:
    """The static part of `x` (interned, so that equal parts are the same object) and its arrays."""
    if type(x) in _CONCRETE_ARRAY_TYPES:
        return _ARRAY_STATIC, (x,)
    if isinstance(x, Module):
        memo = x.__dict__.get(_JIT_MEMO)
        if memo is not None and memo[2] == EPOCH[0]:
            return memo[0], memo[1]
        static, arrays = _make_static(x, where, memoise=True)
        static = _intern(static)
        if static.memoisable:
            x.__dict__[_JIT_MEMO] = (static, arrays, EPOCH[0])
        return static, arrays
    if info is not None and _is_tuple_node(x):
        arrays: list[Any] = []
        key = _tuple_key(x, arrays)
        if key is not None:
            return _remembered(info, key, x, where), tuple(arrays)
    if info is not None and _is_array_dict(x):
        leaves, treedef = jtu.tree_flatten(x)
        return _remembered(info, treedef, x, where), tuple(leaves)
    if info is not None:
        leaves, treedef = jtu.tree_flatten(x)
        if _CONCRETE_SET.issuperset(map(type, leaves)):
            # Only concrete arrays (a dict of parameters, say): the static part is a function
            # of the treedef and the exact keys of its aux data, so remember it by those and
            # skip building it (a dict of 20 arrays: ~3x raw jax.jit per call -> ~1.2x).
            fields: list[Any] = []
            tokens: list[Any] = []
            _inspect(x, fields, tokens, [False])
            key = (treedef, exact_keys(tuple(fields)), tuple(tokens))
            try:
                hash(key)
            except TypeError:
                pass  # an unhashable static: the general path explains it
            else:
                return _remembered(info, key, x, where), tuple(leaves)
    static, arrays = _make_static(x, where, memoise=False)
    return _intern(static), arrays


def _is_array_dict(x: Any) -> bool:
    """A plain dict of concrete arrays under `str` keys (a state dict, say).

    Its treedef alone is an exact key of its static part: treedefs compare dict keys with
    `==`, which is exact between `str`s (not between `1` and `1.0`, or a `str` subclass),
    and every leaf is an array. So such a dict is remembered in `_info` under its bare
    treedef, which no other path uses as a key (they use tuples). Checked in C: ~5 µs less
    per call than keying it by `_inspect` (benchmarks: jit dict of arrays).
    """
    return type(x) is dict and _STR.issuperset(map(type, x)) and _CONCRETE_SET.issuperset(map(type, x.values()))


def _remembered_array_dict(x: dict[str, Any], info_get: Callable[[Any], Any]) -> tuple[_Static, list[Any]] | None:
    """The hot path's lookup of `_split_arg`'s memo for a dict of arrays, or None."""
    if _is_array_dict(x):
        leaves, treedef = jtu.tree_flatten(x)
        static = info_get(treedef)
        if static is not None:
            return static, leaves
    return None


def _remembered(info: dict[Any, Any], key: Any, x: Any, where: Any) -> _Static:
    """The static part of `x`, remembered in `info` under `key`, which determines it exactly
    (invariant: equal keys are only ever built from arguments whose exact statics are equal)."""
    static = info.get(key)
    if static is None:
        static = _intern(_make_static(x, where, memoise=False)[0])
        if len(info) > _INFO_MAX:
            info.clear()
        info[key] = static
    return static


def _is_tuple_node(x: Any) -> bool:
    """A tuple or namedtuple that JAX flattens item by item, in order.

    Not a NamedTuple registered with its own flatten: that one may reorder or drop items.
    """
    t = type(x)
    return t is tuple or (
        isinstance(x, tuple) and isinstance(getattr(t, "_fields", None), tuple) and t not in CUSTOM_NODES
    )


def _tuple_key(x: tuple[Any, ...], arrays: list[Any]) -> Any:
    """A key that determines the static part of `x`, a tuple (or namedtuple) of arrays,
    None, Modules that remember their split and more such tuples; None for anything else.
    Appends the arrays of `x` to `arrays`, in flattening order.

    An optimiser state is such a tuple (`(ScaleByAdamState(count, mu, nu), EmptyState())`,
    with mu and nu Modules that a jitted call returned, see `_nested_modules`): its key
    costs a few item checks instead of a flatten (benchmarks: adam). The key holds the
    types and the interned static parts themselves, so it is exact.
    """
    key: list[Any] = [type(x)]
    epoch = EPOCH[0]
    for child in x:
        t = type(child)
        if t in _CONCRETE_SET:
            key.append(_ARRAY_ID)
            arrays.append(child)
        elif t in MODULE_TYPES:
            memo = child.__dict__.get(_JIT_MEMO)
            if memo is None or memo[2] != epoch:
                return None
            key.append(memo[0])  # the static itself: the key keeps it, and its id, alive
            arrays.extend(memo[1])
        elif child is None:
            key.append(None)
        elif _is_tuple_node(child):
            sub = _tuple_key(child, arrays)
            if sub is None:
                return None
            key.append(sub)
        else:
            return None
    return tuple(key)


def _nested_modules(x: Any, path: tuple[int, ...], start: int, found: list[Any]) -> int:
    """Find the memoisable Modules inside the tuples (and namedtuples) of `x`, an output
    being traced: append `(index path, static, first array, end)` for each to `found`.
    Returns the number of arrays in `x`."""
    if isinstance(x, Module):
        static, arrays = _make_static(x, "output", memoise=True, hashable=False)
        if static.memoisable:
            found.append((path, _intern(static), start, start + len(arrays)))
        return len(arrays)
    if not _is_tuple_node(x):
        return sum(map(is_array, jtu.tree_leaves(x)))
    count = 0
    for i, child in enumerate(x):
        count += _nested_modules(child, (*path, i), start + count, found)
    return count


class _OutStatic:
    """How to rebuild a call's output: one _Static per top-level element."""

    __slots__ = ("bare", "container", "nested", "parts")

    def __init__(self, container: type | None, parts: tuple[_Static, ...], nested: tuple[Any, ...] = ()):
        self.container = container
        self.parts = parts
        # Per part: the Modules inside its tuples, to give them their split (_nested_modules).
        self.nested = nested or ((),) * len(parts)
        self.bare = container is None and parts[0].bare  # the output is a single array

    def rebuild(self, arrays: tuple[Any, ...]) -> Any:
        if self.bare:
            return arrays[0]
        out = []
        start = 0
        for static, nested in zip(self.parts, self.nested):
            chunk = arrays[start : start + static.num_arrays]
            start += static.num_arrays
            value = static.rebuild(chunk)
            if static.memoisable:
                # Born with its split: feeding it back into a jitted call costs O(arrays).
                value.__dict__[_JIT_MEMO] = (static, chunk, EPOCH[0])
            for path, module_static, first, end in nested:
                node = value
                for i in path:
                    node = node[i]
                node.__dict__[_JIT_MEMO] = (module_static, chunk[first:end], EPOCH[0])
            out.append(value)
        return out[0] if self.container is None else self.container(out)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _OutStatic) and self.container is other.container and self.parts == other.parts

    def __hash__(self) -> int:
        return hash((self.container, *map(hash, self.parts)))


def _split_output(out: Any) -> tuple[_OutStatic, list[Any]]:
    container = type(out) if type(out) in (tuple, list) else None
    elements = out if container is not None else (out,)
    parts, arrays, nested = [], [], []
    for i, element in enumerate(elements):
        static, element_arrays = _make_static(
            element, f"output[{i}]", memoise=isinstance(element, Module), hashable=False
        )
        parts.append(_intern(static))
        arrays.extend(element_arrays)
        found: list[Any] = []
        if _is_tuple_node(element):
            _nested_modules(element, (), 0, found)
        nested.append(tuple(found))
    return _OutStatic(container, tuple(parts), tuple(nested)), arrays


class _Boxed:
    """Output of a jitted call whose static output part varies with the input shapes."""

    __slots__ = ("arrays", "static")

    def __init__(self, arrays: Any, static: _OutStatic):
        self.arrays, self.static = arrays, static


jtu.register_pytree_node(_Boxed, lambda b: (b.arrays, b.static), lambda s, a: _Boxed(a, s))


def _finish_either(unboxed_finish: Callable[[Any], Any] | None, out: Any) -> Any:
    if type(out) is _Boxed:
        return out.static.rebuild(out.arrays)
    return out if unboxed_finish is None else unboxed_finish(out)


def _fixed_arity(fn: Callable[..., Any], n: int) -> Callable[..., Any]:
    """`fn` taking exactly `n` positional arguments: JAX dispatches a fixed-arity function
    ~0.35 µs faster than a `*args` one (benchmarks: jit N static)."""
    names = ", ".join(f"a{i}" for i in range(n))
    namespace: dict[str, Any] = {"fn": fn}
    # The generated code is given the two lines below as its source, so that a traceback
    # through it shows a file that exists and the line that runs:
    #   def fixed(a0, a1, ...):  # the arrays of every argument, flat
    #       return fn(a0, a1, ...)  # `traced`: rebuild the arguments, call the user's function
    code = compile("\n" * (_FIXED_LINE - 1) + f"def fixed({names}):\n    return fn({names})", __file__, "exec")
    exec(code, namespace)  # noqa: S102 - generated from a count
    fixed = namespace["fixed"]
    # Not functools.wraps: JAX reads the signature through __wrapped__, which would bring
    # the `*args` signature back.
    fixed.__name__ = fixed.__qualname__ = getattr(fn, "__name__", "fixed")
    return fixed


_FIXED_LINE = _fixed_arity.__code__.co_firstlineno + 7  # the `#   def fixed(...)` line above


def _debug_info(fun: Any, statics: tuple[_Static, ...], labels: list[str]) -> Any:
    """What JAX names in its errors while tracing: the user's function and the path of each
    array (`model.layers[0].weight`), as `jax.jit` would, instead of our flat `a0, a1, ...`.

    Paths cost a flatten with paths, ~1.4 µs a leaf: above `_NAMED_LEAVES` leaves in one
    argument (a stress case, not a model) its arrays are named by their index instead,
    so that the first call stays cheap (benchmarks: first call).
    """
    try:
        from jax._src import api_util, core
    except ImportError:  # pragma: no cover - a JAX that moved them: JAX's own names
        return None
    target = fun
    if isinstance(fun, Module) and not isinstance(fun, BoundMethod):
        target = type(fun).__call__
    try:
        source = api_util.fun_sourceinfo(target)
    except Exception:  # noqa: BLE001 - a name is a courtesy, never an error
        source = "<unknown>"
    names: list[str] = []
    for label, static in zip(labels, statics):
        if static.num_arrays == 0:
            continue
        if static.bare:
            names.append(label)
        elif static.treedef.num_leaves <= _NAMED_LEAVES:
            tree = static.rebuild([_Slot()] * static.num_arrays)
            # Tuples kept whole are leaves of the treedef: do not walk into them.
            paths = jtu.tree_flatten_with_path(tree, is_leaf=lambda x: type(x) is _Slot or _is_whole(x))[0]
            names.extend(python_path(path, label) for path, leaf in paths if type(leaf) is _Slot)
        else:
            names.extend(f"{label}<array {i} of {static.num_arrays}>" for i in range(static.num_arrays))
    return core.DebugInfo("filter_jit", source, tuple(names), core.initial_result_paths)


_NAMED_LEAVES = 20_000


class _Slot:
    """A placeholder for an array while the arrays' paths are found."""


def _argument_names(fun: Any, num_args: int, kwnames: tuple[str, ...], fun_is_module: bool) -> list[str]:
    """The name of each argument as the user wrote it (`model`), as JAX names them."""
    names = [f"args[{i}]" for i in range(num_args)] + [f"kwargs[{k!r}]" for k in kwnames]
    try:
        bound = inspect.signature(fun).bind(*range(num_args), **{k: k for k in kwnames})
    except (TypeError, ValueError):
        return (["self"] if fun_is_module else []) + names
    for name, value in bound.arguments.items():
        kind = bound.signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            for j, i in enumerate(value):
                names[i] = f"{name}[{j}]"
        elif kind is inspect.Parameter.VAR_KEYWORD:
            for k in value:
                names[num_args + kwnames.index(k)] = f"{name}[{k!r}]"
        elif isinstance(value, int):
            names[value] = name
        else:
            names[num_args + kwnames.index(value)] = name
    return (["self"] if fun_is_module else []) + names


def _reraise(error: Exception) -> typing.NoReturn:
    """Re-raise an `error_if` failure as `EquinoxRuntimeError`, anything else as it is."""
    translated = from_compiled(error)
    if translated is None:
        raise error
    # JAX's own text repeats the message inside the host callback's traceback: drop it.
    raise translated from None


class _Quietly:
    """Silence JAX's warning that a donated buffer could not be used (CPU has no donation)."""

    def __enter__(self) -> None:
        self._manager = warnings.catch_warnings()
        self._manager.__enter__()
        warnings.filterwarnings("ignore", message="Some donated buffers were not usable")

    def __exit__(self, *exc: Any) -> None:
        self._manager.__exit__(*exc)


class _OutputStaticChanged(Exception):  # noqa: N818 - internal signal, caught in __call__
    pass


class _Entry:
    """One compiled function: for one tuple of static parts of (fun, args, kwargs)."""

    __slots__ = ("boxed", "call", "finish", "fn", "out_static")

    def __init__(self) -> None:
        self.finish: Any = None  # out arrays -> output; set when the first trace is done
        self.call: Any = None  # (static parts, number of positional args, keyword names)
        self.fn: Any = None
        self.out_static: _OutStatic | None = None
        self.boxed = False


_DONATE = ("none", "all", "all-except-first", "warn", "warn-except-first")


class _Label:
    """The name of an argument (`args[1]`) in error messages, formatted only if needed."""

    __slots__ = ("index", "kwnames", "num_args", "wrapper")

    def __init__(self, wrapper: _JitWrapper, num_args: int, kwnames: tuple[str, ...], index: int):
        self.wrapper, self.num_args, self.kwnames, self.index = wrapper, num_args, kwnames, index

    def __str__(self) -> str:
        return self.wrapper._labels_for(self.num_args, self.kwnames)[self.index]


_WRAPPERS: weakref.WeakSet[Any] = weakref.WeakSet()


def clear_caches() -> None:
    """Forget every compiled function of every `filter_jit` function, larix's other caches
    (the structures that `larix.split` remembers), and JAX's caches.

    The next call of each `filter_jit` function traces and compiles again. Useful to free
    memory in long-running processes that compiled many shapes. (`filter_jit`'s caches
    never keep models or plain functions alive; a pytree callable compiled with
    `filter_jit`, such as a `filter_grad` wrapper, is remembered by its static part, as
    `jax.jit` remembers a static argument, until this is called or 256 others were.)
    """
    for wrapper in list(_WRAPPERS):
        with wrapper._lock:
            wrapper._cache.clear()
            wrapper._single.clear()
            wrapper._info.clear()
    forget_shared_wrappers()
    _flat._TREEDEFS.clear()
    _flat._PREFIXED.clear()
    jax.clear_caches()


class _JitWrapper:
    def __init__(self, fun: Callable[..., Any], donate: str, jitkwargs: dict[str, Any]):
        # A Module, bound method or other pytree callable: its arrays are traced too.
        self._fun_is_module = isinstance(fun, Module) or (
            jtu.is_tree_node(type(fun)) and any(is_array(leaf) for leaf in jtu.tree_leaves(fun))
        )
        # What the wrapper keeps of `fun` must not keep it (or a model's arrays) alive, since
        # wrappers are shared (_SHARED): a Module is kept without its arrays (its calls pass
        # theirs), a function weakly where it can be (each call holds it while it traces).
        if self._fun_is_module:
            static = _split_arg(fun, "fun")[0]
            self._fun_store: Any = static.rebuild([None] * static.num_arrays)
        else:
            try:
                self._fun_store = weakref.ref(fun)
            except TypeError:
                self._fun_store = fun
        self._donate = donate
        self._quiet_donation = donate in ("all", "all-except-first")
        self._jitkwargs = jitkwargs
        self._cache: dict[Any, _Entry] = {}
        # The entries for calls with one positional argument and no Module as `fun`, keyed by
        # the id of that argument's static part alone: the commonest call, `f(model)`, then
        # builds no key tuple. An entry holds its static parts, so the ids stay unique.
        self._single: dict[int, _Entry] = {}
        self._info: dict[Any, Any] = {}  # treedef -> static fields, immutability
        self._lock = threading.Lock()
        self._traces = TraceLog()
        self.num_traces = 0
        _WRAPPERS.add(self)

    @property
    def _fun(self) -> Any:
        store = self._fun_store
        return store() if type(store) is weakref.ref else store

    def _key(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], fun: Any = None
    ) -> tuple[tuple[Any, ...], list[Any], list[Any]]:
        """The cache key of a call and its arrays, in order.

        The key is `(kwnames, id(static part) for fun?, each arg, each kwarg)`. Static parts
        are interned, so ids stand for values, and a tuple of ints hashes in C; each entry of
        the cache holds its static parts, so their ids cannot be reused while it lives.
        """
        if kwargs:  # keyword order must not matter: f(a=1, b=2) is f(b=2, a=1)
            kwargs = {name: kwargs[name] for name in sorted(kwargs)}
        key: list[Any] = [tuple(kwargs)]
        arrays: list[Any] = []
        parts: list[Any] = []
        fun = self._fun if fun is None else fun
        values = (fun, *args, *kwargs.values()) if self._fun_is_module else (*args, *kwargs.values())
        for i, a in enumerate(values):
            t = type(a)
            if t in _CONCRETE_ARRAY_TYPES:
                key.append(_ARRAY_ID)
                arrays.append(a)
                parts.append(_ARRAY_STATIC)
                continue
            memo = a.__dict__.get(_JIT_MEMO) if t in MODULE_TYPES else None
            if memo is None or memo[2] != EPOCH[0]:
                memo = _split_arg(a, _Label(self, len(args), tuple(kwargs), i), self._info)
            static, arrs = memo[0], memo[1]
            key.append(id(static))
            arrays.extend(arrs)
            parts.append(static)
        if _intercept.ACTIVE[0] and (interceptors := _intercept.current_interceptors()):
            if _intercept._LOCAL.captures:
                raise RuntimeError(
                    f"{self!r} was called inside larix.capture: the values of its Module calls "
                    "would be traced inside jit and could not be returned. Capture inside it "
                    "instead: `filter_jit(larix.capture(fn, ...))`."
                )
            # Traced under interceptors, the compiled code differs: not the same entry.
            key.append(("intercepted by", interceptors))
        return tuple(key), arrays, parts

    def make_call(self, fun: Any) -> Callable[..., Any]:
        """The function that `filter_jit` returns: the hot path, as a closure.

        Every line here is paid on every call (benchmarks/bench_jit.py). A closure over
        locals rather than a `__call__` method saves the bound-method creation and the
        attribute lookups: ~1 µs of Python on top of `jax.jit` for positional arrays and
        memoised Modules. Anything else takes the general path, `_call`.
        """
        cache_get = self._cache.get
        single_get = self._single.get
        info_get = self._info.get
        general = functools.partial(self._call, fun=fun)
        concrete, modules, memo_name, array_id, epoch = _CONCRETE_ARRAY_TYPES, MODULE_TYPES, _JIT_MEMO, _ARRAY_ID, EPOCH
        intercepting = _intercept.ACTIVE

        # A Module (or bound method) as `fun` is the first value of the key, as in `_key`.
        prefix = (fun,) if self._fun_is_module else ()

        def call(*args: Any, **kwargs: Any) -> Any:
            if kwargs or intercepting[0]:
                return general(args, kwargs)
            if len(args) == 1 and not prefix:  # f(model): one dict lookup, no key to build
                a = args[0]
                t = type(a)
                if t in modules and (memo := a.__dict__.get(memo_name)) is not None and memo[2] == epoch[0]:
                    entry = single_get(id(memo[0]))
                    arrays = memo[1]
                elif t in concrete:
                    entry = single_get(array_id)
                    arrays = args
                elif t is dict and (found := _remembered_array_dict(a, info_get)) is not None:
                    entry = single_get(id(found[0]))
                    arrays = found[1]
                else:
                    return general(args, kwargs)
            else:
                key = [()]
                arrays = []
                for a in prefix + args if prefix else args:
                    t = type(a)
                    if t in concrete:
                        key.append(array_id)
                        arrays.append(a)
                    elif t in modules and (memo := a.__dict__.get(memo_name)) is not None and memo[2] == epoch[0]:
                        key.append(id(memo[0]))
                        arrays += memo[1]
                    elif (
                        _is_tuple_node(a)  # an optimiser state, say: see _tuple_key
                        and (items := _tuple_key(a, arrays)) is not None
                        and (static := info_get(items)) is not None
                    ):
                        key.append(id(static))
                    elif t is dict and (found := _remembered_array_dict(a, info_get)) is not None:
                        key.append(id(found[0]))
                        arrays += found[1]
                    else:
                        return general(args, kwargs)
                entry = cache_get(tuple(key))
            if entry is None:
                return general(args, kwargs)
            try:
                out = entry.fn(*arrays)
            except _OutputStaticChanged:
                return general(args, kwargs)
            except Exception as error:  # noqa: BLE001 - re-raised; free unless raised (3.11)
                _reraise(error)
            finish = entry.finish
            return out if finish is None else finish(out)

        functools.update_wrapper(call, fun, updated=())
        call.lower = functools.partial(self.lower, _fun=fun)  # type: ignore[attr-defined]
        call._larix_jit = self  # type: ignore[attr-defined]
        return call

    def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any], fun: Any = None) -> Any:
        """The general path: any arguments, first calls, and boxed outputs."""
        key, arrays, parts = self._key(args, kwargs, fun)
        entry = self._cache.get(key)
        if entry is None:
            entry = self._new_entry(key, parts, len(args))
        try:
            out = entry.fn(*arrays)
        except _OutputStaticChanged:
            self._box(entry)
            out = entry.fn(*arrays)
        except Exception as error:  # noqa: BLE001 - re-raised
            _reraise(error)
        finish = entry.finish
        return out if finish is None else finish(out)

    def _new_entry(self, key: tuple[Any, ...], parts: list[Any], num_args: int) -> _Entry:
        with self._lock:
            entry = self._cache.get(key)
            if entry is None:
                entry = _Entry()
                entry.call = (tuple(parts), num_args, key[0])
                entry.fn = self._jit(entry)
                self._cache[key] = entry
                if len(key) == 2 and not key[0] and not self._fun_is_module:  # f(x): see _single
                    self._single[key[1]] = entry
        return entry

    def _box(self, entry: _Entry) -> None:
        with self._lock:
            if not entry.boxed:
                entry.boxed = True
                # A call that read the unboxed `fn` before this switch still returns plain
                # arrays, consistent with `out_static`: keep finishing those the old way.
                entry.finish = functools.partial(_finish_either, entry.finish)
                entry.fn = self._jit(entry)

    def _jit(self, entry: _Entry) -> Any:
        key = entry.call
        statics, num_args, kwnames = key
        donate_argnums: tuple[int, ...] = ()
        total = sum(s.num_arrays for s in statics)
        if self._donate in ("all", "warn"):
            donate_argnums = tuple(range(total))
        elif self._donate in ("all-except-first", "warn-except-first"):
            skip = sum(s.num_arrays for s in statics[: 2 if self._fun_is_module else 1]) if num_args else 0
            donate_argnums = tuple(range(skip, total))

        def traced(*arrays: Any) -> Any:
            with self._lock:
                self.num_traces += 1
            # Outside the lock: the function may call itself (a recursive filter_jit), and
            # explaining runs user code (__eq__, __repr__) that must not hold it.
            reason = record_trace(self._traces, key, arrays, self._labels(key), self._lock)
            if reason:
                explain(self._fun, reason)
            values = []
            start = 0
            for static in statics:
                values.append(static.rebuild(arrays[start : start + static.num_arrays]))
                start += static.num_arrays
            if self._fun_is_module:
                fun, values = values[0], values[1:]
            else:
                fun = self._fun
            args = values[:num_args]
            kwargs = dict(zip(kwnames, values[num_args:]))
            out_static, out_arrays = _split_output(fun(*args, **kwargs))
            if entry.boxed:
                return _Boxed(out_arrays, out_static)
            with self._lock:
                first = entry.out_static
                if first is None:
                    entry.out_static = out_static
                    # A single-array output is returned as it is: no finishing step at all.
                    entry.finish = None if out_static.bare else out_static.rebuild
            if first is not None and first != out_static:  # outside the lock: runs __eq__
                raise _OutputStaticChanged
            return out_arrays[0] if out_static.bare else out_arrays

        fixed = _fixed_arity(traced, total)
        # The name JAX gives the computation (`jit(loss)` in HLO and profiles).
        fixed.__name__ = fixed.__qualname__ = getattr(self._fun, "__name__", type(self._fun).__name__)
        try:
            info = _debug_info(self._fun, statics, _argument_names(self._fun, num_args, kwnames, self._fun_is_module))
        except Exception:  # noqa: BLE001 - names are a courtesy: JAX then uses its own
            info = None
        if info is not None:
            fixed.__fun_debug_info__ = info  # type: ignore[attr-defined]
        jitted = jax.jit(fixed, donate_argnums=donate_argnums, **self._jitkwargs)
        if not self._quiet_donation:
            return jitted

        @functools.wraps(jitted)
        def quietly(*arrays: Any) -> Any:
            with _Quietly():
                return jitted(*arrays)

        quietly.lower = jitted.lower  # type: ignore[attr-defined]
        return quietly

    @property
    def recompile_reasons(self) -> list[str]:
        """Why each trace after the first happened (computed on first access)."""
        return self._traces.reasons()

    def _labels(self, key: Any) -> list[str]:
        _, num_args, kwnames = key
        return self._labels_for(num_args, kwnames)

    def _labels_for(self, num_args: int, kwnames: tuple[str, ...]) -> list[str]:
        labels = ["fun"] if self._fun_is_module else []
        labels += [f"args[{i}]" for i in range(num_args)]
        labels += [f"kwargs[{n!r}]" for n in kwnames]
        return labels

    def lower(self, *args: Any, _fun: Any = None, **kwargs: Any) -> _Lowered:
        """Trace and lower for these arguments without running: `jax.jit(...).lower`."""
        key, arrays, parts = self._key(args, kwargs, _fun)
        entry = self._cache.get(key) or self._new_entry(key, parts, len(args))
        with _Quietly() if self._quiet_donation else contextlib.nullcontext():
            try:
                lowered = entry.fn.lower(*arrays)
            except _OutputStaticChanged:
                self._box(entry)
                lowered = entry.fn.lower(*arrays)
        return _Lowered(self, key, entry, lowered, _fun)

    def __repr__(self) -> str:
        return f"<filter_jit of {self._fun!r}>"


class _Lowered:
    """The lowered form of a filter_jit call; `.compile()` it to run it."""

    def __init__(self, wrapper: _JitWrapper, key: Any, entry: _Entry, lowered: Any, fun: Any = None):
        self._wrapper, self._key, self._entry, self.lowered = wrapper, key, entry, lowered
        self._fun = fun

    def as_text(self, *args: Any, **kwargs: Any) -> str:
        return self.lowered.as_text(*args, **kwargs)

    def compile(self, compiler_options: dict[str, Any] | None = None) -> _Compiled:
        """Compile, as `jax.stages.Lowered.compile` (which takes the same `compiler_options`)."""
        with _Quietly() if self._wrapper._quiet_donation else contextlib.nullcontext():
            compiled = self.lowered.compile(compiler_options=compiler_options)
        return _Compiled(self._wrapper, self._key, self._entry, compiled, self.__dict__["_fun"])

    def __getattr__(self, name: str) -> Any:
        # The rest of jax.stages.Lowered (compiler_ir, cost_analysis, ...), as it is.
        return getattr(self.__dict__["lowered"], name)


class _Compiled:
    """A compiled filter_jit call: call it with arguments like the ones it was lowered for."""

    def __init__(self, wrapper: _JitWrapper, key: Any, entry: _Entry, compiled: Any, fun: Any = None):
        self._wrapper, self._key, self.compiled = wrapper, key, compiled
        self._fun = fun
        # The key is made of ids of static parts: holding the parts keeps those ids theirs,
        # so an equal key means the same static parts, even after larix.clear_caches().
        self._parts = entry.call[0]
        # Captured now: later calls of the wrapper may switch the entry to boxed outputs,
        # but this executable keeps returning what it was traced to return.
        self._finish = entry.finish

    def as_text(self) -> str:
        return self.compiled.as_text()

    def cost_analysis(self) -> Any:
        return self.compiled.cost_analysis()

    def __getattr__(self, name: str) -> Any:
        # The rest of jax.stages.Compiled (memory_analysis, runtime_executable, ...).
        return getattr(self.__dict__["compiled"], name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key, arrays, _ = self._wrapper._key(args, kwargs, self.__dict__["_fun"])
        if key != self._key:
            raise TypeError(
                "This compiled function was lowered for arguments with other static values or "
                "structure. Call `.lower(...)` again with these arguments, or use the "
                "filter_jit function itself, which compiles as needed."
            )
        with _Quietly() if self._wrapper._quiet_donation else contextlib.nullcontext():
            try:
                out = self.compiled(*arrays)
            except Exception as error:  # noqa: BLE001 - re-raised
                _reraise(error)
        return out if self._finish is None else self._finish(out)


def filter_jit(fun: Callable[..., Any] | None = None, *, donate: str = "none", **jitkwargs: Any) -> Any:
    """Compile `fun` with `jax.jit`, tracing every array in its inputs and treating
    everything else as static.

    Any argument may be a whole model: its JAX and NumPy arrays are traced, all other
    leaves (and static fields) are compile-time constants, and changing one of those, the
    tree structure, or an array's shape or dtype compiles again. If `fun` itself is a
    Module or bound method, its arrays are traced too. Outputs may be any pytree; their
    non-array leaves are returned as they are.

    The steady state is cheap: frozen Modules remember their split, and the Modules that a
    call returns are born with theirs, so a training loop that feeds the model back in
    pays for its arrays, not for its static leaves. The call does not wait for the device.

    **Arguments:**

    - `fun`: the function to compile. Use `filter_jit` as `@filter_jit` or
      `@filter_jit(donate=...)`.
    - `donate`: which input buffers XLA may reuse for outputs: `"none"` (default), `"all"`,
      `"all-except-first"` (keep the first positional argument), or `"warn"` /
      `"warn-except-first"` (the same, without silencing JAX's warning when a buffer
      cannot be donated).
    - `**jitkwargs`: passed on to `jax.jit` (`device`, `backend`, `keep_unused`,
      `compiler_options`, ...). Not `static_argnums`/`static_argnames`/`donate_argnums`:
      filter_jit decides those itself.

    **Returns:** the compiled function. It also has `.lower(*args, **kwargs)` for
    ahead-of-time compilation.

    !!! example
        ```python
        >>> import jax.numpy as jnp, larix
        >>> @larix.filter_jit
        ... def scale(x, factor, name):
        ...     return x * factor, name.upper()
        >>> scale(jnp.arange(3.0), 2, "ok")
        (Array([0., 2., 4.], dtype=float32), 'OK')

        ```
    """
    if donate not in _DONATE:
        raise ValueError(f"filter_jit(donate={donate!r}): donate must be one of {', '.join(map(repr, _DONATE))}.")
    for bad in ("static_argnums", "static_argnames", "donate_argnums", "donate_argnames"):
        if bad in jitkwargs:
            raise TypeError(
                f"filter_jit does not take `{bad}`: it traces every array and treats every "
                "other value as static by itself. Use `donate=` for buffer donation."
            )
    for name in ("in_shardings", "out_shardings"):
        value = jitkwargs.get(name)
        if value is not None and not isinstance(value, jax.sharding.Sharding):
            raise TypeError(
                f"filter_jit({name}=...) takes a single Sharding, applied to every array, not a "
                "pytree: filter_jit passes JAX a flat list of arrays. Place inputs with "
                "larix.filter_shard(model, shardings) before the call, and constrain outputs "
                "with larix.filter_shard inside the function."
            )
    if fun is None:
        return lambda f: filter_jit(f, donate=donate, **jitkwargs)
    if not callable(fun):
        raise TypeError(f"filter_jit: expected a callable to compile, got {type(fun).__name__}.")
    return _shared_wrapper(fun, donate, jitkwargs).make_call(fun)


# Wrappers by what they compile: `filter_jit(filter_grad(f))` written twice, or
# `filter_jit(model)` for two models of one structure, share one cache and trace once, as in
# Equinox (where JAX's cache keys on the function as a static argument). The key is the
# function itself (compared as `jax.jit` compares a static argument: plain functions by
# identity) or, for a pytree callable, its interned static part, which is exact. Bounded,
# most recently used last; `larix.clear_caches` empties it.
# Plain functions are keys of a weak dictionary: a wrapper lives as long as its function.
# Pytree callables are keyed by their static part (which holds no arrays), LRU-bounded.
_SHARED: collections.OrderedDict[Any, _JitWrapper] = collections.OrderedDict()
_SHARED_BY_FUNCTION: weakref.WeakKeyDictionary[Any, dict[Any, _JitWrapper]] = weakref.WeakKeyDictionary()
_SHARED_MAX = 256
_SHARED_LOCK = threading.Lock()


def forget_shared_wrappers() -> None:
    """Make the next `filter_jit` of any function start a cache of its own (tests use it to
    stay independent of one another)."""
    with _SHARED_LOCK:
        _SHARED.clear()
        _SHARED_BY_FUNCTION.clear()


def _shared_wrapper(fun: Any, donate: str, jitkwargs: dict[str, Any]) -> _JitWrapper:
    try:
        options = (donate, tuple(sorted(jitkwargs.items())))
        if jtu.is_tree_node(type(fun)):
            table: Any = _SHARED
            key: Any = (_split_arg(fun, "fun")[0], options)
        else:
            with _SHARED_LOCK:
                table = _SHARED_BY_FUNCTION.setdefault(fun, {})
            key = options
        hash(key)  # outside the lock: may run user code
    except Exception:  # noqa: BLE001 - unhashable, not weakly referable: a wrapper of its own
        return _JitWrapper(fun, donate, jitkwargs)
    with _SHARED_LOCK:
        wrapper = table.get(key)
        if wrapper is not None:
            if table is _SHARED:
                _SHARED.move_to_end(key)
            return wrapper
    wrapper = _JitWrapper(fun, donate, jitkwargs)
    with _SHARED_LOCK:
        wrapper = table.setdefault(key, wrapper)
        while len(_SHARED) > _SHARED_MAX:
            _SHARED.popitem(last=False)
    return wrapper
