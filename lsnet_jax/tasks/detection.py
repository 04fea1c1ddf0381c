"""Object detection (``config.task == "detection"``): the official LSNet + RetinaNet and LSNet +
Mask R-CNN recipes (DETECTION_SPEC.md) as a task of the one loop (``lsnet_jax.train.loop``).
A ``*_maskrcnn`` model trains with instance masks in its batches, the RPN / RoI samplers keyed by
the run's key and the step (``lsnet_jax.train.maskrcnn_steps``), logs the official Mask R-CNN keys
(``loss_rpn_cls``, ``loss_rpn_bbox``, ``loss_cls``, ``acc``, ``loss_bbox``, ``loss_mask``) and is
evaluated on boxes and masks (``segm_mAP`` ...).

AdamW (weight decay on every parameter but the attention biases), the step schedule by epoch with a
linear warm-up (or the digit scenes' cosine), RetinaNet's assigner, focal and L1 losses with one
avg_factor per ``group_size`` images (an official GPU's), the backbone's BatchNorms frozen.
Training images are padded to a few ``aug.pad_shapes`` and every batch drawn from one
(``lsnet_jax.data.detection``: the run compiles one train program per shape in use), boxes to
``aug.max_boxes``; evaluation pads each image to its own multiples of 32 as the official test
(``aug.test_pad_shapes=()``, one program per distinct size) or to ``aug.test_pad_shapes``.
Evaluation after every ``eval_every_epochs`` epochs and at the end: the official inference
(``lsnet_jax.inference.detection.detect``) and pycocotools' COCOeval over the whole split;
``log.txt`` gets MMDetection's rows: one per evaluation (``"mode": "val"``, ``bbox_mAP``,
``bbox_mAP_50`` ... ``bbox_mAP_copypaste``, the period's mean losses and lr) and a train row every
``log_every_steps`` iterations of an epoch (``train_row``).
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
from lsnet_jax.data.sampler import group_steps
from lsnet_jax.tasks import dense
from lsnet_jax.tasks.dense import validate_common
from lsnet_jax.data.detection import (DetTestTransform, DetTrainTransform, Subset, ground_truth, shape_groups,
                                      train_indices)
from lsnet_jax.inference.detection_eval import evaluate_detector
from lsnet_jax.inference.detection import TestConfig
from lsnet_jax.train import det_steps, maskrcnn_steps
from lsnet_jax.train import workdir as workdirs
from lsnet_jax.train.checks import ConfigError, check_head
from lsnet_jax.train.config import architecture
from lsnet_jax.train.loop import Cadence, Init, LoopStats
from lsnet_jax.train.reporting import Panel
from lsnet_jax.train.seg_steps import init_state


def make_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    if config.lr_schedule == "step":
        return det_steps.step_schedule(config.lr, steps_per_epoch, tuple(config.milestones), 0.1,
                                       config.warmup_iters, config.warmup_ratio)
    return det_steps.cosine_warmup_schedule(config.lr, config.epochs * steps_per_epoch, config.warmup_iters,
                                            config.warmup_ratio, config.min_lr_ratio)


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Stop before any work on settings that cannot run, saying what to change."""
    for key in ("epochs", "eval_every_epochs", "batch_size", "eval_batch_size", "warmup_iters", "max_boxes"):
        value = config.aug[key] if key == "max_boxes" else config[key]
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"config.{'aug.' if key == 'max_boxes' else ''}{key}={value!r} must be a positive integer")
    if not config.model.endswith(("_retinanet", "_maskrcnn")):
        raise ConfigError(f"config.model={config.model!r}: detection needs a detector, e.g. lsnet_t_retinanet or "
                          "lsnet_t_maskrcnn")
    validate_common(config, num_devices)  # first: the per-device batch below needs the batch to divide
    if config.group_size < 1 or (config.batch_size // num_devices) % config.group_size:
        raise ConfigError(f"config.group_size={config.group_size} must divide the per-device batch "
                          f"({config.batch_size // num_devices}): each group of images has its own loss normaliser")
    if config.lr_schedule not in ("step", "cosine"):
        raise ConfigError(f"config.lr_schedule={config.lr_schedule!r}; use 'step' (official) or 'cosine'")
    for key in ("pad_shapes", "test_pad_shapes"):
        shapes = config.aug[key]
        if not all(len(s) == 2 and all(isinstance(v, int) and v > 0 and v % 32 == 0 for v in s) for s in shapes):
            raise ConfigError(f"config.aug.{key}={shapes!r}: (H, W) pairs with sides positive multiples of 32")


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> nnx.Module:
    """The detector (from ``init_weights``, or its backbone from ``backbone_weights``), eval mode."""
    return dense.build_model(config, num_classes)


class Detection:
    """The detection task of the one loop (``lsnet_jax.train.loop.Task``)."""

    best_metric = None  # mmdet keeps no best checkpoint by default
    step_metrics = ("loss_cls", "loss_bbox")  # steps.jsonl and the log rows: the official log's train keys
    curves = (Panel("box AP", "log", "epoch", "epoch", (("bbox_mAP", "AP", "o-"), ("bbox_mAP_50", "AP50", "s-"))),
              Panel("losses", "steps", "step", "iteration", (("loss_cls", "loss_cls", "-"),
                                                            ("loss_bbox", "loss_bbox", "-"))),
              Panel("lr", "steps", "step", "iteration", (("lr", None, "-"),)))

    def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh):
        validate_config(config, mesh.size)
        self.config, self.mesh = config, mesh
        self.masks = config.model.endswith("_maskrcnn")
        if self.masks:
            self.step_metrics = maskrcnn_steps.LOG_KEYS
            self.curves = (
                Panel("AP", "log", "epoch", "epoch", (("bbox_mAP", "box AP", "o-"), ("segm_mAP", "mask AP", "s-"))),
                Panel("losses", "steps", "step", "iteration", tuple((k, k, "-") for k in maskrcnn_steps.LOG_KEYS
                                                                    if k != "acc")),
                Panel("lr", "steps", "step", "iteration", (("lr", None, "-"),)))
        d, a = config.data, config.aug
        src, info, self.categories = source.open_det_source(d.name, d.train_split, d.data_dir)
        self.esrc, self.einfo, _ = source.open_det_source(d.name, d.eval_split, d.data_dir)
        if d.max_eval_examples:
            self.esrc = Subset(self.esrc, range(min(d.max_eval_examples, len(self.esrc))))
        self.info = info
        self.num_classes = config.num_classes or info.num_classes
        check_head(self.num_classes, info.num_classes, f"{d.name}/{d.train_split}")
        kept, sizes = train_indices(src, a.min_size)
        if d.max_train_examples:
            kept, sizes = kept[:d.max_train_examples], sizes[:d.max_train_examples]
        self.src = Subset(src, kept)
        n = len(self.src)
        pad_shapes = tuple(tuple(s) for s in a.pad_shapes)
        try:
            groups, self.train_shapes = shape_groups(sizes, tuple(a.scale), pad_shapes)
        except ValueError as e:
            raise ConfigError(f"config.aug.pad_shapes: {e}") from None
        self.fingerprint = workdirs.fingerprint(
            "detection", config.model, self.num_classes, _largest_side(a.pad_shapes, a.scale), d.name, d.train_split,
            architecture(config), data_version=info.version, data_examples=n, batch_size=config.batch_size,
            seed=config.seed, pad_shapes=[list(s) for s in pad_shapes])
        tf = DetTrainTransform(tuple(a.scale), a.flip, pad_shapes, a.max_boxes, with_masks=self.masks)
        info_n = source.SourceInfo(n, info.num_classes)
        total = config.epochs * group_steps(groups, config.batch_size)
        self.loader = pipeline.seg_train_loader(self.src, info_n, tf, config.batch_size, config.seed, total,
                                                workers=d.workers, threads=d.threads, prefetch=d.prefetch,
                                                groups=groups)
        self.test_tf = DetTestTransform(tuple(a.test_scale), tuple(tuple(s) for s in a.test_pad_shapes))
        self.cadence = Cadence(total_steps=total, steps_per_epoch=self.loader.steps_per_epoch,
                               period=self.loader.steps_per_epoch, eval_every=config.eval_every_epochs)
        self.global_batch = config.batch_size
        self.schedule = make_schedule(config, self.loader.steps_per_epoch)
        self.tx = det_steps.make_optimizer(self.schedule, config.weight_decay, tuple(config.opt_betas),
                                           config.opt_eps)
        self._gt = None

    def train_iterator(self) -> Iterator[dict]:
        return self.loader.iterator()

    def init(self) -> Init:
        config = self.config
        model = build_model(config, self.num_classes)
        self.n_parameters = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
        state, graphdef, eval_graphdef = init_state(model, self.tx, config.seed)
        del model
        mean, std = tuple(config.aug.mean), tuple(config.aug.std)
        t = config.test
        if self.masks:
            from lsnet_jax.inference.maskrcnn import RCNNConfig, RPNConfig

            rpn_cfg = RPNConfig(t.rpn_nms_pre, t.rpn_max_per_img, t.rpn_iou_threshold)
            rcnn_cfg = RCNNConfig(t.score_thr, t.iou_threshold, t.max_per_img)
            self._eval_fn = jax.jit(functools.partial(maskrcnn_steps.maskrcnn_eval_outputs, graphdef=eval_graphdef,
                                                      mean=mean, std=std, rpn_cfg=rpn_cfg, rcnn_cfg=rcnn_cfg))
            tr = config.train_cfg
            cfg = maskrcnn_steps.MaskRCNNTrainConfig(
                rpn_num=tr.rpn_num, proposals=RPNConfig(tr.proposal_nms_pre, tr.proposal_max_per_img, 0.7),
                rcnn_num=tr.rcnn_num, group_size=config.group_size)
            step = functools.partial(_mask_step, graphdef=graphdef, tx=self.tx, mean=mean, std=std, cfg=cfg)
            return Init(state, None, step)
        test_cfg = TestConfig(t.score_thr, t.nms_pre, t.iou_threshold, t.max_per_img)
        self._eval_fn = jax.jit(functools.partial(det_steps.det_eval_outputs, graphdef=eval_graphdef, mean=mean,
                                                  std=std, test_cfg=test_cfg))
        step = functools.partial(_step, graphdef=graphdef, tx=self.tx, mean=mean, std=std,
                                 num_classes=self.num_classes,
                                 loss_cfg=det_steps.LossConfig(group_size=config.group_size))
        return Init(state, None, step)

    def lr(self, steps: np.ndarray) -> np.ndarray:
        return self.schedule(steps)

    def evaluate(self, state) -> dict[str, Any]:
        local = jax.local_devices()[0]
        p, s = jax.device_put((state.params, state.batch_stats), local)
        if self._gt is None:
            self._gt = ground_truth(self.esrc, self.categories)
        return evaluate_detector(lambda b: self._eval_fn(p, s, jax.device_put(b, local)), self.esrc, self.categories,
                                 self.test_tf, self.config.eval_batch_size, self._gt, self.config.data.threads,
                                 progress_every=1000)

    def row(self, done: int, stats: LoopStats, ev: dict[str, Any]) -> dict[str, Any]:
        epoch = done // self.loader.steps_per_epoch
        keys = [f"{t}_{k}" for t in (("bbox", "segm") if self.masks else ("bbox",))
                for k in ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l", "mAP_copypaste")]
        return {"mode": "val", "epoch": epoch, "iter": done, "step": done, **{k: ev[k] for k in keys},
                **{k: stats.mean(k) for k in (*self.step_metrics, "loss")},
                "lr": float(self.schedule(done - 1)), "n_parameters": self.n_parameters,
                "train_skipped": stats.skipped, "eval_skipped": ev["skipped"], "detections": ev["detections"],
                "stats": ev["stats"]}

    def train_row(self, step: int, last: list[dict]) -> dict[str, Any] | None:
        """MMDetection's train row every ``log_every_steps`` iterations of an epoch (``iter``: the
        iteration within the epoch, ``epoch`` 1-based), means over the last ``log_every_steps``."""
        epoch, inner = divmod(step - 1, self.loader.steps_per_epoch)
        if (inner + 1) % self.config.log_every_steps:
            return None
        return {"mode": "train", "epoch": epoch + 1, "iter": inner + 1, "step": step, "lr": last[-1]["lr"],
                **{k: float(np.mean([r[k] for r in last])) for k in (*self.step_metrics, "loss")}}

    def summary(self, row: dict[str, Any]) -> str:
        masks = (f"; mask AP {100 * row['segm_mAP']:.1f} AP50 {100 * row['segm_mAP_50']:.1f} "
                 f"AP75 {100 * row['segm_mAP_75']:.1f}") if self.masks else ""
        return (f"epoch {row['epoch']} (iteration {row['iter']}): box AP {100 * row['bbox_mAP']:.1f} "
                f"AP50 {100 * row['bbox_mAP_50']:.1f} AP75 {100 * row['bbox_mAP_75']:.1f}{masks}")

    def best_state(self, state) -> Any:
        return {"params": state.params, "batch_stats": state.batch_stats}

    def where(self, done: int) -> str:
        return f"epoch {done // self.loader.steps_per_epoch} (iteration {done}/{self.cadence.total_steps})"

    def run_info(self) -> dict[str, Any]:
        c = self.config
        return {"model": c.model, "task": "detection", "num_classes": self.num_classes,
                "img_size": _largest_side(c.aug.pad_shapes, c.aug.scale), "n_parameters": self.n_parameters,
                "class_names": list(self.info.class_names)[:self.num_classes], "config": c.to_dict(),
                **({"model_config": architecture(c)} if architecture(c) else {})}

    def describe(self) -> str:
        c = self.config
        return (f"{c.model}: {self.n_parameters} parameters, {self.num_classes} classes, {len(self.src)} train / "
                f"{len(self.esrc)} eval images, {self.cadence.total_steps} iterations "
                f"({c.epochs} epochs), lr {c.lr:.3g}, {len(self.train_shapes)} train shapes "
                f"{self.train_shapes} (one program each)")


def _largest_side(pad_shapes, scale) -> int:
    """The run's ``img_size`` (informative for a detector): the largest padded side it trains at
    (with no ``pad_shapes``, each image at its own 32-multiple: the scale's long side's)."""
    return int(max((max(s) for s in pad_shapes), default=-(-max(scale) // 32) * 32))


def _mask_step(state, batch: dict, constants: None, **kw):
    """``maskrcnn_train_step`` in the loop's signature (no constants)."""
    del constants
    return maskrcnn_steps.maskrcnn_train_step(state, batch, **kw)


def _step(state, batch: dict, constants: None, **kw):
    """``det_train_step`` in the loop's signature (no constants)."""
    del constants
    return det_steps.det_train_step(state, batch, **kw)
