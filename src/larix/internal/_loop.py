"""while_loop and scan with reverse-mode differentiation, checkpointing and buffers.

`jax.lax.while_loop` cannot be reverse-mode differentiated: its number of steps is unknown
when the program is traced. Given a bound `max_steps`, the loop can instead be written as
a `lax.scan` over `max_steps` steps, each of which runs the body only while the condition
holds (a `lax.cond`, so finished steps cost a predicate). `kind="checkpointed"` splits
the steps into blocks: an outer scan over the blocks, each an inner scan wrapped in
`jax.checkpoint`. Reverse mode then stores the carry once per block and recomputes one
block at a time: about `2 * sqrt(max_steps)` carries in memory by default, for one extra
forward pass. (Equinox uses the online "treeverse" schedule, which needs no bound on the
steps and recomputes less; the results are the same, the schedule is not.)

A finished block is skipped as a whole by a `lax.cond` around it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, Union

import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu

from .._module import Module
from ._guards import nondifferentiable_backward

__all__ = ["MaybeBuffer", "buffer_at_set", "scan", "while_loop"]


class _Buffer(Module):
    """An array in a loop's carry that supports only reads `buf[i]` and `buf.at[i].set(x, pred=p)`."""

    _array: Any

    def __getitem__(self, item: Any) -> Any:
        return self._array[item]

    @property
    def at(self) -> _BufferAt:
        return _BufferAt(self)

    @property
    def shape(self) -> tuple[int, ...]:
        return self._array.shape

    @property
    def dtype(self) -> Any:
        return self._array.dtype

    @property
    def ndim(self) -> int:
        return self._array.ndim

    @property
    def size(self) -> int:
        return self._array.size


class _BufferAt:
    __slots__ = ("_buffer",)

    def __init__(self, buffer: _Buffer):
        self._buffer = buffer

    def __getitem__(self, item: Any) -> _BufferSet:
        return _BufferSet(self._buffer, item)


class _BufferSet:
    __slots__ = ("_buffer", "_item")

    def __init__(self, buffer: _Buffer, item: Any):
        self._buffer, self._item = buffer, item

    def set(self, x: Any, *, pred: Any = True, **kwargs: Any) -> _Buffer:
        return _Buffer(buffer_at_set(self._buffer._array, self._item, x, pred=pred, **kwargs))


class MaybeBuffer:
    """Type annotation for a carry field that is a buffer inside a loop: `MaybeBuffer[Array]`."""

    def __class_getitem__(cls, item: Any) -> Any:
        return Union[item, _Buffer]  # noqa: UP007 - `item` may be a jaxtyping annotation


def buffer_at_set(buffer: Any, item: Any, x: Any, *, pred: Any = True, **kwargs: Any) -> Any:
    """`buffer.at[item].set(x)` where `pred` holds (an array is allowed), for arrays and buffers."""
    if isinstance(buffer, _Buffer):
        return buffer.at[item].set(x, pred=pred, **kwargs)
    if pred is not True:
        x = jnp.where(pred, x, buffer[item])
    return buffer.at[item].set(x, **kwargs)


# Buffers are found by identity: the leaves of `buffers(carry)` are leaves of `carry`.


def _buffer_positions(buffers: Callable[[Any], Any] | None, carry: Any) -> frozenset[int]:
    if buffers is None:
        return frozenset()
    wanted = {id(x) for x in jtu.tree_leaves(buffers(carry))}
    return frozenset(i for i, x in enumerate(jtu.tree_leaves(carry)) if id(x) in wanted)


def _wrap(carry: Any, positions: frozenset[int]) -> Any:
    if not positions:
        return carry
    leaves, treedef = jtu.tree_flatten(carry)
    return treedef.unflatten([_Buffer(x) if i in positions else x for i, x in enumerate(leaves)])


def _unwrap(carry: Any, positions: frozenset[int], treedef: Any) -> Any:
    # Rebuilt from the leaves with the structure of the initial carry: this drops this
    # loop's buffer wrappers and keeps those of an enclosing loop, which that structure has.
    if not positions:
        return carry
    leaves = jtu.tree_leaves(carry)
    if len(leaves) != treedef.num_leaves:
        raise ValueError(
            f"larix.internal: the loop body returned a carry with {len(leaves)} leaves, but the "
            f"initial carry has {treedef.num_leaves}: the body must return the carry's structure."
        )
    return treedef.unflatten(leaves)


def _block_size(max_steps: int, checkpoints: int | None) -> int:
    if checkpoints is None:
        return max(1, math.isqrt(max_steps - 1) + 1 if max_steps > 1 else 1)
    if not isinstance(checkpoints, int) or checkpoints < 1:
        raise ValueError(f"larix.internal.while_loop: checkpoints must be a positive int or None, got {checkpoints!r}.")
    return max(1, -(-max_steps // checkpoints))


def _scanned_loop(cond: Callable[[Any], Any], body: Callable[[Any], Any], init: Any, max_steps: int, block: int, checkpoint: bool) -> Any:
    """Run `body` while `cond` holds, at most `max_steps` times, as scans of `block` steps."""

    def step(carry: Any, _: Any) -> tuple[Any, None]:
        return lax.cond(cond(carry), body, lambda c: c, carry), None

    def run_block(carry: Any) -> Any:
        return lax.scan(step, carry, None, length=block)[0]

    if checkpoint:
        run_block = jax.checkpoint(run_block, prevent_cse=False)

    def outer(carry: Any, _: Any) -> tuple[Any, None]:
        return lax.cond(cond(carry), run_block, lambda c: c, carry), None

    return lax.scan(outer, init, None, length=-(-max_steps // block))[0]


def while_loop(
    cond_fun: Callable[[Any], Any],
    body_fun: Callable[[Any], Any],
    init_val: Any,
    *,
    max_steps: int | None = None,
    buffers: Callable[[Any], Any] | None = None,
    kind: Literal["lax", "checkpointed", "bounded"],
    checkpoints: int | None = None,
    base: int = 16,
) -> Any:
    """A while loop that can be reverse-mode differentiated (given `max_steps`).

    **Arguments:**

    - `cond_fun`, `body_fun`, `init_val`: as for `jax.lax.while_loop`.
    - `max_steps`: stop after this many steps even if `cond_fun` still holds; `None` for
      no bound.
    - `buffers`: a function of the carry returning some of its arrays (a pytree of them).
      Inside the loop those are buffers, supporting only `buf[i]` and
      `buf.at[i].set(x, pred=...)`: write each location at most once, and read only
      locations written.
    - `kind`:
        - `"lax"`: `jax.lax.while_loop` (with a step counter if `max_steps` is given).
          Forward-mode differentiable only.
        - `"checkpointed"`: scans over blocks of steps, each block rematerialised in the
          backward pass (see the module's notes). Reverse- and forward-mode
          differentiable; needs `max_steps` to be reverse-mode differentiated (without
          it the loop runs as `"lax"` and a cotangent raises an error).
        - `"bounded"`: like `"checkpointed"` without rematerialisation: faster backward,
          more memory. Needs `max_steps`.
    - `checkpoints`: for `"checkpointed"`, the number of blocks, i.e. the number of
      carries stored for the backward pass; default about `sqrt(max_steps)`.
    - `base`: for `"bounded"`, the number of steps per block.

    **Returns:** the final carry.

    !!! example
        ```python
        >>> import jax, jax.numpy as jnp
        >>> from larix.internal import while_loop
        >>> def halve_until_small(x):
        ...     return while_loop(lambda c: c > 1.0, lambda c: c / 2, x, max_steps=10, kind="checkpointed")
        >>> jax.grad(halve_until_small)(10.0)
        Array(0.0625, dtype=float32, weak_type=True)

        ```
    """
    if kind not in ("lax", "checkpointed", "bounded"):
        raise ValueError(f'larix.internal.while_loop: kind must be "lax", "checkpointed" or "bounded", got {kind!r}.')
    if max_steps is not None and (not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 0):
        raise ValueError(f"larix.internal.while_loop: max_steps must be a non-negative int or None, got {max_steps!r}.")
    if kind == "bounded" and max_steps is None:
        raise ValueError('larix.internal.while_loop: kind="bounded" needs an int max_steps.')
    positions = _buffer_positions(buffers, init_val)
    init_val = jtu.tree_map(jnp.asarray, init_val)
    treedef = jtu.tree_structure(init_val)

    def cond(carry: Any) -> Any:
        steps, value = carry
        pred = cond_fun(_wrap(value, positions))
        return pred if max_steps is None else pred & (steps < max_steps)

    def body(carry: Any) -> Any:
        steps, value = carry
        new = _unwrap(body_fun(_wrap(value, positions)), positions, treedef)
        return steps + 1, new

    init = (jnp.array(0, jnp.int32), init_val)
    if max_steps == 0:
        return init_val
    if kind == "lax" or max_steps is None:
        _, final = lax.while_loop(cond, body, init)
        if kind == "checkpointed":
            final = nondifferentiable_backward(
                final,
                msg='larix.internal.while_loop(kind="checkpointed") was differentiated in reverse '
                "mode without max_steps. Pass max_steps=N (an upper bound on the number of steps).",
            )
        return final
    block = _block_size(max_steps, checkpoints) if kind == "checkpointed" else max(1, min(base, max_steps))
    _, final = _scanned_loop(cond, body, init, max_steps, block, checkpoint=kind == "checkpointed")
    return final


def scan(
    f: Callable[[Any, Any], tuple[Any, Any]],
    init: Any,
    xs: Any,
    length: int | None = None,
    *,
    buffers: Callable[[Any], Any] | None = None,
    kind: Literal["lax", "checkpointed"],
    checkpoints: int | Literal["all"] | None = None,
) -> tuple[Any, Any]:
    """`jax.lax.scan`, optionally checkpointed to save memory in the backward pass.

    **Arguments:**

    - `f`, `init`, `xs`, `length`: as for `jax.lax.scan`.
    - `buffers`: as for [`larix.internal.while_loop`][], of the carry.
    - `kind`: `"lax"` for `jax.lax.scan`; `"checkpointed"` to rematerialise the steps in
      the backward pass.
    - `checkpoints`: for `"checkpointed"`: `"all"` rematerialises each step from the
      carry stored before it; an int `n` stores `n` carries and recomputes the blocks
      between them; `None` uses about `sqrt(length)`.

    **Returns:** `(final_carry, ys)`, as `jax.lax.scan`.
    """
    if kind not in ("lax", "checkpointed"):
        raise ValueError(f'larix.internal.scan: kind must be "lax" or "checkpointed", got {kind!r}.')
    positions = _buffer_positions(buffers, init)
    init = jtu.tree_map(jnp.asarray, init)
    treedef = jtu.tree_structure(init)

    def step(carry: Any, x: Any) -> tuple[Any, Any]:
        new, y = f(_wrap(carry, positions), x)
        return _unwrap(new, positions, treedef), y

    if kind == "lax":
        return lax.scan(step, init, xs, length=length)
    if checkpoints == "all":
        return lax.scan(jax.checkpoint(step, prevent_cse=False), init, xs, length=length)
    n = length if length is not None else jtu.tree_leaves(xs)[0].shape[0]
    block = _block_size(n, checkpoints) if n else 1
    return _blocked_scan(step, init, xs, n, block)


def _blocked_scan(step: Callable[[Any, Any], tuple[Any, Any]], init: Any, xs: Any, n: int, block: int) -> tuple[Any, Any]:
    blocks = -(-n // block)
    padded = blocks * block
    index = jnp.arange(padded).reshape(blocks, block)

    def pad(x: Any) -> Any:
        x = jnp.pad(x, [(0, padded - n)] + [(0, 0)] * (x.ndim - 1))
        return x.reshape(blocks, block, *x.shape[1:])

    xs_blocks = jtu.tree_map(pad, xs)
    _, y_struct = jax.eval_shape(step, init, jtu.tree_map(lambda x: x[0], xs))

    def skip(carry: Any, _: Any) -> tuple[Any, Any]:
        return carry, jtu.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), y_struct)

    def inner(carry: Any, ix: Any) -> tuple[Any, Any]:
        i, x = ix
        return lax.cond(i < n, step, skip, carry, x)

    @jax.checkpoint
    def run_block(carry: Any, ix: Any) -> tuple[Any, Any]:
        return lax.scan(inner, carry, ix)


    final, ys = lax.scan(run_block, init, (index, xs_blocks))
    ys = jtu.tree_map(lambda y: y.reshape(padded, *y.shape[2:])[:n], ys)
    return final, ys
