"""Classification metrics, as jit-able functions of logits: the one top-k and the sums an
evaluation adds up over batches (training's evaluation and ``lsnet-eval`` alike); segmentation's
per-class areas and mIoU / mAcc / aAcc, on the host in numpy as MMSegmentation computes them."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array


def cross_entropy(logits: Array, labels: Array) -> Array:
    """Per-example cross-entropy with integer labels (float32)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def restrict(logits: Array, labels: Array, classes: Sequence[int]) -> tuple[Array, Array]:
    """Only the logits of ``classes`` (ImageNet-A/R's 200), and each label's position among them
    (-1 for a label outside them)."""
    idx = jnp.asarray(classes, jnp.int32)
    position = jnp.full((logits.shape[-1],), -1, jnp.int32).at[idx].set(jnp.arange(len(classes)))
    return logits[:, idx], position[labels]


def hits(logits: Array, labels: Array, classes: Sequence[int] | None = None, k: int = 5) -> tuple[Array, Array]:
    """Per-sample top-1 and top-k hits. With ``classes`` only those logits compete (ImageNet-A/R);
    a label outside them is never hit."""
    if classes is not None:
        logits, labels = restrict(logits, labels, classes)
    top = jax.lax.top_k(logits, min(k, logits.shape[-1]))[1]
    hit = top == labels[:, None]
    return hit[:, 0], jnp.any(hit, axis=-1)


def eval_sums(logits: Array, labels: Array, mask: Array, classes: Sequence[int] | None = None) -> dict[str, Array]:
    """Sums over the real (``mask`` 1) samples of a batch: loss, top-1 and top-5 hits, count. With
    ``classes``, over those classes' logits; a sample whose label is outside them adds no loss."""
    logits, mask_loss = logits.astype(jnp.float32), mask
    if classes is not None:
        logits, labels = restrict(logits, labels, classes)  # a label outside them is -1: never hit
        mask_loss = mask * (labels >= 0)
    top1, top5 = hits(logits, labels)
    return {"loss": jnp.sum(cross_entropy(logits, jnp.maximum(labels, 0)) * mask_loss),
            "acc1": jnp.sum(top1 * mask), "acc5": jnp.sum(top5 * mask), "count": jnp.sum(mask)}


# ----- semantic segmentation (MMSegmentation 0.30's mean_iou / total_area_to_metrics) -----

def intersect_and_union(pred: np.ndarray, label: np.ndarray, num_classes: int,
                        ignore_index: int = 255) -> np.ndarray:
    """Per-class pixel areas of one image, ``(4, num_classes)`` int64: intersection, union,
    prediction, label; pixels labelled ``ignore_index`` are left out."""
    mask = label != ignore_index
    p, t = pred[mask].astype(np.int64), label[mask].astype(np.int64)
    inter = np.bincount(p[p == t], minlength=num_classes)[:num_classes]
    area_p = np.bincount(p, minlength=num_classes)[:num_classes]
    area_t = np.bincount(t, minlength=num_classes)[:num_classes]
    return np.stack([inter, area_p + area_t - inter, area_p, area_t])


def segmentation_metrics(areas: np.ndarray, class_names: tuple[str, ...] = ()) -> dict:
    """mIoU, mAcc and aAcc (percent) from areas summed over a whole split (``intersect_and_union``):
    per class IoU = intersection / union and Acc = intersection / label area; a class with no union
    (Acc: no label pixel) is NaN and left out of the mean, as mmseg's ``nanmean``."""
    inter, union, _, area_t = (a.astype(np.float64) for a in areas)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou, acc = inter / union, inter / area_t
    names = class_names or tuple(str(i) for i in range(len(iou)))
    return {"mIoU": float(np.nanmean(iou) * 100), "mAcc": float(np.nanmean(acc) * 100),
            "aAcc": float(inter.sum() / area_t.sum() * 100),
            "per_class": {n: {"IoU": None if np.isnan(i) else float(i * 100),
                              "Acc": None if np.isnan(a) else float(a * 100)}
                          for n, i, a in zip(names, iou, acc)}}
