"""The training run on the small default (digits): data-parallel equality, exact resume after
SIGKILL (with a corrupt newest checkpoint) of a hard-distillation run with a RegNet teacher, and
bad configs stopping at start."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from lsnet_jax.data.source import DatasetNotFoundError
from lsnet_jax.tasks import train_and_evaluate
from lsnet_jax.tasks.classification import validate_config
from lsnet_jax.train.checks import ConfigError

from data_utils import single_device_env

ROOT = Path(__file__).resolve().parents[1]


def digits_config(data_dir: str, **overrides):
    spec = importlib.util.spec_from_file_location("digits_config", ROOT / "configs" / "digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.data.data_dir = data_dir
    c.tensorboard = False
    for k, v in overrides.items():
        node = c
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds")
    from lsnet_jax.data.source import open_source

    open_source("lsnet_digits", "train", str(d))  # prepare once for the module
    return str(d)


def _rows(workdir: Path) -> int:
    f = workdir / "steps.jsonl"
    return f.read_text().count("\n") if f.exists() else 0


def _losses(workdir: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (workdir / "steps.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


# LSNet-T at depth (0, 1, 1, 1) (every stage and downsampling, one RepVGGDW block each: a sixth of the
# blocks to trace and compile in every run and resumption) for the runs whose property is the loop's,
# not the model's (every kind of layer is checked in test_model and test_convert_torch)
SMALL = dict(batch_size=16, eval_batch_size=120, max_steps=6, log_every_steps=1, checkpoint_every_steps=1000,
             async_checkpoint=False, depth=(0, 1, 1, 1))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    """A 10-class RegNetY-200MF's weights (random; the published teacher's design space)."""
    from lsnet_jax.checkpoints.state import flat_state
    from lsnet_jax.checkpoints.weights import save_weights
    from lsnet_jax.models.registry import create_model

    d = tmp_path_factory.mktemp("teacher")
    save_weights(d, flat_state(create_model("regnety_002", num_classes=10, seed=3)),
                 dict(model="regnety_002", num_classes=10))
    return str(d)


@pytest.fixture(scope="module")
def one_device_losses(data_dir, tmp_path_factory) -> dict[int, float]:
    """Per-step losses of 6 steps on one device, global batch 16: the reference of the parallel runs."""
    work = tmp_path_factory.mktemp("one")
    train_and_evaluate(digits_config(data_dir, **SMALL), work, devices=jax.devices()[:1])
    return _losses(work)


def test_eight_devices_equal_one_device(data_dir, one_device_losses, tmp_path):
    assert jax.device_count() == 8
    train_and_evaluate(digits_config(data_dir, **SMALL), tmp_path / "eight", devices=jax.devices())
    one, eight = one_device_losses, _losses(tmp_path / "eight")
    assert sorted(one) == sorted(eight) == list(range(1, 7))
    assert len({round(v, 3) for v in one.values()}) == 6  # real, changing losses
    for s in one:
        assert eight[s] == pytest.approx(one[s], rel=1e-5, abs=1e-6), (s, one[s], eight[s])


def _run_train(workdir: Path, data_dir: str, extra: list[str], env: dict) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / "digits.py"),
           "--workdir", str(workdir), f"--config.data.data_dir={data_dir}", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_preempted_then_killed_mid_epoch_then_resumed_gives_the_same_losses(data_dir, teacher, tmp_path):
    """A hard-distillation run of ``lsnet_t_distill`` with a RegNet teacher (distillation end to
    end), preempted (SIGTERM: a checkpoint at that step, exit 0), resumed, killed (SIGKILL)
    mid-epoch, its newest checkpoint damaged, resumed: the same per-step losses as an
    uninterrupted run; its exported weights score what the run logged."""
    env = single_device_env()  # one device, as a laptop
    env |= {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "PYTHONPATH": str(ROOT)}
    extra = ["--config.epochs=1", "--config.log_every_steps=1", "--config.checkpoint_every_steps=4",
             "--config.tensorboard=False", "--config.eval_batch_size=120", "--config.model=lsnet_t_distill",
             "--config.distillation.type=hard", "--config.distillation.teacher_model=regnety_002",
             f"--config.distillation.teacher_checkpoint={teacher}", "--config.depth=(0,1,1,1)"]
    ref = _run_train(tmp_path / "ref", data_dir, extra, env)
    out, _ = ref.communicate(timeout=600)
    assert ref.returncode == 0, out[-3000:]

    work = tmp_path / "killed"
    # preempted (SIGTERM) after a few steps: it finishes the step, saves it and exits 0
    proc = _run_train(work, data_dir, extra, env)
    deadline = time.time() + 600
    while not _rows(work) >= 6 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    stopped = max(_losses(work))
    assert (work / "checkpoints" / str(stopped)).is_dir() and 6 <= stopped < 22, (stopped, out[-2000:])
    assert f"stopped by SIGTERM after step {stopped}" in out and "run the same command to resume" in out
    # resumed from there, then killed outright (SIGKILL) mid-epoch: it resumes from its periodic checkpoint
    proc = _run_train(work, data_dir, extra, env)
    while not (work / "checkpoints" / "16").is_dir() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate()
    assert f"resumed from step {stopped}" in out, out[-3000:]
    steps = sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
    assert 16 in steps and max(steps) < 22, steps  # killed mid-epoch (22 steps per epoch)
    # the newest checkpoint is damaged: the run must report it and use the previous one
    newest = work / "checkpoints" / str(max(steps))
    for f in (newest / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 1000:
            f.write_bytes(f.read_bytes()[:100])
    with (work / "steps.jsonl").open("a") as f:  # and the log's last line was cut short by the kill
        f.write('{"step": 47, "loss": 1.9')
    resumed = _run_train(work, data_dir, extra, env)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out[-3000:]
    # one line for the damaged step, moved aside so that the run writes it again; one for the torn line
    assert [x for x in out.splitlines() if f"checkpoint at step {max(steps)}" in x] == [
        x for x in out.splitlines() if "trying the previous one" in x] != []
    assert (work / "checkpoints" / f"{max(steps)}.corrupt").is_dir()
    assert "not a whole JSON object" in out and "Traceback" not in out and len(out.splitlines()) < 300
    assert "resumed from step" in out
    ref_losses, got = _losses(tmp_path / "ref"), _losses(work)
    assert sorted(got) == sorted(ref_losses) == list(range(1, 23))
    np.testing.assert_allclose([got[s] for s in range(1, 23)], [ref_losses[s] for s in range(1, 23)],
                               rtol=1e-5)
    log = [json.loads(x) for x in (work / "log.txt").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0]
    history = json.loads((work / "run.json").read_text())["history"]  # every start, kept
    assert len(history) == 3 and [h["step"] for h in history[:2]] == [0, stopped], history
    assert {"train_lr", "train_loss", "test_loss", "test_acc1", "test_acc5", "epoch", "n_parameters",
            "test_ema_acc1"} <= set(log[0])
    assert (work / "curves.png").stat().st_size > 10_000
    # the trained weights leave the run and score what the run logged
    from lsnet_jax.checkpoints.run import export_weights

    export_weights(work, tmp_path / "weights")
    # the best checkpoint (weights and EMA only) at the epoch's end is the same step's weights
    from lsnet_jax.checkpoints.weights import load_weights

    export_weights(work, tmp_path / "best", best=True)
    (w, _), (b, best_meta) = load_weights(tmp_path / "weights"), load_weights(tmp_path / "best")
    assert best_meta["source"].endswith("step 22 (best)") and w.keys() == b.keys()
    assert all(np.array_equal(w[k], b[k]) for k in w)
    meta = json.loads((tmp_path / "weights" / "config.json").read_text())
    assert meta["class_names"] == [str(i) for i in range(10)]  # for lsnet-predict
    from lsnet_jax.cli.evaluate import main as evaluate_main

    assert evaluate_main(["--weights", str(tmp_path / "weights"), "--data", "lsnet_digits", "--split", "test",
                             "--data_dir", data_dir, "--batch", "120", "--json", str(tmp_path / "e.json")]) == 0
    ev = json.loads((tmp_path / "e.json").read_text())
    ev = ev["sets"]["lsnet_digits/test"]
    assert ev["images"] == 359 and ev["top1"] == pytest.approx(log[0]["test_acc1"], abs=1e-6)

    # the finished run's directory, restarted with another model or image size: refused in one line
    # (exit 2: the command line's path of a ConfigError is in test_cli_errors) before anything in it
    # is touched
    def snapshot():
        return {str(f.relative_to(work)): (f.stat().st_size, f.stat().st_mtime_ns) for f in work.rglob("*")}

    before = snapshot()
    same = {"epochs": 2, "eval_batch_size": 120, "model": "lsnet_t_distill", "distillation.type": "hard",
            "distillation.teacher_model": "regnety_002", "distillation.teacher_checkpoint": teacher,
            "depth": (0, 1, 1, 1)}
    for override, what in (({"model": "lsnet_s_distill"}, "model 'lsnet_t_distill' -> 'lsnet_s_distill'"),
                           ({"img_size": 48}, "img_size 32 -> 48")):
        with pytest.raises(ConfigError) as e:
            train_and_evaluate(digits_config(data_dir, **(same | override)), work, devices=jax.devices()[:1])
        assert what in str(e.value) and "--workdir NEW_DIR" in str(e.value) and "init_weights" in str(e.value)
        assert "\n" not in str(e.value)
    assert snapshot() == before


def test_a_save_that_fails_stops_the_run_at_that_save(data_dir, one_device_losses, tmp_path):
    """A full disk (writes past 1 MB fail, RLIMIT_FSIZE: a tmpfs needs root) at the first save of an
    asynchronous run: the run stops at that save with one error naming it (that the previous
    checkpoint stays intact is in test_reliability). The step compiles from one_device_losses' cache."""
    import resource

    from lsnet_jax.checkpoints.run import CheckpointSaveError

    cfg = dict(SMALL, checkpoint_every_steps=2, async_checkpoint=True, max_steps=8)
    work = tmp_path / "full"
    old, handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, old[1]))
    try:
        with pytest.raises(CheckpointSaveError) as err:
            train_and_evaluate(digits_config(data_dir, **cfg), work, devices=jax.devices()[:1])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, handler)
    msg = str(err.value)
    assert "\n" not in msg and "at step 2 in" in msg and "File too large" in msg and "GiB free" in msg, msg
    assert err.value.step == 2 and "no complete checkpoint is in" in msg and "starts from the beginning" in msg
    # stopped soon after: step 2's failed write is found by the saver's thread when step 4's save is
    # handed over, and raised at the latest by step 6's
    assert max(_losses(work)) <= 6
    assert not [p for p in (work / "checkpoints").iterdir() if p.name.isdigit()]


def test_a_teacher_of_other_classes_is_refused(data_dir, tmp_path):
    from lsnet_jax.checkpoints.state import flat_state
    from lsnet_jax.checkpoints.weights import save_weights
    from lsnet_jax.models.registry import create_model
    from lsnet_jax.tasks.classification import build_teacher

    save_weights(tmp_path / "t", flat_state(create_model("regnety_002", num_classes=1000)),
                 dict(model="regnety_002", num_classes=1000))
    hard = {"distillation.type": "hard", "distillation.teacher_model": "regnety_002",
            "distillation.teacher_checkpoint": str(tmp_path / "t")}
    with pytest.raises(ConfigError, match="predicts 1000 classes, the dataset has 10"):
        build_teacher(digits_config(data_dir, **hard), 10)


def test_bad_configs_stop_at_start(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="not divisible by the 8 devices"):
        validate_config(digits_config(data_dir, batch_size=12), 8)
    with pytest.raises(ConfigError, match="is not a model"):
        validate_config(digits_config(data_dir, model="resnet50"), 1)
    for name, task in (("lsnet_t_semfpn", "segmentation"), ("lsnet_t_retinanet", "detection")):
        with pytest.raises(ConfigError, match=f"'{name}' is a {task} model; classification trains one of"):
            validate_config(digits_config(data_dir, model=name), 1)
    with pytest.raises(ConfigError, match="teacher"):
        validate_config(digits_config(data_dir, model="lsnet_t_distill", **{"distillation.type": "hard"}), 1)
    # no teacher: the official code builds the plain model; an untrained head_dist would be averaged in
    with pytest.raises(ConfigError, match="distillation head untrained but averaged into every prediction; "
                                          "train config.model='lsnet_t'"):
        validate_config(digits_config(data_dir, model="lsnet_t_distill"), 1)
    with pytest.raises(ConfigError, match="config.num_classes=1 is smaller than the 10 classes of lsnet_digits/train"):
        train_and_evaluate(digits_config(data_dir, num_classes=1), tmp_path / "w1")  # trained to loss 0, exit 0
    assert not (tmp_path / "w1").exists()
    with pytest.raises(DatasetNotFoundError, match="prepare_imagenet.py"):
        train_and_evaluate(digits_config(str(tmp_path), **{"data.name": "imagenet_folder"}), tmp_path / "w")
    env = single_device_env() | {"PYTHONPATH": str(ROOT)}
    p = _run_train(tmp_path / "w2", data_dir, ["--config.no_such_key=1"], env)
    out, _ = p.communicate(timeout=120)
    assert p.returncode != 0 and "no_such_key" in out


def test_two_processes_preempted_and_resumed_equal_one_process(data_dir, one_device_losses, tmp_path):
    """Two JAX processes (one CPU device each, gloo collectives) sharing a work directory, as two
    hosts would: each reads its slice of every global batch. One of them is preempted (SIGTERM)
    mid-run: both agree on a step (JAX's preemption service), save it and exit 0; restarted, they
    resume there. The losses equal a single uninterrupted process's."""
    import socket

    base = single_device_env() | {"PYTHONPATH": str(ROOT)}
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
