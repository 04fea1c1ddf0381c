"""Two JAX processes on the digits, one of them preempted mid-run: the same per-step losses as
one process. Its own module so that the test runner can run it beside test_train.py's long runs."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from test_train import ROOT, SMALL, _losses, _rows, _run_train, one_device_reference, prepare_digits


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepare_digits(tmp_path_factory)


@pytest.fixture(scope="module")
def one_device_losses(data_dir, tmp_path_factory) -> dict[int, float]:
    return one_device_reference(data_dir, tmp_path_factory)


def test_two_processes_preempted_and_resumed_equal_one_process(data_dir, one_device_losses, tmp_path):
    """Two JAX processes (one CPU device each, gloo collectives) sharing a work directory, as two
    hosts would: each reads its slice of every global batch. One of them is preempted (SIGTERM)
    mid-run: both agree on a step (JAX's preemption service), save it and exit 0; restarted, they
    resume there. The losses equal a single uninterrupted process's."""
    import socket

    base = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"PYTHONPATH": str(ROOT)}
    extra = [f"--config.{k}={v}" for k, v in SMALL.items()] + ["--config.tensorboard=False"]

    def launch() -> list[subprocess.Popen]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return [_run_train(tmp_path / "multi", data_dir, extra, base | {
            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i),
            "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}) for i in range(2)]

    procs = launch()
    deadline = time.time() + 600
    while _rows(tmp_path / "multi") < 2 and time.time() < deadline and procs[0].poll() is None:
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)  # a preemption notice to one host reaches every host
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-2000:] + outs[1][-2000:]
    stopped = max(_losses(tmp_path / "multi"))
    assert 2 <= stopped < SMALL["max_steps"] and f"stopped by SIGTERM after step {stopped}" in outs[0], outs[0][-2000:]
    assert (tmp_path / "multi" / "checkpoints" / str(stopped)).is_dir()
    procs = launch()
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-2000:] + outs[1][-2000:]
    assert f"resumed from step {stopped}" in outs[0]
    multi, one = _losses(tmp_path / "multi"), one_device_losses
    assert sorted(multi) == sorted(one) == list(range(1, SMALL["max_steps"] + 1))
    for s in one:
        assert multi[s] == pytest.approx(one[s], rel=1e-5), (s, multi[s], one[s])
