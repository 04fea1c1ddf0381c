"""Object detection data on the host: MMDetection 2.28.2's train and test pipelines
(``DETECTION_SPEC.md``, Data) in numpy + OpenCV, one sample at a time, padded to fixed shapes.

Train (``DetTrainTransform``): decode (OpenCV, as mmdet) -> keep-ratio resize to ``scale``
(``cv2.resize`` INTER_LINEAR, mmcv's size rule) with the boxes scaled by ``scale_factor`` and
clipped -> horizontal flip -> pad bottom/right with 0 to its batch shape (below). The boxes are padded to
``max_boxes`` with a mask. Normalisation runs on the device, where everything outside the resized
image is set to 0 after normalising, as mmdet pads the normalised image with 0.
Test (``DetTestTransform``): the same resize, no flip, padded to its batch shape; ``img_shape`` and
``scale_factor`` go with the image for the post-processing.

Static shapes (XLA compiles one program per input shape): every image is padded (0, bottom/right)
to one of a few ``pad_shapes`` (``batch_shape``: the smallest that holds its resized size padded
to 32, orientation-matching on a tie) and every training batch is drawn from one shape
(``sampler.group_epoch_records``, MMDetection's GroupSampler with shapes for its two aspect groups),
so a run compiles one train program per shape in use. ``pad_shapes=()`` pads every image to its
own multiples of 32, as the official single-image test: one program per distinct size, and
outputs exactly the official ones (the stage-4 attention attends over padded tokens too, so
further padding changes every output a little). ``pad_shape`` stays per image the official one
(resized size up to multiples of 32): it sets the valid anchors, as in a padded official batch.
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


def test_input(img: np.ndarray, scale: tuple[int, int], pad_shapes: Sequence[tuple[int, int]] = ()) -> dict:
    """The test pipeline on a decoded RGB image: resized, padded to its ``batch_shape`` (with no
    ``pad_shapes``: its own multiples of 32, as the official single-image test), with
    ``img_shape``, ``scale_factor`` and ``ori_shape`` (the decoded image's, where masks are pasted)."""
    ori = np.asarray(img.shape[:2], np.int32)
    img, sf = rescale(img, scale)
    nh, nw = img.shape[:2]
    return {"image": _pad(img, batch_shape(nh, nw, pad_shapes)), "img_shape": np.asarray([nh, nw], np.int32),
            "scale_factor": sf, "ori_shape": ori}


def batch_shape(resized_h: int, resized_w: int, pad_shapes: Sequence[tuple[int, int]] = ()) -> tuple[int, int]:
    """The padded (H, W) an image resized to ``resized_h x resized_w`` is batched at: the smallest
    (by area) of ``pad_shapes`` holding its 32-padded size, on a tie one of its orientation
    (MMDetection's aspect flag ``w / h > 1``), then the first listed; with no ``pad_shapes`` its
    32-padded size itself. ``ValueError`` naming the size if none holds it."""
    own = (pad32(resized_h), pad32(resized_w))
    if not pad_shapes:
        return own
    wide = resized_w > resized_h
    fits = [(h * w, (w > h) != wide, i) for i, (h, w) in enumerate(pad_shapes) if h >= own[0] and w >= own[1]]
    if not fits:
        raise ValueError(f"a {resized_h}x{resized_w} resized image (padded {own[0]}x{own[1]}) fits none of the pad "
                         f"shapes {[tuple(p) for p in pad_shapes]}: add one that covers aug.scale")
    h, w = pad_shapes[min(fits)[2]]
    return int(h), int(w)


def record_shape(height: int, width: int, scale: tuple[int, int], pad_shapes: Sequence[tuple[int, int]] = ()
                 ) -> tuple[int, int]:
    """``batch_shape`` of an image of ``height x width`` before the resize to ``scale``."""
    return batch_shape(*rescale_size(height, width, scale), pad_shapes)


def shape_groups(sizes: Sequence[tuple[int, int]], scale: tuple[int, int],
                 pad_shapes: Sequence[tuple[int, int]] = ()) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Per record (``(height, width)`` as stored) the index of its batch shape in the returned
    list of shapes in use (sorted): the sampler's groups, one compiled program each."""
    shapes = [record_shape(h, w, scale, pad_shapes) for h, w in sizes]
    used = sorted(set(shapes))
    index = {s: i for i, s in enumerate(used)}
    return np.asarray([index[s] for s in shapes], np.int32), used


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
        raise ValueError(f"a {h}x{w} resized image does not fit the pad shape {pad_shape}")
    out = np.zeros(tuple(pad_shape) + (3,), np.uint8)
    out[:h, :w] = img
    return out


def pad32(n: int) -> int:
    return int(math.ceil(n / 32)) * 32


def instance_masks(obj: dict, resized: tuple[int, int], shape: tuple[int, int], max_boxes: int,
                   flipped: bool) -> np.ndarray:
    """``(max_boxes, H, W)`` uint8: the record's instance masks (RLE at the original size, one per
    kept box, in the boxes' order) resized nearest to ``resized``, flipped, padded to ``shape``."""
    from pycocotools import mask as mask_utils

    from lsnet_jax.data.dense import resize_nearest

    rles = obj.get("masks") or []
    if len(rles) != len(obj["boxes"]):
        raise UnreadableImage(f"{len(obj['boxes'])} boxes but {len(rles)} masks")
    out = np.zeros((max_boxes, *shape), np.uint8)
    nh, nw = resized
    for i, rle in enumerate(rles):
        size = [int(v) for v in rle["size"]]
        if size != [obj["height"], obj["width"]]:
            raise UnreadableImage(f"a mask of size {size} on a {obj['height']}x{obj['width']} image")
        counts = rle["counts"].encode() if isinstance(rle["counts"], str) else rle["counts"]
        m = resize_nearest(np.ascontiguousarray(mask_utils.decode({"size": size, "counts": counts})), (nh, nw))
        out[i, :nh, :nw] = m[:, ::-1] if flipped else m
    return out


@dataclasses.dataclass(frozen=True)
class DetTrainTransform:
    """One training sample: ``image (H, W, 3)`` uint8 padded to its ``batch_shape``, ``img_shape (2,)``
    (the resized size), ``pad_shape (2,)`` (its multiples of 32), ``boxes (max_boxes, 4)`` float32
    in the resized (flipped) image's pixels, ``labels``, ``box_valid``; with ``with_masks`` also
    ``masks (max_boxes, H, W)`` uint8, each box's instance mask decoded from its RLE at the original
    size, resized nearest (mmdet's ``BitmapMasks.rescale``), flipped and padded with 0 as the image."""

    scale: tuple[int, int] = (1333, 800)
    flip: float = 0.5
    pad_shapes: tuple[tuple[int, int], ...] = ()  # (): each image at its own multiples of 32
    max_boxes: int = 100
    with_masks: bool = False

    def __call__(self, record: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
        img, obj = _decode(record)
        img, sf = rescale(img, self.scale)
        nh, nw = img.shape[:2]
        boxes = np.asarray(obj["boxes"], np.float32).reshape(-1, 4) * sf
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, nw)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, nh)
        labels = np.asarray(obj["labels"], np.int32)
        flipped = bool(rng.random() < self.flip)
        if flipped:
            img = img[:, ::-1]
            boxes = np.stack([nw - boxes[:, 2], boxes[:, 1], nw - boxes[:, 0], boxes[:, 3]], 1)
        k = len(boxes)
        if k > self.max_boxes:
            raise UnreadableImage(f"{k} boxes, more than aug.max_boxes={self.max_boxes}")
        out_boxes = np.zeros((self.max_boxes, 4), np.float32)
        out_labels = np.zeros(self.max_boxes, np.int32)
        out_boxes[:k], out_labels[:k] = boxes, labels
        shape = batch_shape(nh, nw, self.pad_shapes)
        out = {"image": _pad(img, shape), "img_shape": np.asarray([nh, nw], np.int32),
               "pad_shape": np.asarray([pad32(nh), pad32(nw)], np.int32), "boxes": out_boxes,
               "labels": out_labels, "box_valid": np.arange(self.max_boxes) < k}
        if self.with_masks:
            out["masks"] = instance_masks(obj, (nh, nw), shape, self.max_boxes, flipped)
        return out


@dataclasses.dataclass(frozen=True)
class DetTestTransform:
    """One evaluation sample: ``image`` padded to its ``batch_shape`` (default: its own multiples
    of 32, as the official test), ``img_shape``, ``scale_factor`` (w, h, w, h) and ``image_id``."""

    scale: tuple[int, int] = (1333, 800)
    pad_shapes: tuple[tuple[int, int], ...] = ()

    def __call__(self, record: dict) -> dict[str, np.ndarray]:
        img, obj = _decode(record)
        return test_input(img, self.scale, self.pad_shapes) | {"image_id": np.asarray(obj["image_id"], np.int64)}


def train_indices(source: Sequence[dict], min_size: int = 32) -> tuple[list[int], list[tuple[int, int]]]:
    """The records training uses (mmdet's ``_filter_imgs`` with filter_empty_gt): images with an
    annotation of the dataset's categories (a crowd one counts) and a shorter side of at least
    ``min_size``, and their ``(height, width)``. Reads every record once."""
    keep, sizes = [], []
    for i in range(len(source)):
        obj = objects(source[i])
        if obj["has_annotation"] and min(obj["height"], obj["width"]) >= min_size:
            keep.append(i)
            sizes.append((int(obj["height"]), int(obj["width"])))
    return keep, sizes


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


def padding_stats(sizes: Sequence[tuple[int, int]], scale: tuple[int, int], pad_shapes: Sequence[tuple[int, int]],
                  per_gpu: int = 2, seed: int = 0) -> dict:
    """What ``pad_shapes`` costs against the official batches on images of ``sizes`` (height, width
    as stored): pixels per image resized (``valid``), padded to its own multiples of 32
    (``own``), in an official batch (``official``: ``per_gpu`` images of one aspect group, drawn
    at random as the GroupSampler does, padded to their largest H and W) and padded to its batch
    shape here (``ours``); ``programs``: the shapes in use, with their image counts."""
    resized = np.asarray([rescale_size(h, w, scale) for h, w in sizes], np.int64)
    own = np.stack([[pad32(h) for h in resized[:, 0]], [pad32(w) for w in resized[:, 1]]], 1)
    ours = np.asarray([batch_shape(int(h), int(w), pad_shapes) for h, w in resized], np.int64)
    rng = np.random.default_rng(seed)
    official = np.zeros(len(sizes), np.int64)
    wide = resized[:, 1] > resized[:, 0]
    for flag in (False, True):
        idx = rng.permutation(np.flatnonzero(wide == flag))
        for start in range(0, len(idx), per_gpu):
            b = idx[start:start + per_gpu]
            official[b] = own[b, 0].max() * own[b, 1].max()
    shapes, counts = np.unique(ours, axis=0, return_counts=True)
    return {"images": len(sizes), "valid": int(resized.prod(1).sum()), "own": int(own.prod(1).sum()),
            "official": int(official.sum()), "ours": int(ours.prod(1).sum()),
            "programs": [((int(h), int(w)), int(c)) for (h, w), c in zip(shapes, counts)]}
