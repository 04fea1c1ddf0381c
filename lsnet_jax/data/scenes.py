"""Digit scenes: the small defaults' data for dense prediction (segmentation now, detection next),
made from scikit-learn's handwritten digits with no download.

One generator (``digit_scene``) gives each scene's image, its semantic label map and its instances
(boolean masks, tight boxes, digit labels), so the segmentation dataset (``lsnet_seg_digits``) and
the detection one read the same scenes. The draw follows DETECTION_SPEC.md's "Small default"
section step for step (so its calibration figures hold for these scenes): a dark textured
background, then 1-3 digits, each in a free square window (digits never overlap), thickened
strokes, bright random colours.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageFilter

SCENE_SIZE = 128
GLYPH_SEED = 0  # the permutation of the 1,797 glyphs; the first fifth are the test glyphs


@dataclasses.dataclass(frozen=True)
class Scene:
    image: np.ndarray  # (H, W, 3) uint8
    label: np.ndarray  # (H, W) uint8: 0 background, digit + 1 under its ink
    masks: np.ndarray  # (K, H, W) bool, one per instance
    boxes: np.ndarray  # (K, 4) float32 (xmin, ymin, xmax, ymax), xmax/ymax exclusive (COCO's x + w)
    digits: np.ndarray  # (K,) int64, 0-9


def glyph_split() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((train glyphs, their digits), (test glyphs, their digits)): scikit-learn's 8x8 digits (0-16),
    80/20 by a fixed permutation, so no test scene holds a glyph a model was trained on."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(GLYPH_SEED).permutation(len(digits.target))
    n_test = len(order) // 5
    test, train = order[:n_test], order[n_test:]
    return (digits.images[train], digits.target[train]), (digits.images[test], digits.target[test])


def digit_scene(glyphs: np.ndarray, digits: np.ndarray, rng: np.random.Generator, size: int = SCENE_SIZE,
                count: tuple[int, int] = (1, 4), side: tuple[int, int] = (32, 80), tries: int = 20) -> Scene:
    """One ``size`` x ``size`` scene. Background: a 4x4 field of dark colours (0-110) resized bicubic,
    plus Gaussian noise (sigma 8). Then ``rng.integers(*count)`` digits; each draws up to ``tries``
    square windows of side ``rng.integers(*side)`` until one is free of earlier digits (else the
    digit is left out), a glyph, and a colour (170-255 per channel); the glyph is resized bicubic to
    the window, its strokes thickened (a max filter of 1/8 of the side, so a stroke spans a cell of
    a 1/8-resolution output) and blended in (alpha = ink / 128, clipped). The instance mask is
    alpha > 0.5; the semantic label is the digit + 1 there."""
    coarse = rng.uniform(0, 110, (4, 4, 3)).astype(np.uint8)
    bg = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), np.float32)
    img = np.clip(bg + rng.normal(0, 8, bg.shape), 0, 255)
    occupied = np.zeros((size, size), bool)
    label = np.zeros((size, size), np.uint8)
    masks, boxes, labels = [], [], []
    for _ in range(int(rng.integers(*count))):
        for _ in range(tries):
            s = int(rng.integers(*side))
            y, x = (int(v) for v in rng.integers(0, size - s + 1, 2))
            if not occupied[y:y + s, x:x + s].any():
                break
        else:
            continue
        k = int(rng.integers(len(glyphs)))
        ink = Image.fromarray((glyphs[k] * (255 / 16)).astype(np.uint8)).resize((s, s), Image.Resampling.BICUBIC)
        ink = ink.filter(ImageFilter.MaxFilter(2 * (s // 16) + 1))
        alpha = np.clip(np.asarray(ink, np.float32)[..., None] / 128.0, 0.0, 1.0)
        colour = rng.uniform(170, 255, 3)
        img[y:y + s, x:x + s] = img[y:y + s, x:x + s] * (1 - alpha) + colour * alpha
        occupied[y:y + s, x:x + s] = True
        mask = np.zeros((size, size), bool)
        mask[y:y + s, x:x + s] = alpha[..., 0] > 0.5
        if not mask.any():
            continue
        ys, xs = np.nonzero(mask)
        masks.append(mask)
        boxes.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
        labels.append(int(digits[k]))
        label[mask] = digits[k] + 1
    return Scene(np.round(img).astype(np.uint8), label, np.asarray(masks, bool).reshape(-1, size, size),
                 np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64))
