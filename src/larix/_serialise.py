"""Equinox-compatible serialisation: a tree's leaves written one after another as `.npy`.

File format (Equinox's, so that files move freely between the two libraries): each saved
leaf, in flattening order, is one `.npy` record as `numpy.save` writes it. Python
`bool`/`int`/`float`/`complex` leaves become 0-d arrays. There are no names and no
structure, so reading needs a `like` tree shaped as the saved one, and each record is
checked against the `like` leaf it fills. For self-describing checkpoints keyed by path,
see `larix.io`.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from ._filters import _ARRAY_TYPES as _ARRAYS
from ._filters import _SCALAR_TYPES as _SCALARS
from ._filters import Filter
from ._paths import PrefixMismatchError, broadcast_prefix, python_path
from ._pformat import _dtype_name

__all__ = [
    "default_deserialise_filter_spec",
    "default_serialise_filter_spec",
    "tree_deserialise_leaves",
    "tree_serialise_leaves",
]

_NPY_MAGIC = b"\x93NUMPY"


class _UnsavableLeafError(TypeError):
    """A default spec met a leaf it cannot write; the tree function adds the path."""


class _LeafMismatchError(ValueError):
    """The file's next record does not fit the `like` leaf; the tree function adds the path."""

    def __init__(self, expected: str, found: str):
        super().__init__(f"the file's next array is {found}, but the leaf it should fill is {expected}.")
        self.expected, self.found = expected, found


class _FileEndedError(ValueError):
    def __init__(self) -> None:
        super().__init__("the file has no more arrays.")


# --------------------------------------------------------------------------- leaves


def _is_prng_key(x: Any) -> bool:
    return isinstance(x, (jax.Array, jax.ShapeDtypeStruct)) and jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key
    )


def default_serialise_filter_spec(f: BinaryIO, x: Any) -> None:
    """Write one leaf to `f` if it is an array or a Python `bool`/`int`/`float`/`complex`.

    Arrays (JAX or NumPy) and Python scalars are written as one `.npy` record each, as
    `numpy.save` writes them; every other leaf is skipped. Wrap it to customise what is
    saved (see the example).

    **Arguments:**

    - `f`: a binary file object open for writing.
    - `x`: the leaf.

    **Returns:** nothing.

    **Raises:** `TypeError` for a leaf that cannot be stored as plain numbers: a PRNG key
    array, a NumPy array of Python objects, or an `int` too large for 64 bits. (larix never
    writes pickles: loading one can run arbitrary code.)

    !!! example
        Save every leaf except JAX arrays:

        ```python
        >>> import jax, larix
        >>> def skip_jax_arrays(f, x):
        ...     if not isinstance(x, jax.Array):
        ...         larix.default_serialise_filter_spec(f, x)

        ```
        and pass `filter_spec=skip_jax_arrays` to [`larix.tree_serialise_leaves`][].
    """
    if isinstance(x, _ARRAYS):
        if _is_prng_key(x):
            raise _UnsavableLeafError(
                "a PRNG key array, which has no fixed bit layout. Save `jax.random.key_data(key)` "
                "instead and rebuild the key with `jax.random.wrap_key_data`, or skip it with a "
                "filter_spec"
            )
    elif not isinstance(x, _SCALARS):
        return
    value = np.asarray(x)
    if value.dtype.hasobject:
        what = (
            "an int that does not fit in 64 bits" if isinstance(x, int) else "a NumPy array of Python objects"
        )
        raise _UnsavableLeafError(
            f"{what}, which could only be written as a pickle (larix never writes pickles: "
            "loading one can run arbitrary code). Convert it to a numeric array, or skip it "
            "with a filter_spec"
        )
    np.save(f, value, allow_pickle=False)


def default_deserialise_filter_spec(f: BinaryIO, x: Any) -> Any:
    """Read the next leaf from `f` if `x` is an array or a Python `bool`/`int`/`float`/`complex`.

    The inverse of [`larix.default_serialise_filter_spec`][]: for such a leaf of `like`, the
    next `.npy` record is read, checked and returned as the same kind of object (a JAX array,
    a NumPy array or scalar, or a Python scalar). A `jax.ShapeDtypeStruct` counts as an array
    and is replaced by a JAX array. Every other leaf is returned unchanged, reading nothing.

    An array record must have the leaf's shape and dtype (for a JAX leaf, a record whose
    dtype JAX would turn into the leaf's, such as `float64` with x64 off, is accepted, as in
    Equinox); a scalar record must be 0-d and convert to the Python type without changing
    kind (an `int` record fills a `float` leaf, not the reverse).

    **Arguments:**

    - `f`: a binary file object open for reading.
    - `x`: the leaf of `like`.

    **Returns:** the loaded leaf, or `x` itself.

    **Raises:** `ValueError` if the record does not fit `x` or the file has no more records
    ([`larix.tree_deserialise_leaves`][] collects these and names every leaf concerned).

    !!! example
        Keep the JAX arrays of `like` and load the rest:

        ```python
        >>> import jax, larix
        >>> def keep_jax_arrays(f, x):
        ...     if isinstance(x, jax.Array):
        ...         return x
        ...     return larix.default_deserialise_filter_spec(f, x)

        ```
        (The file must have been saved without them, as in the example of
        [`larix.default_serialise_filter_spec`][].)
    """
    if isinstance(x, (*_ARRAYS, jax.ShapeDtypeStruct)):
        if _is_prng_key(x):
            raise _UnsavableLeafError(
                "a PRNG key array, which cannot be stored. Keep it from `like` with a filter_spec "
                "(see larix.default_deserialise_filter_spec), and save `jax.random.key_data(key)` "
                "if you need it"
            )
        record = read_npy_record(f)
        expected = np.dtype(x.dtype)
        if tuple(record.shape) != tuple(x.shape):
            raise _LeafMismatchError(describe(x), describe(record))
        return restore_like(
            x, _with_dtype(record, expected, jax_leaf=not isinstance(x, (np.ndarray, np.generic)))
        )
    if isinstance(x, _SCALARS):
        record = read_npy_record(f)
        if record.shape != () or not np.can_cast(record.dtype, np.dtype(type(x)), casting="same_kind"):
            raise _LeafMismatchError(describe(x), describe(record))
        return type(x)(record.item())
    return x


def _with_dtype(record: np.ndarray, expected: np.dtype, *, jax_leaf: bool) -> np.ndarray:
    found = record.dtype
    if found == expected:
        return record
    # NumPy writes types it does not know by name (bfloat16, float8_*: ml_dtypes) as plain
    # bytes ("V2"), so such a record is read back by reinterpreting the bytes.
    if (
        found.type is np.void
        and found.names is None
        and expected.kind == "V"
        and expected.type is not np.void
    ):
        if found.itemsize == expected.itemsize:
            return record.view(expected)
    elif jax_leaf and found.kind != "V" and jax.dtypes.canonicalize_dtype(found) == expected:
        return record.astype(expected)
    raise _LeafMismatchError(_array_text(expected, record.shape), describe(record))


def restore_like(x: Any, value: np.ndarray) -> Any:
    """`value` (a NumPy array of `x`'s shape and dtype) as the same kind of object as `x`."""
    if isinstance(x, np.ndarray):
        return np.array(value)  # a copy: writable, and not a view of a file buffer
    if isinstance(x, np.generic):
        return value[()]
    sharding = getattr(x, "sharding", None)
    if isinstance(x, jax.Array) and not x.committed:
        sharding = None  # an uncommitted array may move to any device; so may the result
    if sharding is None:
        return jnp.asarray(value)
    return jax.device_put(value, sharding)


def describe(x: Any) -> str:
    """A leaf or record for an error message: `f32[3,2]`, `a Python float`, ..."""
    if isinstance(x, _SCALARS) and not isinstance(x, np.generic):
        return f"a Python {type(x).__name__}"
    return _array_text(np.dtype(x.dtype), x.shape)


def _array_text(dtype: np.dtype, shape: tuple[int, ...]) -> str:
    dims = ",".join(map(str, shape))
    if dtype.type is np.void and dtype.names is None:
        return f"V{dtype.itemsize}[{dims}] (unnamed {dtype.itemsize}-byte values, as NumPy writes bfloat16 and other ml_dtypes types)"
    return f"{_dtype_name(dtype)}[{dims}]"


# --------------------------------------------------------------------------- .npy records


def read_npy_record(f: BinaryIO) -> np.ndarray:
    """Read one `.npy` record (as `numpy.save` writes it) from the current position of `f`.

    Reads exactly the record and nothing after it, so it works on any stream, and tells the
    end of the file (`_FileEndedError`) from a truncated or foreign one (`ValueError`).
    """
    magic = f.read(len(_NPY_MAGIC) + 2)
    if not magic:
        raise _FileEndedError
    if len(magic) < len(_NPY_MAGIC) + 2 or not magic.startswith(_NPY_MAGIC):
        raise ValueError(
            "the file holds bytes that are not a .npy array here: was it written by tree_serialise_leaves?"
        )
    version = (magic[-2], magic[-1])
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(
            f"the file holds a .npy array of format version {version}, which larix does not read."
        )
    if dtype.hasobject:
        raise ValueError(
            "the file holds a pickled array of Python objects, which larix does not load: unpickling can run arbitrary code."
        )
    size = math.prod(shape) * dtype.itemsize
    data = f.read(size)
    if len(data) < size:
        raise ValueError(
            "the file ends in the middle of an array: it is truncated (was the save interrupted?)."
        )
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran_order else "C")


# --------------------------------------------------------------------------- whole trees


def _per_leaf_specs(filter_spec: Any, tree: Any, is_leaf: Any, function: str, root: str) -> list[Any]:
    try:
        per_leaf = broadcast_prefix(filter_spec, tree, tree_is_leaf=is_leaf)
    except PrefixMismatchError as error:
        raise ValueError(
            f"larix.{function}: `filter_spec` must be a function `(file, leaf)` or a pytree prefix "
            f"of `{root}` whose leaves are such functions, but it differs from `{root}` at "
            f"{python_path(error.path, root)}: {error.why}."
        ) from None
    for path, spec in per_leaf:
        if isinstance(spec, (bool, Filter)) or not callable(spec):
            raise TypeError(
                f"larix.{function}: the filter_spec at {python_path(path, 'filter_spec')} is {spec!r}, "
                "but serialisation filter specs are functions `(file, leaf)` that write or read the "
                "leaf, not predicates. To save only the leaves a predicate selects, write "
                "`lambda f, x: larix.default_serialise_filter_spec(f, x) if predicate(x) else None`."
            )
    return [spec for _, spec in per_leaf]


def _eqx_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return path if path.suffix else path.with_suffix(".eqx")  # as Equinox: add .eqx if no suffix


def _is_path(path_or_file: Any) -> bool:
    return isinstance(path_or_file, (str, os.PathLike))


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Create or replace `path` all at once: never a half-written file, even on a crash.

    `write(temporary_path)` writes the content to a new file next to `path`; it is flushed
    to disk and renamed over `path` (`os.replace` is atomic on POSIX and Windows). On any
    exception the temporary file is removed and an existing `path` is left untouched.
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    temporary.open("xb").close()  # reserve the name; the file gets the usual permissions
    try:
        write(temporary)
        with open(temporary, "r+b") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    # Make the rename itself durable. Best effort: the new file is complete and in place
    # already, and some file systems refuse to sync a directory.
    if os.name == "posix":
        with contextlib.suppress(OSError):
            directory = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)


def tree_serialise_leaves(
    path_or_file: str | os.PathLike[str] | BinaryIO,
    pytree: Any,
    filter_spec: Any = default_serialise_filter_spec,
    is_leaf: Callable[[Any], bool] | None = None,
) -> None:
    """Save the leaves of a pytree to a file, in Equinox's format.

    Each leaf that `filter_spec` saves (by default: every JAX or NumPy array and Python
    `bool`/`int`/`float`/`complex`) is written as a `.npy` record, one after another in
    flattening order. Files are interchangeable with `equinox.tree_serialise_leaves`.
    Saving to a path is atomic: the file is written under a temporary name and renamed
    into place, so an interrupted save never leaves a half-written file.

    **Arguments:**

    - `path_or_file`: a `str` or `pathlib.Path` (`.eqx` is appended if it has no suffix),
      or a binary file object open for writing.
    - `pytree`: the tree whose leaves are saved.
    - `filter_spec`: a function `(file, leaf) -> None` that writes the leaf or does
      nothing, or a pytree prefix of `pytree` whose leaves are such functions, each applying
      to its subtree. Default: [`larix.default_serialise_filter_spec`][].
    - `is_leaf`: as in `jax.tree_util.tree_flatten`.

    **Returns:** nothing.

    **Raises:** `TypeError` naming every leaf that cannot be stored (a PRNG key, an array
    of Python objects); `ValueError` if `filter_spec` is not a prefix of `pytree`.

    !!! example
        ```python
        >>> import pathlib, tempfile, jax.numpy as jnp, larix
        >>> directory = tempfile.TemporaryDirectory()
        >>> path = pathlib.Path(directory.name) / "model.eqx"
        >>> larix.tree_serialise_leaves(path, {"w": jnp.ones(2), "n": 3, "act": "relu"})
        >>> like = {"w": jnp.zeros(2), "n": 0, "act": "relu"}
        >>> larix.tree_deserialise_leaves(path, like)
        {'act': 'relu', 'n': 3, 'w': Array([1., 1.], dtype=float32)}
        >>> directory.cleanup()

        ```
    """
    leaves = jtu.tree_flatten_with_path(pytree, is_leaf)[0]
    specs = _per_leaf_specs(filter_spec, pytree, is_leaf, "tree_serialise_leaves", "pytree")

    def write(f: BinaryIO) -> None:
        unsavable = []
        for (path, leaf), spec in zip(leaves, specs):
            try:
                spec(f, leaf)
            except _UnsavableLeafError as error:
                unsavable.append(f"  - {python_path(path, 'pytree')}: {error}")
            except Exception as error:
                error.add_note(f"(raised by filter_spec on the leaf at {python_path(path, 'pytree')})")
                raise
        if unsavable:
            raise TypeError("larix.tree_serialise_leaves: cannot save these leaves:\n" + "\n".join(unsavable))

    if _is_path(path_or_file):

        def write_path(temporary: Path) -> None:
            with open(temporary, "wb") as f:
                write(f)

        atomic_write(_eqx_path(path_or_file), write_path)  # type: ignore[arg-type]
    else:
        write(path_or_file)  # type: ignore[arg-type]


def tree_deserialise_leaves(
    path_or_file: str | os.PathLike[str] | BinaryIO,
    like: Any,
    filter_spec: Any = default_deserialise_filter_spec,
    is_leaf: Callable[[Any], bool] | None = None,
) -> Any:
    """Load the leaves of a pytree saved by [`larix.tree_serialise_leaves`][] (or Equinox's).

    The file stores leaves without names, so `like` supplies the structure: a tree like the
    one that was saved. Each leaf that `filter_spec` loads (by default: arrays, including
    `jax.ShapeDtypeStruct` placeholders, and Python `bool`/`int`/`float`/`complex`) is
    replaced by the next record of the file; the other leaves are kept from `like`.

    Every record is checked against the leaf it fills, and all problems are reported at
    once: each leaf whose record has another shape or dtype, each leaf left without a
    record, and (when reading from a path) records left over after the last leaf.

    **Arguments:**

    - `path_or_file`: a `str` or `pathlib.Path` (`.eqx` is appended if it has no suffix),
      or a binary file object open for reading. A file object is read from its current
      position and left just after the last record read, so several trees can be stored
      one after another in one file.
    - `like`: a tree with the structure, shapes and dtypes of the saved tree; its leaves
      may be `jax.ShapeDtypeStruct`s (see [`larix.filter_eval_shape`][]).
    - `filter_spec`: a function `(file, leaf) -> leaf` that reads and returns the new leaf
      or returns the old one, or a pytree prefix of `like` whose leaves are such functions.
      Default: [`larix.default_deserialise_filter_spec`][].
    - `is_leaf`: as in `jax.tree_util.tree_flatten`.

    **Returns:** `like` with the loaded leaves in place.

    **Raises:** `ValueError` listing every leaf (as `like.layers[0].weight`) that the file
    does not match, with what was expected and what was found.

    !!! example
        Loading into a model of the wrong size names each leaf that does not fit:

        ```python
        >>> import pathlib, tempfile, jax, larix
        >>> directory = tempfile.TemporaryDirectory()
        >>> path = pathlib.Path(directory.name) / "mlp.eqx"
        >>> mlp = larix.nn.MLP(2, 1, width_size=8, depth=1, key=jax.random.key(0))
        >>> larix.tree_serialise_leaves(path, mlp)
        >>> wider = larix.nn.MLP(2, 1, width_size=16, depth=1, key=jax.random.key(0))
        >>> larix.tree_deserialise_leaves(path, wider)
        Traceback (most recent call last):
        ValueError: larix.tree_deserialise_leaves: ... does not match `like`:
          - like.layers[0].weight: expected f32[16,2], the file has f32[8,2]
          - like.layers[0].bias: expected f32[16], the file has f32[8]
          - like.layers[1].weight: expected f32[1,16], the file has f32[1,8]
        ...
        >>> directory.cleanup()

        ```
    """
    flat, treedef = jtu.tree_flatten_with_path(like, is_leaf)
    specs = _per_leaf_specs(filter_spec, like, is_leaf, "tree_deserialise_leaves", "like")
    if _is_path(path_or_file):
        path = _eqx_path(path_or_file)  # type: ignore[arg-type]
        with open(path, "rb") as f:
            leaves, problems = _read_leaves(f, flat, specs)
            problems += _leftover(f)
        name = f"'{path}'"
    else:
        leaves, problems = _read_leaves(path_or_file, flat, specs)  # type: ignore[arg-type]
        name = "the file"
    if problems:
        raise ValueError(
            f"larix.tree_deserialise_leaves: {name} does not match `like`:\n"
            + "\n".join(f"  - {p}" for p in problems)
            + "\nThe file stores the leaves one after another without their names, so `like` must "
            "have the structure, shapes and dtypes of the tree that was saved: build it with the "
            "same hyperparameters and dtypes (larix.filter_eval_shape builds one without "
            "allocating memory). To load part of a model, load the whole and move the part "
            "over with larix.tree_at."
        )
    return treedef.unflatten(leaves)


def _read_leaves(f: BinaryIO, flat: list[tuple[Any, Any]], specs: list[Any]) -> tuple[list[Any], list[str]]:
    leaves, problems = [], []
    for (path, leaf), spec in zip(flat, specs):
        where = python_path(path, "like")
        try:
            leaves.append(spec(f, leaf))
            continue
        except _LeafMismatchError as error:
            # The mismatched record was read whole, so the next leaf still lines up with the
            # next record: keep going, and report every leaf that does not fit.
            problems.append(f"{where}: expected {error.expected}, the file has {error.found}")
        except _FileEndedError:
            problems.append(f"{where}: expected {describe(leaf)}, but the file has no more arrays")
        except _UnsavableLeafError as error:
            raise TypeError(
                f"larix.tree_deserialise_leaves: cannot load the leaf at {where}: {error}."
            ) from None
        except Exception as error:
            error.add_note(f"(raised while loading the leaf at {where})")
            raise
        leaves.append(leaf)
    return leaves, problems


def _leftover(f: BinaryIO) -> list[str]:
    """Describe what follows the last leaf read; only for paths, whose whole file is ours."""
    found = []
    while True:
        try:
            found.append(describe(read_npy_record(f)))
        except _FileEndedError:
            break
        except ValueError:
            found.append("bytes that are not a .npy array")
            break
    if not found:
        return []
    listed = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
    return [f"after the last leaf of `like`, the file has {len(found)} more array(s): {listed}"]
