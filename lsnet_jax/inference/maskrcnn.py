"""Mask R-CNN's test-time cascade as MMDetection 2.28.2 runs it (``DETECTION_SPEC.md``, "Mask R-CNN",
"Inference"), in JAX with static shapes, one program per padded image size:

1. ``rpn_proposals``: per level the objectness ``sigmoid``, the top ``nms_pre`` anchors when a
   level has more, decoded (stds 1) and clamped to the resized image; the levels joined, boxes with
   ``w <= 0`` or ``h <= 0`` marked invalid, NMS at IoU 0.7 within each level (the level is the
   "class" of the offset trick), the first ``max_per_img``: a fixed ``(max_per_img, 4)`` with a
   ``valid`` mask.
2. The box head on the proposals; ``softmax`` over the 81 logits, class-specific deltas decoded
   (stds 0.1, 0.1, 0.2, 0.2), clamped, divided by ``scale_factor``.
3. ``multiclass_nms``: every (RoI, class) pair above ``score_thr`` of a valid proposal; class-aware
   NMS at IoU 0.5 over all of them (no cap on the candidates: at most 19 classes of a RoI can
   exceed 0.05, and NMS only walks ``max_per_img`` times), the first ``max_per_img``.
4. The mask head on the kept boxes (multiplied back to the network's input scale): each box's
   label channel, ``sigmoid``: ``(max_per_img, 28, 28)`` probabilities.

``MaskDetections.to_lists(ori_shapes)`` pastes each mask into its original image on the host
(``paste_masks``: ``grid_sample``'s bilinear with zero padding, written as two matrix products per
box over the box's region, as MMDetection does on a CPU) and thresholds it at 0.5.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from lsnet_jax.inference.detection import AnchorConfig, batch_images, batched_nms, decode, level_anchors

Array = jax.Array

RPN_ANCHORS = AnchorConfig(strides=(4, 8, 16, 32, 64), octave_base_scale=8.0, scales_per_octave=1,
                           ratios=(0.5, 1.0, 2.0))
BBOX_STDS = (0.1, 0.1, 0.2, 0.2)


@dataclasses.dataclass(frozen=True)
class RPNConfig:
    """``test_cfg.rpn`` (training: ``nms_pre=2000``, ``max_per_img=1000``: ``train_cfg.rpn_proposal``)."""

    nms_pre: int = 1000
    max_per_img: int = 1000
    iou_threshold: float = 0.7


@dataclasses.dataclass(frozen=True)
class RCNNConfig:
    """``test_cfg.rcnn``."""

    score_thr: float = 0.05
    iou_threshold: float = 0.5
    max_per_img: int = 100
    mask_thr_binary: float = 0.5


@dataclasses.dataclass(frozen=True)
class MaskDetections:
    """Per image, padded to ``max_per_img``: ``boxes (N, K, 4)`` in original-image pixels,
    ``scores``, ``labels``, ``valid`` as ``detection.Detections``, and ``mask_probs (N, K, 28, 28)``
    the label channel's probabilities in each box's frame."""

    boxes: Array
    scores: Array
    labels: Array
    valid: Array
    mask_probs: Array

    def to_lists(self, ori_shapes, mask_thr: float = 0.5) -> list[dict[str, np.ndarray]]:
        """One dict per image of numpy ``boxes (k, 4)``, ``scores``, ``labels`` and ``masks (k, H0, W0)``
        boolean at the image's original size ``ori_shapes[i] = (H0, W0)``."""
        arrays = [np.asarray(a) for a in (self.boxes, self.scores, self.labels, self.valid, self.mask_probs)]
        out = []
        for (b, s, lab, v, m), shape in zip(zip(*arrays), ori_shapes):
            out.append(dict(boxes=b[v], scores=s[v], labels=lab[v],
                            masks=paste_masks(m[v], b[v], (int(shape[0]), int(shape[1]))) >= mask_thr))
        return out


jax.tree_util.register_dataclass(MaskDetections, data_fields=["boxes", "scores", "labels", "valid", "mask_probs"],
                                 meta_fields=[])


def rpn_proposals(cls_levels: tuple[Array, ...], reg_levels: tuple[Array, ...], img_shape: Array,
                  cfg: RPNConfig = RPNConfig(), anchor_cfg: AnchorConfig = RPN_ANCHORS) -> tuple[Array, Array, Array]:
    """One image's proposals from its RPN outputs (per level ``(H, W, A)`` and ``(H, W, A * 4)``):
    ``(boxes (max_per_img, 4), scores, valid)``, kept ones first by descending score."""
    boxes, scores, ids = [], [], []
    for level, (cls, reg) in enumerate(zip(cls_levels, reg_levels)):
        h, w = cls.shape[:2]
        anchors = jnp.asarray(level_anchors(h, w, anchor_cfg.strides[level], anchor_cfg))
        s = jax.nn.sigmoid(cls.reshape(-1).astype(jnp.float32))
        deltas = reg.reshape(-1, 4).astype(jnp.float32)
        if s.shape[0] > cfg.nms_pre:
            s, idx = jax.lax.top_k(s, cfg.nms_pre)
            anchors, deltas = anchors[idx], deltas[idx]
        boxes.append(decode(anchors, deltas, img_shape))
        scores.append(s)
        ids.append(jnp.full(s.shape, level, jnp.int32))
    boxes, scores, ids = jnp.concatenate(boxes), jnp.concatenate(scores), jnp.concatenate(ids)
    valid = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)
    keep, ok = batched_nms(boxes, scores, ids, valid, cfg.iou_threshold, cfg.max_per_img)
    return jnp.where(ok[:, None], boxes[keep], 0.0), jnp.where(ok, scores[keep], 0.0), ok


def bbox_postprocess(proposals: Array, proposal_valid: Array, cls_score: Array, bbox_pred: Array, img_shape: Array,
                     scale_factor: Array, cfg: RCNNConfig = RCNNConfig()) -> tuple[Array, Array, Array, Array]:
    """One image's detections from the box head on its proposals: ``(boxes (K, 4)`` in original
    pixels, ``scores, labels, valid)``, MMDetection's ``get_bboxes`` + ``multiclass_nms``."""
    num_classes = cls_score.shape[-1] - 1
    scores = jax.nn.softmax(cls_score.astype(jnp.float32), -1)[:, :num_classes]  # background last
    deltas = bbox_pred.astype(jnp.float32).reshape(-1, num_classes, 4)
    boxes = decode(proposals[:, None, :], deltas, img_shape, BBOX_STDS) / scale_factor.astype(jnp.float32)
    boxes, scores = boxes.reshape(-1, 4), scores.reshape(-1)  # pair index roi * classes + class
    labels = jnp.tile(jnp.arange(num_classes, dtype=jnp.int32), proposals.shape[0])
    valid = (scores > cfg.score_thr) & jnp.repeat(proposal_valid, num_classes)
    keep, ok = batched_nms(boxes, scores, labels, valid, cfg.iou_threshold, cfg.max_per_img)
    return (jnp.where(ok[:, None], boxes[keep], 0.0), jnp.where(ok, scores[keep], 0.0),
            jnp.where(ok, labels[keep], -1), ok)


def detect(model, images: Array, img_shapes: Array, scale_factors: Array, rpn_cfg: RPNConfig = RPNConfig(),
           cfg: RCNNConfig = RCNNConfig()) -> MaskDetections:
    """The official Mask R-CNN inference on a batch (``images`` NHWC normalised, padded with 0 to
    multiples of 32; ``img_shapes (N, 2)`` the resized sizes; ``scale_factors (N, 4)``)."""
    img_shapes = jnp.asarray(img_shapes, jnp.float32)
    scale_factors = jnp.asarray(scale_factors, jnp.float32)
    feats = model.features(images)
    rpn_cls, rpn_reg = model.rpn(feats)
    proposals, _, pvalid = jax.vmap(functools.partial(rpn_proposals, cfg=rpn_cfg))(rpn_cls, rpn_reg, img_shapes)
    cls_score, bbox_pred = model.bbox_forward(feats, proposals)
    boxes, scores, labels, valid = jax.vmap(functools.partial(bbox_postprocess, cfg=cfg))(
        proposals, pvalid, cls_score, bbox_pred, img_shapes, scale_factors)
    logits = model.mask_forward(feats, boxes * scale_factors[:, None, :])  # (N, K, 28, 28, classes)
    picked = jnp.take_along_axis(logits, jnp.maximum(labels, 0)[:, :, None, None, None], -1)[..., 0]
    return MaskDetections(boxes, scores, labels, valid, jax.nn.sigmoid(picked))


def detect_batch(model, batch: dict[str, Array], mean, std, rpn_cfg: RPNConfig = RPNConfig(),
                 cfg: RCNNConfig = RCNNConfig()) -> MaskDetections:
    """``detect`` on a pipeline batch (``lsnet_jax.data.detection.DetTestTransform``), its images
    through ``detection.batch_images``."""
    return detect(model, batch_images(batch, mean, std), batch["img_shape"], batch["scale_factor"], rpn_cfg, cfg)


def _tent(coords: np.ndarray, size: int) -> np.ndarray:
    """``(len(coords), size)`` bilinear weights of sampling a length-``size`` signal at ``coords``
    (pixel-centre units) with zero padding: ``max(0, 1 - |coord - k|)``."""
    return np.maximum(0.0, 1.0 - np.abs(coords[:, None] - np.arange(size, dtype=np.float32)[None, :]))


def paste_masks(probs: np.ndarray, boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """MMDetection's ``_do_paste_mask`` (CPU path, one box at a time): each ``(m, m)`` mask
    resampled into its box of an ``shape`` image, ``F.grid_sample(bilinear, zeros,
    align_corners=False)`` at the pixel centres, inside ``[floor(x1) - 1, ceil(x2) + 1)`` (same for
    y) and 0 elsewhere (where the full-image value is below 0.5 anyway). float32, ``(k, H, W)``."""
    out = np.zeros((len(boxes), *shape), np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero-width box: NaN weights, an empty mask
        for mask, box, dst in zip(np.asarray(probs, np.float32), np.asarray(boxes, np.float32), out):
            _paste_one(mask, box, dst)
    return out


def _paste_one(mask: np.ndarray, box: np.ndarray, dst: np.ndarray) -> None:
    h, w = dst.shape
    m = mask.shape[-1]
    x1, y1, x2, y2 = (float(v) for v in box)
    x0, xe = max(int(np.floor(x1)) - 1, 0), min(int(np.ceil(x2)) + 1, w)
    y0, ye = max(int(np.floor(y1)) - 1, 0), min(int(np.ceil(y2)) + 1, h)
    if xe <= x0 or ye <= y0:
        return
    # grid_sample's source coordinate ((g + 1) * m - 1) / 2 of g = (p + 0.5 - x1) / (x2 - x1) * 2 - 1
    gx = ((np.arange(x0, xe, dtype=np.float32) + 0.5 - np.float32(x1)) / np.float32(x2 - x1) * 2 - 1 + 1) * m / 2 - 0.5
    gy = ((np.arange(y0, ye, dtype=np.float32) + 0.5 - np.float32(y1)) / np.float32(y2 - y1) * 2 - 1 + 1) * m / 2 - 0.5
    dst[y0:ye, x0:xe] = _tent(gy.astype(np.float32), m) @ mask @ _tent(gx.astype(np.float32), m).T
