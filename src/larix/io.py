"""Checkpoints: a tree's arrays and scalars in a `.safetensors` file, keyed by their dotted paths.

Each array is stored under the key that [`larix.split`][] gives it (`"layers.0.weight"`),
so a checkpoint names what it holds, loads regardless of leaf order, and is readable by
any safetensors reader (PyTorch, Flax, Rust, ...). Python scalar leaves go, exactly, in the
file's metadata. Needs the optional package safetensors: `pip install -e ".[io]"` from a clone of larix.
This module imports it only when a function is called, so `import larix` stays light.

The promise is that a checkpoint loses nothing: every array and scalar leaf is saved
unless a `filter_spec` leaves it out, a load either restores every selected leaf exactly
or raises (a `strict=False` load warns about each leaf it did not load), and a value is
never converted to a dtype that cannot hold it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from ._filters import _ARRAY_TYPES as _ARRAYS
from ._filters import is_array_like
from ._flat import merge, split
from ._paths import python_path
from ._pformat import _dtype_name
from ._serialise import PartialLoadWarning as PartialLoadWarning
from ._serialise import atomic_write, cast_checked, describe, restore_like
from ._state_dict import PlanRow as PlanRow
from ._state_dict import SkippedKeysWarning as SkippedKeysWarning
from ._state_dict import StateDictPlan as StateDictPlan
from ._state_dict import load_state_dict as load_state_dict
from ._state_dict import plan_state_dict as plan_state_dict
from ._state_dict import state_dict as state_dict

__all__ = [
    "LoadReport",
    "PartialLoadWarning",
    "PlanRow",
    "SkippedKeysWarning",
    "StateDictPlan",
    "load",
    "load_report",
    "load_state_dict",
    "plan_state_dict",
    "save",
    "state_dict",
]

# safetensors dtype codes <-> NumPy dtypes: the types that every safetensors >= 0.4 reads
# and writes. (Others, such as complex128 or int4, are refused with a TypeError at save.)
_DTYPES = {
    "BOOL": np.dtype(bool),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "U16": np.dtype(np.uint16),
    "I16": np.dtype(np.int16),
    "U32": np.dtype(np.uint32),
    "I32": np.dtype(np.int32),
    "U64": np.dtype(np.uint64),
    "I64": np.dtype(np.int64),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(jnp.bfloat16),
    "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64),
    "C64": np.dtype(np.complex64),
    "F8_E4M3": np.dtype(jnp.float8_e4m3fn),
    "F8_E5M2": np.dtype(jnp.float8_e5m2),
}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}

_SCALAR_TYPES = {"bool": bool, "int": int, "float": float, "complex": complex}
_VERSION_KEY = "larix_version"
_SCALARS_KEY = "larix_scalars"  # JSON: {key: [type name, value]}, complex as [real, imag]


def _safetensors() -> Any:
    try:
        import safetensors
        import safetensors.numpy
    except ImportError as error:
        raise ImportError(
            'larix.io needs the optional package safetensors. Install it from a clone of larix with: pip install -e ".[io]"'
        ) from error
    return safetensors


def _is_shape_struct(x: Any) -> bool:
    return isinstance(x, jax.ShapeDtypeStruct)


def _is_key_array(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _is_python_scalar(x: Any) -> bool:
    # Exact types: NumPy's float64 and complex128 subclass float and complex, but are saved
    # as arrays, to come back with their dtype.
    return type(x) in _SCALAR_TYPES.values()


# --------------------------------------------------------------------------- save


def save(path: str | os.PathLike[str], tree: Any, *, filter_spec: Any = is_array_like) -> None:
    """Save the arrays and scalars of `tree` to a `.safetensors` file, each under its dotted path.

    The leaves that `filter_spec` selects are stored under the keys that [`larix.split`][]
    gives them (`"layers.0.weight"`); the others are structure (activation functions,
    names) that comes back from the `like` tree at load. JAX and NumPy arrays and NumPy
    scalars are stored as tensors, in their dtype; Python `bool`/`int`/`float`/`complex`
    leaves are stored exactly (any `int`, `-0.0`, `nan`), as JSON in the file's metadata.
    The metadata also records the larix version.

    The default, [`larix.is_array_like`][], selects every leaf that holds numbers, so that
    nothing is lost by default (as with Equinox's `tree_serialise_leaves`): a `float` field
    that is not static is saved, not silently replaced by the `like` tree's value at load.
    To leave leaves out, say so, e.g. `filter_spec=larix.is_array` (arrays only).

    The save is atomic: the file is written under a temporary name in the same directory
    (the target's, if `path` is a symbolic link), flushed to disk and renamed over it. If
    anything fails, the temporary file is removed and an existing checkpoint is left
    untouched. Replacing a file keeps its permission bits.

    **Arguments:**

    - `path`: where to write, a `str` or `pathlib.Path` (used as given: no suffix is added).
    - `tree`: any pytree, for example a model, or `{"model": model, "state": state}`.
    - `filter_spec`: keyword-only; which leaves to save, as in [`larix.split`][]. Default
      [`larix.is_array_like`][]. Pass the same one to [`larix.io.load`][].

    **Returns:** nothing.

    **Raises:** `TypeError` naming every selected leaf that a safetensors file cannot hold
    (a string, a PRNG key, a dtype such as `complex128`); `FileNotFoundError` if the
    directory does not exist; `ImportError` if safetensors is not installed.

    !!! example
        ```python
        >>> import pathlib, tempfile, jax, larix, larix.io
        >>> directory = tempfile.TemporaryDirectory()
        >>> path = pathlib.Path(directory.name) / "mlp.safetensors"
        >>> mlp = larix.nn.MLP(2, 1, width_size=8, depth=1, key=jax.random.key(0))
        >>> larix.io.save(path, mlp)
        >>> like = larix.filter_eval_shape(larix.nn.MLP, 2, 1, 8, 1, key=jax.random.key(1))
        >>> loaded = larix.io.load(path, like)
        >>> larix.tree_equal(loaded, mlp)
        Array(True, dtype=bool)
        >>> directory.cleanup()

        ```
    """
    safetensors = _safetensors()
    _, selected, _ = split(tree, filter_spec)
    arrays: dict[str, np.ndarray] = {}
    scalars: dict[str, list[Any]] = {}
    refused: dict[str, str] = {}  # key -> why
    for key, leaf in selected.items():
        if isinstance(leaf, _ARRAYS):
            if _is_key_array(leaf):
                refused[key] = "is a PRNG key array: save `jax.random.key_data(key)` instead"
                continue
            # C order: safetensors copies the raw buffer, so a transposed view would be
            # written in the wrong order. (Not np.ascontiguousarray: it makes 0-d arrays 1-d.)
            value = np.asarray(leaf, order="C")
            if not value.dtype.isnative and value.dtype.kind != "V":
                # safetensors data is little-endian: a big-endian array is converted (exactly).
                value = value.astype(value.dtype.newbyteorder("="))
            if value.dtype not in _CODES:
                refused[key] = (
                    f"has dtype {value.dtype.name}, which safetensors files cannot hold: cast it "
                    f"(for instance to {_nearest(value.dtype)}), or use larix.tree_serialise_leaves"
                )
                continue
            arrays[key] = value
        elif _is_python_scalar(leaf):
            scalars[key] = [
                type(leaf).__name__,
                [_json_float(leaf.real), _json_float(leaf.imag)] if isinstance(leaf, complex) else _json_float(leaf),
            ]
        else:
            refused[key] = (
                f"is a {type(leaf).__name__}; only arrays, NumPy scalars and Python "
                "bool/int/float/complex can be saved"
            )
    if refused:
        raise TypeError(
            "larix.io.save: cannot save these leaves:\n"
            + "\n".join(f"  - '{key}' {why}" for key, why in refused.items())
            + "\nLeave them out with filter_spec (e.g. "
            f"`larix.is_array_like & ~larix.by_path({next(iter(refused))!r})`)."
        )
    from . import __version__

    metadata = {_VERSION_KEY: __version__}
    if scalars:
        metadata[_SCALARS_KEY] = json.dumps(scalars)
    atomic_write(
        Path(path), lambda temporary: safetensors.numpy.save_file(arrays, temporary, metadata=metadata)
    )


def _nearest(dtype: np.dtype) -> str:
    return {"c": "complex64", "f": "float32", "i": "int8", "u": "uint8"}.get(dtype.kind, "a supported dtype")


# --------------------------------------------------------------------------- reports




def _partial_load_warning(report: LoadReport) -> PartialLoadWarning:
    warning = PartialLoadWarning(
        f"larix.io.load(..., strict=False) did not load every leaf from '{report.path}':\n"
        + report.listing()
        + "\nTo load part of a checkpoint on purpose, select that part with filter_spec (e.g. "
        "`larix.is_array_like & larix.by_path('encoder.**')`) and keep strict=True, which "
        "then loads it without this warning."
    )
    # An attribute, not an argument: warnings and exceptions are copied and pickled by
    # calling the class with their message alone, and keep their attributes.
    warning.report = report
    return warning


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What [`larix.io.load`][] does with a file and a `like` tree, leaf by leaf.

    Returned by `larix.io.load_report`, and attached (as `report`) to the
    `larix.io.PartialLoadWarning` of a `strict=False` load. (`load` itself always returns
    just the tree: a return type that changed with `strict` would be a trap. So the report
    has a function of its own, and a warning that cannot be overlooked.)

    **Fields** (each a tuple of dotted keys, in the order of `like`, then of the file):

    - `path`: the file, as given.
    - `loaded`: leaves of `like` that the file fills.
    - `kept`: selected leaves of `like` that the file lacks: a `strict=False` load keeps
      their value from `like`; a strict load raises.
    - `ignored`: entries of the file that `like` lacks (or does not select): a
      `strict=False` load ignores them; a strict load raises.
    - `problems`: one line per mismatch that no `strict` setting loads past (another shape,
      a dtype that cannot hold the values, a placeholder with no value in the file, a
      part saved from or loaded into a [`larix.Frozen`][]).

    `report.matches` is `True` when a strict load succeeds: nothing kept, ignored or wrong.
    `str(report)` lists it all.
    """

    path: str
    loaded: tuple[str, ...]
    kept: tuple[str, ...]
    ignored: tuple[str, ...]
    problems: tuple[str, ...]

    @property
    def matches(self) -> bool:
        return not (self.kept or self.ignored or self.problems)

    def listing(self) -> str:
        """The kept, ignored and mismatched leaves, one bullet per kind."""
        lines = []
        if self.kept:
            lines.append("kept from `like`, as the file lacks them: " + ", ".join(map(repr, self.kept)))
        if self.ignored:
            lines.append("ignored in the file, as `like` lacks them: " + ", ".join(map(repr, self.ignored)))
        lines += self.problems
        return "\n".join(f"  - {line}" for line in lines)

    def __str__(self) -> str:
        if self.matches:
            return f"'{self.path}' matches `like`: {len(self.loaded)} leaves load."
        return f"'{self.path}' against `like`: {len(self.loaded)} leaves load, and\n" + self.listing()


class _Comparison:
    """A file read and matched against `like`: what `load` and `load_report` share."""

    def __init__(self, path: Any, like: Any, filter_spec: Any, who: str):
        safetensors = _safetensors()  # first: without it, say how to install it, whatever the path
        data = Path(path).read_bytes()
        try:
            records = {name: record for name, record in safetensors.deserialize(data)}
        except Exception as error:  # noqa: BLE001 - safetensors raises its own SafetensorError
            raise ValueError(f"{who}: '{path}' is not a safetensors file ({error}).") from None
        metadata = _metadata(data)
        scalars = _scalars(metadata, path, who)
        self.file_has_scalars = _SCALARS_KEY in metadata
        self.skeleton, structs, selected, self.rest = split(like, _is_shape_struct, filter_spec)
        refused = [f"'{k}' is a {type(x).__name__}" for k, x in selected.items() if not _loadable(x)]
        if refused:
            raise TypeError(
                f"{who}: filter_spec selects leaves of `like` that a checkpoint cannot hold: "
                + ", ".join(refused)
                + ". Select only arrays, NumPy scalars and Python bool/int/float/complex "
                "(the default, larix.is_array_like, selects those)."
            )
        self.values: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
        self.mismatched: list[str] = []
        absent: list[tuple[str, Any, bool]] = []  # (key, leaf of like, is a placeholder)
        for expected, out in zip((structs, selected), self.values):
            for key, x in expected.items():
                if key in records or key in scalars:
                    try:
                        out[key] = _value_like(x, records.get(key), scalars.get(key))
                    except _FoundError as found:
                        self.mismatched.append(f"'{key}': expected {describe(x)}, found {found}")
                else:
                    absent.append((key, x, expected is structs))
        extra = [k for k in (*records, *scalars) if k not in structs and k not in selected]
        self.frozen, paired = _frozen_layouts([k for k, _, _ in absent], extra, records, like)
        self.absent_structs = [(k, x) for k, x, placeholder in absent if placeholder and k not in paired]
        self.kept = [(k, x) for k, x, placeholder in absent if not placeholder and k not in paired]
        self.ignored = sorted(k for k in extra if k not in paired)
        self.entries = (records, scalars)

    def report(self, path: Any) -> LoadReport:
        problems = [*self.mismatched, *self.frozen]
        if self.absent_structs:
            problems.append(
                "missing from the file: "
                + ", ".join(f"'{k}' ({describe(x)})" for k, x in self.absent_structs)
            )
        return LoadReport(
            path=str(path),
            loaded=tuple(k for part in self.values for k in part),
            kept=tuple(k for k, _ in self.kept),
            ignored=tuple(self.ignored),
            problems=tuple(problems),
        )

    def strict_problems(self) -> list[str]:
        """Every mismatch of a strict load: those of `report`, plus each key missing or unexpected."""
        problems = [*self.mismatched, *self.frozen]
        missing = self.absent_structs + self.kept
        if missing:
            problems.append(
                "missing from the file: " + ", ".join(f"'{k}' ({describe(x)})" for k, x in missing)
            )
        if self.ignored:
            records, scalars = self.entries
            text = ", ".join(f"'{k}' ({_entry_text(k, records, scalars)})" for k in self.ignored)
            unselected = [k for k in self.ignored if k in self.rest]
            if unselected:
                text += (
                    f" (`like` has {', '.join(map(repr, unselected))}, but filter_spec does not select "
                    "them: pass the filter_spec that was given to save)"
                )
            problems.append("unexpected in the file: " + text)
        return problems

    def hints(self, *, strict: bool) -> list[str]:
        hints = []
        if self.mismatched:
            hints.append(
                "Shapes and dtypes must match, whatever `strict` is: build `like` with the "
                "hyperparameters and dtypes of the saved tree. (A dtype may differ only where every "
                "value converts exactly, such as float32 in the file into a float64 leaf; load into "
                "the file's dtype and cast afterwards for anything else.)"
            )
        if strict and (self.kept or self.ignored):
            hints.append(
                "If the file is meant to cover only part of `like` (or more than it), load with "
                "strict=False: entries that `like` lacks are then ignored and leaves that the file "
                "lacks keep their value from `like`, each listed in a larix.io.PartialLoadWarning."
            )
        if self.absent_structs:
            hints.append(
                "A placeholder (jax.ShapeDtypeStruct) has no value to keep, even with strict=False: "
                "give `like` a real array there."
            )
        if strict and not self.file_has_scalars and any(_is_python_scalar(x) for _, x in self.kept):
            hints.append(
                "The file holds no Python scalars: it was saved with filter_spec=larix.is_array (the "
                "default of larix.io.save before it saved scalars too). Load it with "
                "filter_spec=larix.is_array, and `like` keeps its scalars."
            )
        return hints


def load_report(path: str | os.PathLike[str], like: Any, *, filter_spec: Any = is_array_like) -> LoadReport:
    """Say what [`larix.io.load`][] would load from `path` into `like`, and what not.

    Reads and checks the file as `load` does, but raises for none of the mismatches: it
    returns them, as a `larix.io.LoadReport`. Use it to see what a `strict=False` load
    would keep from `like` and ignore in the file before deciding to load.

    **Arguments:** as for [`larix.io.load`][].

    **Returns:** a `larix.io.LoadReport`.

    **Raises:** `ValueError` if `path` is not a safetensors file written by larix;
    `TypeError` if `filter_spec` selects leaves that a checkpoint cannot hold.

    !!! example
        ```python
        >>> import pathlib, tempfile, jax.numpy as jnp, larix, larix.io
        >>> directory = tempfile.TemporaryDirectory()
        >>> path = pathlib.Path(directory.name) / "body.safetensors"
        >>> larix.io.save(path, {"body": jnp.ones(2), "old": jnp.ones(1)})
        >>> report = larix.io.load_report(path, {"body": jnp.zeros(2), "head": jnp.zeros(3)})
        >>> report.loaded, report.kept, report.ignored, report.matches
        (('body',), ('head',), ('old',), False)
        >>> directory.cleanup()

        ```
    """
    return _Comparison(path, like, filter_spec, "larix.io.load_report").report(path)


# --------------------------------------------------------------------------- load


def load(
    path: str | os.PathLike[str], like: Any, *, filter_spec: Any = is_array_like, strict: bool = True
) -> Any:
    """Load a checkpoint written by [`larix.io.save`][] into the structure of `like`.

    The leaves of `like` that `filter_spec` selects are replaced by the file's entries under
    their dotted paths; the others (activation functions, names, ...) are kept. Leaves of
    `like` that are `jax.ShapeDtypeStruct` placeholders (from [`larix.filter_eval_shape`][])
    are always loaded. Each loaded leaf has the kind of the leaf it replaces: a JAX array
    (placed like the `like` leaf), a NumPy array or scalar (of its dtype), or a Python
    scalar of the very type saved (an `int` stays an `int`, `-0.0` and `nan` stay as they are).

    A file's dtype may differ from the `like` leaf's only where every value converts
    exactly, without going from complex to real, real to integer or integer to bool:
    float32 or bfloat16 into float32 or float64, an int64 array whose values fit into
    int32. A value that would change (an int64 `2**40 + 5` into int32, a float64 `1e300`
    into float32, which would become inf) is an error naming the leaf. A JAX leaf holds
    what JAX's mode allows: with 64-bit types off, a float64 placeholder gets float32, so
    then the values must fit float32 exactly. Python scalars must be of the saved type.

    Nothing is loaded half-way: if the file does not match `like`, ONE error lists every
    missing key, every unexpected key and every shape or dtype that differs, with a hint
    for each kind. A model saved with part of it wrapped in [`larix.Frozen`][] (its keys
    then read `layers.0.bits.weight`) does not load into a plain model, nor the reverse: the
    error says which part was frozen and how to load it.

    **Arguments:**

    - `path`: the `.safetensors` file, a `str` or `pathlib.Path`.
    - `like`: a tree with the structure, shapes and dtypes of the saved one.
    - `filter_spec`: keyword-only; which leaves of `like` to load, as given to `save`.
      Default [`larix.is_array_like`][], the default of `save`.
    - `strict`: keyword-only. `True` (the default): the file must hold exactly the selected
      leaves. `False`: entries of the file that `like` does not have are ignored, and
      selected leaves that the file lacks keep their value from `like`, for loading part of
      a model; a `larix.io.PartialLoadWarning` lists every such leaf (see
      `larix.io.load_report` to get the list without loading). Placeholders still need
      a value, shapes and dtypes must match, and frozen parts must be frozen on both sides.

    **Returns:** `like` with the loaded leaves in place.

    **Raises:** `ValueError` listing every mismatch, or if `path` is not a safetensors file
    or its larix metadata is corrupt; `ImportError` if safetensors is not installed.

    !!! example
        ```python
        >>> import pathlib, tempfile, jax.numpy as jnp, larix, larix.io
        >>> directory = tempfile.TemporaryDirectory()
        >>> path = pathlib.Path(directory.name) / "params.safetensors"
        >>> larix.io.save(path, {"w": jnp.ones((2, 3)), "b": jnp.zeros(3), "step": 7})
        >>> larix.io.load(path, {"w": jnp.ones((3, 2)), "bias": jnp.zeros(3), "step": 0})
        Traceback (most recent call last):
        ValueError: larix.io.load: ... does not match `like`:
          - 'w': expected f32[3,2], found f32[2,3]
          - missing from the file: 'bias' (f32[3])
          - unexpected in the file: 'b' (f32[3])
        ...
        >>> directory.cleanup()

        ```
    """
    comparison = _Comparison(path, like, filter_spec, "larix.io.load")
    report = comparison.report(path)
    problems = comparison.strict_problems() if strict else list(report.problems)
    if problems:
        raise ValueError(
            f"larix.io.load: '{path}' does not match `like`:\n"
            + "\n".join(f"  - {p}" for p in problems)
            + "".join(f"\n{hint}" for hint in comparison.hints(strict=strict))
        )
    structs, selected = comparison.values
    if comparison.kept or comparison.ignored:  # only reached with strict=False
        warnings.warn(_partial_load_warning(report), stacklevel=2)
        selected = {**selected, **dict(comparison.kept)}
    return merge(comparison.skeleton, structs, selected, comparison.rest)


# --------------------------------------------------------------------------- leaves


class _FoundError(Exception):
    """What the file holds instead of the expected leaf; `load` adds the key."""


_KIND_ORDER = (jnp.bool_, jnp.integer, jnp.floating, jnp.complexfloating)


def _kind_rank(dtype: np.dtype) -> int:
    return next((i for i, kind in enumerate(_KIND_ORDER) if jnp.issubdtype(dtype, kind)), -1)


def _value_like(x: Any, record: dict[str, Any] | None, scalar: list[Any] | None) -> Any:
    """The file's entry (an array `record` or a `[type name, value]` scalar) as a leaf like `x`."""
    if record is not None:
        value = _array(record)
        if value is None:
            raise _FoundError(f"an array of safetensors dtype {record['dtype']}, which larix does not read")
        if _is_python_scalar(x) or value.shape != tuple(x.shape):
            raise _FoundError(describe(value))
        wanted = np.dtype(x.dtype)
        jax_leaf = not isinstance(x, (np.ndarray, np.generic))
        # With 64-bit types off, JAX would turn a float64 value into float32 on its own.
        target = jax.dtypes.canonicalize_dtype(wanted) if jax_leaf else wanted
        if value.dtype != target:
            if -1 in (_kind_rank(value.dtype), _kind_rank(target)) or _kind_rank(value.dtype) > _kind_rank(
                target
            ):
                raise _FoundError(describe(value))
            converted, loss = cast_checked(value, target, rounding=False)
            if loss is not None:
                mode = (
                    f" (JAX's 64-bit types are off, so this leaf is {_dtype_name(target)}: enable them with "
                    "jax.config.update('jax_enable_x64', True))"
                    if target != wanted
                    else ""
                )
                raise _FoundError(
                    f"{describe(value)}, which {_dtype_name(target)} cannot hold exactly{mode}: {loss}"
                )
            value = converted
        return restore_like(x, value)
    assert scalar is not None  # the caller passes a record or a scalar
    kind, number = scalar
    if type(x).__name__ != kind or not _is_python_scalar(x):
        raise _FoundError(f"a Python {kind}")
    if kind == "complex":
        return complex(*map(_from_json_float, number))
    return _from_json_float(number) if kind == "float" else _SCALAR_TYPES[kind](number)


def _json_float(value: Any) -> Any:
    # JSON's NaN has no sign: a negative NaN is written as the string "-nan".
    if isinstance(value, float) and math.isnan(value) and math.copysign(1.0, value) < 0:
        return "-nan"
    return value


def _from_json_float(value: Any) -> float:
    return -math.nan if value == "-nan" else float(value)


def _loadable(x: Any) -> bool:
    return (isinstance(x, _ARRAYS) and not _is_key_array(x)) or _is_python_scalar(x)


def _array(record: dict[str, Any]) -> np.ndarray | None:
    dtype = _DTYPES.get(record["dtype"])
    if dtype is None:
        return None
    return np.frombuffer(record["data"], dtype).reshape(record["shape"])


def _entry_text(key: str, records: dict[str, Any], scalars: dict[str, Any]) -> str:
    if key in scalars:
        return f"a Python {scalars[key][0]}"
    value = _array(records[key])
    return describe(value) if value is not None else f"dtype {records[key]['dtype']}"


# --------------------------------------------------------------------------- metadata


def _metadata(data: bytes) -> dict[str, str]:
    # The safetensors layout: an 8-byte little-endian header size, then the JSON header,
    # whose optional "__metadata__" entry maps strings to strings. (safetensors has
    # checked both by the time this runs.)
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size]).get("__metadata__") or {}


def _scalars(metadata: dict[str, str], path: Any, who: str) -> dict[str, list[Any]]:
    """The Python scalars saved in the metadata, checked: `{key: [type name, value]}`."""
    text = metadata.get(_SCALARS_KEY)
    if text is None:
        return {}

    def corrupt(what: str) -> ValueError:
        return ValueError(
            f"{who}: '{path}' has corrupt larix metadata: {what}. The arrays may be "
            "intact (any safetensors reader, such as safetensors.numpy.load_file, reads them), "
            "but the Python scalars cannot be restored. Was the file edited by something other "
            "than larix.io.save?"
        )

    try:
        scalars = json.loads(text)
    except ValueError as error:
        raise corrupt(f"its entry '{_SCALARS_KEY}' is not valid JSON ({error})") from None
    if not isinstance(scalars, dict):
        raise corrupt(f"its entry '{_SCALARS_KEY}' is not a JSON object")
    for key, entry in scalars.items():
        if not _valid_scalar(entry):
            raise corrupt(
                f"the entry for '{key}' in '{_SCALARS_KEY}' is {json.dumps(entry)[:80]}, not "
                '["bool"|"int"|"float"|"complex", value]'
            )
    return scalars


def _valid_scalar(entry: Any) -> bool:
    if not (isinstance(entry, list) and len(entry) == 2 and entry[0] in _SCALAR_TYPES):
        return False
    kind, value = entry
    number = (int, float)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return value == "-nan" or (isinstance(value, number) and not isinstance(value, bool))
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(v == "-nan" or (isinstance(v, number) and not isinstance(v, bool)) for v in value)
    )


# --------------------------------------------------------------------------- Frozen


def _frozen_layouts(
    absent: list[str], extra: list[str], records: dict[str, Any], like: Any
) -> tuple[list[str], set[str]]:
    """Problems for keys that differ only by a `bits` segment, and the keys they explain.

    A [`larix.Frozen`][] keeps what it wraps under its field `bits`, so the weight of a
    frozen `layers.0` is saved as `layers.0.bits.weight` (its bit pattern, as unsigned
    integers). A fine-tuned model with a frozen part, loaded into the plain model, would
    otherwise report those as missing and unexpected keys, and `strict=False` would keep
    the untrained values of `like` there without a word.
    """
    absent_set, extra_set = set(absent), set(extra)
    groups: dict[tuple[str, bool], list[tuple[str, str]]] = {}  # (where, saved frozen) -> pairs
    for saved_frozen, keys, others in ((True, extra, absent_set), (False, absent, extra_set)):
        for key in keys:
            parts = key.split(".")
            for i, part in enumerate(parts):
                plain = ".".join(parts[:i] + parts[i + 1 :])
                if part == "bits" and plain in others:
                    pair = (key, plain) if saved_frozen else (plain, key)  # (file key, like key)
                    groups.setdefault((".".join(parts[:i]), saved_frozen), []).append(pair)
                    break
    problems, paired = [], set()
    for (where, saved_frozen), pairs in sorted(groups.items()):
        pairs.sort()
        if saved_frozen and not all(_is_unsigned(records.get(file_key)) for file_key, _ in pairs):
            continue  # not bit patterns: a field that happens to be called `bits`
        paired.update(k for pair in pairs for k in pair)
        part = f"`{where}`" if where else "the whole tree"
        expression = _python_expression(like, pairs[0][1], where)
        file_keys = ", ".join(repr(file_key) for file_key, _ in pairs)
        like_keys = ", ".join(repr(like_key) for _, like_key in pairs)
        if saved_frozen:
            wrap = (
                "`like = larix.Frozen(like)`"
                if not where
                else f"`like = larix.tree_at(lambda m: {expression}, like, replace_fn=larix.Frozen)`"
            )
            unwrap = (
                "`model = model.value`"
                if not where
                else f"`model = larix.tree_at(lambda m: {expression}, model, replace_fn=lambda f: f.value)`"
            )
            problems.append(
                f"the file holds {file_keys} where `like` has {like_keys}: the checkpoint was saved "
                f"from a model in which {part} was a larix.Frozen (which stores the bit patterns of "
                f"its arrays under `bits`). Load it into a `like` frozen the same way, {wrap}; to "
                f"unfreeze the loaded model, {unwrap}. (strict=False would keep the values of `like` "
                "there, so it does not load this file.)"
            )
        else:
            problems.append(
                f"`like` has {like_keys} where the file holds {file_keys}: {part} of `like` is a "
                "larix.Frozen, but the checkpoint was saved from a model in which it was not frozen. "
                "Load into `like` before freezing it, then freeze the loaded model, "
                + (
                    "`model = larix.Frozen(model)`."
                    if not where
                    else f"`model = larix.tree_at(lambda m: {expression}, model, replace_fn=larix.Frozen)`."
                )
            )
    return problems, paired


def _is_unsigned(record: dict[str, Any] | None) -> bool:
    return record is not None and record["dtype"] in ("U8", "U16", "U32", "U64")


def _python_expression(like: Any, like_key: str, where: str) -> str:
    """`m.layers[0]`: how to reach `where` (a dotted prefix of `like_key`) in Python."""
    leaves = jtu.tree_flatten_with_path(like)[0]
    _, everything = split(like)
    depth = where.count(".") + 1 if where else 0
    # split's dicts list the leaves in flattening order, one key segment per key-path entry.
    if len(leaves) == len(everything):
        for key, (path, _) in zip(everything, leaves):
            if key == like_key and len(path) >= depth:
                return python_path(path[:depth], "m")
    return "m." + where  # a guess, good for attributes
