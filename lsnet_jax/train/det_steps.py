"""RetinaNet's training targets and losses as MMDetection 2.28.2 computes them
(``DETECTION_SPEC.md``, "Training targets and losses"), with static shapes: ground-truth boxes
padded to a fixed count with a mask, anchors of the whole padded batch with per-image valid flags.

- ``assign``: MaxIoUAssigner (pos 0.5, neg 0.4, min_pos_iou 0, gt_max_assign_all, low-quality
  matches) over each image's valid anchors; IoU without +1, union clamped to 1e-6.
- ``retina_targets``: no sampling; positives take their gt's class and encoded box, negatives the
  background, the rest (0.4 <= IoU < 0.5, invalid anchors) weight 0.
- ``retina_loss``: sigmoid focal loss (alpha 0.25, gamma 2) over every (anchor, class) pair and L1
  over the positives' deltas, each summed and divided by ``avg_factor + eps``, where
  ``avg_factor`` is the sum over a group's images of ``max(#positives, 1)``; a group is what one
  official GPU held (2 images), and the loss is the mean over groups (DDP averages the GPUs).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lsnet_jax.inference.detection import AnchorConfig, TestConfig, batch_images, detect_batch, encode, level_anchors
from lsnet_jax.train.seg_steps import SegTrainState as DetTrainState  # the same fields

Array = jax.Array
EPS = float(np.finfo(np.float32).eps)  # MMDetection adds float32 eps to every avg_factor


@dataclasses.dataclass(frozen=True)
class AssignerConfig:
    pos_iou_thr: float = 0.5
    neg_iou_thr: float = 0.4
    min_pos_iou: float = 0.0


@dataclasses.dataclass(frozen=True)
class LossConfig:
    alpha: float = 0.25
    gamma: float = 2.0
    group_size: int = 2  # images per official GPU: each group's avg_factor is its own


def bbox_overlaps(a: Array, b: Array) -> Array:
    """IoU ``(N, M)`` as mmdet's ``bbox_overlaps`` (mode 'iou', no +1, union clamped to 1e-6)."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = jnp.maximum(a[:, None, :2], b[None, :, :2])
    rb = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = jnp.maximum(rb - lt, 0)
    inter = wh[..., 0] * wh[..., 1]
    union = jnp.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-6)
    return inter / union


def assign(anchors: Array, anchor_valid: Array, gt_boxes: Array, gt_valid: Array,
           cfg: AssignerConfig = AssignerConfig()) -> Array:
    """MaxIoUAssigner on one image: per anchor -1 (ignored), 0 (negative) or i + 1 (positive for
    gt i). Invalid anchors are left out as mmdet leaves them out (only valid ones reach it) and come
    out ignored; padded gts never match. With no gt every valid anchor is negative."""
    iou = bbox_overlaps(gt_boxes, anchors)  # (G, A)
    iou = jnp.where(gt_valid[:, None] & anchor_valid[None, :], iou, -1.0)
    any_gt = jnp.any(gt_valid)
    max_iou = jnp.where(any_gt, jnp.max(iou, axis=0), 0.0)
    argmax = jnp.argmax(iou, axis=0)  # the first gt on ties
    out = jnp.full(anchors.shape[0], -1, jnp.int32)
    out = jnp.where((max_iou >= 0) & (max_iou < cfg.neg_iou_thr), 0, out)
    out = jnp.where(any_gt & (max_iou >= cfg.pos_iou_thr), argmax + 1, out)
    # low-quality matches: for each gt in order, every anchor whose IoU equals that gt's maximum
    # (ties included); a later gt overwrites an earlier one: the last such gt wins
    gt_max = jnp.max(iou, axis=1)  # (G,), over valid anchors
    hit = (iou == gt_max[:, None]) & (gt_max[:, None] >= cfg.min_pos_iou) & gt_valid[:, None] & anchor_valid[None, :]
    g = gt_boxes.shape[0]
    last = g - 1 - jnp.argmax(hit[::-1], axis=0)
    out = jnp.where(jnp.any(hit, axis=0), last + 1, out)
    return jnp.where(anchor_valid, out, -1)


def anchor_valid_flags(level_shapes: list[tuple[int, int]], strides: tuple[int, ...], pad_shape: Array,
                       num_anchors: int = 9) -> Array:
    """Per anchor of the batch's padded levels, whether it lies in this image's own padded size
    ``pad_shape`` (h, w): ``y < ceil(pad_h / stride)`` and ``x < ceil(pad_w / stride)`` (A anchors
    per location, the (y, x, a) order)."""
    flags = []
    for (h, w), s in zip(level_shapes, strides):
        vh = jnp.ceil(pad_shape[0] / s)
        vw = jnp.ceil(pad_shape[1] / s)
        ok = (jnp.arange(h)[:, None] < vh) & (jnp.arange(w)[None, :] < vw)
        flags.append(jnp.repeat(ok.reshape(-1), num_anchors))
    return jnp.concatenate(flags)


def retina_targets(anchors: Array, anchor_valid: Array, gt_boxes: Array, gt_labels: Array, gt_valid: Array,
                   num_classes: int, cfg: AssignerConfig = AssignerConfig()) -> dict[str, Array]:
    """One image's targets: ``labels`` (A,) (the class, ``num_classes`` for background),
    ``label_weights`` (A,), ``bbox_targets`` (A, 4) encoded deltas, ``bbox_weights`` (A,) and
    ``num_pos``."""
    assigned = assign(anchors, anchor_valid, gt_boxes, gt_valid, cfg)
    pos = assigned > 0
    gt = jnp.maximum(assigned - 1, 0)
    labels = jnp.where(pos, gt_labels[gt], num_classes)
    matched = gt_boxes[gt]
    safe = jnp.where(pos[:, None], matched, anchors)  # no log of a padded zero box
    targets = jnp.where(pos[:, None], encode(anchors, safe), 0.0)
    return dict(labels=labels.astype(jnp.int32), label_weights=(assigned >= 0).astype(jnp.float32),
                bbox_targets=targets, bbox_weights=pos.astype(jnp.float32), num_pos=jnp.sum(pos))


def sigmoid_focal_loss(logits: Array, labels: Array, weights: Array, num_classes: int, alpha: float = 0.25,
                       gamma: float = 2.0) -> Array:
    """mmdet's ``py_sigmoid_focal_loss`` summed: ``logits`` (A, C), ``labels`` (A,) (``num_classes``
    = background, all-zero one-hot), per-anchor ``weights``."""
    t = jax.nn.one_hot(labels, num_classes + 1, dtype=logits.dtype)[:, :num_classes]
    p = jax.nn.sigmoid(logits)
    pt = (1 - p) * t + p * (1 - t)
    w = (alpha * t + (1 - alpha) * (1 - t)) * pt ** gamma
    bce = jnp.maximum(logits, 0) - logits * t + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    return jnp.sum(bce * w * weights[:, None])


def flatten_levels(levels: tuple[Array, ...], per_anchor: int) -> Array:
    """Per-level NHWC outputs ``(N, H, W, A * k)`` -> ``(N, sum H*W*A, k)`` in (level, y, x, a) order."""
    n = levels[0].shape[0]
    return jnp.concatenate([x.reshape(n, -1, per_anchor) for x in levels], axis=1)


def batch_anchors(level_shapes: list[tuple[int, int]], cfg: AnchorConfig = AnchorConfig()) -> np.ndarray:
    """The padded batch's anchors, levels concatenated (stride 8 first)."""
    return np.concatenate([level_anchors(h, w, s, cfg) for (h, w), s in zip(level_shapes, cfg.strides)])


def retina_loss(cls_scores: tuple[Array, ...], bbox_preds: tuple[Array, ...], batch: dict[str, Array],
                num_classes: int, cfg: LossConfig = LossConfig(),
                assigner: AssignerConfig = AssignerConfig()) -> dict[str, Array]:
    """``loss_cls``, ``loss_bbox`` (means over groups of ``cfg.group_size`` images of each group's
    sums over ``avg_factor + eps``), ``loss`` and ``num_pos``. ``batch``: ``boxes (N, M, 4)`` in
    the padded image's pixels, ``labels (N, M)``, ``box_valid (N, M)``, ``pad_shape (N, 2)``."""
    shapes = [tuple(x.shape[1:3]) for x in cls_scores]
    anchors = jnp.asarray(batch_anchors(shapes))
    cls = flatten_levels(cls_scores, num_classes).astype(jnp.float32)
    reg = flatten_levels(bbox_preds, 4).astype(jnp.float32)

    def one(cls_i, reg_i, boxes, labels, valid, pad_shape):
        flags = anchor_valid_flags(shapes, AnchorConfig().strides, pad_shape)
        t = retina_targets(anchors, flags, boxes, labels, valid, num_classes, assigner)
        lc = sigmoid_focal_loss(cls_i, t["labels"], t["label_weights"], num_classes, cfg.alpha, cfg.gamma)
        lb = jnp.sum(jnp.abs(reg_i - t["bbox_targets"]) * t["bbox_weights"][:, None])
        return lc, lb, t["num_pos"]

    lc, lb, num_pos = jax.vmap(one)(cls, reg, batch["boxes"].astype(jnp.float32), batch["labels"],
                                    batch["box_valid"], batch["pad_shape"].astype(jnp.float32))
    n = lc.shape[0]
    if cfg.group_size and n % cfg.group_size:
        raise ValueError(f"a batch of {n} images does not split into groups of {cfg.group_size}")
    g = cfg.group_size or n
    avg = jnp.maximum(num_pos, 1).astype(jnp.float32).reshape(-1, g).sum(1) + EPS
    loss_cls = jnp.mean(lc.reshape(-1, g).sum(1) / avg)
    loss_bbox = jnp.mean(lb.reshape(-1, g).sum(1) / avg)
    return dict(loss_cls=loss_cls, loss_bbox=loss_bbox, loss=loss_cls + loss_bbox, num_pos=jnp.sum(num_pos))


# ----- the optimisation step, schedules and optimizer -----


def step_schedule(lr: float, steps_per_epoch: int, milestones: tuple[int, ...], gamma: float = 0.1,
                  warmup: int = 500, warmup_ratio: float = 0.001) -> optax.Schedule:
    """mmcv's step policy by epoch (``lr * gamma ** (number of milestones <= epoch)``, 0-based
    epochs) with linear warm-up over the first ``warmup`` iterations:
    ``lr_epoch * (1 - (1 - i / warmup) * (1 - warmup_ratio))``."""
    bounds = jnp.asarray(milestones, jnp.int32)

    def schedule(it):
        it = jnp.asarray(it, jnp.int32)
        epoch = it // steps_per_epoch
        base = lr * gamma ** jnp.sum(epoch >= bounds).astype(jnp.float32)
        k = 1 - (1 - it.astype(jnp.float32) / warmup) * (1 - warmup_ratio)
        return jnp.where(it < warmup, base * k, base)
    return schedule


def cosine_warmup_schedule(lr: float, total: int, warmup: int = 100, warmup_ratio: float = 0.001,
                           min_ratio: float = 0.01) -> optax.Schedule:
    """The digit scenes' per-iteration schedule (DETECTION_SPEC.md, small default): linear warm-up
    from ``warmup_ratio * lr`` over ``warmup`` iterations, then cosine to ``min_ratio * lr`` at the
    last iteration."""
    def schedule(it):
        it = jnp.asarray(it, jnp.float32)
        warm = lr * (1 - (1 - it / warmup) * (1 - warmup_ratio))
        frac = jnp.clip((it - warmup) / max(total - 1 - warmup, 1), 0.0, 1.0)
        cos = lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + jnp.cos(jnp.pi * frac)))
        return jnp.where(it < warmup, warm, cos)
    return schedule


def decay_mask(params: dict) -> dict:
    """AdamW's weight decay on every parameter but the ``attention_biases`` (the official
    paramwise ``custom_keys``; biases and norm weights decay too)."""
    def walk(tree, name=""):
        if isinstance(tree, dict):
            return {k: walk(v, str(k)) for k, v in tree.items()}
        return name != "attention_biases"
    return walk(params)


def make_optimizer(schedule: optax.Schedule, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8
                   ) -> optax.GradientTransformation:
    """PyTorch's AdamW (decoupled decay ``p -= lr * wd * p``), no gradient clipping."""
    return optax.adamw(schedule, betas[0], betas[1], eps, weight_decay=weight_decay, mask=decay_mask)


def det_train_step(state: DetTrainState, batch: dict[str, Array], *, graphdef: nnx.GraphDef,
                   tx: optax.GradientTransformation, mean: tuple[float, ...], std: tuple[float, ...],
                   num_classes: int, loss_cfg: LossConfig = LossConfig()) -> tuple[DetTrainState, dict[str, Array]]:
    """One step: normalise (0 outside each resized image, as mmdet pads the normalised image),
    forward in training mode (the backbone's BatchNorms frozen), RetinaNet's losses, AdamW."""
    images = batch_images(batch, mean, std)

    def loss_fn(params):
        model = nnx.merge(graphdef, params, state.batch_stats)
        cls, reg = model(images)
        out = retina_loss(cls, reg, batch, num_classes, loss_cfg)
        return out["loss"], (out, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))

    (_, (out, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # frozen backbone BatchNorms (the official recipe) leave their statistics as they were
    new = state.replace(step=state.step + 1, params=params, batch_stats=stats, opt_state=opt_state)
    return new, {k: out[k] for k in ("loss", "loss_cls", "loss_bbox", "num_pos")}


def det_eval_outputs(params: dict, batch_stats: dict, batch: dict[str, Array], *, graphdef: nnx.GraphDef,
                     mean: tuple[float, ...], std: tuple[float, ...], test_cfg: Any = None):
    """The official inference on a padded eval batch (``inference.detection.detect_batch``)."""
    return detect_batch(nnx.merge(graphdef, params, batch_stats), batch, mean, std, test_cfg or TestConfig())
