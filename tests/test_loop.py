"""The one training loop with a task it has never seen: a toy least-squares task written here against
``lsnet_jax.train.loop.Task`` alone (as detection will be), run end to end in-process. Cadence,
rows, best checkpoint, curves and exact resume are the loop's; the two real tasks' runs are in
test_train.py and test_segmentation_train.py."""

from __future__ import annotations

import json
import math
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lsnet_jax.train import loop
from lsnet_jax.train.reporting import Panel, read_jsonl

TRUE_W = np.asarray([1.5, -2.0, 0.5], np.float32)


class _Batches:
    """Deterministic batches of a noisy linear model, with grain's get_state / set_state."""

    def __init__(self, batch: int):
        self.batch, self.i = batch, 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        rng = np.random.default_rng(self.i)
        self.i += 1
        x = rng.standard_normal((self.batch, 3)).astype(np.float32)
        y = x @ TRUE_W + 0.1 * rng.standard_normal(self.batch).astype(np.float32)
        return {"x": x, "y": y, "skipped": np.int64(self.i % 5 == 0)}

    def get_state(self) -> dict:
        return {"i": self.i}

    def set_state(self, state: dict) -> None:
        self.i = state["i"]


def _step(state, batch, constants, *, lr, explode_at=0):
    def loss_fn(w):
        return jnp.mean((batch["x"] @ w - batch["y"]) ** 2)

    loss, g = jax.value_and_grad(loss_fn)(state["w"])
    w = state["w"] - lr * g * constants["scale"]
    w = jnp.where(state["step"] + 1 == explode_at, jnp.inf, w)  # an update that overflows at that step
    return {"w": w, "step": state["step"] + 1}, {"loss": loss}


class LeastSquares:
    """A task: 'epoch' of 4 steps, evaluation every 2 periods, a best checkpoint by the negated error."""

    best_metric = "neg_error"
    curves = (Panel("parameter error", "log", "step", "step", (("error", None, "o-"),)),)

    def __init__(self, config: ml_collections.ConfigDict, mesh):
        self.config = config
        self.fingerprint = {"task": "least_squares", "model": "linear", "num_classes": 0, "img_size": 0,
                            "data": "synthetic/train"}
        self.cadence = loop.Cadence(total_steps=config.steps, steps_per_epoch=4, period=4, eval_every=2)
        self.global_batch = config.batch_size

    def train_iterator(self):
        return _Batches(self.config.batch_size)

    def init(self) -> loop.Init:
        import functools

        state = {"w": jnp.zeros(3, jnp.float32), "step": jnp.zeros((), jnp.int32)}
        return loop.Init(state, {"scale": jnp.ones((), jnp.float32)},
                         functools.partial(_step, lr=self.config.lr, explode_at=self.config.explode_at))

    def lr(self, steps):
        return np.full(len(steps), self.config.lr)

    def evaluate(self, state) -> dict:
        return {"error": float(np.linalg.norm(np.asarray(state["w"]) - TRUE_W))}

    def row(self, done, stats, ev) -> dict:
        return stats.means() | {"step": done, "error": ev["error"], "neg_error": -ev["error"],
                                "train_skipped": stats.skipped}

    def summary(self, row) -> str:
        return f"step {row['step']}: error {row['error']:.4f}"

    def best_state(self, state):
        return {"w": state["w"]}

    def where(self, done) -> str:
        return f"epoch {(done - 1) // 4}"

    def run_info(self) -> dict:
        return {"model": "linear", "num_classes": 0, "img_size": 0}

    def describe(self) -> str:
        return "least squares"


def _config(**over) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(steps=10, batch_size=8, lr=0.1, log_every_steps=3, checkpoint_every_steps=3,
                                          keep_checkpoints=2, async_checkpoint=False, tensorboard=False,
                                          max_steps=None, divergence_factor=10.0, explode_at=0) | over)


def _plain_loop(steps: int) -> list[float]:
    """The same training as a plain Python loop: the losses the loop must log."""
    w, out, it = np.zeros(3, np.float32), [], _Batches(8)
    for _ in range(steps):
        b = next(it)
        r = b["x"] @ w - b["y"]
        out.append(float(np.mean(r ** 2)))
        w = w - 0.1 * (2 * b["x"].T @ r / len(r))
    return out


def test_a_new_task_runs_on_the_loop_with_its_cadence_rows_and_best(tmp_path):
    last = loop.train_and_evaluate(LeastSquares, _config(), tmp_path / "w", jax.devices()[:1])
    steps = read_jsonl(tmp_path / "w" / "steps.jsonl")
    assert [r["step"] for r in steps] == list(range(1, 11))
    np.testing.assert_allclose([r["loss"] for r in steps], _plain_loop(10), rtol=1e-5)
    rows = read_jsonl(tmp_path / "w" / "log.txt")
    assert [r["step"] for r in rows] == [8, 10]  # every 2 periods of 4, and at the end
    # a row's train figures are its period's (steps 5-8; steps 9-10), skipped records counted per period
    assert rows[0]["train_loss"] == pytest.approx(np.mean([r["loss"] for r in steps[4:8]]))
    assert rows[1]["train_loss"] == pytest.approx(np.mean([r["loss"] for r in steps[8:10]]))
    assert [r["train_skipped"] for r in rows] == [1, 1]  # batches 5 and 10 (of periods 2 and 3)
    assert rows[1]["error"] < rows[0]["error"] < 1.0 and last == rows[1]
    assert (tmp_path / "w" / "curves.png").stat().st_size > 5_000
    assert sorted(p.name for p in (tmp_path / "w" / "best").iterdir() if p.name.isdigit()) == ["10"]
    assert sorted(int(p.name) for p in (tmp_path / "w" / "checkpoints").iterdir() if p.name.isdigit()) == [9, 10]
    assert json.loads((tmp_path / "w" / "run.json").read_text())["fingerprint"]["task"] == "least_squares"


def test_a_stopped_run_resumes_with_the_same_losses_and_period_figures(tmp_path):
    loop.train_and_evaluate(LeastSquares, _config(), tmp_path / "full", jax.devices()[:1])
    loop.train_and_evaluate(LeastSquares, _config(max_steps=7), tmp_path / "part", jax.devices()[:1])
    assert not read_jsonl(tmp_path / "part" / "log.txt")  # stopped inside the second period
    loop.train_and_evaluate(LeastSquares, _config(), tmp_path / "part", jax.devices()[:1])
    full, part = (read_jsonl(tmp_path / d / "steps.jsonl") for d in ("full", "part"))
    assert full == part
    assert read_jsonl(tmp_path / "full" / "log.txt") == read_jsonl(tmp_path / "part" / "log.txt")


def test_loop_figures_saved_before_the_one_loop_still_resume():
    classification = {"loss_sum": 3.0, "lr_sum": 0.5, "steps": 2, "skipped": 1, "best_acc1": 41.5}
    segmentation = {"loss_sum": 1.25, "steps": 5, "skipped": 0}
    a, b = loop.LoopStats.from_saved(classification), loop.LoopStats.from_saved(segmentation)
    assert (a.loss_sum, a.lr_sum, a.steps, a.skipped, a.best) == (3.0, 0.5, 2, 1, 41.5)
    assert (b.loss_sum, b.lr_sum, b.steps, b.skipped, b.best) == (1.25, 0.0, 5, 0, -math.inf)


@pytest.mark.parametrize("key,value", [("batch_size", 0), ("log_every_steps", -1), ("checkpoint_every_steps", 1.5),
                                       ("max_steps", 0)])
def test_the_loop_refuses_its_own_bad_settings(key, value, tmp_path):
    with pytest.raises(loop.ConfigError, match=f"config.{key}="):
        loop.train_and_evaluate(LeastSquares, _config(**{key: value}), tmp_path / "w", jax.devices()[:1])
    assert not (tmp_path / "w").exists()


def test_a_changed_architecture_is_another_run(tmp_path):
    """config.depth is in the fingerprint: the checkpoints of one depth cannot resume at another
    (they would not restore, and would be moved aside as damaged). A run.json written before the
    fingerprint had ``arch`` matches the published architecture."""
    from lsnet_jax.train import workdir as workdirs

    published = workdirs.fingerprint("classification", "lsnet_t", 10, 32, "lsnet_digits", "train")
    shallow = workdirs.fingerprint("classification", "lsnet_t", 10, 32, "lsnet_digits", "train",
                                   {"depth": (0, 2, 2, 2)})
    workdirs.write_run_file(tmp_path, shallow, {"model": "lsnet_t", "num_classes": 10, "img_size": 32})
    (tmp_path / "checkpoints" / "5").mkdir(parents=True)
    workdirs.check(tmp_path, shallow)  # the same run: resumes
    with pytest.raises(loop.ConfigError, match=r"arch \{'depth': \[0, 2, 2, 2\]\} -> None"):
        workdirs.check(tmp_path, published)
    (tmp_path / "run.json").write_text(json.dumps({"model": "lsnet_t", "num_classes": 10, "img_size": 32,
                                                   "fingerprint": published}))
    workdirs.check(tmp_path, published)


def _steps(d) -> list[int]:
    return sorted(int(p.name) for p in (d / "checkpoints").iterdir() if p.name.isdigit())


def test_a_diverging_run_keeps_its_last_good_checkpoint_and_resumes_there(tmp_path):
    """A good run continued with a learning rate that diverges, saving every step: the diverging
    states stay finite for several steps (the loss grows ~1e4x a step) and rotation (keep 2) used
    to drop every good checkpoint before the loss became inf. The last checkpoint before the
    first loss spike is kept, the later ones are moved aside, and the same command with a sane
    learning rate resumes from it: the log is then that of a run that never diverged."""
    w = tmp_path / "w"
    loop.train_and_evaluate(LeastSquares, _config(steps=12, checkpoint_every_steps=1), w, jax.devices()[:1])
    assert _steps(w) == [11, 12]
    with pytest.raises(FloatingPointError) as err:
        loop.train_and_evaluate(LeastSquares, _config(steps=60, lr=40.0, checkpoint_every_steps=1), w,
                                jax.devices()[:1])
    msg = str(err.value)
    assert "\n" not in msg and "the run diverged: non-finite loss" in msg and "resumes from step 12" in msg, msg
    losses = {r["step"]: r["loss"] for r in read_jsonl(w / "steps.jsonl")}
    assert losses[14] > 1000 * losses[13] and max(losses) > 16  # finite, diverged states were saved, then:
    # step 12's state gave a good loss at step 13 (computed before the update); step 13's, the first
    # of lr 40, the spike at step 14 (step 11 was rotated out: the newest 2 and the good one are kept)
    assert _steps(w) == [12]
    diverged = sorted(int(p.name.split(".")[0]) for p in (w / "checkpoints").iterdir() if ".diverged" in p.name)
    assert diverged and diverged[0] >= 13, diverged
    loop.train_and_evaluate(LeastSquares, _config(steps=20, checkpoint_every_steps=1), w, jax.devices()[:1])
    full = tmp_path / "full"
    loop.train_and_evaluate(LeastSquares, _config(steps=20, checkpoint_every_steps=1), full, jax.devices()[:1])
    assert read_jsonl(w / "steps.jsonl") == read_jsonl(full / "steps.jsonl")


def test_a_state_that_overflows_is_never_saved(tmp_path):
    """The update of step 5 overflows (its loss, computed before it, is finite): step 5 is not
    saved, the run stops there in one line, and step 4, whose next loss was good, is where the
    same command resumes."""
    w = tmp_path / "w"
    with pytest.raises(FloatingPointError) as err:
        loop.train_and_evaluate(LeastSquares, _config(explode_at=5, checkpoint_every_steps=1), w, jax.devices()[:1])
    msg = str(err.value)
    assert "the state after step 5 (epoch 1) is not finite" in msg and "resumes from step 4" in msg, msg
    assert _steps(w) == [3, 4] and not [p for p in (w / "checkpoints").iterdir() if "diverged" in p.name]
    loop.train_and_evaluate(LeastSquares, _config(checkpoint_every_steps=1), w, jax.devices()[:1])
    full = tmp_path / "full"
    loop.train_and_evaluate(LeastSquares, _config(checkpoint_every_steps=1), full, jax.devices()[:1])
    assert read_jsonl(w / "steps.jsonl") == read_jsonl(full / "steps.jsonl")


def test_a_second_run_on_a_work_directory_in_use_is_refused_naming_the_first(tmp_path, caplog):
    """Two runs on one directory (a requeued job while the old one still runs) both died at their
    first save, and steps.jsonl got duplicate rows. The second is refused at start, naming the
    first; a killed run's lock is stale and taken over, with a line naming it."""
    import subprocess
    import sys

    w = tmp_path / "w"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from lsnet_jax.train.workdir import Lock; "
        f"Lock({str(w)!r}).acquire(); print('locked', flush=True); time.sleep(600)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(loop.ConfigError) as err:
            loop.train_and_evaluate(LeastSquares, _config(), w, jax.devices()[:1])
        msg = str(err.value)
        assert f"pid {holder.pid} on" in msg and "started" in msg and "--workdir NEW_DIR" in msg, msg
        assert not (w / "checkpoints").exists() and not (w / "steps.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    # killed: its lock is stale
    with caplog.at_level("WARNING"):
        loop.train_and_evaluate(LeastSquares, _config(max_steps=4), w, jax.devices()[:1])
    assert f"took over the stale lock of pid {holder.pid}" in caplog.text
    assert max(r["step"] for r in read_jsonl(w / "steps.jsonl")) == 4
    # ended cleanly: the lock is free for the next run, which resumes
    loop.train_and_evaluate(LeastSquares, _config(), w, jax.devices()[:1])
    assert [r["step"] for r in read_jsonl(w / "steps.jsonl")] == list(range(1, 11))


def test_a_second_ctrl_c_while_the_stop_is_saved_keeps_that_checkpoint(tmp_path, capsys, monkeypatch):
    """Ctrl-C at step 5 asks for a stop there; a second one while its checkpoint is written used to
    interrupt the write (KeyboardInterrupt, a traceback, no checkpoint of step 5)."""
    import os
    import signal

    from lsnet_jax.checkpoints import run as run_checkpoints

    class Interrupted(LeastSquares):
        def lr(self, steps):
            if 4 in steps:  # the loop's thread, at the flush after step 5 (steps are 0-based here)
                os.kill(os.getpid(), signal.SIGINT)
            return super().lr(steps)

    wait = run_checkpoints.Saver.wait

    def second_ctrl_c(self):
        if self.writing is not None or self._job is not None:  # the stop's save, in flight
            os.kill(os.getpid(), signal.SIGINT)
        return wait(self)

    monkeypatch.setattr(run_checkpoints.Saver, "wait", second_ctrl_c)
    w = tmp_path / "w"
    loop.train_and_evaluate(Interrupted, _config(log_every_steps=1, checkpoint_every_steps=100), w, jax.devices()[:1])
    assert _steps(w) == [4, 5]  # the period's end, and the stop's
    assert "a second Ctrl-C: the checkpoint of this step is being written" in capsys.readouterr().err


def test_resume_refuses_another_dataset_or_data_order_and_records_what_may_change(tmp_path):
    """A rebuilt dataset (700 -> 300 images: the saved position applied to another epoch length)
    and another batch size were accepted without a word, and run.json was overwritten. What gives
    the saved data position its meaning is refused; what may change (a fine-tune's lr, the epochs)
    is recorded in run.json's history; a run.json written before these keys resumes."""
    from lsnet_jax.train import workdir as workdirs

    def fp(**over):
        order = dict(data_version="1.0.0", data_examples=700, batch_size=64, seed=0) | over
        return workdirs.fingerprint("classification", "lsnet_t", 10, 32, "imagenet_folder", "train", **order)

    info = {"model": "lsnet_t", "num_classes": 10, "img_size": 32, "config": {"lr": 0.1, "epochs": 5,
                                                                             "data": {"workers": 8}}}
    workdirs.write_run_file(tmp_path, fp(), info)
    (tmp_path / "checkpoints" / "40").mkdir(parents=True)
    workdirs.check(tmp_path, fp())
    for over, what in (({"data_examples": 300}, "data_examples 700 -> 300"), ({"batch_size": 32}, "batch_size 64 -> 32"),
                       ({"seed": 1}, "seed 0 -> 1"), ({"data_version": "1.0.1"}, "data_version '1.0.0' -> '1.0.1'")):
        with pytest.raises(loop.ConfigError, match=re.escape(what)) as e:
            workdirs.check(tmp_path, fp(**over))
        assert "--config.init_weights=W" in str(e.value)
    workdirs.write_run_file(tmp_path, fp(), info | {"config": {"lr": 0.5, "epochs": 8, "data": {"workers": 0}}}, 40)
    run = json.loads((tmp_path / "run.json").read_text())
    assert [h["step"] for h in run["history"]] == [0, 40] and "changed" not in run["history"][0]
    assert run["history"][1]["changed"] == {"lr": [0.1, 0.5], "epochs": [5, 8], "data.workers": [8, 0]}
    assert run["config"]["lr"] == 0.5 and run["fingerprint"] == fp()
    # a run.json of before: its fingerprint has none of these keys, and resumes
    (tmp_path / "run.json").write_text(json.dumps(info | {"fingerprint": workdirs.fingerprint(
        "classification", "lsnet_t", 10, 32, "imagenet_folder", "train")}))
    workdirs.check(tmp_path, fp())
