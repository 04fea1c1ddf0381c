"""RoIAlign (aligned, adaptive sampling) against the PyTorch restatement of torchvision's kernel
(``torch_reference.roi_align_reference``, float64, each RoI with its own sample count) and a
float64 numpy loop: values and gradients, RoIs across the borders, tiny, empty and huge RoIs, both
forms; the RoI-to-level mapping against float64 numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs the [torch] extra")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from lsnet_jax.kernels import roi_align as ra  # noqa: E402
from lsnet_jax import torch_reference as ref  # noqa: E402

STRIDES = (4, 8, 16, 32)
SIZES = ((64, 96), (32, 48), (16, 24), (8, 12))  # a 256x384 image's P2..P5
C = 6


@pytest.fixture(scope="module")
def case():
    """Feature maps of mean 1, std 2; boxes of every kind: log-uniform sizes from 0.3 to 400 px,
    aspect ratios up to 8, many across the borders, plus a zero-area box, a point, a box wholly
    outside, one inverted (x2 < x1), two thin ones too long for the patch and one far larger than
    the image."""
    rng = np.random.default_rng(0)
    feats = [rng.normal(1.0, 2.0, (h, w, C)).astype(np.float32) for h, w in SIZES]
    n = 90
    s = np.exp(rng.uniform(np.log(0.3), np.log(700), n))
    r = np.exp(rng.uniform(-np.log(8), np.log(8), n))
    cx, cy = rng.uniform(-20, 404, n), rng.uniform(-20, 276, n)
    w, h = s * np.sqrt(r), s / np.sqrt(r)
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
    special = [[10, 10, 10, 30], [50, 60, 50, 60], [-80, -90, -40, -50], [90, 40, 60, 70], [-301, -203, 703, 497],
               [10, 100, 300, 120], [20, 200, 370, 215], [0, 0, 384, 256], [378, 250, 384, 256]]
    boxes = np.concatenate([boxes, special]).astype(np.float32)
    levels = np.asarray(ra.roi_levels(jnp.asarray(boxes)))
    return feats, boxes, levels


def _reference(feats, boxes, levels, out, dtype=torch.float64, requires_grad=False):
    maps = [torch.tensor(f.transpose(2, 0, 1)[None], dtype=dtype, requires_grad=requires_grad) for f in feats]
    res = torch.zeros((len(boxes), C, out, out), dtype=dtype)
    for lv, stride in enumerate(STRIDES):
        sel = np.flatnonzero(levels == lv)
        if len(sel):
            rois = torch.cat([torch.zeros(len(sel), 1, dtype=dtype), torch.tensor(boxes[sel], dtype=dtype)], 1)
            res = res.index_put((torch.from_numpy(sel),), ref.roi_align_reference(maps[lv], rois, out, 1 / stride))
    return maps, res


def _numpy_loop(feat, box, stride, out):
    """One RoI, float64, the kernel's loops written out."""
    feat = feat.astype(np.float64)
    H, W, _ = feat.shape
    x1, y1, x2, y2 = (float(v) / stride - 0.5 for v in box)
    bh, bw = (y2 - y1) / out, (x2 - x1) / out
    gh, gw = max(math.ceil(bh), 0), max(math.ceil(bw), 0)
    res = np.zeros((out, out, feat.shape[2]))
    for ph in range(out):
        for pw in range(out):
            for iy in range(gh):
                y = y1 + ph * bh + (iy + 0.5) * bh / gh
                for ix in range(gw):
                    x = x1 + pw * bw + (ix + 0.5) * bw / gw
                    if y < -1 or y > H or x < -1 or x > W:
                        continue
                    y, x = max(y, 0.0), max(x, 0.0)
                    yl, xl = int(y), int(x)
                    if yl >= H - 1:
                        yl = yh = H - 1
                        y = float(yl)
                    else:
                        yh = yl + 1
                    if xl >= W - 1:
                        xl = xh = W - 1
                        x = float(xl)
                    else:
                        xh = xl + 1
                    ly, lx = y - yl, x - xl
                    res[ph, pw] += ((1 - ly) * (1 - lx) * feat[yl, xl] + (1 - ly) * lx * feat[yl, xh]
                                    + ly * (1 - lx) * feat[yh, xl] + ly * lx * feat[yh, xh])
            res[ph, pw] /= max(gh * gw, 1)
    return res


def test_levels_equal_mmdetection(case):
    """Equal to MMDetection's mapping, but for the inverted box, whose NaN scale MMDetection casts to
    a level that matches no level (its RoI feature stays 0); here it goes to P2, where its empty
    sample grid gives 0 as well."""
    _, boxes, levels = case
    want = ref.map_roi_levels(torch.from_numpy(boxes)).numpy()
    inverted = (boxes[:, 2] < boxes[:, 0]) ^ (boxes[:, 3] < boxes[:, 1])
    assert inverted.sum() == 1 and not (0 <= want[inverted]).any() and levels[inverted] == 0
    assert np.array_equal(levels[~inverted], want[~inverted]) and set(levels) == {0, 1, 2, 3}
    for s, lv in ((111.9, 0), (112.1, 1), (223.9, 1), (224.1, 2), (447.9, 2), (448.1, 3), (3000, 3), (1, 0)):
        b = jnp.asarray([[0, 0, s, s]], jnp.float32)
        assert int(ra.roi_levels(b)[0]) == lv, s


@pytest.mark.parametrize("out", [7, 14])
def test_both_forms_equal_the_reference(case, out):
    """Points form with the exact sample bound, and the window form on the RoIs that fit (every RoI
    it reports as not fitting is checked to be one the reference needs a larger patch for): within
    1e-4 of the features' std (float32 sample positions: coordinates up to ~200 feature pixels
    carry ~1e-5 px of rounding); the numpy loop agrees with the torch restatement on a few RoIs."""
    feats, boxes, levels = case
    _, want = _reference(feats, boxes, levels, out)
    want = want.numpy().transpose(0, 2, 3, 1)
    for i in (0, 5, 91, 94, 95, 98):
        np.testing.assert_allclose(_numpy_loop(feats[levels[i]], boxes[i], STRIDES[levels[i]], out), want[i],
                                   atol=1e-9)
    fj = [jnp.asarray(f) for f in feats]
    points = jax.jit(ra.roi_align_points, static_argnums=(3, 4, 5))(fj, jnp.asarray(boxes), jnp.asarray(levels),
                                                                     STRIDES, out, ra.exact_samples(boxes, levels, STRIDES, out))
    assert np.abs(np.asarray(points) - want).max() < 1e-4 * 2.0
    window, fits = jax.jit(ra.roi_align_window, static_argnums=(3, 4))(fj, jnp.asarray(boxes), jnp.asarray(levels),
                                                                       STRIDES, out)
    window, fits = np.asarray(window), np.asarray(fits)
    assert 0.8 < fits.mean() < 1  # the case holds RoIs beyond the patch
    assert np.abs(window[fits] - want[fits]).max() < 1e-4 * 2.0
    span = (boxes[:, 2:] - boxes[:, :2]) / np.asarray(STRIDES, np.float32)[levels, None]
    assert (np.sort(span, 1)[~fits] > (28, 60)).any(1).all()
    outside, inverted, huge, thin, whole = 92, 93, 94, 95, 97  # the special boxes
    assert np.abs(want[outside]).max() == np.abs(want[inverted]).max() == 0
    assert min(np.abs(want[i]).max() for i in (huge, whole)) > 0.1 and not fits[thin]


def test_gradients_equal_the_reference(case):
    """d(sum(out * g)) / d(features) for a random cotangent g: both forms against the restatement's
    autograd, float64, on the RoIs that fit the window (all of them for the points form)."""
    feats, boxes, levels = case
    out = 7
    g = np.random.default_rng(1).normal(size=(len(boxes), out, out, C)).astype(np.float32)
    fj = [jnp.asarray(f) for f in feats]
    _, fits = ra.roi_align_window(fj, jnp.asarray(boxes), jnp.asarray(levels), STRIDES, out)
    keep = np.flatnonzero(np.asarray(fits))
    maps, res = _reference(feats, boxes[keep], levels[keep], out, requires_grad=True)
    (res * torch.from_numpy(g[keep].transpose(0, 3, 1, 2)).double()).sum().backward()
    want = [m.grad[0].numpy().transpose(1, 2, 0) for m in maps]
    S = ra.exact_samples(boxes[keep], levels[keep], STRIDES, out)  # the patch holds RoIs of <= 10 samples a bin
    for form in ("points", "window"):
        def loss(fs):
            if form == "points":
                y = ra.roi_align_points(fs, jnp.asarray(boxes[keep]), jnp.asarray(levels[keep]), STRIDES, out, S)
            else:
                y = ra.roi_align_window(fs, jnp.asarray(boxes[keep]), jnp.asarray(levels[keep]), STRIDES, out)[0]
            return jnp.sum(y * g[keep])

        got = jax.jit(jax.grad(loss))(fj)
        for lv in range(4):
            assert np.abs(want[lv]).max() > 0.1
            np.testing.assert_allclose(np.asarray(got[lv]), want[lv], atol=2e-5 * np.abs(want[lv]).max(),
                                       err_msg=f"{form} level {lv}")


def test_points_form_bound_and_errors(case):
    """Under jit the points form needs its bound; a bound too small changes only the RoIs whose bins
    need more samples."""
    feats, boxes, levels = case
    fj = [jnp.asarray(f) for f in feats]
    with pytest.raises(ValueError, match="max_samples"):
        jax.jit(lambda b: ra.roi_align_points(fj, b, jnp.asarray(levels), STRIDES, 7))(jnp.asarray(boxes))
    _, want = _reference(feats, boxes, levels, 7)
    want = want.numpy().transpose(0, 2, 3, 1)
    got = np.asarray(ra.roi_align_points(fj, jnp.asarray(boxes), jnp.asarray(levels), STRIDES, 7, 2))
    span = (boxes[:, 2:] - boxes[:, :2]).max(1) / np.asarray(STRIDES, np.float32)[levels]
    small = np.ceil(span / 7) <= 2
    assert np.abs(got[small] - want[small]).max() < 1e-4 and np.abs(got[~small] - want[~small]).max() > 1e-2
