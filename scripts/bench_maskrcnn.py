"""Mask R-CNN's inference and training step in JAX, stage by stage, and RoIAlign's two forms.

    python scripts/bench_maskrcnn.py                       # LSNet-T at 800x1216, batch 1, folded
    python scripts/bench_maskrcnn.py --size 800 1216 --train --torch --json out.json

Rows (each one compiled program, warmed up, then the median of ``--repeats`` timed calls):
``detect`` the whole official cascade (what ``lsnet-eval`` runs), and its stages compiled apart:
``features`` (backbone + FPN), ``rpn + proposals`` (the RPN head, top-k per level, decode, NMS by
level), ``box RoIAlign + head`` on the 1,000 proposals, ``multiclass NMS``, ``mask RoIAlign +
head`` on the 100 detections; then RoIAlign alone on 1,000 RoIs of a COCO-like size distribution
over P2..P5 (256 channels): the patch form and the points form with 2 and 4 samples per bin axis
(and the share of those RoIs each holds exactly); ``--train``: the training step at batch 2 (the
samplers, the five losses, backward, AdamW). ``--torch``: the PyTorch reference model's features
and RPN on the same input; its RoI stages need torchvision's compiled ``roi_align`` / ``nms``,
which do not load beside the CPU torch build, and are timed only where they do. The share of RPN +
NMS + RoIAlign is the stages' sum over the cascade's.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def timed(fn, *args, repeats: int) -> tuple[float, float]:
    """(compile + first call seconds, median seconds of ``repeats`` calls)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def coco_like_rois(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """RoIs with sqrt(area) log-uniform in [16, 600] px and aspect ratios log-uniform in [1/3, 3]."""
    rng = np.random.default_rng(seed)
    s = np.exp(rng.uniform(np.log(16), np.log(600), n))
    r = np.exp(rng.uniform(-np.log(3), np.log(3), n))
    bw, bh = s * np.sqrt(r), s / np.sqrt(r)
    cx, cy = rng.uniform(0, w, n), rng.uniform(0, h, n)
    return np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1).astype(np.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="lsnet_t_maskrcnn")
    ap.add_argument("--size", type=int, nargs=2, default=(800, 1216), metavar=("H", "W"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train", action="store_true", help="also the training step at batch 2")
    ap.add_argument("--torch", action="store_true", help="also the PyTorch reference's features and RPN")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)

    from lsnet_jax import create_model
    from lsnet_jax.inference import maskrcnn as mr
    from lsnet_jax.kernels import roi_align as ra
    from lsnet_jax.testing import diverse_images

    h, w = args.size
    if h % 32 or w % 32:
        ap.error("--size: sides multiples of 32")
    model = create_model(args.model, deploy=True)
    graph, state = nnx.split(model)
    x = jnp.asarray(diverse_images(1, h, seed=0, width=w).transpose(0, 2, 3, 1))
    shape, scale = jnp.asarray([[h, w]], jnp.float32), jnp.ones((1, 4), jnp.float32)
    rows = []

    def row(name, fn, *a):
        first, sec = timed(jax.jit(fn), *a, repeats=args.repeats)
        rows.append({"row": name, "seconds": sec, "compile_and_first": first})
        print(f"{name:34s} {1000 * sec:10.1f} ms   (compile + first call {first:.1f} s)", flush=True)
        return sec

    m = lambda s: nnx.merge(graph, s)  # noqa: E731
    total = row("detect (the whole cascade)", lambda s, x: mr.detect(m(s), x, shape, scale), state, x)
    feats = jax.jit(lambda s, x: m(s).features(x))(state, x)
    t_feat = row("features (backbone + FPN)", lambda s, x: m(s).features(x), state, x)

    def rpn(s, feats):
        c, r = m(s).rpn(feats)
        return jax.vmap(mr.rpn_proposals)(c, r, shape)

    t_rpn = row("rpn + proposals (NMS by level)", rpn, state, feats)
    props, _, pvalid = jax.jit(rpn)(state, feats)
    t_box = row("box RoIAlign + head (1000 RoIs)", lambda s, f, p: m(s).bbox_forward(f, p), state, feats, props)
    cls, reg = jax.jit(lambda s, f, p: m(s).bbox_forward(f, p))(state, feats, props)
    post = jax.vmap(mr.bbox_postprocess)
    t_nms = row("multiclass NMS", post, props, pvalid, cls, reg, shape, scale)
    boxes = jax.jit(post)(props, pvalid, cls, reg, shape, scale)[0]
    t_mask = row("mask RoIAlign + head (100 RoIs)", lambda s, f, b: m(s).mask_forward(f, b), state, feats, boxes)

    # RoIAlign alone: 1,000 RoIs on P2..P5 with 256 channels
    levels_maps = [f[0] for f in feats[:4]]
    rois = jnp.asarray(coco_like_rois(1000, h, w))
    lv = ra.roi_levels(rois)
    strides = (4, 8, 16, 32)
    exact = ra.roi_align_points(levels_maps, rois, lv, strides, 7, ra.exact_samples(rois, lv, strides, 7))
    t_align = row("RoIAlign patch form (1000 x 7x7)",
                  lambda f, b, lv: ra.roi_align_window(f, b, lv, strides, 7), levels_maps, rois, lv)
    fits = np.asarray(ra.roi_align_window(levels_maps, rois, lv, strides, 7)[1])
    rows[-1]["exact_share"] = float(fits.mean())
    for s_bound in (2, 4):
        row(f"RoIAlign points form, {s_bound} samples", functools.partial(
            lambda f, b, lv, S: ra.roi_align_points(f, b, lv, strides, 7, S), S=s_bound), levels_maps, rois, lv)
        got = np.asarray(ra.roi_align_points(levels_maps, rois, lv, strides, 7, s_bound))
        err = np.abs(got - np.asarray(exact)).max(axis=(1, 2, 3))
        rows[-1]["exact_share"] = float((err < 1e-4 * float(np.asarray(exact).std())).mean())
    shares = ", ".join(f"{100 * r['exact_share']:.1f}%" for r in rows[-2:])
    print(f"exact on these RoIs: patch form {100 * fits.mean():.1f}%, points form {shares} (2, 4 samples)")
    share = (t_rpn + t_nms) / total
    print(f"stages: features {t_feat / total:.0%}, RPN + proposals {t_rpn / total:.0%}, box RoIAlign + head "
          f"{t_box / total:.0%}, multiclass NMS {t_nms / total:.0%}, masks {t_mask / total:.0%} of the cascade; "
          f"RPN + NMS {share:.0%}; RoIAlign alone (1000 RoIs) {1000 * t_align:.0f} ms")

    if args.train:
        from lsnet_jax.train import maskrcnn_steps as ms

        tm = create_model(args.model)
        tm.train()
        tg, ts = nnx.split(tm)
        x2 = jnp.asarray(diverse_images(2, h, seed=1, width=w).transpose(0, 2, 3, 1))
        gt = jnp.asarray(coco_like_rois(8, h, w, seed=3)).clip(0, jnp.asarray([w, h, w, h], jnp.float32))
        masks = np.zeros((2, 8, h, w), np.uint8)
        for i, (x1, y1, x2_, y2) in enumerate(np.asarray(gt).astype(int)):
            masks[:, i, y1:y2, x1:x2_] = 1
        batch = dict(boxes=jnp.stack([gt, gt]), labels=jnp.zeros((2, 8), jnp.int32), box_valid=jnp.ones((2, 8), bool),
                     masks=jnp.asarray(masks), pad_shape=jnp.asarray([[h, w]] * 2, jnp.float32),
                     img_shape=jnp.asarray([[h, w]] * 2, jnp.float32))

        def step(s, x, b):
            return jax.grad(lambda s: ms.maskrcnn_loss(nnx.merge(tg, s), x, b, jax.random.key(0))["loss"])(s)

        row("training step, batch 2 (grads)", step, ts, x2, batch)

    if args.torch:
        import torch

        from lsnet_jax import torch_reference as ref

        tmodel = ref.create_torch_maskrcnn(args.model)
        xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
        with torch.inference_mode():
            tmodel(xt)
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                tmodel(xt)
                times.append(time.perf_counter() - t0)
        sec = statistics.median(times)
        rows.append({"row": "PyTorch reference: features + RPN heads", "seconds": sec})
        print(f"{'PyTorch reference: features + RPN':34s} {1000 * sec:10.1f} ms   (unfolded, eager)")
        try:
            import torchvision.ops  # noqa: F401

            torch.ops.torchvision.roi_align  # noqa: B018
        except Exception as e:  # noqa: BLE001
            print(f"PyTorch RoI stages not timed: torchvision's compiled ops do not load here ({type(e).__name__})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "size": [h, w], "device": str(jax.devices()[0]), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
