"""Module: a frozen dataclass whose fields are the leaves of a pytree."""

from __future__ import annotations

import abc
import dataclasses
import functools
import inspect
import operator
import types
import typing
import warnings
from collections.abc import Callable
from typing import Any

import jax.tree_util as jtu

from ._field import (
    _INITIALISING,
    UNSET,
    _abstract_kind,
    _converter_annotation,
    _Field,
    _ProvidedField,
    _provider,
)
from ._field import AbstractClassVar as AbstractClassVar
from ._field import AbstractVar as AbstractVar
from ._field import field as field
from ._field import static_field as static_field
from ._filters import is_array
from ._intercept import call_method

__all__ = [
    "AbstractClassVar",
    "AbstractVar",
    "BoundMethod",
    "Module",
    "field",
    "module_update_wrapper",
    "static_field",
]

# Every Module subclass: `type(x) in MODULE_TYPES` is a set lookup, where isinstance() on an
# ABCMeta class runs Python code. Used on filter_jit's per-call path.
MODULE_TYPES: set[type] = set()


def _hooked_call(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`__call__` that runs through `call_method`: named scopes, interceptors, capture."""

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N807 - it is __call__
        return call_method(fn, "__call__", self, args, kwargs)

    functools.update_wrapper(__call__, fn)
    return __call__


class _MethodDescriptor:
    """Wraps a function in a Module's class body so that `instance.method` is a pytree."""

    def __init__(self, fn: Callable[..., Any]):
        self.__func__ = fn
        functools.update_wrapper(self, fn)

    def __set_name__(self, owner: type, name: str) -> None:
        set_name = getattr(self.__func__, "__set_name__", None)
        if set_name is not None:
            set_name(owner, name)

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self.__func__
        # Hot path (every `model.method(x)`): build the BoundMethod without __init__.
        bound = object.__new__(BoundMethod)
        d = bound.__dict__
        d["__func__"] = self.__func__
        d["__self__"] = instance
        return bound

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__func__(*args, **kwargs)


_FLAT = "_larix_flat"


def _make_flatten(cls: type, dynamic: tuple[str, ...], static: tuple[str, ...]) -> tuple[Any, Any, Any]:
    """Generate flatten / flatten_with_keys / unflatten for `cls`.

    A frozen instance always flattens the same way, so its `(children, aux)` pair is kept in
    its `__dict__` (computed on first use, or given at birth by unflatten) and flatten is a
    C-level `attrgetter`. That brings Module flatten from 1.5-2x to ~1.15x the time of a
    `register_dataclass` class; unflatten, which skips `__init__`, is ~0.4x of it
    (benchmarks/bench_module.py). Generated code reads `__dict__` directly, with no
    attribute machinery and no `__init__`.
    """
    dyn = ", ".join(f"d[{n!r}]" for n in dynamic)
    sta = ", ".join(f"d[{n!r}]" for n in static)
    dyn_t = f"({dyn},)" if dynamic else "()"
    sta_t = f"({sta},)" if static else "()"
    # The aux data carries the static values' types too: 1, 1.0 and True compare equal, but
    # a static field set to each must not give equal treedefs (nor share a compilation).
    types_t = ", ".join(f"type(d[{n!r}])" for n in static)
    aux_t = f"({sta_t}, ({types_t},))" if static else "()"
    keys = tuple(jtu.GetAttrKey(n) for n in dynamic)
    pairs = ", ".join(f"(keys[{i}], d[{n!r}])" for i, n in enumerate(dynamic))
    lines = [
        "def compute(obj):",
        "    d = obj.__dict__",
        f"    return {dyn_t}, {aux_t}",
        "def flatten_with_keys(obj):",
        "    d = obj.__dict__",
        f"    return ({pairs}{',' if dynamic else ''}), {aux_t}",
        "def unflatten(aux, children):",
        "    obj = new(cls)",
        "    d = obj.__dict__",
    ]
    if dynamic:
        lines.append(f"    {dyn_t[1:-1]} = children")
    if static:
        lines.append(f"    {sta_t[1:-1]} = aux[0]")
    lines.append(f"    d[{_FLAT!r}] = (children, aux)")
    lines.append("    return obj")
    namespace: dict[str, Any] = {"keys": keys, "new": object.__new__, "cls": cls}
    exec("\n".join(lines), namespace)  # noqa: S102 - code generated from field names only
    cls._larix_compute_flat = staticmethod(namespace["compute"])  # type: ignore[attr-defined]
    return operator.attrgetter(_FLAT), namespace["flatten_with_keys"], namespace["unflatten"]


_NO_INIT = (object.__init__, getattr(typing, "_no_init_or_replace_init", None))


def _has_custom_init(cls: type) -> bool:
    """Whether `cls` gets its `__init__` from its MRO rather than from a generated one.

    Unlike a plain dataclass (and as Equinox does), a subclass keeps an inherited custom
    `__init__`, whether it comes from a Module or from another base class (a mixin).
    """
    if "__init__" in cls.__dict__:
        return True
    for k in cls.__mro__[1:]:
        if isinstance(k, _ModuleMeta):
            return bool(k._larix_custom_init)  # type: ignore[attr-defined]
        if k.__dict__.get("__init__", object.__init__) not in _NO_INIT:
            return True
    return False


class _FlatCache:
    """`instance._larix_flat`, computed on first use and then kept in the instance's dict."""

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        if instance is None:
            return self
        flat = type(instance)._larix_compute_flat(instance)
        d = instance.__dict__
        if _INITIALISING not in d:  # fields may still change while __init__ runs
            d[_FLAT] = flat
        return flat


def _wraps_module(value: Any) -> bool:
    """Whether `value` is a JAX-transformed callable that closes over a Module's arrays."""
    seen = 0
    while seen < 32:
        seen += 1
        if isinstance(value, (Module, BoundMethod)):
            return seen > 1
        if isinstance(value, types.MethodType) and isinstance(value.__self__, Module):
            return seen > 1  # a dunder such as `model.__call__`, which stays a plain method
        inner = getattr(value, "__wrapped__", None)
        if inner is None:
            return False
        value = inner
    return False


class _ModuleMeta(abc.ABCMeta):
    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kwargs: Any) -> Any:
        annotations = dict(namespace.get("__annotations__", {}))
        new_abstract_vars = {}
        for field_name, annotation in list(annotations.items()):
            kind = _abstract_kind(annotation)
            if kind == "bare":
                bare = annotation if isinstance(annotation, str) else annotation.__name__
                raise TypeError(
                    f"{name}.{field_name} is annotated with an unsubscripted `{bare}`: say what "
                    f"type it will hold, e.g. `{field_name}: {bare}[int]`."
                )
            if kind is not None and field_name in namespace:
                raise TypeError(
                    f"{name}.{field_name} is declared {kind}[...], so it cannot have value "
                    f"{namespace[field_name]!r} in the same class: subclasses provide it. Drop "
                    f"the value, or drop {kind}[...] to make it an ordinary field."
                )
            if kind is not None:
                new_abstract_vars[field_name] = kind
                del annotations[field_name]
        namespace["__annotations__"] = annotations
        for key, value in list(namespace.items()):
            if isinstance(value, types.FunctionType) and not (key.startswith("__") and key.endswith("__")):
                namespace[key] = _MethodDescriptor(value)
        call = namespace.get("__call__")
        # Not larix's own wrappers (filter_vmap's, Partial, ...), which are not layers of a model.
        internal = str(namespace.get("__module__", "")).startswith("larix._")
        if isinstance(call, types.FunctionType) and not internal:
            namespace["__call__"] = _hooked_call(call)

        cls = super().__new__(mcs, name, bases, namespace, **kwargs)
        if namespace.get("__module__") == __name__ and name == "Module":
            # The base class itself: not a dataclass (its own __setattr__ would clash with a
            # frozen dataclass's), but `larix.Module()` is still an empty, frozen pytree.
            cls._larix_custom_init = cls._larix_fill_fields = False
            cls._larix_fields = cls._larix_converters = cls._larix_static_fields = ()
            cls._larix_dynamic_fields = ()
            cls._larix_check_inits = ()
            cls._larix_provided = frozenset()
            flatten, flatten_with_keys, unflatten = _make_flatten(cls, (), ())
            jtu.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten_func=flatten)
            return cls

        custom_init = _has_custom_init(cls)
        cls._larix_custom_init = custom_init
        if custom_init and hasattr(cls, "__post_init__") and (
            "__init__" in namespace or "__post_init__" in namespace
        ):
            warnings.warn(
                f"{cls.__module__}.{cls.__qualname__} has both an `__init__` method and a "
                "`__post_init__` method "
                "(one of them inherited), so `__post_init__` will never run: as in a "
                "dataclass, only a generated `__init__` calls it. Move its code to the end of "
                "`__init__`, or to `__check_init__` if it only checks invariants (larix calls "
                "that after every `__init__`).",
                UserWarning,
                stacklevel=2,
            )
        init_doc = None if custom_init else cls.__init__.__doc__
        MODULE_TYPES.add(cls)
        for field_name in annotations:
            # A field re-declared without a value: a plain dataclass would find the parent's
            # default as a class attribute; give it that, not our descriptor.
            if field_name not in namespace and isinstance(inspect.getattr_static(cls, field_name, None), _Field):
                inherited = inspect.getattr_static(cls, field_name).default
                setattr(cls, field_name, dataclasses.field() if inherited is dataclasses.MISSING else inherited)
        dataclasses.dataclass(eq=False, repr=False, frozen=True, init=not custom_init)(cls)
        # The dataclass machinery installs a frozen __setattr__; ours (on Module) also allows
        # assignment during __init__ and explains the fix, so remove the generated ones.
        for attr in ("__setattr__", "__delattr__"):
            if attr not in namespace and attr in cls.__dict__:
                type.__delattr__(cls, attr)

        fields = dataclasses.fields(cls)
        cls._larix_fields = fields
        if not custom_init:
            init = cls.__init__
            init.__doc__ = init_doc  # a dataclass would drop the parent's docstring
            for f in fields:
                if "converter" in f.metadata and f.name in init.__annotations__:
                    init.__annotations__[f.name] = _converter_annotation(f.metadata["converter"])
        provided = []
        for f in fields:
            provider = _provider(cls, f.name, annotations)
            current = inspect.getattr_static(cls, f.name, None)
            if provider is not UNSET:
                type.__setattr__(cls, f.name, _ProvidedField(f.name, f.default, provider))
                provided.append(f.name)
            elif isinstance(current, _ProvidedField):
                provided.append(f.name)  # overridden in a class between
            elif f.name in cls.__dict__ or not isinstance(current, _Field):
                type.__setattr__(cls, f.name, _Field(f.name, f.default))
        cls._larix_provided = frozenset(provided)
        # The generated __init__ sets every field except `init=False` ones without default.
        cls._larix_fill_fields = custom_init or bool(provided) or any(not f.init for f in fields)
        cls._larix_converters = tuple((f.name, f.metadata["converter"]) for f in fields if "converter" in f.metadata)
        dynamic = tuple(f.name for f in fields if not f.metadata.get("static", False))
        static = tuple(f.name for f in fields if f.metadata.get("static", False))
        cls._larix_static_fields = static
        cls._larix_dynamic_fields = dynamic
        cls._larix_check_inits = tuple(
            k.__dict__["__check_init__"] for k in cls.__mro__ if "__check_init__" in k.__dict__
        )
        _set_abstract_vars(cls, new_abstract_vars, annotations)
        flatten, flatten_with_keys, unflatten = _make_flatten(cls, dynamic, static)
        jtu.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten_func=flatten)
        return cls

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls.__abstractvars__ or cls.__abstractclassvars__:
            missing = [
                f"the {what} " + ", ".join(f"'{n}' ({kind})" for n in sorted(names))
                for names, kind, what in (
                    (cls.__abstractvars__, "AbstractVar", "abstract attributes"),
                    (cls.__abstractclassvars__, "AbstractClassVar", "abstract class attributes"),
                )
                if names
            ]
            raise TypeError(
                f"Can't instantiate abstract class {cls.__name__}: it does not provide "
                f"{' nor '.join(missing)}. Define them in a subclass: an AbstractVar as a field "
                "(`x: int`), a class attribute or a property; an AbstractClassVar as a class "
                "attribute."
            )
        self = cls.__new__(cls)  # object.__new__ refuses classes with abstract methods
        d = self.__dict__
        d[_INITIALISING] = True
        try:
            self.__init__(*args, **kwargs)
            if cls._larix_fill_fields:
                _fill_unset_fields(cls, d)
            for name, converter in cls._larix_converters:
                if d[name] is not UNSET:
                    d[name] = converter(d[name])
        finally:
            del d[_INITIALISING]
        for check in cls._larix_check_inits:
            check(self)
        _warn_on_suspicious_fields(cls, d)
        return self

    @property
    def __signature__(cls) -> inspect.Signature:
        # Our __call__ takes (*args, **kwargs); tools and users want __init__'s signature.
        sig = inspect.signature(cls.__init__)
        return sig.replace(parameters=list(sig.parameters.values())[1:])


def _set_abstract_vars(cls: Any, new: dict[str, str], annotations: dict[str, Any]) -> None:
    declared: dict[str, str] = {}
    for base in reversed(cls.__mro__[1:]):
        declared.update(dict.fromkeys(getattr(base, "__abstractvars__", ()), "AbstractVar"))
        declared.update(dict.fromkeys(getattr(base, "__abstractclassvars__", ()), "AbstractClassVar"))
    remaining: dict[str, str] = {}
    for name, kind in declared.items():
        if name in new:
            continue
        # Provided anywhere in the MRO: in this body, by a class between (a field there has
        # its descriptor in the class dict), or by `__init_subclass__`, which has run already.
        if not (name in annotations or any(name in vars(k) for k in cls.__mro__[:-1])):
            remaining[name] = kind
    for name, kind in new.items():
        # Re-declaring an AbstractClassVar as an AbstractVar keeps the stronger requirement.
        remaining[name] = "AbstractClassVar" if declared.get(name) == "AbstractClassVar" else kind
    cls.__abstractvars__ = frozenset(n for n, k in remaining.items() if k == "AbstractVar")
    cls.__abstractclassvars__ = frozenset(n for n, k in remaining.items() if k == "AbstractClassVar")


def _fill_unset_fields(cls: Any, d: dict[str, Any]) -> None:
    for f in cls._larix_fields:
        if f.name in d:
            continue
        if f.name in cls._larix_provided:
            d[f.name] = UNSET  # given by a class attribute, as in Equinox
        elif f.default is not dataclasses.MISSING:
            d[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            d[f.name] = f.default_factory()
        else:
            raise TypeError(
                f"{cls.__name__}.__init__ did not set the field '{f.name}'. Assign "
                f"`self.{f.name} = ...` in __init__, or give the field a default "
                f"(`{f.name}: ... = larix.field(default=...)`)."
            )


def _warn_on_suspicious_fields(cls: Any, d: dict[str, Any]) -> None:
    for name in cls._larix_static_fields:
        if any(is_array(leaf) for leaf in jtu.tree_leaves(d[name])):
            warnings.warn(
                f"An array is stored in the static field {cls.__name__}.{name}. Static fields "
                "are part of the tree structure: the array will not be trained, and every "
                "filtered transform will hash it and recompile when it changes. Declare the "
                "field without `static=True`.",
                UserWarning,
                stacklevel=3,
            )
    for f in cls._larix_fields:
        value = d[f.name]
        # Not skipping plain functions: jax.vmap and jax.grad return them.
        if callable(value) and not isinstance(value, Module) and _wraps_module(value):
            warnings.warn(
                f"{cls.__name__}.{f.name} holds a JAX-transformed callable that wraps a Module "
                "or one of its methods. Its parameters are hidden from the tree, so they will "
                "not be trained or updated. Store the Module itself and apply the transform "
                "when calling it.",
                UserWarning,
                stacklevel=3,
            )


def _refuse_own_method(module: Any, name: str, method: Any) -> None:
    cls = type(module).__name__
    method_name = getattr(method.__func__, "__name__", "method")
    raise ValueError(
        f"Cannot assign methods in __init__: {cls}.{name} would hold `self.{method_name}`, a "
        f"method bound to the {cls} being built, so the {cls} would contain itself "
        f"(`self.{name}.__self__ is self`) and could not be a pytree. Make it a property "
        f"instead, which is not stored in the tree:\n\n"
        f"    @property\n    def {name}(self):\n        return self.{method_name}\n\n"
        f"and remove the field `{name}`."
    )


class Module(metaclass=_ModuleMeta):
    """Base class for models: a frozen dataclass that is a pytree.

    Subclasses declare their fields with annotations. Fields are the pytree's children, in
    declaration order; `larix.field(static=True)` ones are part of the structure instead.
    A dataclass `__init__` is generated unless you write one; inside your own `__init__`
    assign `self.x = ...`, and after it the instance is frozen.

    A subclass without its own `__init__` keeps a custom `__init__` that comes first in its
    MRO (also a mixin's), rather than getting a generated one as a plain dataclass would.
    A field that a subclass overrides with a property or a class attribute is read
    from there and holds no leaves, unless `__init__` sets it.

    Every class in the MRO that defines `__check_init__(self)` has it called after
    construction (no `super()` needed): validate invariants there. Methods looked up on an
    instance are pytrees too (a `BoundMethod` whose leaves are the instance's), so
    `filter_jit(model.method)` and `jax.tree_util.tree_leaves(model.method)` work.

    !!! example
        ```python
        >>> import jax.numpy as jnp
        >>> import larix
        >>> class Affine(larix.Module):
        ...     weight: jnp.ndarray
        ...     bias: jnp.ndarray
        ...     name: str = larix.field(static=True, default="affine")
        ...
        ...     def __call__(self, x):
        ...         return self.weight * x + self.bias
        >>> f = Affine(jnp.array(2.0, jnp.float32), jnp.array(1.0, jnp.float32), name="double")
        >>> f(3.0)
        Array(7., dtype=float32)
        >>> f
        Affine(weight=f32[], bias=f32[], name='double')

        ```
    """

    __abstractvars__: typing.ClassVar[frozenset[str]] = frozenset()
    __abstractclassvars__: typing.ClassVar[frozenset[str]] = frozenset()
    _larix_flat: typing.ClassVar[Any] = _FlatCache()

    def __setattr__(self, name: str, value: Any) -> None:
        if _INITIALISING in self.__dict__:
            if name in self.__dataclass_fields__ or name == "__wrapped__":
                if isinstance(value, (BoundMethod, types.MethodType)) and value.__self__ is self:
                    _refuse_own_method(self, name, value)
                object.__setattr__(self, name, value)
                return
            raise dataclasses.FrozenInstanceError(
                f"Cannot set {type(self).__name__}.{name}: it is not a field. Declare it in the "
                f"class body (`{name}: ...`, or `{name}: ... = larix.field(static=True)` for "
                "non-array configuration) so that it is part of the tree."
            )
        if name == "__orig_class__":
            # Set by `typing` on `Model[int](...)`; not a field, so not part of the tree.
            object.__setattr__(self, name, value)
            return
        raise dataclasses.FrozenInstanceError(
            f"Cannot set {type(self).__name__}.{name}: Modules are frozen after __init__. "
            f"Build a changed copy with larix.tree_at(lambda m: m.{name}, model, new_value)."
        )

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(
            f"Cannot delete {type(self).__name__}.{name}: Modules are frozen. Build a changed "
            f"copy with larix.tree_at(lambda m: m.{name}, model, None)."
        )

    def __eq__(self, other: object) -> Any:  # type: ignore[override]
        from ._tree import tree_equal

        return tree_equal(self, other)

    def __hash__(self) -> int:
        leaves, treedef = jtu.tree_flatten(self)
        return hash((treedef, tuple(leaves)))

    def __repr__(self) -> str:
        from ._pformat import tree_pformat

        return tree_pformat(self)

    def __getstate__(self) -> dict[str, Any]:
        # Only the fields travel: caches that larix keeps on an instance are rebuilt.
        return {f.name: self.__dict__[f.name] for f in self._larix_fields}


class BoundMethod(Module):
    """A method bound to a Module instance, itself a pytree with the instance's leaves."""

    __func__: Callable[..., Any] = field(static=True)
    __self__: Module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        fn = self.__func__
        return call_method(fn, getattr(fn, "__name__", "method"), self.__self__, args, kwargs)

    @property
    def __wrapped__(self) -> Callable[..., Any]:
        return types.MethodType(self.__func__, self.__self__)

    @property
    def __name__(self) -> str:  # type: ignore[override]
        return self.__func__.__name__


def module_update_wrapper(wrapper: Module, wrapped: Any = None) -> Module:
    """Like `functools.update_wrapper`, for a Module that wraps a callable.

    Copies `__module__`, `__name__`, `__qualname__`, `__doc__` and `__annotations__` of the
    wrapped callable (`wrapped`, or else `wrapper.__wrapped__`) onto a copy of `wrapper`,
    without unfreezing it.

    **Returns:** the updated copy of `wrapper`.
    """
    if wrapped is None:
        try:
            wrapped = wrapper.__wrapped__  # type: ignore[attr-defined]
        except AttributeError:
            raise TypeError(
                f"module_update_wrapper: {type(wrapper).__name__} has no `__wrapped__`. Pass "
                "the wrapped callable explicitly, or define a `__wrapped__` property."
            ) from None
    leaves, treedef = jtu.tree_flatten(wrapper)
    new = jtu.tree_unflatten(treedef, leaves)
    for attr in functools.WRAPPER_ASSIGNMENTS:
        try:
            value = getattr(wrapped, attr)
        except AttributeError:
            continue
        if any(isinstance(k.__dict__.get(attr), property) for k in type(new).__mro__):
            continue  # e.g. BoundMethod.__name__, computed from the wrapped function already
        object.__setattr__(new, attr, value)
    return new

