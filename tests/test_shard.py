"""filter_shard, named_shardings, and filter_jit with sharded arrays.

The tests in the first half run in this process, on its single CPU device. Those that need
a mesh of 8 devices run their code in a fresh Python with
`XLA_FLAGS=--xla_force_host_platform_device_count=8` (`distributed_helpers.run_python`),
so that this process keeps its default device setup.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

import larix
from conftest import Linear, Pair, make_linear
from distributed_helpers import run_python

P = PartitionSpec


@pytest.fixture(scope="module")
def mesh() -> Mesh:
    return Mesh(np.array(jax.devices()[:1]), ("data",))


# --------------------------------------------------------------------------- one device


def test_filter_shard_outside_jit_places_arrays_and_leaves_statics(mesh):
    model = Pair(make_linear(), {"n": 3, "np": np.ones(2, np.float32)}, tag="t")
    sharding = NamedSharding(mesh, P())
    out = larix.filter_shard(model, sharding)
    assert out.tag == "t" and out.b["n"] == 3
    for a in (out.a.weight, out.a.bias, out.b["np"]):
        assert isinstance(a, jax.Array)  # NumPy arrays are placed too
        assert a.sharding == sharding
    assert larix.tree_equal(out, model)


def test_filter_shard_with_a_device():
    device = jax.devices()[0]
    out = larix.filter_shard(make_linear(), device)
    assert out.weight.sharding == SingleDeviceSharding(device)

    @larix.filter_jit
    def f(model):
        return larix.filter_shard(model, device)

    assert f(make_linear()).bias.sharding == SingleDeviceSharding(device)


def test_filter_shard_without_arrays_returns_the_tree():
    tree = {"a": 1, "b": ("x", None)}
    assert larix.filter_shard(tree, jax.devices()[0]) is tree


def test_filter_shard_inside_filter_jit(mesh):
    sharding = NamedSharding(mesh, P("data"))

    @larix.filter_jit
    def f(model):
        return larix.filter_shard(model, sharding)

    out = f(make_linear())
    assert out.activation == "identity"
    # On a 1-device mesh the compiler reports P("data") as its equivalent P().
    assert out.weight.sharding.is_equivalent_to(sharding, 2) and out.weight.sharding.mesh == mesh
    assert out.bias.sharding.is_equivalent_to(sharding, 1)
    assert larix.tree_equal(out, make_linear())


def test_filter_shard_prefix_and_none(mesh):
    replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    tree = {"model": make_linear(), "batch": (jnp.ones((2, 4)), "label")}
    original_batch = tree["batch"][0]
    out = larix.filter_shard(tree, {"model": replicated, "batch": (None, rows)})
    assert out["model"].weight.sharding.spec == P()
    assert out["batch"][0] is original_batch  # None: left as it is
    assert out["batch"][1] == "label"  # a sharding over a non-array leaf does nothing


def test_filter_shard_rejects_a_tree_that_is_not_a_prefix(mesh):
    sharding = NamedSharding(mesh, P())
    with pytest.raises(ValueError, match=r"not a pytree prefix.*shardings\['model'\]"):
        larix.filter_shard({"model": (jnp.ones(2), jnp.ones(2))}, {"model": [sharding, sharding]})


def test_filter_shard_rejects_a_leaf_that_is_not_a_sharding():
    with pytest.raises(TypeError, match=r"shardings\['w'\] is a str"):
        larix.filter_shard({"w": jnp.ones(2)}, {"w": "data"})
    with pytest.raises(TypeError, match=r"shardings is a int"):
        larix.filter_shard({"w": jnp.ones(2)}, 0)


def test_filter_shard_explicit_mesh_inside_jit_needs_set_mesh():
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    sharding = NamedSharding(mesh, P("data"))
    f = larix.filter_jit(lambda x: larix.filter_shard(x, sharding) * 2)
    with pytest.raises(ValueError, match=r"jax\.set_mesh\(mesh\)"):
        f(jnp.ones(2))
    with jax.set_mesh(mesh):
        out = f(jnp.ones(2))
    assert out.sharding.spec == P("data")


def test_filter_shard_partition_spec_under_set_mesh(mesh):
    with jax.set_mesh(mesh):
        out = larix.filter_shard({"w": jnp.ones(2), "act": "relu"}, P("data"))
        inside = larix.filter_jit(lambda t: larix.filter_shard(t, P("data")))({"w": jnp.ones(2)})
    assert out["w"].sharding.spec == P("data") and out["act"] == "relu"
    assert inside["w"].sharding.is_equivalent_to(NamedSharding(mesh, P("data")), 1)


def test_filter_shard_is_differentiable(mesh):
    sharding = NamedSharding(mesh, P())

    def loss(model, x):
        return jnp.sum(larix.filter_shard(model, sharding)(x) ** 2)

    model, x = make_linear(), jnp.arange(4.0)
    got = larix.filter_jit(larix.filter_grad(loss))(model, x)
    want = larix.filter_grad(lambda m, x: jnp.sum(m(x) ** 2))(model, x)
    assert larix.tree_equal(got, want, rtol=1e-6)


def test_named_shardings_rule_paths_and_non_arrays(mesh):
    model = Pair(make_linear(), {"scale": 2.0, "table": jnp.ones((3, 2))})
    seen = []

    def rule(path, array):
        seen.append((path, array.shape))
        return None if path == "b.table" else P("data")

    shardings = larix.named_shardings(model, mesh, rule)
    assert seen == [("a.weight", (3, 4)), ("a.bias", (3,)), ("b.table", (3, 2))]
    assert isinstance(shardings, Pair) and shardings.tag == "pair"
    assert shardings.a.weight == NamedSharding(mesh, P("data"))
    assert shardings.b == {"scale": None, "table": None}
    placed = larix.filter_shard(model, shardings)
    assert placed.a.bias.sharding.spec == P("data")


def test_named_shardings_with_one_spec(mesh):
    shardings = larix.named_shardings([jnp.ones(2), "x"], mesh, P())
    assert shardings == [NamedSharding(mesh, P()), None]


def test_named_shardings_errors(mesh):
    model = make_linear()
    with pytest.raises(ValueError, match=r"'a\.bias'.*names 2 dimensions but the array has only 1"):
        larix.named_shardings({"a": model}, mesh, lambda path, x: P(None, "data"))
    with pytest.raises(ValueError, match=r"'weight'.*no axis 'model'.*\('data',\)"):
        larix.named_shardings(model, mesh, P("model"))
    with pytest.raises(TypeError, match=r"returned a str for 'weight'"):
        larix.named_shardings(model, mesh, lambda path, x: "data")
    with pytest.raises(TypeError, match=r"expected a jax\.sharding\.Mesh"):
        larix.named_shardings(model, jax.devices(), P())
    with pytest.raises(TypeError, match=r"PartitionSpec or a function"):
        larix.named_shardings(model, mesh, "data")


def test_filter_jit_keeps_the_sharding_of_its_inputs(mesh):
    sharding = NamedSharding(mesh, P("data"))
    model = larix.filter_shard(make_linear(), sharding)
    out = larix.filter_jit(lambda m: larix.tree_at(lambda m: m.weight, m, m.weight * 2))(model)
    assert isinstance(out, Linear) and out.weight.sharding == sharding


# --------------------------------------------------------------------------- eight devices


def test_filter_shard_on_eight_devices():
    run_python(
        """
        import jax, jax.numpy as jnp, numpy as np, larix
        from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
        from distributed_helpers import MLP, make_model

        assert jax.device_count() == 8
        mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
        model = make_model()

        def specs(tree):
            return [a.sharding.spec for a in jax.tree_util.tree_leaves(tree) if isinstance(a, jax.Array)]

        def rule(path, array):
            return P("model") if array.ndim == 2 else P()

        shardings = larix.named_shardings(model, mesh, rule)
        want = [P("model"), P()] * 3

        # Outside jit: device_put. The static field and the non-array leaf are untouched.
        placed = larix.filter_shard(model, shardings)
        assert specs(placed) == want, specs(placed)
        assert placed.name == "mlp" and placed.activation is model.activation
        w = placed.layers[0].weight
        assert len(w.addressable_shards) == 8 and w.addressable_shards[0].data.shape == (8, 16)
        assert larix.tree_equal(placed, model)

        # Inside filter_jit: a constraint; the outputs come out with it.
        @larix.filter_jit
        def constrain(m):
            return larix.filter_shard(m, shardings)

        out = constrain(model)
        assert specs(out) == want and out.name == "mlp"
        assert larix.tree_equal(out, model)

        # A prefix: one sharding per layer, replicate the rest.
        rows = NamedSharding(mesh, P("data"))
        prefix = larix.filter_shard(model, MLP((rows, None, NamedSharding(mesh, P())), name=None))
        assert specs(prefix.layers[0]) == [P("data")] * 2
        assert prefix.layers[1].weight is model.layers[1].weight
        assert specs(prefix.layers[2]) == [P()] * 2

        # A dimension the mesh axis does not divide: a teaching error with the path.
        try:
            larix.named_shardings(model, mesh, P("model", "data"))
        except ValueError as error:
            assert "'layers.0.bias'" in str(error), error
        else:
            raise AssertionError("expected a ValueError")
        try:
            larix.named_shardings({"w": jnp.ones((6, 2))}, mesh, P("model"))
        except ValueError as error:
            assert "'w' of shape (6, 2)" in str(error) and "not divisible by the 4 devices" in str(error), error
        else:
            raise AssertionError("expected a ValueError")

        # Explicit mesh axes (jax.make_mesh's default): reshard, under jax.set_mesh.
        explicit = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
        with jax.set_mesh(explicit):
            ex = larix.named_shardings(model, explicit, rule)
            out = larix.filter_jit(lambda m: larix.filter_shard(m, ex))(model)
        assert [s[0] if s else None for s in specs(out)] == ["model", None] * 3
        print("ok")
        """
    )


def test_filter_jit_preserves_and_follows_shardings_on_eight_devices():
    run_python(
        """
        import jax, jax.numpy as jnp, numpy as np, larix
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from distributed_helpers import make_model

        mesh = Mesh(np.array(jax.devices()), ("data",))
        rows, cols = NamedSharding(mesh, P("data")), NamedSharding(mesh, P(None, "data"))
        x = larix.filter_shard(jnp.arange(64.0).reshape(8, 8), rows)

        # An elementwise op keeps its input's sharding, through filter_jit.
        y = larix.filter_jit(lambda x, scale: jnp.tanh(x) * scale)(x, 2.0)
        assert y.sharding == rows, y.sharding
        np.testing.assert_allclose(y, np.tanh(np.arange(64.0).reshape(8, 8)) * 2, rtol=1e-6)

        # A model whose arrays are sharded keeps them so when updated elementwise.
        model = larix.filter_shard(make_model(), larix.named_shardings(make_model(), mesh, P("data")))
        halved = larix.filter_jit(lambda m: larix.tree_at(lambda m: m.layers, m, jax.tree_util.tree_map(lambda a: a / 2, m.layers)))(model)
        for a in jax.tree_util.tree_leaves(larix.filter(halved, larix.is_array)):
            assert a.sharding == rows, a.sharding
        assert halved.name == "mlp"

        # Outputs follow the shardings asked for inside the function.
        @larix.filter_jit
        def f(x, model):
            return larix.filter_shard(x + 1, cols), larix.filter_shard(model, NamedSharding(mesh, P()))

        z, replicated = f(x, model)
        assert z.sharding == cols, z.sharding
        assert all(a.sharding.is_fully_replicated for a in jax.tree_util.tree_leaves(larix.filter(replicated, larix.is_array)))
        assert replicated.name == "mlp" and larix.tree_equal(replicated, model)
        print("ok")
        """
    )


def test_data_parallel_training_on_eight_devices():
    run_python(
        """
        import jax, numpy as np, larix
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from distributed_helpers import OPTIMISER, make_data, make_model, parameters, train

        x, y = make_data(batch=32)
        steps = 4
        want_losses, want_model, _ = train(make_model(), x, y, steps)  # one device

        mesh = Mesh(np.array(jax.devices()), ("data",))
        replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
        model = larix.filter_shard(make_model(), replicated)
        xs, ys = larix.filter_shard((x, y), batch)
        assert xs.addressable_shards[0].data.shape == (4, 16)
        losses, model, opt_state = train(model, xs, ys, steps, model_shardings=replicated)

        np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
        got, want = parameters(model), parameters(want_model)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
        for a in jax.tree_util.tree_leaves(larix.filter((model, opt_state), larix.is_array)):
            assert a.sharding.is_fully_replicated and len(a.sharding.device_set) == 8, a.sharding
        assert model.name == "mlp"
        # Per-example outputs stay sharded like the batch.
        predictions = larix.filter_jit(lambda m, x: m(x))(model, xs)
        assert predictions.sharding.spec == P("data"), predictions.sharding
        print("ok")
        """
    )


def test_fully_sharded_training_on_eight_devices():
    run_python(
        """
        import jax, numpy as np, larix
        from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
        from distributed_helpers import OPTIMISER, make_data, make_model, make_step, parameters

        x, y = make_data(batch=32)
        steps = 4

        def rule(path, array):  # dimension 0 of every 2-D weight over 'model'
            return P("model") if array.ndim == 2 else P()

        def specs(tree):  # without trailing Nones: P('model', None) and P('model') are one layout
            out = []
            for a in jax.tree_util.tree_leaves(tree):
                if isinstance(a, jax.Array):
                    spec = tuple(a.sharding.spec)
                    while spec and spec[-1] is None:
                        spec = spec[:-1]
                    out.append(spec)
            return out

        def run(mesh):
            shardings = None if mesh is None else larix.named_shardings(make_model(), mesh, rule)
            model = make_model() if mesh is None else larix.filter_shard(make_model(), shardings)
            xs, ys = (x, y) if mesh is None else larix.filter_shard((x, y), NamedSharding(mesh, P("data")))
            opt_state = OPTIMISER.init(larix.filter(model, larix.is_inexact_array))
            step = make_step(shardings)
            losses = []
            for _ in range(steps):
                model, opt_state, loss = step(model, opt_state, xs, ys)
                losses.append(float(loss))
                if mesh is not None:  # the parameters keep their shardings, step after step
                    assert specs(model) == [("model",), ()] * 3, specs(model)
                    assert specs(opt_state[0].mu) == [("model",), ()] * 3, specs(opt_state[0].mu)
            return losses, model

        want_losses, want_model = run(None)
        auto = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
        explicit = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)
        for mesh in (auto, explicit):
            with jax.set_mesh(mesh):
                losses, model = run(mesh)
            np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
            got, want = parameters(model), parameters(want_model)
            for k in want:
                np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
            w = model.layers[1].weight
            assert w.addressable_shards[0].data.shape == (8, 32)  # 32 rows over 4 devices
            assert model.name == "mlp"
        print("ok")
        """
    )
