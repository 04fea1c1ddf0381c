"""``train_and_evaluate(config, workdir)``: the training run behind ``lsnet-train`` / ``train.py``.

One mesh over every device of every process (axis ``data``); model, optimizer and EMA replicated;
each step's global batch sharded along ``data``; the state buffers donated to the step. Restarting
with the same work directory resumes from the newest complete checkpoint, data iterator and the
loop's running figures (``LoopStats``) included, so the run continues with the batches, losses
and epoch figures an uninterrupted run would have had.

Each part is built from the config section it reads: the data (``build_data``), the model
(``build_model``), the optimizer (``optim.from_config``), the step (``StepConfig.from_config``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lsnet_jax import kernels
from lsnet_jax.checkpoints import run as run_checkpoints
from lsnet_jax.data import pipeline, source
from lsnet_jax.data.transforms import EvalTransform, TrainTransform
from lsnet_jax.inference.evaluate import eval_step, run_eval
from lsnet_jax.models.registry import DTYPES, create_model, list_models
from lsnet_jax.train import optim, reporting
from lsnet_jax.train import workdir as workdirs
from lsnet_jax.train.preemption import Preemption, stop_after
from lsnet_jax.train.checks import ConfigError, check_finite
from lsnet_jax.train.steps import StepConfig, init_train_state, model_weights, train_step

log = logging.getLogger("lsnet_jax.train")


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Stop before any work on settings that cannot run, saying what to change."""
    for key in ("batch_size", "epochs", "log_every_steps", "checkpoint_every_steps", "eval_every_epochs"):
        if not isinstance(config[key], int) or config[key] < 1:
            raise ConfigError(f"config.{key}={config[key]!r} must be a positive integer")
    if config.eval_batch_size is not None and config.eval_batch_size < 1:
        raise ConfigError(f"config.eval_batch_size={config.eval_batch_size!r} must be a positive integer (or None: "
                          f"batch_size)")
    if config.model not in list_models():
        raise ConfigError(f"config.model={config.model!r} is not a model; choose one of {list_models()}")
    if config.batch_size % num_devices:
        raise ConfigError(f"config.batch_size={config.batch_size} is not divisible by the {num_devices} "
                          f"devices; set --config.batch_size to a multiple of {num_devices}")
    eval_batch = config.eval_batch_size or config.batch_size
    if eval_batch % num_devices:
        raise ConfigError(f"config.eval_batch_size={eval_batch} is not divisible by the {num_devices} devices")
    if config.dtype not in DTYPES:
        raise ConfigError(f"config.dtype={config.dtype!r}; use one of {sorted(DTYPES)}")
    if config.impl not in kernels.IMPLS:
        raise ConfigError(f"config.impl={config.impl!r}; use one of {kernels.IMPLS}")
    if config.distillation.teacher_dtype and config.distillation.teacher_dtype not in DTYPES:
        raise ConfigError(f"config.distillation.teacher_dtype={config.distillation.teacher_dtype!r}; use one of "
                          f"{sorted(DTYPES)} or '' (the run's dtype)")
    if config.lr_schedule not in optim.SCHEDULES:
        raise ConfigError(f"config.lr_schedule={config.lr_schedule!r}; use one of {optim.SCHEDULES}")
    if config.img_size % 8:
        raise ConfigError(f"config.img_size={config.img_size} must be a multiple of 8")
    kind = config.distillation.type
    if kind not in ("none", "hard"):
        raise ConfigError(f"config.distillation.type={kind!r}; use 'none' or 'hard'")
    if kind == "hard" and not config.model.endswith("_distill"):
        raise ConfigError(f"hard distillation needs a model with a distillation head, e.g. "
                          f"{config.model}_distill (config.model={config.model!r})")
    if kind == "hard" and not (config.distillation.teacher_model and config.distillation.teacher_checkpoint):
        raise ConfigError("hard distillation needs config.distillation.teacher_model and .teacher_checkpoint "
                          "(the published teacher: regnety_160 with DeiT's regnety_160-a5fe301d.pth converted by "
                          "lsnet-convert)")
    if kind == "hard" and config.distillation.teacher_model not in list_models():
        raise ConfigError(f"config.distillation.teacher_model={config.distillation.teacher_model!r} is not a model; "
                          f"choose one of {list_models()}")
    if config.init_weights and not (os.path.exists(config.init_weights) or config.init_weights.startswith("hf-hub:")):
        raise ConfigError(f"config.init_weights={config.init_weights!r} does not exist; give a directory written by "
                          f"lsnet-convert or lsnet-export-weights, or hf-hub:OWNER/REPO/FILE (e.g. "
                          f"hf-hub:jameslahm/lsnet/lsnet_t.pth, the published LSNet-T)")
    if config.bn_group_size and (config.batch_size // num_devices) % config.bn_group_size:
        raise ConfigError(f"config.bn_group_size={config.bn_group_size} must divide the per-device batch "
                          f"({config.batch_size // num_devices}); set --config.bn_group_size to a divisor of it, "
                          f"or to 0 for BatchNorm statistics over the global batch")


@dataclasses.dataclass(frozen=True)
class Data:
    train: pipeline.Loader
    eval: pipeline.Loader
    info: source.SourceInfo
    eval_info: source.SourceInfo
    num_classes: int


def sampler_replicas(config: ml_collections.ConfigDict) -> int:
    """The replicas repeated augmentation deals copies to: the BatchNorm groups (``bn_group_size``,
    the official per-GPU batch); one without groups, where BatchNorm spans the global batch. From
    the config alone, so that the data order does not depend on the number of devices."""
    return config.batch_size // config.bn_group_size if config.bn_group_size else 1


def build_data(config: ml_collections.ConfigDict, replicas: int = 1) -> Data:
    """The training and evaluation loaders of ``config.data`` with the transforms of ``config.aug``;
    ``replicas`` (``sampler_replicas``) for repeated augmentation."""
    d = config.data
    src, info = source.open_source(d.name, d.train_split, d.data_dir)
    esrc, einfo = source.open_source(d.name, d.eval_split, d.data_dir)
    io = dict(workers=d.workers, threads=d.threads, prefetch=d.prefetch)
    train = pipeline.train_loader(src, info, TrainTransform.from_config(config.aug, config.img_size),
                                  global_batch=config.batch_size, seed=config.seed, num_epochs=config.epochs,
                                  repeats=d.repeats, replicas=replicas, **io)
    evaluation = pipeline.eval_loader(esrc, einfo, EvalTransform.from_config(config.aug, config.img_size),
                                      global_batch=config.eval_batch_size or config.batch_size, **io)
    return Data(train, evaluation, info, einfo, config.num_classes or info.num_classes)


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> nnx.Module:
    """The model of ``config`` (from ``config.init_weights`` when set), in eval mode."""
    return create_model(config.model, pretrained=config.init_weights or None, num_classes=num_classes,
                        img_size=config.img_size, dtype=DTYPES[config.dtype],
                        bn_group_size=config.bn_group_size or None, seed=config.seed, impl=config.impl,
                        bn_momentum=config.bn_momentum)


def _pure(model: nnx.Module, kind) -> dict:
    return nnx.to_pure_dict(nnx.state(model, kind))


def build_teacher(config: ml_collections.ConfigDict,
                  num_classes: int) -> tuple[dict | None, nnx.GraphDef | None]:
    """The distillation teacher's state and graph (``None, None`` without hard distillation)."""
    if config.distillation.type != "hard":
        return None, None
    d = config.distillation
    # folded (deploy form): the teacher only runs forward, and most of a distillation step's
    # compute is its forward (RegNetY-160: ~16 GMACs at 224 against LSNet-T's 0.3)
    t = create_model(d.teacher_model, pretrained=d.teacher_checkpoint, img_size=config.img_size,
                     dtype=DTYPES[d.teacher_dtype or config.dtype], impl=config.impl, deploy=True)
    classes = t.cfg.num_classes
    if classes != num_classes:
        raise ConfigError(f"the teacher {d.teacher_model} ({d.teacher_checkpoint}) predicts {classes} classes, "
                          f"the dataset has {num_classes}: a teacher must be trained on the same classes")
    return {"state": nnx.to_pure_dict(nnx.state(t))}, nnx.graphdef(t)


@dataclasses.dataclass
class LoopStats:
    """The loop's running figures, saved with every checkpoint: the current epoch's loss and lr
    sums over its steps so far, its unreadable records, and the best evaluation top-1."""

    loss_sum: float = 0.0
    lr_sum: float = 0.0
    steps: int = 0
    skipped: int = 0
    best_acc1: float = -1.0

    def add(self, rows: list[dict]) -> None:
        self.loss_sum += sum(r["loss"] for r in rows)
        self.lr_sum += sum(r["lr"] for r in rows)
        self.steps += len(rows)

    def epoch_means(self) -> dict[str, float | None]:
        n = self.steps
        return {"train_lr": self.lr_sum / n if n else None, "train_loss": self.loss_sum / n if n else None}

    def new_epoch(self) -> None:
        self.loss_sum, self.lr_sum, self.steps, self.skipped = 0.0, 0.0, 0, 0


def _restore(manager, abstract, iterator) -> tuple[int, Any, LoopStats]:
    """(step, state, loop stats) of the newest checkpoint that restores; ``(0, None, fresh)`` if none."""
    restored = run_checkpoints.restore_latest(manager, abstract)
    if restored is None:
        return 0, None, LoopStats()
    step, state, data = restored
    data = data or {}
    if "iterator" not in data:  # written before the loop's figures were saved with it
        log.warning("the checkpoint at step %d holds no loop figures: this epoch's train_loss/train_lr "
                    "average the steps from here on", step)
        data = {"iterator": data or None, "loop": {}}
    if data["iterator"] is not None:
        iterator.set_state(data["iterator"])
    return step, state, LoopStats(**data["loop"])


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                       devices: list[jax.Device] | None = None) -> dict[str, Any]:
    """Train (or resume) in ``workdir`` on ``devices`` (default: all); returns the last epoch's log entry.
    A segmentation config (``task == "segmentation"``) runs ``lsnet_jax.train.segmentation``.
    Orbax's own error tracebacks are silenced: a failed save or restore is reported in one line."""
    with run_checkpoints.quiet_orbax_errors():
        if config.get("task") == "segmentation":
            from lsnet_jax.train import segmentation

            return segmentation.train_and_evaluate(config, workdir, devices)
        return _train_classifier(config, workdir, devices)


def _train_classifier(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                      devices: list[jax.Device] | None) -> dict[str, Any]:
    workdir = Path(workdir)
    devices = jax.devices() if devices is None else list(devices)
    validate_config(config, len(devices))
    mesh = Mesh(np.asarray(devices), ("data",))
    rep, dat = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    data = build_data(config, sampler_replicas(config))
    num_classes, spe = data.num_classes, data.train.steps_per_epoch
    fingerprint = workdirs.fingerprint("classification", config.model, num_classes, config.img_size, config.data.name,
                                       config.data.train_split)
    workdirs.check(workdir, fingerprint)  # before anything in it is touched
    total_steps = config.epochs * spe
    model = build_model(config, num_classes)
    n_parameters = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(_pure(model, nnx.Param)))
    schedule, tx = optim.from_config(config, spe)
    state, graphdef, eval_graphdef = init_train_state(model, tx, config.seed)
    step_cfg = StepConfig.from_config(config, num_classes, model.impl)
    del model
    state = jax.device_put(state, rep)
    teacher, teacher_graphdef = build_teacher(config, num_classes)
    teacher = None if teacher is None else jax.device_put(teacher, rep)

    keep, async_save = config.keep_checkpoints, config.async_checkpoint
    manager = run_checkpoints.make_manager(workdir / "checkpoints", keep, async_save)
    best_manager = run_checkpoints.make_manager(workdir / "best", 1, async_save, best=True)
    saver, best_saver = run_checkpoints.Saver(manager), run_checkpoints.Saver(best_manager)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), state)
    iterator = iter(data.train.dataset)
    start, restored, stats = _restore(manager, abstract, iterator)
    if restored is not None:
        state = restored
        log.info("resumed from step %d (epoch %d) in %s", start, start // spe, manager.directory)

    train_fn = jax.jit(functools.partial(train_step, graphdef=graphdef, tx=tx, cfg=step_cfg,
                                         teacher_graphdef=teacher_graphdef),
                       in_shardings=(rep, dat, rep), out_shardings=(rep, rep), donate_argnums=0)
    eval_fn = jax.jit(functools.partial(eval_step, graphdef=eval_graphdef, mean=step_cfg.mean,
                                        std=step_cfg.std), in_shardings=((rep, rep), dat), out_shardings=rep)

    is_main = jax.process_index() == 0
    reporter = reporting.Reporter(workdir, start, tensorboard=config.tensorboard, write=is_main)
    if is_main:  # what lsnet-export-weights needs to turn a checkpoint into weights
        workdirs.write_run_file(workdir, fingerprint, {
            "model": config.model, "num_classes": num_classes, "img_size": config.img_size,
            "n_parameters": n_parameters, "class_names": list(data.info.class_names)[:num_classes],
            "config": config.to_dict()})
    log.info("%s: %d parameters, %d classes, %d train / %d eval images, %d steps/epoch x %d epochs, "
             "global batch %d on %d devices, peak lr %.3g", config.model, n_parameters, num_classes,
             data.info.num_examples, data.eval_info.num_examples, spe, config.epochs, config.batch_size,
             len(devices), optim.scaled_lr(config.lr, config.batch_size))
    progress = reporting.Progress(total_steps, spe, config.batch_size, start)
    end = total_steps if config.max_steps is None else min(total_steps, config.max_steps)
    pending: list[tuple[int, jax.Array]] = []
    last: dict[str, Any] = {}

    def flush(line: bool) -> None:
        """Write the pending steps' losses (steps.jsonl, TensorBoard, the epoch sums); with
        ``line``, the progress line."""
        nonlocal pending
        if not pending:
            return
        losses = jax.device_get([m for _, m in pending])
        lrs = np.asarray(schedule(np.asarray([s for s, _ in pending])))  # one call per flush, not per step
        rows = [{"step": s + 1, "loss": float(v), "lr": float(lr)}
                for (s, _), v, lr in zip(pending, losses, lrs)]
        pending = []
        reporter.steps([r for r in rows if math.isfinite(r["loss"])])
        check_finite(rows, spe, manager.directory)
        stats.add(rows)
        if is_main and line:
            log.info(progress.line(rows[-1]["step"], rows[-1]["loss"], rows[-1]["lr"], stats.skipped))

    def evaluate(params, batch_stats) -> dict[str, float]:
        t = time.monotonic()
        out = run_eval(lambda b: eval_fn((params, batch_stats), b), data.eval, dat)
        progress.exclude(time.monotonic() - t)
        return out

    def save(done: int) -> None:
        flush(line=False)  # the loop's figures saved with the step include every step up to it
        saver.save(done, state, {"iterator": iterator.get_state(), "loop": dataclasses.asdict(stats)})

    preempt = Preemption().__enter__()  # left in the finally below
    try:
        for step in range(start, end):
            saver.poll()  # a save that failed in the background stops the run here, in one line
            batch = next(iterator)
            stats.skipped += int(batch["skipped"])
            state, metrics = train_fn(state, pipeline.to_global(batch, dat), teacher)
            pending.append((step, metrics["loss"]))
            done = step + 1
            epoch_end = done % spe == 0
            if done % config.log_every_steps == 0 or epoch_end or done == end:
                flush(line=True)
            if (epoch_end and (done // spe) % config.eval_every_epochs == 0) or done == total_steps:
                epoch = done // spe - 1
                ev = evaluate(state.params, state.batch_stats)
                ev_ema = evaluate(state.ema_params, state.ema_stats)
                last = stats.epoch_means() | {
                    "test_loss": ev["loss"], "test_acc1": ev["top1"], "test_acc5": ev["top5"],
                    "test_ema_loss": ev_ema["loss"], "test_ema_acc1": ev_ema["top1"],
                    "test_ema_acc5": ev_ema["top5"], "epoch": epoch, "n_parameters": n_parameters,
                    "steps_per_epoch": spe, "step": done, "train_skipped": stats.skipped}
                reporter.epoch(last, done)
                if is_main:
                    log.info("epoch %d: test top-1 %.2f top-5 %.2f loss %.4f | EMA top-1 %.2f", epoch,
                             ev["top1"], ev["top5"], ev["loss"], ev_ema["top1"])
                if ev["top1"] > stats.best_acc1:
                    stats.best_acc1 = ev["top1"]
                    best_saver.save(done, model_weights(state), None, {"acc1": ev["top1"]})
            if epoch_end:
                stats.new_epoch()
            saved = epoch_end or done % config.checkpoint_every_steps == 0 or done == end
            if saved:
                save(done)
            if stop_after(preempt, done, end, saved, save, saver):  # SIGTERM / SIGINT: this step is the last
                log.info("stopped by %s after step %d (epoch %d, step %d/%d); its checkpoint is in %s: run the "
                         "same command to resume from it", preempt.signal, done, (done - 1) // spe,
                         (done - 1) % spe + 1, spe, manager.directory)
                break
        saver.wait()
        best_saver.wait()
    finally:
        preempt.__exit__()
        saver.close()
        best_saver.close()
        reporter.close()
    return last
