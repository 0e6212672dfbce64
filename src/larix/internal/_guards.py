"""Identity functions that guard against a transform: nondifferentiable, nonbatchable, ...

Each is a JAX primitive that returns its array inputs unchanged and whose rule for one
transform (JVP, transpose, batching) raises. They are for library code, to turn "this
would silently compute something wrong" into an error at trace time.

Also the `unvmap_*` reductions: under `vmap` they reduce across the batch too, so a
`while_loop` can stop when every batch element is done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core
import jax.numpy as jnp
import jax.tree_util as jtu
from jax.interpreters import ad, batching, mlir

from .._filters import is_array

__all__ = [
    "nonbatchable",
    "nondifferentiable",
    "nondifferentiable_backward",
    "nontraceable",
    "unvmap_all",
    "unvmap_any",
    "unvmap_max",
    "unvmap_min",
]


def _identity_primitive(name: str) -> jax.extend.core.Primitive:
    prim = jax.extend.core.Primitive(name)
    prim.multiple_results = True
    prim.def_impl(lambda *xs, **_: list(xs))
    prim.def_abstract_eval(lambda *avals, **_: list(avals))
    mlir.register_lowering(prim, lambda ctx, *xs, **_: list(xs))
    return prim


def _bind_arrays(prim: jax.extend.core.Primitive, values: list[Any], **params: Any) -> list[Any]:
    """`prim` applied to the arrays among `values`; other values (Python scalars) pass as
    they are, so that a Python float stays a float, as it does in Equinox."""
    positions = [i for i, value in enumerate(values) if is_array(value)]
    if not positions:
        return values
    out = list(values)
    for i, value in zip(positions, prim.bind(*[values[i] for i in positions], **params)):
        out[i] = value
    return out


def _map_arrays(prim: jax.extend.core.Primitive, x: Any, **params: Any) -> Any:
    leaves, treedef = jtu.tree_flatten(x)
    if not any(is_array(leaf) for leaf in leaves):
        return x
    return treedef.unflatten(_bind_arrays(prim, leaves, **params))


def _linear_jvp(prim: jax.extend.core.Primitive) -> Callable[..., Any]:
    # The tangents go through the same primitive, so a guard on the transpose (or on
    # batching) still sees them.
    def jvp(primals: Any, tangents: Any, **params: Any) -> Any:
        tangents = [ad.instantiate_zeros(t) for t in tangents]
        return _bind_arrays(prim, list(primals), **params), _bind_arrays(prim, tangents, **params)

    return jvp


def _identity_batching(prim: jax.extend.core.Primitive) -> Callable[..., Any]:
    def rule(args: Any, dims: Any, **params: Any) -> Any:
        return prim.bind(*args, **params), dims

    return rule


def _what(name: str | None) -> str:
    return "This operation" if name is None else name


# nondifferentiable: any tangent is an error.

_nondifferentiable_p = _identity_primitive("nondifferentiable")


def _nondifferentiable_jvp(primals: Any, tangents: Any, *, name: str | None, msg: str | None) -> Any:
    raise RuntimeError(msg or f"Unexpected tangent. {_what(name)} cannot be autodifferentiated.")


ad.primitive_jvps[_nondifferentiable_p] = _nondifferentiable_jvp
batching.primitive_batchers[_nondifferentiable_p] = _identity_batching(_nondifferentiable_p)


def nondifferentiable(x: Any, *, name: str | None = None, msg: str | None = None) -> Any:
    """Identity on the arrays of `x`; differentiating through it (either mode) raises.

    **Arguments:**

    - `x`: any pytree.
    - `name`: what to call the operation in the error: "`name` cannot be autodifferentiated".
    - `msg`: the whole error message instead.

    **Returns:** `x`.

    **Raises:** `RuntimeError` at trace time when a tangent reaches it.
    """
    return _map_arrays(_nondifferentiable_p, x, name=name, msg=msg)


# nondifferentiable_backward: forward mode is fine, a cotangent is an error.

_nondifferentiable_backward_p = _identity_primitive("nondifferentiable_backward")
ad.primitive_jvps[_nondifferentiable_backward_p] = _linear_jvp(_nondifferentiable_backward_p)
batching.primitive_batchers[_nondifferentiable_backward_p] = _identity_batching(_nondifferentiable_backward_p)


def _nondifferentiable_backward_transpose(cts: Any, *args: Any, name: str | None, msg: str | None, symbolic: bool) -> Any:
    if symbolic and all(type(ct) is ad.Zero for ct in cts):
        return [None if not ad.is_undefined_primal(x) else ad.Zero(x.aval) for x in args]
    raise RuntimeError(msg or f"Unexpected cotangent. {_what(name)} cannot be reverse-mode autodifferentiated.")


ad.primitive_transposes[_nondifferentiable_backward_p] = _nondifferentiable_backward_transpose


def nondifferentiable_backward(x: Any, name: str | None = None, msg: str | None = None, symbolic: bool = True) -> Any:
    """Identity on the arrays of `x`; forward-mode derivatives pass, a cotangent raises.

    **Arguments:**

    - `x`: any pytree.
    - `name`, `msg`: as for [`larix.internal.nondifferentiable`][].
    - `symbolic`: if `True`, a cotangent that JAX knows to be zero is allowed.

    **Returns:** `x`.

    **Raises:** `RuntimeError` when it is transposed (reverse mode) with a cotangent.
    """
    return _map_arrays(_nondifferentiable_backward_p, x, name=name, msg=msg, symbolic=symbolic)


# nonbatchable: being vmapped is an error (or, optionally, a run-time check that the
# batch is constant).

_nonbatchable_p = _identity_primitive("nonbatchable")
ad.primitive_jvps[_nonbatchable_p] = _linear_jvp(_nonbatchable_p)
ad.primitive_transposes[_nonbatchable_p] = lambda cts, *args, **params: [
    _nonbatchable_p.bind(ad.instantiate_zeros(ct), **params)[0] if ad.is_undefined_primal(x) else None
    for ct, x in zip(cts, args)
]


def _nonbatchable_batching(args: Any, dims: Any, *, name: str | None, msg: str | None, allow_constant_across_batch: bool) -> Any:
    if not allow_constant_across_batch:
        raise ValueError(
            msg
            or f"Unexpected batch tracer. {_what(name)} cannot be vmap'd. This is probably an "
            "internal error in the library you are using."
        )
    from .._errors import error_if

    checked = []
    for x, d in zip(args, dims):
        if d is not None:
            first = jnp.take(x, 0, axis=d)
            differs = jnp.any(x != jnp.expand_dims(first, d))
            x = error_if(
                x,
                differs,
                msg
                or "Nonconstant batch. This operation has received a batch of values that "
                "were expected to be constant. This is probably an internal error in the "
                "library you are using.",
            )
        checked.append(x)
    return checked, dims


batching.primitive_batchers[_nonbatchable_p] = _nonbatchable_batching


def nonbatchable(x: Any, *, name: str | None = None, msg: str | None = None, allow_constant_across_batch: bool = False) -> Any:
    """Identity on the arrays of `x`; being batched by `vmap` raises at trace time.

    **Arguments:**

    - `x`: any pytree.
    - `name`, `msg`: as for [`larix.internal.nondifferentiable`][].
    - `allow_constant_across_batch`: allow batching, but check at run time (with
      [`larix.error_if`][]) that every element of the batch is the same.

    **Returns:** `x`.
    """
    return _map_arrays(_nonbatchable_p, x, name=name, msg=msg, allow_constant_across_batch=allow_constant_across_batch)


# nontraceable: any transform other than jit is an error.

_nontraceable_p = _identity_primitive("nontraceable")


def _nontraceable_jvp(primals: Any, tangents: Any, *, name: str) -> Any:
    raise RuntimeError(f"Detected differentiation of {name}")


def _nontraceable_batching(args: Any, dims: Any, *, name: str) -> Any:
    raise RuntimeError(f"Detected batching of {name}")


ad.primitive_jvps[_nontraceable_p] = _nontraceable_jvp
batching.primitive_batchers[_nontraceable_p] = _nontraceable_batching


def nontraceable(x: Any, *, name: str = "nontraceable operation") -> Any:
    """Identity on the arrays of `x`; differentiating or batching it raises.

    Put at the end of a primitive's implementation, it catches tracers that leaked into
    the implementation through a closure.

    **Raises:** `RuntimeError` naming `name`.
    """
    return _map_arrays(_nontraceable_p, x, name=name)


# unvmap_*: reduce over every element, and over the batch too when vmapped.


def _reduction(name: str, reduce: Callable[[Any], Any], dtype: Any) -> Callable[[Any], Any]:
    prim = jax.extend.core.Primitive(name)
    prim.def_impl(reduce)
    prim.def_abstract_eval(lambda aval: jax.core.ShapedArray((), aval.dtype if dtype is None else dtype))
    mlir.register_lowering(prim, mlir.lower_fun(reduce, multiple_results=False))
    # Under vmap the batched array is reduced whole: the result is the same for every
    # element of the batch, so it comes out unbatched.
    batching.primitive_batchers[prim] = lambda args, dims: (prim.bind(args[0]), None)

    def unvmap(x: Any) -> Any:
        x = jnp.asarray(x)
        if dtype is not None:
            x = x.astype(dtype)
        return prim.bind(x)

    unvmap.__name__ = name
    unvmap.primitive = prim  # type: ignore[attr-defined]
    return unvmap


unvmap_any = _reduction("unvmap_any", jnp.any, jnp.bool_)
unvmap_any.__doc__ = """`jnp.any(x)`, which under `vmap` is also taken over the batch: the result is unbatched."""
unvmap_all = _reduction("unvmap_all", jnp.all, jnp.bool_)
unvmap_all.__doc__ = """`jnp.all(x)`, which under `vmap` is also taken over the batch: the result is unbatched."""
unvmap_max = _reduction("unvmap_max", jnp.max, None)
unvmap_max.__doc__ = """`jnp.max(x)`, which under `vmap` is also taken over the batch: the result is unbatched."""
unvmap_min = _reduction("unvmap_min", jnp.min, None)
unvmap_min.__doc__ = """`jnp.min(x)`, which under `vmap` is also taken over the batch: the result is unbatched."""
unvmap_any_p = unvmap_any.primitive  # type: ignore[attr-defined]
unvmap_all_p = unvmap_all.primitive  # type: ignore[attr-defined]
unvmap_max_p = unvmap_max.primitive  # type: ignore[attr-defined]
