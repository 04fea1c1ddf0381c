"""Semantic segmentation data on the host: ADE20K's classes, label decoding, and MMSegmentation's
train and test pipelines (``SEGMENTATION_SPEC.md``) in numpy, one sample at a time.

Train (``SegTrainTransform``): decode -> reduce_zero_label -> Resize with a ratio range (keep
ratio; bilinear image, nearest label) -> RandomCrop with cat_max_ratio -> horizontal flip ->
PhotoMetricDistortion -> pad to the crop size (label 255). Normalisation runs on the device, where
the padded region is set to 0 after normalising, as mmseg pads the normalised image with 0.
Test (``SegTestTransform``): keep-ratio resize to fit the test scale, then to multiples of 32 (the
official ``AlignResize``); the label stays at its original size for the metric.

Decoding, resizes and the HSV steps are OpenCV's own calls, as mmcv makes them (``data.dense``),
so the pixels and labels equal mmseg's (``tests/test_mmseg.py`` runs mmseg 0.30's classes beside
these). The random draws follow mmseg's order and laws, from a numpy generator seeded per sample
(so the data are a pure function of the step, as for classification); given mmseg's draws they
give its outputs.
"""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
from PIL import Image

from lsnet_jax.data.dense import decode_color, hsv_to_rgb, rescale_size, resize_linear, resize_nearest, rgb_to_hsv
from lsnet_jax.data.transforms import UnreadableImage, check_pixels

__all__ = ["rescale_size"]  # re-exported: the size rule belongs to both dense pipelines (data.dense)

IGNORE_INDEX = 255

# ADE20K's 150 classes in MMSegmentation's order and spelling (the official logs' per-class keys)
ADE20K_CLASSES = (
    'wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed ', 'windowpane', 'grass', 'cabinet',
    'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant', 'curtain', 'chair', 'car', 'water',
    'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug', 'field', 'armchair', 'seat', 'fence', 'desk',
    'rock', 'wardrobe', 'lamp', 'bathtub', 'railing', 'cushion', 'base', 'box', 'column', 'signboard',
    'chest of drawers', 'counter', 'sand', 'sink', 'skyscraper', 'fireplace', 'refrigerator', 'grandstand',
    'path', 'stairs', 'runway', 'case', 'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge',
    'bookcase', 'blind', 'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench', 'countertop', 'stove',
    'palm', 'kitchen island', 'computer', 'swivel chair', 'boat', 'bar', 'arcade machine', 'hovel', 'bus',
    'towel', 'light', 'truck', 'tower', 'chandelier', 'awning', 'streetlight', 'booth', 'television receiver',
    'airplane', 'dirt track', 'apparel', 'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle',
    'buffet', 'poster', 'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer', 'plaything',
    'swimming pool', 'stool', 'barrel', 'basket', 'waterfall', 'tent', 'bag', 'minibike', 'cradle', 'oven',
    'ball', 'food', 'step', 'tank', 'trade name', 'microwave', 'pot', 'animal', 'bicycle', 'lake',
    'dishwasher', 'screen', 'blanket', 'sculpture', 'hood', 'sconce', 'vase', 'traffic light', 'tray',
    'ashcan', 'fan', 'pier', 'crt screen', 'plate', 'monitor', 'bulletin board', 'shower', 'radiator',
    'glass', 'clock', 'flag')


def palette(n: int) -> np.ndarray:
    """``(n, 3)`` uint8 colours, distinct for every class: the PASCAL VOC bit-interleaving colour
    map (class k's bits spread over the high bits of R, G, B)."""
    out = np.zeros((n, 3), np.uint8)
    for k in range(n):
        c, r, g, b = k + 1, 0, 0, 0  # k + 1: class 0 is not black (black marks ignored pixels)
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        out[k] = (r, g, b)
    return out


def colorize(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``(H, W)`` class indices -> ``(H, W, 3)`` uint8 colours; 255 (ignored) is black."""
    pal = np.concatenate([palette(num_classes), np.zeros((256 - num_classes, 3), np.uint8)])
    return pal[labels.astype(np.uint8)]


def decode_image(data: bytes) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` as mmseg's LoadImageFromFile decodes (OpenCV, EXIF orientation
    applied: ``dense.decode_color``), or ``UnreadableImage``."""
    return decode_color(data)


def decode_label(data: bytes, reduce_zero_label: bool) -> np.ndarray:
    """A label map ``(H, W)`` uint8 from a single-channel PNG; with ``reduce_zero_label`` (ADE20K)
    0 ("other") becomes 255 (ignored) and k becomes k - 1, as mmseg's LoadAnnotations, which decodes
    labels with PIL unchanged (``imdecode_backend='pillow'``: no EXIF rotation, no conversion)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode not in ("L", "P"):
                raise UnreadableImage(f"a label map must be a single-channel (L or P) PNG, got mode {im.mode}")
            check_pixels(*im.size)
            label = np.array(im)
    except UnreadableImage:
        raise
    except Exception as e:
        raise UnreadableImage(f"{type(e).__name__}: {e}") from e
    if reduce_zero_label:
        label = label.astype(np.int16) - 1
        label[label < 0] = IGNORE_INDEX
        label = label.astype(np.uint8)
    return label


def random_crop_box(h: int, w: int, crop: tuple[int, int], rng: np.random.Generator) -> tuple[int, int, int, int]:
    """mmseg RandomCrop's box (y1, y2, x1, x2): offsets uniform in [0, max(side - crop, 0)]."""
    oy = int(rng.integers(0, max(h - crop[0], 0) + 1))
    ox = int(rng.integers(0, max(w - crop[1], 0) + 1))
    return oy, oy + crop[0], ox, ox + crop[1]


def choose_crop(label: np.ndarray, crop: tuple[int, int], cat_max_ratio: float,
                rng: np.random.Generator) -> tuple[int, int, int, int]:
    """mmseg's RandomCrop with ``cat_max_ratio``: up to 10 redraws until the crop holds more than
    one non-ignored class and none covers ``cat_max_ratio`` or more of its non-ignored pixels; after
    10 failures the last drawn box is kept."""
    h, w = label.shape
    box = random_crop_box(h, w, crop, rng)
    if cat_max_ratio < 1.0:
        for _ in range(10):
            y1, y2, x1, x2 = box
            labels, cnt = np.unique(label[y1:y2, x1:x2], return_counts=True)
            cnt = cnt[labels != IGNORE_INDEX]
            if len(cnt) > 1 and cnt.max() / cnt.sum() < cat_max_ratio:
                break
            box = random_crop_box(h, w, crop, rng)
    return box


def _convert(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """mmseg's ``convert``: ``x * alpha + beta`` clipped to [0, 255], truncated to uint8."""
    return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class PhotoMetricDistortion:
    """mmseg's PhotoMetricDistortion: brightness, then contrast first or last (a coin), saturation,
    hue; each applied with probability 1/2, in this order and with these laws."""

    brightness_delta: int = 32
    contrast_range: tuple[float, float] = (0.5, 1.5)
    saturation_range: tuple[float, float] = (0.5, 1.5)
    hue_delta: int = 18

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``img`` RGB uint8; the HSV round trips are OpenCV's (mmcv ``bgr2hsv``/``hsv2bgr``)."""
        if rng.integers(2):
            img = _convert(img, beta=rng.uniform(-self.brightness_delta, self.brightness_delta))
        mode = rng.integers(2)
        if mode == 1 and rng.integers(2):
            img = _convert(img, alpha=rng.uniform(*self.contrast_range))
        if rng.integers(2):
            hsv = rgb_to_hsv(img)
            hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(*self.saturation_range))
            img = hsv_to_rgb(hsv)
        if rng.integers(2):
            hsv = rgb_to_hsv(img)
            hsv[..., 0] = (hsv[..., 0].astype(np.int64) + rng.integers(-self.hue_delta, self.hue_delta)) % 180
            img = hsv_to_rgb(hsv)
        if mode == 0 and rng.integers(2):
            img = _convert(img, alpha=rng.uniform(*self.contrast_range))
        return img


@dataclasses.dataclass(frozen=True)
class SegTrainTransform:
    """One training sample: ``{'image' (crop, crop, 3) uint8, 'label' (crop, crop) uint8,
    'valid' (2,) int32}`` (``valid``: the un-padded height and width)."""

    scale: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    crop: tuple[int, int] = (512, 512)
    cat_max_ratio: float = 0.75
    flip: float = 0.5
    photometric: bool = True
    reduce_zero_label: bool = True

    @classmethod
    def from_config(cls, aug) -> SegTrainTransform:
        return cls(scale=tuple(aug.scale), ratio_range=tuple(aug.ratio_range), crop=tuple(aug.crop),
                   cat_max_ratio=aug.cat_max_ratio, flip=aug.flip, photometric=aug.photometric,
                   reduce_zero_label=aug.reduce_zero_label)

    def __call__(self, record: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
        img = decode_image(record["image"])
        label = decode_label(record["label"], self.reduce_zero_label)
        if img.shape[:2] != label.shape:
            raise UnreadableImage(f"image {img.shape[:2]} and label {label.shape} differ in size")
        ratio = rng.random() * (self.ratio_range[1] - self.ratio_range[0]) + self.ratio_range[0]
        size = rescale_size(*label.shape, (int(self.scale[0] * ratio), int(self.scale[1] * ratio)))
        img, label = resize_linear(img, size), resize_nearest(label, size)
        y1, y2, x1, x2 = choose_crop(label, self.crop, self.cat_max_ratio, rng)
        img, label = img[y1:y2, x1:x2], label[y1:y2, x1:x2]
        if rng.random() < self.flip:
            img, label = img[:, ::-1], label[:, ::-1]
        if self.photometric:
            img = PhotoMetricDistortion()(np.ascontiguousarray(img), rng)
        h, w = label.shape
        out_img = np.zeros(self.crop + (3,), np.uint8)
        out_lab = np.full(self.crop, IGNORE_INDEX, np.uint8)
        out_img[:h, :w], out_lab[:h, :w] = img, label
        return {"image": out_img, "label": out_lab, "valid": np.asarray([h, w], np.int32)}


def official_test_size(h: int, w: int, scale: tuple[int, int] = (2048, 512), divisor: int = 32) -> tuple[int, int]:
    """The official test size of an ``h`` x ``w`` image: keep-ratio rescale to fit ``scale``, then
    each side up to a multiple of ``divisor`` (``AlignResize``)."""
    rh, rw = rescale_size(h, w, scale)
    return int(math.ceil(rh / divisor)) * divisor, int(math.ceil(rw / divisor)) * divisor


@dataclasses.dataclass(frozen=True)
class SegTestTransform:
    """One evaluation sample: ``{'image' (H', W', 3) uint8 at the official test size, 'label'
    (H, W) uint8 at the original size}``."""

    scale: tuple[int, int] = (2048, 512)
    size_divisor: int = 32
    reduce_zero_label: bool = True

    @classmethod
    def from_config(cls, aug) -> SegTestTransform:
        return cls(scale=tuple(aug.test_scale), size_divisor=aug.size_divisor,
                   reduce_zero_label=aug.reduce_zero_label)

    def __call__(self, record: dict) -> dict[str, np.ndarray]:
        img = decode_image(record["image"])
        label = decode_label(record["label"], self.reduce_zero_label)
        if img.shape[:2] != label.shape:
            raise UnreadableImage(f"image {img.shape[:2]} and label {label.shape} differ in size")
        return {"image": self.image(img), "label": label}

    def image(self, img: np.ndarray) -> np.ndarray:
        """Two bilinear resizes, as the official pipeline: to fit the scale, then to the multiples."""
        h, w = img.shape[:2]
        img = resize_linear(img, rescale_size(h, w, self.scale))
        return resize_linear(img, official_test_size(h, w, self.scale, self.size_divisor))
