"""noinline: compile a function once as its own XLA function, instead of inlining each call."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from .._module import Module, field

__all__ = ["noinline"]

# One jitted wrapper per noinline instance, so that its calls share one trace. Kept outside
# the Module: a field holding a transformed Module would hide that Module's parameters.
_JITTED: dict[int, Any] = {}


class _NoInline(Module):
    fn: Callable[..., Any]
    abstract_fn: Callable[..., Any] | None = field(static=True, default=None)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        jitted = _JITTED.get(id(self))
        if jitted is None:
            from .._jit import filter_jit

            jitted = _JITTED[id(self)] = filter_jit(self.fn)
            weakref.finalize(self, _JITTED.pop, id(self), None)
        # A jitted function called inside a traced program is lowered as a call to a private
        # function, which its calls with the same shapes share.
        return jitted(*args, **kwargs)


def noinline(fn: Callable[..., Any], abstract_fn: Callable[..., Any] | None = None) -> Callable[..., Any]:
    """Mark `fn` to be compiled as a separate function rather than inlined at each call.

    Calls with the same argument shapes share one traced and compiled function, which can
    cut the compile time of a program that calls `fn` many times. (It is a nested
    [`larix.filter_jit`][].)

    `fn` may be any callable pytree (a Module); its arrays are inputs of the call.

    **Arguments:**

    - `fn`: the function.
    - `abstract_fn`: accepted for Equinox compatibility and ignored. (In Equinox, two
      noinline functions with the same `abstract_fn` can be swapped without recompiling
      the caller; here the caller recompiles.)

    **Returns:** a callable Module.
    """
    return _NoInline(fn, abstract_fn)
