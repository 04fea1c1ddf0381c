"""A run never loses work: damaged checkpoints are moved aside and written again, a failed save
stops at that save in one line, torn log lines do not block a resume, grain workers end with their
parent. On small pytrees and real files; the training-loop ends of these are in test_train."""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from lsnet_jax.checkpoints import run as rc
from lsnet_jax.train.reporting import Reporter, read_jsonl

from data_utils import single_device_env

ROOT = Path(__file__).resolve().parents[1]


def _state(seed: int) -> dict:
    rng = np.random.default_rng(seed)  # random values: Orbax compresses constant arrays to nothing
    return {"params": {"w": rng.normal(size=(1024, 1024)).astype(np.float32), "b": rng.normal(size=(7,))},
            "batch_stats": {"mean": rng.normal(size=(5,)).astype(np.float32)}}


def _damage(step_dir: Path) -> None:
    for f in (step_dir / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 1000:
            f.write_bytes(f.read_bytes()[:100])


def _abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), state)


def test_damaged_checkpoints_are_moved_aside_reported_in_a_line_each_and_saved_again(tmp_path, caplog):
    d = tmp_path / "checkpoints"
    manager = rc.make_manager(d, keep=5)
    for step in (10, 20, 30):
        rc.save(manager, step, _state(step), {"iterator": step})
    manager.wait_until_finished()
    _damage(d / "30")
    _damage(d / "20")
    with caplog.at_level(logging.WARNING):
        step, state, data = rc.restore_latest(manager, _abstract(_state(0)))
    assert (step, data) == (10, {"iterator": 10})
    np.testing.assert_array_equal(state["params"]["w"], _state(10)["params"]["w"])
    assert sorted(p.name for p in d.iterdir()) == ["10", "20.corrupt", "30.corrupt"]
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 2 and all("\n" not in x for x in lines), lines
    assert "step 30" in lines[0] and "moved aside to 30.corrupt" in lines[0]
    # the run gets to steps 20 and 30 again: they are written, not skipped as "already there"
    assert manager.all_steps() == [10]
    for step in (20, 30):
        rc.save(manager, step, _state(step + 1), {"iterator": step})
    assert sorted(manager.all_steps()) == [10, 20, 30]
    got = rc.restore_latest(manager, _abstract(_state(0)))
    assert got[0] == 30 and np.array_equal(got[1]["params"]["w"], _state(31)["params"]["w"])
    # a second damage of the same step does not overwrite the first one kept aside
    _damage(d / "30")
    assert rc.restore_latest(manager, _abstract(_state(0)))[0] == 20
    assert {"30.corrupt", "30.corrupt1"} <= {p.name for p in d.iterdir()}
    manager.close()


def test_export_takes_the_newest_checkpoint_that_restores(tmp_path, caplog):
    work = tmp_path / "work"
    manager = rc.make_manager(work / "checkpoints", keep=5)
    for step in (4, 8):
        rc.save(manager, step, _state(step), {"iterator": step})
    manager.close()
    (work / "run.json").write_text(json.dumps({"model": "lsnet_t", "num_classes": 3, "img_size": 32}))
    _damage(work / "checkpoints" / "8")
    with caplog.at_level(logging.WARNING):
        out = rc.export_weights(work, tmp_path / "w")
    meta = json.loads((out / "config.json").read_text())
    assert meta["source"].endswith("step 4")
    assert any("step 8" in r.getMessage() for r in caplog.records)
    from lsnet_jax.checkpoints.weights import load_weights

    flat, _ = load_weights(out)
    np.testing.assert_array_equal(flat[("w",)], _state(4)["params"]["w"])
    _damage(work / "checkpoints" / "4")
    with pytest.raises(ValueError, match="no checkpoint in .* could be restored"):
        rc.export_weights(work, tmp_path / "w2")


@pytest.fixture
def file_size_limit():
    """Writes past 1 MB fail with EFBIG, as on a full disk (a tmpfs needs root; this does not)."""
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, old[1]))

    yield limit
    resource.setrlimit(resource.RLIMIT_FSIZE, old)
    signal.signal(signal.SIGXFSZ, old_handler)


def test_a_failed_background_save_raises_one_line_at_that_save(tmp_path, file_size_limit, caplog):
    d = tmp_path / "checkpoints"
    manager = rc.make_manager(d, keep=5, async_save=True)
    saver = rc.Saver(manager)
    saver.save(1, _state(1), {"iterator": 1})
    saver.wait()
    file_size_limit()
    saver.save(2, _state(2), {"iterator": 2})  # accepted: the write happens in the background
    with rc.quiet_orbax_errors(), pytest.raises(rc.CheckpointSaveError) as err:
        deadline = time.time() + 60
        while time.time() < deadline:
            saver.poll()
            time.sleep(0.05)
    msg = str(err.value)
    assert "\n" not in msg and "step 2" in msg and str(d) in msg and "GiB free" in msg
    assert "File too large" in msg and "step 1 is intact" in msg
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # Orbax's tracebacks, silenced
    assert rc.restore_latest(manager, _abstract(_state(0)))[0] == 1  # the previous checkpoint is intact


def test_a_save_returns_before_orbax_and_the_state_may_then_be_donated(tmp_path, monkeypatch):
    """The loop's thread only snapshots the state: Orbax (held here until released) is called from
    the saver's thread, and the step's buffers, deleted as the next step's donation does, are not
    what gets written."""
    manager = rc.make_manager(tmp_path / "c", keep=2, async_save=True)
    release, real_save = threading.Event(), manager.save

    def held_save(*args, **kwargs):
        assert threading.current_thread() is not threading.main_thread()
        release.wait(60)
        return real_save(*args, **kwargs)

    monkeypatch.setattr(manager, "save", held_save)
    state = jax.device_put(_state(4))
    values = jax.tree.map(np.array, state)  # float32, as written
    saver = rc.Saver(manager)
    t = time.monotonic()
    saver.save(4, state, {"iterator": 4})
    saver.poll()  # in progress: returns
    assert time.monotonic() - t < 10 and not (tmp_path / "c" / "4").exists()
    jax.tree.map(lambda x: x.delete(), state)
    release.set()
    saver.wait()
    step, restored, data = rc.restore_latest(manager, _abstract(values))
    assert (step, data) == (4, {"iterator": 4})
    jax.tree.map(np.testing.assert_array_equal, restored, values)
    saver.close()


def test_a_failed_write_is_reported_at_its_own_step_when_the_next_save_is_asked_for(tmp_path, file_size_limit):
    manager = rc.make_manager(tmp_path / "c", keep=5, async_save=True)
    saver = rc.Saver(manager)
    saver.save(1, _state(1), None)
    saver.wait()
    file_size_limit()
    saver.save(2, _state(2), None)
    saver.save(3, _state(3), None)  # step 2's write may still be running: its failure is step 2's
    with rc.quiet_orbax_errors(), pytest.raises(rc.CheckpointSaveError, match="at step 2 .*step 1 is intact"):
        saver.wait()
    saver.close()


def test_a_save_without_the_space_it_needs_stops_before_writing(tmp_path, monkeypatch):
    manager = rc.make_manager(tmp_path / "c", keep=2, async_save=False)
    monkeypatch.setattr(rc, "_free_bytes", lambda d: 1000)  # less than the state's 4 MB
    with pytest.raises(rc.CheckpointSaveError, match=r"step 3 .*needs 0\.00 GiB\); 0\.00 GiB free"):
        rc.Saver(manager).save(3, _state(3), None)
    assert not list((tmp_path / "c").iterdir())


def test_torn_log_lines_are_dropped_with_a_warning_and_do_not_block_a_resume(tmp_path, caplog):
    rows = [{"step": s, "loss": 1.0 / s, "lr": 0.1} for s in range(1, 8)]
    (tmp_path / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]) + "{}\n"
                                          + "".join(json.dumps(r) + "\n" for r in rows[3:]) + '{"step": 8, "loss": 1.9')
    (tmp_path / "log.txt").write_text(json.dumps({"epoch": 0, "step": 4}) + "\n" + '{"epoch": 0, "step": "5"}\n'
                                      + '{"epoch": 1, "st')
    with caplog.at_level(logging.WARNING):
        Reporter(tmp_path, resume_step=5, tensorboard=False)  # a {} line stopped it with KeyError: 'step'
    assert read_jsonl(tmp_path / "steps.jsonl") == rows[:5]  # torn line dropped, rows after step 5 too
    assert read_jsonl(tmp_path / "log.txt") == [{"epoch": 0, "step": 4}]
    assert sum("not a whole JSON object" in r.getMessage() for r in caplog.records) == 2
    assert sum("no integer 'step'" in r.getMessage() for r in caplog.records) == 2
    assert not list(tmp_path.glob(".*.tmp"))


_WORKERS = """
import sys, time

from lsnet_jax.data import pipeline, source
from lsnet_jax.data.transforms import TrainTransform

if __name__ == "__main__":  # grain spawns its workers: they import this file as a module
    src, info = source.open_source("lsnet_digits", "train", sys.argv[1])
    tf = TrainTransform(size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    it = iter(pipeline.train_loader(src, info, tf, 16, 0, num_epochs=1, workers=2).dataset)
    next(it)
    print("ready", flush=True)
    time.sleep(600)
"""


def _children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(p.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "?"


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc (Linux)")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_grain_workers_end_with_their_parent(sig, tmp_path_factory):
    data_dir = tmp_path_factory.getbasetemp() / "digits_tfds"
    from lsnet_jax.data.source import open_source

    open_source("lsnet_digits", "train", str(data_dir))  # built here, once
    env = single_device_env() | {"PYTHONPATH": str(ROOT)}
    script = tmp_path_factory.mktemp("workers") / "load.py"
    script.write_text(_WORKERS)
    proc = subprocess.Popen([sys.executable, str(script), str(data_dir)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        while not lines or lines[-1] not in ("ready", ""):  # "": the script ended without its batch
            lines.append(proc.stdout.readline().strip() if proc.poll() is None else "")
        assert lines[-1] == "ready", "\n".join(lines)[-3000:]
        workers = _children(proc.pid)
        assert len(workers) >= 2, workers  # the two grain workers (and multiprocessing's resource tracker)
        proc.send_signal(sig)
        proc.wait(timeout=60)
        deadline = time.time() + 60
        while any(_alive(p) for p in workers) and time.time() < deadline:
            time.sleep(0.1)
        left = {p: _cmdline(p) for p in workers if _alive(p)}
        assert not left, f"processes outlived their parent: {left}"
    finally:
        proc.kill()
        for p in _children(proc.pid) + locals().get("workers", []):
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass


def test_the_eta_is_steady_through_evaluations_and_leaves_out_compilation():
    """1 s a step after a 40 s compilation, a 20 s evaluation every 10 steps: the ETA stays within
    2% of the true remaining time at every line (before: from the last window's rate, it jumped
    by 10-40x between lines around evaluations and compilation)."""
    from lsnet_jax.train.reporting import Progress

    now = [0.0]
    p = Progress(total_steps=60, steps_per_epoch=10, global_batch=8, start_step=0, clock=lambda: now[0])
    etas = {}
    for step in range(1, 61):
        now[0] += 40.0 if step == 1 else 1.0  # the first step compiles
        if step % 2 == 0 or step == 1:
            eta = p.line(step, 1.0, 1e-3, 0).rsplit("ETA ", 1)[1]
            if step == 1:
                assert eta == "-:--:--"  # the first line's window is the compilation: no ETA from it
                continue
            h, m, s = (int(x) for x in eta.split(":"))
            etas[step] = 3600 * h + 60 * m + s
        if step % 10 == 0:  # evaluation
            now[0] += 20.0
            p.exclude(20.0)
    for step, eta in etas.items():
        assert abs(eta - (60 - step)) <= 1 + 0.02 * (60 - step), (step, eta)


def test_a_newest_checkpoint_without_its_metadata(tmp_path, caplog):
    """Without Orbax's step metadata the newest checkpoint still restores with its own values;
    without its tree metadata it does not: it is moved aside in one line and the previous used."""
    manager = rc.make_manager(tmp_path / "c", keep=5)
    for step in (1, 2):
        rc.save(manager, step, _state(step), {"iterator": step})
    (tmp_path / "c" / "2" / "_CHECKPOINT_METADATA").unlink()
    step, state, data = rc.restore_latest(rc.make_manager(tmp_path / "c", keep=5), _abstract(_state(0)))
    assert (step, data) == (2, {"iterator": 2})
    np.testing.assert_array_equal(state["params"]["w"], _state(2)["params"]["w"])
    (tmp_path / "c" / "2" / "state" / "_METADATA").unlink()
    with caplog.at_level(logging.WARNING):
        step, state, data = rc.restore_latest(rc.make_manager(tmp_path / "c", keep=5), _abstract(_state(0)))
    assert (step, data) == (1, {"iterator": 1})
    assert [r.getMessage() for r in caplog.records if "moved aside to 2.corrupt" in r.getMessage()]


def test_a_failed_best_save_names_itself_and_the_checkpoint_a_rerun_resumes_from(tmp_path, file_size_limit):
    """A full disk at an epoch's end, where the best and the periodic checkpoints are saved: the
    message named DIR/best and said "no earlier checkpoint exists" while DIR/checkpoints held an
    intact step 1, the one a rerun resumes from."""
    checkpoints = rc.Saver(rc.make_manager(tmp_path / "checkpoints", keep=5, async_save=False))
    checkpoints.save(1, _state(1), {"iterator": 1})
    checkpoints.wait()
    best = rc.Saver(rc.make_manager(tmp_path / "best", 1, async_save=False, best="acc1"), label="best checkpoint",
                    resume_dir=tmp_path / "checkpoints")
    file_size_limit()
    with rc.quiet_orbax_errors(), pytest.raises(rc.CheckpointSaveError) as err:
        best.save(2, _state(2), None, {"acc1": 50.0})
        best.wait()
    msg = str(err.value)
    assert f"could not save the best checkpoint at step 2 in {tmp_path / 'best'}" in msg, msg
    assert f"the checkpoint at step 1 is intact in {tmp_path / 'checkpoints'} and the same command resumes" in msg
