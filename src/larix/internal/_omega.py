"""`ω`: write `tree_map` arithmetic as ordinary arithmetic: `(a**ω + 2 * b**ω).ω`."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import jax.tree_util as jtu

__all__ = ["ω"]


def _same_predicate(f: Any, g: Any) -> bool:
    """Whether two `is_leaf`s are the same function: the same object, or the same code
    closing over the same objects (two copies of `lambda x: isinstance(x, int)`)."""
    if f is g:
        return True
    code_f, code_g = getattr(f, "__code__", None), getattr(g, "__code__", None)
    if code_f is None or code_g is None:
        return False
    same_code = (code_f.co_code, code_f.co_consts, code_f.co_names) == (code_g.co_code, code_g.co_consts, code_g.co_names)
    cells_f = tuple(c.cell_contents for c in f.__closure__ or ())
    cells_g = tuple(c.cell_contents for c in g.__closure__ or ())
    return same_code and len(cells_f) == len(cells_g) and all(a is b for a, b in zip(cells_f, cells_g))


class _OmegaMeta(type):
    # `tree**ω` wraps `tree`: Python tries `tree.__pow__(ω)` first, which fails for lists,
    # dicts and Modules, and then falls back to `ω.__rpow__(tree)`, defined here on the class.
    def __rpow__(cls, value: Any) -> ω:
        return cls(value)


class ω(metaclass=_OmegaMeta):  # noqa: N801 - Equinox's name, used by diffrax, lineax, optimistix
    """A pytree on which arithmetic acts leaf by leaf; `.ω` gives the pytree back.

    `(ω(a) + ω(b)).ω` is `jax.tree_util.tree_map(operator.add, a, b)`. A Python or array
    scalar on the other side of an operator is applied to every leaf. `None` leaves stay
    `None`. Two wrapped trees must have the same structure (`ValueError` otherwise).

    Besides the operators: `ω(x)[i]` indexes every leaf, `ω(x).at[i].set(v)` updates every
    leaf, and `ω(x).call(fn)` maps `fn` over the leaves.

    !!! example
        ```python
        >>> import jax.numpy as jnp
        >>> from larix.internal import ω
        >>> y = {"a": jnp.array(1.0), "b": jnp.array([2.0, 3.0])}
        >>> (y**ω + 0.5 * y**ω).ω["b"]
        Array([3. , 4.5], dtype=float32)

        ```
    """

    __slots__ = ("is_leaf", "ω")

    def __init__(self, value: Any, is_leaf: Callable[[Any], bool] | None = None):
        # A wrapped tree is a single opaque leaf to JAX (it is not registered as a pytree):
        # it is meant to live only for the length of an expression.
        if isinstance(value, ω):
            value, is_leaf = value.ω, value.is_leaf if is_leaf is None else is_leaf
        self.ω = value
        self.is_leaf = is_leaf

    def __repr__(self) -> str:
        return f"ω({self.ω!r})"

    def _map(self, fn: Callable[..., Any], *others: Any) -> ω:
        return ω(jtu.tree_map(fn, self.ω, *others, is_leaf=self.is_leaf), is_leaf=self.is_leaf)

    def _check(self, other: ω, what: str) -> None:
        if not _same_predicate(self.is_leaf, other.is_leaf):
            raise ValueError(f"larix.internal.ω: the two trees of `{what}` were wrapped with different `is_leaf`s.")
        ours = jtu.tree_structure(self.ω, is_leaf=self.is_leaf)
        theirs = jtu.tree_structure(other.ω, is_leaf=other.is_leaf)
        if ours != theirs:
            raise ValueError(
                f"larix.internal.ω: the two trees of `{what}` must have the same structure, "
                f"but got {ours} and {theirs}."
            )

    def __getitem__(self, item: Any) -> ω:
        return self._map(lambda x: x[item])

    def call(self, fn: Callable[[Any], Any]) -> ω:
        """`ω(tree_map(fn, tree))`."""
        return self._map(fn)

    @property
    def at(self) -> _At:
        return _At(self)


class _At:
    __slots__ = ("_tree",)

    def __init__(self, tree: ω):
        self._tree = tree

    def __getitem__(self, item: Any) -> _AtItem:
        return _AtItem(self._tree, item)


class _AtItem:
    __slots__ = ("_item", "_tree")

    def __init__(self, tree: ω, item: Any):
        self._tree, self._item = tree, item

    def _apply(self, method: str, value: Any, kwargs: dict[str, Any]) -> ω:
        item = self._item

        def update(x: Any, v: Any) -> Any:
            return getattr(x.at[item], method)(v, **kwargs)

        if isinstance(value, ω):
            self._tree._check(value, "at[...]." + method)
            return self._tree._map(update, value.ω)
        return self._tree._map(lambda x: update(x, value))


def _at_method(method: str) -> Callable[..., ω]:
    def fn(self: _AtItem, value: Any, **kwargs: Any) -> ω:
        return self._apply(method, value, kwargs)

    fn.__name__ = method
    return fn


for _method in ("set", "add", "multiply", "divide", "power", "min", "max"):
    setattr(_AtItem, _method, _at_method(_method))


def _leafwise(op: Callable[[Any, Any], Any], reflected: bool) -> Callable[[ω, Any], ω]:
    def method(self: ω, other: Any) -> ω:
        if isinstance(other, ω):
            self._check(other, op.__name__)
            if reflected:
                return self._map(lambda a, b: op(b, a), other.ω)
            return self._map(op, other.ω)
        if reflected:
            return self._map(lambda x: op(other, x))
        return self._map(lambda x: op(x, other))

    return method


def _unary(op: Callable[[Any], Any]) -> Callable[[ω], ω]:
    return lambda self: self._map(op)


_BINARY = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "matmul": operator.matmul,
    "truediv": operator.truediv,
    "floordiv": operator.floordiv,
    "mod": operator.mod,
    "pow": operator.pow,
    "and": operator.and_,
    "or": operator.or_,
    "xor": operator.xor,
    "lshift": operator.lshift,
    "rshift": operator.rshift,
}
for _name, _op in _BINARY.items():
    setattr(ω, f"__{_name}__", _leafwise(_op, reflected=False))
    setattr(ω, f"__r{_name}__", _leafwise(_op, reflected=True))
for _name, _op in {"lt": operator.lt, "le": operator.le, "eq": operator.eq, "ne": operator.ne, "gt": operator.gt, "ge": operator.ge}.items():
    setattr(ω, f"__{_name}__", _leafwise(_op, reflected=False))
for _name, _op in {"neg": operator.neg, "pos": operator.pos, "abs": operator.abs, "invert": operator.invert}.items():
    setattr(ω, f"__{_name}__", _unary(_op))
ω.__hash__ = None  # type: ignore[assignment]  # `==` is leafwise, so it cannot hash
