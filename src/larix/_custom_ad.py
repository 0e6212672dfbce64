"""Custom derivative rules for functions of any pytrees: filter_custom_jvp, filter_custom_vjp."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.custom_derivatives import SymbolicZero

from ._filters import is_array, is_array_like, is_inexact_array
from ._partition import combine, partition
from ._wrappers import Box, check_callable, leaves_up_to

__all__ = ["filter_custom_jvp", "filter_custom_vjp"]


def _zero_tangent(primal: Any) -> Any:
    aval = jax.typeof(primal)  # also for Python numbers, which have no `.dtype`
    if jnp.issubdtype(aval.dtype, jnp.inexact):
        return jnp.zeros(aval.shape, aval.dtype)
    return np.zeros(aval.shape, jax.dtypes.float0)  # what JAX expects for integer outputs


def _is_inexact(x: Any) -> bool:
    # By dtype, not type: under `jax.jvp` of a Python float, the primal JAX hands a rule is
    # a float subclass with a dtype, not an array.
    try:
        return bool(jnp.issubdtype(jax.typeof(x).dtype, jnp.inexact))
    except TypeError:
        return False


def _split_output(out: Any, box: Box) -> list[Any]:
    """The array leaves of an output; the rest (structure, other leaves) goes in `box`.

    JAX's custom rules return arrays and Python numbers only: other outputs (a string, a
    function) travel outside, as the static part of the output. Python numbers go through
    JAX, as in Equinox: under `jax.jvp` of a Python float, JAX hands the function a float
    subclass, and what it computes from it carries a tangent.
    """
    leaves, treedef = jtu.tree_flatten(out)
    positions = tuple(i for i, x in enumerate(leaves) if is_array_like(x))
    box.value = (treedef, positions, [None if i in positions else x for i, x in enumerate(leaves)])
    return [leaves[i] for i in positions]


def _merge_output(box: Box, arrays: list[Any], static: bool = True) -> Any:
    """The output from its arrays; with `static=False`, `None` at the non-array leaves."""
    treedef, positions, leaves = box.value
    leaves = list(leaves) if static else [None] * len(leaves)
    for i, x in zip(positions, arrays):
        leaves[i] = x
    return treedef.unflatten(leaves)


def _tangents_of_arrays(name: str, box: Box, arrays: list[Any], tangents: Any) -> list[Any]:
    """The JAX tangents of an output's arrays, from `tangents` (output structure, `None` = zero)."""
    treedef, positions, _ = box.value
    given = leaves_up_to(treedef, tangents)
    if given is None:
        raise ValueError(
            f"larix.{name}: the JVP rule returned a tangent with structure "
            f"{jtu.tree_structure(tangents)}, but it must have the output's structure "
            f"{treedef} (with None for zero)."
        )
    return [
        _zero_tangent(p) if given[i] is None or not _is_inexact(p) else given[i]
        for i, p in zip(positions, arrays)
    ]


class filter_custom_jvp:  # noqa: N801 - a decorator, named like jax.custom_jvp
    """Give a function of any pytrees a custom JVP rule: `jax.custom_jvp` without `nondiff_argnums`.

    The floating-point arrays of the positional arguments can be differentiated; every
    other leaf (integer arrays, Python numbers, functions) is passed through, with `None`
    as its tangent. Keyword arguments are never differentiated. The output may hold
    non-array leaves too; they get no tangent.

    Define the rule with `@f.def_jvp`. It is called as `fn_jvp(primals, tangents, **kwargs)`
    where `primals` is the tuple of positional arguments and `tangents` has the same
    structure, with `None` for every leaf that is not differentiated (including
    floating-point arrays that happen not to be perturbed). It returns
    `(output, tangent_out)`; `None` in `tangent_out` stands for a zero tangent (and must
    be given for non-array outputs).

    **Arguments:**

    - `fn`: the function.

    !!! example
        ```python
        >>> import jax.numpy as jnp, larix
        >>> @larix.filter_custom_jvp
        ... def apply(x, y, *, fn):
        ...     return fn(x, y)
        >>> @apply.def_jvp
        ... def apply_jvp(primals, tangents, *, fn):
        ...     x, y = primals
        ...     tx, ty = tangents  # ty is None: `y` is not differentiated below
        ...     return apply(x, y, fn=fn), 2.0 * tx
        >>> larix.filter_grad(apply)(jnp.array(1.0), jnp.array(5.0), fn=lambda a, b: a * b)
        Array(2., dtype=float32, weak_type=True)

        ```
    """

    def __init__(self, fn: Callable[..., Any]):
        check_callable(fn, "filter_custom_jvp", "")
        self.fn = fn
        self.fn_jvp: Callable[..., Any] | None = None
        self.__wrapped__ = fn
        for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
            if hasattr(fn, attr):
                setattr(self, attr, getattr(fn, attr))

    def def_jvp(self, fn_jvp: Callable[..., Any]) -> Callable[..., Any]:
        """Register `fn_jvp(primals, tangents, **kwargs) -> (output, tangent_out)`; returns it."""
        check_callable(fn_jvp, "filter_custom_jvp.def_jvp", "")
        self.fn_jvp = fn_jvp
        return fn_jvp

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        if self.fn_jvp is None:
            raise TypeError(
                f"larix.filter_custom_jvp: {getattr(self.fn, '__name__', 'the function')} has no "
                "JVP rule. Define one with `@f.def_jvp` before calling it."
            )
        fn, fn_jvp = self.fn, self.fn_jvp
        arg_leaves, arg_def = jtu.tree_flatten(args)
        dynamic = [i for i, x in enumerate(arg_leaves) if is_array(x)]
        kw_dynamic, kw_static = partition(kwargs, is_array)

        def rebuild(values: list[Any], kw: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
            leaves = list(arg_leaves)
            for i, v in zip(dynamic, values):
                leaves[i] = v
            return arg_def.unflatten(leaves), combine(kw, kw_static)

        # Under differentiation JAX may run the rule without the primal function: whichever
        # runs records the output's static part.
        out_box = Box()

        def primal(values: list[Any], kw: Any) -> list[Any]:
            call_args, call_kwargs = rebuild(values, kw)
            return _split_output(fn(*call_args, **call_kwargs), out_box)

        def rule(primals: tuple[Any, Any], tangents: tuple[Any, Any]) -> tuple[Any, Any]:
            values, kw = primals
            kw_tangents = jtu.tree_leaves(tangents[1], is_leaf=lambda t: isinstance(t, SymbolicZero))
            if any(not isinstance(t, SymbolicZero) and _is_inexact(t) for t in kw_tangents):
                # As in Equinox (a ValueError): the rule has no place for these tangents.
                raise ValueError(
                    f"larix.filter_custom_jvp: {getattr(fn, '__name__', 'the function')} is being "
                    "differentiated with respect to a keyword argument, but keyword arguments "
                    "are never differentiated (the JVP rule gets no tangent for them). Pass "
                    "the value by position instead."
                )
            call_args, call_kwargs = rebuild(values, kw)
            arg_tangents: list[Any] = [None] * len(arg_leaves)
            for i, v, t in zip(dynamic, values, tangents[0]):
                if not isinstance(t, SymbolicZero) and _is_inexact(v):
                    arg_tangents[i] = t
            out, tangent_out = fn_jvp(call_args, arg_def.unflatten(arg_tangents), **call_kwargs)
            arrays = _split_output(out, out_box)
            return arrays, _tangents_of_arrays("filter_custom_jvp", out_box, arrays, tangent_out)

        custom = jax.custom_jvp(primal)
        custom.defjvp(rule, symbolic_zeros=True)
        return _merge_output(out_box, custom([arg_leaves[i] for i in dynamic], kw_dynamic))


class filter_custom_vjp:  # noqa: N801 - a decorator, named like jax.custom_vjp
    """Give a function of any pytrees a custom VJP rule, differentiating its first argument only.

    The decorated function is `fn(vjp_arg, *args, **kwargs)`. Only the floating-point
    arrays of `vjp_arg` are differentiated; differentiating with respect to a
    floating-point array in any other argument raises a `RuntimeError`, so pack what needs
    gradients into `vjp_arg` (a tuple if several). The output may hold non-array leaves.

    Register the forward and backward passes with `@f.def_fwd` and `@f.def_bwd`:

    - `fn_fwd(perturbed, vjp_arg, *args, **kwargs) -> (output, residuals)`: `perturbed`
      has the structure of `vjp_arg`, `True` at each leaf being differentiated, `False`
      elsewhere. `residuals` is any pytree kept for the backward pass.
    - `fn_bwd(residuals, grad_output, perturbed, vjp_arg, *args, **kwargs) -> grad_vjp_arg`:
      `grad_output` has the output's structure, `None` for leaves with no cotangent (a
      symbolic zero, or a non-array). Return a tree of `vjp_arg`'s structure, `None` for
      zero (e.g. at non-array leaves).

    All forward-pass inputs are passed to the backward pass again for convenience.

    **Arguments:**

    - `fn`: the function.

    !!! example
        ```python
        >>> import jax.numpy as jnp, larix
        >>> @larix.filter_custom_vjp
        ... def clip_gradient(x, bound):
        ...     return x
        >>> @clip_gradient.def_fwd
        ... def fwd(perturbed, x, bound):
        ...     return x, None
        >>> @clip_gradient.def_bwd
        ... def bwd(residuals, grad_out, perturbed, x, bound):
        ...     return jnp.clip(grad_out, -bound, bound)
        >>> larix.filter_grad(lambda x: 10.0 * clip_gradient(x, 1.0))(jnp.array(3.0))
        Array(1., dtype=float32, weak_type=True)

        ```
    """

    def __init__(self, fn: Callable[..., Any]):
        check_callable(fn, "filter_custom_vjp", "")
        self.fn = fn
        self.fn_fwd: Callable[..., Any] | None = None
        self.fn_bwd: Callable[..., Any] | None = None
        self._zeros_for_none = Box()  # for `defvjp`: fills None cotangents of the current call
        self.__wrapped__ = fn
        for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
            if hasattr(fn, attr):
                setattr(self, attr, getattr(fn, attr))

    def def_fwd(self, fn_fwd: Callable[..., Any]) -> Callable[..., Any]:
        """Register `fn_fwd(perturbed, vjp_arg, *args, **kwargs) -> (out, residuals)`; returns it."""
        check_callable(fn_fwd, "filter_custom_vjp.def_fwd", "")
        self.fn_fwd = fn_fwd
        return fn_fwd

    def def_bwd(self, fn_bwd: Callable[..., Any]) -> Callable[..., Any]:
        """Register `fn_bwd(residuals, grad_out, perturbed, vjp_arg, *args, **kwargs)`; returns it."""
        check_callable(fn_bwd, "filter_custom_vjp.def_bwd", "")
        self.fn_bwd = fn_bwd
        return fn_bwd

    def defvjp(self, fn_fwd: Callable[..., Any], fn_bwd: Callable[..., Any]) -> None:
        """Equinox's older form: `fn_fwd(vjp_arg, *args, **kwargs)`, `fn_bwd(residuals, grad_out, vjp_arg, *args, **kwargs)`.

        Deprecated, as in Equinox: use `def_fwd` and `def_bwd`, which also pass
        `perturbed` and allow `None` (a symbolic zero) for a floating-point array's
        cotangent. Here `grad_out` has zeros for those, as the older form promised.
        """
        warnings.warn(
            "larix.filter_custom_vjp.defvjp is deprecated, as in Equinox: use `@f.def_fwd` and "
            "`@f.def_bwd`. They take an extra `perturbed` argument after the residuals and "
            "`grad_out` (which values need a gradient), and `grad_out` may hold None for a "
            "zero cotangent of a floating-point array.",
            UserWarning,
            stacklevel=2,
        )
        check_callable(fn_fwd, "filter_custom_vjp.defvjp", "fn_bwd")
        check_callable(fn_bwd, "filter_custom_vjp.defvjp", "fn_bwd")

        def fwd(perturbed: Any, *args: Any, **kwargs: Any) -> Any:
            return fn_fwd(*args, **kwargs)

        def bwd(residuals: Any, grad_out: Any, perturbed: Any, *args: Any, **kwargs: Any) -> Any:
            return fn_bwd(residuals, self._zeros_for_none.value(grad_out), *args, **kwargs)

        self.fn_fwd, self.fn_bwd = fwd, bwd

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        name = getattr(self.fn, "__name__", "the function")
        if self.fn_fwd is None or self.fn_bwd is None:
            missing = " and ".join(d for d, f in (("def_fwd", self.fn_fwd), ("def_bwd", self.fn_bwd)) if f is None)
            raise TypeError(
                f"larix.filter_custom_vjp: {name} has no rule registered with {missing}. "
                "Define both with `@f.def_fwd` and `@f.def_bwd` before calling it."
            )
        if not args:
            raise TypeError(
                f"larix.filter_custom_vjp: {name} must be called with the argument to "
                "differentiate first, by position: `f(vjp_arg, *args, **kwargs)`."
            )
        fn, fn_fwd, fn_bwd = self.fn, self.fn_fwd, self.fn_bwd
        leaves, treedef = jtu.tree_flatten((args[0], args[1:], kwargs))
        vjp_def = jtu.tree_structure(args[0])
        n_vjp = vjp_def.num_leaves
        diff = [i for i in range(n_vjp) if is_inexact_array(leaves[i])]
        other = [i for i, x in enumerate(leaves) if is_array(x) and not (i < n_vjp and is_inexact_array(x))]
        residual_static, perturbed_box, out_box = Box(), Box(), Box()

        def rebuild(diff_values: list[Any], other_values: list[Any]) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
            new = list(leaves)
            for i, v in zip(diff, diff_values):
                new[i] = v
            for i, v in zip(other, other_values):
                new[i] = v
            return treedef.unflatten(new)

        def primal(diff_values: list[Any], other_values: list[Any]) -> list[Any]:
            vjp_arg, rest, kw = rebuild(diff_values, other_values)
            return _split_output(fn(vjp_arg, *rest, **kw), out_box)

        def fwd(diff_primals: list[Any], other_primals: list[Any]) -> tuple[Any, Any]:
            for i, p in zip(other, other_primals):
                if p.perturbed and _is_inexact(p.value):
                    raise RuntimeError(
                        f"larix.filter_custom_vjp: {name} is being differentiated with respect to "
                        f"a floating-point array that is not in its first argument (leaf {i} of "
                        "`(vjp_arg, args, kwargs)`). Only the first argument is differentiated: "
                        "move everything that needs a gradient into it, e.g. `f((x, y), z)`."
                    )
            diff_values = [p.value for p in diff_primals]
            other_values = [p.value for p in other_primals]
            flags = [False] * n_vjp
            for i, p in zip(diff, diff_primals):
                flags[i] = p.perturbed
            perturbed_box.value = vjp_def.unflatten(flags)
            vjp_arg, rest, kw = rebuild(diff_values, other_values)
            out, residuals = fn_fwd(perturbed_box.value, vjp_arg, *rest, **kw)
            arrays = _split_output(out, out_box)
            residual_dynamic, residual_static.value = partition(residuals, is_array)
            return arrays, (residual_dynamic, diff_values, other_values)

        def bwd(saved: Any, grad_out: Any) -> tuple[list[Any], list[Any]]:
            residual_dynamic, diff_values, other_values = saved
            vjp_arg, rest, kw = rebuild(diff_values, other_values)
            residuals = combine(residual_dynamic, residual_static.value)
            structs = [jax.ShapeDtypeStruct(g.shape, g.dtype) for g in grad_out]
            grad_out = [None if isinstance(g, SymbolicZero) or g.dtype == jax.dtypes.float0 else g for g in grad_out]
            self._zeros_for_none.value = lambda g: _merge_output(out_box, _zeros_for_inexact(g, out_box, structs), static=False)
            grad_tree = _merge_output(out_box, grad_out, static=False)
            grad = fn_bwd(residuals, grad_tree, perturbed_box.value, vjp_arg, *rest, **kw)
            grad_leaves = leaves_up_to(vjp_def, grad)
            if grad_leaves is None:
                raise ValueError(
                    f"larix.filter_custom_vjp: the backward rule of {name} returned a gradient "
                    f"with structure {jtu.tree_structure(grad)}, but it must have the structure "
                    f"of the first argument, {vjp_def} (with None for zero)."
                )
            return [grad_leaves[i] for i in diff], [None] * len(other)

        custom = jax.custom_vjp(primal)
        custom.defvjp(fwd, bwd, symbolic_zeros=True)
        return _merge_output(out_box, custom([leaves[i] for i in diff], [leaves[i] for i in other]))


def _zeros_for_inexact(grad_out: Any, box: Box, structs: list[jax.ShapeDtypeStruct]) -> list[Any]:
    """`defvjp`'s promise: every floating-point output has an array cotangent, zeros if need be."""
    treedef, positions, _ = box.value
    given = treedef.flatten_up_to(grad_out)
    return [
        jnp.zeros(s.shape, s.dtype) if given[i] is None and jnp.issubdtype(s.dtype, jnp.inexact) else given[i]
        for i, s in zip(positions, structs)
    ]
