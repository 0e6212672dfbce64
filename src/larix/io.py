"""Checkpoints: a tree's arrays in a `.safetensors` file, keyed by their dotted paths.

Each array is stored under the key that [`larix.split`][] gives it (`"layers.0.weight"`),
so a checkpoint names what it holds, loads regardless of leaf order, and is readable by
any safetensors reader (PyTorch, Flax, Rust, ...). Python scalar leaves, when saved, go in
the file's metadata. Needs the optional package safetensors: `pip install "larix[io]"`.
This module imports it only when a function is called, so `import larix` stays light.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._filters import _ARRAY_TYPES as _ARRAYS
from ._filters import is_array
from ._flat import merge, split
from ._serialise import atomic_write, describe, restore_like

__all__ = ["load", "save"]

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
            'larix.io needs the optional package safetensors. Install it with: pip install "larix[io]"'
        ) from error
    return safetensors


def _is_shape_struct(x: Any) -> bool:
    return isinstance(x, jax.ShapeDtypeStruct)


def _is_key_array(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def save(path: str | os.PathLike[str], tree: Any, *, filter_spec: Any = is_array) -> None:
    """Save the arrays of `tree` to a `.safetensors` file, each under its dotted path.

    The leaves that `filter_spec` selects are stored under the keys that [`larix.split`][]
    gives them (`"layers.0.weight"`); the others are not saved (they come back from the
    `like` tree at load). Selected Python `bool`/`int`/`float`/`complex` leaves are stored
    exactly, as JSON in the file's metadata. The metadata also records the larix version.

    The save is atomic: the file is written under a temporary name in the same directory,
    flushed to disk and renamed over `path`. If anything fails, the temporary file is
    removed and an existing checkpoint at `path` is left untouched.

    **Arguments:**

    - `path`: where to write, a `str` or `pathlib.Path` (used as given: no suffix is added).
    - `tree`: any pytree, for example a model, or `{"model": model, "state": state}`.
    - `filter_spec`: keyword-only; which leaves to save, as in [`larix.split`][]. Default
      [`larix.is_array`][]; pass [`larix.is_array_like`][] to save Python scalars too.

    **Returns:** nothing.

    **Raises:** `TypeError` naming every selected leaf that a safetensors file cannot hold
    (a string, a PRNG key, a dtype such as `complex128`); `ImportError` if safetensors is
    not installed.

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
    refused: list[str] = []
    for key, leaf in selected.items():
        if isinstance(leaf, _ARRAYS):
            if _is_key_array(leaf):
                refused.append(f"'{key}' is a PRNG key array: save `jax.random.key_data(key)` instead")
                continue
            # C order: safetensors copies the raw buffer, so a transposed view would be
            # written in the wrong order. (Not np.ascontiguousarray: it makes 0-d arrays 1-d.)
            value = np.asarray(leaf, order="C")
            if value.dtype not in _CODES:
                refused.append(
                    f"'{key}' has dtype {value.dtype.name}, which safetensors files cannot hold: cast it "
                    f"(for instance to {_nearest(value.dtype)}), or use larix.tree_serialise_leaves"
                )
                continue
            arrays[key] = value
        elif type(leaf) in _SCALAR_TYPES.values():
            scalars[key] = [
                type(leaf).__name__,
                [leaf.real, leaf.imag] if isinstance(leaf, complex) else leaf,
            ]
        else:
            refused.append(
                f"'{key}' is a {type(leaf).__name__}; only arrays and Python bool/int/float/complex can be saved"
            )
    if refused:
        raise TypeError(
            "larix.io.save: cannot save these leaves:\n"
            + "\n".join(f"  - {r}" for r in refused)
            + "\nLeave them out with filter_spec (e.g. `larix.is_array & ~larix.by_path('key')`)."
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


def load(path: str | os.PathLike[str], like: Any, *, filter_spec: Any = is_array, strict: bool = True) -> Any:
    """Load a checkpoint written by [`larix.io.save`][] into the structure of `like`.

    The leaves of `like` that `filter_spec` selects are replaced by the file's entries under
    their dotted paths; the others (activation functions, sizes, ...) are kept. Leaves of
    `like` that are `jax.ShapeDtypeStruct` placeholders (from [`larix.filter_eval_shape`][])
    are always loaded. Each loaded leaf has the kind of the leaf it replaces: a JAX array
    (placed like the `like` leaf), a NumPy array or a Python scalar.

    Nothing is loaded half-way: if the file does not match `like`, ONE error lists every
    missing key, every unexpected key and every shape or dtype that differs.

    **Arguments:**

    - `path`: the `.safetensors` file, a `str` or `pathlib.Path`.
    - `like`: a tree with the structure, shapes and dtypes of the saved one.
    - `filter_spec`: keyword-only; which leaves of `like` to load, as given to `save`.
    - `strict`: keyword-only. `True` (the default): the file must hold exactly the selected
      leaves. `False`: entries of the file that `like` does not have are ignored, and
      selected leaves that the file lacks keep their value from `like` (placeholders still
      need a value), for loading part of a model. Shapes and dtypes must match either way.

    **Returns:** `like` with the loaded leaves in place.

    **Raises:** `ValueError` listing every mismatch, or if `path` is not a safetensors file;
    `ImportError` if safetensors is not installed.

    !!! example
        ```python
        >>> import pathlib, tempfile, jax.numpy as jnp, larix, larix.io
        >>> directory = tempfile.TemporaryDirectory()
        >>> path = pathlib.Path(directory.name) / "params.safetensors"
        >>> larix.io.save(path, {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)})
        >>> larix.io.load(path, {"w": jnp.ones((3, 2)), "bias": jnp.zeros(3)})
        Traceback (most recent call last):
        ValueError: larix.io.load: ... does not match `like`:
          - 'w': expected f32[3,2], found f32[2,3]
          - missing from the file: 'bias' (f32[3])
          - unexpected in the file: 'b' (f32[3])
        ...
        >>> directory.cleanup()

        ```
    """
    safetensors = _safetensors()
    data = Path(path).read_bytes()
    try:
        records = {name: record for name, record in safetensors.deserialize(data)}
    except Exception as error:  # noqa: BLE001 - safetensors raises its own SafetensorError
        raise ValueError(f"larix.io.load: '{path}' is not a safetensors file ({error}).") from None
    scalars = json.loads(_metadata(data).get(_SCALARS_KEY, "{}"))
    skeleton, structs, selected, rest = split(like, _is_shape_struct, filter_spec)

    refused = [f"'{k}' is a {type(x).__name__}" for k, x in selected.items() if not _loadable(x)]
    if refused:
        raise TypeError(
            "larix.io.load: filter_spec selects leaves of `like` that a checkpoint cannot hold: "
            + ", ".join(refused)
            + ". Select only arrays and Python bool/int/float/complex (the default selects arrays)."
        )
    problems: list[str] = []
    missing: list[str] = []
    loaded: list[dict[str, Any]] = [{}, {}]
    for expected, out in zip((structs, selected), loaded):
        for key, x in expected.items():
            if key in records or key in scalars:
                try:
                    out[key] = _value_like(x, records.get(key), scalars.get(key))
                except _FoundError as found:
                    problems.append(f"'{key}': expected {describe(x)}, found {found}")
            elif strict or expected is structs:  # a placeholder has no value to keep
                missing.append(f"'{key}' ({describe(x)})")
            else:
                out[key] = x
    if missing:
        problems.append("missing from the file: " + ", ".join(missing))
    unexpected = sorted((set(records) | set(scalars)) - set(structs) - set(selected))
    if unexpected and strict:
        text = ", ".join(f"'{k}' ({_entry_text(k, records, scalars)})" for k in unexpected)
        unselected = [k for k in unexpected if k in rest]
        if unselected:
            text += (
                f" (`like` has {', '.join(map(repr, unselected))}, but filter_spec does not select "
                "them: pass the filter_spec that was given to save)"
            )
        problems.append("unexpected in the file: " + text)
    if problems:
        raise ValueError(_mismatch_message(path, problems))
    return merge(skeleton, *loaded, rest)


class _FoundError(Exception):
    """What the file holds instead of the expected leaf; `load` adds the key."""


def _value_like(x: Any, record: dict[str, Any] | None, scalar: list[Any] | None) -> Any:
    """The file's entry (an array `record` or a `[type name, value]` scalar) as a leaf like `x`."""
    if record is not None:
        value = _array(record)
        if value is None:
            raise _FoundError(f"an array of safetensors dtype {record['dtype']}, which larix does not read")
        if (
            type(x) in _SCALAR_TYPES.values()
            or value.shape != tuple(x.shape)
            or value.dtype != np.dtype(x.dtype)
        ):
            raise _FoundError(describe(value))
        return restore_like(x, value)
    assert scalar is not None
    kind, number = scalar
    if type(x).__name__ != kind:
        raise _FoundError(f"a Python {kind}")
    return complex(*number) if kind == "complex" else _SCALAR_TYPES[kind](number)


def _loadable(x: Any) -> bool:
    return (isinstance(x, _ARRAYS) and not _is_key_array(x)) or type(x) in _SCALAR_TYPES.values()


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


def _metadata(data: bytes) -> dict[str, str]:
    # The safetensors layout: an 8-byte little-endian header size, then the JSON header,
    # whose optional "__metadata__" entry maps strings to strings.
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size]).get("__metadata__") or {}


def _mismatch_message(path: Any, problems: list[str]) -> str:
    return (
        f"larix.io.load: '{path}' does not match `like`:\n"
        + "\n".join(f"  - {p}" for p in problems)
        + "\nBuild `like` with the same hyperparameters and dtypes as the saved tree (cast after "
        "loading if you need another dtype). To load a checkpoint that only partly matches, "
        "pass strict=False: entries the file has and `like` lacks are ignored, and leaves it "
        "lacks keep their value from `like`."
    )
