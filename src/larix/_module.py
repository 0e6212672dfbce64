"""Module: a frozen dataclass whose fields are the leaves of a pytree."""

from __future__ import annotations

import abc
import dataclasses
import functools
import inspect
import operator
import re
import types
import typing
import warnings
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import jax.tree_util as jtu

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

_T = TypeVar("_T")

# Present in an instance's __dict__ only while its __init__ runs: the one window in which
# attributes may be assigned. Per-instance, so construction is thread-safe.
_INITIALISING = "__larix_initialising__"

# Every Module subclass: `type(x) in MODULE_TYPES` is a set lookup, where isinstance() on an
# ABCMeta class runs Python code. Used on filter_jit's per-call path.
MODULE_TYPES: set[type] = set()


def field(*, converter: Callable[[Any], Any] | None = None, static: bool = False, **kwargs: Any) -> Any:
    """Declare a Module field, like `dataclasses.field` with two more options.

    **Arguments:**

    - `converter`: called on the field's value once `__init__` has finished (also when you
      write your own `__init__`), before `__check_init__` runs. Use it to turn inputs into
      arrays, for example `converter=jnp.asarray`.
    - `static`: if `True`, the value is part of the tree *structure* (the treedef's aux
      data) rather than a leaf. Filtered transforms then see it as a compile-time constant,
      and changing it recompiles. Use it for non-array configuration that must stay hashable.
    - `**kwargs`: passed to `dataclasses.field` (`default`, `default_factory`, `init`, ...).

    **Returns:**

    A `dataclasses.Field` to use as the default value in the class body.
    """
    metadata = dict(kwargs.pop("metadata", None) or {})
    for key in ("converter", "static"):
        if key in metadata:
            raise ValueError(
                f"larix.field(metadata={{'{key}': ...}}) is ambiguous: pass `{key}=` to "
                "larix.field directly instead of through metadata."
            )
    if converter is not None:
        if not callable(converter):
            raise TypeError(f"larix.field(converter=...) must be callable, got {converter!r}.")
        metadata["converter"] = converter
    if static:
        metadata["static"] = True
    return dataclasses.field(metadata=metadata, **kwargs)


def static_field(**kwargs: Any) -> Any:
    """Deprecated spelling of `larix.field(static=True, **kwargs)`, kept for Equinox code."""
    return field(static=True, **kwargs)


class AbstractVar(Generic[_T]):
    """Annotate `x: AbstractVar[int]` to require every concrete subclass to provide `x`,
    as a field, a class attribute or a property. Instantiating a class that still lacks it
    raises `TypeError`."""


class AbstractClassVar(Generic[_T]):
    """Annotate `x: AbstractClassVar[int]` to require every concrete subclass to provide `x`
    as a class attribute (`x: ClassVar[int] = 3` or `x = 3`), not as a field."""


_ABSTRACT_STRING = re.compile(r"^(?:[\w.]*\.)?(AbstractVar|AbstractClassVar)\[")


def _abstract_kind(annotation: Any) -> str | None:
    # Annotations are strings under `from __future__ import annotations`: match their text.
    if isinstance(annotation, str):
        match = _ABSTRACT_STRING.match(annotation.strip())
        return match.group(1) if match else None
    origin = getattr(annotation, "__origin__", None)
    if origin is AbstractVar:
        return "AbstractVar"
    if origin is AbstractClassVar:
        return "AbstractClassVar"
    return None


def _is_classvar_annotation(annotation: Any) -> bool:
    if isinstance(annotation, str):
        return re.match(r"^(?:[\w.]*\.)?ClassVar\b", annotation.strip()) is not None
    return annotation is typing.ClassVar or getattr(annotation, "__origin__", None) is typing.ClassVar


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


# Mutation epoch. Modules are frozen, but `object.__setattr__(module, name, value)` (used by
# some libraries and debuggers) still reaches a field through its descriptor below. Every
# memo that covers a whole subtree (filter_jit's split, larix.split's) records the epoch it
# was made in and is used only while the epoch is unchanged, since a parent cannot know
# that a Module inside it was changed. One list item, so that hot paths read it cheaply.
EPOCH = [0]
# The per-instance memos, dropped from an instance whose field is changed.
MEMO_NAMES: tuple[str, ...] = ("_larix_flat", "__larix_jit__", "__larix_split__")


class _Field:
    """The descriptor of one Module field: reads the instance's `__dict__`, and notices writes.

    A data descriptor, so that `object.__setattr__` goes through `__set__` too: after
    `__init__`, a write drops the instance's memos and moves the mutation epoch on, so that
    no cached flatten or split can return the old value (invariant: a memo is used only if
    no field of any Module was written after `__init__` since it was made). Class-level
    access gives the default, as for a plain dataclass.
    """

    __slots__ = ("default", "name")

    def __init__(self, name: str, default: Any):
        self.name = name
        self.default = default

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        if instance is not None:
            try:
                return instance.__dict__[self.name]
            except KeyError:
                pass
        if self.default is dataclasses.MISSING:
            raise AttributeError(
                f"'{(owner or type(instance)).__name__}' object has no attribute '{self.name}'"
            )
        return self.default

    def __set__(self, instance: Any, value: Any) -> None:
        d = instance.__dict__
        if _INITIALISING not in d:
            _forget_memos(d)
        d[self.name] = value

    def __delete__(self, instance: Any) -> None:
        d = instance.__dict__
        if _INITIALISING not in d:
            _forget_memos(d)
        try:
            del d[self.name]
        except KeyError:
            raise AttributeError(self.name) from None


def _forget_memos(d: dict[str, Any]) -> None:
    for name in MEMO_NAMES:
        d.pop(name, None)
    EPOCH[0] += 1


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
            flatten, flatten_with_keys, unflatten = _make_flatten(cls, (), ())
            jtu.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten_func=flatten)
            return cls

        custom_init = "__init__" in namespace or any(
            getattr(b, "_larix_custom_init", False) for b in bases if isinstance(b, _ModuleMeta)
        )
        cls._larix_custom_init = custom_init
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
        for f in fields:
            current = inspect.getattr_static(cls, f.name, None)
            if f.name in cls.__dict__ or not isinstance(current, _Field):
                type.__setattr__(cls, f.name, _Field(f.name, f.default))
        # The generated __init__ sets every field except `init=False` ones without default.
        cls._larix_fill_fields = custom_init or any(not f.init for f in fields)
        cls._larix_converters = tuple((f.name, f.metadata["converter"]) for f in fields if "converter" in f.metadata)
        dynamic = tuple(f.name for f in fields if not f.metadata.get("static", False))
        static = tuple(f.name for f in fields if f.metadata.get("static", False))
        cls._larix_static_fields = static
        cls._larix_dynamic_fields = dynamic
        cls._larix_check_inits = tuple(
            k.__dict__["__check_init__"] for k in cls.__mro__ if "__check_init__" in k.__dict__
        )
        _set_abstract_vars(cls, new_abstract_vars, annotations, namespace)
        flatten, flatten_with_keys, unflatten = _make_flatten(cls, dynamic, static)
        jtu.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten_func=flatten)
        return cls

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls.__larix_abstract_vars__:
            missing = ", ".join(f"'{n}' ({k})" for n, k in sorted(cls.__larix_abstract_vars__.items()))
            raise TypeError(
                f"Can't instantiate abstract class {cls.__name__}: it does not provide {missing}. "
                "Define them in a subclass: an AbstractVar as a field (`x: int`), a class "
                "attribute or a property; an AbstractClassVar as a class attribute."
            )
        self = cls.__new__(cls)  # object.__new__ refuses classes with abstract methods
        d = self.__dict__
        d[_INITIALISING] = True
        try:
            self.__init__(*args, **kwargs)
            if cls._larix_fill_fields:
                _fill_unset_fields(cls, d)
            for name, converter in cls._larix_converters:
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


def _set_abstract_vars(cls: Any, new: dict[str, str], annotations: dict[str, Any], namespace: dict[str, Any]) -> None:
    declared: dict[str, str] = {}
    for base in reversed(cls.__mro__[1:]):
        declared.update(getattr(base, "__larix_abstract_vars__", {}))
    remaining: dict[str, str] = {}
    for name, kind in declared.items():
        if name in new:
            continue
        in_body = name in namespace
        as_field = name in annotations and not _is_classvar_annotation(annotations[name])
        if kind == "AbstractClassVar" and as_field and not in_body:
            raise TypeError(
                f"{cls.__name__}.{name} was declared AbstractClassVar in a parent class, so it "
                f"must be a class attribute, not a field. Write `{name}: ClassVar[...] = ...`."
            )
        # Provided anywhere in the MRO: in this body, by a class between (a field there has
        # its descriptor in the class dict), or by `__init_subclass__`, which has run already.
        if not (name in annotations or any(name in vars(k) for k in cls.__mro__[:-1])):
            remaining[name] = kind
    remaining.update(new)
    cls.__larix_abstract_vars__ = remaining


def _fill_unset_fields(cls: Any, d: dict[str, Any]) -> None:
    for f in cls._larix_fields:
        if f.name in d:
            continue
        if f.default is not dataclasses.MISSING:
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


class Module(metaclass=_ModuleMeta):
    """Base class for models: a frozen dataclass that is a pytree.

    Subclasses declare their fields with annotations. Fields are the pytree's children, in
    declaration order; `larix.field(static=True)` ones are part of the structure instead.
    A dataclass `__init__` is generated unless you write one; inside your own `__init__`
    assign `self.x = ...`, and after it the instance is frozen.

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

    __larix_abstract_vars__: typing.ClassVar[dict[str, str]] = {}
    _larix_flat: typing.ClassVar[Any] = _FlatCache()

    def __setattr__(self, name: str, value: Any) -> None:
        if _INITIALISING in self.__dict__:
            if name in self.__dataclass_fields__ or name == "__wrapped__":
                object.__setattr__(self, name, value)
                return
            raise dataclasses.FrozenInstanceError(
                f"Cannot set {type(self).__name__}.{name}: it is not a field. Declare it in the "
                f"class body (`{name}: ...`, or `{name}: ... = larix.field(static=True)` for "
                "non-array configuration) so that it is part of the tree."
            )
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

