"""filter_pmap: run a function of any pytrees in parallel over devices.

Axis specs are resolved as for `filter_vmap` (see `_vmap.py`). Unlike `jax.vmap`,
`jax.pmap` compiles, so the non-array leaves become a hashable static argument and the
`jax.pmap` objects are cached.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Literal

import jax
import jax.tree_util as jtu
import numpy as np

from ._filters import is_array
from ._module import field
from ._vmap import DEFAULT_AXES, AxisSpec, check_spec, merge_output, resolve_inputs, split_output
from ._wrappers import Box, TransformWrapper, check_callable, wrap

__all__ = ["filter_pmap"]


class _PmapKey:
    """The static part of one `filter_pmap` call: jax.pmap compiles once per distinct key."""

    __slots__ = ("_hash", "key")

    def __init__(self, key: tuple[Any, ...], name: str):
        self.key = key
        try:
            self._hash = hash(key)
        except TypeError:
            raise TypeError(
                f"larix.{name}: every non-array leaf of the function and its arguments is a "
                "compile-time constant and must be hashable, but one is not (a set, or an "
                "object defining __eq__ without __hash__). Make it hashable or pass it as an array."
            ) from None

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _PmapKey) and self.key == other.key


# The jax.pmap objects, one per configuration, shared by all wrappers: the user's function
# and the static arguments travel in the `_PmapKey`, so that `filter_pmap(f)(x)` written
# inside a loop compiles once, like `jax.pmap(f)(x)` does. Bounded, oldest dropped first.
_PMAPS: OrderedDict[tuple[Any, ...], tuple[Any, dict[_PmapKey, Box]]] = OrderedDict()
_MAX_PMAPS = 64
_PMAPS_LOCK = threading.Lock()


def _pmapped(config: tuple[Any, ...]) -> tuple[Any, dict[_PmapKey, Box]]:
    with _PMAPS_LOCK:
        if config not in _PMAPS:
            _PMAPS[config] = _make_pmapped(config)
            if len(_PMAPS) > _MAX_PMAPS:
                _PMAPS.popitem(last=False)
        _PMAPS.move_to_end(config)
        return _PMAPS[config]


def _make_pmapped(config: tuple[Any, ...]) -> tuple[Any, dict[_PmapKey, Box]]:
    mapped_axes, out_axes, axis_name, axis_size, devices, donate = config
    outputs: dict[_PmapKey, Box] = {}

    def body(key: _PmapKey, mapped: list[Any], unmapped: list[Any]) -> tuple[list[Any], list[Any]]:
        fun_def, treedef, kinds, static = key.key
        parts = {"m": iter(mapped), "u": iter(unmapped), "s": iter(static)}
        leaves = [next(parts[k]) for k in kinds]
        fun = fun_def.unflatten(leaves[: fun_def.num_leaves])
        call_args, call_kwargs = treedef.unflatten(leaves[fun_def.num_leaves :])
        box = outputs[key] = Box()
        return split_output(fun(*call_args, **call_kwargs), out_axes.spec, "filter_pmap", box)

    pmapped = jax.pmap(
        body,
        axis_name=axis_name,
        in_axes=(None, list(mapped_axes), None),
        out_axes=(0, None),
        static_broadcasted_argnums=(0,),
        devices=devices,
        axis_size=axis_size,
        donate_argnums=() if donate == "none" else (1, 2),
    )
    return pmapped, outputs


class _PmapWrapper(TransformWrapper):
    _in_axes: AxisSpec = field(static=True)
    _out_axes: AxisSpec = field(static=True)
    _axis_name: Hashable | None = field(static=True)
    _axis_size: int | None = field(static=True)
    _devices: tuple[Any, ...] | None = field(static=True)
    _donate: str = field(static=True, default="none")

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        leaves, treedef, axes, _ = resolve_inputs(
            self._fun, self._in_axes.spec, args, kwargs, self._axis_size, "filter_pmap"
        )
        fun_leaves, fun_def = jtu.tree_flatten(self._fun)
        all_leaves = fun_leaves + leaves
        all_axes = [None] * len(fun_leaves) + axes
        kinds = tuple("m" if a is not None else "u" if is_array(x) else "s" for x, a in zip(all_leaves, all_axes))
        static = tuple(x for x, k in zip(all_leaves, kinds) if k == "s")
        key = _PmapKey((fun_def, treedef, kinds, static), "filter_pmap")
        mapped_axes = tuple(a for a in all_axes if a is not None)
        mapped = [x for x, k in zip(all_leaves, kinds) if k == "m"]
        if not mapped:
            # jax.pmap needs a mapped argument even with axis_size: give it one, unused.
            mapped, mapped_axes = [np.zeros((self._axis_size,), np.int8)], (0,)
        config = (mapped_axes, self._out_axes, self._axis_name, self._axis_size, self._devices, self._donate)
        pmapped, outputs = _pmapped(config)
        unmapped = [x for x, k in zip(all_leaves, kinds) if k == "u"]
        if self._donate != "all":
            batched, unbatched = pmapped(key, mapped, unmapped)
        else:
            with warnings.catch_warnings():  # as in Equinox: donate what can be, silently
                warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
                batched, unbatched = pmapped(key, mapped, unmapped)
        return merge_output(outputs[key], batched, unbatched)


def filter_pmap(
    fun: Callable[..., Any] | None = None,
    *,
    in_axes: Any = DEFAULT_AXES,
    out_axes: Any = DEFAULT_AXES,
    axis_name: Hashable | None = None,
    axis_size: int | None = None,
    devices: Any = None,
    donate: Literal["all", "warn", "none"] = "none",
) -> Any:
    """Run `fun` in parallel over devices, mapping a batch axis: `jax.pmap` for any pytrees.

    The axis specs are those of [`larix.filter_vmap`][]: by default every array is split
    over its axis 0, one slice per device, and every other leaf is passed unchanged. Like
    `jax.pmap`, the function is compiled: arrays are traced and all other leaves (of the
    arguments and of `fun` itself) are compile-time constants, so they must be hashable,
    and changing one recompiles. An array output with the axis `None` is taken from the
    first device.

    For new code, prefer `filter_jit` with sharded inputs (`jax.sharding`): it scales
    beyond one host and needs no batch axis per device.

    **Arguments:**

    - `fun`: the function; may be a Module or a bound method (its arrays are replicated).
    - `in_axes`, `out_axes`: axis specs, as for [`larix.filter_vmap`][].
    - `axis_name`: names the mapped axis for collectives such as `jax.lax.psum`.
    - `axis_size`: the number of devices to use when no argument is mapped.
    - `devices`: the devices to run on (default: all local devices of the backend).
    - `donate`: as in Equinox: `"none"` (default) keeps the input buffers; `"all"` donates
      the array arguments to the computation, so that outputs may reuse their memory (do
      not use those arrays afterwards), silently skipping those that cannot be; `"warn"`
      does the same, and JAX warns about the ones it could not use.

    **Returns:** the parallelised function.

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> n = jax.local_device_count()
        >>> total = larix.filter_pmap(lambda x: jax.lax.psum(x, "d"), axis_name="d")
        >>> total(jnp.ones((n, 2)))[0].tolist() == [float(n), float(n)]
        True

        ```
    """
    if fun is None:
        return functools.partial(
            filter_pmap,
            in_axes=in_axes,
            out_axes=out_axes,
            axis_name=axis_name,
            axis_size=axis_size,
            devices=devices,
            donate=donate,
        )
    check_callable(fun, "filter_pmap", "in_axes=..., out_axes=...")
    if donate not in ("all", "warn", "none"):
        raise ValueError(f'larix.filter_pmap: donate must be "all", "warn" or "none", got {donate!r}.')
    specs = check_spec(in_axes, "in_axes", "filter_pmap"), check_spec(out_axes, "out_axes", "filter_pmap")
    devices = None if devices is None else tuple(devices)
    return wrap(_PmapWrapper(fun, *specs, axis_name, axis_size, devices, donate))
