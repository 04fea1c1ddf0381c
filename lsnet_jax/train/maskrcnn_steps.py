"""Mask R-CNN's training targets, samplers and losses as MMDetection 2.28.2 computes them
(``DETECTION_SPEC.md``, "Mask R-CNN"), with static shapes: gts padded to ``M`` with a mask, the
batch's anchors with per-image valid flags, a fixed number of proposals and of sampled RoIs, each
with a valid mask.

- RPN: MaxIoUAssigner (0.7 / 0.3, min_pos_iou 0.3, low-quality matches) over the valid anchors;
  RandomSampler 256 (up to 128 positives, the rest negatives); BCE over the sampled anchors and L1
  over the positives' deltas, both divided by ``sum over the group's images of (max(#pos, 1) +
  max(#neg, 1)) + eps``.
- Proposals: ``inference.maskrcnn.rpn_proposals`` with ``nms_pre=2000``, ``max_per_img=1000`` on
  the RPN outputs without gradient.
- RoI head: MaxIoUAssigner (0.5 / 0.5, min_pos_iou 0.5) over the proposals, then the gts prepended
  as proposals assigned to themselves; RandomSampler 512 (up to 128 positives); RoIs ordered
  positives first, then negatives, each by index (MMDetection's ``unique``). Softmax CE over the
  sampled RoIs / (#sampled + eps), L1 of the positives' class deltas (stds 0.1, 0.1, 0.2, 0.2) / (the
  same count + eps), ``acc`` the top-1 accuracy in percent.
- Mask head on the positive RoIs: targets RoIAligned (scale 1, 28x28, aligned, adaptive sampling)
  from each positive's gt mask over its proposal clipped to the padded mask, binarised at 0.5, by
  the dense separable form (``mask_targets``: exact for any RoI size); mean BCE of the gt class's
  logits over the positives' pixels.

Each loss is computed per group of ``group_size`` images (what one official GPU held: 2) and the
losses are the means over groups, as DDP averages the GPUs' gradients.

Samplers draw with a JAX key (uniform without replacement: the ``k`` smallest of uniform keys), or
with ``key=None`` take the FIRST ``k`` candidates in index order (the deterministic mode the tests
compare with a reference).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lsnet_jax.inference.detection import batch_images, encode
from lsnet_jax.inference.maskrcnn import BBOX_STDS, RPN_ANCHORS, RCNNConfig, RPNConfig, detect_batch, rpn_proposals
from lsnet_jax.kernels.roi_align import _axis_samples, _roi_geometry
from lsnet_jax.train.det_steps import EPS, AssignerConfig, anchor_valid_flags, assign, batch_anchors

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class MaskRCNNTrainConfig:
    """``train_cfg`` of the official config (and the group size: images per official GPU)."""

    rpn_assigner: AssignerConfig = AssignerConfig(0.7, 0.3, 0.3)
    rpn_num: int = 256
    rpn_pos_fraction: float = 0.5
    proposals: RPNConfig = RPNConfig(nms_pre=2000, max_per_img=1000)
    rcnn_assigner: AssignerConfig = AssignerConfig(0.5, 0.5, 0.5)
    rcnn_num: int = 512
    rcnn_pos_fraction: float = 0.25
    mask_size: int = 28
    group_size: int = 2


def first_k(mask: Array, k: int, key: Array | None, count: Array | None = None) -> tuple[Array, Array]:
    """Up to ``count`` (default ``k``; at most ``k``) indices of ``mask``'s True entries: all of
    them if there are no more, else as many drawn uniformly without replacement (the smallest of
    uniform ``key`` draws) or, with ``key=None``, the first ones. Returns ``(indices (k,), valid
    (k,))`` in index order (MMDetection's ``unique()``), the valid ones first."""
    n = mask.shape[0]
    order = jnp.arange(n, dtype=jnp.float32) / n if key is None else jax.random.uniform(key, (n,))
    pick = jnp.where(mask, order, 2.0)  # candidates below 1, the rest at 2
    k = min(k, n)
    vals, idx = jax.lax.top_k(-pick, k)  # by ascending draw
    valid = -vals < 2.0
    if count is not None:
        valid &= jnp.arange(k) < count
    idx = jnp.sort(jnp.where(valid, idx, n))
    return jnp.minimum(idx, n - 1), jnp.arange(k) < jnp.sum(valid)


def sample(assigned: Array, num: int, pos_fraction: float, key: Array | None) -> dict[str, Array]:
    """RandomSampler on one image's assignment (-1 ignored, 0 negative, i + 1 gt i): up to
    ``num * pos_fraction`` positives, then ``num - #pos`` negatives. ``slots (num,)`` hold the
    positives first, then the negatives, each in index order, ``slot_valid`` which are filled,
    ``slot_pos`` which hold positives, ``num_pos`` / ``num_neg``; ``pos (num * pos_fraction,)`` the
    positives alone (``pos_valid``)."""
    max_pos = int(num * pos_fraction)
    kp, kn = (None, None) if key is None else jax.random.split(key)
    pos, pos_ok = first_k(assigned > 0, max_pos, kp)
    npos = jnp.sum(pos_ok)
    neg, neg_ok = first_k(assigned == 0, num, kn, num - npos)
    nneg = jnp.sum(neg_ok)
    j = jnp.arange(num)
    slots = jnp.where(j < npos, pos[jnp.minimum(j, max_pos - 1)], neg[jnp.clip(j - npos, 0, neg.shape[0] - 1)])
    return dict(slots=slots, slot_valid=j < npos + nneg, slot_pos=j < npos, num_pos=npos, num_neg=nneg,
                pos=pos, pos_valid=pos_ok)


def group_mean(per_image: Array, group: int) -> Array:
    """``(N, ...)`` -> the sums over each group of ``group`` images, ``(N / group, ...)``."""
    return per_image.reshape(-1, group, *per_image.shape[1:]).sum(1)


def _bce(logits: Array, target: Array) -> Array:
    return jnp.maximum(logits, 0) - logits * target + jnp.log1p(jnp.exp(-jnp.abs(logits)))


# ----- the RPN -----

def rpn_loss(rpn_cls: tuple[Array, ...], rpn_reg: tuple[Array, ...], batch: dict[str, Array], keys: Array | None,
             cfg: MaskRCNNTrainConfig = MaskRCNNTrainConfig()) -> dict[str, Array]:
    """``loss_rpn_cls`` and ``loss_rpn_bbox`` (means over groups). ``batch``: ``boxes (N, M, 4)`` in
    the padded image's pixels, ``box_valid (N, M)``, ``pad_shape (N, 2)``; ``keys (N,)`` one
    sampler key per image, or None (the first candidates)."""
    shapes = [tuple(x.shape[1:3]) for x in rpn_cls]
    anchors = jnp.asarray(batch_anchors(shapes, RPN_ANCHORS))
    n = rpn_cls[0].shape[0]
    cls = jnp.concatenate([x.reshape(n, -1) for x in rpn_cls], 1).astype(jnp.float32)
    reg = jnp.concatenate([x.reshape(n, -1, 4) for x in rpn_reg], 1).astype(jnp.float32)

    def one(cls_i, reg_i, boxes, valid, pad_shape, key):
        flags = anchor_valid_flags(shapes, RPN_ANCHORS.strides, pad_shape, RPN_ANCHORS.num_anchors)
        assigned = assign(anchors, flags, boxes, valid, cfg.rpn_assigner)
        s = sample(assigned, cfg.rpn_num, cfg.rpn_pos_fraction, key)
        idx, ok, is_pos = s["slots"], s["slot_valid"], s["slot_pos"]
        lc = jnp.sum(jnp.where(ok, _bce(cls_i[idx], is_pos.astype(jnp.float32)), 0.0))
        gt = boxes[jnp.maximum(assigned[idx] - 1, 0)]
        a = anchors[idx]
        target = encode(a, jnp.where(is_pos[:, None], gt, a))
        lb = jnp.sum(jnp.where(is_pos[:, None], jnp.abs(reg_i[idx] - target), 0.0))
        avg = jnp.maximum(s["num_pos"], 1) + jnp.maximum(s["num_neg"], 1)
        return lc, lb, avg.astype(jnp.float32)

    args = (cls, reg, batch["boxes"].astype(jnp.float32), batch["box_valid"], batch["pad_shape"].astype(jnp.float32))
    if keys is None:
        lc, lb, avg = jax.vmap(lambda *a: one(*a, None))(*args)
    else:
        lc, lb, avg = jax.vmap(one)(*args, keys)
    g = cfg.group_size
    avg = group_mean(avg, g) + EPS
    return dict(loss_rpn_cls=jnp.mean(group_mean(lc, g) / avg), loss_rpn_bbox=jnp.mean(group_mean(lb, g) / avg))


# ----- the RoI head -----

def rcnn_samples(proposals: Array, proposal_valid: Array, boxes: Array, labels: Array, valid: Array,
                 key: Array | None, num_classes: int, cfg: MaskRCNNTrainConfig = MaskRCNNTrainConfig()
                 ) -> dict[str, Array]:
    """One image's sampled RoIs: the proposals assigned to the gts, the gts prepended (assigned to
    themselves), RandomSampler 512. Returns ``rois (512, 4)``, ``valid``, ``pos`` (slot is a
    positive), ``labels`` (gt class or ``num_classes``), ``targets (512, 4)`` encoded deltas,
    ``gt_index`` (the positive's gt), and the positives alone: ``pos_rois``, ``pos_valid``,
    ``pos_gt``, ``pos_labels`` (``cfg.rcnn_num * pos_fraction`` slots)."""
    m = boxes.shape[0]
    assigned = assign(proposals, proposal_valid, boxes, valid, cfg.rcnn_assigner)
    cand = jnp.concatenate([boxes, proposals])
    assigned = jnp.concatenate([jnp.where(valid, jnp.arange(1, m + 1), -1), assigned])
    s = sample(assigned, cfg.rcnn_num, cfg.rcnn_pos_fraction, key)
    rois = cand[s["slots"]]
    gt = jnp.maximum(assigned[s["slots"]] - 1, 0)
    is_pos = s["slot_pos"]
    cls = jnp.where(is_pos, labels[gt], num_classes).astype(jnp.int32)
    targets = encode(rois, jnp.where(is_pos[:, None], boxes[gt], rois), BBOX_STDS)
    pos_gt = jnp.maximum(assigned[s["pos"]] - 1, 0)
    return dict(rois=rois, valid=s["slot_valid"], pos=is_pos, labels=cls, targets=jnp.where(is_pos[:, None], targets, 0.0),
                gt_index=gt, pos_rois=cand[s["pos"]], pos_valid=s["pos_valid"], pos_gt=pos_gt,
                pos_labels=labels[pos_gt].astype(jnp.int32), num=s["num_pos"] + s["num_neg"])


def bbox_loss(cls_score: Array, bbox_pred: Array, samples: dict[str, Array], num_classes: int, group: int
              ) -> dict[str, Array]:
    """``loss_cls``, ``loss_bbox`` and ``acc`` over sampled RoIs (``cls_score (N, R, C + 1)``,
    ``bbox_pred (N, R, 4 C)``), per group of images, means over groups."""
    logp = jax.nn.log_softmax(cls_score.astype(jnp.float32), -1)
    ok = samples["valid"]
    ce = -jnp.take_along_axis(logp, samples["labels"][..., None], -1)[..., 0]
    lc = jnp.sum(jnp.where(ok, ce, 0.0), -1)
    n, r = ok.shape
    deltas = bbox_pred.astype(jnp.float32).reshape(n, r, num_classes, 4)
    lab = jnp.minimum(samples["labels"], num_classes - 1)
    own = jnp.take_along_axis(deltas, lab[..., None, None], 2)[:, :, 0]
    lb = jnp.sum(jnp.where(samples["pos"][..., None], jnp.abs(own - samples["targets"]), 0.0), (1, 2))
    hits = jnp.sum(jnp.where(ok, jnp.argmax(cls_score, -1) == samples["labels"], False), -1)
    count = group_mean(jnp.sum(ok, -1).astype(jnp.float32), group)
    loss_cls = jnp.mean(group_mean(lc, group) / (jnp.maximum(count, 1.0) + EPS))
    loss_bbox = jnp.mean(group_mean(lb, group) / (count + EPS))
    acc = jnp.mean(100.0 * group_mean(hits.astype(jnp.float32), group) / jnp.maximum(count, 1.0))
    return dict(loss_cls=loss_cls, loss_bbox=loss_bbox, acc=acc)


def _dense_axis(start: Array, bin_size: Array, grid: Array, size: Array, length: int, out: int, samples: int
                ) -> Array:
    """``(out, length)``: each output bin's summed sample weights over every index of an axis of
    ``size <= length`` (the mask's own padded size inside the batch's)."""
    low, high, wl, wh = _axis_samples(start, bin_size, grid, size, out, samples)
    rows = jnp.broadcast_to(jnp.arange(out)[:, None], low.shape)
    m = jnp.zeros((out, length), jnp.float32)
    return m.at[rows, low].add(wl).at[rows, high].add(wh)


def mask_targets(masks: Array, rois: Array, gt_index: Array, pad_shape: Array, out: int = 28) -> Array:
    """One image's mask targets: for each RoI ``(R, 4)`` the mask of its gt (``masks (M, H, W)`` in
    the batch's shape; the image's own padded mask is its ``pad_shape`` top-left part) RoIAligned
    over the RoI clipped to that mask (scale 1, aligned, adaptive sampling, average) and binarised
    ``>= 0.5``: ``(R, out, out)`` float32. Dense separable form: ``Ay (out, H) @ mask @ Ax (out,
    W)^T`` with every sample of the bins summed into the two weight matrices, so any RoI size is
    exact; the cost is ``out * H * W`` per RoI."""
    h, w = masks.shape[1:]
    samples_h, samples_w = -(-h // out) + 1, -(-w // out) + 1
    ph, pw = pad_shape[0].astype(jnp.int32), pad_shape[1].astype(jnp.int32)
    lim = jnp.stack([pw, ph, pw, ph]).astype(jnp.float32)
    rois = jnp.clip(jax.lax.stop_gradient(rois), 0.0, lim)

    def one(roi, g):
        y1, x1, bh, bw, gh, gw = _roi_geometry(roi, jnp.float32(1.0), out)
        ay = _dense_axis(y1, bh, gh, ph, h, out, samples_h)
        ax = _dense_axis(x1, bw, gw, pw, w, out, samples_w)
        val = ay @ masks[g].astype(jnp.float32) @ ax.T / jnp.maximum(gh * gw, 1).astype(jnp.float32)
        return (val >= 0.5).astype(jnp.float32)

    return jax.lax.map(lambda a: one(*a), (rois, gt_index), batch_size=16)


def mask_loss(mask_logits: Array, targets: Array, labels: Array, valid: Array, group: int) -> Array:
    """Mean BCE of each positive's gt-class logits ``(N, P, 28, 28, C)`` against its targets over
    every valid positive's pixels, per group, mean over groups (0 for a group without positives)."""
    picked = jnp.take_along_axis(mask_logits.astype(jnp.float32), labels[:, :, None, None, None], -1)[..., 0]
    per = jnp.sum(jnp.where(valid[..., None, None], _bce(picked, targets), 0.0), (2, 3)).sum(-1)
    pixels = group_mean(jnp.sum(valid, -1).astype(jnp.float32), group) * targets.shape[-1] * targets.shape[-2]
    return jnp.mean(group_mean(per, group) / jnp.maximum(pixels, 1.0))


def maskrcnn_loss(model, images: Array, batch: dict[str, Array], key: Array | None,
                  cfg: MaskRCNNTrainConfig = MaskRCNNTrainConfig(),
                  proposals: tuple[Array, Array] | None = None) -> dict[str, Array]:
    """Every loss of one batch through ``model`` (in training mode): ``batch`` as ``rpn_loss`` plus
    ``labels (N, M)``, ``masks (N, M, H, W)`` (the padded image's), ``img_shape (N, 2)``. ``key``:
    the sampler's key for the batch, or None (the first candidates). ``proposals`` ``(boxes (N, P,
    4), valid (N, P))`` replaces the RPN's own (to check the RoI head's losses on given ones)."""
    n = images.shape[0]
    if n % cfg.group_size:
        raise ValueError(f"a batch of {n} images does not split into groups of {cfg.group_size}")
    num_classes = model.cfg.num_classes
    feats = model.features(images)
    rpn_cls, rpn_reg = model.rpn(feats)
    if key is None:
        rpn_keys = roi_keys = None
    else:
        k1, k2 = jax.random.split(key)
        rpn_keys, roi_keys = jax.random.split(k1, n), jax.random.split(k2, n)
    out = rpn_loss(rpn_cls, rpn_reg, batch, rpn_keys, cfg)
    if proposals is None:
        detached = jax.tree.map(jax.lax.stop_gradient, (rpn_cls, rpn_reg))
        props, _, pvalid = jax.vmap(functools.partial(rpn_proposals, cfg=cfg.proposals))(
            *detached, batch["img_shape"].astype(jnp.float32))
    else:
        props, pvalid = proposals
    props = jax.lax.stop_gradient(props)
    boxes = batch["boxes"].astype(jnp.float32)
    sampler = functools.partial(rcnn_samples, num_classes=num_classes, cfg=cfg)
    if roi_keys is None:
        s = jax.vmap(lambda p, pv, b, lab, v: sampler(p, pv, b, lab, v, None))(
            props, pvalid, boxes, batch["labels"], batch["box_valid"])
    else:
        s = jax.vmap(sampler)(props, pvalid, boxes, batch["labels"], batch["box_valid"], roi_keys)
    cls_score, bbox_pred = model.bbox_forward(feats, s["rois"])
    out |= bbox_loss(cls_score, bbox_pred, s, num_classes, cfg.group_size)
    targets = jax.vmap(functools.partial(mask_targets, out=cfg.mask_size))(batch["masks"], s["pos_rois"], s["pos_gt"],
                                                                            batch["pad_shape"])
    logits = model.mask_forward(feats, s["pos_rois"])
    out["loss_mask"] = mask_loss(logits, targets, s["pos_labels"], s["pos_valid"], cfg.group_size)
    out["loss"] = sum(out[k] for k in ("loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask"))
    out["num_pos"] = jnp.sum(s["pos_valid"])
    return out


LOG_KEYS = ("loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "acc", "loss_bbox", "loss_mask")  # the official log's


def maskrcnn_train_step(state, batch: dict[str, Array], *, graphdef, tx, mean: tuple[float, ...],
                        std: tuple[float, ...], cfg: MaskRCNNTrainConfig = MaskRCNNTrainConfig(),
                        deterministic: bool = False):
    """One step: normalise (0 outside each resized image), forward in training mode, every loss
    (the samplers keyed by the run's key and the step: a resumed run draws the same samples),
    AdamW. Returns the new state and the logged metrics."""
    images = batch_images(batch, mean, std)
    key = None if deterministic else jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
        model = nnx.merge(graphdef, params, state.batch_stats)
        out = maskrcnn_loss(model, images, batch, key, cfg)
        return out["loss"], (out, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))

    (_, (out, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new = state.replace(step=state.step + 1, params=params, batch_stats=stats, opt_state=opt_state)
    return new, {k: out[k] for k in LOG_KEYS + ("loss", "num_pos")}



def maskrcnn_eval_outputs(params: dict, batch_stats: dict, batch: dict[str, Array], *, graphdef, mean, std,
                          rpn_cfg: RPNConfig = RPNConfig(), rcnn_cfg=None):
    """The official inference on a padded eval batch (``inference.maskrcnn.detect_batch``)."""
    return detect_batch(nnx.merge(graphdef, params, batch_stats), batch, mean, std, rpn_cfg, rcnn_cfg or RCNNConfig())
