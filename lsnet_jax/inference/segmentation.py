"""Segmentation inference shared by training's evaluation, ``lsnet-eval --task segmentation`` and
``lsnet-predict``: the official whole-image inference on one image at a time (each at its own test
size), the logits resized back to the original size on the host, and mmseg's metric over a split.
"""

from __future__ import annotations

import logging

import jax
import numpy as np
from flax import nnx

from lsnet_jax.data.normalize import normalize
from lsnet_jax.inference.metrics import intersect_and_union, segmentation_metrics
from lsnet_jax.kernels.resize import bilinear_matrix
from lsnet_jax.models.semfpn import segment

log = logging.getLogger(__name__)
Array = jax.Array


def seg_logits(params: dict, batch_stats: dict, image: Array, *, graphdef: nnx.GraphDef,
               mean: tuple[float, ...], std: tuple[float, ...]) -> Array:
    """The logits of one uint8 image batch at its own size (``segment`` without the last resize)."""
    model = nnx.merge(graphdef, params, batch_stats)
    return segment(model, normalize(image, mean, std))


def resize_logits_np(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(H, W, C)`` logits to the original ``size`` on the host, bilinear as ``F.interpolate``."""
    if logits.shape[:2] == tuple(size):
        return logits
    mh = bilinear_matrix(logits.shape[0], size[0]).astype(np.float32)
    mw = bilinear_matrix(logits.shape[1], size[1]).astype(np.float32)
    return np.einsum("xw,ywc->yxc", mw, np.einsum("yh,hwc->ywc", mh, logits))


def evaluate_segmenter(logits_fn, samples, num_classes: int, class_names: tuple[str, ...] = (),
                       progress_every: int = 0) -> dict:
    """mIoU / mAcc / aAcc over ``samples`` (``pipeline.seg_eval_samples``; this process's share,
    summed over processes), and the count of unreadable records skipped. ``logits_fn(image (1, H, W,
    3) uint8) -> (1, H, W, C)``."""
    areas = np.zeros((4, num_classes), np.int64)
    skipped = n = 0
    for sample in samples:
        if "error" in sample:
            skipped += 1
            continue
        logits = np.asarray(logits_fn(sample["image"][None]))[0]
        pred = np.argmax(resize_logits_np(logits, sample["label"].shape), -1)
        areas += intersect_and_union(pred, sample["label"], num_classes)
        n += 1
        if progress_every and n % progress_every == 0:
            log.info("evaluated %d images", n)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        areas = np.asarray(multihost_utils.process_allgather(areas)).sum(0)
        skipped = int(np.asarray(multihost_utils.process_allgather(np.int64(skipped))).sum())
    return segmentation_metrics(areas, class_names) | {"skipped": skipped}


def logits_fn(model: nnx.Module, mean: tuple[float, ...], std: tuple[float, ...]):
    """``fn(image (1, H, W, 3) uint8) -> (1, H, W, classes)`` logits at the image's size, compiled
    once per size, on the first local device."""
    graph, params, rest = nnx.split(model, nnx.Param, ...)
    fn = jax.jit(lambda p, r, x: segment(nnx.merge(graph, p, r), normalize(x, mean, std)))
    return lambda image: fn(params, rest, image)


def predict_labels(fn, image: np.ndarray, test_transform) -> np.ndarray:
    """Labels ``(H, W)`` int32 at ``image``'s own size of one RGB uint8 image, through the official
    test resize (``test_transform.image``)."""
    logits = np.asarray(fn(test_transform.image(image)[None]))[0]
    return np.argmax(resize_logits_np(logits, image.shape[:2]), -1).astype(np.int32)
