"""PyTorch's ``F.interpolate`` (align_corners False, no antialiasing) as exact numpy matrices and
index tables, so that a resize is one einsum or one gather on the device.

Every resize here is separable, as PyTorch computes it: a 2-D bicubic or bilinear resize is the
1-D matrix along H, then along W. Source coordinates and tap weights are computed in float32 as
PyTorch's CPU kernels do for float32 tensors: ``scale = float(n_in) / n_out`` in float32, the source
coordinate ``scale * (i + 0.5) - 0.5`` rounded once (the compiler fuses it into one multiply-add),
so that non-integer scales round the way PyTorch's do (measured: up to 6e-5 of the values'
spread apart otherwise, 5e-7 so). The matrices depend only on the sizes, which are static under
``jit``, so they are built once per shape on the host (cached) and enter the graph as constants.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@functools.lru_cache(maxsize=None)
def bicubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
    """The (n_out, n_in) matrix of ``F.interpolate(..., mode='bicubic', align_corners=False)``
    along one axis: Keys' cubic with a = -0.75, source coordinate ``(i + 0.5) * n_in / n_out - 0.5``
    (not clamped), taps clamped to the border."""
    f32 = np.float32
    a = f32(a)

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    scale = f32(n_in) / f32(n_out)
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = f32(float(scale) * (i + 0.5) - 0.5)  # one rounding: a fused multiply-add
        base = math.floor(src)
        t = min(max(src - f32(base), f32(0)), f32(1))
        weights = (far(t + 1), near(t), near(1 - t), far(2 - t))  # PyTorch's four coefficients
        for k, wk in zip(range(-1, 3), weights):
            m[i, min(max(base + k, 0), n_in - 1)] += float(wk)
    m.setflags(write=False)
    return m


@functools.lru_cache(maxsize=None)
def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The (n_out, n_in) matrix of ``F.interpolate(..., mode='bilinear', align_corners=False)``
    along one axis: source ``(i + 0.5) * n_in / n_out - 0.5`` clamped at 0, two taps, the upper
    one clamped to the border. The same size gives the identity."""
    f32 = np.float32
    scale = f32(n_in) / f32(n_out)
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = max(f32(float(scale) * (i + 0.5) - 0.5), f32(0))  # one rounding, as bicubic_matrix
        lo = min(int(math.floor(src)), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        frac = src - f32(lo)
        m[i, lo] += float(f32(1) - frac)
        m[i, hi] += float(frac)
    m.setflags(write=False)
    return m


@functools.lru_cache(maxsize=None)
def nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output of ``F.interpolate(..., mode='nearest')`` (the legacy rule,
    as OpenCV's INTER_NEAREST): ``floor(i * scale)`` with ``scale = n_in / n_out`` in float32."""
    scale = np.float32(n_in) / np.float32(n_out)
    idx = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
    idx = np.minimum(idx, n_in - 1)
    idx.setflags(write=False)
    return idx


def _apply(x: Array, mh: np.ndarray, mw: np.ndarray) -> Array:
    """``x`` (N, H, W, C) resized with the row matrices ``mh`` (H', H) and ``mw`` (W', W)."""
    dt = jnp.promote_types(x.dtype, jnp.float32)
    hi = jax.lax.Precision.HIGHEST
    y = jnp.einsum("yh,nhwc->nywc", jnp.asarray(mh, dt), x.astype(dt), precision=hi)
    y = jnp.einsum("xw,nywc->nyxc", jnp.asarray(mw, dt), y, precision=hi)
    return y.astype(x.dtype)


def resize_bilinear(x: Array, size: tuple[int, int]) -> Array:
    """NHWC ``x`` to ``size`` (H, W) as ``F.interpolate(mode='bilinear', align_corners=False)``."""
    h, w = x.shape[1:3]
    if (h, w) == tuple(size):
        return x
    return _apply(x, bilinear_matrix(h, size[0]), bilinear_matrix(w, size[1]))


def resize_nearest(x: Array, size: tuple[int, int]) -> Array:
    """NHWC ``x`` to ``size`` (H, W) as ``F.interpolate(mode='nearest')``."""
    h, w = x.shape[1:3]
    if (h, w) == tuple(size):
        return x
    return x[:, nearest_index(h, size[0])][:, :, nearest_index(w, size[1])]


def resize_bicubic_2d(x: Array, size: tuple[int, int]) -> Array:
    """The last two axes of ``x`` to ``size`` as ``F.interpolate(mode='bicubic', align_corners=False)``
    on a (..., H, W) tensor (no antialiasing)."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    dt = jnp.promote_types(x.dtype, jnp.float32)
    hi = jax.lax.Precision.HIGHEST
    mh, mw = jnp.asarray(bicubic_matrix(h, size[0]), dt), jnp.asarray(bicubic_matrix(w, size[1]), dt)
    y = jnp.einsum("yh,...hw,xw->...yx", mh, x.astype(dt), mw, precision=hi)
    return y.astype(x.dtype)
