"""What each operation of LSNet computes, in plain ``jnp`` / ``lax`` with plain autodiff (NHWC, HWIO).

This is the paper's maths and nothing else: the formulations a reader checks against the paper
and the official code, what the tests compare the measured formulations of ``xla_cpu`` with
(float64, gradients included), and what runs on GPU and TPU until a formulation measured faster on
that backend exists.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
_NHWC = ("NHWC", "HWIO", "NHWC")


def conv1x1(x: Array, kernel: Array, bias: Array | None = None) -> Array:
    """1x1 convolution: a matrix product over the channels. ``kernel`` is HWIO ``(1, 1, Cin, Cout)``."""
    y = jnp.einsum("nhwc,cd->nhwd", x, kernel[0, 0].astype(x.dtype))
    return y if bias is None else y + bias


def check_depthwise_kernel(x: Array, kernel: Array) -> None:
    k, c = kernel.shape[0], x.shape[-1]
    if kernel.shape != (k, k, 1, c):
        raise ValueError(f"depthwise kernel must have shape {(k, k, 1, c)}, got {kernel.shape}")


def depthwise_conv(x: Array, kernel: Array, stride: int = 1, bias: Array | None = None) -> Array:
    """Depthwise k x k convolution with padding ``k // 2`` (PyTorch ``groups=C, padding=k//2``).
    ``kernel`` is HWIO ``(k, k, 1, C)``."""
    check_depthwise_kernel(x, kernel)
    p = kernel.shape[0] // 2
    y = lax.conv_general_dilated(x, kernel.astype(x.dtype), (stride, stride), [(p, p), (p, p)],
                                 dimension_numbers=_NHWC, feature_group_count=x.shape[-1])
    return y if bias is None else y + bias


def conv2d(x: Array, kernel: Array, stride: int, pad: int, bias: Array | None = None, groups: int = 1) -> Array:
    """Dense (or ``groups``-grouped) convolution, HWIO kernel ``(k, k, Cin / groups, Cout)``,
    symmetric zero padding ``pad``."""
    y = lax.conv_general_dilated(x, kernel.astype(x.dtype), (stride, stride), [(pad, pad), (pad, pad)],
                                 dimension_numbers=_NHWC, feature_group_count=groups)
    return y if bias is None else y + bias


def window(xp: Array, i: int, j: int, stride: int, out_h: int, out_w: int) -> Array:
    """The (i, j) tap of a strided k x k window over the padded input ``xp``."""
    return lax.slice(
        xp,
        (0, i, j, 0),
        (xp.shape[0], i + stride * (out_h - 1) + 1, j + stride * (out_w - 1) + 1, xp.shape[3]),
        (1, stride, stride, 1),
    )


def check_ska_shapes(x: Array, w: Array) -> None:
    n, h, wd, c = x.shape
    if w.ndim != 5 or w.shape[:3] != (n, h, wd) or w.shape[4] != 9:
        raise ValueError(f"SKA kernels must have shape (N, H, W, G, 9) = ({n}, {h}, {wd}, G, 9), got {w.shape}")
    if c % w.shape[3]:
        raise ValueError(f"SKA: channels ({c}) must be a multiple of the kernel groups ({w.shape[3]})")


def ska(x: Array, w: Array) -> Array:
    """Small-kernel aggregation: per-pixel dynamic 3x3 depthwise filtering.

    ``out[n, h, w, c] = sum_{i,j} x[n, h+i-1, w+j-1, c] * w[n, h, w, c mod G, 3*i + j]``
    with zero padding, where ``x`` is ``(N, H, W, C)`` and ``w`` is ``(N, H, W, G, 9)`` with
    ``G = C / r``. The G kernels are TILED across channels (channel c uses kernel c mod G), as in
    the official Triton kernel.

    The tiling is expressed without copying the kernels: x is viewed as ``(N, H, W, r, G)`` and w
    broadcasts along the ``r`` axis. Forward, it materialises the padded input and the output only
    (the nine shifted products are fused into one loop). Backward (autodiff of the same slices),
    dx is nine shifted products of ``g * w`` accumulated into one padded buffer and dw is nine
    fused multiply-reductions over ``r``; the residuals are ``x`` and ``w`` themselves, nothing of
    size 9 x input is kept.
    """
    check_ska_shapes(x, w)
    return ska_forward(x, w.astype(x.dtype))


def ska_forward(x: Array, w: Array) -> Array:
    """``ska`` without the shape checks, ``w`` already in ``x``'s dtype."""
    n, h, wd, c = x.shape
    g = w.shape[3]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = None
    for i in range(3):
        for j in range(3):
            tap = window(xp, i, j, 1, h, wd).reshape(n, h, wd, c // g, g)
            # a static slice, not an integer index: that lowers to a gather, which with a symbolic
            # batch size becomes a dynamic_gather that the TFLite converter rejects
            term = tap * lax.index_in_dim(w, 3 * i + j, axis=4, keepdims=False)[:, :, :, None, :]
            out = term if out is None else out + term
    return out.reshape(n, h, wd, c)


def batch_norm_stats(x: Array, group_size: int | None) -> tuple[Array, Array]:
    """Per-channel mean and biased variance over (N, H, W), in at least float32, two passes.

    With ``group_size`` the batch is split into groups of that many images and every group gets
    its own statistics (as PyTorch's per-GPU BatchNorm under DDP); the results then have a leading
    group axis and broadcast against ``x`` reshaped to ``(groups, group_size, ...)``.
    """
    xg, axes = grouped(x, group_size)
    mean = jnp.mean(xg, axes, keepdims=True)
    var = jnp.mean(jnp.square(xg - mean), axes, keepdims=True)
    return jnp.squeeze(mean, axes), jnp.squeeze(var, axes)


def grouped(x: Array, group_size: int | None) -> tuple[Array, tuple[int, ...]]:
    """``x`` in at least float32, reshaped to ``(groups, group_size, ...)`` with ``group_size``,
    and the axes its statistics reduce over."""
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    if group_size is None:
        return x32, tuple(range(x.ndim - 1))
    n = x.shape[0]
    if n % group_size:
        raise ValueError(f"batch of {n} images is not divisible into BatchNorm groups of {group_size}")
    xg = x32.reshape((n // group_size, group_size) + x.shape[1:])
    return xg, tuple(range(1, xg.ndim - 1))
