"""Training augmentation on the device: RandomErasing's noise, Mixup / CutMix.

The host ships uint8 images (4x fewer bytes than float32, and no host time spent on arithmetic);
``lsnet_jax.data.normalize`` and ``erase`` finish timm's per-image transform inside the
jit-compiled step, where XLA fuses them into the first convolution's input.

Mixup / CutMix with label smoothing follow timm's per-batch semantics, drawn per BatchNorm group
when the run sets ``bn_group_size`` (the official per-GPU draw).

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


def erase(key: Array, images: Array, boxes: Array, compact: bool) -> Array:
    """Fill each image's box ``(top, left, h, w)`` (h = 0: none) with N(0, 1) noise, per pixel and
    channel, as timm's RandomErasing in 'pixel' mode does after normalisation.

    ``compact`` (what the training step sets for ``impl="xla_cpu"``) draws only the noise the
    boxes use (``_erase_compact``): N(0, 1) for every pixel of a 32x224x224x3 batch costs 46 ms on
    a 2-core CPU, while at the recipe's rate (a box on a
    quarter of the images, at most a third of the image) the boxes cover about 1.4 images' worth.
    A batch without boxes draws nothing; one with more boxes than that path has room for, or a box
    larger than a third of the image, draws noise for every pixel (``_erase``). The conditional's
    result is materialised once (XLA:CPU otherwise fused the noise into mixup, whose partner is
    the reversed batch, and drew it twice). Otherwise every pixel's noise is drawn in one fused
    kernel, which costs GPUs and TPUs little. Both draw each erased value as its own N(0, 1)
    sample, from different streams of the key."""
    if not compact:
        return _erase(key, images, boxes)
    n, height, width, _ = images.shape
    area = boxes[:, 2] * boxes[:, 3]
    count = jnp.sum(area > 0)
    fits = (count <= _compact_slots(n)) & (jnp.max(area) <= _compact_pixels(height, width))
    branch = jnp.where(count == 0, 0, jnp.where(fits, 1, 2))
    return lax.switch(branch, [lambda x: x, lambda x: _erase_compact(key, x, boxes),
                               lambda x: _erase(key, x, boxes)], images)


def _box_mask(boxes: Array, height: int, width: int) -> tuple[Array, ...]:
    """``(N, H, W)`` mask of each image's box, and the box's rows and columns broadcastable to it."""
    ys = jnp.arange(height)[None, :, None]
    xs = jnp.arange(width)[None, None, :]
    top, left, h, w = (boxes[:, i, None, None] for i in range(4))
    return (ys >= top) & (ys < top + h) & (xs >= left) & (xs < left + w), ys - top, xs - left, w


def _erase(key: Array, images: Array, boxes: Array) -> Array:
    mask = _box_mask(boxes, *images.shape[1:3])[0]
    noise = jax.random.normal(key, images.shape, images.dtype)
    return jnp.where(mask[..., None], noise, images)


def _compact_slots(n: int) -> int:
    return max(1, n // 2)  # at the recipe's rate (0.25) more than half the batch erased is rare


def _compact_pixels(height: int, width: int) -> int:
    # the largest box timm's RandomErasing draws at its default area (<= 1/3), with the rounding
    # of h and w
    return height * width // 3 + height + width


def _erase_compact(key: Array, images: Array, boxes: Array) -> Array:
    """``_erase`` for batches whose boxes fit: the k-th image with a box takes its noise from row k
    of an ``(N/2, H*W/3 + H + W, C)`` draw, pixel ``(y, x)`` of the box from position
    ``(y - top) * w + (x - left)``: every erased value is its own N(0, 1) sample, as in ``_erase``."""
    n, height, width, chans = images.shape
    slots, pixels = _compact_slots(n), _compact_pixels(height, width)
    mask, dy, dx, w = _box_mask(boxes, height, width)
    slot = jnp.clip(jnp.cumsum(boxes[:, 2] * boxes[:, 3] > 0) - 1, 0, slots - 1)
    index = jnp.where(mask, slot[:, None, None] * pixels + dy * w + dx, 0)
    noise = jax.random.normal(key, (slots * pixels, chans), images.dtype)
    filled = jnp.take(noise, index.reshape(-1), axis=0).reshape(images.shape)
    return jnp.where(mask[..., None], filled, images)


def smooth_one_hot(labels: Array, num_classes: int, smoothing: float) -> Array:
    off = smoothing / num_classes
    return jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + off


def cutmix_box(key: Array, height: int, width: int, lam: Array) -> tuple[Array, Array]:
    """timm's ``rand_bbox`` + lambda correction: a boolean (H, W) mask of the pasted box and the
    corrected lambda (1 - box area / image area); the box centre is uniform over the pixels."""
    ky, kx = jax.random.split(key)
    cy = jax.random.randint(ky, (), 0, height)
    cx = jax.random.randint(kx, (), 0, width)
    return cutmix_box_at(cy, cx, height, width, lam)


def cutmix_box_at(cy: Array, cx: Array, height: int, width: int, lam: Array) -> tuple[Array, Array]:
    """The box of ``cutmix_box`` centred at pixel ``(cy, cx)``: sides ``int(side * sqrt(1 - lam))``,
    half of each on either side of the centre, clipped at the borders."""
    ratio = jnp.sqrt(1.0 - lam)
    cut_h, cut_w = (height * ratio).astype(jnp.int32), (width * ratio).astype(jnp.int32)
    y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
    x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
    ys, xs = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    mask = (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)
    lam = 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (height * width)
    return mask, lam


def mix_with(images: Array, targets: Array, use_cutmix: Array, lam: Array, mask: Array) -> tuple[Array, Array]:
    """Mix a batch with its reverse at a given draw: CutMix pastes the partner's ``mask`` region
    (``lam`` already corrected to the box), Mixup blends ``lam * x + (1 - lam) * partner``; the
    targets are mixed with the same ``lam``."""
    partner = images[::-1]
    mixed = jnp.where(use_cutmix, jnp.where(mask[None, :, :, None], partner, images),
                      lam.astype(images.dtype) * images + (1 - lam).astype(images.dtype) * partner)
    return mixed, lam * targets + (1.0 - lam) * targets[::-1]


def mixup_cutmix(key: Array, images: Array, labels: Array, num_classes: int, mixup_alpha: float = 0.8,
                 cutmix_alpha: float = 1.0, prob: float = 1.0, switch_prob: float = 0.5,
                 label_smoothing: float = 0.1, group_size: int | None = None) -> tuple[Array, Array]:
    """Mix an NHWC batch and its integer labels; returns (images, soft targets (N, classes)).

    With both alphas 0 (or ``prob`` 0) this is label smoothing only. Without ``group_size`` one
    draw mixes the whole (global) batch with its reverse. With ``group_size`` each consecutive
    group of that many images (a BatchNorm group: the official per-GPU batch) draws its own
    lambda, mode and box and is mixed with its own reverse, as the official code's per-GPU Mixup.
    """
    if group_size is not None and group_size != images.shape[0]:
        n = images.shape[0]
        if n % group_size:
            raise ValueError(f"the batch of {n} is not a whole number of {group_size}-image groups")
        g = n // group_size
        keys = jax.random.split(key, g)
        mix = jax.vmap(lambda k, x, y: mixup_cutmix(k, x, y, num_classes, mixup_alpha, cutmix_alpha, prob,
                                                    switch_prob, label_smoothing))
        out, targets = mix(keys, images.reshape((g, group_size) + images.shape[1:]),
                           labels.reshape(g, group_size))
        return out.reshape(images.shape), targets.reshape(n, num_classes)
    targets = smooth_one_hot(labels, num_classes, label_smoothing)
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return images, targets
    use_cutmix, lam, mask = mix_draw(key, images.shape[1], images.shape[2], mixup_alpha, cutmix_alpha, prob,
                                     switch_prob)
    return mix_with(images, targets, use_cutmix, lam, mask)


def mix_draw(key: Array, height: int, width: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
             prob: float = 1.0, switch_prob: float = 0.5) -> tuple[Array, Array, Array]:
    """One batch's draw, as timm's ``Mixup._params_per_batch`` + ``cutmix_bbox_and_lam``:
    ``(use_cutmix, lam, box mask)``; lam is 1 when the batch is not mixed (probability 1 - prob)
    and corrected to the box's area for CutMix."""
    k_apply, k_switch, k_mix, k_cut, k_box = jax.random.split(key, 5)
    apply = jax.random.uniform(k_apply) < prob
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = jax.random.uniform(k_switch) < switch_prob
    else:
        use_cutmix = jnp.asarray(cutmix_alpha > 0)
    lam_mix = jax.random.beta(k_mix, mixup_alpha, mixup_alpha) if mixup_alpha > 0 else jnp.float32(1)
    lam_cut = jax.random.beta(k_cut, cutmix_alpha, cutmix_alpha) if cutmix_alpha > 0 else jnp.float32(1)
    mask, lam_box = cutmix_box(k_box, height, width, lam_cut)
    lam = jnp.where(apply, jnp.where(use_cutmix, lam_box, lam_mix), 1.0)
    return use_cutmix & apply, lam, mask
