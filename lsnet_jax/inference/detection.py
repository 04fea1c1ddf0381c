"""Dense detection's fixed parts, as MMDetection 2.28.2 computes them (``DETECTION_SPEC.md``):
anchors, the delta box coder, class-aware NMS and RetinaNet's test-time post-processing
(``detect``), in JAX with static shapes so that one program serves every image of a size.

Static shapes, and how they keep the official numbers: each level keeps exactly
``min(nms_pre, pairs)`` (anchor, class) candidates from ``lax.top_k`` over the scores, those at or
below ``score_thr`` marked invalid instead of dropped; NMS picks ``max_per_img`` times the
highest-scoring valid candidate left and removes it and every candidate overlapping it by more
than the threshold, which selects exactly what the official sorted greedy walk keeps, in the same
order; outputs are padded to ``max_per_img`` with a ``valid`` mask (``num`` per image).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

WH_RATIO_CLIP = 16 / 1000  # DeltaXYWHBBoxCoder's clamp of dw, dh: |log(16/1000)| = 4.135


@dataclasses.dataclass(frozen=True)
class AnchorConfig:
    """MMDetection's AnchorGenerator (RetinaNet's defaults): base size = stride, scales
    ``octave_base_scale * 2**(i / scales_per_octave)``, ratios h/w; anchor ``a = ratio * S + scale``."""

    strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    octave_base_scale: float = 4.0
    scales_per_octave: int = 3
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)

    @property
    def num_anchors(self) -> int:
        return len(self.ratios) * self.scales_per_octave


@dataclasses.dataclass(frozen=True)
class TestConfig:
    """RetinaNet's ``test_cfg``: per level the top ``nms_pre`` (anchor, class) pairs above
    ``score_thr``; class-aware NMS at ``iou_threshold``; ``max_per_img`` detections."""

    score_thr: float = 0.05
    nms_pre: int = 1000
    iou_threshold: float = 0.5
    max_per_img: int = 100


@dataclasses.dataclass(frozen=True)
class Detections:
    """Per image, padded to ``max_per_img``: ``boxes (N, K, 4)`` (x1, y1, x2, y2) in original-image
    pixels, ``scores (N, K)``, ``labels (N, K)`` int32, ``valid (N, K)``; valid entries come first,
    by descending score."""

    boxes: Array
    scores: Array
    labels: Array
    valid: Array

    def to_lists(self) -> list[dict[str, np.ndarray]]:
        """One dict per image of numpy ``boxes (k, 4)``, ``scores (k,)``, ``labels (k,)``, the
        valid detections only."""
        boxes, scores, labels, valid = (np.asarray(a) for a in (self.boxes, self.scores, self.labels, self.valid))
        return [dict(boxes=b[v], scores=s[v], labels=lab[v]) for b, s, lab, v in zip(boxes, scores, labels, valid)]


jax.tree_util.register_dataclass(Detections, data_fields=["boxes", "scores", "labels", "valid"], meta_fields=[])


def base_anchors(stride: int, cfg: AnchorConfig = AnchorConfig()) -> np.ndarray:
    """``(A, 4)`` float32 anchors of one cell centred on (0, 0), as MMDetection computes them in
    float32 (center_offset 0)."""
    scales = np.asarray([cfg.octave_base_scale * 2 ** (i / cfg.scales_per_octave)
                         for i in range(cfg.scales_per_octave)], np.float32)
    h_ratios = np.sqrt(np.asarray(cfg.ratios, np.float32))
    w_ratios = np.float32(1) / h_ratios
    ws = (np.float32(stride) * w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (np.float32(stride) * h_ratios[:, None] * scales[None, :]).reshape(-1)
    half = np.float32(0.5)
    return np.stack([-half * ws, -half * hs, half * ws, half * hs], -1).astype(np.float32)


@functools.lru_cache(maxsize=64)
def level_anchors(h: int, w: int, stride: int, cfg: AnchorConfig = AnchorConfig()) -> np.ndarray:
    """``(h * w * A, 4)`` float32 anchors of one level in MMDetection's (y, x, a) order: the base
    anchors shifted to each cell's top-left corner ``(x * stride, y * stride)``. Cached; read only."""
    sx = np.arange(w, dtype=np.float32) * np.float32(stride)
    sy = np.arange(h, dtype=np.float32) * np.float32(stride)
    yy, xx = np.meshgrid(sy, sx, indexing="ij")
    shifts = np.stack([xx.ravel(), yy.ravel(), xx.ravel(), yy.ravel()], -1)
    out = (base_anchors(stride, cfg)[None] + shifts[:, None]).reshape(-1, 4).astype(np.float32)
    out.setflags(write=False)
    return out


def encode(anchors: Array, gt: Array, stds=(1.0, 1.0, 1.0, 1.0)) -> Array:
    """DeltaXYWHBBoxCoder.encode (means 0): the deltas (dx, dy, dw, dh) taking ``anchors`` to ``gt``."""
    px, py = (anchors[..., 0] + anchors[..., 2]) * 0.5, (anchors[..., 1] + anchors[..., 3]) * 0.5
    pw, ph = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    gx, gy = (gt[..., 0] + gt[..., 2]) * 0.5, (gt[..., 1] + gt[..., 3]) * 0.5
    gw, gh = gt[..., 2] - gt[..., 0], gt[..., 3] - gt[..., 1]
    d = jnp.stack([(gx - px) / pw, (gy - py) / ph, jnp.log(gw / pw), jnp.log(gh / ph)], -1)
    return d / jnp.asarray(stds, d.dtype)


def decode(anchors: Array, deltas: Array, max_shape: Array, stds=(1.0, 1.0, 1.0, 1.0)) -> Array:
    """DeltaXYWHBBoxCoder.decode (means 0): ``dw, dh`` clamped to ``|log(16/1000)|``, boxes clamped
    to ``max_shape`` (h, w), the resized image before padding."""
    d = deltas * jnp.asarray(stds, deltas.dtype)
    r = abs(math.log(WH_RATIO_CLIP))
    dx, dy = d[..., 0], d[..., 1]
    dw, dh = jnp.clip(d[..., 2], -r, r), jnp.clip(d[..., 3], -r, r)
    px, py = (anchors[..., 0] + anchors[..., 2]) * 0.5, (anchors[..., 1] + anchors[..., 3]) * 0.5
    pw, ph = anchors[..., 2] - anchors[..., 0], anchors[..., 3] - anchors[..., 1]
    gx, gy = px + pw * dx, py + ph * dy
    gw, gh = pw * jnp.exp(dw), ph * jnp.exp(dh)
    h, w = max_shape[0], max_shape[1]
    return jnp.stack([jnp.clip(gx - gw * 0.5, 0, w), jnp.clip(gy - gh * 0.5, 0, h),
                      jnp.clip(gx + gw * 0.5, 0, w), jnp.clip(gy + gh * 0.5, 0, h)], -1)


def box_iou(box: Array, boxes: Array) -> Array:
    """IoU of one box against many, MMCV's NMS formula (offset 0, no epsilon)."""
    xx1, yy1 = jnp.maximum(box[0], boxes[:, 0]), jnp.maximum(box[1], boxes[:, 1])
    xx2, yy2 = jnp.minimum(box[2], boxes[:, 2]), jnp.minimum(box[3], boxes[:, 3])
    inter = jnp.maximum(xx2 - xx1, 0) * jnp.maximum(yy2 - yy1, 0)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + areas - inter)


def nms(boxes: Array, scores: Array, valid: Array, iou_threshold: float, max_out: int) -> tuple[Array, Array]:
    """Greedy NMS with a fixed output size: ``max_out`` times, keep the highest-scoring candidate
    left (the first on ties) and remove every candidate whose IoU with it is above the threshold.
    Returns (indices (max_out,), valid (max_out,)), kept candidates first by descending score."""
    left = jnp.where(valid, scores, -jnp.inf)
    index = jnp.arange(boxes.shape[0])

    def pick(i, carry):
        left, keep, ok = carry
        j = jnp.argmax(left)
        alive = left[j] > -jnp.inf
        keep, ok = keep.at[i].set(j), ok.at[i].set(alive)
        gone = (box_iou(boxes[j], boxes) > iou_threshold) | (index == j)
        return jnp.where(alive & gone, -jnp.inf, left), keep, ok

    init = (left, jnp.zeros(max_out, jnp.int32), jnp.zeros(max_out, bool))
    _, keep, ok = jax.lax.fori_loop(0, max_out, pick, init)
    return keep, ok


def batched_nms(boxes: Array, scores: Array, labels: Array, valid: Array, iou_threshold: float,
                max_out: int) -> tuple[Array, Array]:
    """MMCV's class-aware ``batched_nms``: boxes offset by ``label * (max coordinate + 1)`` (the max
    over the valid candidates), so that boxes of different labels never overlap."""
    top = jnp.max(jnp.where(valid[:, None], boxes, -jnp.inf))
    shifted = boxes + (labels.astype(boxes.dtype) * (top + 1))[:, None]
    return nms(shifted, scores, valid, iou_threshold, max_out)


def retina_postprocess(cls_scores: tuple[Array, ...], bbox_preds: tuple[Array, ...], img_shape: Array,
                       scale_factor: Array, num_classes: int, cfg: TestConfig = TestConfig(),
                       anchor_cfg: AnchorConfig = AnchorConfig()) -> Detections:
    """One image's detections from its raw RetinaNet outputs (per level ``(H, W, A * C)`` and
    ``(H, W, A * 4)``): MMDetection's ``filter_scores_and_topk`` per level, decode, rescale by
    ``scale_factor`` (w, h, w, h), class-aware NMS, the first ``max_per_img``."""
    boxes, scores, labels, valid = [], [], [], []
    for level, (cls, reg) in enumerate(zip(cls_scores, bbox_preds)):
        h, w = cls.shape[:2]
        anchors = jnp.asarray(level_anchors(h, w, anchor_cfg.strides[level], anchor_cfg))
        s = jax.nn.sigmoid(cls.reshape(-1).astype(jnp.float32))  # pairs: index anchor * C + class
        k = min(cfg.nms_pre, s.shape[0])
        top, idx = jax.lax.top_k(jnp.where(s > cfg.score_thr, s, -1.0), k)
        anchor = idx // num_classes
        deltas = reg.reshape(-1, 4).astype(jnp.float32)[anchor]
        boxes.append(decode(anchors[anchor], deltas, img_shape))
        scores.append(top)
        labels.append((idx % num_classes).astype(jnp.int32))
        valid.append(top > cfg.score_thr)
    boxes = jnp.concatenate(boxes) / scale_factor.astype(jnp.float32)
    scores, labels, valid = jnp.concatenate(scores), jnp.concatenate(labels), jnp.concatenate(valid)
    keep, ok = batched_nms(boxes, scores, labels, valid, cfg.iou_threshold, cfg.max_per_img)
    return Detections(jnp.where(ok[:, None], boxes[keep], 0.0), jnp.where(ok, scores[keep], 0.0),
                      jnp.where(ok, labels[keep], -1), ok)


def detect(model, images: Array, img_shapes: Array, scale_factors: Array, cfg: TestConfig = TestConfig()
           ) -> Detections:
    """The official RetinaNet inference on a batch: ``images`` NHWC normalised and padded to
    multiples of 32 (0 after normalising), ``img_shapes (N, 2)`` each image's resized (h, w) before
    padding, ``scale_factors (N, 4)`` (w, h, w, h) from the original to the resized image (the test
    pipeline's). Returns the padded ``Detections`` (``.to_lists()`` for numpy per image)."""
    cls_scores, bbox_preds = model(images)
    post = functools.partial(retina_postprocess, num_classes=model.cfg.num_classes, cfg=cfg)
    return jax.vmap(post)(cls_scores, bbox_preds, jnp.asarray(img_shapes, jnp.float32),
                          jnp.asarray(scale_factors, jnp.float32))


def inside(img_shape: Array, shape: tuple[int, int]) -> Array:
    """``(N, H, W, 1)`` True inside each image's resized (unpadded) ``img_shape``."""
    ys = jnp.arange(shape[0])[None, :, None]
    xs = jnp.arange(shape[1])[None, None, :]
    return ((ys < img_shape[:, 0, None, None]) & (xs < img_shape[:, 1, None, None]))[..., None]


def batch_images(batch: dict[str, Array], mean, std) -> Array:
    """A detection pipeline batch's uint8 images (padded with 0) normalised and set to 0 outside
    each resized image: mmdet pads the NORMALISED image with 0. Training and inference alike."""
    from lsnet_jax.data.normalize import normalize

    images = normalize(batch["image"], mean, std)
    return jnp.where(inside(batch["img_shape"], images.shape[1:3]), images, 0.0)


def detect_batch(model, batch: dict[str, Array], mean, std, cfg: TestConfig = TestConfig()) -> Detections:
    """``detect`` on a pipeline batch (``lsnet_jax.data.detection.DetTestTransform``), its images
    through ``batch_images``, with their ``img_shape`` and ``scale_factor``."""
    return detect(model, batch_images(batch, mean, std), batch["img_shape"], batch["scale_factor"], cfg)
