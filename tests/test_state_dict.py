"""Tests for larix._state_dict: state_dict, load_state_dict, plan_state_dict, and renaming."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import larix
from larix._state_dict import (
    SkippedKeysWarning,
    StateDictPlan,
    load_state_dict,
    plan_state_dict,
    renamer,
    state_dict,
)


def mlp(seed: int = 0) -> larix.nn.MLP:
    return larix.nn.MLP(2, 1, width_size=8, depth=1, key=jax.random.key(seed))


def test_state_dict_keys_are_dotted_paths_in_order():
    sd = state_dict(mlp())
    assert list(sd) == ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"]
    assert sd["layers.0.weight"] is mlp().layers[0].weight or sd["layers.0.weight"].shape == (8, 2)


def test_state_dict_filter_spec():
    sd = state_dict(mlp(), larix.by_path("*.*.weight"))
    assert list(sd) == ["layers.0.weight", "layers.1.weight"]


def test_round_trip_into_another_model():
    source, target = mlp(0), mlp(1)
    loaded = load_state_dict(target, state_dict(source))
    assert larix.tree_equal(loaded, source)


def test_round_trip_into_placeholders():
    like = larix.filter_eval_shape(mlp, 0)
    loaded = load_state_dict(like, state_dict(mlp(3)))
    assert larix.tree_equal(loaded, mlp(3))
    assert isinstance(loaded.layers[0].weight, jax.Array)


def test_numpy_leaves_stay_numpy_and_jax_leaves_keep_placement():
    tree = {"a": np.zeros(2, np.float32), "b": jnp.zeros(3)}
    loaded = load_state_dict(tree, {"a": jnp.ones(2), "b": np.ones(3, np.float32)})
    assert isinstance(loaded["a"], np.ndarray) and isinstance(loaded["b"], jax.Array)
    np.testing.assert_array_equal(loaded["a"], 1)


def test_one_error_lists_every_problem_by_name():
    sd = state_dict(mlp())
    sd["layers.0.weight"] = jnp.zeros((8, 3))  # shape
    sd["layers.0.bias"] = jnp.zeros(8, jnp.int32)  # dtype
    del sd["layers.1.bias"]  # missing
    sd["layers.2.weight"] = jnp.zeros(1)  # unexpected
    sd["fc.name"] = "relu"  # not an array, also unexpected
    with pytest.raises(ValueError) as error:
        load_state_dict(mlp(), sd)
    message = str(error.value)
    assert message.startswith("larix.io.load_state_dict: the state dict does not match the model:\n")
    assert "  - 'layers.0.weight': expected f32[8,2], found f32[8,3]\n" in message
    assert "  - 'layers.0.bias': expected f32[8], found i32[8]\n" in message
    assert "  - missing from the state dict: 'layers.1.bias' (f32[1])\n" in message
    assert "  - unexpected in the state dict: 'layers.2.weight' (f32[1]), 'fc.name' (a str)\n" in message
    assert "larix.io.plan_state_dict" in message and "strict=False" in message


def test_a_non_array_value_for_a_leaf_is_reported():
    sd = {**state_dict(mlp()), "layers.0.bias": [0.0] * 8}
    with pytest.raises(ValueError, match=re.escape("'layers.0.bias': expected f32[8], found a list")):
        load_state_dict(mlp(), sd)


def test_nothing_is_loaded_when_something_is_wrong():
    model = mlp()
    sd = {k: v + 1 for k, v in state_dict(model).items()}
    sd["layers.1.bias"] = jnp.zeros(2)
    with pytest.raises(ValueError):
        load_state_dict(model, sd)
    assert larix.tree_equal(model, mlp())  # the input is never modified anyway


def test_not_strict_loads_what_matches_and_warns_the_rest():
    source, target = mlp(0), mlp(1)
    sd = state_dict(source)
    del sd["layers.1.bias"]
    sd["extra"] = jnp.zeros(2)
    with pytest.warns(SkippedKeysWarning) as record:
        loaded = load_state_dict(target, sd, strict=False)
    message = str(record[0].message)
    assert "left out 2 entries" in message
    assert "missing 'layers.1.bias' (f32[1])" in message and "unexpected 'extra' (f32[2])" in message
    assert larix.tree_equal(loaded.layers[0], source.layers[0])
    assert loaded.layers[1].bias is target.layers[1].bias


def test_not_strict_still_checks_shapes():
    sd = {"layers.0.weight": jnp.zeros((2, 2))}
    with pytest.raises(ValueError, match="expected f32\\[8,2\\], found f32\\[2,2\\]"):
        load_state_dict(mlp(), sd, strict=False)


def test_not_strict_still_needs_placeholders():
    like = larix.filter_eval_shape(mlp, 0)
    with pytest.raises(ValueError, match=re.escape("missing from the state dict: 'layers.1.bias'")):
        load_state_dict(like, {k: v for k, v in state_dict(mlp()).items() if k != "layers.1.bias"}, strict=False)


def test_not_strict_without_skips_does_not_warn():
    load_state_dict(mlp(1), state_dict(mlp()), strict=False)  # filterwarnings = error


def test_rename_with_a_mapping_a_function_and_rules():
    source = mlp(0)
    foreign = {k.replace("layers.", "fc"): v for k, v in state_dict(source).items()}  # fc0.weight, ...
    by_rules = load_state_dict(mlp(1), foreign, rename=[(r"^fc(\d+)\.", r"layers.\1.")])
    by_function = load_state_dict(mlp(1), foreign, rename=lambda k: "layers." + k[2:])
    by_mapping = load_state_dict(mlp(1), foreign, rename={k: "layers." + k[2:] for k in foreign})
    for loaded in (by_rules, by_function, by_mapping):
        assert larix.tree_equal(loaded, source)


def test_rename_example_from_the_issue():
    rules = [(r"^encoder\.layer\.", "encoder.layers."), (r"\.attention\.self\.query\.", ".attention.query_proj.")]
    rename = renamer(rules)
    assert rename("encoder.layer.3.attention.self.query.weight") == "encoder.layers.3.attention.query_proj.weight"


def test_rename_to_none_drops_an_entry():
    sd = {**state_dict(mlp()), "num_batches_tracked": jnp.array(3)}
    load_state_dict(mlp(1), sd, rename={"num_batches_tracked": None})
    plan = plan_state_dict(mlp(1), sd, rename={"num_batches_tracked": None})
    assert plan.ok and plan.rows[-1].status == "dropped"


def test_rename_collisions_are_reported():
    sd = {"a.weight": jnp.zeros((8, 2)), "b.weight": jnp.zeros((8, 2))}
    with pytest.raises(ValueError, match=re.escape("'a.weight' and 'b.weight' both rename to 'layers.0.weight'")):
        load_state_dict(mlp(), sd, rename=lambda k: "layers.0.weight", strict=False)


def test_renamed_keys_are_named_both_ways_in_errors():
    sd = {"fc0.weight": jnp.zeros((8, 3))}
    with pytest.raises(ValueError, match=re.escape("'fc0.weight' (renamed 'layers.0.weight'): expected f32[8,2]")):
        load_state_dict(mlp(), sd, rename=[(r"^fc0", "layers.0")], strict=False)


@pytest.mark.parametrize("bad", [3, [("a",)], [(1, 2)], "a->b"])
def test_bad_rename_is_a_type_error(bad):
    with pytest.raises(TypeError, match="rename"):
        load_state_dict(mlp(), state_dict(mlp()), rename=bad)


def test_rename_function_must_return_str():
    with pytest.raises(TypeError, match="must return a str"):
        load_state_dict(mlp(), state_dict(mlp()), rename=lambda k: 1)


def test_state_dict_must_be_a_mapping():
    with pytest.raises(TypeError, match="must be a mapping"):
        load_state_dict(mlp(), [1, 2])


def test_filter_spec_selecting_non_arrays_is_refused():
    with pytest.raises(TypeError, match="not arrays: 'n' is a int"):
        load_state_dict({"n": 3, "w": jnp.zeros(2)}, {}, filter_spec=lambda x: True)


def test_torch_like_tensors_are_converted():
    class Tensor:  # what load_state_dict needs from a torch.Tensor
        def __init__(self, array):
            self.array = array

        def detach(self):
            return self

        def cpu(self):
            return self

        def numpy(self):
            return self.array

    sd = {k: Tensor(np.asarray(v)) for k, v in state_dict(mlp(2)).items()}
    assert larix.tree_equal(load_state_dict(mlp(), sd), mlp(2))


def test_plan_rows_and_table():
    sd = state_dict(mlp())
    sd["fc.bias"] = sd.pop("layers.1.bias")
    sd["layers.0.weight"] = jnp.zeros((8, 3))
    plan = plan_state_dict(mlp(), sd)
    assert isinstance(plan, StateDictPlan) and not plan.ok
    assert plan.missing == ["layers.1.bias"]
    assert plan.unexpected == ["fc.bias"]
    assert plan.mismatched == ["layers.0.weight"]
    assert [row.status for row in plan.rows] == ["mismatch", "ok", "ok", "missing", "unexpected"]
    assert str(plan) == repr(plan)
    assert repr(plan).splitlines() == [
        "foreign key      foreign shape  larix key        larix shape  status",
        "layers.0.weight  f32[8,3]       layers.0.weight  f32[8,2]     mismatch",
        "layers.0.bias    f32[8]         layers.0.bias    f32[8]       ok",
        "layers.1.weight  f32[1,8]       layers.1.weight  f32[1,8]     ok",
        "layers.1.bias    f32[1]         layers.1.bias    f32[1]       missing",
        "fc.bias          f32[1]         -                             unexpected",
        "3 problem(s) a strict load would report:",
        "  - 'layers.0.weight': expected f32[8,2], found f32[8,3]",
        "  - missing: 'layers.1.bias' (f32[1])",
        "  - unexpected: 'fc.bias' (f32[1])",
    ]


def test_plan_of_a_matching_dict_is_ok():
    plan = plan_state_dict(mlp(), state_dict(mlp(1)))
    assert plan.ok and plan.problems == () and "problem" not in repr(plan)


@given(st.lists(st.sampled_from(["a", "b.c", "d.0", "e"]), unique=True), st.booleans())
def test_strict_load_succeeds_exactly_when_keys_match(keys, extra):
    tree = {"a": jnp.zeros(1), "b": {"c": jnp.zeros(2)}, "d": [jnp.zeros(3)], "e": np.zeros(4, np.float32)}
    shapes = {"a": (1,), "b.c": (2,), "d.0": (3,), "e": (4,)}
    sd = {k: np.ones(shapes[k], np.float32) for k in keys}
    if extra:
        sd["zz"] = np.ones(1, np.float32)
    plan = plan_state_dict(tree, sd)
    if len(keys) == 4 and not extra:
        assert plan.ok
        assert all(np.all(np.asarray(x) == 1) for x in jax.tree.leaves(load_state_dict(tree, sd)))
    else:
        assert not plan.ok
        with pytest.raises(ValueError):
            load_state_dict(tree, sd)
