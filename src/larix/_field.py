"""Module fields: `field`, the abstract annotations, and the descriptor through which an
instance's fields are read and (only while `__init__` runs, or by misuse) written."""

from __future__ import annotations

import dataclasses
import inspect
import re
import warnings
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import jax.tree_util as jtu

__all__ = ["AbstractClassVar", "AbstractVar", "field", "static_field"]

_T = TypeVar("_T")

# Present in an instance's __dict__ only while its __init__ runs: the one window in which
# attributes may be assigned. Per-instance, so construction is thread-safe.
_INITIALISING = "__larix_initialising__"


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
    warnings.warn(
        "larix.static_field is deprecated (as equinox.static_field is): write "
        "`larix.field(static=True, ...)` instead.",
        DeprecationWarning,
        stacklevel=2,
    )
    return field(static=True, **kwargs)


class AbstractVar(Generic[_T]):
    """Annotate `x: AbstractVar[int]` to require every concrete subclass to provide `x`,
    as a field, a class attribute or a property. Instantiating a class that still lacks it
    raises `TypeError`."""


class AbstractClassVar(Generic[_T]):
    """Annotate `x: AbstractClassVar[int]` to require every concrete subclass to provide `x`
    as a class attribute (`x: ClassVar[int] = 3` or `x = 3`), not as a field."""


_ABSTRACT_STRING = re.compile(r"^(?:[\w.]*\.)?(AbstractVar|AbstractClassVar)\[")


_BARE_ABSTRACT_STRING = re.compile(r"^(?:[\w.]*\.)?(AbstractVar|AbstractClassVar)$")


def _abstract_kind(annotation: Any) -> str | None:
    # Annotations are strings under `from __future__ import annotations`: match their text.
    if isinstance(annotation, str):
        match = _ABSTRACT_STRING.match(annotation.strip())
        if match is None and _BARE_ABSTRACT_STRING.match(annotation.strip()):
            return "bare"
        return match.group(1) if match else None
    if annotation is AbstractVar or annotation is AbstractClassVar:
        return "bare"
    origin = getattr(annotation, "__origin__", None)
    if origin is AbstractVar:
        return "AbstractVar"
    if origin is AbstractClassVar:
        return "AbstractClassVar"
    return None


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


class _Unset:
    """The value of a field that a subclass provides as a class attribute instead (see
    `_ProvidedField`): an empty pytree, so the tree has no leaves there."""

    def __repr__(self) -> str:
        return "UNSET"

    def __reduce__(self) -> str:
        return "UNSET"  # pickling keeps the singleton


UNSET = _Unset()
jtu.register_pytree_node(_Unset, lambda _: ((), None), lambda _, __: UNSET)


class _ProvidedField(_Field):
    """A field that a subclass overrides with a class attribute of its own (a property, a
    constant), as older Equinox code does to make a field "abstract".

    As in Equinox, the instance need not set it: reads then give the class attribute and
    the tree holds `UNSET` there (no leaves). A value set in `__init__` wins, as an
    instance attribute does in Python; a property without a setter refuses it.
    """

    __slots__ = ("provider",)

    def __init__(self, name: str, default: Any, provider: Any):
        super().__init__(name, default)
        self.provider = provider

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        if instance is not None:
            value = instance.__dict__.get(self.name, UNSET)
            if value is not UNSET:
                return value
        get = getattr(type(self.provider), "__get__", None)
        return self.provider if get is None else get(self.provider, instance, owner)

    def __set__(self, instance: Any, value: Any) -> None:
        set_ = getattr(type(self.provider), "__set__", None)
        if set_ is not None:
            set_(self.provider, instance, value)
        else:
            super().__set__(instance, value)


def _provider(cls: type, name: str, own: Any) -> Any:
    """The class attribute that overrides the inherited field `name` in `cls`, or UNSET."""
    for k in cls.__mro__:
        if name in k.__dict__:
            value = k.__dict__[name]
            if isinstance(value, _Field) or (k is cls and name in own):
                return UNSET  # our descriptor, or a field (re)declared in this body
            return value
    return UNSET


def _converter_annotation(converter: Any) -> Any:
    """The type a generated `__init__` accepts for a converted field: what the converter
    takes (its first parameter's annotation), not what the field holds."""
    try:
        parameters = list(inspect.signature(converter).parameters.values())
    except (TypeError, ValueError):  # builtins such as `str` may have no signature
        return Any
    if not parameters or parameters[0].annotation is inspect.Parameter.empty:
        return Any
    return parameters[0].annotation
