"""create_vprim: a primitive from rules for unbatched inputs, that stays a primitive under vmap.

Under `vmap` the primitive's batching rule binds the primitive again, adding one "layer"
`(axis_size, in_axes)` to its `_larix_batch` parameter (the last layer is the outermost
vmap). Each rule then runs under one `jax.vmap` per layer, with every output batched on
axis 0. Because the result is still the same primitive, its JVP and transpose rules apply
to it after batching too: `grad(vmap(f))` uses them, just as `vmap(grad(f))` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core
import jax.numpy as jnp
from jax.interpreters import ad, batching, mlir

from .._wrappers import Box

__all__ = ["create_vprim"]

_LAYERS = "_larix_batch"
Layers = tuple[tuple[int, tuple[int | None, ...]], ...]


def _unbatched_aval(aval: Any, layers: Layers, index: int) -> Any:
    for _, axes in reversed(layers):  # outermost first
        axis = axes[index]
        if axis is not None:
            aval = aval.update(shape=aval.shape[:axis] + aval.shape[axis + 1 :])
    return aval


def _under_vmaps(fn: Callable[..., Any], layers: Layers, in_axes: Callable[[tuple[int | None, ...]], Any]) -> Callable[..., Any]:
    for size, axes in layers:  # innermost first
        fn = jax.vmap(fn, in_axes=in_axes(axes), out_axes=0, axis_size=size)
    return fn


class _VPrimitive(jax.extend.core.Primitive):
    """A primitive whose impl is looked up per call, so that `def_impl` may replace it later."""

    multiple_results = True

    def __init__(self, name: str, vmappable_impl: Callable[..., Any]):
        super().__init__(name)
        self._vmappable_impl = vmappable_impl
        self._plain_impl = vmappable_impl
        super().def_impl(self._dispatch)

    def def_impl(self, impl: Callable[..., Any]) -> Callable[..., Any]:
        # Only replaces the impl for unbatched calls: the batched ones keep the impl given
        # to `create_vprim`, which must work under `jax.vmap`. (lineax re-defines the impl
        # with checks that refuse to be batched.)
        self._plain_impl = impl
        return impl

    def _dispatch(self, *args: Any, **params: Any) -> Any:
        layers = params.pop(_LAYERS, ())
        if not layers:
            return list(self._plain_impl(*args, **params))
        return _batched_impl(self._vmappable_impl, layers, params)(*args)


def _batched_impl(impl: Callable[..., Any], layers: Layers, params: dict[str, Any]) -> Callable[..., Any]:
    return _under_vmaps(lambda *a: list(impl(*a, **params)), layers, lambda axes: axes)


def create_vprim(
    name: str,
    impl: Callable[..., Any],
    abstract_eval: Callable[..., Any],
    jvp: Callable[..., Any],
    transpose: Callable[..., Any],
) -> jax.extend.core.Primitive:
    """A primitive with multiple results, batchable by `vmap`, from rules for unbatched inputs.

    **Arguments:** (the rules take the primitive's operands and its parameters as keyword
    arguments, as JAX's rules do; each may come from a `filter_primitive_*` decorator.)

    - `name`: the primitive's name, shown in jaxprs.
    - `impl`: `impl(*operands) -> list of arrays`; must work under `jax.vmap`. It is also
      the lowering. A later `prim.def_impl(...)` replaces it for unbatched eager calls only.
    - `abstract_eval`: `abstract_eval(*avals) -> list of jax.core.ShapedArray`.
    - `jvp`: `jvp(primals, tangents) -> (primals_out, tangents_out)`; tangents may be
      `jax.interpreters.ad.Zero`.
    - `transpose`: `transpose(cts_out, *operands) -> list`, one cotangent per operand
      (`None` for those that are not `UndefinedPrimal`s).

    **Returns:** the primitive. Bind it with `prim.bind(*operands)`, or with
    [`larix.internal.filter_primitive_bind`][] when its rules are filtered.
    """
    prim = _VPrimitive(name, impl)

    def abstract(*avals: Any, **params: Any) -> list[Any]:
        layers = params.pop(_LAYERS, ())
        inner = [_unbatched_aval(a, layers, i) for i, a in enumerate(avals)]
        out = list(abstract_eval(*inner, **params))
        for size, _ in layers:
            out = [o.update(shape=(size, *o.shape)) for o in out]
        return out

    def batch(args: Any, dims: Any, **params: Any) -> tuple[list[Any], list[int]]:
        layers = params.pop(_LAYERS, ())
        axes = tuple(d if isinstance(d, int) else None for d in dims)
        size = next(x.shape[d] for x, d in zip(args, axes) if d is not None)
        out = prim.bind(*args, **params, **{_LAYERS: (*layers, (size, axes))})
        return out, [0] * len(out)

    def jvp_rule(primals: Any, tangents: Any, **params: Any) -> tuple[list[Any], list[Any]]:
        layers = params.pop(_LAYERS, ())
        if not layers:
            out, t_out = jvp(primals, tangents, **params)
            return list(out), list(t_out)
        zero = [type(t) is ad.Zero for t in tangents]
        zero_avals = [_unbatched_aval(t.aval, layers, i) if z else None for i, (t, z) in enumerate(zip(tangents, zero))]
        out_zero = Box()

        def inner(ps: list[Any], ts: list[Any]) -> tuple[list[Any], list[Any]]:
            it = iter(ts)
            full = [ad.Zero(a) if z else next(it) for z, a in zip(zero, zero_avals)]
            out, t_out = jvp(ps, full, **params)
            out_zero.value = [type(t) is ad.Zero for t in t_out]
            return list(out), [t for t in t_out if type(t) is not ad.Zero]

        def in_axes(axes: tuple[int | None, ...]) -> Any:
            return (list(axes), [a for a, z in zip(axes, zero) if not z])

        run = _under_vmaps(inner, layers, in_axes)
        out, t_nonzero = run(list(primals), [t for t, z in zip(tangents, zero) if not z])
        it = iter(t_nonzero)
        return out, [ad.Zero(jax.typeof(o).to_tangent_aval()) if z else next(it) for o, z in zip(out, out_zero.value)]

    def transpose_rule(cts: Any, *args: Any, **params: Any) -> list[Any]:
        layers = params.pop(_LAYERS, ())
        if not layers:
            return list(transpose(cts, *args, **params))
        undefined = [ad.is_undefined_primal(x) for x in args]
        avals = [_unbatched_aval(x.aval, layers, i) if u else None for i, (x, u) in enumerate(zip(args, undefined))]
        ct_zero = [type(ct) is ad.Zero for ct in cts]
        ct_avals = [ct.aval.update(shape=ct.aval.shape[len(layers) :]) if z else None for ct, z in zip(cts, ct_zero)]
        result_zero = Box()

        def inner(defined: list[Any], ct_values: list[Any]) -> list[Any]:
            d_it, c_it = iter(defined), iter(ct_values)
            full_args = [ad.UndefinedPrimal(a) if u else next(d_it) for u, a in zip(undefined, avals)]
            full_cts = [ad.Zero(a) if z else next(c_it) for z, a in zip(ct_zero, ct_avals)]
            res = list(transpose(full_cts, *full_args, **params))
            result_zero.value = [not u or r is None or type(r) is ad.Zero for u, r in zip(undefined, res)]
            return [r for r, z in zip(res, result_zero.value) if not z]

        fn = inner
        for size, axes in layers:  # innermost first
            fn = _transpose_layer(fn, size, axes, undefined, ct_zero, result_zero)
        defined = [x for x, u in zip(args, undefined) if not u]
        res_it = iter(fn(defined, [ct for ct, z in zip(cts, ct_zero) if not z]))
        return [
            None if not u else (ad.Zero(x.aval) if z else next(res_it))
            for x, u, z in zip(args, undefined, result_zero.value)
        ]

    prim.def_abstract_eval(abstract)
    ad.primitive_jvps[prim] = jvp_rule
    ad.primitive_transposes[prim] = transpose_rule
    batching.primitive_batchers[prim] = batch
    mlir.register_lowering(prim, mlir.lower_fun(lambda *a, **p: _lowered(impl, a, p), multiple_results=True))
    return prim


def _lowered(impl: Callable[..., Any], args: Any, params: dict[str, Any]) -> list[Any]:
    layers = params.pop(_LAYERS, ())
    return _batched_impl(impl, layers, params)(*args)


def _transpose_layer(
    fn: Callable[..., Any], size: int, axes: tuple[int | None, ...], undefined: list[bool], ct_zero: list[bool], result_zero: Box
) -> Callable[..., Any]:
    defined_axes = [a for a, u in zip(axes, undefined) if not u]

    def layer(defined: list[Any], ct_values: list[Any]) -> list[Any]:
        out = jax.vmap(fn, in_axes=(defined_axes, 0), out_axes=0, axis_size=size)(defined, ct_values)
        # Each cotangent comes out batched on axis 0. An operand that was not batched in this
        # layer gets the sum over the batch; a batched one gets its batch axis back.
        result_axes = [a for a, u, z in zip(axes, undefined, result_zero.value) if u and not z]
        return [jnp.sum(ct, axis=0) if a is None else jnp.moveaxis(ct, 0, a) for ct, a in zip(out, result_axes)]

    return layer
