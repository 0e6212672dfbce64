"""Tests for larix._module: Module, field, static_field, AbstractVar, AbstractClassVar,
BoundMethod and module_update_wrapper."""

from __future__ import annotations

import abc
import copy
import dataclasses
import functools
import inspect
import pickle
import sys
import textwrap
import types
import warnings
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest
from hypothesis import given

import larix
from conftest import Box, Linear, Pair, make_linear, pytrees, pytrees_no_arrays

# --------------------------------------------------------------------------- construction


class Point(larix.Module):
    x: Any
    y: Any = 0
    tags: list = larix.field(default_factory=list)


def test_generated_init_positional_keyword_and_defaults():
    p = Point(1, y=2)
    assert (p.x, p.y, p.tags) == (1, 2, [])
    q = Point(x=3)
    assert (q.x, q.y) == (3, 0)
    # default_factory gives each instance its own object
    assert Point(1).tags is not Point(1).tags


def test_generated_init_missing_argument_is_type_error():
    with pytest.raises(TypeError, match="'x'"):
        Point()


def test_custom_init_assigns_fields():
    class Scaled(larix.Module):
        w: Any
        n: int = larix.field(static=True)

        def __init__(self, n):
            self.n = n
            self.w = jnp.ones(n)

    s = Scaled(3)
    assert s.n == 3
    assert s.w.shape == (3,)
    assert jtu.tree_leaves(s) == [s.w]


def test_assignment_after_init_is_frozen_instance_error():
    lin = make_linear()
    with pytest.raises(dataclasses.FrozenInstanceError) as info:
        lin.weight = jnp.zeros((3, 4))
    assert isinstance(info.value, AttributeError)
    message = str(info.value)
    assert "Linear.weight" in message
    assert "frozen" in message
    assert "larix.tree_at(lambda m: m.weight" in message
    # the instance is unchanged
    assert lin.weight.shape == (3, 4) and float(jnp.sum(lin.weight)) != 0.0


def test_assigning_a_new_attribute_after_init_is_frozen_instance_error():
    lin = make_linear()
    with pytest.raises(AttributeError, match=r"Linear\.extra.*frozen"):
        lin.extra = 1
    assert "extra" not in lin.__dict__


def test_delete_attribute_is_frozen_instance_error():
    lin = make_linear()
    with pytest.raises(dataclasses.FrozenInstanceError, match=r"Cannot delete Linear\.bias.*tree_at"):
        del lin.bias
    assert "bias" in lin.__dict__


def test_assigning_a_non_field_in_init_errors():
    class Sloppy(larix.Module):
        w: Any

        def __init__(self):
            self.w = 1
            self.hidden = 2

    with pytest.raises(dataclasses.FrozenInstanceError) as info:
        Sloppy()
    message = str(info.value)
    assert "Sloppy.hidden" in message
    assert "not a field" in message
    assert "hidden: ..." in message  # shows the fix: declare it


def test_frozen_after_custom_init():
    class Custom(larix.Module):
        w: Any

        def __init__(self, w):
            self.w = w

    c = Custom(1)
    with pytest.raises(dataclasses.FrozenInstanceError, match="tree_at"):
        c.w = 2


def test_unset_field_in_custom_init_names_the_field():
    class Forgetful(larix.Module):
        w: Any
        b: Any

        def __init__(self):
            self.w = 1

    with pytest.raises(TypeError) as info:
        Forgetful()
    message = str(info.value)
    assert "Forgetful.__init__ did not set the field 'b'" in message
    assert "self.b = ..." in message


def test_unset_init_false_field_names_the_field():
    # Regression: a field(init=False) without default, left unset by the generated
    # __init__, used to fail with a bare KeyError('x').
    class NoInit(larix.Module):
        x: int = larix.field(init=False)

    with pytest.raises(TypeError, match="the field 'x'"):
        NoInit()


def test_post_init_may_set_init_false_fields():
    class Doubled(larix.Module):
        x: int
        y: int = larix.field(init=False)

        def __post_init__(self):
            self.y = 2 * self.x

    d = Doubled(3)
    assert (d.x, d.y) == (3, 6)
    assert jtu.tree_leaves(d) == [3, 6]


def test_custom_init_that_skips_defaulted_fields_gets_defaults():
    class Defaults(larix.Module):
        w: Any
        depth: int = 4
        extra: list = larix.field(default_factory=lambda: [1, 2])

        def __init__(self, w):
            self.w = w

    d = Defaults(1.0)
    assert d.depth == 4
    assert d.extra == [1, 2]
    assert "depth" in d.__dict__  # a real field value, not just the class attribute
    assert jtu.tree_leaves(d) == [1.0, 4, 1, 2]


def test_inherited_custom_init():
    class Parent(larix.Module):
        w: Any

        def __init__(self, n):
            self.w = jnp.zeros(n)

    class Child(Parent):
        scale: float = 2.0

    class Strict(Parent):
        needed: Any

    c = Child(3)
    assert c.w.shape == (3,)
    assert c.scale == 2.0
    assert inspect.signature(Child) == inspect.signature(Parent)
    with pytest.raises(TypeError, match=r"Strict\.__init__ did not set the field 'needed'"):
        Strict(2)


def test_generated_init_in_subclass_of_generated_init():
    class Base(larix.Module):
        a: int

    class Derived(Base):
        b: int = 5

    assert Derived(1).b == 5
    assert Derived(1, 2).b == 2


def test_base_module_can_be_instantiated():
    # Regression: `larix.Module()` raised AttributeError (Equinox allows it).
    empty = larix.Module()
    assert jtu.tree_leaves(empty) == []
    assert empty == larix.Module()
    assert hash(empty) == hash(larix.Module())
    assert repr(empty) == "Module()"
    with pytest.raises(dataclasses.FrozenInstanceError):
        empty.x = 1


def test_exception_in_init_leaves_no_initialising_marker():
    class Failing(larix.Module):
        w: Any

        def __init__(self, fail):
            self.w = 1
            if fail:
                raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        Failing(True)
    ok = Failing(False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ok.w = 2


# --------------------------------------------------------------------------- fields


def test_static_field_is_in_treedef_not_leaves():
    a = Linear(jnp.ones((2, 2)), jnp.ones(2), activation="relu")
    b = Linear(jnp.ones((2, 2)), jnp.ones(2), activation="gelu")
    leaves_a, treedef_a = jtu.tree_flatten(a)
    assert len(leaves_a) == 2
    assert all(not isinstance(x, str) for x in leaves_a)
    assert treedef_a != jtu.tree_structure(b)
    assert "relu" in str(treedef_a)
    rebuilt = jtu.tree_unflatten(treedef_a, leaves_a)
    assert rebuilt.activation == "relu"
    assert rebuilt.weight is a.weight


def test_static_field_is_a_compile_time_constant_under_jit():
    traces = []

    @jax.jit
    def f(m):
        traces.append(m.activation)
        assert isinstance(m.activation, str)  # not traced
        return m.bias

    f(Linear(jnp.ones((2, 2)), jnp.ones(2), activation="a"))
    f(Linear(jnp.zeros((2, 2)), jnp.zeros(2), activation="a"))
    f(Linear(jnp.ones((2, 2)), jnp.ones(2), activation="b"))
    assert traces == ["a", "b"]


def test_static_field_alias_works_and_is_deprecated():
    with pytest.warns(DeprecationWarning, match=r"larix\.field\(static=True"):

        class Old(larix.Module):
            n: int = larix.static_field(default=3)

    assert jtu.tree_leaves(Old()) == []
    assert Old().n == 3
    assert dataclasses.fields(Old)[0].metadata["static"] is True


def test_field_passes_dataclass_kwargs_and_keeps_metadata():
    class WithMeta(larix.Module):
        x: int = larix.field(default=1, repr=False, metadata={"doc": "hello"})

    f = dataclasses.fields(WithMeta)[0]
    assert f.metadata["doc"] == "hello"
    assert "x=" not in repr(WithMeta())


def test_field_errors():
    with pytest.raises(TypeError, match=r"converter=\.\.\.\) must be callable"):
        larix.field(converter=3)
    with pytest.raises(ValueError, match=r"pass `static=` to larix\.field directly"):
        larix.field(metadata={"static": True})
    with pytest.raises(ValueError, match=r"pass `converter=` to larix\.field directly"):
        larix.field(metadata={"converter": jnp.asarray})


def test_converter_runs_after_generated_init_and_before_check_init():
    seen = []

    class Converted(larix.Module):
        x: Any = larix.field(converter=jnp.asarray)
        y: Any = larix.field(converter=lambda v: v * 10, default=1)

        def __check_init__(self):
            seen.append((type(self.x), self.y))

    c = Converted(1.5)
    assert isinstance(c.x, jax.Array)
    assert c.y == 10
    assert seen == [(type(jnp.asarray(1.5)), 10)]


def test_converter_runs_after_custom_init_and_after_post_init():
    order = []

    class Custom(larix.Module):
        x: Any = larix.field(converter=lambda v: order.append("convert") or np.asarray(v))

        def __init__(self, x):
            order.append("init")
            self.x = x

        def __check_init__(self):
            order.append("check")
            assert isinstance(self.x, np.ndarray)

    Custom([1, 2])
    assert order == ["init", "convert", "check"]

    order.clear()

    class PostInit(larix.Module):
        x: Any = larix.field(converter=lambda v: order.append("convert") or v)

        def __post_init__(self):
            order.append("post_init")

    PostInit(1)
    assert order == ["post_init", "convert"]


def test_converter_applies_to_default_filled_by_custom_init():
    class C(larix.Module):
        x: Any = larix.field(converter=jnp.asarray, default=2)

        def __init__(self):
            pass

    assert isinstance(C().x, jax.Array)


def test_check_init_runs_for_every_class_most_derived_first():
    calls = []

    class A(larix.Module):
        x: int

        def __check_init__(self):
            calls.append("A")

    class B(A):
        def __check_init__(self):
            calls.append("B")  # no super() call

    class C(B):
        y: int = 0

    class D(C):
        def __check_init__(self):
            calls.append("D")

    D(1)
    assert calls == ["D", "B", "A"]
    calls.clear()
    C(1)
    assert calls == ["B", "A"]


def test_check_init_can_reject_and_cannot_assign():
    class Positive(larix.Module):
        x: int

        def __check_init__(self):
            if self.x <= 0:
                raise ValueError(f"x must be positive, got {self.x}")

    assert Positive(1).x == 1
    with pytest.raises(ValueError, match="got -1"):
        Positive(-1)

    class Sneaky(larix.Module):
        x: int

        def __check_init__(self):
            self.x = 3

    with pytest.raises(dataclasses.FrozenInstanceError, match="frozen"):
        Sneaky(1)


# --------------------------------------------------------------------------- abstract


class AbstractModel(larix.Module):
    size: larix.AbstractVar[int]
    kind: larix.AbstractClassVar[str]
    w: Any


def test_abstract_vars_block_instantiation_and_name_what_is_missing():
    with pytest.raises(TypeError) as info:
        AbstractModel(1)
    message = str(info.value)
    assert "AbstractModel" in message
    assert "'size' (AbstractVar)" in message
    assert "'kind' (AbstractClassVar)" in message


def test_abstract_vars_are_not_fields():
    assert [f.name for f in dataclasses.fields(AbstractModel)] == ["w"]


def test_abstract_vars_satisfied_by_field_and_class_attribute():
    class Concrete(AbstractModel):
        size: int
        kind: ClassVar[str] = "dense"

    c = Concrete(jnp.ones(2), 3)
    assert c.size == 3 and c.kind == "dense"
    assert [f.name for f in dataclasses.fields(Concrete)] == ["w", "size"]


def test_abstract_var_satisfied_by_property_and_plain_class_attribute():
    class ViaProperty(AbstractModel):
        kind = "prop"

        @property
        def size(self):
            return self.w.shape[0]

    assert ViaProperty(jnp.ones(5)).size == 5


def test_partially_concrete_subclass_names_only_what_remains():
    class Half(AbstractModel):
        kind = "half"

    with pytest.raises(TypeError) as info:
        Half(1)
    assert "'size' (AbstractVar)" in str(info.value)
    assert "kind" not in str(info.value)


def test_redeclaring_abstract_var_keeps_it_abstract():
    class StillAbstract(AbstractModel):
        size: larix.AbstractVar[int]
        kind = "x"

    with pytest.raises(TypeError, match="'size'"):
        StillAbstract(1)


def test_abstract_class_var_may_be_provided_as_a_field_as_in_equinox():
    class AsField(AbstractModel):
        size: int
        kind: str

    m = AsField(w=1, size=2, kind="field")
    assert (m.w, m.size, m.kind) == (1, 2, "field")
    assert jtu.tree_leaves(m) == [1, 2, "field"]


def test_abstract_names_are_listed_as_equinox_lists_them():
    assert AbstractModel.__abstractvars__ == frozenset({"size"})
    assert AbstractModel.__abstractclassvars__ == frozenset({"kind"})

    class Half(AbstractModel):
        size: int

    assert Half.__abstractvars__ == frozenset() and Half.__abstractclassvars__ == {"kind"}
    with pytest.raises(TypeError, match=r"abstract class attributes 'kind'") as info:
        Half(w=1, size=2)
    assert "abstract attributes" not in str(info.value)

    class Stronger(AbstractModel):  # an AbstractClassVar stays one when re-declared AbstractVar
        kind: larix.AbstractVar[str]

    assert Stronger.__abstractclassvars__ == frozenset({"kind"})
    assert larix.Module.__abstractvars__ == frozenset()


def test_abstract_annotations_without_a_type_or_with_a_value_are_refused():
    with pytest.raises(TypeError, match=r"Bare\.x is annotated with an unsubscripted `(larix\.)?AbstractVar`"):

        class Bare(larix.Module):
            x: larix.AbstractVar  # type: ignore[type-arg]

    with pytest.raises(TypeError, match=r"`y: (larix\.)?AbstractClassVar\[int\]`"):

        class BareClassVar(larix.Module):
            y: larix.AbstractClassVar  # type: ignore[type-arg]

    with pytest.raises(TypeError, match=r"WithValue\.x is declared AbstractVar\[\.\.\.\], so it cannot have value True"):

        class WithValue(larix.Module):
            x: larix.AbstractVar[bool] = True  # type: ignore[assignment]


def test_abstractmethod_blocks_instantiation():
    class WithAbstractMethod(larix.Module):
        @abc.abstractmethod
        def forward(self, x): ...

    class Implements(WithAbstractMethod):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="forward"):
        WithAbstractMethod()
    assert Implements().forward(3) == 3


_FUTURE_SOURCE = textwrap.dedent(
    """
    from __future__ import annotations
    from typing import Any, ClassVar
    import larix
    from larix import AbstractVar

    class Abstract(larix.Module):
        size: AbstractVar[int]
        kind: larix.AbstractClassVar[str]
        w: Any

    class Concrete(Abstract):
        size: int
        kind: ClassVar[str] = "dense"

    class ViaAttributes(Abstract):
        size = 4
        kind = "attr"
    """
)


@pytest.fixture(scope="module")
def future_module():
    """A module written with `from __future__ import annotations` (string annotations)."""
    name = "larix_test_future_annotations"
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses resolves ClassVar strings through sys.modules
    try:
        exec(compile(_FUTURE_SOURCE, f"<{name}>", "exec"), module.__dict__)
        yield module
    finally:
        del sys.modules[name]


def test_abstract_vars_with_string_annotations(future_module):
    assert future_module.Abstract.__annotations__["w"] == "Any"  # annotations really are strings
    with pytest.raises(TypeError) as info:
        future_module.Abstract(1)
    assert "'size' (AbstractVar)" in str(info.value)
    assert "'kind' (AbstractClassVar)" in str(info.value)
    c = future_module.Concrete(w=1, size=2)
    assert (c.w, c.size, c.kind) == (1, 2, "dense")
    assert [f.name for f in dataclasses.fields(future_module.Concrete)] == ["w", "size"]
    v = future_module.ViaAttributes(w=1)
    assert (v.size, v.kind) == (4, "attr")
    assert jtu.tree_leaves(v) == [1]


def test_abstract_class_var_as_field_with_string_annotations(future_module):
    namespace: dict[str, Any] = {"__name__": future_module.__name__}
    source = "from __future__ import annotations\nclass AsField(Abstract):\n    size: int\n    kind: str\n"
    namespace["Abstract"] = future_module.Abstract
    exec(compile(source, "<as-field>", "exec"), namespace)
    assert namespace["AsField"](w=1, size=2, kind="k").kind == "k"


# --------------------------------------------------------------------------- methods


def test_methods_are_bound_method_pytrees():
    lin = make_linear()
    method = lin.scaled
    assert isinstance(method, larix.BoundMethod)
    assert isinstance(method, larix.Module)
    leaves = jtu.tree_leaves(method)
    assert len(leaves) == 2
    assert all(a is b for a, b in zip(leaves, jtu.tree_leaves(lin)))
    x = jnp.arange(4.0)
    np.testing.assert_allclose(method(x), 2.0 * (lin.weight @ x + lin.bias), rtol=1e-6)
    np.testing.assert_allclose(method(x, scale=3.0), 3.0 * (lin.weight @ x + lin.bias), rtol=1e-6)


def test_method_on_class_is_the_plain_function():
    assert isinstance(Linear.scaled, types.FunctionType)
    lin = make_linear()
    np.testing.assert_allclose(Linear.scaled(lin, jnp.ones(4)), lin.scaled(jnp.ones(4)))


def test_bound_method_passes_through_jit_as_argument():
    lin = make_linear()
    traces = []

    @jax.jit
    def apply(fn, x):
        traces.append(1)
        return fn(x)

    x = jnp.ones(4)
    np.testing.assert_allclose(apply(lin.scaled, x), lin.scaled(x), rtol=1e-6)
    other = make_linear(seed=1)
    np.testing.assert_allclose(apply(other.scaled, x), other.scaled(x), rtol=1e-6)
    assert len(traces) == 1  # the weights are traced arguments, not constants


def test_bound_method_tree_map_and_grad():
    lin = make_linear()
    doubled = jtu.tree_map(lambda a: 2 * a, lin.scaled)
    assert isinstance(doubled, larix.BoundMethod)
    assert isinstance(doubled.__self__, Linear)
    np.testing.assert_allclose(doubled.__self__.weight, 2 * lin.weight)
    x = jnp.ones(4)
    np.testing.assert_allclose(doubled(x), 2.0 * (2 * lin.weight @ x + 2 * lin.bias), rtol=1e-6)
    grads = jax.grad(lambda f: jnp.sum(f(x)))(lin.scaled)
    assert isinstance(grads, larix.BoundMethod)
    np.testing.assert_allclose(grads.__self__.bias, 2.0 * jnp.ones(3))


def test_bound_method_key_paths_signature_and_name():
    lin = make_linear()
    paths = [jtu.keystr(p) for p, _ in jtu.tree_flatten_with_path(lin.scaled)[0]]
    assert paths == [".__self__.weight", ".__self__.bias"]
    assert lin.scaled.__name__ == "scaled"
    assert list(inspect.signature(lin.scaled).parameters) == ["x", "scale"]


def test_bound_method_equality_and_repr():
    a, b = make_linear(seed=0), make_linear(seed=1)
    assert bool(a.scaled == a.scaled)
    assert not bool(a.scaled == b.scaled)
    assert not bool(a.scaled == a.__call__)
    assert repr(a.scaled) == "Linear.scaled(self=Linear(weight=f32[3,4], bias=f32[3]))"


def test_dunder_call_works_and_under_jit():
    lin = make_linear()
    x = jnp.arange(4.0)
    expected = lin.weight @ x + lin.bias
    np.testing.assert_allclose(lin(x), expected, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda m, x: m(x))(lin, x), expected, rtol=1e-6)


def test_staticmethod_classmethod_and_property_are_untouched():
    class Tools(larix.Module):
        x: int

        @staticmethod
        def twice(v):
            return 2 * v

        @classmethod
        def make(cls):
            return cls(7)

        @property
        def plus_one(self):
            return self.x + 1

    assert Tools.twice(2) == 4
    assert Tools.make().x == 7
    assert Tools(1).plus_one == 2
    assert Tools(1).twice(3) == 6


# --------------------------------------------------------------------------- dunder behaviour


def test_eq_is_tree_equal():
    a = make_linear(seed=0)
    assert bool(a == make_linear(seed=0))
    assert not bool(a == make_linear(seed=1))
    assert (a == Linear(a.weight, a.bias, activation="relu")) is False  # static differs
    assert (a == Pair(a.weight, a.bias)) is False
    assert (a == 3) is False
    assert Point(1, 2) == Point(1, 2)
    assert Point(1, 2) != Point(1, 3)


def test_eq_under_jit_is_traced():
    a = make_linear()
    out = jax.jit(lambda p, q: p == q)(a, a)
    assert isinstance(out, jax.Array) and bool(out)


def test_hash_of_array_free_modules():
    a, b = Pair(1, (2, "s"), tag="t"), Pair(1, (2, "s"), tag="t")
    assert hash(a) == hash(b)
    assert {a: "found"}[b] == "found"
    assert Pair(1, 2, tag="u") not in {Pair(1, 2, tag="t"): 0}  # static values count


def test_hash_of_module_with_arrays_is_type_error():
    with pytest.raises(TypeError, match="unhashable"):
        hash(make_linear())


@given(pytrees_no_arrays)
def test_hash_consistent_with_eq(tree):
    box = Box(tree)
    try:
        h = hash(box)
    except TypeError:  # lists and dicts inside are unhashable, as in Equinox
        return
    assert h == hash(copy.deepcopy(box))


def test_repr_uses_short_array_forms():
    lin = Linear(jnp.zeros((3, 4)), np.zeros(3, np.float32), activation="relu")
    assert repr(lin) == "Linear(weight=f32[3,4], bias=f32[3](numpy), activation='relu')"
    assert str(lin) == repr(lin)
    nested = Pair(Box(jnp.zeros((), jnp.int32)), [jnp.zeros(2, jnp.bool_)])
    assert repr(nested) == "Pair(a=Box(value=i32[]), b=[bool[2]])"  # defaults left out


def test_dataclasses_replace():
    lin = make_linear()
    new = dataclasses.replace(lin, bias=jnp.zeros(3))
    assert isinstance(new, Linear)
    assert new.weight is lin.weight
    assert float(jnp.sum(jnp.abs(new.bias))) == 0.0
    assert lin.bias is not new.bias
    with pytest.raises(dataclasses.FrozenInstanceError):
        new.bias = 1


def test_copy_deepcopy_and_pickle_round_trip():
    lin = make_linear()
    for clone in (copy.copy(lin), copy.deepcopy(lin), pickle.loads(pickle.dumps(lin))):
        assert type(clone) is Linear
        assert bool(clone == lin)
        assert jtu.tree_structure(clone) == jtu.tree_structure(lin)
        with pytest.raises(dataclasses.FrozenInstanceError):
            clone.weight = None
    assert copy.copy(lin).weight is lin.weight
    nested = Pair(Box(np.arange(3)), {"k": [1, 2.5, "s"]}, tag="t")
    assert bool(pickle.loads(pickle.dumps(nested)) == nested)


def test_pickle_bound_method():
    lin = make_linear()
    restored = pickle.loads(pickle.dumps(lin.scaled))
    assert isinstance(restored, larix.BoundMethod)
    np.testing.assert_allclose(restored(jnp.ones(4)), lin.scaled(jnp.ones(4)))


def test_copy_does_not_share_initialising_state():
    p = Point(1)
    q = copy.deepcopy(p)
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.x = 2
    assert set(q.__dict__) == {"x", "y", "tags"}


# --------------------------------------------------------------------------- warnings


class Holder(larix.Module):
    fn: Any


class StaticHolder(larix.Module):
    value: Any = larix.field(static=True)


@pytest.mark.parametrize("array", [jnp.ones(2), np.ones(2), [1, (np.float32(1.0),)]])
def test_array_in_static_field_warns(array):
    with pytest.warns(UserWarning, match=r"static field StaticHolder\.value.*without `static=True`"):
        StaticHolder(array)


def test_jitted_method_as_field_warns():
    lin = make_linear()
    with pytest.warns(UserWarning, match=r"Holder\.fn holds a JAX-transformed callable"):
        Holder(jax.jit(lin.scaled))
    # Regression: jax.vmap and jax.grad return plain functions, which were skipped.
    with pytest.warns(UserWarning, match=r"Holder\.fn"):
        Holder(jax.vmap(lin))
    with pytest.warns(UserWarning, match=r"Holder\.fn"):
        Holder(jax.grad(lin.scaled))
    # Regression: `model.__call__` is a plain bound method, not a BoundMethod; jitting it
    # hides the parameters just the same.
    with pytest.warns(UserWarning, match=r"Holder\.fn"):
        Holder(jax.jit(lin.__call__))


@pytest.mark.parametrize(
    "fn",
    [jax.nn.relu, jax.nn.gelu, jax.nn.softmax, jnp.tanh, jax.jit(lambda x: x), functools.partial(max, 1)],
    ids=["relu", "gelu", "softmax", "tanh", "jit-lambda", "partial"],
)
def test_plain_functions_as_fields_do_not_warn(fn):
    lin = make_linear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Holder(fn)
        StaticHolder(fn)
        Holder(lin)  # a Module or a BoundMethod is a subtree: its parameters stay visible
        Holder(lin.scaled)
        Holder(larix.Partial(lin.scaled))


# --------------------------------------------------------------------------- structure


def test_signature_shows_init_parameters():
    assert str(inspect.signature(Point)) == "(x: 'Any', y: 'Any' = 0, tags: 'list' = <factory>) -> None"

    class Custom(larix.Module):
        w: Any

        def __init__(self, n: int, *, scale: float = 1.0):
            self.w = n * scale

    assert list(inspect.signature(Custom).parameters) == ["n", "scale"]
    assert inspect.signature(Custom).parameters["scale"].kind is inspect.Parameter.KEYWORD_ONLY


def test_key_paths_are_get_attr_keys():
    tree = Pair(make_linear(), [Box(1.0)])
    paths = [p for p, _ in jtu.tree_flatten_with_path(tree)[0]]
    assert paths[0] == (jtu.GetAttrKey("a"), jtu.GetAttrKey("weight"))
    assert [jtu.keystr(p) for p in paths] == [".a.weight", ".a.bias", ".b[0].value"]


def test_flatten_order_is_declaration_order_including_inherited():
    class Base(larix.Module):
        z: int
        a: int = larix.field(static=True, default=0)
        m: int = 1

    class Derived(Base):
        b: int = 2
        c: int = 3

    d = Derived(10, m=11, b=12, c=13)
    assert [f.name for f in dataclasses.fields(Derived)] == ["z", "a", "m", "b", "c"]
    assert jtu.tree_leaves(d) == [10, 11, 12, 13]
    names = [p[0].name for p, _ in jtu.tree_flatten_with_path(d)[0]]
    assert names == ["z", "m", "b", "c"]

    class Override(Derived):
        z: int = 99  # an overridden field keeps its original position

    assert jtu.tree_leaves(Override()) == [99, 1, 2, 3]


def test_unflatten_does_not_run_init_or_checks():
    calls = []

    class Checked(larix.Module):
        x: Any

        def __check_init__(self):
            calls.append(self.x)

    c = Checked(1)
    jtu.tree_map(lambda v: object(), c)  # leaves that would fail any validation
    assert calls == [1]


@given(pytrees)
def test_module_round_trips_through_flatten(tree):
    box = Pair(tree, Box(tree, scale=2.0))
    leaves, treedef = jtu.tree_flatten(box)
    rebuilt = jtu.tree_unflatten(treedef, leaves)
    assert type(rebuilt) is Pair
    assert bool(larix.tree_equal(rebuilt, box))
    assert rebuilt.b.scale == 2.0


# --------------------------------------------------------------------------- module_update_wrapper


class Wrapper(larix.Module):
    fn: Any

    def __call__(self, *args):
        return self.fn(*args)

    @property
    def __wrapped__(self):
        return self.fn


def _documented(x, y=1):
    """Adds things."""
    return x + y


def test_module_update_wrapper_copies_metadata_without_mutating():
    original = Wrapper(_documented)
    wrapped = larix.module_update_wrapper(original)
    assert wrapped is not original
    assert wrapped.__name__ == "_documented"
    assert wrapped.__doc__ == "Adds things."
    assert wrapped.__qualname__ == "_documented"
    assert wrapped.__module__ == __name__
    assert "__name__" not in original.__dict__
    assert wrapped(1) == 2
    assert list(inspect.signature(wrapped).parameters) == ["x", "y"]
    assert bool(wrapped == original)


def test_module_update_wrapper_with_explicit_wrapped():
    def other():
        """Other doc."""

    wrapped = larix.module_update_wrapper(Wrapper(_documented), other)
    assert wrapped.__name__ == "other"
    assert wrapped.__doc__ == "Other doc."


def test_module_update_wrapper_without_wrapped_errors():
    with pytest.raises(TypeError, match=r"Pair has no `__wrapped__`.*Pass the wrapped callable"):
        larix.module_update_wrapper(Pair(1, 2))


# --------------------------------------------------------------------------- equinox parity


def test_matches_equinox_module_behaviour():
    eqx = pytest.importorskip("equinox")

    class EqxLinear(eqx.Module):
        weight: Any
        bias: Any
        activation: str = eqx.field(static=True, default="identity")

        def scaled(self, x, scale=2.0):
            return scale * (self.weight @ x + self.bias)

    ours = make_linear()
    theirs = EqxLinear(ours.weight, ours.bias)
    assert jtu.tree_leaves(ours) == jtu.tree_leaves(theirs)
    assert [jtu.keystr(p) for p, _ in jtu.tree_flatten_with_path(ours)[0]] == [
        jtu.keystr(p) for p, _ in jtu.tree_flatten_with_path(theirs)[0]
    ]
    assert jtu.tree_leaves(ours.scaled) == jtu.tree_leaves(theirs.scaled)
    for obj in (ours, theirs):
        with pytest.raises(dataclasses.FrozenInstanceError):
            obj.weight = 1


# --------------------------------------------------------------------------- field descriptors


class _WithDefaults(larix.Module):
    weight: Any
    scale: float = 2.0
    tag: str = larix.field(static=True, default="t")


def test_class_level_field_access_gives_the_default_as_a_dataclass_does():
    assert _WithDefaults.scale == 2.0
    assert _WithDefaults.tag == "t"
    with pytest.raises(AttributeError, match="weight"):
        _WithDefaults.weight


def test_custom_init_reads_a_default_before_assigning_it():
    class Layer(larix.Module):
        weight: Any
        use_bias: bool = True

        def __init__(self, weight):
            self.weight = weight * 2 if self.use_bias else weight

    assert Layer(3).weight == 6
    assert Layer(3).use_bias is True


def test_subclass_redeclaring_a_field_keeps_dataclass_semantics():
    class Base(larix.Module):
        x: int = 3

    class Child(Base):
        x: int  # re-declared: a plain dataclass inherits the default 3

    class NoDefault(larix.Module):
        y: Any = larix.field(static=True)

    class ChildOfNoDefault(NoDefault):
        y: Any

    assert Child().x == 3
    with pytest.raises(TypeError):
        ChildOfNoDefault()
    assert jtu.tree_leaves(ChildOfNoDefault(5)) == [5]  # re-declared without static=True: a leaf


def test_object_setattr_after_init_is_seen_by_every_cache():
    """Misuse, but used by libraries and debuggers: no memo may hide the new value."""
    model = _WithDefaults(jnp.array(1.0))
    outer = Pair(model, jnp.array(0.0))
    f = larix.filter_jit(lambda m: m.weight * 1)
    g = larix.filter_jit(lambda p: p.a.weight * 1)
    assert f(model) == 1.0 and g(outer) == 1.0
    assert larix.split(outer, larix.is_array)[1]["a.weight"] == 1.0
    object.__setattr__(model, "weight", jnp.array(5.0))
    assert jtu.tree_leaves(model)[0] == 5.0
    assert f(model) == 5.0
    assert g(outer) == 5.0  # a memo of the *outer* Module too
    assert larix.split(outer, larix.is_array)[1]["a.weight"] == 5.0
    object.__setattr__(model, "tag", "changed")  # a static field: another structure
    assert jtu.tree_structure(model) != jtu.tree_structure(_WithDefaults(jnp.array(5.0)))


def test_object_delattr_after_init_drops_the_field():
    model = _WithDefaults(jnp.array(1.0))
    jtu.tree_leaves(model)
    object.__delattr__(model, "scale")
    assert model.scale == 2.0  # the class default shows through, as for a dataclass
    with pytest.raises(AttributeError):
        object.__delattr__(model, "scale")


# --------------------------------------------------------------------------- Equinox parity


def test_assigning_an_own_method_in_init_is_refused_with_the_fix():
    class Cycle(larix.Module):
        fn: Any
        x: Any

        def __init__(self, x):
            self.fn = self.double  # the Module would contain itself
            self.x = x

        def double(self):
            return 2 * self.x

    with pytest.raises(ValueError, match="Cannot assign methods in __init__") as info:
        Cycle(1)
    message = str(info.value)
    assert "Cycle.fn" in message and "@property" in message and "return self.double" in message

    class Base(larix.Module):
        transform: Any

        def __init__(self, transform):
            self.transform = transform

    class Sub(Base):  # the bound method arrives as an argument of the parent's __init__
        scale: Any

        def __init__(self):
            self.scale = 2
            super().__init__(self._transform)

        def _transform(self, x):
            return self.scale * x

    with pytest.raises(ValueError, match=r"Sub\.transform"):
        Sub()

    class Other(larix.Module):
        fn: Any

    # Another instance's method is a pytree like any other, and is fine.
    other = Other(Point(1).__eq__)
    assert other.fn(Point(1))


class _Mixin:
    def __init__(self, x):
        self.x = x * 10


class _Converted(larix.Module):
    x: Any = larix.field(converter=jnp.asarray)


def test_custom_init_of_a_plain_base_class_is_kept_and_converters_still_run():
    class MixinFirst(_Mixin, _Converted):  # the mixin's __init__ comes first in the MRO
        pass

    class ModuleFirst(_Converted, _Mixin):  # the generated __init__ comes first
        pass

    a, b = MixinFirst(1), ModuleFirst(1)
    assert isinstance(a.x, jax.Array) and int(a.x) == 10
    assert isinstance(b.x, jax.Array) and int(b.x) == 1


def test_post_init_that_cannot_run_warns_at_class_creation():
    class WithPostInit(larix.Module):
        x: Any

        def __post_init__(self):
            raise AssertionError("only a generated __init__ calls this")

    assert WithPostInit.__post_init__  # a generated __init__ with __post_init__: no warning
    with pytest.warns(UserWarning, match=r"test_module\..*CustomInit has both an `__init__`") as record:

        class CustomInit(WithPostInit):
            def __init__(self):
                self.x = 1

    assert "__check_init__" in str(record[0].message)
    assert CustomInit().x == 1  # and __post_init__ really does not run

    class OwnInit(larix.Module):
        x: Any

        def __init__(self):
            self.x = 1

    with pytest.warns(UserWarning, match="will never run"):

        class LaterPostInit(OwnInit):
            def __post_init__(self):
                raise AssertionError

    assert LaterPostInit().x == 1


def test_generated_init_keeps_the_parents_docstring():
    class Documented(larix.Module):
        x: Any = 0

    Documented.__init__.__doc__ = "Build it."

    class Child(Documented):
        y: Any = 1

    assert Child.__init__ is not Documented.__init__
    assert Child.__init__.__doc__ == "Build it."


def test_generated_init_annotates_a_converted_field_with_what_the_converter_takes():
    def untyped(v):
        return v

    def typed(v: int, extra=1):
        return str(v)

    class Fields(larix.Module):
        a: str = larix.field(converter=untyped)
        b: str = larix.field(converter=typed)
        c: str = larix.field(converter=str)  # no signature to read
        d: str = "plain"

    annotations = Fields.__init__.__annotations__
    assert annotations["a"] is Any and annotations["c"] is Any
    assert annotations["b"] == inspect.signature(typed).parameters["v"].annotation
    assert annotations["d"] == "str"  # unconverted fields keep theirs

    class Custom(larix.Module):
        a: str = larix.field(converter=untyped)

        def __init__(self, a: bytes):
            self.a = a

    assert Custom.__init__.__annotations__["a"] == "bytes"  # the user's own init is untouched


def test_generic_module_records_its_orig_class():
    from typing import Generic, TypeVar

    T = TypeVar("T")

    class Holder(larix.Module, Generic[T]):
        value: Any = 0

    h = Holder[int](3)
    assert h.__orig_class__ == Holder[int]
    assert jtu.tree_leaves(h) == [3]  # not a field, not in the tree
    with pytest.raises(dataclasses.FrozenInstanceError):
        h.value = 4


class _AbstractSize(larix.Module):
    size: int = larix.field(init=False)
    w: Any = 1


class _SizeByProperty(_AbstractSize):
    @property
    def size(self):
        return 2 * self.w


def test_field_overridden_by_a_property_is_given_by_the_class():
    m = _SizeByProperty(w=jnp.array(3.0))
    assert m.size == 6.0
    leaves, treedef = jtu.tree_flatten(m)
    assert len(leaves) == 1  # only w: the property is not part of the tree
    rebuilt = jtu.tree_unflatten(treedef, [jnp.array(5.0)])
    assert rebuilt.size == 10.0
    assert larix.filter_jit(lambda m: m.size)(m) == 6.0
    assert jax.grad(lambda m: m.size)(m).w == 2.0
    assert pickle.loads(pickle.dumps(m)).size == 6.0
    assert copy.deepcopy(m).size == 6.0
    assert repr(m).startswith("_SizeByProperty(w=") and "size" not in repr(m)
    assert larix.tree_equal(m, _SizeByProperty(w=jnp.array(3.0)))
    skeleton, params, rest = larix.split(m, larix.is_array)
    assert list(params) == ["w"] and rest == {}
    assert larix.merge(skeleton, params, rest).size == 6.0

    class Deeper(_SizeByProperty):  # provided by a class in between
        pass

    assert Deeper(w=1).size == 2 and jtu.tree_leaves(Deeper(w=1)) == [1]


def test_static_field_with_abstract_property_given_by_a_class_attribute():
    # The Equinox idiom: an abstract property that a subclass fills with a class attribute.
    class Base(larix.Module):
        config: list = larix.field(static=True)

        @property
        @abc.abstractmethod
        def config(self):  # noqa: F811 - replaces the field's default, on purpose
            ...

    class Concrete(Base):
        config = ["a", "b"]  # noqa: RUF012 - the Equinox idiom under test

        def __init__(self):
            pass

    with pytest.raises(TypeError):
        Base()
    model = Concrete()
    assert model.config == ["a", "b"]
    assert jtu.tree_leaves(model) == []
    assert jax.jit(lambda m: len(m.config))(model) == 2
    assert larix.filter_jit(lambda m: len(m.config))(model) == 2


def test_provided_field_set_in_init_wins_and_a_setterless_property_refuses():
    class Base(larix.Module):
        n: Any

    class ClassConstant(Base):
        n = 5

        def __init__(self, n=None):
            if n is not None:
                self.n = n

    assert ClassConstant().n == 5 and jtu.tree_leaves(ClassConstant()) == []
    assert ClassConstant(7).n == 7 and jtu.tree_leaves(ClassConstant(7)) == [7]

    class ByProperty(Base):
        @property
        def n(self):
            return 1

        def __init__(self):
            self.n = 3

    with pytest.raises(AttributeError):
        ByProperty()


def test_provided_field_written_after_init_is_seen_by_every_cache():
    class Base(larix.Module):
        n: Any
        w: Any

    class Provided(Base):
        n = 5

        def __init__(self, w):
            self.w = w

    m = Provided(jnp.array(1.0))
    f = larix.filter_jit(lambda m: m.w * m.n)
    assert f(m) == 5.0 and jtu.tree_leaves(m) == [1.0]
    object.__setattr__(m, "n", jnp.array(2.0))  # misuse, but no memo may hide it
    assert jtu.tree_leaves(m) == [2.0, 1.0]
    assert f(m) == 2.0
