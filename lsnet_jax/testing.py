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
