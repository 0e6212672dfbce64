"""Filtered differentiation with respect to the first argument: grad, Jacobians, Hessian.

The rule throughout: the inexact (floating-point or complex) arrays of the differentiated
argument are differentiated; every other leaf is held fixed and gets `None` as its
gradient. Non-array outputs (and auxiliary data) are passed around the JAX transform,
since JAX only accepts arrays there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

from ._filters import is_array, is_inexact_array
from ._module import field
from ._partition import combine, partition
from ._wrappers import Box, TransformWrapper, check_callable, first_argument, split_aux, wrap

__all__ = [
    "filter_grad",
    "filter_hessian",
    "filter_jacfwd",
    "filter_jacrev",
    "filter_value_and_grad",
]


class _GradWrapper(TransformWrapper):
    _has_aux: bool = field(static=True)
    _return_value: bool = field(static=True)

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        name = "filter_value_and_grad" if self._return_value else "filter_grad"
        diff, nondiff = partition(first_argument(args, kwargs, name), is_inexact_array)
        aux_static = Box()

        def differentiable(d: Any) -> Any:
            out = self._fun(combine(d, nondiff), *args[1:], **kwargs)
            if self._has_aux:
                value, aux = split_aux(out, name)
                aux_dynamic, aux_static.value = partition(aux, is_array)
                return value, aux_dynamic
            if isinstance(out, tuple):
                raise TypeError(
                    f"larix.{name}: the function returned a tuple, but it must return a "
                    "scalar. If the tuple is `(loss, aux)`, pass `has_aux=True`."
                )
            return out

        out, grad = jax.value_and_grad(differentiable, has_aux=self._has_aux)(diff)
        if self._has_aux:
            value, aux_dynamic = out
            out = (value, combine(aux_dynamic, aux_static.value))
        if self._return_value:
            return out, grad
        return (grad, out[1]) if self._has_aux else grad


def filter_value_and_grad(fun: Callable[..., Any] | None = None, *, has_aux: bool = False) -> Any:
    """Transform `fun` to return its value and its gradient with respect to its first argument.

    The gradient is taken with respect to every floating-point (or complex) JAX/NumPy array
    in the first positional argument, typically a model. Its other leaves (integer arrays,
    Python numbers, functions, ...) and the leaves of [`larix.Frozen`][] get `None` in the
    gradient. The other arguments are passed through and not differentiated.

    Usable as `@larix.filter_value_and_grad` or `@larix.filter_value_and_grad(has_aux=True)`.

    **Arguments:**

    - `fun`: the function, returning a scalar (or `(scalar, aux)` if `has_aux`). It may
      be a Module or a bound method.
    - `has_aux`: whether `fun` returns a pair `(value, aux)`, where `aux` is any pytree
      that is returned alongside and not differentiated.

    **Returns:** a function with the arguments of `fun`, returning `(value, grad)`, or
    `((value, aux), grad)` if `has_aux`. `grad` has the structure of the first argument.

    **Raises:** `TypeError` when the wrapped function is called without a positional
    argument, or when `fun` returns a tuple without `has_aux=True`.

    !!! example
        ```python
        >>> import jax.numpy as jnp, larix
        >>> def loss(params, x):
        ...     return jnp.sum(params["w"] * x) + params["n"]
        >>> params = {"w": jnp.array([1.0, 2.0]), "n": 3}
        >>> larix.filter_value_and_grad(loss)(params, jnp.array([4.0, 5.0]))
        (Array(17., dtype=float32), {'n': None, 'w': Array([4., 5.], dtype=float32)})

        ```
    """
    if fun is None:
        return functools.partial(filter_value_and_grad, has_aux=has_aux)
    check_callable(fun, "filter_value_and_grad", "has_aux=...")
    return wrap(_GradWrapper(fun, has_aux, True))


def filter_grad(fun: Callable[..., Any] | None = None, *, has_aux: bool = False) -> Any:
    """Transform `fun` to return its gradient with respect to its first argument.

    As [`larix.filter_value_and_grad`][], without the value: the gradient is taken with
    respect to the floating-point arrays of the first positional argument, and every other
    leaf of it gets `None`. To differentiate several objects, pass them as one tuple.

    **Arguments:**

    - `fun`: the function, returning a scalar (or `(scalar, aux)` if `has_aux`).
    - `has_aux`: whether `fun` returns a pair `(value, aux)`.

    **Returns:** a function with the arguments of `fun`, returning the gradient, or
    `(grad, aux)` if `has_aux`.

    !!! example
        ```python
        >>> import jax.numpy as jnp, larix
        >>> @larix.filter_grad
        ... def grad_fn(x, power):
        ...     return jnp.sum(x[0] ** power)
        >>> grad_fn((jnp.array([1.0, 2.0]), "not differentiated"), 2)
        (Array([2., 4.], dtype=float32), None)

        ```
    """
    if fun is None:
        return functools.partial(filter_grad, has_aux=has_aux)
    check_callable(fun, "filter_grad", "has_aux=...")
    return wrap(_GradWrapper(fun, has_aux, False))


class _JacobianWrapper(TransformWrapper):
    _has_aux: bool = field(static=True)
    _kind: str = field(static=True)  # "jacfwd", "jacrev" or "hessian"

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        name = f"filter_{self._kind}"
        diff, nondiff = partition(first_argument(args, kwargs, name), is_inexact_array)
        aux_static = Box()

        def differentiable(d: Any) -> Any:
            out = self._fun(combine(d, nondiff), *args[1:], **kwargs)
            if not self._has_aux:
                return out
            out, aux = split_aux(out, name)
            aux_dynamic, aux_static.value = partition(aux, is_array)
            return out, aux_dynamic

        has_aux = self._has_aux
        if self._kind == "hessian":
            transformed = jax.jacfwd(jax.jacrev(differentiable, has_aux=has_aux), has_aux=has_aux)
        else:
            transform = jax.jacfwd if self._kind == "jacfwd" else jax.jacrev
            transformed = transform(differentiable, has_aux=has_aux)
        result = transformed(diff)
        if has_aux:
            jac, aux_dynamic = result
            return jac, combine(aux_dynamic, aux_static.value)
        return result


def filter_jacfwd(fun: Callable[..., Any], has_aux: bool = False) -> Any:
    """Transform `fun` to return its Jacobian with respect to its first argument, in forward mode.

    Taken with respect to the floating-point arrays of the first positional argument,
    whose other leaves get `None`. The outputs of `fun` must be arrays (or pytrees of
    arrays); auxiliary data may be anything. Prefer it to [`larix.filter_jacrev`][] when
    the output is larger than the input.

    **Arguments:**

    - `fun`: the function to differentiate.
    - `has_aux`: whether `fun` returns a pair `(output, aux)`.

    **Returns:** a function with the arguments of `fun`, returning the Jacobian (for each
    output leaf, a tree shaped like the first argument), or `(jacobian, aux)`.

    !!! example
        ```python
        >>> import jax.numpy as jnp, larix
        >>> f = lambda p: jnp.sum(p[0] ** 3)
        >>> larix.filter_jacfwd(f)((jnp.array([1.0, 2.0]), "static"))
        (Array([ 3., 12.], dtype=float32), None)

        ```
    """
    check_callable(fun, "filter_jacfwd", "has_aux=...")
    return wrap(_JacobianWrapper(fun, has_aux, "jacfwd"))


def filter_jacrev(fun: Callable[..., Any], has_aux: bool = False) -> Any:
    """Transform `fun` to return its Jacobian with respect to its first argument, in reverse mode.

    As [`larix.filter_jacfwd`][]; reverse mode is cheaper when the output is smaller than
    the input.

    **Arguments:**

    - `fun`: the function to differentiate.
    - `has_aux`: whether `fun` returns a pair `(output, aux)`.

    **Returns:** a function with the arguments of `fun`, returning the Jacobian, or
    `(jacobian, aux)`.

    !!! example
        ```python
        >>> import jax.numpy as jnp, larix
        >>> f = lambda p: jnp.sum(p[0] ** 3)
        >>> larix.filter_jacrev(f)((jnp.array([1.0, 2.0]), "static"))
        (Array([ 3., 12.], dtype=float32), None)

        ```
    """
    check_callable(fun, "filter_jacrev", "has_aux=...")
    return wrap(_JacobianWrapper(fun, has_aux, "jacrev"))


def filter_hessian(fun: Callable[..., Any], has_aux: bool = False) -> Any:
    """Transform `fun` to return its Hessian with respect to its first argument.

    Forward over reverse mode, with respect to the floating-point arrays of the first
    positional argument; its other leaves get `None`. `fun` must return a scalar.

    **Arguments:**

    - `fun`: the function to differentiate.
    - `has_aux`: whether `fun` returns a pair `(output, aux)`.

    **Returns:** a function with the arguments of `fun`, returning the Hessian (a tree
    shaped like the first argument, each of whose leaves is again such a tree), or
    `(hessian, aux)`.

    !!! example
        ```python
        >>> import jax.numpy as jnp, larix
        >>> f = lambda p: jnp.sum(p[0] ** 3)
        >>> larix.filter_hessian(f)((jnp.array([1.0, 2.0]), "static"))
        ((Array([[ 6.,  0.],
               [ 0., 12.]], dtype=float32), None), None)

        ```
    """
    check_callable(fun, "filter_hessian", "has_aux=...")
    return wrap(_JacobianWrapper(fun, has_aux, "hessian"))
