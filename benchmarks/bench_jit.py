"""Per-call cost of jitted calls through each partition strategy, and against the peers.

Sections (every ratio is to raw `jax.jit` on the same arrays, measured in the same rounds):

- `jit N static`: a jitted `x * 2` whose argument is a Module holding one float32[8] array
  and a tuple of N Python ints, N in {0, 100, 1k, 10k, 100k}. Cases: `larix filter_jit`
  (the model passed straight in; goal 1.3x), `tree strategy` (partition once, the static
  tree as a `static_argnums` value of `jax.jit`), `dict strategy` (split once, the skeleton
  and the static dict closed over, the array dict passed to `jax.jit`), `equinox
  filter_jit`, `inox manual` (Inox's partition once + `jax.jit` on the dict) and `nnx jit`.
- `MLP forward`: a depth-8, width-128 MLP on a batch of 32 (goal 1.05x).
- `adam step`: one optax adam training step whose returned model and optimiser state are
  fed back into the next call (goal 1.05x).
- `jit dict of arrays`: a jitted sum over a dict of 20 float32[4] arrays under `str`
  keys, a state dict as `split` gives it (goal 1.5x).
- `first call`: trace + compile + run of a new jitted function at N = 100k (goal 1.5x).
- `named scopes`: a larix.nn.MLP (depth 8, width 128) on a batch of 32, traced with
  `larix.named_scopes` on (the default) and off: jitted (goal 1.05x: scopes are seen only
  while tracing) and eager.
- `re-trace`: the ninth trace of a function whose argument holds a 40k-leaf configuration,
  when a static field changes (goal: no slower than Equinox, the baseline here).
- `split+merge`: `larix.split` and `larix.merge` of the N-leaf tree, beside
  `jax.tree_util.tree_flatten` of it (the least any strategy must do once).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp

import larix
from harness import Case, Plot, Settings

SIZES = (0, 100, 1_000, 10_000, 100_000)
WIDTH, DEPTH, BATCH = 128, 8, 32

PLOTS = (
    Plot(
        section="jit N static",
        filename="jit_scaling.png",
        title="µs per jitted call; argument = f32[8] + N static ints",
        docs_path="docs/assets/jit_scaling.png",
    ),
)


class Tree(larix.Module):
    x: jax.Array
    statics: tuple[int, ...]


def _tree(n: int) -> Tree:
    return Tree(jnp.zeros(8, jnp.float32), tuple(range(n)))


def _raw(n: int) -> Callable[[], Any]:
    x = jnp.zeros(8, jnp.float32)
    return functools.partial(jax.jit(lambda x: x * 2), x)


def _larix(n: int) -> Callable[[], Any]:
    return functools.partial(larix.filter_jit(lambda t: t.x * 2), _tree(n))


def _tree_strategy(n: int) -> Callable[[], Any]:
    params, static = larix.partition(_tree(n), larix.is_array)
    f = jax.jit(lambda p, s: larix.combine(p, s).x * 2, static_argnums=1)
    return functools.partial(f, params, static)


def _dict_strategy(n: int) -> Callable[[], Any]:
    skeleton, arrays, rest = larix.split(_tree(n), larix.is_array)
    f = jax.jit(lambda a: larix.merge(skeleton, a, rest).x * 2)
    return functools.partial(f, arrays)


def _equinox(n: int) -> Callable[[], Any]:
    import equinox as eqx

    return functools.partial(eqx.filter_jit(lambda t: t.x * 2), _tree(n))


def _inox(n: int) -> Callable[[], Any]:
    import inox

    treedef, arrays, others = inox.tree.partition(_tree(n), jax.Array)
    f = jax.jit(lambda a: inox.tree.combine(treedef, a, others).x * 2)
    return functools.partial(f, arrays)


def _nnx(n: int) -> Callable[[], Any]:
    from flax import nnx

    class NTree(nnx.Module):
        def __init__(self) -> None:
            self.x = nnx.Param(jnp.zeros(8, jnp.float32))
            self.statics = tuple(range(n))

    f = nnx.jit(lambda t: t.x[...] * 2)
    return functools.partial(f, NTree())


# -- MLP -------------------------------------------------------------------------------------


class MLP(larix.Module):
    layers: tuple[tuple[jax.Array, jax.Array], ...]
    activation: Callable[[jax.Array], jax.Array] = larix.field(static=True, default=jax.nn.relu)

    def __call__(self, x: jax.Array) -> jax.Array:
        for w, b in self.layers[:-1]:
            x = self.activation(x @ w + b)
        w, b = self.layers[-1]
        return x @ w + b


def _mlp() -> tuple[MLP, jax.Array, jax.Array]:
    keys = jax.random.split(jax.random.PRNGKey(0), DEPTH)
    layers = tuple((jax.random.normal(k, (WIDTH, WIDTH)) / WIDTH**0.5, jnp.zeros(WIDTH)) for k in keys)
    x = jax.random.normal(jax.random.PRNGKey(1), (BATCH, WIDTH))
    return MLP(layers), x, jnp.zeros((BATCH, WIDTH))


def _raw_forward() -> Callable[[], Any]:
    model, x, _ = _mlp()
    return functools.partial(jax.jit(lambda layers, x: MLP(layers)(x)), model.layers, x)


def _larix_forward() -> Callable[[], Any]:
    model, x, _ = _mlp()
    return functools.partial(larix.filter_jit(lambda m, x: m(x)), model, x)


def _equinox_forward() -> Callable[[], Any]:
    import equinox as eqx

    model, x, _ = _mlp()
    return functools.partial(eqx.filter_jit(lambda m, x: m(x)), model, x)


def _loss(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((model(x) - y) ** 2)


def _stepper(step: Callable[..., Any], state: list[Any], batch: tuple[Any, ...]) -> Callable[[], Any]:
    def run() -> Any:
        state[0], state[1], loss = step(state[0], state[1], *batch)
        return loss

    return run


def _raw_adam() -> Callable[[], Any]:
    import optax

    model, x, y = _mlp()
    optim = optax.adam(1e-3)

    @jax.jit
    def step(layers: Any, opt_state: Any, x: jax.Array, y: jax.Array) -> Any:
        loss, grads = jax.value_and_grad(lambda ls: _loss(MLP(ls), x, y))(layers)
        updates, opt_state = optim.update(grads, opt_state, layers)
        return optax.apply_updates(layers, updates), opt_state, loss

    return _stepper(step, [model.layers, optim.init(model.layers)], (x, y))


def _larix_adam() -> Callable[[], Any]:
    import optax

    model, x, y = _mlp()
    optim = optax.adam(1e-3)

    @larix.filter_jit
    def step(model: MLP, opt_state: Any, x: jax.Array, y: jax.Array) -> Any:
        loss, grads = jax.value_and_grad(_loss)(model, x, y)
        updates, opt_state = optim.update(grads, opt_state, model)
        return larix.apply_updates(model, updates), opt_state, loss

    return _stepper(step, [model, optim.init(model)], (x, y))


def _equinox_adam() -> Callable[[], Any]:
    import equinox as eqx
    import optax

    model, x, y = _mlp()
    optim = optax.adam(1e-3)

    @eqx.filter_jit
    def step(model: MLP, opt_state: Any, x: jax.Array, y: jax.Array) -> Any:
        loss, grads = eqx.filter_value_and_grad(_loss)(model, x, y)
        updates, opt_state = optim.update(grads, opt_state, model)
        return eqx.apply_updates(model, updates), opt_state, loss

    return _stepper(step, [model, optim.init(model)], (x, y))


# -- first call and split --------------------------------------------------------------------


def _array_dict() -> dict[str, jax.Array]:
    return {f"layers.{i}.weight": jnp.full((4,), float(i)) for i in range(20)}


def _sum_values(d: dict[str, jax.Array]) -> jax.Array:
    return sum(d.values())


def _raw_dict() -> Callable[[], Any]:
    return functools.partial(jax.jit(_sum_values), _array_dict())


def _larix_dict() -> Callable[[], Any]:
    return functools.partial(larix.filter_jit(_sum_values), _array_dict())


def _first_raw() -> Callable[[], Any]:
    x = jnp.zeros(8, jnp.float32)
    return functools.partial(jax.jit(lambda x: x * 2), x)


def _first_larix(n: int) -> Callable[[], Any]:
    return functools.partial(larix.filter_jit(lambda t: t.x * 2), _tree(n))


def _split(n: int) -> Callable[[], Any]:
    tree = _tree(n)
    # A fresh Module each call: a memoised split would time only the memo.
    return lambda: larix.split(Tree(tree.x, tree.statics), larix.is_array)


def _merge(n: int) -> Callable[[], Any]:
    parts = larix.split(_tree(n), larix.is_array)
    return functools.partial(larix.merge, *parts)


def _flatten(n: int) -> Callable[[], Any]:
    return functools.partial(jax.tree_util.tree_flatten, _tree(n))


# -- named scopes ------------------------------------------------------------------------------


def _nn_mlp() -> tuple[Any, jax.Array]:
    model = larix.nn.MLP(WIDTH, WIDTH, WIDTH, DEPTH, key=jax.random.PRNGKey(0))
    return model, jax.random.normal(jax.random.PRNGKey(1), (BATCH, WIDTH))


def _scoped_forward(enabled: bool, jit: bool) -> Callable[[], Any]:
    model, x = _nn_mlp()
    forward = larix.filter_vmap(lambda m, x: m(x), in_axes=(None, 0))
    if jit:
        forward = larix.filter_jit(forward)
    with larix.named_scopes(enabled):
        jax.block_until_ready(forward(model, x))  # traced (and compiled) with or without scopes
    return functools.partial(forward, model, x)


# -- re-trace ----------------------------------------------------------------------------------

RETRACE_LEAVES = 40_000
RETRACE_EARLIER = 8  # traces made before the timed one, to compare against


class Configured(larix.Module):
    x: jax.Array
    config: dict[str, float]  # many non-array leaves: static for a filtered transform
    step: int = larix.field(static=True)


_CONFIG = {f"p{i}": float(i) for i in range(RETRACE_LEAVES)}


def _retrace(jit: Callable[..., Any]) -> Callable[[], Any]:
    """A function traced `RETRACE_EARLIER` times, called with a new static value: one re-trace."""
    f = jit(lambda m: m.x * m.step)
    x = jnp.zeros(8, jnp.float32)
    for step in range(RETRACE_EARLIER):
        jax.block_until_ready(f(Configured(x, _CONFIG, step)))
    return functools.partial(f, Configured(x, _CONFIG, RETRACE_EARLIER))


def _retrace_larix() -> Callable[[], Any]:
    return _retrace(larix.filter_jit)


def _retrace_equinox() -> Callable[[], Any]:
    import equinox as eqx

    return _retrace(eqx.filter_jit)


def cases(settings: Settings) -> Iterable[Case]:
    section = "jit N static"
    for n in SIZES:
        yield Case(section, "raw jax.jit", functools.partial(_raw, n), n=n)
        common = {"n": n, "baseline": "raw jax.jit"}
        yield Case(section, "larix filter_jit", functools.partial(_larix, n), goal=1.3, **common)
        yield Case(section, "dict strategy", functools.partial(_dict_strategy, n), **common)
        yield Case(section, "tree strategy", functools.partial(_tree_strategy, n), **common)
        yield Case(section, "equinox filter_jit", functools.partial(_equinox, n), requires=("equinox",), **common)
        # The peers' set-up is slow at large N (Inox's partition of 100k leaves takes ~1 s,
        # building an nnx module of 100k attributes ~10 s): quick mode keeps the small N.
        if n <= 1_000 or not settings.quick:
            yield Case(section, "inox manual", functools.partial(_inox, n), requires=("inox",), **common)
            yield Case(section, "nnx jit", functools.partial(_nnx, n), requires=("flax",), **common)

    section = "MLP forward"
    yield Case(section, "raw jax.jit", _raw_forward)
    yield Case(section, "larix filter_jit", _larix_forward, baseline="raw jax.jit", goal=1.05)
    yield Case(section, "equinox filter_jit", _equinox_forward, baseline="raw jax.jit", requires=("equinox",))

    section = "adam step"
    yield Case(section, "raw jax.jit", _raw_adam, requires=("optax",))
    yield Case(section, "larix filter_jit", _larix_adam, baseline="raw jax.jit", goal=1.05, requires=("optax",))
    yield Case(
        section, "equinox filter_jit", _equinox_adam, baseline="raw jax.jit", requires=("optax", "equinox")
    )

    section = "jit dict of arrays"
    yield Case(section, "raw jax.jit", _raw_dict)
    yield Case(section, "larix filter_jit", _larix_dict, baseline="raw jax.jit", goal=1.5)

    section = "first call"
    n = 100_000
    yield Case(section, "raw jax.jit", _first_raw, n=n, cold=True)
    yield Case(
        section, "larix filter_jit", functools.partial(_first_larix, n), n=n, baseline="raw jax.jit", goal=1.5, cold=True
    )

    section = "named scopes"
    for jit in (True, False):
        mode = "jitted" if jit else "eager"
        yield Case(section, f"{mode}, scopes off", functools.partial(_scoped_forward, False, jit))
        yield Case(
            section,
            f"{mode}, scopes on",
            functools.partial(_scoped_forward, True, jit),
            baseline=f"{mode}, scopes off",
            goal=1.05 if jit else None,
        )

    section = "re-trace"
    common = {"n": RETRACE_LEAVES, "cold": True, "requires": ("equinox",)}
    yield Case(section, "equinox filter_jit", _retrace_equinox, **common)
    yield Case(section, "larix filter_jit", _retrace_larix, baseline="equinox filter_jit", goal=1.0, **common)

    section = "split+merge"
    for n in SIZES:
        yield Case(section, "jax tree_flatten", functools.partial(_flatten, n), n=n, block=False)
        yield Case(section, "larix split", functools.partial(_split, n), n=n, baseline="jax tree_flatten", block=False)
        yield Case(section, "larix merge", functools.partial(_merge, n), n=n, baseline="jax tree_flatten", block=False)
