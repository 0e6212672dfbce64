"""filter_jit under threads whose static values' `__eq__` releases the GIL.

filter_jit interns static parts under a lock. Comparing two static parts calls the static
values' own `__eq__`, which may release the GIL (any Python code can) or run the garbage
collector; meanwhile the last reference to an interned static part may die, and its
weakref callback asks for the interning lock. If the lock is not reentrant and still held
by the comparing thread, every thread hangs.

The workload runs in a subprocess with a deadline, so that a deadlock fails this test
(with every thread's stack) instead of hanging the suite: a hung lock would also hang
every later filter_jit call in this process.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time
from typing import Any

import jax.numpy as jnp
import pytest

import larix

THREADS = 8
SECONDS = 4.0  # the workload stops after this long (and after MAX_STEPS per thread)
MAX_STEPS = 400
STALL = 30.0  # the workload is deemed deadlocked if it runs this much past SECONDS


class SlowEq:
    """A static value whose `__eq__` releases the GIL, and now and then collects garbage.
    All instances hash alike, so that interning compares them with one another."""

    _count = 0

    def __init__(self, v: int):
        self.v = v

    def __eq__(self, other: object) -> bool:
        time.sleep(0)  # releases the GIL: another thread may drop the last reference now
        SlowEq._count += 1
        if SlowEq._count % 8 == 0:
            # Frees cyclic garbage, and so runs weakref callbacks, in *this* thread. Young
            # generations only, mostly: a full collection costs ~0.1 s here.
            gc.collect(0 if SlowEq._count % 200 else 2)
        return isinstance(other, SlowEq) and other.v == self.v

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return f"SlowEq({self.v})"


class Model(larix.Module):
    w: Any
    tag: Any = larix.field(static=True)
    other: Any = larix.field(static=True, default=None)


def _apply(m: Model) -> Any:
    return m.w * m.tag.v + (0 if m.other is None else m.other.v)


def _expected(m: Model) -> float:
    return 1.5 * m.tag.v + (0 if m.other is None else m.other.v)


def workload(seconds: float = SECONDS, threads: int = THREADS, max_steps: int = MAX_STEPS) -> list[str]:
    """Run the threads; return the wrong results and errors they met (empty if none)."""
    problems: list[str] = []
    steps = [0] * threads
    barrier = threading.Barrier(threads)
    w = jnp.full((), 1.5, jnp.float32)
    shared = larix.filter_jit(_apply)  # long-lived: its cache is hit, and cleared, often
    compiled = shared.lower(Model(w, tag=SlowEq(0))).compile()

    def check(i: int, step: int, what: str, out: Any, model: Model) -> None:
        if float(out) != _expected(model):
            problems.append(f"thread {i} step {step} ({what}): got {float(out)}, want {_expected(model)}")

    def run(i: int) -> None:
        barrier.wait()
        stop_at = time.monotonic() + seconds
        kept: list[Model] = []
        step = 0
        try:
            while time.monotonic() < stop_at and step < max_steps:
                step += 1
                # A throwaway wrapper on a model with a static value of its own: once both
                # are dropped, cyclic garbage (wrapper -> compiled entry -> static part)
                # holds the last reference to that static part, for some gc to free, in
                # whichever thread, maybe one that is interning.
                if step % 4 == 1:  # (each one compiles: ~0.1 s)
                    unique = Model(w, tag=SlowEq(1000 + step * threads + i))
                    f = larix.filter_jit(_apply)
                    check(i, step, "throwaway", f(unique), unique)
                    del f, unique
                # The compiled function on models with static values of their own: each is
                # split, and its static part interned (compared under the lock with all
                # the others, which hash alike), then refused; no compilation. The model
                # is then dropped, half the time as cyclic garbage (for a gc to free).
                for k in range(3):
                    other = Model(w, tag=SlowEq(-1 - (step * threads + i) * 3 - k))
                    try:
                        compiled(other)
                    except TypeError:
                        pass
                    else:
                        problems.append(f"thread {i} step {step}: compiled for SlowEq(0) ran for {other.tag}")
                    if k % 2:
                        cycle: list[Any] = [other]
                        cycle.append(cycle)
                        del cycle
                    del other
                # The shared wrapper, on models with a few static values: mostly cache hits.
                model = Model(w, tag=SlowEq((i + step) % 3), other=SlowEq(1) if step % 2 else None)
                check(i, step, "shared", shared(model), model)
                kept.append(model)
                try:  # the compiled function runs for SlowEq(0) only
                    check(i, step, "compiled", compiled(model), model)
                except TypeError:
                    if model.tag.v == 0 and model.other is None:
                        problems.append(f"thread {i} step {step}: compiled refused its own statics")
                if step % 3 == 0:  # deletions interleaved: static parts die at random times
                    del kept[: len(kept) // 2]
                if step % 29 == i:
                    larix.clear_caches()
                if kept and step % 5 == 0:
                    check(i, step, "fed back", shared(kept[-1]), kept[-1])  # memoised split
        except Exception as error:  # noqa: BLE001 - reported
            problems.append(f"thread {i} step {step}: {error!r}")
        steps[i] = step

    workers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    if min(steps) == 0:
        problems.append(f"some threads did no work: steps {steps}")
    print(f"steps per thread: {steps}", file=sys.stderr)
    return problems


_CHILD = """
import faulthandler, sys
import test_threads
faulthandler.dump_traceback_later({deadline}, exit=True)  # every thread's stack, then exit
problems = test_threads.workload()
faulthandler.cancel_dump_traceback_later()
print("\\n".join(problems) if problems else "ok")
sys.exit(1 if problems else 0)
"""


def test_filter_jit_does_not_deadlock_when_static_eq_releases_the_gil():
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([tests, *filter(None, [env.get("PYTHONPATH")])])
    try:
        result = subprocess.run(
            [sys.executable, "-c", _CHILD.format(deadline=SECONDS + STALL)],
            cwd=tests,
            env=env,
            capture_output=True,
            text=True,
            timeout=SECONDS + STALL + 120,  # imports included
        )
    except subprocess.TimeoutExpired as error:  # faulthandler did not even get to run
        pytest.fail(f"filter_jit deadlocked: the subprocess hung.\n{error.stderr}")
    if "Timeout (" in result.stderr:  # faulthandler's dump: the workload hung
        stacks = result.stderr[-6000:]
        pytest.fail(
            f"filter_jit deadlocked: {THREADS} threads still ran {STALL} s after the {SECONDS} s "
            f"workload should have ended. Their stacks:\n{stacks}"
        )
    assert result.returncode == 0, (
        f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    assert result.stdout.strip().splitlines()[-1] == "ok"
