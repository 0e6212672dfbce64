"""summary: a table of a model's submodules, their parameters and their call shapes."""

from __future__ import annotations

import dataclasses
import math
import threading
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu

from ._field import MEMO_NAMES
from ._frozen import Frozen
from ._module import Module, field
from ._paths import entry_name, flatten_one_level_with_keys
from ._pformat import _dtype_name
from ._shapes import filter_eval_shape, is_shaped
from .nn._stateful import StateIndex, _DeletedInit

__all__ = ["ArrayInfo", "Call", "Summary", "SummaryRow", "summary"]

_KINDS = ("trainable", "frozen", "state")


@dataclasses.dataclass(frozen=True)
class ArrayInfo:
    """One array of a model, as listed in a [`larix.summary`][] row.

    **Fields:** `name` (its dotted path from the row's module), `shape`, `dtype` (for a
    frozen array, the dtype it was frozen from), and `kind`: `"trainable"` (a floating
    point array), `"frozen"` (inside a [`larix.Frozen`][], or not floating point, so that
    `larix.filter(model, larix.is_inexact_array)` leaves it out) or `"state"` (the
    initial value of a [`larix.nn.StateIndex`][]).
    """

    name: str
    shape: tuple[int, ...]
    dtype: Any
    kind: str

    @property
    def size(self) -> int:
        """The number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """The size in bytes."""
        return self.size * getattr(self.dtype, "itemsize", 0)


@dataclasses.dataclass(frozen=True)
class Call:
    """One call of a submodule: its arguments and output, with a `jax.ShapeDtypeStruct`
    in place of every array."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: Any


@dataclasses.dataclass(frozen=True)
class SummaryRow:
    """One row of a [`larix.summary`][]: a submodule and the arrays it holds.

    **Fields:**

    - `path`: where the submodule is in the model, dotted (`"layers.0"`; `""` for the
      model itself). A Module wrapped in [`larix.Frozen`][] is shown at the Frozen's
      place, with the type `Frozen(Name)`.
    - `type`: its class name; `depth`: how many Modules it is nested in.
    - `arrays`: its `ArrayInfo`s: those it holds directly,
      and, where `depth` cut the table short, those of the submodules not shown.
    - `trainable`, `frozen`, `state`: the number of elements of each kind; `bytes`: the
      size of all its arrays.
    - `calls`: each call of the submodule while the model ran on the example arguments,
      as `Call`s, in order (empty without example arguments).
    """

    path: str
    type: str
    depth: int
    arrays: tuple[ArrayInfo, ...]
    calls: tuple[Call, ...]

    def _count(self, kind: str) -> int:
        return sum(a.size for a in self.arrays if a.kind == kind)

    @property
    def trainable(self) -> int:
        """The number of trainable elements."""
        return self._count("trainable")

    @property
    def frozen(self) -> int:
        """The number of frozen elements."""
        return self._count("frozen")

    @property
    def state(self) -> int:
        """The number of state elements."""
        return self._count("state")

    @property
    def bytes(self) -> int:
        """The size of all the row's arrays, in bytes."""
        return sum(a.nbytes for a in self.arrays)

    def as_dict(self) -> dict[str, Any]:
        """The row as a dict of plain values (arrays as dicts too)."""
        return {
            "path": self.path,
            "type": self.type,
            "depth": self.depth,
            "arrays": [dataclasses.asdict(a) for a in self.arrays],
            "trainable": self.trainable,
            "frozen": self.frozen,
            "state": self.state,
            "bytes": self.bytes,
            "calls": [{"args": c.args, "kwargs": c.kwargs, "output": c.output} for c in self.calls],
        }


@dataclasses.dataclass(frozen=True)
class Summary:
    """What [`larix.summary`][] returns: `rows`, `totals`, and the table (`str(summary)`,
    or `summary.table()`).

    **Fields:** `rows`, a tuple of `SummaryRow`s, the model first and its submodules in
    the order of its fields; `called`, whether the model was run on example arguments
    (the table then has the `input` and `output` columns).
    """

    rows: tuple[SummaryRow, ...]
    called: bool

    @property
    def totals(self) -> dict[str, int]:
        """`{"trainable": ..., "frozen": ..., "state": ..., "bytes": ...}` over the model."""
        return {k: sum(getattr(r, k) for r in self.rows) for k in (*_KINDS, "bytes")}

    def as_dicts(self) -> list[dict[str, Any]]:
        """The rows as dicts (see `SummaryRow.as_dict`)."""
        return [r.as_dict() for r in self.rows]

    def table(self, max_arrays: int = 8) -> str:
        """The table as text: one row per submodule, its arrays one per line (at most
        `max_arrays`), and the totals.

        **Arguments:**

        - `max_arrays`: how many arrays to list per row before "... N more".

        **Returns:** a `str`.
        """
        return _render(self, max_arrays)

    def __str__(self) -> str:
        return self.table()

    __repr__ = __str__


# ----------------------------------------------------------------------------------------
# The table.


def _shape_text(x: Any) -> str:
    try:
        dtype = _dtype_name(x.dtype)
    except TypeError:  # an extended dtype, such as a PRNG key's
        dtype = str(x.dtype)
    return f"{dtype}[{','.join(map(str, x.shape))}]"


def _short(tree: Any) -> str:
    """A compact description of a call's argument or output: arrays as `f32[3,4]`."""
    if isinstance(tree, jax.ShapeDtypeStruct):
        return _shape_text(tree)
    if isinstance(tree, tuple) and not hasattr(tree, "_fields"):
        return "(" + ", ".join(map(_short, tree)) + ("," if len(tree) == 1 else "") + ")"
    if isinstance(tree, list):
        return "[" + ", ".join(map(_short, tree)) + "]"
    if isinstance(tree, dict):
        return "{" + ", ".join(f"{k!r}: {_short(v)}" for k, v in tree.items()) + "}"
    if _children(tree) is not None and tree is not None:
        return type(tree).__name__  # a Module, a State, ...: its name says enough
    text = repr(tree)
    return text if len(text) <= 16 else text[:13] + "..."


def _call_text(parts: list[str], width: int = 40) -> str:
    text = ", ".join(parts)
    return text if len(text) <= width else text[: width - 3] + "..."


def _number(n: int) -> str:
    return f"{n:,}" if n else ""


def _bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    raise AssertionError  # pragma: no cover


def _capped(lines: list[str], limit: int) -> list[str]:
    return lines if len(lines) <= limit else [*lines[: limit - 1], f"... {len(lines) - limit + 1} more"]


def _render(summary: Summary, max_arrays: int) -> str:
    totals = summary.totals
    kinds = [k for k in _KINDS if k == "trainable" or totals[k]]
    header = ["path", "type"] + (["input", "output"] if summary.called else []) + ["arrays", *kinds, "bytes"]
    numeric = {*kinds, "bytes"}
    table: list[list[list[str]]] = []
    for row in summary.rows:
        cells = [[row.path], [row.type]]
        if summary.called:
            calls = [
                (_call_text([*map(_short, c.args), *(f"{k}={_short(v)}" for k, v in c.kwargs.items() if v is not None)]),
                 _call_text([_short(c.output)]))
                for c in row.calls
            ]
            if len(calls) > 1:
                calls = [(f"{i}) {a}", f"{i}) {b}") for i, (a, b) in enumerate(calls, 1)]
            cells += [_capped([a for a, _ in calls], max_arrays), _capped([b for _, b in calls], max_arrays)]
        arrays = [f"{a.name} {_shape_text(a)}" + ("" if a.kind == "trainable" else f" ({a.kind})") for a in row.arrays]
        cells.append(_capped(arrays, max_arrays))
        cells += [[_number(getattr(row, k))] for k in kinds]
        cells.append([_bytes(row.bytes)] if row.arrays else [""])
        table.append(cells)
    total = [["total"]] + [[""]] * (len(header) - 2 - len(kinds)) + [[f"{totals[k]:,}"] for k in kinds]
    total.append([_bytes(totals["bytes"])])
    widths = [max(len(line) for cells in [[[h] for h in header], *table, total] for line in cells[i]) for i in range(len(header))]

    def lines(cells: list[list[str]]) -> list[str]:
        out = []
        for i in range(max(len(c) for c in cells)):
            parts = []
            for name, width, cell in zip(header, widths, cells):
                text = cell[i] if i < len(cell) else ""
                parts.append(text.rjust(width) if name in numeric else text.ljust(width))
            out.append("  ".join(parts).rstrip())
        return out

    rule = "  ".join("-" * w for w in widths)
    body = [line for cells in table for line in lines(cells)]
    return "\n".join([*lines([[h] for h in header]), rule, *body, rule, *lines(total)])


# ----------------------------------------------------------------------------------------
# Recording calls: each shown submodule is swapped for an instance of a subclass of its own
# class whose __call__ records shapes. Subclassing, not wrapping, keeps `isinstance` (e.g.
# Sequential's test for stateful layers), attributes and other methods exactly as they
# were. The recorder travels in a static field, so nothing global is touched while the
# model runs, and a model traced through the user's own `filter_jit` cannot hit a cached
# trace from an earlier summary (the static field is part of its cache key).


class _Tag:
    """The static field of a recording module: where to record, and for which row."""

    __slots__ = ("calls", "row")

    def __init__(self, calls: list[list[Call]], row: int):
        self.calls, self.row = calls, row


_RECORDING_CLASSES: dict[type, type] = {}
_RECORDING_LOCK = threading.Lock()


def _struct(x: Any) -> Any:
    return jax.ShapeDtypeStruct(jnp.shape(x), x.dtype) if is_shaped(x) else x


def _recording_class(cls: type) -> type:
    with _RECORDING_LOCK:
        recording = _RECORDING_CLASSES.get(cls)
        if recording is None:
            call = cls.__call__  # type: ignore[operator]

            def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N807
                # The inputs are read before the call: a State passed in is retired once
                # a layer has set a value in it, and can no longer be flattened.
                args_, kwargs_ = jtu.tree_map(_struct, (args, kwargs))
                output = call(self, *args, **kwargs)
                tag = self.__dict__["_larix_summary_tag"]
                tag.calls[tag.row].append(Call(args_, kwargs_, jtu.tree_map(_struct, output)))
                return output

            namespace = {
                "__annotations__": {"_larix_summary_tag": Any},
                "_larix_summary_tag": field(static=True, default=None, repr=False),
                "__call__": __call__,
                "__module__": cls.__module__,
                "__qualname__": cls.__qualname__,
            }
            recording = type(cls)(cls.__name__, (cls,), namespace)
            _RECORDING_CLASSES[cls] = recording
    return recording


def _recording(module: Any, tag: _Tag) -> Any:
    new = object.__new__(_recording_class(type(module)))
    new.__dict__.update({k: v for k, v in module.__dict__.items() if k not in MEMO_NAMES})
    new.__dict__["_larix_summary_tag"] = tag
    return new


# ----------------------------------------------------------------------------------------
# Walking the model.


def _children(node: Any) -> list[tuple[Any, Any]] | None:
    """`[(key, child), ...]` of a pytree node; `None` for a leaf (an array among them)."""
    if not isinstance(node, Module) and (isinstance(node, _DeletedInit) or is_shaped(node)):
        return None
    try:
        children, _ = flatten_one_level_with_keys(node)
    except ValueError:
        return None
    return children


def _rebuild(node: Any, old: list[Any], new: list[Any]) -> Any:
    if all(a is b for a, b in zip(old, new)):
        return node
    _, treedef = jtu.tree_flatten(node, is_leaf=lambda x: x is not node)
    return treedef.unflatten(new)


class _Walker:
    def __init__(self, max_depth: int | None, record: bool):
        self.max_depth = max_depth
        self.record = record
        self.rows: list[dict[str, Any]] = []
        self.calls: list[list[Call]] = []

    def _new_row(self, path: str, type_name: str, depth: int) -> int:
        self.rows.append({"path": path, "type": type_name, "depth": depth, "arrays": []})
        self.calls.append([])
        return len(self.rows) - 1

    def visit(self, node: Any, path: tuple[str, ...], row: int, row_path: tuple[str, ...], depth: int, kind: str | None) -> Any:
        """Record the arrays under `node` (at `path`) into `row`; returns `node`, with the
        shown submodules made recording ones if `self.record`."""
        if isinstance(node, StateIndex):
            # The initial state: named as in the State (`bn.ema_state_index.0`), no `init`.
            init = self.visit(node.init, path, row, row_path, depth, "state")
            return _rebuild(node, [node.init], [init])
        if isinstance(node, Frozen):
            return self._visit_frozen(node, path, row, row_path, depth)
        if isinstance(node, Module):
            shown = self.max_depth is None or depth <= self.max_depth
            if shown:
                row, row_path = self._new_row(".".join(path), type(node).__name__, depth), path
            return self._visit_module(node, path, row, row_path, depth, kind, shown)
        if isinstance(node, _DeletedInit):  # a StateIndex stripped by make_with_state
            for leaf_path, leaf in jtu.tree_flatten_with_path(node.structure)[0]:
                self._add(path + tuple(entry_name(e) for e in leaf_path), leaf, row, row_path, kind)
            return node
        children = _children(node)
        if children is None:
            self._add(path, node, row, row_path, kind)
            return node
        new = [self.visit(c, (*path, entry_name(k)), row, row_path, depth, kind) for k, c in children]
        return _rebuild(node, [c for _, c in children], new)

    def _visit_module(self, node: Any, path: tuple[str, ...], row: int, row_path: tuple[str, ...], depth: int, kind: str | None, shown: bool) -> Any:
        children = _children(node) or []
        new = [self.visit(c, (*path, entry_name(k)), row, row_path, depth + 1, kind) for k, c in children]
        node = _rebuild(node, [c for _, c in children], new)
        if shown and self.record and callable(node):
            try:
                node = _recording(node, _Tag(self.calls, row))
            except TypeError:  # a class that cannot be subclassed: its calls go unrecorded
                pass
        return node

    def _visit_frozen(self, node: Frozen, path: tuple[str, ...], row: int, row_path: tuple[str, ...], depth: int) -> Any:
        # Walk the frozen tree as it is used: `.value`, with its original shapes and dtypes,
        # computed abstractly. The recording modules are then put back around the bits.
        value = filter_eval_shape(lambda f: f.value, node)
        shown = self.max_depth is None or depth <= self.max_depth
        if isinstance(value, Module) and not isinstance(value, (StateIndex, Frozen)):
            if shown:
                row = self._new_row(".".join(path), f"Frozen({type(value).__name__})", depth)
                row_path = path
            new_value = self._visit_module(value, path, row, row_path, depth, "frozen", shown)
        else:
            if shown:
                row, row_path = self._new_row(".".join(path), "Frozen", depth), path
            new_value = self.visit(value, (*path, "bits"), row, row_path, depth + 1, "frozen")
        if new_value is value:
            return node
        bits = jtu.tree_structure(new_value).unflatten(jtu.tree_leaves(node.bits))
        return _rebuild(node, [node.bits], [bits])

    def _add(self, path: tuple[str, ...], leaf: Any, row: int, row_path: tuple[str, ...], kind: str | None) -> None:
        if not is_shaped(leaf):
            return  # a Python number, a function, a string: not an array
        dtype = leaf.dtype
        if kind is None:
            kind = "trainable" if jnp.issubdtype(dtype, jnp.inexact) else "frozen"
        name = ".".join(path[len(row_path) :])
        self.rows[row]["arrays"].append(ArrayInfo(name, tuple(jnp.shape(leaf)), dtype, kind))


def summary(model: Any, *example_args: Any, depth: int | None = None, **example_kwargs: Any) -> Summary:
    """A table of a model: each submodule, the arrays it holds, and (given example
    arguments) the shapes it was called with and returned. Like Flax's `tabulate`, for any
    Module, the user's own included.

    Each row is one submodule (a Module nested anywhere in the model, also inside lists
    and dicts): its path and type; its arrays with their shapes and dtypes; the number of
    trainable, frozen (in a [`larix.Frozen`][], or not floating point) and state (in a
    [`larix.nn.StateIndex`][]) elements; and their size in bytes. Every array is counted
    once, in the row of the Module that holds it, so the rows add up to the totals below
    the table.

    With example arguments, the model is run as `model(*example_args, **example_kwargs)`,
    abstractly ([`larix.filter_eval_shape`][]: no FLOPs, no memory for activations), and
    each call of each submodule is listed with its input and output shapes. Only
    `__call__` is recorded; other methods run normally. Layers that need a batch axis
    (`BatchNorm` in training mode) need the model in inference mode
    ([`larix.nn.inference_mode`][]) or a `__call__` that maps over a batch.

    **Arguments:**

    - `model`: any Module (or pytree of Modules). Its arrays may be
      `jax.ShapeDtypeStruct`s, as from `larix.filter_eval_shape(Model, ...)`.
    - `*example_args`, `**example_kwargs`: optional; example arguments for `model`
      (arrays or `jax.ShapeDtypeStruct`s, and any other values).
    - `depth`: optional; show submodules nested at most this deep (the model is depth
      0, its submodules 1, ...). A row then also counts the arrays of its hidden
      submodules. (So `depth` is not passed on to the model as an example argument.)

    **Returns:** a `Summary`: `print` it for the table, or read its `rows` (a tuple of
    `SummaryRow`s), `totals` or `as_dicts()`.

    **Raises:** `TypeError` if example arguments are given but `model` is not callable;
    whatever `model` raises when called with them (with a note saying so).

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> k1, k2 = jax.random.split(jax.random.key(0))
        >>> mlp = larix.nn.Sequential([
        ...     larix.nn.Linear(3, 8, key=k1),
        ...     larix.nn.Lambda(jax.nn.relu),
        ...     larix.nn.Linear(8, 1, key=k2),
        ... ])
        >>> print(larix.summary(mlp, jnp.ones(3)))
        path      type        input   output  arrays           trainable  bytes
        --------  ----------  ------  ------  ---------------  ---------  -----
                  Sequential  f32[3]  f32[1]
        layers.0  Linear      f32[3]  f32[8]  weight f32[8,3]         32  128 B
                                              bias f32[8]
        layers.1  Lambda      f32[8]  f32[8]
        layers.2  Linear      f32[8]  f32[1]  weight f32[1,8]          9   36 B
                                              bias f32[1]
        --------  ----------  ------  ------  ---------------  ---------  -----
        total                                                         41  164 B
        >>> larix.summary(mlp).totals
        {'trainable': 41, 'frozen': 0, 'state': 0, 'bytes': 164}

        ```
    """
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 0):
        raise ValueError(f"larix.summary: `depth` must be None or an int >= 0, got {depth!r}.")
    record = bool(example_args or example_kwargs)
    if record and not callable(model):
        raise TypeError(
            f"larix.summary: example arguments were given, so the model is called with them, "
            f"but a {type(model).__name__} is not callable. Summarise a Module with a "
            "`__call__`, or drop the example arguments to list only the parameters."
        )
    walker = _Walker(depth, record)
    if isinstance(model, (Module, Frozen)):
        instrumented = walker.visit(model, (), 0, (), 0, None)
    else:  # a list or dict of Modules: a row for the container, its Modules at depth 1
        instrumented = walker.visit(model, (), walker._new_row("", type(model).__name__, 0), (), 1, None)
    if record:
        try:
            filter_eval_shape(lambda m, a, k: m(*a, **k), instrumented, example_args, example_kwargs)
        except Exception as error:
            error.add_note("(raised while larix.summary ran the model abstractly on the example arguments)")
            raise
    rows = tuple(
        SummaryRow(r["path"], r["type"], r["depth"], tuple(r["arrays"]), tuple(calls))
        for r, calls in zip(walker.rows, walker.calls)
    )
    return Summary(rows, record)

