"""State dicts: a model's arrays as a flat `{dotted path: array}` dict, and back, with renaming.

The keys are those of [`larix.split`][] (`"layers.0.weight"`), the names PyTorch users
know from `model.state_dict()`. Loading checks everything before changing anything: ONE
error lists every missing key, unexpected key and shape or dtype mismatch, each by name.

The matching engine here is shared with the converters of `larix.interop`: there, one
foreign entry may become a larix array of another layout (a transposed kernel) or several
entries one array (PyTorch's `bias_ih` and `bias_hh`). Each such rule is a `Conversion`;
a plain state dict is the case where every rule is the identity.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from ._filters import is_array
from ._flat import merge, split
from ._serialise import PartialLoadWarning, describe, restore_like

__all__ = [
    "Conversion",
    "PlanRow",
    "SkippedKeysWarning",
    "StateDictPlan",
    "load_state_dict",
    "plan_state_dict",
    "state_dict",
]

Rename = Mapping[str, "str | None"] | Callable[[str], "str | None"] | Sequence[tuple[Any, str]] | None


class SkippedKeysWarning(PartialLoadWarning):
    """A load with `strict=False` left entries out; the message names each one. A kind of
    `larix.io.PartialLoadWarning`, so that one filter silences every partial load."""


class Conversion(NamedTuple):
    """How the foreign entries `foreign` become the larix leaves `larix`, and back.

    `to_foreign(*larix arrays)` and `from_foreign(*foreign arrays)` work on NumPy arrays
    and return tuples; both `None` means the identity (one key each side, same layout).
    `prepare`, if given, is applied to each foreign array before it is checked (to accept
    equivalent shapes, such as Haiku's `(1, 1, 1, C)` batch norm parameters for `(C,)`).
    """

    foreign: tuple[str, ...]
    larix: tuple[str, ...]
    to_foreign: Callable[..., tuple[Any, ...]] | None = None
    from_foreign: Callable[..., tuple[Any, ...]] | None = None
    prepare: Callable[[Any], Any] | None = None


class PlanRow(NamedTuple):
    """One entry of a `StateDictPlan`: which foreign keys go to which larix keys.

    `foreign` and `larix` are tuples of keys (`larix` is empty for an unexpected entry;
    either has several keys where a converter splits or joins arrays), `foreign_shapes`
    and `larix_shapes` describe them (`"f32[8,2]"`; for a missing entry, the shape it
    should have), and `status` is one of `"ok"`, `"mismatch"`, `"missing"`,
    `"unexpected"` or `"dropped"` (renamed to `None`).
    """

    foreign: tuple[str, ...]
    larix: tuple[str, ...]
    foreign_shapes: tuple[str, ...]
    larix_shapes: tuple[str, ...]
    status: str


class StateDictPlan:
    """What loading a state dict would do, before anything is loaded.

    Shown (in the REPL, or by `print`) as a table with one line per key, followed by the
    problems a strict load would report.

    **Attributes:**

    - `rows`: one `PlanRow` per entry, in the model's order, then the unexpected and
      dropped entries.
    - `problems`: the messages a strict load would raise with; `ok` is `not problems`.
    - `missing`, `unexpected`, `mismatched`: the foreign keys with that status (for
      `missing`, the keys that the state dict should have had).
    """

    def __init__(self, rows: Sequence[PlanRow], problems: Sequence[str]):
        self.rows = tuple(rows)
        self.problems = tuple(problems)
        self.ok = not problems

    def _keys(self, status: str) -> list[str]:
        return [key for row in self.rows if row.status == status for key in row.foreign]

    @property
    def missing(self) -> list[str]:
        return self._keys("missing")

    @property
    def unexpected(self) -> list[str]:
        return self._keys("unexpected")

    @property
    def mismatched(self) -> list[str]:
        return self._keys("mismatch")

    def __repr__(self) -> str:
        header = ("foreign key", "foreign shape", "larix key", "larix shape", "status")
        lines: list[tuple[str, ...]] = []
        for row in self.rows:
            for i in range(max(len(row.foreign), len(row.larix), 1)):
                lines.append(
                    (
                        row.foreign[i] if i < len(row.foreign) else ("-" if i == 0 else ""),
                        row.foreign_shapes[i] if i < len(row.foreign_shapes) else "",
                        row.larix[i] if i < len(row.larix) else ("-" if i == 0 else ""),
                        row.larix_shapes[i] if i < len(row.larix_shapes) else "",
                        row.status if i == 0 else "",
                    )
                )
        widths = [max(len(line[c]) for line in [header, *lines]) for c in range(len(header))]
        text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [header, *lines]]
        if self.problems:
            text.append(f"{len(self.problems)} problem(s) a strict load would report:")
            text.extend(f"  - {p}" for p in self.problems)
        return "\n".join(text)

    __str__ = __repr__


def _as_array(value: Any) -> Any:
    # A PyTorch tensor (duck-typed, so that torch is never imported): a NumPy array.
    if not isinstance(value, (np.ndarray, jax.Array)) and hasattr(value, "detach") and hasattr(value, "numpy"):
        return value.detach().cpu().numpy()
    return value


def _describe(value: Any) -> str:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return describe(value)
    return f"a {type(value).__name__}"


def renamer(rename: Rename) -> Callable[[str], str | None]:
    """`rename` (a mapping, a function or `(pattern, replacement)` rules) as a function."""
    if rename is None:
        return lambda key: key
    if isinstance(rename, Mapping):
        return lambda key: rename.get(key, key)
    if callable(rename):
        return rename
    if isinstance(rename, Sequence) and not isinstance(rename, str):
        rules = []
        for rule in rename:
            if not (isinstance(rule, tuple) and len(rule) == 2 and isinstance(rule[1], str)):
                raise TypeError(
                    f"rename: each rule must be a (pattern, replacement) pair of strings, got {rule!r}. "
                    'Example: rename=[(r"^encoder\\.layer\\.", "encoder.layers.")].'
                )
            rules.append((re.compile(rule[0]), rule[1]))

        def apply_rules(key: str) -> str:
            for pattern, replacement in rules:
                key = pattern.sub(replacement, key)
            return key

        return apply_rules
    raise TypeError(
        f"rename must be a mapping, a function or a list of (pattern, replacement) pairs, got {type(rename).__name__}."
    )


class _Match(NamedTuple):
    rows: list[PlanRow]
    problems: list[str]  # errors whatever `strict` says: shapes, dtypes, collisions
    missing: list[str]  # expected entries the foreign dict lacks (errors if strict)
    unexpected: list[str]  # foreign entries nothing uses (errors if strict)
    required: list[str]  # missing entries that are errors even if not strict (placeholders)
    loads: list[tuple[Conversion, list[Any]]]


def _foreign_specs(conversion: Conversion, leaves: Mapping[str, Any]) -> list[Any]:
    """The shape and dtype that each foreign entry of `conversion` must have."""
    larix = [leaves[k] for k in conversion.larix]
    if conversion.to_foreign is None:
        return larix
    # Zero-size views (broadcast from one element): layouts are computed without memory.
    zeros = [np.broadcast_to(np.zeros((), np.dtype(x.dtype)), x.shape) for x in larix]
    return list(conversion.to_foreign(*zeros))


def _match(leaves: Mapping[str, Any], conversions: Sequence[Conversion], foreign: Mapping[str, Any], rename: Rename) -> _Match:
    """Pair the entries of `foreign` with `conversions` on the larix `leaves`; check shapes."""
    if not isinstance(foreign, Mapping):
        raise TypeError(f"A state dict must be a mapping from names to arrays, got {type(foreign).__name__}.")
    rename_key = renamer(rename)
    found: dict[str, tuple[str, Any]] = {}  # renamed key -> (original key, value)
    rows: list[PlanRow] = []
    dropped: list[PlanRow] = []
    problems: list[str] = []
    for key, value in foreign.items():
        new = rename_key(key)
        if new is None:
            dropped.append(PlanRow((key,), (), (_describe(_as_array(value)),), (), "dropped"))
            continue
        if not isinstance(new, str):
            raise TypeError(f"rename turned {key!r} into {new!r}; it must return a str (or None to drop the entry).")
        if new in found:
            problems.append(f"'{found[new][0]}' and '{key}' both rename to '{new}'")
        found[new] = (key, _as_array(value))

    def name(key: str) -> str:
        original = found[key][0]
        return f"'{original}'" if original == key else f"'{original}' (renamed '{key}')"

    missing: list[str] = []
    required: list[str] = []
    loads: list[tuple[Conversion, list[Any]]] = []
    used: set[str] = set()
    for conversion in conversions:
        specs = _foreign_specs(conversion, leaves)
        larix_shapes = tuple(describe(leaves[k]) for k in conversion.larix)
        present = [k for k in conversion.foreign if k in found]
        used.update(present)
        if len(present) < len(conversion.foreign):
            absent = [(k, s) for k, s in zip(conversion.foreign, specs) if k not in found]
            text = ", ".join(f"'{key}' ({describe(spec)})" for key, spec in absent)
            if conversion.larix != conversion.foreign:
                text += f" for larix {', '.join(map(repr, conversion.larix))}"
            missing.append(text)
            if any(isinstance(leaves[k], jax.ShapeDtypeStruct) for k in conversion.larix):
                required.append(text)
            shapes = tuple(_describe(found[k][1]) if k in found else describe(s) for k, s in zip(conversion.foreign, specs))
            originals = tuple(found[k][0] if k in found else k for k in conversion.foreign)
            rows.append(PlanRow(originals, conversion.larix, shapes, larix_shapes, "missing"))
            continue
        values = []
        bad = False
        for key, spec in zip(conversion.foreign, specs):
            value = found[key][1]
            if conversion.prepare is not None and hasattr(value, "shape"):
                value = conversion.prepare(value)
            values.append(value)
            if not (hasattr(value, "shape") and hasattr(value, "dtype")):
                problems.append(f"{name(key)}: expected {describe(spec)}, found {_describe(value)}")
                bad = True
            elif tuple(value.shape) != tuple(spec.shape) or np.dtype(value.dtype) != np.dtype(spec.dtype):
                problems.append(f"{name(key)}: expected {describe(spec)}, found {describe(value)}")
                bad = True
        originals = tuple(found[k][0] for k in conversion.foreign)
        shapes = tuple(_describe(found[k][1]) for k in conversion.foreign)
        rows.append(PlanRow(originals, conversion.larix, shapes, larix_shapes, "mismatch" if bad else "ok"))
        if not bad:
            loads.append((conversion, values))
    unexpected = []
    for key in found:
        if key not in used:
            original, value = found[key]
            unexpected.append(f"{name(key)} ({_describe(value)})")
            rows.append(PlanRow((original,), (), (_describe(value),), (), "unexpected"))
    return _Match(rows + dropped, problems, missing, unexpected, required, loads)


def plan(
    leaves: Mapping[str, Any], conversions: Sequence[Conversion], foreign: Mapping[str, Any], rename: Rename
) -> StateDictPlan:
    """The `StateDictPlan` of loading `foreign` (shared by the converters)."""
    match = _match(leaves, conversions, foreign, rename)
    problems = match.problems + [f"missing: {m}" for m in match.missing] + [f"unexpected: {u}" for u in match.unexpected]
    return StateDictPlan(match.rows, problems)


def load(
    leaves: Mapping[str, Any],
    conversions: Sequence[Conversion],
    foreign: Mapping[str, Any],
    *,
    strict: bool,
    rename: Rename,
    who: str,
    planner: str,
) -> dict[str, Any]:
    """The new values of the larix `leaves` from `foreign`, after checking everything.

    **Returns:** `{larix key: new leaf}` for the leaves that were loaded.

    **Raises:** `ValueError` listing every problem; warns `SkippedKeysWarning` if not strict
    and entries were left out.
    """
    match = _match(leaves, conversions, foreign, rename)
    problems = list(match.problems)
    missing = match.missing if strict else match.required
    if missing:
        problems.append("missing from the state dict: " + ", ".join(missing))
    if match.unexpected and strict:
        problems.append("unexpected in the state dict: " + ", ".join(match.unexpected))
    if problems:
        raise ValueError(
            f"{who}: the state dict does not match the model:\n"
            + "\n".join(f"  - {p}" for p in problems)
            + f"\nSee every entry, its larix key and its shape with {planner}. Map names with "
            "`rename=` (a dict, a function, or (regex, replacement) rules); pass strict=False to "
            "load only the entries that match (shapes and dtypes must match either way)."
        )
    skipped = [f"missing {m}" for m in match.missing] + [f"unexpected {u}" for u in match.unexpected]
    if skipped:
        warnings.warn(
            f"{who} (strict=False) left out {len(skipped)} entries: " + "; ".join(skipped) + ".",
            SkippedKeysWarning,
            stacklevel=3,
        )
    new: dict[str, Any] = {}
    for conversion, values in match.loads:
        if conversion.from_foreign is None:
            converted = tuple(values)
        else:
            converted = conversion.from_foreign(*(np.asarray(v) for v in values))
        for key, value in zip(conversion.larix, converted):
            like = leaves[key]
            value = value if conversion.from_foreign is None else np.asarray(value, np.dtype(like.dtype))
            if tuple(np.shape(value)) != tuple(like.shape):  # pragma: no cover - a converter's bug
                raise RuntimeError(f"{who}: converting gave {key!r} the shape {np.shape(value)}, not {like.shape}.")
            new[key] = restore_like(like, value)
    return new


def _is_shape_struct(x: Any) -> bool:
    return isinstance(x, jax.ShapeDtypeStruct)


def state_dict(tree: Any, filter_spec: Any = is_array) -> dict[str, Any]:
    """The arrays of `tree` as a flat dict, each under its dotted path (`"layers.0.weight"`).

    The same dict as the selected part of [`larix.split`][]: PyTorch's names for a model
    whose fields are named like the PyTorch one's. The arrays are the tree's own (no copy).

    **Arguments:**

    - `tree`: any pytree, for example a model, or `{"model": model, "state": state}`.
    - `filter_spec`: which leaves to include, as in [`larix.split`][] (default: arrays).

    **Returns:** a `dict` from dotted paths to leaves, in the tree's order.

    !!! example
        ```python
        >>> import jax, larix, larix.io
        >>> mlp = larix.nn.MLP(2, 1, width_size=8, depth=1, key=jax.random.key(0))
        >>> {key: value.shape for key, value in larix.io.state_dict(mlp).items()}
        {'layers.0.weight': (8, 2), 'layers.0.bias': (8,), 'layers.1.weight': (1, 8), 'layers.1.bias': (1,)}

        ```
    """
    return split(tree, filter_spec)[1]


def _leaves(tree: Any, filter_spec: Any, who: str) -> tuple[Any, dict[str, Any], dict[str, Any], dict[str, Any]]:
    skeleton, structs, selected, rest = split(tree, _is_shape_struct, filter_spec)
    refused = [f"'{k}' is a {type(x).__name__}" for k, x in selected.items() if not hasattr(x, "dtype")]
    if refused:
        raise TypeError(
            f"{who}: filter_spec selects leaves that are not arrays: {', '.join(refused)}. "
            "A state dict holds arrays only: select arrays (the default, larix.is_array)."
        )
    return skeleton, structs, selected, rest


def load_state_dict(
    tree: Any,
    state_dict: Mapping[str, Any],
    *,
    filter_spec: Any = is_array,
    strict: bool = True,
    rename: Rename = None,
) -> Any:
    """Put the arrays of a flat `{dotted path: array}` dict into `tree`.

    Nothing is loaded half-way: if the dict does not match, ONE `ValueError` lists every
    missing key, every unexpected key and every shape or dtype that differs. Each loaded
    array takes the kind and placement of the leaf it replaces. PyTorch tensors are
    accepted as well as NumPy and JAX arrays (converted with `.detach().cpu().numpy()`).

    **Arguments:**

    - `tree`: the model (any pytree) to load into; it is not modified. Leaves that are
      `jax.ShapeDtypeStruct` placeholders (from [`larix.filter_eval_shape`][]) are always
      loaded.
    - `state_dict`: a mapping from keys to arrays.
    - `filter_spec`: keyword-only; which leaves of `tree` the dict holds (default: arrays).
    - `strict`: keyword-only. `True`: the dict must hold exactly those leaves. `False`:
      entries that match no leaf are ignored and leaves without an entry keep their value;
      a `SkippedKeysWarning` names every entry left out either way (see the plan below
      for the same list as data). Shapes and dtypes must match in both cases.
    - `rename`: keyword-only; applied to each key of `state_dict` before matching: a
      mapping (keys it lacks are kept), a function `key -> key`, or a list of
      `(regex, replacement)` rules applied one after another with `re.sub`. A new key of
      `None` drops the entry.

    **Returns:** `tree` with the loaded leaves in place.

    **Raises:** `ValueError` listing every mismatch; `TypeError` for a bad `rename`.

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix, larix.io
        >>> linear = larix.nn.Linear(2, 3, key=jax.random.key(0))
        >>> weights = {"fc.weight": jnp.ones((3, 2)), "fc.bias": jnp.zeros(3)}
        >>> linear = larix.io.load_state_dict(linear, weights, rename=[(r"^fc\\.", "")])
        >>> linear.bias
        Array([0., 0., 0.], dtype=float32)

        ```
    """
    who = "larix.io.load_state_dict"
    skeleton, structs, selected, rest = _leaves(tree, filter_spec, who)
    leaves = {**structs, **selected}
    conversions = [Conversion((k,), (k,)) for k in leaves]
    new = load(
        leaves, conversions, state_dict, strict=strict, rename=rename, who=who,
        planner="larix.io.plan_state_dict(model, state_dict, rename=...)",
    )  # fmt: skip
    structs = {k: new.get(k, x) for k, x in structs.items()}
    selected = {k: new.get(k, x) for k, x in selected.items()}
    return merge(skeleton, structs, selected, rest)


def plan_state_dict(
    tree: Any, state_dict: Mapping[str, Any], *, filter_spec: Any = is_array, rename: Rename = None
) -> StateDictPlan:
    """Show what `larix.io.load_state_dict` would do, without loading:
    for each entry, its key, the larix key it lands on (after `rename`), both shapes, and
    whether it matches. A dry run for getting `rename` right.

    **Arguments:** as `load_state_dict` (there is no `strict`: the plan shows everything).

    **Returns:** a `larix.io.StateDictPlan`, shown as a table.

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix, larix.io
        >>> linear = larix.nn.Linear(2, 3, key=jax.random.key(0))
        >>> weights = {"fc.weight": jnp.ones((3, 2)), "fc.bias": jnp.zeros(4)}
        >>> larix.io.plan_state_dict(linear, weights, rename={"fc.weight": "weight", "fc.bias": "bias"})
        foreign key  foreign shape  larix key  larix shape  status
        fc.weight    f32[3,2]       weight     f32[3,2]     ok
        fc.bias      f32[4]         bias       f32[3]       mismatch
        1 problem(s) a strict load would report:
          - 'fc.bias' (renamed 'bias'): expected f32[3], found f32[4]

        ```
    """
    _, structs, selected, _ = _leaves(tree, filter_spec, "larix.io.plan_state_dict")
    leaves = {**structs, **selected}
    return plan(leaves, [Conversion((k,), (k,)) for k in leaves], state_dict, rename)
