"""The kernels (``lsnet_jax.kernels``): SKA and the depthwise convolutions of both implementations
against naive float64 loops, and the CPU formulations against the reference, gradients included."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from lsnet_jax.kernels import reference, xla_cpu

IMPLS = pytest.mark.parametrize("ops", [reference, xla_cpu], ids=["reference", "xla_cpu"])


def naive_ska(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The spec's formula, pixel by pixel: channel c uses kernel c mod G (tiled, not repeated)."""
    n, h, wd, c = x.shape
    g = w.shape[3]
    out = np.zeros_like(x, dtype=np.float64)
    for b in range(n):
        for i in range(h):
            for j in range(wd):
                for ch in range(c):
                    s = 0.0
                    for kh in range(3):
                        for kw in range(3):
                            y, z = i + kh - 1, j + kw - 1
                            if 0 <= y < h and 0 <= z < wd:
                                s += x[b, y, z, ch] * w[b, i, j, ch % g, kh * 3 + kw]
                    out[b, i, j, ch] = s
    return out


def naive_depthwise(x: np.ndarray, k: np.ndarray, stride: int) -> np.ndarray:
    n, h, wd, c = x.shape
    ks = k.shape[0]
    p = ks // 2
    oh, ow = (h + 2 * p - ks) // stride + 1, (wd + 2 * p - ks) // stride + 1
    out = np.zeros((n, oh, ow, c))
    for i in range(oh):
        for j in range(ow):
            for a in range(ks):
                for b in range(ks):
                    y, z = i * stride + a - p, j * stride + b - p
                    if 0 <= y < h and 0 <= z < wd:
                        out[:, i, j, :] += x[:, y, z, :] * k[a, b, 0, :]
    return out


@IMPLS
@pytest.mark.parametrize("shape,groups", [((2, 5, 7, 16), 2), ((1, 4, 4, 24), 3), ((2, 3, 6, 8), 8)])
def test_ska_matches_naive_loop(ops, shape, groups):
    rng = np.random.default_rng(sum(shape))
    n, h, w, c = shape
    x = rng.normal(0.5, 2.0, shape)
    k = rng.normal(-0.2, 1.5, (n, h, w, groups, 9))
    with jax.enable_x64(True):
        got = np.asarray(ops.ska(jnp.asarray(x), jnp.asarray(k)))
    np.testing.assert_allclose(got, naive_ska(x, k), rtol=1e-12, atol=1e-12)


@IMPLS
def test_ska_tiles_kernels_across_channels(ops):
    """Channel c must use kernel c mod G: a kernel set that differs per group gives a result
    that the 'repeat per neighbouring channel' reading (c // (C/G)) would not."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 3, 3, 4))
    w = np.zeros((1, 3, 3, 2, 9))
    w[..., 0, 4] = 1.0  # kernel 0: identity; kernel 1: zero
    with jax.enable_x64(True):
        out = np.asarray(ops.ska(jnp.asarray(x), jnp.asarray(w)))
    np.testing.assert_allclose(out[..., [0, 2]], x[..., [0, 2]])
    np.testing.assert_allclose(out[..., [1, 3]], 0.0)


def test_ska_gradients():
    ops = reference  # forward mode too; the CPU form (reverse only) is held to it below
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(2, 4, 5, 8)))
        w = jnp.asarray(rng.normal(size=(2, 4, 5, 2, 9)))
        check_grads(ops.ska, (x, w), order=2, modes=("rev", "fwd"), atol=1e-6, rtol=1e-6)
        # and against the gradient of the naive formula written as an explicit sum
        g = rng.normal(size=(2, 4, 5, 8))
        dx, dw = jax.grad(lambda a, b: jnp.sum(ops.ska(a, b) * g), argnums=(0, 1))(x, w)
        eps = 1e-6
        idx = (1, 2, 3, 5)
        xp = np.array(x)
        xp[idx] += eps
        xm = np.array(x)
        xm[idx] -= eps
        fd = (np.sum(naive_ska(xp, np.asarray(w)) * g) - np.sum(naive_ska(xm, np.asarray(w)) * g)) / (2 * eps)
        np.testing.assert_allclose(float(dx[idx]), fd, rtol=1e-6)
        assert dw.shape == w.shape


@IMPLS
@pytest.mark.parametrize("ks,stride,c", [(3, 1, 8), (7, 1, 4), (3, 2, 6), (1, 1, 5)])
def test_depthwise_conv_matches_naive_loop(ops, ks, stride, c):
    rng = np.random.default_rng(ks * 10 + stride)
    x = rng.normal(1.0, 2.0, (2, 9, 8, c))
    k = rng.normal(size=(ks, ks, 1, c))
    with jax.enable_x64(True):
        got = np.asarray(ops.depthwise_conv(jnp.asarray(x), jnp.asarray(k), stride))
        check_grads(lambda a, b: ops.depthwise_conv(a, b, stride), (jnp.asarray(x), jnp.asarray(k)),
                    order=1, modes=("rev",), atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(got, naive_depthwise(x, k, stride), rtol=1e-12, atol=1e-12)


@IMPLS
def test_bad_shapes_are_explained(ops):
    with pytest.raises(ValueError, match=r"depthwise kernel must have shape \(3, 3, 1, 4\)"):
        ops.depthwise_conv(jnp.zeros((1, 4, 4, 4)), jnp.zeros((3, 3, 1, 5)))
    with pytest.raises(ValueError, match="multiple of the kernel groups"):
        ops.ska(jnp.zeros((1, 2, 2, 10)), jnp.zeros((1, 2, 2, 3, 9)))
    with pytest.raises(ValueError, match=r"\(N, H, W, G, 9\)"):
        ops.ska(jnp.zeros((1, 2, 2, 8)), jnp.zeros((1, 2, 2, 2, 4)))


@pytest.mark.parametrize("shape,cin,cout,stride", [((2, 9, 8), 3, 4, 2), ((1, 8, 10), 5, 6, 2), ((2, 7, 7), 4, 3, 1),
                                                  ((2, 8, 6), 3, 5, 2)])  # the last: space-to-depth forward
def test_stem_conv_gradients_match_xla_autodiff(shape, cin, cout, stride):
    """The CPU conv2d's written-out backward (tap matmuls, interior-padded placement) against the
    gradients XLA derives for its own convolution (the reference), float64, odd and even sizes."""
    rng = np.random.default_rng(sum(shape) + stride)
    n, h, w = shape
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(0.3, 1.5, (n, h, w, cin)))
        k = jnp.asarray(rng.normal(0.0, 0.7, (3, 3, cin, cout)))

        def xla(a, b):
            return jax.lax.conv_general_dilated(a, b, (stride, stride), [(1, 1), (1, 1)],
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))

        y = xla_cpu.conv2d(x, k, stride, 1)
        np.testing.assert_allclose(np.asarray(y), np.asarray(xla(x, k)), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.asarray(reference.conv2d(x, k, stride, 1)), np.asarray(xla(x, k)),
                                   rtol=1e-12, atol=1e-12)
        g = jnp.asarray(rng.normal(size=y.shape))
        got = jax.vjp(lambda a, b: xla_cpu.conv2d(a, b, stride, 1), x, k)[1](g)
        want = jax.vjp(xla, x, k)[1](g)
        for a, b in zip(got, want):
            assert a.shape == b.shape
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("groups,stride", [(2, 1), (3, 2)])
def test_grouped_conv_matches_naive_loop_and_reference(groups, stride):
    """RegNet's grouped 3x3 convolution: the CPU form (one dense convolution per group) and the
    reference (``feature_group_count``) against a float64 loop over groups; gradients equal."""
    rng = np.random.default_rng(groups)
    cin, cout = 4 * groups, 2 * groups
    x = rng.normal(0.2, 1.3, (2, 7, 6, cin))
    k = rng.normal(0.0, 0.6, (3, 3, cin // groups, cout))
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    oh, ow = (7 - 1) // stride + 1, (6 - 1) // stride + 1
    want = np.zeros((2, oh, ow, cout))
    ci, co = cin // groups, cout // groups
    for g in range(groups):
        for i in range(oh):
            for j in range(ow):
                patch = xp[:, i * stride:i * stride + 3, j * stride:j * stride + 3, g * ci:(g + 1) * ci]
                want[:, i, j, g * co:(g + 1) * co] = np.einsum("nabc,abco->no", patch, k[..., g * co:(g + 1) * co])
    with jax.enable_x64(True):
        xj, kj = jnp.asarray(x), jnp.asarray(k)
        for ops in (reference, xla_cpu):
            np.testing.assert_allclose(np.asarray(ops.conv2d(xj, kj, stride, 1, None, groups)), want, rtol=1e-12, atol=1e-12)
        gy = jnp.asarray(rng.normal(size=want.shape))
        got = jax.vjp(lambda a, b: xla_cpu.conv2d(a, b, stride, 1, None, groups), xj, kj)[1](gy)
        ref = jax.vjp(lambda a, b: reference.conv2d(a, b, stride, 1, None, groups), xj, kj)[1](gy)
        for a, b in zip(got, ref):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-11, atol=1e-11)


def test_depthwise_kernel_gradient_in_batch_chunks(monkeypatch):
    """The chunked kernel gradient (taken for large inputs on CPU) against a float64 loop."""
    ops = xla_cpu
    monkeypatch.setattr(ops, "_KGRAD_LOOP_MIN_BYTES", 0)
    monkeypatch.setattr(ops, "_KGRAD_CHUNK_BYTES", 1)  # one image per chunk
    rng = np.random.default_rng(7)
    x = rng.normal(0.5, 1.0, (3, 6, 5, 4))
    k = rng.normal(size=(3, 3, 1, 4))
    g = rng.normal(size=(3, 6, 5, 4))
    assert ops._kernel_grad_chunk((3, 8, 7, 4), 3, 1, 8) == 1
    with jax.enable_x64(True):
        dk = jax.grad(lambda b: jnp.sum(ops.depthwise_conv(jnp.asarray(x), b) * g))(jnp.asarray(k))
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = np.zeros((3, 3, 1, 4))
    for a in range(3):
        for b in range(3):
            want[a, b, 0] = (xp[:, a:a + 6, b:b + 5] * g).sum((0, 1, 2))
    np.testing.assert_allclose(np.asarray(dk), want, rtol=1e-12, atol=1e-12)


@IMPLS
def test_conv1x1_gradients_match_numpy(ops):
    """conv1x1's backward (the CPU form's written out: dx = g w^T, dw = x^T g over every pixel)
    against float64 numpy, with a bias, and its dtypes under bfloat16."""
    rng = np.random.default_rng(11)
    x = rng.normal(0.4, 1.3, (3, 5, 4, 6))
    k = rng.normal(0.0, 0.5, (1, 1, 6, 7))
    b = rng.normal(size=7)
    g = rng.normal(size=(3, 5, 4, 7))
    with jax.enable_x64(True):
        y, vjp = jax.vjp(ops.conv1x1, jnp.asarray(x), jnp.asarray(k), jnp.asarray(b))
        dx, dk, db = vjp(jnp.asarray(g))
    np.testing.assert_allclose(np.asarray(y), np.einsum("nhwc,cd->nhwd", x, k[0, 0]) + b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(dx), np.einsum("nhwd,cd->nhwc", g, k[0, 0]), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(dk)[0, 0], x.reshape(-1, 6).T @ g.reshape(-1, 7), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(db), g.sum((0, 1, 2)), rtol=1e-12, atol=1e-12)
    xb, kb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(k, jnp.bfloat16)
    grads = jax.grad(lambda a, c: jnp.sum(ops.conv1x1(a, c).astype(jnp.float32)), (0, 1))(xb, kb)
    assert [a.dtype for a in grads] == [jnp.bfloat16, jnp.bfloat16]


def test_materialized_ska_gradients_equal_autodiff():
    """The CPU form of SKA (its cotangent materialised before the backward) against plain autodiff
    of the reference ``ska`` and numerical differences, float64; ``materialize`` itself returns
    its argument, or NaN where the first element is not finite."""
    ops = xla_cpu
    rng = np.random.default_rng(5)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(0.2, 1.1, (2, 5, 4, 12)))
        w = jnp.asarray(rng.normal(size=(2, 5, 4, 3, 9)))
        g = jnp.asarray(rng.normal(size=(2, 5, 4, 12)))
        np.testing.assert_array_equal(np.asarray(ops.ska(x, w)), np.asarray(reference.ska(x, w)))
        got = jax.vjp(ops.ska, x, w)[1](g)
        want = jax.vjp(reference.ska, x, w)[1](g)
        for a, b in zip(got, want):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-13, atol=1e-13)
        check_grads(ops.ska, (x, w), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(ops.materialize(g)), np.asarray(g))
        assert np.isnan(np.asarray(ops.materialize(g.at[0, 0, 0, 0].set(np.inf)))).all()
    with pytest.raises(ValueError, match="multiple of the kernel groups"):
        ops.ska(jnp.zeros((1, 2, 2, 10)), jnp.zeros((1, 2, 2, 3, 9)))


@IMPLS
@pytest.mark.parametrize("group_size", [None, 2])
def test_batch_norm_stats_one_pass_keeps_its_digits(ops, group_size):
    """The statistics (the CPU form's shifted one pass, the reference's two passes) against float64
    two-pass ones, on channels whose mean is 10^4 times their spread (where an unshifted one-pass
    variance in float32 is all rounding error), and their gradients against float64 autodiff of
    the two-pass formula written out here."""
    rng = np.random.default_rng(3)
    x = rng.normal(0.0, 1.0, (4, 6, 5, 3)) * np.array([0.1, 1.0, 3.0]) + np.array([1000.0, -5.0, 0.5])
    xg = x.reshape(-1, group_size or 4, 6, 5, 3)
    want_mean, want_var = xg.mean((1, 2, 3)), xg.var((1, 2, 3))
    mean, var = ops.batch_norm_stats(jnp.asarray(x, jnp.float32), group_size)
    mean, var = np.asarray(mean).reshape(want_mean.shape), np.asarray(var).reshape(want_var.shape)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-6)
    np.testing.assert_allclose(var, want_var, rtol=2e-4)
    g_mean, g_var = rng.normal(size=mean.shape), rng.normal(size=var.shape)
    with jax.enable_x64(True):
        def loss(a, stats):
            m, v = stats(a)
            return jnp.sum(m.reshape(g_mean.shape) * g_mean) + jnp.sum(v.reshape(g_var.shape) * g_var)

        def two_pass(a):
            b = a.reshape(xg.shape)
            m = b.mean((1, 2, 3), keepdims=True)
            return m, jnp.mean(jnp.square(b - m), (1, 2, 3))

        got = jax.grad(loss)(jnp.asarray(x), lambda a: ops.batch_norm_stats(a, group_size))
        want = jax.grad(loss)(jnp.asarray(x), two_pass)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-9, atol=1e-9)
