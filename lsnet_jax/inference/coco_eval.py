"""COCO box evaluation as MMDetection 2.28.2's ``CocoDataset.evaluate`` runs it: detections to COCO
results json (``[x1, y1, w, h]``, score, the label's category id), pycocotools' ``COCOeval`` (the
library the official numbers come from) with ``maxDets = [100, 300, 1000]`` over every image of
the split, and the logged keys (``bbox_mAP`` ... ``bbox_mAP_l`` rounded to 4 decimals,
``bbox_mAP_copypaste``)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR@100", "AR@300", "AR@1000", "ARs@1000", "ARm@1000",
              "ARl@1000")
LOG_KEYS = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")  # the first six stats, as mmdet logs them


def results_json(detections: Iterable[tuple[int, Mapping[str, np.ndarray]]],
                 category_ids: Sequence[int]) -> list[dict]:
    """COCO results from ``(image_id, {'boxes' (k, 4) x1y1x2y2, 'scores', 'labels'[, 'masks' (k, H, W)
    bool]})`` pairs; label i is ``category_ids[i]``; masks become ``segmentation`` RLEs (the box's
    score is the mask's, as MMDetection)."""
    out = []
    for image_id, det in detections:
        masks = det.get("masks")
        rles = mask_rles(masks) if masks is not None else [None] * len(det["boxes"])
        for box, score, label, rle in zip(np.asarray(det["boxes"], np.float64), det["scores"], det["labels"], rles):
            x1, y1, x2, y2 = (float(v) for v in box)
            r = {"image_id": int(image_id), "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score),
                 "category_id": int(category_ids[int(label)])}
            out.append(r if rle is None else r | {"segmentation": rle})
    return out


def mask_rles(masks: np.ndarray) -> list[dict]:
    """pycocotools RLEs (``counts`` as text, JSON-ready) of boolean ``(k, H, W)`` masks."""
    from pycocotools import mask as mask_utils

    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(np.asarray(masks, np.uint8).transpose(1, 2, 0)))
    return [{"size": [int(v) for v in r["size"]], "counts": r["counts"].decode()} for r in rles]


def coco_from_dict(annotations: Mapping) -> object:
    """A pycocotools ``COCO`` index of a COCO-format dict (no file, no printing)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dict(annotations)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def evaluate_boxes(gt, results: list[dict], category_ids: Sequence[int] | None = None,
                   image_ids: Sequence[int] | None = None, iou_type: str = "bbox") -> dict:
    """``COCOeval`` over ``image_ids`` (default every image of ``gt``) and ``category_ids``
    (default every category): ``{'stats': the 12 numbers, 'summary': pycocotools' printed table,
    f'{iou_type}_mAP': ..., f'{iou_type}_mAP_copypaste': ...}``. No detection at all gives zeros
    (pycocotools cannot load an empty result list; every AP is 0 then)."""
    from pycocotools.cocoeval import COCOeval

    if isinstance(gt, Mapping):
        gt = coco_from_dict(gt)
    cat_ids = list(category_ids) if category_ids is not None else sorted(gt.getCatIds())
    img_ids = list(image_ids) if image_ids is not None else sorted(gt.getImgIds())
    if results:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            dt = gt.loadRes(list(results))
            ev = COCOeval(gt, dt, iou_type)
            ev.params.catIds, ev.params.imgIds = cat_ids, img_ids
            ev.params.maxDets = [100, 300, 1000]
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        stats, summary = [float(s) for s in ev.stats], buf.getvalue()
    else:
        stats, summary = [0.0] * len(STAT_NAMES), "no detections: every AP and AR is 0\n"
    out: dict = {"stats": dict(zip(STAT_NAMES, stats)), "summary": summary}
    for key, value in zip(LOG_KEYS, stats):
        out[f"{iou_type}_{key}"] = round(value, 4)
    out[f"{iou_type}_mAP_copypaste"] = " ".join(f"{v:.4f}" for v in stats[:6])
    return out
