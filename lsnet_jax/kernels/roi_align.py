"""RoIAlign as MMCV (``aligned=True``, ``sampling_ratio=0``, average pooling) and torchvision's
``roi_align(..., aligned=True)`` compute it (``DETECTION_SPEC.md``, "RoI head"), in two forms held
equal by the tests, with static shapes: a fixed number of RoIs, any of them invalid.

The definition, per RoI on its level (spatial scale ``1 / stride``): ``x1' = x1 * scale - 0.5``
(same for y1, x2, y2), bin ``bw = (x2' - x1') / out``, ``gw = ceil((x2' - x1') / out)`` samples per
bin along x (adaptive: it varies per RoI), at ``x1' + pw * bw + (ix + 0.5) * bw / gw``; each sample
bilinear (zero if ``y < -1`` or ``y > H``, same for x; negatives clamped to 0; a sample at or past
the last row or column reads that row or column), the bin the mean of its ``gh * gw`` samples
(``count = max(gh * gw, 1)``). The sample grid is a product grid and the bilinear weights factor
into a row weight times a column weight, so each RoI's output is ``Ay @ F @ Ax^T`` per channel with
``Ay (out, H)`` and ``Ax (out, W)`` the summed sample weights of each output row / column.

How the adaptive sample count is bounded under static shapes:

- ``roi_align_points`` (the reference form) evaluates ``max_samples`` samples per bin and axis
  and masks those past ``gh`` / ``gw``; exact for every RoI whose bins need at most
  ``max_samples`` samples. ``max_samples=None`` takes the exact bound from concrete boxes (not
  under ``jit``). Its cost is ``(out * max_samples * 2)^2`` gathered feature vectors per RoI.
- ``roi_align_window`` (the fast form) gathers one patch of the RoI's level around the RoI,
  ``short x long`` feature pixels (32 x 64 by default) oriented along the RoI's sides, and
  contracts it with the two weight matrices restricted to the patch: two matrix products per RoI
  instead of per-sample gathers. Exact for every RoI that spans at most ``short - 1`` feature
  pixels across and ``long - 1`` along (``fits`` says which did); the samples of a larger RoI that
  fall outside the patch are dropped (a smaller output, never garbage). With the
  ``finest_scale`` mapping (``roi_levels``) a RoI of P2-P4 has ``sqrt(w * h)`` under 28 feature
  pixels, so every one with an aspect ratio up to 5 fits (``28 * sqrt(5) < 63``), and more
  elongated ones fit while small for their level; on P5 every RoI up to 992 x 2016 input pixels
  fits (an 800 x 1333 image's whole extent).

Both take the levels as one list of ``(H_l, W_l, C)`` maps and per RoI its level: the levels are
flattened into one array and each RoI gathers from its own, so the cost does not grow with the
number of levels. Gradients flow to the features (by autodiff: the transposed gathers add each
sample's weights back, as torchvision's backward does), not to the boxes (proposals carry none).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def roi_levels(boxes: Array, num_levels: int = 4, finest_scale: float = 56.0) -> Array:
    """MMDetection's ``SingleRoIExtractor.map_roi_levels``: ``floor(log2(sqrt(w * h) / 56 + 1e-6))``
    clamped to ``[0, num_levels - 1]`` (P2 below 112 px, P3 below 224, P4 below 448, else P5)."""
    scale = jnp.sqrt((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]))
    level = jnp.floor(jnp.log2(scale / finest_scale + 1e-6))
    return jnp.clip(level, 0, num_levels - 1).astype(jnp.int32)


def _flatten_levels(feats: Sequence[Array]) -> tuple[Array, np.ndarray, np.ndarray, np.ndarray]:
    """(all levels as one ``(sum H_l W_l, C)`` array, each level's row offset, H and W)."""
    sizes = np.asarray([f.shape[:2] for f in feats], np.int32)
    offsets = np.concatenate([[0], np.cumsum(sizes[:, 0] * sizes[:, 1])[:-1]]).astype(np.int32)
    flat = jnp.concatenate([f.reshape(-1, f.shape[-1]) for f in feats])
    return flat, offsets, sizes[:, 0], sizes[:, 1]


def _roi_geometry(boxes: Array, scale: Array, out: int) -> tuple[Array, Array, Array, Array, Array, Array]:
    """Per RoI the aligned start, bin size and samples per bin along y and x."""
    x1, y1 = boxes[..., 0] * scale - 0.5, boxes[..., 1] * scale - 0.5
    x2, y2 = boxes[..., 2] * scale - 0.5, boxes[..., 3] * scale - 0.5
    bin_h, bin_w = (y2 - y1) / out, (x2 - x1) / out
    grid_h = jnp.maximum(jnp.ceil(bin_h), 0).astype(jnp.int32)  # ceil(roi_h / out); none for empty RoIs
    grid_w = jnp.maximum(jnp.ceil(bin_w), 0).astype(jnp.int32)
    return y1, x1, bin_h, bin_w, grid_h, grid_w


def _axis_samples(start: Array, bin_size: Array, grid: Array, size: Array, out: int, samples: int
                  ) -> tuple[Array, Array, Array, Array]:
    """One RoI's samples along one axis: ``(out, samples)`` low and high indices and their weights
    (zero for samples past ``grid`` and outside ``[-1, size]``), torchvision's bilinear rules."""
    i = jnp.arange(samples, dtype=jnp.float32)
    p = jnp.arange(out, dtype=jnp.float32)[:, None]
    g = jnp.maximum(grid, 1).astype(jnp.float32)
    pos = start + p * bin_size + (i + 0.5) * bin_size / g
    ok = (i < grid) & (pos >= -1.0) & (pos <= size.astype(jnp.float32))
    pos = jnp.maximum(pos, 0.0)
    low = jnp.floor(pos).astype(jnp.int32)
    edge = low >= size - 1
    low = jnp.where(edge, size - 1, low)
    high = jnp.where(edge, size - 1, low + 1)
    frac = jnp.where(edge, 0.0, pos - low.astype(jnp.float32))
    return low, high, jnp.where(ok, 1.0 - frac, 0.0), jnp.where(ok, frac, 0.0)


def _level_meta(levels: Array, offsets, heights, widths, strides) -> tuple[Array, Array, Array, Array]:
    pick = lambda table, dtype: jnp.asarray(np.asarray(table), dtype)[levels]  # noqa: E731
    return (pick(offsets, jnp.int32), pick(heights, jnp.int32), pick(widths, jnp.int32),
            pick([1.0 / s for s in strides], jnp.float32))


def exact_samples(boxes: np.ndarray, levels: np.ndarray, strides: Sequence[int], out: int) -> int:
    """The largest per-bin sample count along either axis over concrete RoIs: the
    ``max_samples`` that makes ``roi_align_points`` exact for them."""
    boxes, levels = np.asarray(boxes, np.float32), np.asarray(levels)
    scale = np.float32(1.0) / np.asarray(strides, np.float32)[levels]
    extent = np.maximum(boxes[..., 2:] - boxes[..., :2], 0) * scale[..., None]
    return max(1, int(np.ceil(extent.max(initial=0.0) / out)))


def roi_align_points(feats: Sequence[Array], boxes: Array, levels: Array, strides: Sequence[int],
                     out: int, max_samples: int | None = None) -> Array:
    """The reference form: ``(R, out, out, C)`` for ``boxes (R, 4)`` in input pixels on
    ``feats[levels]`` (each ``(H_l, W_l, C)``, stride ``strides[l]``), sample by sample."""
    if max_samples is None:
        if isinstance(boxes, jax.core.Tracer) or isinstance(levels, jax.core.Tracer):
            raise ValueError("roi_align_points under jit needs max_samples (the per-bin sample bound)")
        max_samples = exact_samples(boxes, levels, strides, out)
    flat, offsets, heights, widths = _flatten_levels(feats)
    boxes = jax.lax.stop_gradient(jnp.asarray(boxes, jnp.float32))
    off, h, w, scale = _level_meta(jnp.asarray(levels), offsets, heights, widths, strides)

    def one(box, off, h, w, scale):
        y1, x1, bh, bw, gh, gw = _roi_geometry(box, scale, out)
        yl, yh, wyl, wyh = _axis_samples(y1, bh, gh, h, out, max_samples)  # (out, S)
        xl, xh, wxl, wxh = _axis_samples(x1, bw, gw, w, out, max_samples)
        rows = jnp.stack([yl, yh], -1)  # (out, S, 2)
        cols = jnp.stack([xl, xh], -1)
        wy = jnp.stack([wyl, wyh], -1)
        wx = jnp.stack([wxl, wxh], -1)
        idx = off + rows[:, :, :, None, None, None] * w + cols[None, None, None]  # (out, S, 2, out, S, 2)
        vals = flat[idx]  # (out, S, 2, out, S, 2, C)
        acc = jnp.einsum("aij,bkl,aijbklc->abc", wy, wx, vals.astype(jnp.float32))
        count = jnp.maximum(gh * gw, 1).astype(jnp.float32)
        return (acc / count).astype(flat.dtype)

    return jax.vmap(one)(boxes, off, h, w, scale)


def roi_align_window(feats: Sequence[Array], boxes: Array, levels: Array, strides: Sequence[int],
                     out: int, window: tuple[int, int] = (32, 64), chunk: int = 64) -> tuple[Array, Array]:
    """The fast form: ``(R, out, out, C)`` as ``roi_align_points``, and ``fits (R,)``: whether the
    RoI lay inside its patch (then the output is exact). ``window = (short, long)``: each RoI reads a
    patch ``short`` feature pixels along its shorter side and ``long`` along its longer one (a tall
    RoI's patch is gathered transposed), so thin RoIs fit as well as square ones. RoIs go through in
    chunks of ``chunk`` so that the gathered patches stay small."""
    short, long = window
    flat, offsets, heights, widths = _flatten_levels(feats)
    boxes = jax.lax.stop_gradient(jnp.asarray(boxes, jnp.float32))
    off, h, w, scale = _level_meta(jnp.asarray(levels), offsets, heights, widths, strides)

    def axis_weights(start, bin_size, grid, size, win):
        samples = int(math.ceil(win / out)) + 1  # per bin: more means the RoI overflows the patch anyway
        low, high, wl, wh = _axis_samples(start, bin_size, grid, size, out, samples)
        used = (wl > 0) | (wh > 0)
        first = jnp.min(jnp.where(used, low, size))
        origin = jnp.clip(first, 0, jnp.maximum(size - win, 0))
        k = jnp.arange(win)
        onehot = lambda i: (i[..., None] - origin) == k  # noqa: E731  (out, S, win)
        m = jnp.einsum("ps,psk->pk", wl, onehot(low)) + jnp.einsum("ps,psk->pk", wh, onehot(high))
        last = jnp.max(jnp.where(wh > 0, high, jnp.where(wl > 0, low, -1)))
        fits = (grid <= samples) & (last < origin + win)
        # (out, win) over indices origin .. origin + win - 1 (clamped to the map: weight 0 past it)
        return m, jnp.minimum(origin + k, size - 1), fits

    def one(box, off, h, w, scale):
        y1, x1, bh, bw, gh, gw = _roi_geometry(box, scale, out)
        tall = bh > bw
        ay_s, ry_s, fy_s = axis_weights(y1, bh, gh, h, short)
        ay_l, ry_l, fy_l = axis_weights(y1, bh, gh, h, long)
        ax_s, rx_s, fx_s = axis_weights(x1, bw, gw, w, short)
        ax_l, rx_l, fx_l = axis_weights(x1, bw, gw, w, long)
        # patch axis 0 runs along the RoI's shorter side, axis 1 along its longer one
        idx = jnp.where(tall, ry_l[None, :] * w + rx_s[:, None], ry_s[:, None] * w + rx_l[None, :])
        patch = flat[off + idx].astype(jnp.float32)  # (short, long, C)
        a_short = jnp.where(tall, ax_s, ay_s)
        a_long = jnp.where(tall, ay_l, ax_l)
        acc = jnp.einsum("ai,ijc,bj->abc", a_short, patch, a_long)  # (short-side bin, long-side bin, C)
        acc = jnp.where(tall, jnp.swapaxes(acc, 0, 1), acc)
        count = jnp.maximum(gh * gw, 1).astype(jnp.float32)
        fits = jnp.where(tall, fy_l & fx_s, fy_s & fx_l)
        return (acc / count).astype(flat.dtype), fits

    return jax.lax.map(lambda a: one(*a), (boxes, off, h, w, scale), batch_size=chunk)
