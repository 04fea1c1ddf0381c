"""Batch operations on the device: normalisation, RandomErasing's noise, Mixup / CutMix.

The host ships uint8 images (4x fewer bytes than float32, and no host time spent on arithmetic);
``normalize`` and ``erase`` finish timm's per-image transform inside the jit-compiled step, where
XLA fuses them into the first convolution's input.

Mixup / CutMix with label smoothing follow timm's per-batch semantics.

timm's ``Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode='batch',
label_smoothing=0.1)``: per batch, with probability ``prob`` mix; CutMix with probability
``switch_prob`` (lambda ~ Beta(cutmix_alpha)), else Mixup (lambda ~ Beta(mixup_alpha)). Each image
is mixed with the batch reversed (``x.flip(0)``). CutMix pastes a box of area ``(1 - lambda)``
(centre uniform, clipped at the borders) and corrects lambda to the pasted area. Targets are the
smoothed one-hots mixed with the same lambda. Written here (not taken from timm) because timm's
is torch code; this one is a pure function of a PRNG key, so it is jit-compiled with the step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def normalize(images: Array, mean, std) -> Array:
    """uint8 NHWC -> float32, ``(x / 255 - mean) / std``."""
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return images.astype(jnp.float32) * (1.0 / (255.0 * std)) - mean / std


def erase(key: Array, images: Array, boxes: Array) -> Array:
    """Fill each image's box ``(top, left, h, w)`` (h = 0: none) with N(0, 1) noise, per pixel and
    channel, as timm's RandomErasing in 'pixel' mode does after normalisation.

    On CPU the noise is drawn inside a conditional on whether any image has a box: XLA:CPU fused
    the noise into mixup, whose partner is the reversed batch, and so computed it twice (160 ms
    against 71 ms for normalise + erase + mixup at batch 32, 224 px); the conditional's result is
    materialised once, and a batch without boxes draws none. Other backends keep one fusion."""
    if jax.default_backend() == "cpu":
        return lax.cond(jnp.any(boxes[:, 2] > 0), lambda x: _erase(key, x, boxes), lambda x: x, images)
    return _erase(key, images, boxes)


def _erase(key: Array, images: Array, boxes: Array) -> Array:
    n, height, width, chans = images.shape
    ys = jnp.arange(height)[None, :, None]
    xs = jnp.arange(width)[None, None, :]
    top, left, h, w = (boxes[:, i, None, None] for i in range(4))
    mask = (ys >= top) & (ys < top + h) & (xs >= left) & (xs < left + w)
    noise = jax.random.normal(key, images.shape, images.dtype)
    return jnp.where(mask[..., None], noise, images)


def smooth_one_hot(labels: Array, num_classes: int, smoothing: float) -> Array:
    off = smoothing / num_classes
    return jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + off


def cutmix_box(key: Array, height: int, width: int, lam: Array) -> tuple[Array, Array]:
    """timm's ``rand_bbox`` + lambda correction: a boolean (H, W) mask of the pasted box and the
    corrected lambda (1 - box area / image area)."""
    ratio = jnp.sqrt(1.0 - lam)
    cut_h, cut_w = (height * ratio).astype(jnp.int32), (width * ratio).astype(jnp.int32)
    ky, kx = jax.random.split(key)
    cy = jax.random.randint(ky, (), 0, height)
    cx = jax.random.randint(kx, (), 0, width)
    y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
    x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
    ys, xs = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    mask = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
    lam = 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (height * width)
    return mask, lam


def mixup_cutmix(key: Array, images: Array, labels: Array, num_classes: int, mixup_alpha: float = 0.8,
                 cutmix_alpha: float = 1.0, prob: float = 1.0, switch_prob: float = 0.5,
                 label_smoothing: float = 0.1) -> tuple[Array, Array]:
    """Mix an NHWC batch and its integer labels; returns (images, soft targets (N, classes)).

    With both alphas 0 (or ``prob`` 0) this is label smoothing only. The batch partner is the
    reversed batch, over the whole (global) batch.
    """
    k_apply, k_switch, k_mix, k_cut, k_box = jax.random.split(key, 5)
    targets = smooth_one_hot(labels, num_classes, label_smoothing)
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return images, targets
    apply = jax.random.uniform(k_apply) < prob
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = jax.random.uniform(k_switch) < switch_prob
    else:
        use_cutmix = jnp.asarray(cutmix_alpha > 0)
    lam_mix = jax.random.beta(k_mix, mixup_alpha, mixup_alpha) if mixup_alpha > 0 else jnp.float32(1)
    lam_cut = jax.random.beta(k_cut, cutmix_alpha, cutmix_alpha) if cutmix_alpha > 0 else jnp.float32(1)
    height, width = images.shape[1:3]
    mask, lam_box = cutmix_box(k_box, height, width, lam_cut)
    partner = images[::-1]
    mixed = jnp.where(use_cutmix, jnp.where(mask[None, :, :, None], partner, images),
                      lam_mix.astype(images.dtype) * images + (1 - lam_mix).astype(images.dtype) * partner)
    lam = jnp.where(use_cutmix, lam_box, lam_mix)
    lam = jnp.where(apply, lam, 1.0)
    images = jnp.where(apply, mixed, images)
    return images, lam * targets + (1.0 - lam) * targets[::-1]
