"""``train_and_evaluate(config, workdir)``: the training run behind ``train.py``.

One mesh over every device of every process (axis ``data``); model, optimizer and EMA replicated;
each step's global batch sharded along ``data``; the state buffers donated to the step. Restarting
with the same work directory resumes from the newest complete checkpoint, data iterator included,
so the run continues with the batches and losses an uninterrupted run would have had.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lsnet_jax.data import pipeline
from lsnet_jax.registry import create_model, list_models
from lsnet_jax.train import checkpoint, optim, reporting
from lsnet_jax.train.steps import StepConfig, eval_step, init_train_state, train_step

log = logging.getLogger("lsnet_jax.train")

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class ConfigError(ValueError):
    pass


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Stop before any work on settings that cannot run, saying what to change."""
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
    if config.img_size % 8:
        raise ConfigError(f"config.img_size={config.img_size} must be a multiple of 8")
    kind = config.distillation.type
    if kind not in ("none", "hard"):
        raise ConfigError(f"config.distillation.type={kind!r}; use 'none' or 'hard'")
    if kind == "hard" and not config.model.endswith("_distill"):
        raise ConfigError(f"hard distillation needs a model with a distillation head, e.g. "
                          f"{config.model}_distill (config.model={config.model!r})")
    if kind == "hard" and not (config.distillation.teacher_model and config.distillation.teacher_checkpoint):
        raise ConfigError("hard distillation needs config.distillation.teacher_model and .teacher_checkpoint")
    if config.init_weights and not os.path.exists(config.init_weights):
        raise ConfigError(f"config.init_weights={config.init_weights!r} does not exist; give a directory written by "
                          f"convert_torch.py or `python -m lsnet_jax.train.export`")
    if config.bn_group_size is not None and (config.batch_size // num_devices) % config.bn_group_size:
        raise ConfigError(f"config.bn_group_size={config.bn_group_size} must divide the per-device batch "
                          f"({config.batch_size // num_devices})")


def check_finite(rows: list[dict], steps_per_epoch: int, checkpoint_dir: Any) -> None:
    """Stop on the first non-finite loss, naming its step."""
    bad = next((r for r in rows if not math.isfinite(r["loss"])), None)
    if bad is not None:
        raise FloatingPointError(
            f"non-finite loss {bad['loss']} at step {bad['step']} (epoch {(bad['step'] - 1) // steps_per_epoch}); "
            f"lower config.lr or check the data. Checkpoints up to the last good step are in {checkpoint_dir}")


def _pure(model: nnx.Module, kind) -> dict:
    return nnx.to_pure_dict(nnx.state(model, kind))


def _evaluate(eval_fn, params, stats, loader: pipeline.Loader, sharding) -> dict[str, float]:
    sums = None
    skipped = 0
    for batch in loader.dataset:
        skipped += int(batch["skipped"])
        out = eval_fn(params, stats, pipeline.to_global(batch, sharding))
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = {k: float(v) for k, v in jax.device_get(sums).items()}
    n = max(sums["count"], 1.0)
    if skipped:
        log.warning("evaluation skipped %d unreadable records", skipped)
    return {"loss": sums["loss"] / n, "acc1": 100 * sums["acc1"] / n, "acc5": 100 * sums["acc5"] / n,
            "count": int(sums["count"]), "skipped": skipped}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _read_steps(path: Path, first: int, last: int) -> list[dict]:
    return [r for r in _read_jsonl(path) if first < r["step"] <= last]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                       devices: list[jax.Device] | None = None) -> dict[str, Any]:
    """Train (or resume) in ``workdir`` on ``devices`` (default: all); returns the last epoch's log entry."""
    workdir = Path(workdir)
    devices = jax.devices() if devices is None else list(devices)
    validate_config(config, len(devices))
    mesh = Mesh(np.asarray(devices), ("data",))
    rep, dat = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    d, a = config.data, config.aug
    src, info = pipeline.open_source(d.name, d.train_split, d.data_dir)
    esrc, einfo = pipeline.open_source(d.name, d.eval_split, d.data_dir)
    num_classes = config.num_classes or info.num_classes
    train_tf = pipeline.TrainTransform(config.img_size, tuple(a.mean), tuple(a.std), tuple(a.scale), tuple(a.ratio),
                                       a.hflip, a.randaugment or None, a.reprob, a.fast_decode)
    eval_tf = pipeline.EvalTransform(config.img_size, a.crop_pct)
    loader = pipeline.train_loader(src, info, train_tf, config.batch_size, config.seed, config.epochs,
                                   d.repeats, d.workers, d.threads, d.prefetch)
    eval_batch = config.eval_batch_size or config.batch_size
    eloader = pipeline.eval_loader(esrc, einfo, eval_tf, eval_batch, d.workers, d.threads, d.prefetch)
    spe = loader.steps_per_epoch
    total_steps = config.epochs * spe

    model = create_model(config.model, pretrained=config.init_weights or None, num_classes=num_classes,
                         img_size=config.img_size, dtype=DTYPES[config.dtype], bn_group_size=config.bn_group_size,
                         seed=config.seed)
    n_parameters = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(_pure(model, nnx.Param)))

    peak_lr = optim.scaled_lr(config.lr, config.batch_size)
    schedule = optim.lr_schedule(peak_lr, spe, config.epochs, config.warmup_epochs, config.warmup_lr,
                                 config.min_lr)
    tx = optim.make_optimizer(schedule, config.weight_decay, config.opt_betas[0], config.opt_betas[1],
                              config.opt_eps, config.clip_grad or None)
    state, graphdef, eval_graphdef = init_train_state(model, tx, config.seed)
    del model
    state = jax.device_put(state, rep)

    teacher, teacher_graphdef = None, None
    if config.distillation.type == "hard":
        t = create_model(config.distillation.teacher_model, pretrained=config.distillation.teacher_checkpoint,
                         num_classes=num_classes, img_size=config.img_size, dtype=DTYPES[config.dtype])
        teacher_graphdef = nnx.graphdef(t)
        teacher = jax.device_put({"params": _pure(t, nnx.Param), "batch_stats": _pure(t, nnx.BatchStat)}, rep)

    manager = checkpoint.make_manager(workdir / "checkpoints", config.keep_checkpoints, config.async_checkpoint)
    best_manager = checkpoint.make_manager(workdir / "best", 1, config.async_checkpoint, best=True)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), state)
    iterator = iter(loader.dataset)
    restored = checkpoint.restore_latest(manager, abstract)
    start = 0
    if restored is not None:
        start, state, data_state = restored
        if data_state is not None:
            iterator.set_state(data_state)
        log.info("resumed from step %d (epoch %d) in %s", start, start // spe, manager.directory)

    step_cfg = StepConfig(num_classes=num_classes, mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, mix_prob=a.mix_prob,
                          switch_prob=a.switch_prob, smoothing=a.smoothing, distillation=config.distillation.type,
                          distill_alpha=config.distillation.alpha, ema_decay=config.ema_decay,
                          mean=tuple(a.mean), std=tuple(a.std))
    train_fn = jax.jit(functools.partial(train_step, graphdef=graphdef, tx=tx, cfg=step_cfg,
                                         teacher_graphdef=teacher_graphdef),
                       in_shardings=(rep, dat, rep), out_shardings=(rep, rep), donate_argnums=0)
    eval_fn = jax.jit(functools.partial(eval_step, graphdef=eval_graphdef, mean=tuple(a.mean), std=tuple(a.std)),
                      in_shardings=(rep, rep, dat),
                      out_shardings=rep)

    is_main = jax.process_index() == 0
    reporter = reporting.Reporter(workdir, start, tensorboard=config.tensorboard, write=is_main)
    if is_main:  # what lsnet_jax.train.export needs to turn a checkpoint into weights
        (workdir / "run.json").write_text(json.dumps(
            {"model": config.model, "num_classes": num_classes, "img_size": config.img_size,
             "n_parameters": n_parameters, "class_names": list(info.class_names)[:num_classes],
             "config": config.to_dict()}, indent=2, default=str) + "\n")
    log.info("%s: %d parameters, %d classes, %d train / %d eval images, %d steps/epoch x %d epochs, "
             "global batch %d on %d devices, peak lr %.3g", config.model, n_parameters, num_classes,
             info.num_examples, einfo.num_examples, spe, config.epochs, config.batch_size, len(devices), peak_lr)
    progress = reporting.Progress(total_steps, spe, config.batch_size, start)
    end = total_steps if config.max_steps is None else min(total_steps, config.max_steps)
    pending: list[tuple[int, jax.Array]] = []
    skipped, last = 0, {}
    # the same on every process (a best checkpoint is saved collectively): epochs up to the resumed step
    best_acc = max([-1.0] + [r["test_acc1"] for r in _read_jsonl(reporter.log_path) if r["step"] <= start])

    def flush() -> None:
        nonlocal pending
        if not pending:
            return
        losses = jax.device_get([m for _, m in pending])
        lrs = np.asarray(schedule(np.asarray([s for s, _ in pending])))  # one call per flush, not per step
        rows = [{"step": s + 1, "loss": float(v), "lr": float(lr)} for (s, _), v, lr in zip(pending, losses, lrs)]
        pending = []
        reporter.steps([r for r in rows if math.isfinite(r["loss"])])
        check_finite(rows, spe, manager.directory)
        if is_main:
            log.info(progress.line(rows[-1]["step"], rows[-1]["loss"], rows[-1]["lr"], skipped))

    try:
        for step in range(start, end):
            batch = next(iterator)
            skipped += int(batch["skipped"])
            state, metrics = train_fn(state, pipeline.to_global(batch, dat), teacher)
            pending.append((step, metrics["loss"]))
            done = step + 1
            epoch_end = done % spe == 0
            if done % config.log_every_steps == 0 or epoch_end or done == end:
                flush()
            if (epoch_end and (done // spe) % config.eval_every_epochs == 0) or done == total_steps:
                epoch = done // spe - 1
                ev = _evaluate(eval_fn, state.params, state.batch_stats, eloader, dat)
                ev_ema = _evaluate(eval_fn, state.ema_params, state.ema_stats, eloader, dat)
                rows = _read_steps(reporter.steps_path, epoch * spe, done)
                last = {"train_lr": float(np.mean([r["lr"] for r in rows])) if rows else None,
                        "train_loss": float(np.mean([r["loss"] for r in rows])) if rows else None,
                        "test_loss": ev["loss"], "test_acc1": ev["acc1"], "test_acc5": ev["acc5"],
                        "test_ema_loss": ev_ema["loss"], "test_ema_acc1": ev_ema["acc1"],
                        "test_ema_acc5": ev_ema["acc5"], "epoch": epoch, "n_parameters": n_parameters,
                        "steps_per_epoch": spe, "step": done, "train_skipped": skipped}
                skipped = 0
                reporter.epoch(last, done)
                if is_main:
                    log.info("epoch %d: test top-1 %.2f top-5 %.2f loss %.4f | EMA top-1 %.2f", epoch,
                             ev["acc1"], ev["acc5"], ev["loss"], ev_ema["acc1"])
                if ev["acc1"] > best_acc:
                    best_acc = ev["acc1"]
                    checkpoint.save(best_manager, done, state, None, {"acc1": ev["acc1"]})
            if epoch_end or done % config.checkpoint_every_steps == 0 or done == end:
                checkpoint.save(manager, done, state, iterator.get_state())
    finally:
        manager.wait_until_finished()
        best_manager.wait_until_finished()
        reporter.close()
    return last
