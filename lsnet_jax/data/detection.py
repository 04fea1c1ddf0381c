"""Object detection data on the host: MMDetection 2.28.2's train and test pipelines
(``DETECTION_SPEC.md``, Data) in numpy + OpenCV, one sample at a time, padded to fixed shapes.

Train (``DetTrainTransform``): decode (OpenCV, as mmdet) -> keep-ratio resize to ``scale``
(``cv2.resize`` INTER_LINEAR, mmcv's size rule) with the boxes scaled by ``scale_factor`` and
clipped -> horizontal flip -> pad bottom/right with 0 to ``pad_shape``. The boxes are padded to
``max_boxes`` with a mask. Normalisation runs on the device, where everything outside the resized
image is set to 0 after normalising, as mmdet pads the normalised image with 0.
Test (``DetTestTransform``): the same resize, no flip, padded to ``pad_shape``; ``img_shape`` and
``scale_factor`` go with the image for the post-processing.

Static shapes: every image of a run is padded to one ``pad_shape`` (its multiple of 32 covering
the resized images); the anchors beyond each image's own 32-padded size are invalid in training,
as in a padded official batch. ``pad_shape`` is per image the official ``pad_shape`` (resized size
up to multiples of 32), which the anchor flags use.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence

import numpy as np

from lsnet_jax.data.dense import decode_color, rescale_size, resize_linear
from lsnet_jax.data.transforms import UnreadableImage


def objects(record: dict) -> dict:
    """The record's ``objects`` JSON (written by ``builders.coco_objects``)."""
    raw = record["objects"]
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


def rescale(img: np.ndarray, scale: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """mmdet's keep-ratio Resize of a decoded image: (resized image, ``scale_factor`` (w, h, w, h))."""
    h, w = img.shape[:2]
    nh, nw = rescale_size(h, w, scale)
    return resize_linear(img, (nh, nw)), np.asarray([nw / w, nh / h, nw / w, nh / h], np.float32)


def test_input(img: np.ndarray, scale: tuple[int, int], pad_shape: tuple[int, int] | None = None) -> dict:
    """The test pipeline on a decoded RGB image: resized, padded to ``pad_shape`` (default: its own
    multiples of 32, as the official single-image test), with ``img_shape`` and ``scale_factor``."""
    img, sf = rescale(img, scale)
    nh, nw = img.shape[:2]
    return {"image": _pad(img, pad_shape or (pad32(nh), pad32(nw))), "img_shape": np.asarray([nh, nw], np.int32),
            "scale_factor": sf}


def _decode(record: dict) -> tuple[np.ndarray, dict]:
    """The record's RGB image and objects; ``UnreadableImage`` if the image is not the size its
    annotations are for."""
    img = decode_color(record["image"])
    obj = objects(record)
    if img.shape[:2] != (obj["height"], obj["width"]):
        raise UnreadableImage(f"decodes to {img.shape[1]}x{img.shape[0]}, its annotations are for "
                              f"{obj['width']}x{obj['height']}")
    return img, obj


def _pad(img: np.ndarray, pad_shape: tuple[int, int]) -> np.ndarray:
    h, w = img.shape[:2]
    if h > pad_shape[0] or w > pad_shape[1]:
        raise ValueError(f"a {h}x{w} resized image does not fit the pad shape {pad_shape}: raise aug.pad_shape "
                         f"to cover aug.scale")
    out = np.zeros(tuple(pad_shape) + (3,), np.uint8)
    out[:h, :w] = img
    return out


def pad32(n: int) -> int:
    return int(math.ceil(n / 32)) * 32


@dataclasses.dataclass(frozen=True)
class DetTrainTransform:
    """One training sample: ``image (H, W, 3)`` uint8 padded to ``pad_shape``, ``img_shape (2,)``
    (the resized size), ``pad_shape (2,)`` (its multiples of 32), ``boxes (max_boxes, 4)`` float32
    in the resized (flipped) image's pixels, ``labels``, ``box_valid``."""

    scale: tuple[int, int] = (1333, 800)
    flip: float = 0.5
    pad_shape: tuple[int, int] = (1344, 1344)
    max_boxes: int = 100

    def __call__(self, record: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
        img, obj = _decode(record)
        img, sf = rescale(img, self.scale)
        nh, nw = img.shape[:2]
        boxes = np.asarray(obj["boxes"], np.float32).reshape(-1, 4) * sf
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, nw)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, nh)
        labels = np.asarray(obj["labels"], np.int32)
        if rng.random() < self.flip:
            img = img[:, ::-1]
            boxes = np.stack([nw - boxes[:, 2], boxes[:, 1], nw - boxes[:, 0], boxes[:, 3]], 1)
        k = len(boxes)
        if k > self.max_boxes:
            raise UnreadableImage(f"{k} boxes, more than aug.max_boxes={self.max_boxes}")
        out_boxes = np.zeros((self.max_boxes, 4), np.float32)
        out_labels = np.zeros(self.max_boxes, np.int32)
        out_boxes[:k], out_labels[:k] = boxes, labels
        return {"image": _pad(img, self.pad_shape), "img_shape": np.asarray([nh, nw], np.int32),
                "pad_shape": np.asarray([pad32(nh), pad32(nw)], np.int32), "boxes": out_boxes,
                "labels": out_labels, "box_valid": np.arange(self.max_boxes) < k}


@dataclasses.dataclass(frozen=True)
class DetTestTransform:
    """One evaluation sample: ``image`` padded to ``pad_shape``, ``img_shape``, ``scale_factor``
    (w, h, w, h) and ``image_id``."""

    scale: tuple[int, int] = (1333, 800)
    pad_shape: tuple[int, int] = (1344, 1344)

    def __call__(self, record: dict) -> dict[str, np.ndarray]:
        img, obj = _decode(record)
        return test_input(img, self.scale, self.pad_shape) | {"image_id": np.asarray(obj["image_id"], np.int64)}


def train_indices(source: Sequence[dict], min_size: int = 32) -> list[int]:
    """The records training uses (mmdet's ``_filter_imgs`` with filter_empty_gt): images with an
    annotation of the dataset's categories (a crowd one counts) and a shorter side of at least
    ``min_size``. Reads every record once."""
    keep = []
    for i in range(len(source)):
        obj = objects(source[i])
        if obj["has_annotation"] and min(obj["height"], obj["width"]) >= min_size:
            keep.append(i)
    return keep


class Subset(Sequence):
    """``source`` restricted to ``indices`` (random access)."""

    def __init__(self, source: Sequence[dict], indices: Sequence[int]):
        self.source, self.indices = source, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.source[self.indices[i]]


def ground_truth(source: Sequence[dict], categories: Sequence[dict]) -> dict:
    """The split's COCO ground truth (images and their annotations as the file held them) for
    COCOeval, from the records."""
    images, anns = [], []
    for i in range(len(source)):
        obj = objects(source[i])
        name = source[i].get("file_name", b"")
        images.append({"id": obj["image_id"], "height": obj["height"], "width": obj["width"],
                       "file_name": name.decode() if isinstance(name, bytes) else str(name)})
        for a in obj["annotations"]:
            anns.append({"iscrowd": 0, **a, "image_id": obj["image_id"]})
    return {"images": images, "annotations": anns, "categories": list(categories)}
