"""``train_and_evaluate(task_type, config, workdir)``: the one training loop, for every task.

The loop owns what every run does the same way: one mesh over every device of every process (axis
``data``), the state replicated and its buffers donated to the jitted step, each step's global
batch sharded along ``data``; the work directory (its fingerprint checked before anything in it is
touched); Orbax checkpoints with the data iterator and the loop's running figures (``LoopStats``),
so a restart resumes with the batches, losses and figures an uninterrupted run would have had;
pending losses flushed to ``steps.jsonl`` and the progress line; evaluation and checkpoint cadence
in steps; graceful preemption; ``log.txt``, TensorBoard and ``curves.png``.

What a run trains is a ``Task`` (``lsnet_jax.tasks``: classification, segmentation): its data,
model, state, step, evaluation and log rows. The loop knows nothing of labels, pixels or boxes,
and imports no task: ``lsnet_jax.tasks.train_and_evaluate(config, workdir)`` picks the task of
``config.task`` and hands it here.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gc
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lsnet_jax.checkpoints import run as run_checkpoints
from lsnet_jax.data.pipeline import to_global
from lsnet_jax.train import reporting
from lsnet_jax.train import workdir as workdirs
from lsnet_jax.train.checks import ConfigError, Health, first_non_finite
from lsnet_jax.train.preemption import Preemption, stop_after

log = logging.getLogger("lsnet_jax.train")

__all__ = ["Cadence", "ConfigError", "Init", "LoopStats", "Task", "train_and_evaluate",
           "validate_loop_config"]


# ----- what a task gives the loop -----

@dataclasses.dataclass(frozen=True)
class Cadence:
    """When the loop reports, evaluates and saves, in steps. ``period`` is what the task calls an
    epoch (classification: the data's epoch; segmentation: ``eval_every_steps``, as mmseg's
    iteration-based runner): the train figures of a ``log.txt`` row are averaged over one period."""

    total_steps: int  # the schedule's length: the run's end unless config.max_steps stops it earlier
    steps_per_epoch: int  # the data's epoch (progress lines and messages)
    period: int
    eval_every: int = 1  # evaluate after every this many periods, and at total_steps
    save_at_period_end: bool = True  # also save at the end of every period (besides checkpoint_every_steps)

    def period_end(self, done: int) -> bool:
        return done % self.period == 0

    def eval_due(self, done: int) -> bool:
        every = self.period_end(done) and (done // self.period) % self.eval_every == 0
        return every or done == self.total_steps


@dataclasses.dataclass
class LoopStats:
    """The loop's running figures, saved with every checkpoint: the current period's loss and lr
    sums over its steps so far, its unreadable records, the best value of the task's
    ``best_metric`` so far, and the last good losses (``Health``'s median: a resumed run judges
    its first steps against the run it continues)."""

    loss_sum: float = 0.0
    lr_sum: float = 0.0
    steps: int = 0
    skipped: int = 0
    best: float = -math.inf
    recent: list[float] = dataclasses.field(default_factory=list)
    sums: dict[str, float] = dataclasses.field(default_factory=dict)  # the task's step_metrics, this period

    @classmethod
    def from_saved(cls, saved: dict) -> LoopStats:
        """From a checkpoint's ``loop`` item, including those written before the one loop
        (classification's ``best_acc1``; segmentation's, without ``lr_sum``)."""
        saved = dict(saved)
        if "best_acc1" in saved:
            saved["best"] = saved.pop("best_acc1")
        return cls(**saved)

    def add(self, rows: list[dict]) -> None:
        self.loss_sum += sum(r["loss"] for r in rows)
        self.lr_sum += sum(r["lr"] for r in rows)
        self.steps += len(rows)
        for k in {k for r in rows for k in r} - {"step", "loss", "lr"}:  # the task's step_metrics
            self.sums[k] = self.sums.get(k, 0.0) + sum(r[k] for r in rows)

    def mean(self, key: str) -> float | None:
        """The period's mean of a step metric (``None`` before its first step)."""
        return (self.loss_sum if key == "loss" else self.sums.get(key, 0.0)) / self.steps if self.steps else None

    def means(self) -> dict[str, float | None]:
        """The period's mean training loss and lr (``None`` before its first step)."""
        n = self.steps
        return {"train_lr": self.lr_sum / n if n else None, "train_loss": self.loss_sum / n if n else None}

    def new_period(self) -> None:
        self.loss_sum, self.lr_sum, self.steps, self.skipped = 0.0, 0.0, 0, 0
        self.sums = {}


@dataclasses.dataclass
class Init:
    """A task's starting point: the train state (a pytree on the host), the constants every step
    reads but does not update (a distillation teacher; ``None``), and the pure step
    ``step(state, batch, constants) -> (state, metrics)`` whose metrics hold ``loss``."""

    state: Any
    constants: Any
    step: Callable[[Any, dict, Any], tuple[Any, dict]]


class Task(Protocol):
    """One kind of training run. Built as ``TaskType(config, mesh)``, which validates the task's part
    of the config and opens its data (cheap: nothing in the work directory is touched, no model
    built), so that the work directory's fingerprint is checked before the expensive part, ``init``."""

    fingerprint: dict[str, Any]  # what the checkpoints depend on (lsnet_jax.train.workdir)
    cadence: Cadence
    global_batch: int
    # a log row's key: DIR/best keeps the weights where it was highest; None: no DIR/best
    best_metric: str | None
    curves: tuple[reporting.Panel, ...]  # curves.png's panels besides the train loss
    # optional: the step's metrics besides "loss" written to steps.jsonl and TensorBoard and summed
    # over each period (LoopStats.mean), e.g. detection's ("loss_cls", "loss_bbox")

    def train_iterator(self) -> Iterator[dict]:
        """The training batches (host-local numpy, ``skipped`` counting unreadable records), with
        ``get_state`` / ``set_state`` (a grain iterator)."""

    def init(self) -> Init: ...

    def lr(self, steps: np.ndarray) -> np.ndarray:
        """The learning rate of each (0-based) step."""

    def evaluate(self, state: Any) -> dict[str, Any]: ...

    def row(self, done: int, stats: LoopStats, ev: dict[str, Any]) -> dict[str, Any]:
        """The ``log.txt`` row of an evaluation after step ``done`` (holds ``step``)."""

    def summary(self, row: dict[str, Any]) -> str:
        """The evaluation's log line."""

    def best_state(self, state: Any) -> Any:
        """What ``DIR/best`` keeps of the state (the weights; not the optimizer's moments)."""

    def where(self, done: int) -> str:
        """Where step ``done`` is, for messages (``epoch 0, step 6/22``)."""

    def run_info(self) -> dict[str, Any]:
        """``run.json`` besides the fingerprint: what ``lsnet-export-weights`` needs."""

    def describe(self) -> str:
        """The run's first line: model, parameters, data, schedule, batch."""


# ----- the loop -----

def validate_loop_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """The loop's own settings (every task has them); a task validates its part in its constructor."""
    for key in ("batch_size", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
        if not isinstance(config[key], int) or isinstance(config[key], bool) or config[key] < 1:
            raise ConfigError(f"config.{key}={config[key]!r} must be a positive integer")
    if not isinstance(config.divergence_factor, (int, float)) or not 1 < config.divergence_factor < math.inf:
        raise ConfigError(f"config.divergence_factor={config.divergence_factor!r} must be a number above 1")
    if config.max_steps is not None and (not isinstance(config.max_steps, int) or config.max_steps < 1):
        raise ConfigError(f"config.max_steps={config.max_steps!r} must be a positive integer (or None: the "
                          f"whole schedule)")
    if config.batch_size % num_devices:
        raise ConfigError(f"config.batch_size={config.batch_size} is not divisible by the {num_devices} "
                          f"devices; set --config.batch_size to a multiple of {num_devices}")


@jax.jit
def all_finite(state: Any) -> jax.Array:
    """Whether every floating-point leaf of ``state`` is finite (one reduction, at each save)."""
    leaves = [x for x in jax.tree.leaves(state) if jax.numpy.issubdtype(x.dtype, jax.numpy.floating)]
    return jax.numpy.all(jax.numpy.stack([jax.numpy.isfinite(x).all() for x in leaves]))


def _restore(manager, abstract, iterator) -> tuple[int, Any, LoopStats]:
    """(step, state, loop stats) of the newest checkpoint that restores; ``(0, None, fresh)`` if none."""
    restored = run_checkpoints.restore_latest(manager, abstract)
    if restored is None:
        return 0, None, LoopStats()
    step, state, data = restored
    data = data or {}
    if "iterator" not in data:  # written before the loop's figures were saved with it
        log.warning("the checkpoint at step %d holds no loop figures: this period's train figures "
                    "average the steps from here on", step)
        data = {"iterator": data or None, "loop": {}}
    if data["iterator"] is not None:
        iterator.set_state(data["iterator"])
    return step, state, LoopStats.from_saved(data["loop"])


def train_and_evaluate(task_type: Callable[[ml_collections.ConfigDict, Mesh], Task],
                       config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                       devices: list[jax.Device] | None = None) -> dict[str, Any]:
    """Train (or resume) the task ``task_type(config, mesh)`` in ``workdir`` on ``devices`` (default:
    all); returns the last evaluation's ``log.txt`` row (``{}`` if none ran). Orbax's own error
    tracebacks are silenced: a failed save or restore is reported in one line."""
    with run_checkpoints.quiet_orbax_errors():
        try:
            return _train(task_type, config, Path(workdir), jax.devices() if devices is None else list(devices))
        finally:  # a failed save's asyncio futures, collected while their "never retrieved" logs are dropped
            gc.collect()


def _train(task_type, config: ml_collections.ConfigDict, workdir: Path,
           devices: list[jax.Device]) -> dict[str, Any]:
    # ----- mesh and task -----
    validate_loop_config(config, len(devices))
    mesh = Mesh(np.asarray(devices), ("data",))
    task = task_type(config, mesh)
    workdirs.check(workdir, task.fingerprint)  # before anything in it is touched
    lock = workdirs.Lock(workdir) if jax.process_index() == 0 else None  # one run at a time in it
    taken_over = lock.acquire() if lock is not None else None
    try:
        if taken_over:
            log.warning("%s", taken_over)
        return _run(task, config, workdir, devices, mesh)
    finally:
        if lock is not None:
            lock.release()


def _run(task: Task, config: ml_collections.ConfigDict, workdir: Path, devices: list[jax.Device],
         mesh: Mesh) -> dict[str, Any]:
    rep, dat = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    cad = task.cadence
    init = task.init()
    state = jax.device_put(init.state, rep)
    constants = None if init.constants is None else jax.device_put(init.constants, rep)

    # ----- checkpoints and restore -----
    async_save = config.async_checkpoint
    keep = run_checkpoints.KeepGood(config.keep_checkpoints)  # rotation never drops the newest good step
    manager = run_checkpoints.make_manager(workdir / "checkpoints", config.keep_checkpoints, async_save, good=keep)
    saver = run_checkpoints.Saver(manager)
    best_saver = None
    if task.best_metric is not None:
        best_saver = run_checkpoints.Saver(run_checkpoints.make_manager(workdir / "best", 1, async_save,
                                                                        best=task.best_metric),
                                           label="best checkpoint", resume_dir=manager.directory)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), state)
    iterator = task.train_iterator()
    start, restored, stats = _restore(manager, abstract, iterator)
    health = Health(config.divergence_factor, stats.recent)
    if restored is not None:
        state = restored
        health.saved(start)  # the first loss from here judges it
        log.info("resumed from step %d (%s) in %s", start, task.where(start), manager.directory)

    # ----- the step -----
    train_fn = jax.jit(init.step, in_shardings=(rep, dat, rep), out_shardings=(rep, rep), donate_argnums=0)

    # ----- reports -----
    is_main = jax.process_index() == 0
    reporter = reporting.Reporter(workdir, start, tensorboard=config.tensorboard, write=is_main,
                                  panels=task.curves)
    if is_main:
        workdirs.write_run_file(workdir, task.fingerprint, task.run_info(), start)
    log.info("%s, global batch %d on %d devices", task.describe(), task.global_batch, len(devices))
    progress = reporting.Progress(cad.total_steps, cad.steps_per_epoch, task.global_batch, start)
    end = cad.total_steps if config.max_steps is None else min(cad.total_steps, config.max_steps)
    pending: list[tuple[int, dict[str, jax.Array]]] = []
    extra = tuple(getattr(task, "step_metrics", ()))
    # log.txt train rows (the official logs'): the task's row of the last log_every_steps steps, where it gives one
    train_row = getattr(task, "train_row", None)
    window: collections.deque[dict] = collections.deque(maxlen=config.log_every_steps)
    if train_row is not None and is_main:  # a resumed run's first row averages the same steps as an unbroken one's
        window.extend(reporting.read_jsonl(reporter.steps_path, step=True))
    last: dict[str, Any] = {}

    def flush(line: bool) -> None:
        """Write the pending steps' losses (steps.jsonl, TensorBoard, the period's sums); with
        ``line``, the progress line."""
        nonlocal pending
        if not pending:
            return
        values = jax.device_get([m for _, m in pending])
        lrs = np.asarray(task.lr(np.asarray([s for s, _ in pending])))  # one call per flush, not per step
        rows = [{"step": s + 1, "loss": float(v["loss"]), "lr": float(lr), **{k: float(v[k]) for k in extra}}
                for (s, _), v, lr in zip(pending, values, lrs)]
        pending = []
        reporter.steps([r for r in rows if math.isfinite(r["loss"])])
        health.judge(rows)
        keep.good = health.good
        bad = first_non_finite(rows)
        if bad is not None:
            diverged(f"non-finite loss {bad['loss']} at step {bad['step']} ({task.where(bad['step'])})")
        stats.add(rows)
        if train_row is not None:
            for r in rows:
                window.append(r)
                row = train_row(r["step"], list(window))
                if row is not None:
                    reporter.train(row)
        if is_main and line:
            log.info(progress.line(rows[-1]["step"], rows[-1]["loss"], rows[-1]["lr"], stats.skipped))

    def evaluate(done: int) -> dict[str, Any]:
        flush(line=False)  # the row's train figures include every step up to it
        t = time.monotonic()
        ev = task.evaluate(state)
        progress.exclude(time.monotonic() - t)
        row = task.row(done, stats, ev)
        reporter.epoch(row, done)
        if is_main:
            log.info(task.summary(row))
        if best_saver is not None and row[task.best_metric] > stats.best:
            stats.best = row[task.best_metric]
            best_saver.save(done, task.best_state(state), None, {task.best_metric: row[task.best_metric]})
        return row

    def save(done: int) -> None:
        flush(line=False)  # the loop's figures saved with the step include every step up to it
        if not bool(all_finite(state)):  # the loss was computed before the update that overflowed
            diverged(f"the state after step {done} ({task.where(done)}) is not finite: an update overflowed")
        saver.save(done, state, {"iterator": iterator.get_state(), "loop": dataclasses.asdict(stats)})
        health.saved(done)

    def diverged(what: str) -> None:
        """Stop: move the checkpoints this run saved (or resumed from) after its newest good step
        aside, so that the same command resumes from a good one; raise ``FloatingPointError``."""
        with contextlib.suppress(Exception):  # a failed save is not what is reported here
            saver.wait()
        suspects = sorted(set(health.suspects()) & set(run_checkpoints.complete_steps(manager.directory)))
        if is_main:
            for s in suspects:
                run_checkpoints.move_aside(Path(manager.directory) / str(s), "diverged")
        manager.reload()
        left = manager.latest_step()
        moved = (f"the checkpoints of steps {suspects}, saved after the newest good step, were moved aside to "
                 f"STEP.diverged; " if suspects else "")
        then = (f"the same command resumes from step {left}" + (" (judged good: the loss after it was finite and "
                f"within {health.factor:g}x the recent median)" if left == health.good else "")
                if left is not None else "no checkpoint is left: the same command starts again")
        raise FloatingPointError(f"the run diverged: {what}. Nothing of it was saved; {moved}{then}. Lower "
                                 f"config.lr (or check the data) before running it again. ({manager.directory})")

    # ----- the loop -----
    preempt = Preemption().__enter__()  # left in the finally below
    try:
        for step in range(start, end):
            saver.poll()  # a save that failed in the background stops the run here, in one line
            batch = next(iterator)
            stats.skipped += int(batch["skipped"])
            state, metrics = train_fn(state, to_global(batch, dat), constants)
            pending.append((step, {k: metrics[k] for k in ("loss",) + extra}))
            done = step + 1
            period_end = cad.period_end(done)
            if done % config.log_every_steps == 0 or period_end or done == end:
                flush(line=True)
            if cad.eval_due(done):
                last = evaluate(done)
            if period_end:
                stats.new_period()
            saved = ((cad.save_at_period_end and period_end) or done % config.checkpoint_every_steps == 0
                     or done == end)
            if saved:
                save(done)
            if stop_after(preempt, done, end, saved, save, saver):  # SIGTERM / SIGINT: this step is the last
                log.info("stopped by %s after step %d (%s); its checkpoint is in %s: run the same command to "
                         "resume from it", preempt.signal, done, task.where(done), manager.directory)
                break
        saver.wait()
        if best_saver is not None:
            best_saver.wait()
    finally:
        preempt.__exit__()
        saver.close()
        if best_saver is not None:
            best_saver.close()
        reporter.close()
    return last
