"""Small helpers that diffrax, lineax and optimistix import from `equinox.internal`."""

from __future__ import annotations

import random
import types
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu

from .._module import Module, field

__all__ = [
    "GetKey",
    "Static",
    "cached_filter_eval_shape",
    "closure_to_pytree",
    "doc_remove_args",
    "doc_repr",
    "eval_empty",
    "eval_full",
    "eval_zero",
    "hashable_combine",
    "hashable_partition",
    "left_broadcast_to",
    "nextafter",
    "prevbefore",
    "scan_trick",
    "str2jax",
]

_T = TypeVar("_T")


class Static(Module):
    """Holds `value` in a static field: a pytree with no leaves, e.g. to return non-arrays from a transform."""

    # A tuple, not a list: static fields must be hashable to cross `filter_jit`.
    _leaves: tuple[Any, ...] = field(static=True)
    _treedef: Any = field(static=True)

    def __init__(self, value: Any):
        leaves, self._treedef = jtu.tree_flatten(value)
        self._leaves = tuple(leaves)

    @property
    def value(self) -> Any:
        return jtu.tree_unflatten(self._treedef, self._leaves)


def str2jax(msg: str) -> Module:
    """A leafless pytree whose `str(...)` is `msg`: a string that can cross `jax.jit`.

    Each call makes a new class, so two calls never compare equal: use one as a unique token.
    """
    cls = type(msg, (Module,), {"__str__": lambda self: msg, "__repr__": lambda self: msg, "__module__": __name__})
    return cls()


def doc_repr(obj: _T, string: str) -> _T:
    """`obj` itself. (Equinox shows `string` for it in generated documentation.)"""
    del string
    return obj


def doc_remove_args(*args: str) -> Callable[[_T], _T]:
    """A decorator that returns its function unchanged. (Equinox hides `args` from generated docs.)"""
    del args
    return lambda fn: fn


class GetKey:
    """A source of fresh PRNG keys, one per call: `getkey()`. For test fixtures only.

    **Arguments:**

    - `seed`: the seed; by default a random one, so tests see different keys each run.
    """

    def __init__(self, seed: int | None = None):
        self.seed = random.randint(0, 2**31 - 1) if seed is None else seed
        self.calls = 0

    def __call__(self) -> jax.Array:
        self.calls += 1
        return jr.fold_in(jr.PRNGKey(self.seed), self.calls)


@jax.custom_jvp
def _nextafter(x: jax.Array) -> jax.Array:
    return jnp.nextafter(x, jnp.array(jnp.inf, x.dtype))


@jax.custom_jvp
def _prevbefore(x: jax.Array) -> jax.Array:
    return jnp.nextafter(x, jnp.array(-jnp.inf, x.dtype))


# Moving by one ulp is the identity to first order: the derivative is 1.
_nextafter.defjvp(lambda primals, tangents: (_nextafter(*primals), tangents[0]))
_prevbefore.defjvp(lambda primals, tangents: (_prevbefore(*primals), tangents[0]))


def nextafter(x: Any) -> jax.Array:
    """The next floating-point number after `x` (towards +inf); its derivative is 1."""
    return _nextafter(jnp.asarray(x))


def prevbefore(x: Any) -> jax.Array:
    """The floating-point number before `x` (towards -inf); its derivative is 1."""
    return _prevbefore(jnp.asarray(x))


def eval_full(fn: Callable[..., Any], *inputs: Any, fill_value: Any) -> Any:
    """The output of `fn(*inputs)`, without running it, with every array filled by `fill_value`."""
    from .._shapes import filter_eval_shape

    out = filter_eval_shape(fn, *inputs)
    return jtu.tree_map(lambda s: jnp.full(s.shape, fill_value, s.dtype) if isinstance(s, jax.ShapeDtypeStruct) else s, out)


def eval_zero(fn: Callable[..., Any], *inputs: Any) -> Any:
    """The output of `fn(*inputs)`, without running it, with every array zero."""
    return eval_full(fn, *inputs, fill_value=0)


def eval_empty(fn: Callable[..., Any], *inputs: Any) -> Any:
    """As [`larix.internal.eval_zero`][]: placeholder arrays of the output's shapes (JAX has no uninitialised arrays)."""
    return eval_full(fn, *inputs, fill_value=0)


def cached_filter_eval_shape(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """[`larix.filter_eval_shape`][]: the output structure of `fn(*args, **kwargs)`."""
    from .._shapes import filter_eval_shape

    return filter_eval_shape(fn, *args, **kwargs)


def scan_trick(fn: Callable[[Any], Any], intermediates: Sequence[Callable[[Any], Any]], init: Any) -> Any:
    """`fn`, `intermediates[0]`, `fn`, `intermediates[1]`, ..., `fn` applied to `init`, with `fn` traced once.

    The calls run as one `lax.scan`, so an expensive `fn` (a vector field, say) appears
    once in the compiled program however many times it is applied.
    """
    branches = [*intermediates, lambda carry: carry]

    def body(carry: Any, index: Any) -> tuple[Any, None]:
        carry = fn(carry)
        return lax.switch(index, branches, carry), None

    out, _ = lax.scan(body, init, jnp.arange(len(branches)))
    return out


def left_broadcast_to(arr: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Broadcast `arr` to `shape` by adding axes on the right (NumPy broadcasting adds them on the left)."""
    arr = jnp.asarray(arr)
    return jnp.broadcast_to(arr.reshape(arr.shape + (1,) * (len(shape) - arr.ndim)), shape)


def hashable_partition(pytree: Any, filter_fn: Callable[[Any], bool]) -> tuple[list[Any], Any]:
    """Split `pytree` into a list of the leaves where `filter_fn` holds, and a hashable rest."""
    leaves, treedef = jtu.tree_flatten(pytree)
    dynamic = [x for x in leaves if filter_fn(x)]
    static = tuple(None if filter_fn(x) else x for x in leaves)
    return dynamic, (treedef, static, tuple(filter_fn(x) for x in leaves))


def hashable_combine(dynamic_leaves: Sequence[Any], static: Any) -> Any:
    """The inverse of [`larix.internal.hashable_partition`][]."""
    treedef, static_leaves, is_dynamic = static
    it = iter(dynamic_leaves)
    return treedef.unflatten([next(it) if d else x for x, d in zip(static_leaves, is_dynamic)])


# closure_to_pytree


class _ByCode:
    """A function without its closure, compared by its code (and globals, defaults), not identity."""

    __slots__ = ("fn",)

    def __init__(self, fn: types.FunctionType):
        self.fn = fn

    def _key(self) -> tuple[Any, ...]:
        fn = self.fn
        return (fn.__code__, id(fn.__globals__), fn.__defaults__, tuple(sorted((fn.__kwdefaults__ or {}).items())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ByCode) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self.fn.__code__)


class _Closure(Module):
    """A function whose closed-over values are pytree leaves: see `closure_to_pytree`."""

    template: _ByCode = field(static=True)
    cells: tuple[Any, ...]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        fn = self.template.fn
        rebuilt = types.FunctionType(
            fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, tuple(types.CellType(c) for c in self.cells)
        )
        rebuilt.__kwdefaults__ = fn.__kwdefaults__
        return rebuilt(*args, **kwargs)


def _convert(fn: Any, active: set[int]) -> Any:
    # Every function is converted, with a closure or not: a nested function is a new
    # object on each call of its parent, and only the conversion compares it by code.
    if not isinstance(fn, types.FunctionType) or id(fn) in active:
        return fn
    try:
        contents = [c.cell_contents for c in fn.__closure__ or ()]
    except ValueError:  # a cell not yet filled: leave the function as it is
        return fn
    active.add(id(fn))
    try:
        cells = tuple(_convert_tree(c, active) for c in contents)
    finally:
        active.discard(id(fn))
    return _Closure(_ByCode(fn), cells)


def _convert_tree(tree: Any, active: set[int]) -> Any:
    return jtu.tree_map(lambda x: _convert(x, active), tree, is_leaf=lambda x: isinstance(x, types.FunctionType))


def closure_to_pytree(tree: Any) -> Any:
    """Make the values that functions in `tree` close over into leaves of the pytree.

    Every function becomes a callable Module whose leaves are its closed-over values
    (converted likewise), and which compares equal to another conversion of the same code. Optax's transformations, which close over their hyperparameters, then cross
    `filter_jit` as arrays instead of as new static functions that force a recompile.
    Module-level functions have no closure: their globals are not converted.

    **Arguments:**

    - `tree`: any pytree.

    **Returns:** the converted copy.
    """
    return _convert_tree(tree, set())
