"""Tests of larix.nn.BatchNorm (src/larix/nn/_batch_norm.py)."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nn_helpers import assert_bitwise_equal, close, equinox, fresh, key, pickle_roundtrip, randomise

import larix

BATCHES = [jax.random.normal(key(i), (6, 3, 4)) * (i + 1) + i for i in range(3)]


def _run(bn, x, state, **kwargs):
    call = lambda m, v, s: m(v, s, **kwargs)  # noqa: E731
    return larix.filter_vmap(call, in_axes=(None, 0, None), out_axes=(0, None), axis_name="batch")(
        bn, x, state
    )


def _normalise(x, mean, var, eps=1e-5):
    return (x - mean[None, :, None]) / jnp.sqrt(var[None, :, None] + eps)


def test_batch_mode_training_and_inference():
    bn, state = larix.nn.make_with_state(larix.nn.BatchNorm)(3, "batch", momentum=0.9, mode="batch")
    for x in BATCHES:
        y, state = _run(bn, x, state)
        mean, var = x.mean(axis=(0, 2)), x.var(axis=(0, 2))
        assert close(y, _normalise(x, mean, var), atol=1e-4)
    assert int(state.get(bn.batch_counter)) == 3
    running_mean, running_var = state.get(bn.batch_state_index)
    weights = np.array([0.1 * 0.9**2, 0.1 * 0.9, 0.1]) / (1 - 0.9**3)
    expected_mean = sum(w * x.mean(axis=(0, 2)) for w, x in zip(weights, BATCHES))
    expected_var = sum(w * x.var(axis=(0, 2)) for w, x in zip(weights, BATCHES))
    assert close(running_mean / (1 - 0.9**3), expected_mean, atol=1e-4)
    assert close(running_var / (1 - 0.9**3), expected_var, atol=1e-4)
    y, same = _run(larix.nn.inference_mode(bn), BATCHES[0], state)
    assert same is state or larix.tree_equal(same, state)
    assert close(y, _normalise(BATCHES[0], expected_mean, expected_var), atol=1e-4)


def test_batch_mode_inference_before_training_is_identity_like():
    bn, state = larix.nn.make_with_state(larix.nn.BatchNorm)(3, "batch", mode="batch", inference=True)
    y, _ = _run(bn, BATCHES[0], state)
    assert close(y, BATCHES[0] / np.sqrt(1 + 1e-5), atol=1e-5)


def test_ema_mode():
    bn, state = larix.nn.make_with_state(larix.nn.BatchNorm)(3, "batch", momentum=0.9, mode="ema")
    assert bn.mode == "ema" and bool(state.get(bn.ema_first_time_index))
    y, state = _run(bn, BATCHES[0], state)
    first_mean, first_var = BATCHES[0].mean(axis=(0, 2)), BATCHES[0].var(axis=(0, 2))
    assert close(y, _normalise(BATCHES[0], first_mean, first_var), atol=1e-4)
    y, state = _run(bn, BATCHES[1], state)
    mean = 0.9 * first_mean + 0.1 * BATCHES[1].mean(axis=(0, 2))
    var = 0.9 * first_var + 0.1 * BATCHES[1].var(axis=(0, 2))
    # "ema" normalises by the updated running statistics, as in Equinox.
    assert close(y, _normalise(BATCHES[1], mean, var), atol=1e-4)
    assert close(state.get(bn.ema_state_index)[0], mean, atol=1e-5)
    y, _ = _run(bn, BATCHES[2], state, inference=True)
    assert close(y, _normalise(BATCHES[2], mean, var), atol=1e-4)


def test_affine_and_dtype():
    bn, state = larix.nn.make_with_state(larix.nn.BatchNorm)(3, "batch", mode="batch")
    bn = larix.tree_at(
        lambda m: (m.weight, m.bias), bn, (jnp.array([1.0, 2.0, 3.0]), jnp.array([0.0, 1.0, 0.0]))
    )
    x = BATCHES[1]
    y, _ = _run(bn, x, state)
    expected = (
        _normalise(x, x.mean(axis=(0, 2)), x.var(axis=(0, 2))) * jnp.array([1.0, 2.0, 3.0])[None, :, None]
    )
    assert close(y, expected + jnp.array([0.0, 1.0, 0.0])[None, :, None], atol=1e-4)
    y16, state16 = _run(bn, x.astype(jnp.bfloat16), state)
    assert y16.dtype == jnp.bfloat16 and state16.get(bn.batch_state_index)[0].dtype == jnp.float32
    assert larix.nn.BatchNorm(3, "b", channelwise_affine=False, mode="ema").weight is None


def test_errors_explain():
    bn, state = larix.nn.make_with_state(larix.nn.BatchNorm)(3, "batch", mode="ema")
    with pytest.raises(NameError, match=r"filter_vmap\(.*axis_name='batch'"):
        bn(jnp.ones((3, 2)), state)
    with pytest.raises(ValueError, match=r"BatchNorm\(input_size=3.*\(3, \.\.\.\)"):
        _run(bn, jnp.ones((4, 2, 2)), state)
    with pytest.raises(ValueError, match="mode"):
        larix.nn.BatchNorm(3, "batch", mode="running")
    with pytest.raises(ValueError, match="momentum"):
        larix.nn.BatchNorm(3, "batch", momentum=1.0, mode="ema")


def test_training_step_jit_grad():
    model, state = larix.nn.make_with_state(larix.nn.Sequential)(
        [larix.nn.Linear(4, 3, key=key()), larix.nn.BatchNorm(3, "batch", mode="batch")]
    )

    @larix.filter_jit
    def step(model, state, x):
        def loss(model, state, x):
            y, state = _run(model, x, state)
            return jnp.mean(y**2), state

        (value, state), grads = larix.filter_value_and_grad(loss, has_aux=True)(model, state, x)
        return value, state, grads

    x = jax.random.normal(key(1), (5, 4))
    value, state, grads = step(model, state, x)
    assert bool(jnp.isfinite(value))
    assert grads[0].weight.shape == (3, 4) and int(state.get(model[1].batch_counter)) == 1
    _, state, _ = step(model, state, x)
    assert int(state.get(model[1].batch_counter)) == 2


def test_pickle_repr():
    bn, _ = larix.nn.make_with_state(larix.nn.BatchNorm)(3, "batch", mode="ema")
    text = repr(pickle_roundtrip(bn))
    assert text.startswith("BatchNorm(") and "axis_name='batch'" in text and "mode='ema'" in text


@pytest.mark.parametrize("mode", ["ema", "batch"])
@pytest.mark.parametrize("shape", [(3,), (3, 4), (3, 5, 2)])
@pytest.mark.parametrize("affine", [True, False])
def test_matches_equinox_to_the_bit(mode, shape, affine):
    eqx = equinox()
    kwargs = dict(momentum=0.8, channelwise_affine=affine, mode=mode)
    theirs, their_state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(3, "batch", **kwargs)
    ours, our_state = larix.nn.make_with_state(larix.nn.BatchNorm)(3, "batch", **kwargs)
    theirs, ours = randomise(theirs, 1), randomise(ours, 1)
    if mode == "batch":
        # Equinox starts the running variance at one, larix at zero (see the class
        # docstring); from the same state, the results are the same.
        our_state = our_state.set(ours.batch_state_index, tuple(jax.tree_util.tree_leaves(their_state)[1:]))
    eqx_run = eqx.filter_vmap(
        lambda m, x, s: m(x, s), in_axes=(None, 0, None), out_axes=(0, None), axis_name="batch"
    )
    for i in range(3):
        x = jax.random.normal(key(i), (6, *shape)) * (i + 1) + i
        y_theirs, their_state = eqx_run(theirs, x, their_state)
        y_ours, our_state = _run(ours, x, our_state)
        assert_bitwise_equal(y_ours, y_theirs)
        assert_bitwise_equal(our_state, their_state)
    y_theirs, _ = eqx_run(eqx.nn.inference_mode(theirs), x, their_state)
    y_ours, _ = _run(larix.nn.inference_mode(ours), x, our_state)
    assert_bitwise_equal(y_ours, y_theirs)


def test_mode_left_out_warns_as_in_equinox():
    eqx = equinox()
    with pytest.warns(UserWarning, match=r'no `mode` was given, so it is "ema".*mode="batch"') as caught:
        bn = larix.nn.BatchNorm(3, "batch")
    assert caught[0].filename == __file__  # the warning points at the caller's line
    assert bn.mode == "ema" and bn.ema_state_index is not None
    with pytest.warns(UserWarning, match="mode"):
        eqx.nn.BatchNorm(3, "batch")
    with pytest.warns(UserWarning, match="mode"):
        larix.nn.make_with_state(larix.nn.BatchNorm)(3, "batch", mode="legacy")  # Equinox's default
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        larix.nn.BatchNorm(3, "batch", mode="ema")
        larix.nn.BatchNorm(3, "batch", mode="batch")


def test_integer_input_gives_float_output():
    # Raw pixel values, say: normalised in float32, as in Equinox (not cast back to ints).
    bn, state = larix.nn.make_with_state(larix.nn.BatchNorm)(3, "batch", mode="batch")
    x = jnp.arange(24, dtype=jnp.uint8).reshape(4, 3, 2)
    y, _ = _run(bn, x, state)
    assert y.dtype == jnp.float32
    assert close(y, _normalise(x.astype(jnp.float32), x.mean(axis=(0, 2)), x.var(axis=(0, 2))), atol=1e-4)


# Initialisers and dtypes (issue 9): the defaults are Equinox's ones and zeros to the bit; a
# custom initialiser gets a key, the shape and `param_dtype`; `dtype` is the dtype of the
# result, as in Flax's BatchNorm; the running statistics stay in `param_dtype`.


def _make(**kwargs):
    return larix.nn.make_with_state(larix.nn.BatchNorm)(3, "batch", momentum=0.8, **kwargs)


def _train_and_infer(bn, state, xs):
    """The outputs of training on each batch of `xs`, then of inference on the last, and
    the final state."""
    outputs = []
    for x in xs:
        y, state = _run(bn, x, state)
        outputs.append(y)
    outputs.append(_run(bn, xs[-1], state, inference=True)[0])
    return outputs, state


@pytest.mark.parametrize("mode", ["ema", "batch"])
@pytest.mark.parametrize("dtype", [None, jnp.float16, jnp.bfloat16])
def test_default_init_is_equinox_bit_for_bit(mode, dtype):
    eqx = equinox()
    ours, our_state = _make(dtype=dtype, mode=mode)
    theirs, their_state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(
        3, "batch", momentum=0.8, dtype=dtype, mode=mode
    )
    np.testing.assert_array_equal(ours.weight, theirs.weight, strict=True)
    np.testing.assert_array_equal(ours.bias, theirs.bias, strict=True)
    # The running statistics have Equinox's dtypes (their values differ: see the class
    # docstring).
    ours_leaves, theirs_leaves = jax.tree_util.tree_leaves(our_state), jax.tree_util.tree_leaves(their_state)
    assert [x.dtype for x in ours_leaves] == [x.dtype for x in theirs_leaves]
    # A key changes nothing for the defaults: ones and zeros.
    keyed, _ = _make(dtype=dtype, mode=mode, key=key(2))
    np.testing.assert_array_equal(keyed.weight, theirs.weight, strict=True)
    np.testing.assert_array_equal(keyed.bias, theirs.bias, strict=True)


def test_custom_initialisers_get_key_shape_and_param_dtype():
    calls = []

    def recording(init):
        def wrapped(k, shape, dtype):
            calls.append((k, shape, jnp.dtype(dtype)))
            return init(k, shape, dtype)

        return wrapped

    bn, state = _make(
        mode="batch",
        dtype=jnp.bfloat16,
        param_dtype=jnp.float32,
        weight_init=recording(jax.nn.initializers.normal()),
        bias_init=recording(jax.nn.initializers.constant(0.5)),
        key=key(1),
    )
    assert [(shape, dtype) for _, shape, dtype in calls] == [((3,), jnp.float32)] * 2
    weight_key, bias_key = jax.random.split(key(1))
    assert jnp.array_equal(jax.random.key_data(calls[0][0]), jax.random.key_data(weight_key))
    assert jnp.array_equal(jax.random.key_data(calls[1][0]), jax.random.key_data(bias_key))
    np.testing.assert_array_equal(
        bn.weight, jax.nn.initializers.normal()(weight_key, (3,), jnp.float32), strict=True
    )
    np.testing.assert_array_equal(bn.bias, jnp.full(3, 0.5), strict=True)
    # The running statistics are not parameters: they start at zero, in `param_dtype`.
    for running in state.get(bn.batch_state_index):
        np.testing.assert_array_equal(running, jnp.zeros(3), strict=True)
    # Only the initialiser given is replaced; without a key, it is called with None.
    calls.clear()
    half, _ = _make(mode="ema", bias_init=recording(jax.nn.initializers.ones))
    assert [(k, shape, dtype) for k, shape, dtype in calls] == [(None, (3,), jnp.float32)]
    np.testing.assert_array_equal(half.weight, jnp.ones(3), strict=True)
    np.testing.assert_array_equal(half.bias, jnp.ones(3), strict=True)


def test_initialisers_are_not_called_without_channelwise_affine():
    def never(k, shape, dtype):
        raise AssertionError("called for a parameter the layer does not have")

    bn, _ = _make(mode="batch", channelwise_affine=False, weight_init=never, bias_init=never, key=key())
    assert bn.weight is None and bn.bias is None


def test_initialiser_of_the_wrong_shape_or_dtype_is_named():
    with pytest.raises(
        ValueError, match=r"BatchNorm: `weight_init` must return .* float32\[3\], it returned float32\[3, 1\]"
    ):
        _make(mode="batch", weight_init=lambda k, s, d: jnp.zeros((*s, 1), d))
    with pytest.raises(
        ValueError, match=r"BatchNorm: `bias_init` .* asked for bfloat16\[3\], it returned float32\[3\]"
    ):
        _make(mode="batch", dtype=jnp.bfloat16, bias_init=lambda k, s, d: jnp.zeros(s))
    with pytest.raises(TypeError, match=r"BatchNorm: `weight_init` failed .* pass `key=` to BatchNorm"):
        _make(mode="batch", weight_init=jax.nn.initializers.normal())


@pytest.mark.parametrize("mode", ["ema", "batch"])
def test_param_dtype_defaults_to_dtype_as_in_equinox(mode):
    # `dtype=` alone: parameters and running statistics in that dtype, as before.
    bn, state = _make(mode=mode, dtype=jnp.bfloat16)
    assert bn.weight.dtype == bn.bias.dtype == jnp.bfloat16 and bn.dtype == jnp.bfloat16
    running = state.get(bn.ema_state_index if mode == "ema" else bn.batch_state_index)
    assert all(r.dtype == jnp.bfloat16 for r in running)
    outputs, state = _train_and_infer(bn, state, [x.astype(jnp.bfloat16) for x in BATCHES])
    assert all(y.dtype == jnp.bfloat16 for y in outputs)
    running = state.get(bn.ema_state_index if mode == "ema" else bn.batch_state_index)
    assert all(r.dtype == jnp.bfloat16 for r in running)
    # `param_dtype=` alone: stored in it, the output keeps the input's dtype.
    bn, state = _make(mode=mode, param_dtype=jnp.float16)
    assert bn.weight.dtype == jnp.float16 and bn.dtype is None
    outputs, _ = _train_and_infer(bn, state, BATCHES)
    assert all(y.dtype == jnp.float32 for y in outputs)


@pytest.mark.parametrize("mode", ["ema", "batch"])
def test_dtype_is_the_result_dtype(mode):
    reference, ref_state = _make(mode=mode)  # float32 throughout
    reference = randomise(reference, 3)
    # Flax's mixed precision: float32 parameters and running statistics, a bfloat16
    # result: the float32 result rounded once, and the same float32 state.
    mixed, state = _make(mode=mode, dtype=jnp.bfloat16, param_dtype=jnp.float32)
    mixed = randomise(mixed, 3)
    expected, expected_state = _train_and_infer(reference, ref_state, BATCHES)
    outputs, state = _train_and_infer(mixed, state, BATCHES)
    assert_bitwise_equal(outputs, [y.astype(jnp.bfloat16) for y in expected])
    assert_bitwise_equal(state, expected_state)
    # dtype=None: the output keeps the input's dtype (bfloat16 here), whatever the
    # parameters' (not the common type, as for other layers).
    reference, ref_state = _make(mode=mode)
    outputs, _ = _train_and_infer(reference, ref_state, [x.astype(jnp.bfloat16) for x in BATCHES])
    assert all(y.dtype == jnp.bfloat16 for y in outputs)
    # An integer input with a `dtype`: normalised in float32, returned in `dtype`.
    bn, state = _make(mode=mode, dtype=jnp.bfloat16, param_dtype=jnp.float32)
    y, _ = _run(bn, jnp.arange(24, dtype=jnp.uint8).reshape(4, 3, 2), state)
    assert y.dtype == jnp.bfloat16


@pytest.mark.parametrize("mode", ["ema", "batch"])
@pytest.mark.parametrize(
    "dtypes",
    [
        dict(param_dtype=jnp.bfloat16),
        dict(dtype=jnp.bfloat16, param_dtype=jnp.float32),
        dict(dtype=jnp.float32, param_dtype=jnp.bfloat16),
    ],
    ids=["bf16-params", "bf16-result", "bf16-params-f32-result"],
)
def test_mixed_dtypes_work_under_strict_promotion(mode, dtypes):
    # Running statistics and parameters in another dtype than the computation: the same
    # results as standard promotion, and no error under strict promotion.
    bn, state = _make(mode=mode, **dtypes)
    bn = randomise(bn, 3)
    run = larix.filter_jit(_train_and_infer)
    for xs in (BATCHES, [x.astype(jnp.bfloat16) for x in BATCHES]):
        with jax.numpy_dtype_promotion("standard"):
            expected = run(bn, fresh(state), xs)
        with jax.numpy_dtype_promotion("strict"):
            got = run(bn, fresh(state), xs)
        assert_bitwise_equal(got, expected)


@pytest.mark.parametrize("mode", ["ema", "batch"])
def test_default_path_adds_no_casts_to_the_jaxpr(mode):
    # Float32 everywhere: no conversion in training (as before `dtype` and `param_dtype`);
    # a bfloat16 result adds exactly one, the final cast.
    x = BATCHES[0]

    def converts(**kwargs):
        bn, state = _make(mode=mode, **kwargs)
        arrays, rest = larix.partition(bn, larix.is_array)
        jaxpr = jax.make_jaxpr(lambda a, s: _run(larix.combine(a, rest), x, s))(arrays, state)
        return str(jaxpr).count("convert_element_type")

    assert converts() == 0
    assert converts(dtype=jnp.bfloat16, param_dtype=jnp.float32) == 1
