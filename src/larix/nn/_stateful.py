"""State kept outside the model: StateIndex, State, make_with_state, delete_init_state.

A stateful layer (BatchNorm's running statistics, a cache) does not hold its state. It holds
a `StateIndex`: a key, plus the initial value. The values live in a separate `State`
pytree that is passed in and returned by every call, so that the model itself stays a
pure function of its parameters, and the state is an ordinary pytree of arrays that jit,
vmap, checkpoints and optimisers see as such.

Each entry of a State is named after the place of its StateIndex in the model (its dotted
path, as in [`larix.split`][]): `larix.split(state)` gives `{"layers.1.ema_state_index.0":
array, ...}`, whose keys read like the model's parameter keys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from .._module import Module, field
from .._paths import dotted_path
from .._pformat import tree_pformat

if TYPE_CHECKING:
    from jaxtyping import PyTree

__all__ = ["State", "StateIndex", "StatefulLayer", "delete_init_state", "make_with_state"]

_Value = TypeVar("_Value")
_P = ParamSpec("_P")
_T = TypeVar("_T")


class StatefulLayer(Module):
    """Base class that marks a layer as one called `(x, state) -> (y, state)`.

    [`larix.nn.Sequential`][] calls a layer that subclasses this (and whose
    [`is_stateful`][larix.nn.StatefulLayer.is_stateful] returns `True`) as
    `x, state = layer(x, state, key=key)`, and every other layer as `x = layer(x, key=key)`.
    """

    def is_stateful(self) -> bool:
        """Whether to call this layer with a state. `True` unless a subclass says otherwise
        (a container is stateful only if one of its layers is).

        **Returns:** a `bool`.
        """
        return True


class _DeletedInit:
    """What `delete_init_state` leaves in a StateIndex: the shapes and dtypes, no arrays."""

    __slots__ = ("structure",)

    def __init__(self, structure: Any):
        self.structure = structure

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _DeletedInit) and other.structure == self.structure

    def __hash__(self) -> int:
        leaves, treedef = jtu.tree_flatten(self.structure)
        return hash((treedef, tuple(leaves)))

    def __repr__(self) -> str:
        return f"<deleted: {tree_pformat(self.structure, struct_as_array=True)}>"


class StateIndex(Module, Generic[_Value]):
    """The key of one piece of state, and its initial value.

    A stateful layer stores a `StateIndex` as a field, and reads and writes its value with
    `state.get(index)` and `state.set(index, value)` on the [`larix.nn.State`][] it is
    called with.

    **Fields:**

    - `marker`: the key (static). A fresh unique object; [`larix.nn.make_with_state`][]
      replaces it by the index's dotted path in the model, so that a model and its state
      still match after being pickled or saved separately.
    - `init`: the initial value (a pytree of arrays), until
      [`larix.nn.delete_init_state`][] strips it to save memory.

    !!! example "A layer that counts its calls"
        ```python
        >>> import jax.numpy as jnp, larix
        >>> class Counter(larix.Module):
        ...     index: larix.nn.StateIndex
        ...     def __init__(self):
        ...         self.index = larix.nn.StateIndex(jnp.array(0))
        ...     def __call__(self, x, state):
        ...         count = state.get(self.index)
        ...         return x + count, state.set(self.index, count + 1)
        >>> model, state = larix.nn.make_with_state(Counter)()
        >>> y, state = model(jnp.array(10), state)
        >>> y, state = model(jnp.array(10), state)
        >>> int(y), int(state.get(model.index))
        (11, 2)

        ```
    """

    marker: Any = field(static=True)
    init: _Value

    def __init__(self, init: _Value):
        """**Arguments:**

        - `init`: the initial value of the state: a pytree of arrays.
        """
        self.init = init
        self.marker = object()


def _is_index(x: Any) -> bool:
    return isinstance(x, StateIndex)


def _new_index(marker: Any, init: Any) -> StateIndex:
    # A StateIndex with a given marker: bypasses __init__, which always makes a fresh one.
    index = object.__new__(StateIndex)
    index.__dict__.update(marker=marker, init=init)
    return index


def _signature(value: Any) -> Any:
    leaves, treedef = jtu.tree_flatten(value)
    return treedef, [(jnp.shape(x), jnp.result_type(x)) for x in leaves]


def _describe(value: Any) -> str:
    structs = jtu.tree_map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), value)
    return tree_pformat(structs, struct_as_array=True)


class _MissingStateError(KeyError):
    def __str__(self) -> str:  # KeyError would show the message with quotes around it
        return str(self.args[0])


# What a State holds once `set` or `update` has returned its successor: any use of it
# raises `_RETIRED_MESSAGE`, as in Equinox. Reusing a state is almost always the bug of
# passing `state` where `new_state` was meant, which would otherwise run silently on stale
# statistics.
_RETIRED: Any = None

_RETIRED_MESSAGE = """\
this larix.nn.State was already used: `set` or `update` was called on it (a stateful layer \
does that) and returned a new State, which replaces it. Use the State that call returned:

    y, state = layer(x, state)
    y, state = layer(y, state)    # not `layer(y, old_state)`

To keep an old state on purpose, copy it before it is used: \
`saved = jax.tree_util.tree_map(lambda x: x, state)`."""


class State:
    """The state of a model: a mapping from each [`larix.nn.StateIndex`][] in it to a value.

    A pytree (its leaves are the values' arrays), immutable: `set` and `update` return a
    new `State` and retire this one, so that any later use of it (`get`, another `set`,
    flattening it, ...) raises a `ValueError`, as in Equinox: reusing an old state is
    almost always a bug. Copy a state to keep it: `jax.tree_util.tree_map(lambda x: x,
    state)`. Usually made together with the model by [`larix.nn.make_with_state`][].

    Each entry is named by where its `StateIndex` sits in the model (the dotted path of
    [`larix.split`][]), so `larix.split(state)` gives readable keys such as
    `"layers.1.ema_state_index.0"`. To keep parameters and state in one checkpoint, split
    them together: `larix.split({"model": model, "state": state}, larix.by_path("state.**"))`.

    !!! example
        ```python
        >>> import jax.numpy as jnp, larix
        >>> model, state = larix.nn.make_with_state(larix.nn.BatchNorm)(3, "batch", mode="ema")
        >>> state
        State(ema_first_time_index=bool[], ema_state_index=(f32[3], f32[3]))
        >>> skeleton, arrays = larix.split(state)
        >>> sorted(arrays)
        ['ema_first_time_index', 'ema_state_index.0', 'ema_state_index.1']

        ```
    """

    __slots__ = ("_names", "_values")
    _values: dict[Any, Any]
    _names: dict[Any, str]

    def __init__(self, model: PyTree):
        """**Arguments:**

        - `model`: any pytree. The initial value of every `StateIndex` in it is collected.

        **Raises:** `ValueError` if the initial state was deleted by
        [`larix.nn.delete_init_state`][] (as [`larix.nn.make_with_state`][] does).
        """
        values: dict[Any, Any] = {}
        names: dict[Any, str] = {}
        for path, leaf in jtu.tree_flatten_with_path(model, is_leaf=_is_index)[0]:
            if not isinstance(leaf, StateIndex) or leaf.marker in values:
                continue  # a StateIndex reached twice is a shared layer: one entry
            name = dotted_path(path)
            if isinstance(leaf.init, _DeletedInit):
                raise ValueError(
                    f"larix.nn.State: the initial value of the StateIndex at `{name or 'the root'}` "
                    "was deleted (make_with_state and delete_init_state do that to save "
                    "memory). Use the State that make_with_state returned, or build the "
                    "model again to get a fresh one."
                )
            values[leaf.marker] = leaf.init
            names[leaf.marker] = name
        self._set(values, names)

    def _set(self, values: dict[Any, Any], names: dict[Any, str]) -> None:
        object.__setattr__(self, "_values", values)
        object.__setattr__(self, "_names", names)

    def _live_values(self, method: str) -> dict[Any, Any]:
        if self._values is _RETIRED:
            raise ValueError(f"State.{method}: {_RETIRED_MESSAGE}")
        return self._values

    def _retire(self) -> None:
        object.__setattr__(self, "_values", _RETIRED)

    @classmethod
    def _build(cls, values: dict[Any, Any], names: dict[Any, str]) -> State:
        state = object.__new__(cls)
        state._set(values, names)
        return state

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(
            "A larix.nn.State is immutable: `state = state.set(index, value)` returns the "
            "updated copy."
        )

    def _value(self, marker: Any, method: str) -> Any:
        values = self._live_values(method)
        try:
            return values[marker]
        except KeyError:
            raise _MissingStateError(
                f"State.{method}: this State has no entry for the StateIndex {marker!r}. "
                "The model and the state do not belong together: build both at once with "
                "`model, state = larix.nn.make_with_state(Model)(...)`, or call "
                "`larix.nn.State(model)` on the model you run."
            ) from None

    def _lookup(self, item: StateIndex, method: str) -> Any:
        if not isinstance(item, StateIndex):
            raise TypeError(f"State.{method} takes a larix.nn.StateIndex, got {type(item).__name__}.")
        return self._value(item.marker, method)

    def get(self, item: StateIndex[_Value]) -> _Value:
        """The current value for `item`.

        **Arguments:**

        - `item`: a [`larix.nn.StateIndex`][] of the model this state belongs to.

        **Returns:** its value.

        **Raises:** `KeyError` if this state has no entry for `item`.
        """
        return self._lookup(item, "get")

    def set(self, item: StateIndex[_Value], value: _Value) -> State:
        """A copy of this state with the value for `item` replaced. Assign the result:
        `state = state.set(index, value)`. This `State` is retired: using it again raises
        (as in Equinox), which catches passing an old state where the new one was meant.

        **Arguments:**

        - `item`: a [`larix.nn.StateIndex`][] of the model this state belongs to.
        - `value`: the new value, with the same structure, shapes and dtypes as the old.

        **Returns:** the new `State`.

        **Raises:** `KeyError` if there is no entry for `item`; `ValueError` if `value`
        does not match the old value's structure, shapes or dtypes, or if this state was
        already retired by an earlier `set` or `update`.
        """
        old = self._lookup(item, "set")
        if _signature(old) != _signature(value):
            old_text, new_text = (_describe(v) for v in (old, value))
            raise ValueError(
                f"State.set: the new value for `{self._names[item.marker]}` is {new_text}, but "
                f"the state holds {old_text}. Keep the structure, shapes and dtypes of the "
                "initial value (cast with `.astype(old.dtype)` where needed)."
            )
        values = dict(self._values)
        values[item.marker] = value
        self._retire()
        return State._build(values, self._names)

    def substate(self, pytree: PyTree) -> State:
        """The part of this state that belongs to the `StateIndex`es in `pytree` (for
        example one sub-model).

        **Arguments:**

        - `pytree`: any pytree; the `StateIndex`es in it select the entries.

        **Returns:** a smaller `State`; merge changes back with [`update`][larix.nn.State.update].
        """
        self._live_values("substate")
        markers = [x.marker for x in jtu.tree_leaves(pytree, is_leaf=_is_index) if _is_index(x)]
        values = {m: self._value(m, "substate") for m in dict.fromkeys(markers)}
        return State._build(values, {m: self._names[m] for m in values})

    def update(self, substate: State) -> State:
        """This state with the entries of `substate` (from [`substate`][larix.nn.State.substate])
        written back. This `State` is retired, as by [`set`][larix.nn.State.set].

        **Arguments:**

        - `substate`: a `State` whose entries all belong to this one.

        **Returns:** the new `State`.

        **Raises:** `KeyError` if `substate` has an entry this state does not.
        """
        values = self._live_values("update")
        if not isinstance(substate, State):
            raise TypeError(f"State.update takes a larix.nn.State, got {type(substate).__name__}.")
        sub_values = substate._live_values("update")
        unknown = [substate._names[m] for m in sub_values if m not in values]
        if unknown:
            raise _MissingStateError(
                f"State.update: this State has no entries {unknown}. Pass a State made with "
                "`state.substate(...)` of this state."
            )
        self._retire()
        return State._build({**values, **sub_values}, self._names)

    def __repr__(self) -> str:
        if self._values is _RETIRED:
            return "State(<retired: use the State that set/update returned>)"
        parts = [f"{self._names[m] or '<root>'}={tree_pformat(v)}" for m, v in self._values.items()]
        one_line = "State(" + ", ".join(parts) + ")"
        return one_line if len(one_line) <= 80 else "State(\n" + "".join(f"  {p},\n" for p in parts) + ")"

    def __getstate__(self) -> Any:
        return (self._live_values("__getstate__"), self._names)

    def __setstate__(self, state: Any) -> None:
        self._set(*state)


def _flatten_with_keys(state: State) -> tuple[Any, Any]:
    values = state._live_values("flatten")
    markers = tuple(values)
    names = tuple(state._names[m] for m in markers)
    children = [(jtu.DictKey(n), values[m]) for n, m in zip(names, markers)]
    return children, (markers, names)


def _flatten(state: State) -> tuple[Any, Any]:
    values = state._live_values("flatten")
    markers = tuple(values)
    return [values[m] for m in markers], (markers, tuple(state._names[m] for m in markers))


def _unflatten(aux: Any, children: Any) -> State:
    markers, names = aux
    return State._build(dict(zip(markers, children)), dict(zip(markers, names)))


jtu.register_pytree_with_keys(State, _flatten_with_keys, _unflatten, flatten_func=_flatten)


def delete_init_state(model: PyTree) -> PyTree:
    """A copy of `model` whose `StateIndex`es no longer hold their initial values.

    A stateful layer keeps its initial state so that [`larix.nn.State`][] can collect it;
    once the `State` exists, that copy only costs memory (and would be seen by
    `filter_grad` and optimisers as more arrays). Only the shapes and dtypes are kept.

    **Arguments:**

    - `model`: any pytree.

    **Returns:** the stripped copy. [`larix.nn.make_with_state`][] does this for you.
    """

    def strip(x: Any) -> Any:
        if not _is_index(x) or isinstance(x.init, _DeletedInit):
            return x
        return _new_index(x.marker, _DeletedInit(jax.eval_shape(lambda: x.init)))

    return jtu.tree_map(strip, model, is_leaf=_is_index)


def _name_markers(model: Any) -> Any:
    # Name every StateIndex after its (first) dotted path, keeping shared ones shared.
    names: dict[Any, str] = {}
    for path, leaf in jtu.tree_flatten_with_path(model, is_leaf=_is_index)[0]:
        if _is_index(leaf):
            names.setdefault(leaf.marker, dotted_path(path))

    def rename(x: Any) -> Any:
        return _new_index(names[x.marker], x.init) if _is_index(x) else x

    return jtu.tree_map(rename, model, is_leaf=_is_index)


def make_with_state(make_model: Callable[_P, _T]) -> Callable[_P, tuple[_T, State]]:
    """Build a stateful model and its initial state: `model, state = make_with_state(Model)(...)`.

    Calls `make_model(*args, **kwargs)`, names each `StateIndex` in the result after its
    dotted path (so that the model and the state match across processes and pickling),
    collects the initial values into a [`larix.nn.State`][], and strips them from the model
    with [`larix.nn.delete_init_state`][].

    **Arguments:**

    - `make_model`: a callable returning a pytree, usually a Module class.

    **Returns:** a callable taking `make_model`'s arguments and returning `(model, state)`.

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> bn, state = larix.nn.make_with_state(larix.nn.BatchNorm)(3, axis_name="batch", mode="ema")
        >>> batched = larix.filter_vmap(
        ...     lambda m, x, s: m(x, s), in_axes=(None, 0, None), out_axes=(0, None), axis_name="batch"
        ... )
        >>> y, state = batched(bn, jnp.arange(12.0).reshape(4, 3), state)
        >>> y.shape, state.get(bn.ema_state_index)[0]
        ((4, 3), Array([4.5, 5.5, 6.5], dtype=float32))

        ```
    """

    def make(*args: _P.args, **kwargs: _P.kwargs) -> tuple[_T, State]:
        model = _name_markers(make_model(*args, **kwargs))
        return delete_init_state(model), State(model)

    return make
