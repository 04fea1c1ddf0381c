"""Inputs for numerical checks (tests, ``convert_torch.py --check``)."""

from __future__ import annotations

import numpy as np


def diverse_images(n: int, size: int, seed: int = 0, width: int | None = None) -> np.ndarray:
    """``n`` random NCHW float32 images (``size`` x ``width or size``) that differ from each other
    as photos do.

    Plain i.i.d. noise images all pool to nearly the same features, so a BatchNorm calibrated on
    them divides by a tiny std and turns float rounding into large logit differences. These have a
    per-image brightness and contrast, low-frequency structure (an upsampled 7x7 field) and noise.
    """
    rng = np.random.default_rng(seed)
    width = width or size
    coarse = rng.standard_normal((n, 3, 7, 7))
    reps = -(-max(size, width) // 7)
    field = np.repeat(np.repeat(coarse, reps, axis=2), reps, axis=3)[:, :, :size, :width]
    offset = rng.normal(0.0, 0.7, (n, 3, 1, 1))
    contrast = rng.uniform(0.3, 1.5, (n, 1, 1, 1))
    noise = rng.standard_normal((n, 3, size, width))
    return (offset + contrast * (field + 0.5 * noise)).astype(np.float32)


def random_boxes(n: int, height: int, width: int, seed: int = 0, max_ratio: float = 3.0) -> np.ndarray:
    """``(n, 4)`` float32 boxes (x1, y1, x2, y2) for RoI-head checks: square roots of areas
    log-uniform in [8, 1.8 * max side] (every RoIAlign level P2..P5 gets some above 256 px), aspect ratios up to
    ``max_ratio``, centres anywhere in the image (some boxes cross its border)."""
    rng = np.random.default_rng(seed)
    s = np.exp(rng.uniform(np.log(8.0), np.log(1.8 * max(height, width)), n))
    r = np.exp(rng.uniform(-np.log(max_ratio), np.log(max_ratio), n))
    w, h = s * np.sqrt(r), s / np.sqrt(r)
    cx, cy = rng.uniform(0, width, n), rng.uniform(0, height, n)
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).astype(np.float32)
