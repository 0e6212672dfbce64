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
import stat
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

    def __init__(self, expected: str, found: str, record: Any = None):
        super().__init__(f"the file's next array is {found}, but the leaf it should fill is {expected}.")
        self.expected, self.found, self.record = expected, found, record


class DeserialiseMismatchError(ValueError, RuntimeError):
    """`like` does not match the file given to `tree_deserialise_leaves`.

    A `ValueError` (a bad value of `like`), and a `RuntimeError` as Equinox raises, whose
    sentences the message repeats for each leaf ("Deserialised leaf at path (...) has
    changed shape from ... in `like` to ... on disk.", "Error at leaf with path (...)").
    """


DeserialiseMismatchError.__module__ = "larix"  # its public name, in tracebacks too


def _equinox_sentence(path: Any, leaf: Any, record: Any) -> str:
    """Equinox's wording of one mismatch; `record` is None when the file has ended."""
    if record is None:
        return f"Error at leaf with path {tuple(path)}"
    changes = []
    if tuple(np.shape(record)) != tuple(np.shape(leaf)):
        changes.append(f"shape from {tuple(np.shape(leaf))} in `like` to {tuple(np.shape(record))} on disk")
    elif hasattr(leaf, "dtype") and np.dtype(leaf.dtype) != record.dtype:
        changes.append(f"dtype from {np.dtype(leaf.dtype)} in `like` to {record.dtype} on disk")
    if not changes:
        return ""
    return f"Deserialised leaf at path {tuple(path)} has changed {' and '.join(changes)}."


class _FileEndedError(ValueError):
    def __init__(self) -> None:
        super().__init__("the file has no more arrays.")


class _CorruptRecordError(ValueError):
    """The bytes at the current position are not a readable `.npy` record."""


# --------------------------------------------------------------------------- leaves



class PartialLoadWarning(UserWarning):
    """Warned by `larix.io.load(..., strict=False)` when it did not load every leaf.

    The message lists every leaf kept from `like` because the file lacks it, and every
    entry of the file ignored because `like` lacks it; the same `larix.io.LoadReport` is
    the warning's `report` attribute (for `larix.io.load`; `larix.io.load_state_dict` warns
    the subclass `larix.io.SkippedKeysWarning`). To load part of a checkpoint on purpose, without a
    warning, select that part with `filter_spec` instead of passing `strict=False`, or
    silence this category:
    `warnings.filterwarnings("ignore", category=larix.io.PartialLoadWarning)`.
    """

    report: Any  # a larix.io.LoadReport


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
            raise _LeafMismatchError(describe(x), describe(record), record)
        return restore_like(
            x, _with_dtype(record, expected, jax_leaf=not isinstance(x, (np.ndarray, np.generic)))
        )
    if isinstance(x, _SCALARS):
        record = read_npy_record(f)
        if record.shape != () or not np.can_cast(record.dtype, np.dtype(type(x)), casting="same_kind"):
            raise _LeafMismatchError(describe(x), describe(record), record)
        return type(x)(record.item())
    return x


def _with_dtype(record: np.ndarray, expected: np.dtype, *, jax_leaf: bool) -> np.ndarray:
    found = record.dtype
    if found == expected and not jax_leaf:
        return record
    # NumPy writes types it does not know by name (bfloat16, float8_*: ml_dtypes) as plain
    # bytes ("V2"), so such a record is read back by reinterpreting the bytes.
    if found.type is np.void and found.names is None:
        if expected.kind == "V" and expected.type is not np.void and found.itemsize == expected.itemsize:
            return record.view(expected)
        raise _LeafMismatchError(_array_text(expected, record.shape), describe(record))
    # A record in the other byte order holds the same numbers: reading it in native order
    # is exact. (Equinox, through np.load, accepts such files too.)
    native = found.newbyteorder("=")
    if native == expected and not jax_leaf:
        return record.astype(native)
    if jax_leaf and jax.dtypes.canonicalize_dtype(native) == jax.dtypes.canonicalize_dtype(expected):
        # What a JAX leaf can hold: with 64-bit types off, float64 becomes float32 (as in
        # Equinox, which reads with jnp.load). Rounding is accepted, as it is by JAX itself,
        # but a value out of range (int64 2**40 into int32, float64 1e300 into float32) is not:
        # it would come back wrapped around or infinite, and nothing would say so.
        target = jax.dtypes.canonicalize_dtype(expected)
        value, loss = cast_checked(record, target, rounding=True)
        if loss is not None:
            raise _LeafMismatchError(
                _array_text(target, record.shape),
                f"{describe(record)}, which {_dtype_name(target)} cannot hold: {loss}",
            )
        return value
    raise _LeafMismatchError(_array_text(expected, record.shape), describe(record), record)


def cast_checked(value: np.ndarray, dtype: np.dtype, *, rounding: bool) -> tuple[np.ndarray, str | None]:
    """`value` cast to `dtype`, and `None`, or a description of the first element that changes.

    With `rounding=False`, every element must come back unchanged (NaN counts as NaN). With
    `rounding=True`, a float or complex element may be rounded, but must stay finite if it
    was finite; integers must still be exact. The description reads "1099511627781 would
    become 5" or "element [2, 0] = 1e+300 would become inf (and 3 more)".
    """
    if value.dtype == dtype:
        return value, None
    # The casts themselves warn about overflow; what overflowed is reported below instead.
    with np.errstate(all="ignore"):
        converted = value.astype(dtype)
        inexact = jnp.issubdtype(value.dtype, jnp.inexact) and jnp.issubdtype(dtype, jnp.inexact)
        if rounding and inexact:
            bad = np.isfinite(value) & ~np.isfinite(converted)
        else:
            back = converted.astype(value.dtype)
            bad = back != value
            if jnp.issubdtype(value.dtype, jnp.inexact):
                bad &= ~(np.isnan(back) & np.isnan(value))
    bad = np.asarray(bad)
    if not bad.any():
        return converted, None
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    where = f"element [{', '.join(map(str, index))}] = " if index else ""
    more = int(bad.sum()) - 1
    return converted, (
        f"{where}{value[index]} would become {converted[index]}" + (f" (and {more} more)" if more else "")
    )


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
    if not dtype.isnative:
        # Otherwise a big-endian float32 and a native one read the same ("f32[3]").
        order = "big" if dtype.byteorder == ">" else "little"
        return f"{_dtype_name(dtype.newbyteorder('='))}[{dims}] ({order}-endian)"
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
        raise _CorruptRecordError(
            "the file holds bytes that are not a .npy array here: was it written by tree_serialise_leaves?"
        )
    version = (magic[-2], magic[-1])
    try:
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise _CorruptRecordError(
                f"the file holds a .npy array of format version {version}, which larix does not read."
            )
    except _CorruptRecordError:
        raise
    except ValueError as error:
        raise _CorruptRecordError(
            f"the file holds a .npy header that cannot be read ({error}): it is corrupt."
        ) from None
    if dtype.hasobject:
        raise _CorruptRecordError(
            "the file holds a pickled array of Python objects, which larix does not load: unpickling can run arbitrary code."
        )
    if any(n < 0 for n in shape):
        raise _CorruptRecordError(
            f"the file holds a .npy header with the shape {shape}, which no array has: the file is corrupt."
        )
    size = math.prod(shape) * dtype.itemsize
    data = _read_up_to(f, size)
    if len(data) < size:
        raise _CorruptRecordError(
            f"the file ends in the middle of an array: its .npy header gives {_array_text(dtype, shape)} "
            f"({size} bytes), but {len(data)} bytes follow. The file is truncated (was the save "
            "interrupted?) or its header is corrupt."
        )
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran_order else "C")


_CHUNK = 64 * 2**20


def _read_up_to(f: BinaryIO, size: int) -> bytes:
    """Read `size` bytes, or all that is left if fewer.

    In chunks: a corrupt header can claim any size (2**80 bytes), and `f.read(size)` would
    try to allocate it all before finding out that the file is shorter.
    """
    if size <= _CHUNK:
        return f.read(size)
    chunks = []
    while size > 0:
        chunk = f.read(min(size, _CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


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

    Replacing a file keeps its permission bits, and a `path` that is a symbolic link has
    its target replaced, not the link: as `open(path, "wb")` (and so Equinox) would do.

    **Raises:** `FileNotFoundError` naming `path` if its directory does not exist.
    """
    # The temporary file must be in the target's directory: os.replace cannot move a file
    # to another file system, and replacing the link itself would cut it from its target.
    target = Path(os.path.realpath(path))
    if not target.parent.is_dir():
        via = f" (the target of the symbolic link '{path}')" if target != path.absolute() else ""
        raise FileNotFoundError(
            f"cannot save to '{target}'{via}: the directory '{target.parent}' does not exist. "
            f"Create it first, e.g. with `pathlib.Path({str(target.parent)!r}).mkdir(parents=True)`."
        )
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    temporary.open("xb").close()  # reserve the name; the file gets the usual permissions
    try:
        # The permissions the file ends with: those of the file it replaces, or else the
        # usual ones (0o666 less the umask) that the reserved file got. `write` may not keep
        # them: safetensors' save_file, for one, recreates the file as 0o600.
        try:
            mode = stat.S_IMODE(os.stat(target).st_mode)
        except FileNotFoundError:
            mode = stat.S_IMODE(os.stat(temporary).st_mode)
        write(temporary)
        with open(temporary, "r+b") as f:
            os.fsync(f.fileno())
        # After the fsync: a read-only mode would forbid opening the file to sync it.
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    # Make the rename (and the mode) durable. Best effort: the new file is complete and in
    # place already, and some file systems refuse to sync a directory.
    if os.name == "posix":
        with contextlib.suppress(OSError):
            directory = os.open(target.parent, os.O_RDONLY)
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

    **Raises:** `DeserialiseMismatchError` (a `ValueError`, and a `RuntimeError` as in
    Equinox) listing every leaf (as `like.layers[0].weight`) that the file does not match,
    with what was expected and what was found, and Equinox's sentence for it.

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
        larix.DeserialiseMismatchError: larix.tree_deserialise_leaves: ... does not match `like`:
          - like.layers[0].weight: expected f32[16,2], the file has f32[8,2]. Deserialised leaf at path ... has changed shape from (16, 2) in `like` to (8, 2) on disk.
          - like.layers[0].bias: expected f32[16], the file has f32[8]. ...
          - like.layers[1].weight: expected f32[1,16], the file has f32[1,8]. ...
        ...
        >>> directory.cleanup()

        ```
    """
    flat, treedef = jtu.tree_flatten_with_path(like, is_leaf)
    specs = _per_leaf_specs(filter_spec, like, is_leaf, "tree_deserialise_leaves", "like")
    if _is_path(path_or_file):
        path = _eqx_path(path_or_file)  # type: ignore[arg-type]
        with open(path, "rb") as f:
            leaves, problems = _read_leaves(f, flat, specs, f"'{path}'")
            problems += _leftover(f)
        name = f"'{path}'"
    else:
        name = "the file"
        leaves, problems = _read_leaves(path_or_file, flat, specs, name)  # type: ignore[arg-type]
    if problems:
        raise DeserialiseMismatchError(
            f"larix.tree_deserialise_leaves: {name} does not match `like`:\n"
            + "\n".join(f"  - {p}" for p in problems)
            + "\nThe file stores the leaves one after another without their names, so `like` must "
            "have the structure, shapes and dtypes of the tree that was saved: build it with the "
            "same hyperparameters and dtypes (larix.filter_eval_shape builds one without "
            "allocating memory). To load part of a model, load the whole and move the part "
            "over with larix.tree_at."
        )
    return treedef.unflatten(leaves)


def _read_leaves(
    f: BinaryIO, flat: list[tuple[Any, Any]], specs: list[Any], name: str
) -> tuple[list[Any], list[str]]:
    leaves, problems = [], []
    for (path, leaf), spec in zip(flat, specs):
        where = python_path(path, "like")
        try:
            leaves.append(spec(f, leaf))
            continue
        except _LeafMismatchError as error:
            # The mismatched record was read whole, so the next leaf still lines up with the
            # next record: keep going, and report every leaf that does not fit.
            equinox = "" if error.record is None else _equinox_sentence(path, leaf, error.record)
            problems.append(f"{where}: expected {error.expected}, the file has {error.found}. {equinox}".rstrip())
        except _FileEndedError:
            problems.append(
                f"{where}: expected {describe(leaf)}, but the file has no more arrays. {_equinox_sentence(path, leaf, None)}"
            )
        except _UnsavableLeafError as error:
            raise TypeError(
                f"larix.tree_deserialise_leaves: cannot load the leaf at {where}: {error}."
            ) from None
        except _CorruptRecordError as error:
            # Nothing after a corrupt record can be trusted to line up: stop here.
            corrupt = ValueError(
                f"larix.tree_deserialise_leaves: cannot read {name} at the leaf {where}: {error}"
            )
            corrupt.add_note(f"(raised while loading the leaf at {where})")
            raise corrupt from None
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
