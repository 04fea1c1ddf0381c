"""The formulations of LSNet's operations measured fastest on XLA:CPU (NHWC, HWIO).

Each function computes what its namesake in ``lsnet_jax.kernels.reference`` computes (the tests
hold them equal in float64, gradients included); what differs is how, chosen by measurement on a
2-core CPU (``docs/performance.md``): on XLA:CPU a depthwise convolution written as
``feature_group_count=C`` ran ~30x slower than the same thing written as ``k*k`` shifted
multiply-adds, which XLA fuses into a single loop; several backward passes are written out
(``custom_vjp``) where XLA's autodiff stored transposed or padded copies; the tuned constants are
for that machine. Selected by ``impl="xla_cpu"`` (what ``"auto"`` picks on CPU).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from lsnet_jax.kernels.reference import check_depthwise_kernel, check_ska_shapes, grouped, ska_forward, window

Array = jax.Array


def conv1x1(x: Array, kernel: Array, bias: Array | None = None) -> Array:
    """1x1 convolution as a matrix product with a written-out backward; HWIO ``(1, 1, Cin, Cout)``."""
    y = _matmul(x.reshape(-1, x.shape[-1]), kernel[0, 0].astype(x.dtype))
    y = y.reshape(*x.shape[:-1], kernel.shape[-1])
    return y if bias is None else y + bias


@jax.custom_vjp
def _matmul(x: Array, w: Array) -> Array:
    return x @ w


def _matmul_fwd(x: Array, w: Array):
    return x @ w, (x, w)


def _matmul_bwd(res, g: Array):
    """``dx = g w^T`` and ``dw = x^T g``, each one dot_general over the operands as they are stored.
    Autodiff of the einsum contracts g with x into ``(Cout, Cin)`` and transposes; XLA:CPU then
    writes g transposed (a strided store fused into BatchNorm's backward) for every 1x1 weight
    gradient: 95 such copies; LSNet-T's training step 385 and 391 against 438 and 482 ms in
    alternating runs (docs/performance.md)."""
    x, w = res
    dx = lax.dot_general(g, w, (((1,), (1,)), ((), ())))
    dw = lax.dot_general(x, g, (((0,), (0,)), ((), ())))
    return dx, dw


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def _out_size(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def _depthwise_forward(x: Array, kernel: Array, stride: int) -> Array:
    k = kernel.shape[0]
    pad = k // 2
    _, h, w, _ = x.shape
    out_h, out_w = _out_size(h, k, stride, pad), _out_size(w, k, stride, pad)
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kk = kernel[:, :, 0, :].astype(x.dtype)
    out = None
    for i in range(k):
        for j in range(k):
            term = window(xp, i, j, stride, out_h, out_w) * kk[i, j]
            out = term if out is None else out + term
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise(x: Array, kernel: Array, stride: int) -> Array:
    return _depthwise_forward(x, kernel, stride)


def _depthwise_fwd(x: Array, kernel: Array, stride: int):
    return _depthwise_forward(x, kernel, stride), (x, kernel)


def _depthwise_bwd(stride: int, res, g: Array):
    """dx: the transposed convolution written as k*k shifted multiply-adds of the (for stride 2,
    zero-interleaved) output gradient with the flipped kernel, one fused loop. dk: one
    multiply-reduction per tap. Autodiff of the forward's slices instead accumulates k*k padded
    copies of the gradient (3-5x slower on XLA:CPU)."""
    x, kernel = res
    k = kernel.shape[0]
    pad = k // 2
    _, h, w, _ = x.shape
    out_h, out_w = g.shape[1], g.shape[2]
    lo = k - 1 - pad
    hi_h = h + k - 1 - lo - ((out_h - 1) * stride + 1)
    hi_w = w + k - 1 - lo - ((out_w - 1) * stride + 1)
    gd = lax.pad(g, jnp.zeros((), g.dtype),
                 [(0, 0, 0), (lo, hi_h, stride - 1), (lo, hi_w, stride - 1), (0, 0, 0)])
    kk = kernel[:, :, 0, :].astype(g.dtype)
    dx = None
    for i in range(k):
        for j in range(k):
            term = window(gd, i, j, 1, h, w) * kk[k - 1 - i, k - 1 - j]
            dx = term if dx is None else dx + term
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dk = _kernel_grad(xp, g, k, stride)
    return dx.astype(x.dtype), dk[:, :, None, :].astype(kernel.dtype)


# On XLA:CPU each tap's reduction of the kernel gradient is its own pass over x and g; once k*k
# such passes no longer fit in cache they are memory-bound (docs/performance.md). A loop over
# chunks of the batch keeps each chunk's x and g in cache for all k*k taps.
_KGRAD_LOOP_MIN_BYTES = 16 << 20  # k*k * x bytes above which the chunked loop wins (2-core CPU)
_KGRAD_CHUNK_BYTES = 512 << 10  # a chunk's share of x


def _kernel_grad_chunk(shape: tuple[int, ...], k: int, stride: int, itemsize: int) -> int | None:
    """Images per chunk of the looped kernel gradient, or None for one pass per tap."""
    if stride != 1:
        return None
    n = shape[0]
    per_image = itemsize * math.prod(shape[1:])
    if k * k * n * per_image < _KGRAD_LOOP_MIN_BYTES:
        return None
    return max(d for d in range(1, n + 1) if n % d == 0 and (d == 1 or d * per_image <= _KGRAD_CHUNK_BYTES))


def _kernel_grad(xp: Array, g: Array, k: int, stride: int) -> Array:
    """``dk[i, j, c] = sum over (n, h, w) of tap (i, j) of the padded input times g``, accumulated
    in at least float32; in chunks of the batch where that is faster (``_kernel_grad_chunk``)."""
    acc = jnp.promote_types(g.dtype, jnp.float32)
    out_h, out_w = g.shape[1], g.shape[2]

    def taps(xb: Array, gb: Array) -> Array:
        return jnp.stack([jnp.stack([jnp.sum(window(xb, i, j, stride, out_h, out_w) * gb, axis=(0, 1, 2), dtype=acc)
                                     for j in range(k)]) for i in range(k)])

    chunk = _kernel_grad_chunk(xp.shape, k, stride, xp.dtype.itemsize)
    if chunk is None or chunk == xp.shape[0]:
        return taps(xp, g)
    m = xp.shape[0] // chunk
    parts = lax.map(lambda a: taps(*a), (xp.reshape(m, chunk, *xp.shape[1:]), g.reshape(m, chunk, *g.shape[1:])))
    return parts.sum(0)


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def depthwise_conv(x: Array, kernel: Array, stride: int = 1, bias: Array | None = None) -> Array:
    """Depthwise k x k convolution with 'same'-style padding ``k // 2`` (PyTorch ``padding=k//2``).

    ``kernel`` is HWIO ``(k, k, 1, C)``. Computed as k*k shifted multiply-adds of the zero-padded
    input; XLA fuses them into one elementwise loop, so nothing of size k*k x input is stored. The
    backward pass is written out (``_depthwise_bwd``) rather than left to autodiff.
    """
    check_depthwise_kernel(x, kernel)
    out = _depthwise(x, kernel, stride)
    return out if bias is None else out + bias


def _conv_forward(x: Array, kernel: Array, stride: int, pad: int) -> Array:
    n, h, w, cin = x.shape
    if kernel.shape[:2] == (3, 3) and stride == 2 and pad == 1 and cin <= 4 and h % 2 == 0 and w % 2 == 0:
        return _conv3x3s2_space_to_depth(x, kernel)
    return lax.conv_general_dilated(x, kernel, (stride, stride), [(pad, pad), (pad, pad)],
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv3x3s2_space_to_depth(x: Array, kernel: Array) -> Array:
    """A 3x3 stride-2 pad-1 convolution of few input channels (the stem's first layer) as a 2x2
    stride-1 convolution of the padded input's 2x2 blocks (4 * Cin channels) with the kernel
    zero-padded to 4x4 and regrouped the same way. XLA:CPU runs the 3-channel convolution through
    Eigen and this one through YNNPACK: 18.3 -> 13.4 ms at 32x224x224x3 -> 16."""
    n, h, w, cin = x.shape
    cout = kernel.shape[3]
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    blocks = xp.reshape(n, h // 2 + 1, 2, w // 2 + 1, 2, cin).transpose(0, 1, 3, 2, 4, 5)
    blocks = blocks.reshape(n, h // 2 + 1, w // 2 + 1, 4 * cin)
    k4 = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))  # taps (2a + p, 2b + q)
    k4 = k4.reshape(2, 2, 2, 2, cin, cout).transpose(0, 2, 1, 3, 4, 5).reshape(2, 2, 4 * cin, cout)
    return lax.conv_general_dilated(blocks, k4, (1, 1), [(0, 0), (0, 0)], dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_taps_vjp(x: Array, kernel: Array, stride: int, pad: int) -> Array:
    return _conv_forward(x, kernel, stride, pad)


def _conv_taps_fwd(x: Array, kernel: Array, stride: int, pad: int):
    return _conv_forward(x, kernel, stride, pad), (x, kernel)


def _conv_taps_bwd(stride: int, pad: int, res, g: Array):
    """Both gradients of a dense k x k convolution as matrix products over the taps. dx: one
    matmul of g with all k*k kernel slices, each tap's result placed on the input grid by an
    interior-padded ``lax.pad`` and summed in one fused loop; XLA:CPU's own input gradient is an
    lhs-dilated convolution, 2-5x slower. dk: per tap, the strided window of the input against g,
    contracted over (n, h, w)."""
    x, kernel = res
    k = kernel.shape[0]
    n, h, w, cin = x.shape
    _, oh, ow, cout = g.shape
    taps = jnp.einsum("nhwo,ijco->nhwijc", g, kernel)
    dx = None
    for i in range(k):
        for j in range(k):
            lo_h, lo_w = i - pad, j - pad
            hi_h, hi_w = h - (lo_h + stride * (oh - 1) + 1), w - (lo_w + stride * (ow - 1) + 1)
            term = lax.pad(taps[:, :, :, i, j, :], jnp.zeros((), g.dtype),
                           [(0, 0, 0), (lo_h, hi_h, stride - 1), (lo_w, hi_w, stride - 1), (0, 0, 0)])
            dx = term if dx is None else dx + term
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    g2 = g.reshape(-1, cout)
    acc = jnp.promote_types(g.dtype, jnp.float32)  # a sum over every output pixel of the batch
    dk = jnp.stack([jnp.stack([jnp.matmul(window(xp, i, j, stride, oh, ow).reshape(-1, cin).T, g2,
                                          preferred_element_type=acc) for j in range(k)]) for i in range(k)])
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


_conv_taps_vjp.defvjp(_conv_taps_fwd, _conv_taps_bwd)


def conv2d(x: Array, kernel: Array, stride: int, pad: int, bias: Array | None = None, groups: int = 1) -> Array:
    """Dense convolution (the stem), HWIO kernel, symmetric zero padding; a 3x3 stride-2 layer of
    few input channels by space-to-depth, gradients written out as matrix products over the taps
    (``_conv_taps_bwd``). A grouped convolution (RegNet) is one dense convolution per group,
    concatenated: XLA:CPU's ``feature_group_count`` path ran 4.5-9x slower on RegNetY-160's layers
    (32 images, 2-27 groups of 112 channels: 1806 -> 401 ms at 56x56, 715 -> 111 ms at 14x14)."""
    if groups > 1:
        ci, co = x.shape[-1] // groups, kernel.shape[-1] // groups
        y = jnp.concatenate([_conv_taps_vjp(x[..., g * ci:(g + 1) * ci], kernel[..., g * co:(g + 1) * co].astype(x.dtype),
                                            stride, pad) for g in range(groups)], axis=-1)
        return y if bias is None else y + bias
    y = _conv_taps_vjp(x, kernel.astype(x.dtype), stride, pad)
    return y if bias is None else y + bias


def ska(x: Array, w: Array) -> Array:
    """``reference.ska`` whose reverse-mode gradient starts from a materialised cotangent
    (``materialize``); reverse mode only (a ``custom_vjp``), as the depthwise convolutions."""
    check_ska_shapes(x, w)
    return _ska_materialized_grad(x, w.astype(x.dtype))


def materialize(a: Array) -> Array:
    """``a``, computed once into a buffer of its own on XLA:CPU.

    XLA fuses an elementwise producer into each of its consumers and recomputes it there. Where
    the consumer reads the producer at k*k shifted positions (the input gradient of SKA reads its
    cotangent at nine), the producer's whole chain (BatchNorm's backward and the recomputed SKA
    forward) is evaluated nine times per pixel. A conditional's operand is always materialised, so
    ``a`` goes through one whose predicate is data-dependent; its other branch (taken only when
    the first element is not finite, when the step is lost anyway) fills with NaN. XLA:CPU removes
    ``lax.optimization_barrier``; on a GPU a conditional would synchronise with the host, so this
    is for CPU only."""
    return lax.cond(jnp.isfinite(a.reshape(-1)[0]), lambda b: b, lambda b: jnp.full_like(b, jnp.nan), a)


@jax.custom_vjp
def _ska_materialized_grad(x: Array, w: Array) -> Array:
    return ska_forward(x, w)


def _ska_mg_fwd(x: Array, w: Array):
    return ska_forward(x, w), (x, w)


def _ska_mg_bwd(res, g: Array):
    """Autodiff of the forward, from a materialised cotangent (``materialize``): LSNet-T's
    training step 410 against 423-440 ms on the 2-core CPU (docs/performance.md)."""
    return jax.vjp(ska_forward, *res)[1](materialize(g))


_ska_materialized_grad.defvjp(_ska_mg_fwd, _ska_mg_bwd)


def batch_norm_stats(x: Array, group_size: int | None) -> tuple[Array, Array]:
    """``reference.batch_norm_stats`` in one pass over ``x`` (``_shifted_moments``): XLA computes
    both sums in one fused reduction, where the mean and then the squared deviations from it took
    two; LSNet-T's training step 350 and 360 against 364 and 369 ms in alternating runs."""
    xg, axes = grouped(x, group_size)
    return _shifted_moments(xg, axes, 0 if group_size is None else 1)


def _shifted_moments(x: Array, axes: tuple[int, ...], sample_axis: int) -> tuple[Array, Array]:
    """Mean and biased variance over ``axes`` as ``s + E[x - s]`` and ``E[(x - s)^2] - E[x - s]^2``
    with the shift ``s`` the (constant, stop-gradient) mean of the first sample along
    ``sample_axis``: without it the one-pass variance loses digits to cancellation when a channel's
    mean is large against its spread; with it the loss is that of |mean - s| (about a sample's
    spread) instead of |mean|. Gradients are the two-pass formula's."""
    first = lax.index_in_dim(x, 0, sample_axis, keepdims=True)
    s = lax.stop_gradient(jnp.mean(first, axes, keepdims=True))
    d = x - s
    md = jnp.mean(d, axes, keepdims=True)
    var = jnp.maximum(jnp.mean(jnp.square(d), axes, keepdims=True) - jnp.square(md), 0.0)
    return jnp.squeeze(s + md, axes), jnp.squeeze(var, axes)
