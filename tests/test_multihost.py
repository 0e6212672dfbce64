"""Multi-host data-parallel training: two processes on localhost, one global mesh.

Each worker is a separate Python with 2 CPU devices that joins the other through
`jax.distributed.initialize` (CPU collectives over gloo). Together they form a mesh of 4
devices; each process feeds its half of the global batch, and the parameters are
replicated. Both must end with the same parameters, equal to a one-process run of the same
steps on the whole batch.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from distributed_helpers import make_data, make_model, parameters, subprocess_env, train
from markdown_code import DOCS, code_blocks

STEPS = 3
BATCH = 32
TIMEOUT_S = 50  # for both workers together; a healthy run takes about 10 s

WORKER = textwrap.dedent(
    """
    import sys

    import jax

    process_id, port, out_path, steps, batch = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # collectives across processes
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=2,
        process_id=process_id,
        initialization_timeout=30,
    )

    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    import larix
    from distributed_helpers import make_data, make_model, parameters, train

    assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
    mesh = Mesh(np.array(jax.devices()), ("data",))  # global: both processes' devices
    replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    x, y = make_data(batch=batch)  # the global batch; this process holds its half of it
    start, stop = process_id * batch // 2, (process_id + 1) * batch // 2
    xs = jax.make_array_from_process_local_data(rows, x[start:stop])
    ys = jax.make_array_from_process_local_data(rows, y[start:stop])
    assert xs.shape == x.shape and not xs.is_fully_addressable
    assert {s.index[0].start for s in xs.addressable_shards} == {start, start + batch // 4}

    model = larix.filter_shard(make_model(), replicated)  # the same values on every process
    losses, model, _ = train(model, xs, ys, steps, model_shardings=replicated)
    np.savez(out_path, losses=np.asarray(losses), **parameters(model))
    jax.distributed.shutdown()
    print("done", process_id)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_workers(tmp_path) -> list[dict[str, np.ndarray]]:
    port = _free_port()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = subprocess_env(devices=2)
    outputs = [tmp_path / f"process{i}.npz" for i in range(2)]
    logs = [open(tmp_path / f"process{i}.log", "w+") for i in range(2)]
    workers = []
    try:
        for i in range(2):
            command = [sys.executable, "-W", "error", str(script), str(i), str(port), str(outputs[i]), str(STEPS), str(BATCH)]
            workers.append(subprocess.Popen(command, env=env, stdout=logs[i], stderr=subprocess.STDOUT))
        deadline = time.monotonic() + TIMEOUT_S
        for worker in workers:
            try:
                worker.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass
        failed = [i for i, w in enumerate(workers) if w.returncode != 0]
        if failed:
            texts = []
            for i in range(2):
                logs[i].seek(0)
                state = "timed out" if workers[i].returncode is None else f"exit {workers[i].returncode}"
                texts.append(f"--- process {i} ({state}):\n{logs[i].read()[-4000:]}")
            pytest.fail(f"multi-host workers failed (port {port}):\n" + "\n".join(texts))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=10)
        for log in logs:
            log.close()
    return [dict(np.load(path)) for path in outputs]


def test_two_process_data_parallel_training(tmp_path):
    results = _run_workers(tmp_path)

    # Both processes hold the same replicated parameters, bit for bit.
    assert results[0].keys() == results[1].keys()
    for key in results[0]:
        np.testing.assert_array_equal(results[0][key], results[1][key], err_msg=key)

    # And they match one process training on the whole batch.
    x, y = make_data(batch=BATCH)
    want_losses, want_model, _ = train(make_model(), x, y, STEPS)
    np.testing.assert_allclose(results[0]["losses"], want_losses, rtol=1e-5)
    want = parameters(want_model)
    assert set(want) | {"losses"} == set(results[0])
    for key, value in want.items():
        np.testing.assert_allclose(results[0][key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_the_docs_recipe_runs_as_written(tmp_path):
    # docs/transforms.md, "Several hosts": the page's own train.py and shell commands, as a
    # reader would copy them (only the port is changed, to a free one).
    blocks = code_blocks(DOCS / "transforms.md")
    scripts = [b for b in blocks if b.is_recipe and b.code.startswith("# train.py:")]
    commands = [b for b in blocks if b.lang == "bash" and "python train.py 0 2" in b.code]
    assert len(scripts) == 1 and len(commands) == 1, "the multi-host recipe has moved; update this test"
    (tmp_path / "train.py").write_text(scripts[0].code)
    assert "127.0.0.1:12345" in commands[0].code
    shell = commands[0].code.replace("127.0.0.1:12345", f"127.0.0.1:{_free_port()}")

    # `python` in the commands is this interpreter (a script, not a link: a link to a
    # virtual environment's python outside it would not find the environment).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    env = subprocess_env(devices=1)
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    env["PYTHONWARNINGS"] = "error"
    process = subprocess.Popen(
        ["bash", "-c", shell],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: both workers can be stopped together
    )
    try:
        out, _ = process.communicate(timeout=TIMEOUT_S + 30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        pytest.fail(f"the recipe ran for more than {TIMEOUT_S + 30} s:\n{out[-4000:]}")
    # `wait` hides the background process's exit status: look for its traceback too.
    assert process.returncode == 0 and "Traceback" not in out, f"the recipe failed:\n{out[-4000:]}"
    printed = re.findall(r"^loss after 20 steps: (\S+)$", out, re.MULTILINE)
    assert len(printed) == 1, f"process 0 should print its loss once:\n{out[-4000:]}"
    assert 0 < float(printed[0]) < 1
