"""COCO 2017's 80 detection classes in MMDetection's order (``CocoDataset.CLASSES``) and their
category ids in the annotation files: label i is the i-th id (``DETECTION_SPEC.md``, Data); and
a COCO-format split read as MMDetection's ``CocoDataset`` reads it (``read_split``)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

COCO_CLASSES = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat', 'traffic light',
    'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow',
    'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella', 'handbag', 'tie', 'suitcase', 'frisbee',
    'skis', 'snowboard', 'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard', 'surfboard',
    'tennis racket', 'bottle', 'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple',
    'sandwich', 'orange', 'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch',
    'potted plant', 'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote', 'keyboard',
    'cell phone', 'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase',
    'scissors', 'teddy bear', 'hair drier', 'toothbrush')

# 1-11, 13-25, 27, 28, 31-44, 46-65, 67, 70, 72-82, 84-90
COCO_CATEGORY_IDS = (
    *range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83), *range(84, 91))

assert len(COCO_CLASSES) == len(COCO_CATEGORY_IDS) == 80


# ----- reading a COCO-format split as MMDetection's CocoDataset does -----

MAX_JSON_BYTES = 4 << 30  # instances_train2017.json is 448 MB; a larger annotation file is refused


@dataclasses.dataclass
class CocoImage:
    """One image of a split and what training uses of its annotations: ``boxes (K, 4)`` x1y1x2y2
    float32 and ``labels (K,)`` after mmdet's filtering, their masks as RLE (``{'size', 'counts'}``
    at the original size), and ``annotations``, the image's annotations as the file holds them
    (crowd and filtered ones included: COCOeval uses them all)."""

    image_id: int
    path: Path
    file_name: str
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray
    masks: list[dict]
    annotations: list[dict]
    has_annotation: bool  # any annotation of the split's categories, crowd included (filter_empty_gt)


def read_annotation_file(path: str | os.PathLike) -> dict:
    """A COCO annotation json, bounded in size, with its top-level layout checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no COCO annotation file at {path}")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise ValueError(f"{path} holds {path.stat().st_size / 2**30:.1f} GiB, more than any COCO annotation file "
                         f"({MAX_JSON_BYTES / 2**30:.0f} GiB)")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a JSON file ({e})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations",
                                                                                       "categories")):
        raise ValueError(f"{path} is not a COCO annotation file: it needs 'images', 'annotations' and "
                         f"'categories' lists")
    return data


def _rle(segmentation, h: int, w: int) -> dict | None:
    """An annotation's mask as RLE at the image's size (polygons merged, as mmdet's ``_poly2mask``)."""
    from pycocotools import mask as mask_utils

    if not segmentation:
        return None
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))
    elif isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, h, w)
    else:
        rle = segmentation
    counts = rle["counts"]
    return {"size": [int(h), int(w)], "counts": counts.decode() if isinstance(counts, bytes) else counts}


def read_split(annotation_file: str | os.PathLike, image_dir: str | os.PathLike
               ) -> tuple[list[dict], list[CocoImage], list[tuple[str, str]]]:
    """(categories sorted by id, images, problems) of a COCO-format split. Label i is the i-th
    category id. Kept per image, as mmdet's ``_parse_ann_info``: annotations not flagged
    ``ignore``, not crowd, whose box meets the image, with ``area > 0``, ``w >= 1`` and ``h >= 1``.
    An annotation whose category the file does not list, or an image missing on disk, is a problem
    ``(what, why)``: reported, left out, counted."""
    data = read_annotation_file(annotation_file)
    image_dir = Path(image_dir)
    categories = sorted(data["categories"], key=lambda c: c["id"])
    label_of = {c["id"]: i for i, c in enumerate(categories)}
    by_image: dict[int, list[dict]] = {}
    problems: list[tuple[str, str]] = []
    for ann in data["annotations"]:
        if ann.get("category_id") not in label_of:
            problems.append((f"annotation {ann.get('id')} of image {ann.get('image_id')}",
                             f"category id {ann.get('category_id')!r} is not among the file's categories"))
            continue
        by_image.setdefault(ann.get("image_id"), []).append(ann)
    images = []
    for info in data["images"]:
        path = image_dir / info["file_name"]
        if not path.is_file():
            problems.append((str(path), f"image {info['id']} is not on disk"))
            continue
        h, w = int(info["height"]), int(info["width"])
        anns = by_image.get(info["id"], [])
        boxes, labels, masks = [], [], []
        for ann in anns:
            if ann.get("ignore", False) or ann.get("iscrowd", 0):
                continue
            x, y, bw, bh = (float(v) for v in ann["bbox"])
            if max(0.0, min(x + bw, w) - max(x, 0.0)) * max(0.0, min(y + bh, h) - max(y, 0.0)) == 0:
                continue
            if ann.get("area", bw * bh) <= 0 or bw < 1 or bh < 1:
                continue
            boxes.append((x, y, x + bw, y + bh))
            labels.append(label_of[ann["category_id"]])
            masks.append(_rle(ann.get("segmentation"), h, w))
        kept = [{k: a[k] for k in ("id", "category_id", "bbox", "area", "iscrowd", "ignore", "segmentation") if k in a}
                for a in anns]  # COCOeval's ground truth: the segmentation for segm, crowd regions too
        images.append(CocoImage(int(info["id"]), path, info["file_name"], h, w,
                                np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64),
                                masks, kept, bool(anns)))
    return categories, images, problems
