"""Semantic segmentation (``config.task == "segmentation"``): the official Semantic FPN recipe
(SEGMENTATION_SPEC.md) as a task of the one loop (``lsnet_jax.train.loop``).

AdamW (weight decay on every parameter), poly decay per iteration to ``min_lr``, pixel-wise
cross-entropy with ignore index 255 averaged over all pixels (mmseg 0.30's ``avg_non_ignore=False``),
the head's BatchNorm over the global batch (SyncBN), the backbone's frozen. Evaluation every
``eval_every_steps`` (the task's period: mmseg's runner is iteration-based) and at the end: whole
images at the official test size, logits resized back to the original size, mIoU / mAcc / aAcc
over the split as mmseg; ``log.txt`` gets one JSON line per evaluation (``iter``, ``mIoU``,
``aAcc``, ``mAcc`` in percent, the mean training loss since the last).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from lsnet_jax.data import pipeline, source
from lsnet_jax.tasks import dense
from lsnet_jax.tasks.dense import validate_common
from lsnet_jax.data.segmentation import SegTestTransform, SegTrainTransform
from lsnet_jax.inference.segmentation import evaluate_segmenter, seg_logits
from lsnet_jax.train import workdir as workdirs
from lsnet_jax.train.checks import ConfigError, check_head
from lsnet_jax.train.config import architecture
from lsnet_jax.train.loop import Cadence, Init, LoopStats
from lsnet_jax.train.reporting import Panel
from lsnet_jax.train.seg_steps import SegTrainState, init_state, poly_schedule, seg_train_step


def make_optimizer(config: ml_collections.ConfigDict) -> tuple[optax.Schedule, optax.GradientTransformation]:
    """AdamW with the poly schedule; weight decay on every parameter, as the official config."""
    schedule = poly_schedule(config.lr, config.min_lr, config.power, config.iterations)
    b1, b2 = config.opt_betas
    return schedule, optax.adamw(schedule, b1, b2, config.opt_eps, weight_decay=config.weight_decay)


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Stop before any work on settings that cannot run, saying what to change."""
    for key in ("iterations", "eval_every_steps"):
        if not isinstance(config[key], int) or config[key] < 1:
            raise ConfigError(f"config.{key}={config[key]!r} must be a positive integer")
    if not config.model.endswith("_semfpn"):
        raise ConfigError(f"config.model={config.model!r}: segmentation needs a segmenter, e.g. lsnet_t_semfpn")
    if any(c % 32 for c in config.aug.crop):
        raise ConfigError(f"config.aug.crop={tuple(config.aug.crop)}: each side must be a multiple of 32")
    validate_common(config, num_devices)


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> nnx.Module:
    """The segmenter (from ``init_weights``, or its backbone from ``backbone_weights``), eval mode."""
    return dense.build_model(config, num_classes, bn_momentum=config.bn_momentum)


class Segmentation:
    """The segmentation task of the one loop (``lsnet_jax.train.loop.Task``)."""

    best_metric = None  # mmseg keeps no best checkpoint by default
    curves = (Panel("mIoU (%)", "log", "iter", "iteration", (("mIoU", None, "o-"),)),
              Panel("lr", "steps", "step", "iteration", (("lr", None, "-"),)))

    def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh):
        validate_config(config, mesh.size)
        self.config, self.mesh = config, mesh
        d, a = config.data, config.aug
        self.src, self.info = source.open_seg_source(d.name, d.train_split, d.data_dir)
        self.esrc, self.einfo = source.open_seg_source(d.name, d.eval_split, d.data_dir)
        self.num_classes = config.num_classes or self.info.num_classes
        check_head(self.num_classes, self.info.num_classes, f"{d.name}/{d.train_split}")
        self.fingerprint = workdirs.fingerprint(
            "segmentation", config.model, self.num_classes, int(a.crop[0]), d.name, d.train_split,
            architecture(config), data_version=self.info.version, data_examples=self.info.num_examples,
            batch_size=config.batch_size, seed=config.seed)
        self.loader = pipeline.seg_train_loader(self.src, self.info, SegTrainTransform.from_config(a),
                                                config.batch_size, config.seed, config.iterations,
                                                workers=d.workers, threads=d.threads, prefetch=d.prefetch)
        self.test_tf = SegTestTransform.from_config(a)
        self.cadence = Cadence(total_steps=config.iterations, steps_per_epoch=self.loader.steps_per_epoch,
                               period=config.eval_every_steps, save_at_period_end=False)
        self.global_batch = config.batch_size
        self.schedule, self.tx = make_optimizer(config)

    def train_iterator(self) -> Iterator[dict]:
        return self.loader.iterator()

    def init(self) -> Init:
        config = self.config
        model = build_model(config, self.num_classes)
        self.n_parameters = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
        state, graphdef, eval_graphdef = init_state(model, self.tx, config.seed)
        del model
        mean, std = tuple(config.aug.mean), tuple(config.aug.std)
        self._eval_fn = jax.jit(functools.partial(seg_logits, graphdef=eval_graphdef, mean=mean, std=std))
        step = functools.partial(_step, graphdef=graphdef, tx=self.tx, mean=mean, std=std)
        return Init(state, None, step)

    def lr(self, steps: np.ndarray) -> np.ndarray:
        return self.schedule(steps)

    def evaluate(self, state) -> dict[str, Any]:
        local = jax.local_devices()[0]
        p, s = jax.device_put((state.params, state.batch_stats), local)
        samples = pipeline.seg_eval_samples(self.esrc, self.test_tf, threads=self.config.data.threads)
        return evaluate_segmenter(lambda img: self._eval_fn(p, s, jax.device_put(img, local)), samples,
                                  self.num_classes, tuple(self.info.class_names)[:self.num_classes],
                                  progress_every=500)

    def row(self, done: int, stats: LoopStats, ev: dict[str, Any]) -> dict[str, Any]:
        return {"mode": "val", "iter": done, "step": done, "mIoU": ev["mIoU"], "aAcc": ev["aAcc"], "mAcc": ev["mAcc"],
                "loss": stats.loss_sum / max(stats.steps, 1), "lr": float(self.schedule(done - 1)),
                "n_parameters": self.n_parameters, "train_skipped": stats.skipped, "eval_skipped": ev["skipped"],
                "IoU": {k: v["IoU"] for k, v in ev["per_class"].items()}}

    def train_row(self, step: int, last: list[dict]) -> dict[str, Any] | None:
        """mmseg's train row every ``log_every_steps`` iterations: means over them."""
        if step % self.config.log_every_steps:
            return None
        loss = float(np.mean([r["loss"] for r in last]))
        return {"mode": "train", "iter": step, "step": step, "lr": last[-1]["lr"], "decode.loss_ce": loss, "loss": loss}

    def summary(self, row: dict[str, Any]) -> str:
        return f"iteration {row['iter']}: mIoU {row['mIoU']:.2f} aAcc {row['aAcc']:.2f} mAcc {row['mAcc']:.2f}"

    def best_state(self, state) -> Any:
        return {"params": state.params, "batch_stats": state.batch_stats}

    def where(self, done: int) -> str:
        return f"iteration {done}/{self.cadence.total_steps}"

    def run_info(self) -> dict[str, Any]:
        c = self.config
        return {"model": c.model, "task": "segmentation", "num_classes": self.num_classes,
                "img_size": int(c.aug.crop[0]), "n_parameters": self.n_parameters,
                "class_names": list(self.info.class_names)[:self.num_classes], "config": c.to_dict(),
                **({"model_config": architecture(c)} if architecture(c) else {})}

    def describe(self) -> str:
        c = self.config
        return (f"{c.model}: {self.n_parameters} parameters, {self.num_classes} classes, {self.info.num_examples} "
                f"train / {self.einfo.num_examples} eval images, {c.iterations} iterations, lr {c.lr:.3g}")


def _step(state: SegTrainState, batch: dict, constants: None, **kw) -> tuple[SegTrainState, dict]:
    """``seg_train_step`` in the loop's signature (no constants)."""
    del constants
    return seg_train_step(state, batch, **kw)
