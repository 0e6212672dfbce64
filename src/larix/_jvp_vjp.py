"""Filtered Jacobian-vector and vector-Jacobian products: filter_jvp and filter_vjp."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from ._filters import is_array, is_inexact_array, is_inexact_array_like
from ._module import Module, field
from ._partition import combine, partition
from ._paths import python_path, structure_mismatch
from ._wrappers import Box, check_callable, describe, leaves_up_to, split_aux

__all__ = ["filter_jvp", "filter_vjp"]


class _LeafOverSubtreeError(Exception):
    def __init__(self, path: tuple[Any, ...], primal: Any):
        self.path, self.primal = path, primal


def _tangent_per_leaf(primals: tuple[Any, ...], tangents: tuple[Any, ...]) -> list[Any]:
    """The tangent of each leaf of `primals`: `None` in `tangents` covers a whole subtree."""

    def expand(path: tuple[Any, ...], t: Any, p: Any) -> list[Any]:
        if t is None:
            return [None] * len(jtu.tree_leaves(p))
        if jtu.treedef_is_leaf(jtu.tree_structure(p)):
            return [t]
        raise _LeafOverSubtreeError(path, p)

    try:
        per_leaf = jtu.tree_map_with_path(expand, tangents, primals, is_leaf=lambda x: x is None)
    except _LeafOverSubtreeError as e:
        where, why = e.path, f"one tangent for a whole {type(e.primal).__name__}"
    except ValueError:
        found = structure_mismatch(tangents, primals, is_leaf=lambda x: x is None, prefix=True)
        where, why = found if found is not None else ((), "a different structure")
    else:
        return [t for group in jtu.tree_leaves(per_leaf, is_leaf=lambda x: isinstance(x, list)) for t in group]
    raise ValueError(
        f"larix.filter_jvp: `tangents` must have the structure of `primals` (with None for "
        f"leaves that are not perturbed), but at {python_path(where, 'tangents')} there is {why}."
    )


def filter_jvp(
    fn: Callable[..., Any], primals: Sequence[Any], tangents: Sequence[Any], **kwargs: Any
) -> tuple[Any, Any]:
    """Jacobian-vector product of `fn` at `primals` along `tangents`, for any pytrees.

    Like `jax.jvp`, but the arguments and outputs of `fn` may hold any Python objects.

    **Arguments:**

    - `fn`: the function, called as `fn(*primals, **kwargs)`.
    - `primals`: a tuple or list of the positional arguments.
    - `tangents`: the same structure as `primals`, with a tangent for each perturbed
      floating-point array (or Python float) and `None` elsewhere. A `None` may stand for a
      whole subtree. Leaves that are not floating-point must have `None`.
    - `**kwargs`: keyword arguments of `fn`; they are not perturbed.

    **Returns:** `(primals_out, tangents_out)`: the output of `fn` and its tangent, which
    has the output's structure with `None` at leaves that are not floating-point arrays,
    and at outputs that do not depend on the perturbed inputs (JAX's symbolic zeros), as
    in Equinox.

    **Raises:** `TypeError` for a tangent given to a leaf that cannot be perturbed,
    `ValueError` when `tangents` does not match the structure of `primals`.

    !!! example
        ```python
        >>> import jax.numpy as jnp, larix
        >>> f = lambda x, label: (x ** 2, label)
        >>> larix.filter_jvp(f, (jnp.array([3.0]), "sq"), (jnp.array([1.0]), None))
        ((Array([9.], dtype=float32), 'sq'), (Array([6.], dtype=float32), None))

        ```
    """
    for name, value in (("primals", primals), ("tangents", tangents)):
        if not isinstance(value, (tuple, list)):
            raise TypeError(
                f"larix.filter_jvp: `{name}` must be a tuple or list of the positional "
                f"arguments, e.g. `({name[0]},)`, but got {type(value).__name__}."
            )
    if len(primals) != len(tangents):
        raise ValueError(
            f"larix.filter_jvp: {len(primals)} primals but {len(tangents)} tangents. Give one "
            "tangent per argument, None for an argument that is not perturbed."
        )
    primals, tangents = tuple(primals), tuple(tangents)
    paths_and_leaves, primal_def = jtu.tree_flatten_with_path(primals)
    leaves = [leaf for _, leaf in paths_and_leaves]
    per_leaf = _tangent_per_leaf(primals, tangents)
    perturbed = [i for i, t in enumerate(per_leaf) if t is not None]
    for i in perturbed:
        if not is_inexact_array_like(leaves[i]):
            raise TypeError(
                f"larix.filter_jvp: a tangent was given for "
                f"{python_path(paths_and_leaves[i][0], 'primals')}, which is "
                f"{describe(leaves[i])}. Only floating-point arrays and Python floats can be "
                "perturbed: pass None as its tangent."
            )
    out_static, depends = Box(), Box()

    def perturb(values: list[Any]) -> Any:
        new = list(leaves)
        for i, v in zip(perturbed, values):
            new[i] = v
        out = fn(*primal_def.unflatten(new), **kwargs)
        out_dynamic, out_static.value = partition(out, is_array)
        depends.value = _depends_on(values, out_dynamic)
        return out_dynamic

    out_dynamic, out_tangent = jax.jvp(perturb, ([leaves[i] for i in perturbed],), ([per_leaf[i] for i in perturbed],))
    out_tangent = jtu.tree_map(
        lambda t, d: None if getattr(t, "dtype", None) == jax.dtypes.float0 or not d else t, out_tangent, depends.value
    )
    return combine(out_dynamic, out_static.value), out_tangent


def _depends_on(inputs: list[Any], out: Any) -> Any:
    """For each leaf of `out`: whether it is a tracer of the JVP that `inputs` are tracers of.

    An output that is not (a constant, an input that was not perturbed, a tracer of an
    enclosing transform) has a symbolic zero tangent, which `filter_jvp` reports as `None`.
    JAX has no public way to ask a tracer for its trace: `_trace` is read where it exists
    (JAX >= 0.4.36); elsewhere every array output counts as dependent, and gets zeros.
    """
    trace = getattr(inputs[0], "_trace", None) if inputs else None
    if trace is None and inputs:
        return jtu.tree_map(lambda _: True, out)
    return jtu.tree_map(lambda x: isinstance(x, jax.core.Tracer) and getattr(x, "_trace", None) is trace, out)


class _VJPFunction(Module):
    """The pullback returned by `filter_vjp`: a pytree, so it can cross `filter_jit`."""

    _pullback: Callable[..., Any]
    _out_def: Any = field(static=True)
    _out_structs: tuple[jax.ShapeDtypeStruct, ...] = field(static=True)

    def __call__(self, cotangent: Any) -> Any:
        given = leaves_up_to(self._out_def, cotangent)
        if given is None:
            raise ValueError(
                "larix.filter_vjp: the cotangent must have the structure of the output, with "
                f"an array for each floating-point array and None elsewhere; expected "
                f"{self._out_def}, got {jtu.tree_structure(cotangent)}."
            )
        filled = []
        for ct, struct in zip(given, self._out_structs):
            if ct is not None:
                filled.append(ct)
            elif jnp.issubdtype(struct.dtype, jnp.inexact):
                filled.append(jnp.zeros(struct.shape, struct.dtype))
            else:
                filled.append(np.zeros(struct.shape, jax.dtypes.float0))
        (result,) = self._pullback(self._out_def.unflatten(filled))
        return result


def filter_vjp(fun: Callable[..., Any], *primals: Any, has_aux: bool = False) -> Any:
    """Vector-Jacobian product: evaluate `fun(*primals)` and return its pullback.

    Like `jax.vjp`, but `primals` and the output may hold any Python objects. The
    floating-point arrays of `primals` are differentiated.

    **Arguments:**

    - `fun`: the function, called as `fun(*primals)`.
    - `*primals`: its arguments, any pytrees.
    - `has_aux`: whether `fun` returns a pair `(output, aux)`; `aux` is returned as is.

    **Returns:** `(output, vjp_fn)`, or `(output, vjp_fn, aux)` if `has_aux`. `vjp_fn`
    takes a cotangent with the output's structure (an array for each floating-point array,
    `None` elsewhere; a `None` for a floating-point array counts as zeros) and returns a
    tuple with one cotangent per primal, `None` at the leaves that are not differentiated.

    !!! example
        ```python
        >>> import jax.numpy as jnp, larix
        >>> out, vjp_fn = larix.filter_vjp(lambda x, n: x * n, jnp.array(2.0), 3)
        >>> vjp_fn(jnp.array(1.0))
        (Array(3., dtype=float32, weak_type=True), None)

        ```
    """
    check_callable(fun, "filter_vjp", "has_aux=...")
    diff, nondiff = partition(primals, is_inexact_array)
    static = Box()
    aux_static = Box()

    def differentiable(d: Any) -> Any:
        out = fun(*combine(d, nondiff))
        if has_aux:
            out, aux = split_aux(out, "filter_vjp")
            aux_dynamic, aux_static.value = partition(aux, is_array)
        out_dynamic, static.value = partition(out, is_array)
        return (out_dynamic, aux_dynamic) if has_aux else out_dynamic

    if has_aux:
        out_dynamic, pullback, aux_dynamic = jax.vjp(differentiable, diff, has_aux=True)
    else:
        out_dynamic, pullback = jax.vjp(differentiable, diff)
    leaves, out_def = jtu.tree_flatten(out_dynamic)
    structs = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves)
    vjp_fn = _VJPFunction(pullback, out_def, structs)
    out = combine(out_dynamic, static.value)
    if has_aux:
        return out, vjp_fn, combine(aux_dynamic, aux_static.value)
    return out, vjp_fn
