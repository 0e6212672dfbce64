"""JAX primitives whose inputs and outputs are any pytrees: filter_primitive_* and create_vprim.

A JAX primitive takes and returns flat lists of arrays. `filter_primitive_bind(prim,
*args)` flattens `args`, binds the primitive on their arrays, and carries everything else
(the tree structures and the non-array leaves, of the inputs and of the outputs) in one
hashable parameter, `spec`. The `filter_primitive_*` decorators turn rules written for
pytrees into the flat rules JAX calls, rebuilding the pytrees from `spec`.

The output structure has to be known before binding: `filter_primitive_bind` finds it by
calling the primitive's abstract evaluation rule once, which must therefore be defined
with `filter_primitive_def`.

`create_vprim` builds a primitive from flat rules written for unbatched inputs, and makes
it batchable by rebinding itself under `vmap` with one more "layer" of batch axes in a
parameter: every rule is then applied under as many `jax.vmap`s as there are layers. So
the primitive survives `vmap`, and its own JVP and transpose rules still apply after it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core
import jax.numpy as jnp
import jax.tree_util as jtu
from jax.interpreters import ad

from .._filters import is_array
from .._wrappers import leaves_up_to

__all__ = [
    "filter_primitive_batching",
    "filter_primitive_bind",
    "filter_primitive_def",
    "filter_primitive_jvp",
    "filter_primitive_transpose",
    "materialise_zeros",
]


def _is_abstract(x: Any) -> bool:
    return isinstance(x, (jax.core.ShapedArray, jax.ShapeDtypeStruct)) or is_array(x)


class _Key:
    """A static leaf made hashable: by value when it can be, else by identity."""

    __slots__ = ("hash", "value")

    def __init__(self, value: Any):
        self.value = value
        try:
            self.hash = hash((type(value), value))
        except TypeError:
            self.hash = id(value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Key) or self.hash != other.hash:
            return False
        if self.value is other.value:
            return True
        try:
            return type(self.value) is type(other.value) and bool(self.value == other.value)
        except Exception:  # noqa: BLE001 - an `==` that does not give a bool means "not equal"
            return False

    def __hash__(self) -> int:
        return self.hash


@dataclasses.dataclass(frozen=True)
class _Half:
    """One side (inputs or outputs) of a call: structure, non-array leaves, array positions."""

    treedef: Any
    static: tuple[_Key | None, ...]
    dynamic: tuple[int, ...]

    @classmethod
    def of(cls, tree: Any, is_dynamic: Callable[[Any], bool]) -> tuple[_Half, list[Any]]:
        leaves, treedef = jtu.tree_flatten(tree)
        dynamic = tuple(i for i, x in enumerate(leaves) if is_dynamic(x))
        static = tuple(None if i in dynamic else _Key(x) for i, x in enumerate(leaves))
        return cls(treedef, static, dynamic), [leaves[i] for i in dynamic]

    def rebuild(self, values: Any, fill: Callable[[Any], Any] = lambda k: k.value) -> Any:
        leaves = [None if k is None else fill(k) for k in self.static]
        for i, v in zip(self.dynamic, values):
            leaves[i] = v
        return self.treedef.unflatten(leaves)

    def positions_of(self, tree: Any, what: str) -> list[Any]:
        """The leaves of `tree` (structure of this side, `None` allowed) at the array positions."""
        leaves = leaves_up_to(self.treedef, tree)
        if leaves is None:
            raise ValueError(
                f"larix.internal: a primitive rule returned {what} with structure "
                f"{jtu.tree_structure(tree)}, but it must have the structure {self.treedef} "
                "(with None for zero or not batched)."
            )
        return [leaves[i] for i in self.dynamic]


class _Slot:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: _Half | None = None


@dataclasses.dataclass(frozen=True)
class _Spec:
    """The `spec` parameter of a filtered primitive: both halves of the call."""

    inputs: _Half
    outputs: _Half | None
    # Only while `filter_primitive_bind` discovers the outputs: where the abstract rule puts them.
    slot: _Slot | None = dataclasses.field(default=None, compare=False, hash=False)


def _outputs(spec: _Spec, out: Any) -> list[Any]:
    """The array leaves of a rule's output, as the primitive returns them."""
    if spec.outputs is None:
        half, values = _Half.of(out, _is_abstract)
        if spec.slot is not None:
            spec.slot.value = half
        return values
    leaves = leaves_up_to(spec.outputs.treedef, out)
    if leaves is None:
        raise ValueError(
            f"larix.internal: a primitive rule returned an output with structure "
            f"{jtu.tree_structure(out)}, but its abstract evaluation gave {spec.outputs.treedef}."
        )
    return [leaves[i] if _is_abstract(leaves[i]) else jnp.asarray(leaves[i]) for i in spec.outputs.dynamic]


def filter_primitive_def(rule: Callable[..., Any]) -> Callable[..., Any]:
    """Make a primitive's impl or abstract-evaluation rule from one on pytrees.

    `rule(*args)` gets the arguments given to `filter_primitive_bind` (for abstract
    evaluation, with `jax.core.ShapedArray`s in place of arrays) and returns any pytree;
    its arrays (or `ShapedArray`s) are the primitive's outputs, the rest is static.
    """

    def flat_rule(*values: Any, spec: _Spec) -> list[Any]:
        return _outputs(spec, rule(*spec.inputs.rebuild(values)))

    flat_rule.__wrapped__ = rule  # type: ignore[attr-defined]
    return flat_rule


def _zero_tangent(x: Any) -> Any:
    return ad.Zero(jax.typeof(x).to_tangent_aval())


def filter_primitive_jvp(rule: Callable[..., Any]) -> Callable[..., Any]:
    """Make a primitive's JVP rule from one on pytrees.

    `rule(primals, tangents)` gets the bound arguments and their tangents, `None` for a
    zero tangent or a non-array leaf, and returns `(out, tangents_out)` with `None` for
    zero output tangents.
    """

    def flat_rule(primals: Any, tangents: Any, *, spec: _Spec) -> tuple[list[Any], list[Any]]:
        args = spec.inputs.rebuild(primals)
        t_args = spec.inputs.rebuild([None if type(t) is ad.Zero else t for t in tangents], fill=lambda _: None)
        out, t_out = rule(args, t_args)
        out_values = _outputs(spec, out)
        t_values = spec.outputs.positions_of(t_out, "tangents")  # type: ignore[union-attr]
        return out_values, [_zero_tangent(p) if t is None else t for p, t in zip(out_values, t_values)]

    return flat_rule


_NOT_GIVEN = object()


def filter_primitive_transpose(rule: Any = _NOT_GIVEN, *, materialise_zeros: bool = False) -> Any:
    """Make a primitive's transpose rule from one on pytrees.

    `rule(inputs, cts_out)` gets the bound arguments, with `jax.interpreters.ad.UndefinedPrimal`
    for the linear ones, and the output cotangents, `None` for zero (unless
    `materialise_zeros=True`, which gives arrays of zeros). It returns cotangents of the
    inputs' structure, `None` for zero and for inputs that are not linear.

    Use as `@filter_primitive_transpose` or `@filter_primitive_transpose(materialise_zeros=True)`.
    """
    if rule is _NOT_GIVEN:
        return lambda r: filter_primitive_transpose(r, materialise_zeros=materialise_zeros)

    def flat_rule(cts: Any, *args: Any, spec: _Spec) -> list[Any]:
        inputs = spec.inputs.rebuild(args)
        outputs: _Half = spec.outputs  # type: ignore[assignment]
        if materialise_zeros:
            cts = [ad.instantiate_zeros(ct) for ct in cts]
        cts_out = outputs.rebuild([None if type(ct) is ad.Zero else ct for ct in cts], fill=lambda _: None)
        cts_in = spec.inputs.positions_of(rule(inputs, cts_out), "cotangents")
        return [
            (ad.Zero(x.aval) if ct is None else ct) if ad.is_undefined_primal(x) else None
            for x, ct in zip(args, cts_in)
        ]

    return flat_rule


def filter_primitive_batching(rule: Callable[..., Any]) -> Callable[..., Any]:
    """Make a primitive's batching rule from one on pytrees.

    `rule(inputs, batch_axes)` gets the bound arguments and their batch axes (`None` for
    unbatched and non-array leaves) and returns `(out, out_axes)`.
    """

    def flat_rule(args: Any, dims: Any, *, spec: _Spec) -> tuple[list[Any], list[Any]]:
        inputs = spec.inputs.rebuild(args)
        axes = spec.inputs.rebuild([d if isinstance(d, int) else None for d in dims], fill=lambda _: None)
        out, out_axes = rule(inputs, axes)
        return _outputs(spec, out), spec.outputs.positions_of(out_axes, "batch axes")  # type: ignore[union-attr]

    return flat_rule


def filter_primitive_bind(prim: jax.extend.core.Primitive, *args: Any) -> Any:
    """Bind `prim` (with rules from the `filter_primitive_*` decorators) on any pytrees.

    **Arguments:**

    - `prim`: a primitive with `multiple_results = True`.
    - `*args`: its arguments, any pytrees; their arrays are the primitive's operands.

    **Returns:** the output of its rules: a pytree whose arrays come from the primitive.
    """
    inputs, values = _Half.of(args, is_array)
    slot = _Slot()
    prim.abstract_eval(*[jax.typeof(v) for v in values], spec=_Spec(inputs, None, slot))
    if slot.value is None:
        raise TypeError(
            f"larix.internal.filter_primitive_bind: the abstract evaluation rule of {prim} was "
            "not made with `filter_primitive_def`, so the structure of its outputs is unknown."
        )
    spec = _Spec(inputs, slot.value)
    return spec.outputs.rebuild(prim.bind(*values, spec=spec))  # type: ignore[union-attr]


def materialise_zeros(primal: Any, tangent: Any, allow_struct: bool = False) -> Any:
    """`tangent`, or zeros shaped like `primal` where `tangent` is `None` (a symbolic zero).

    With `allow_struct`, `primal` may be a `jax.ShapeDtypeStruct`.
    """
    if tangent is not None:
        return tangent
    if allow_struct and isinstance(primal, jax.ShapeDtypeStruct):
        return jnp.zeros(primal.shape, primal.dtype)
    return jnp.zeros_like(primal)
