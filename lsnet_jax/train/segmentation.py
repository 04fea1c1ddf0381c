"""Semantic segmentation training (``config.task == "segmentation"``): the official Semantic FPN
recipe (SEGMENTATION_SPEC.md) on the same mesh, checkpoints, resume and reports as classification.

AdamW (weight decay on every parameter), poly decay per iteration to ``min_lr``, pixel-wise
cross-entropy with ignore index 255 averaged over all pixels (mmseg 0.30's ``avg_non_ignore=False``),
the head's BatchNorm over the global batch (SyncBN), the backbone's frozen. Evaluation every
``eval_every_steps`` and at the end: whole images at the official test size, logits resized back
to the original size, mIoU / mAcc / aAcc over the split as mmseg; ``log.txt`` gets one JSON line per
evaluation (``iter``, ``mIoU``, ``aAcc``, ``mAcc`` in percent, the mean training loss since the last).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lsnet_jax.checkpoints import run as run_checkpoints
from lsnet_jax.data import pipeline, source
from lsnet_jax.data.segmentation import SegTestTransform, SegTrainTransform
from lsnet_jax.inference.segmentation import evaluate_segmenter, seg_logits
from lsnet_jax.models.registry import DTYPES, create_model
from lsnet_jax.train import reporting
from lsnet_jax.train import workdir as workdirs
from lsnet_jax.train.checks import ConfigError, check_finite
from lsnet_jax.train.preemption import Preemption, stop_after
from lsnet_jax.train.seg_steps import SegTrainState, poly_schedule, seg_train_step

log = logging.getLogger("lsnet_jax.train")
Array = jax.Array


def make_optimizer(config: ml_collections.ConfigDict) -> tuple[optax.Schedule, optax.GradientTransformation]:
    """AdamW with the poly schedule; weight decay on every parameter, as the official config."""
    schedule = poly_schedule(config.lr, config.min_lr, config.power, config.iterations)
    b1, b2 = config.opt_betas
    return schedule, optax.adamw(schedule, b1, b2, config.opt_eps, weight_decay=config.weight_decay)


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    if not config.model.endswith("_semfpn"):
        raise ConfigError(f"config.model={config.model!r}: segmentation needs a segmenter, e.g. lsnet_t_semfpn")
    if config.batch_size % num_devices:
        raise ConfigError(f"config.batch_size={config.batch_size} is not divisible by the {num_devices} "
                          f"devices; set --config.batch_size to a multiple of {num_devices}")
    if config.dtype not in DTYPES:
        raise ConfigError(f"config.dtype={config.dtype!r}; use one of {sorted(DTYPES)}")
    if any(c % 32 for c in config.aug.crop):
        raise ConfigError(f"config.aug.crop={tuple(config.aug.crop)}: each side must be a multiple of 32")
    for key in ("backbone_weights", "init_weights"):
        if config[key] and not (os.path.exists(config[key]) or config[key].startswith("hf-hub:")):
            raise ConfigError(f"config.{key}={config[key]!r} does not exist; give a weights directory "
                              "(lsnet-convert or lsnet-export-weights)")


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> nnx.Module:
    """The segmenter (from ``init_weights``, or its backbone from ``backbone_weights``), eval mode."""
    kw = {}
    if config.backbone_weights and not config.init_weights:
        kw["backbone_pretrained"] = config.backbone_weights
    model = create_model(config.model, pretrained=config.init_weights or None, num_classes=num_classes,
                         dtype=DTYPES[config.dtype], seed=config.seed, impl=config.impl,
                         bn_momentum=config.bn_momentum, freeze_backbone_bn=config.freeze_backbone_bn, **kw)
    return model


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                       devices: list[jax.Device] | None = None) -> dict[str, Any]:
    """Train (or resume) a segmenter in ``workdir``; returns the last evaluation's log entry."""
    workdir = Path(workdir)
    devices = jax.devices() if devices is None else list(devices)
    validate_config(config, len(devices))
    mesh = Mesh(np.asarray(devices), ("data",))
    rep, dat = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    d, a = config.data, config.aug
    src, info = source.open_seg_source(d.name, d.train_split, d.data_dir)
    esrc, einfo = source.open_seg_source(d.name, d.eval_split, d.data_dir)
    num_classes = config.num_classes or info.num_classes
    fingerprint = workdirs.fingerprint("segmentation", config.model, num_classes, int(a.crop[0]), d.name,
                                       d.train_split)
    workdirs.check(workdir, fingerprint)  # before anything in it is touched
    total = config.iterations
    end = total if config.max_steps is None else min(total, config.max_steps)
    loader = pipeline.seg_train_loader(src, info, SegTrainTransform.from_config(a), config.batch_size,
                                       config.seed, total, workers=d.workers, threads=d.threads,
                                       prefetch=d.prefetch)
    test_tf = SegTestTransform.from_config(a)

    model = build_model(config, num_classes)
    n_parameters = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    schedule, tx = make_optimizer(config)
    model.train()
    graphdef = nnx.graphdef(model)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    model.eval()
    eval_graphdef = nnx.graphdef(model)
    del model
    state = SegTrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=stats,
                          opt_state=tx.init(params), rng=jax.random.key_data(jax.random.key(config.seed)))
    state = jax.device_put(state, rep)

    manager = run_checkpoints.make_manager(workdir / "checkpoints", config.keep_checkpoints,
                                           config.async_checkpoint)
    saver = run_checkpoints.Saver(manager)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), state)
    iterator = iter(loader.dataset)
    start, loop = 0, {"loss_sum": 0.0, "steps": 0, "skipped": 0}
    restored = run_checkpoints.restore_latest(manager, abstract)
    if restored is not None:
        start, state, data = restored
        iterator.set_state(data["iterator"])
        loop = data["loop"]
        log.info("resumed from iteration %d in %s", start, manager.directory)

    mean, std = tuple(a.mean), tuple(a.std)
    train_fn = jax.jit(functools.partial(seg_train_step, graphdef=graphdef, tx=tx, mean=mean, std=std),
                       in_shardings=(rep, dat), out_shardings=(rep, rep), donate_argnums=0)
    eval_fn = jax.jit(functools.partial(seg_logits, graphdef=eval_graphdef, mean=mean, std=std))

    is_main = jax.process_index() == 0
    reporter = reporting.Reporter(workdir, start, tensorboard=config.tensorboard, write=is_main)
    if is_main:
        workdirs.write_run_file(workdir, fingerprint, {
            "model": config.model, "task": "segmentation", "num_classes": num_classes,
            "img_size": int(a.crop[0]), "n_parameters": n_parameters,
            "class_names": list(info.class_names)[:num_classes], "config": config.to_dict()})
    log.info("%s: %d parameters, %d classes, %d train / %d eval images, %d iterations, global batch %d "
             "on %d devices, lr %.3g", config.model, n_parameters, num_classes, info.num_examples,
             einfo.num_examples, total, config.batch_size, len(devices), config.lr)
    progress = reporting.Progress(total, loader.steps_per_epoch, config.batch_size, start)
    pending: list[tuple[int, Array]] = []
    last: dict[str, Any] = {}

    def flush(line: bool) -> None:
        nonlocal pending
        if not pending:
            return
        losses = jax.device_get([m for _, m in pending])
        lrs = np.asarray(schedule(np.asarray([s for s, _ in pending])))
        rows = [{"step": s + 1, "loss": float(v), "lr": float(lr)} for (s, _), v, lr in zip(pending, losses, lrs)]
        pending = []
        reporter.steps([r for r in rows if math.isfinite(r["loss"])])
        check_finite(rows, loader.steps_per_epoch, manager.directory)
        loop["loss_sum"] += sum(r["loss"] for r in rows)
        loop["steps"] += len(rows)
        if is_main and line:
            log.info(progress.line(rows[-1]["step"], rows[-1]["loss"], rows[-1]["lr"], loop["skipped"]))

    def evaluate(params, batch_stats) -> dict:
        t = time.monotonic()
        local = jax.local_devices()[0]
        p, s = jax.device_put((params, batch_stats), local)
        samples = pipeline.seg_eval_samples(esrc, test_tf, threads=d.threads)
        out = evaluate_segmenter(lambda img: eval_fn(p, s, jax.device_put(img, local)), samples, num_classes,
                                 tuple(info.class_names)[:num_classes], progress_every=500)
        progress.exclude(time.monotonic() - t)
        return out

    def save(done: int) -> None:
        flush(line=False)
        saver.save(done, state, {"iterator": iterator.get_state(), "loop": dict(loop)})

    preempt = Preemption().__enter__()  # left in the finally below
    try:
        for step in range(start, end):
            saver.poll()  # a save that failed in the background stops the run here, in one line
            batch = next(iterator)
            loop["skipped"] += int(batch["skipped"])
            state, metrics = train_fn(state, pipeline.to_global(batch, dat))
            pending.append((step, metrics["loss"]))
            done = step + 1
            if done % config.log_every_steps == 0 or done == end:
                flush(line=True)
            if done % config.eval_every_steps == 0 or done == total:
                flush(line=False)
                ev = evaluate(state.params, state.batch_stats)
                last = {"iter": done, "step": done, "mIoU": ev["mIoU"], "aAcc": ev["aAcc"], "mAcc": ev["mAcc"],
                        "loss": loop["loss_sum"] / max(loop["steps"], 1), "lr": float(schedule(done - 1)),
                        "n_parameters": n_parameters, "train_skipped": loop["skipped"],
                        "eval_skipped": ev["skipped"],
                        "IoU": {k: v["IoU"] for k, v in ev["per_class"].items()}}
                reporter.epoch(last, done)
                if is_main:
                    log.info("iteration %d: mIoU %.2f aAcc %.2f mAcc %.2f", done, ev["mIoU"], ev["aAcc"], ev["mAcc"])
                loop["loss_sum"], loop["steps"] = 0.0, 0
            saved = done % config.checkpoint_every_steps == 0 or done == end
            if saved:
                save(done)
            if stop_after(preempt, done, end, saved, save, saver):  # SIGTERM / SIGINT: this iteration is the last
                log.info("stopped by %s after iteration %d; its checkpoint is in %s: run the same command to "
                         "resume from it", preempt.signal, done, manager.directory)
                break
        saver.wait()
    finally:
        preempt.__exit__()
        saver.close()
        reporter.close()
    return last
