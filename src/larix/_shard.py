"""Sharding whole models: place or constrain their arrays with JAX's own shardings.

larix adds no distributed engine of its own: a model's arrays are ordinary `jax.Array`s,
so `jax.sharding` (Mesh, NamedSharding, PartitionSpec) and `jax.distributed` apply to them
as they are. What a model needs is a way to say *where each array goes* without writing
out every leaf: `filter_shard` takes a single sharding or a pytree prefix of shardings,
and `named_shardings` builds the full tree of shardings from a rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.tree_util as jtu
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec, Sharding, SingleDeviceSharding

from ._filters import is_array
from ._paths import PrefixMismatchError, broadcast_prefix, dotted_path, python_path

__all__ = ["filter_shard", "named_shardings"]

_SPEC_TYPES = (Sharding, jax.Device, PartitionSpec)


def _is_spec_leaf(x: Any) -> bool:
    # `None` is a leaf of the spec ("leave these arrays alone"), not an empty subtree.
    return x is None or isinstance(x, _SPEC_TYPES)


def _leaf_specs(x: Any, leaves: list[Any], spec: Any) -> list[Any]:
    """The spec leaf that applies to each leaf of `x` (`spec` is a pytree prefix of `x`)."""
    if _is_spec_leaf(spec):
        _check_spec_leaf(spec, ())
        return [spec] * len(leaves)
    for path, s in jtu.tree_flatten_with_path(spec, is_leaf=_is_spec_leaf)[0]:
        _check_spec_leaf(s, path)
    try:
        per_leaf = broadcast_prefix(spec, x, prefix_is_leaf=_is_spec_leaf)
    except PrefixMismatchError as error:
        raise ValueError(
            f"larix.filter_shard: the shardings are not a pytree prefix of the tree: at "
            f"{python_path(error.path, 'shardings')} there is {error.why}. Pass one sharding for "
            "every array, or a tree that mirrors the model down to where each sharding applies "
            "(larix.named_shardings(model, mesh, rule) builds one)."
        ) from None
    return [s for _, s in per_leaf]


def _check_spec_leaf(s: Any, path: tuple[Any, ...]) -> None:
    if not _is_spec_leaf(s):
        raise TypeError(
            f"larix.filter_shard: {python_path(path, 'shardings')} is a {type(s).__name__}, "
            "but shardings must be jax.sharding.Sharding objects (such as "
            "NamedSharding(mesh, PartitionSpec('data'))), a jax.Device, or None to leave "
            "those arrays as they are."
        )


def filter_shard(x: Any, device_or_shardings: Any) -> Any:
    """Place (outside `jit`) or constrain (inside `jit`) every array of `x` to a sharding.

    Outside a traced function the arrays are moved with `jax.device_put`; inside one
    (`filter_jit`, `jax.jit`, ...) their sharding is constrained with
    `jax.lax.with_sharding_constraint`, so that the compiled program lays them out that
    way, and the outputs of a `filter_jit` function follow the shardings asked for here.
    Non-array leaves and static fields are returned untouched.

    **Arguments:**

    - `x`: any pytree, typically a model or a batch.
    - `device_or_shardings`: one `jax.Device` or `jax.sharding.Sharding` for every array
      of `x`, or a pytree prefix of `x` whose leaves are shardings, devices, or `None`
      (leave the arrays below it as they are). A `PartitionSpec` may stand for a sharding
      where JAX accepts one: under `jax.set_mesh(mesh)`.

    **Returns:** a copy of `x` whose arrays carry the shardings.

    **Raises:** `ValueError` if the shardings are not a pytree prefix of `x` (naming
    where), `TypeError` for a leaf that is not a sharding.

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        >>> mesh = Mesh(jax.devices()[:1], ("data",))
        >>> params = {"w": jnp.ones((4, 2)), "act": "relu"}
        >>> placed = larix.filter_shard(params, NamedSharding(mesh, P("data")))
        >>> placed["w"].sharding.spec, placed["act"]
        (P('data',), 'relu')

        ```
    """
    leaves, treedef = jtu.tree_flatten(x)
    specs = _leaf_specs(x, leaves, device_or_shardings)
    slots = [i for i, (leaf, s) in enumerate(zip(leaves, specs)) if s is not None and is_array(leaf)]
    if not slots:
        return x
    arrays = [leaves[i] for i in slots]
    targets = [specs[i] for i in slots]
    if any(isinstance(a, jax.core.Tracer) for a in arrays):
        placed = _constrain(arrays, targets)
    else:
        # One device_put for the whole list: JAX batches the transfers.
        placed = jax.device_put(arrays, targets)
    for i, a in zip(slots, placed):
        leaves[i] = a
    return treedef.unflatten(leaves)


def _explicit(s: Any) -> bool:
    if isinstance(s, PartitionSpec):  # refers to the mesh of `jax.set_mesh`
        return AxisType.Explicit in jax.sharding.get_abstract_mesh().axis_types
    return isinstance(s, NamedSharding) and AxisType.Explicit in s.mesh.axis_types


def _constrain(arrays: list[Any], targets: list[Any]) -> list[Any]:
    """Inside a trace: constrain the compiled program's layout of `arrays`."""
    # Two JAX primitives, one per kind of mesh axis (jax >= 0.7): with_sharding_constraint
    # for Auto axes (the compiler propagates from the constraint; for Explicit axes it only
    # asserts), and reshard for Explicit axes (sharding in types; it needs `jax.set_mesh`).
    # jax.make_mesh builds Explicit axes by default, Mesh(devices, names) Auto ones.
    out = list(arrays)
    auto = [i for i, t in enumerate(targets) if not _explicit(t)]
    explicit = [i for i, t in enumerate(targets) if _explicit(t)]
    if auto:
        # with_sharding_constraint takes shardings, not devices.
        shardings = [targets[i] for i in auto]
        shardings = [SingleDeviceSharding(t) if isinstance(t, jax.Device) else t for t in shardings]
        for i, a in zip(auto, jax.lax.with_sharding_constraint([arrays[i] for i in auto], shardings)):
            out[i] = a
    if explicit:
        if jax.sharding.get_abstract_mesh().empty:
            raise ValueError(
                "larix.filter_shard: inside a traced function, a NamedSharding on a mesh with "
                "Explicit axes (the default of jax.make_mesh) needs that mesh to be set: run "
                "the call under `with jax.set_mesh(mesh):`, or build the mesh with "
                "axis_types=(jax.sharding.AxisType.Auto, ...) to let the compiler propagate "
                "shardings from the constraint."
            )
        for i, a in zip(explicit, jax.sharding.reshard([arrays[i] for i in explicit], [targets[i] for i in explicit])):
            out[i] = a
    return out


def _check_divisible(spec: PartitionSpec, leaf: Any, mesh: Mesh, path: str) -> None:
    shape = leaf.shape
    if len(spec) > len(shape):
        raise ValueError(
            f"larix.named_shardings: the rule gave {spec} for '{path}', which has shape "
            f"{tuple(shape)}: the spec names {len(spec)} dimensions but the array has only "
            f"{len(shape)}. Return a spec with at most {len(shape)} entries for it."
        )
    for dim, axes in enumerate(spec):
        if axes is None:
            continue
        names = (axes,) if isinstance(axes, str) else tuple(axes)
        size = 1
        for name in names:
            if name not in mesh.shape:
                raise ValueError(
                    f"larix.named_shardings: the rule gave {spec} for '{path}', but the mesh "
                    f"has no axis {name!r} (its axes are {tuple(mesh.axis_names)})."
                )
            size *= mesh.shape[name]
        if shape[dim] % size:
            raise ValueError(
                f"larix.named_shardings: the rule gave {spec} for '{path}' of shape "
                f"{tuple(shape)}, but dimension {dim} ({shape[dim]}) is not divisible by the "
                f"{size} devices of mesh axes {names}. Shard another dimension, pad the "
                "array, or return PartitionSpec() (replicated) for it."
            )


def named_shardings(
    tree: Any, mesh: Mesh, rule: PartitionSpec | Callable[[str, Any], PartitionSpec | None]
) -> Any:
    """Build a `NamedSharding` for every array of `tree` from a rule, for `filter_shard`.

    **Arguments:**

    - `tree`: a model or any pytree; only its arrays get a sharding.
    - `mesh`: the `jax.sharding.Mesh` to lay the arrays out on.
    - `rule`: a `PartitionSpec` for every array (`PartitionSpec()` replicates them), or a
      function `rule(path, array) -> PartitionSpec | None` given each array's dotted path
      (`"layers.0.weight"`, as in [`larix.split`][]) and the array (or anything with a
      `.shape`). `None` leaves that array where it is.

    **Returns:** a tree of the structure of `tree` with a `NamedSharding` at each array and
    `None` at every other leaf: a valid `device_or_shardings` for [`larix.filter_shard`][].

    **Raises:** `ValueError` naming the array when its spec does not fit it: too many
    dimensions, an axis the mesh does not have, or a dimension that the mesh axis does not
    divide.

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp, larix
        >>> from jax.sharding import Mesh, PartitionSpec as P
        >>> mesh = Mesh(jax.devices()[:1], ("model",))
        >>> params = {"w": jnp.ones((4, 2)), "b": jnp.ones(2), "act": "relu"}
        >>> rule = lambda path, x: P("model") if x.ndim == 2 else P()
        >>> shardings = larix.named_shardings(params, mesh, rule)
        >>> shardings["w"].spec, shardings["b"].spec, shardings["act"]
        (P('model',), P(), None)

        ```
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"larix.named_shardings: expected a jax.sharding.Mesh, got {type(mesh).__name__}. "
            "Build one with jax.make_mesh((8,), ('data',)) or Mesh(devices, axis_names)."
        )
    if isinstance(rule, PartitionSpec):
        spec = rule
        rule = lambda path, leaf: spec  # noqa: E731 - the same spec for every array
    elif not callable(rule):
        raise TypeError(
            f"larix.named_shardings: the rule must be a PartitionSpec or a function "
            f"(path, array) -> PartitionSpec | None, got {type(rule).__name__}."
        )
    with_paths, treedef = jtu.tree_flatten_with_path(tree)
    out = []
    for key_path, leaf in with_paths:
        if not is_array(leaf):
            out.append(None)
            continue
        path = dotted_path(key_path)
        spec = rule(path, leaf)
        if spec is None:
            out.append(None)
            continue
        if not isinstance(spec, PartitionSpec):
            raise TypeError(
                f"larix.named_shardings: the rule returned a {type(spec).__name__} for "
                f"'{path}'; it must return a jax.sharding.PartitionSpec (or None)."
            )
        _check_divisible(spec, leaf, mesh, path)
        out.append(NamedSharding(mesh, spec))
    return treedef.unflatten(out)
