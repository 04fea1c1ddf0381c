"""A detector over a whole COCO-format split, as MMDetection's test + ``CocoDataset.evaluate``:
every image through the test pipeline, ``detect`` in batches of one padded shape each (one
compiled program per shape), COCOeval of the boxes, and of the masks too when the detector has them
(Mask R-CNN: ``segm_mAP`` ..., RLE masks at each original size through pycocotools)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from lsnet_jax.data import pipeline
from lsnet_jax.data.detection import ground_truth
from lsnet_jax.inference.coco_eval import evaluate_boxes, results_json

log = logging.getLogger(__name__)
KEYS = ("image", "img_shape", "scale_factor", "ori_shape", "image_id")


def batches(samples, size: int) -> Iterator[tuple[dict[str, np.ndarray] | None, int]]:
    """Eval samples in batches of ``size`` images of one padded shape (a batch leaves when it is
    full; at the end each shape's last one, filled with copies of its last image):
    ``(batch, real count)``; an unreadable record comes as ``(None, 0)``."""
    bufs: dict[tuple[int, ...], list[dict]] = {}
    for s in samples:
        if "error" in s:
            yield None, 0
            continue
        buf = bufs.setdefault(s["image"].shape, [])
        buf.append(s)
        if len(buf) == size:
            yield {k: np.stack([x[k] for x in buf]) for k in KEYS}, size
            buf.clear()
    for buf in bufs.values():
        if buf:
            n = len(buf)
            buf += [buf[-1]] * (size - n)
            yield {k: np.stack([x[k] for x in buf]) for k in KEYS}, n


def evaluate_detector(detect_fn: Callable, source: Sequence[dict], categories: Sequence[dict], transform: Callable,
                      batch_size: int, gt: dict | None = None, threads: int = 2, progress_every: int = 0) -> dict:
    """COCOeval of ``detect_fn(batch) -> Detections`` (or ``MaskDetections``) over ``source``: the
    12 stats, mmdet's keys (``bbox_*``, and ``segm_*`` with ``segm_stats`` for masks),
    ``detections`` (how many), ``images`` and ``skipped`` (unreadable records, counted)."""
    gt = gt if gt is not None else ground_truth(source, categories)
    ids = [c["id"] for c in categories]
    results, skipped, done, t0, with_masks = [], 0, 0, time.monotonic(), False
    # every process evaluates the whole split (COCOeval needs every image's detections in one place)
    samples = pipeline.seg_eval_samples(source, transform, threads=threads, shard=False)
    for batch, n in batches(samples, batch_size):
        if batch is None:
            skipped += 1
            continue
        out = detect_fn(batch)
        dets = (out.to_lists(batch["ori_shape"]) if hasattr(out, "mask_probs") else out.to_lists())[:n]
        with_masks = with_masks or hasattr(out, "mask_probs")
        results += results_json(zip(batch["image_id"][:n], dets), ids)
        done += n
        if progress_every and done % progress_every < n:
            rate = done / max(time.monotonic() - t0, 1e-9)
            log.info("%d/%d images, %.1f images/s, ETA %.0f s", done, len(source), rate,
                     (len(source) - done - skipped) / rate)
    report = evaluate_boxes(gt, results, ids) | {"detections": len(results), "images": done, "skipped": skipped}
    if with_masks:
        anns = gt["annotations"] if isinstance(gt, dict) else list(gt.anns.values())
        missing = [a.get("id") for a in anns if not a.get("segmentation")]
        if missing:
            raise ValueError(f"{len(missing)} ground-truth annotations (ids {missing[:5]}) have no segmentation, "
                             "which the masks' COCOeval needs: prepare the split again with this version "
                             "(its records keep each annotation's segmentation)")
        segm = evaluate_boxes(gt, results, ids, iou_type="segm")
        report |= {k: v for k, v in segm.items() if k.startswith("segm_")} | {
            "segm_stats": segm["stats"], "summary": report["summary"] + segm["summary"]}
    return report
