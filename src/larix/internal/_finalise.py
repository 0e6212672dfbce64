"""Finalising a jaxpr: replace the primitives that only matter to transforms by their impls.

Once a program is fully transformed, `unvmap_any`, `nondifferentiable` and the like have
done their job. Finalising re-traces the jaxpr with each registered primitive replaced by
its implementation, leaving plain JAX operations (for export, or to inspect). Primitives
nested in the sub-jaxprs of `cond`, `scan`, `jit`, `checkpoint`, ... are finalised too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core
import jax.tree_util as jtu

from . import _guards

__all__ = [
    "finalise_eval_jaxpr",
    "finalise_fn",
    "finalise_jaxpr",
    "finalise_jaxpr_as_fn",
    "finalise_make_jaxpr",
    "primitive_finalisations",
    "register_impl_finalisation",
]

primitive_finalisations: dict[Any, Callable[..., Any]] = {}


def register_impl_finalisation(prim: jax.extend.core.Primitive) -> None:
    """Make finalisation replace `prim` by its implementation (`prim.impl`)."""
    primitive_finalisations[prim] = prim.impl


for _prim in (
    _guards.unvmap_any_p,
    _guards.unvmap_all_p,
    _guards.unvmap_max_p,
    _guards.unvmap_min.primitive,  # type: ignore[attr-defined]
    _guards._nondifferentiable_p,
    _guards._nondifferentiable_backward_p,
    _guards._nonbatchable_p,
    _guards._nontraceable_p,
):
    register_impl_finalisation(_prim)


def finalise_eval_jaxpr(jaxpr: Any, consts: Any, *args: Any) -> list[Any]:
    """Evaluate `jaxpr` (a `jax.extend.core.Jaxpr`), running registered primitives' impls."""
    env: dict[Any, Any] = {}

    def read(v: Any) -> Any:
        return v.val if isinstance(v, jax.extend.core.Literal) else env[v]

    for var, value in zip(jaxpr.constvars, consts):
        env[var] = value
    for var, value in zip(jaxpr.invars, args):
        env[var] = value
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        rule = primitive_finalisations.get(eqn.primitive)
        if rule is None:
            # As `jax.core.eval_jaxpr` binds, with the sub-jaxprs (of cond, scan, jit,
            # checkpoint, custom_jvp, ...) finalised too.
            params = eqn.primitive.get_bind_params(_finalise_params(eqn.params))
            outs = eqn.primitive.bind(*invals, **params)
        else:
            outs = rule(*invals, **eqn.params)
        if not eqn.primitive.multiple_results:
            outs = [outs]
        for var, value in zip(eqn.outvars, outs):
            env[var] = value
    return [read(v) for v in jaxpr.outvars]


def _finalise_param(value: Any) -> Any:
    if isinstance(value, jax.extend.core.ClosedJaxpr):
        return finalise_jaxpr(value)
    if isinstance(value, jax.extend.core.Jaxpr) and not value.constvars:
        return finalise_jaxpr(jax.extend.core.ClosedJaxpr(value, [])).jaxpr
    if isinstance(value, tuple) and any(isinstance(v, (jax.extend.core.ClosedJaxpr, jax.extend.core.Jaxpr)) for v in value):
        return tuple(_finalise_param(v) for v in value)
    return value


def _finalise_params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: _finalise_param(v) for k, v in params.items()}


def finalise_jaxpr_as_fn(jaxpr: Any) -> Callable[..., list[Any]]:
    """A function of the closed jaxpr's inputs that evaluates it finalised."""
    return lambda *args: finalise_eval_jaxpr(jaxpr.jaxpr, jaxpr.consts, *args)


def finalise_jaxpr(jaxpr: Any) -> Any:
    """The closed jaxpr re-traced with registered primitives replaced by their impls."""
    avals = [v.aval for v in jaxpr.jaxpr.invars]
    structs = [jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=a.weak_type) for a in avals]
    return jax.make_jaxpr(finalise_jaxpr_as_fn(jaxpr))(*structs)


def finalise_fn(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn`, with registered primitives replaced by their impls (traced on each call)."""

    def finalised(*args: Any, **kwargs: Any) -> Any:
        closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args, **kwargs)
        flat_args = jtu.tree_leaves((args, kwargs))
        out = finalise_eval_jaxpr(closed.jaxpr, closed.consts, *flat_args)
        return jtu.tree_unflatten(jtu.tree_structure(out_shape), out)

    return finalised


def finalise_make_jaxpr(fn: Callable[..., Any], *, return_shape: bool = False) -> Callable[..., Any]:
    """`jax.make_jaxpr` of [`larix.internal.finalise_fn`][]`(fn)`."""
    return jax.make_jaxpr(finalise_fn(fn), return_shape=return_shape)
