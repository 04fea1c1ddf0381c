"""Throughput of LSNet in JAX (XLA, ahead-of-time compiled), optionally side by side with PyTorch.

    python scripts/benchmark.py --model lsnet_t --batch 32 --deploy
    python scripts/benchmark.py --model lsnet_t lsnet_s lsnet_b --batch 32 256 2048 \
        --dtype float32 bfloat16 --deploy --unfolded --train --torch --json out.json --plot out.png

Modes (none given: all three): ``--deploy`` folded inference, ``--unfolded`` inference with
BatchNorms and RepVGG branches, ``--train`` one full training step (normalise, mixup/cutmix,
forward, soft-target loss, backward, AGC, AdamW, EMA: ``lsnet_jax.train.steps.train_step``);
with ``--distill [TEACHER]`` also the hard-distillation step of the ``_distill`` model with the
teacher (default ``regnety_160``, folded) and the teacher's forward alone, and the teacher's share.
JAX functions are lowered and compiled ahead of time (compile seconds reported apart), warmed up,
then timed with ``block_until_ready`` until ``--min-time`` has passed. FLOPs come from XLA's cost
analysis; ``% peak`` is a row's FLOP rate over that of one large XLA matrix product on the same
device and dtype, measured first (``matmul_peak_gflops``); ``peak MB`` is XLA's buffer estimate for
the row's program (arguments, outputs and temporaries), and for PyTorch on a GPU the peak it
allocated in that row; JSON rows also carry ``device_peak_mb``, the high-water mark the device
reports for the whole process so far (GPU only; JAX cannot reset it between rows).

``--torch`` times the PyTorch model in the same run: the project's reference
(``lsnet_jax.torch_reference``, SKA as nine shifted multiply-adds), or the official code from a
local clone (``--torch-repo PATH``, needs timm), with its Triton SKA where CUDA and Triton exist
and the reference SKA elsewhere. Inference is folded, under ``torch.inference_mode()``, on all
cores; the training step is forward, loss, backward, AGC, AdamW and EMA. ``--torch-compile`` also
times the same PyTorch model under ``torch.compile`` (TorchInductor: fused C++/OpenMP kernels on
CPU, Triton kernels on GPU, so SKA becomes one fused kernel there), its compile seconds reported
apart. Ratios come from one run.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lsnet_jax import create_model, fold, kernels, list_models  # noqa: E402
from lsnet_jax.cli.args import nonnegative_int, positive_float, positive_int  # noqa: E402
from lsnet_jax.runtime import restart_with_huge_pages  # noqa: E402
from lsnet_jax.data.transforms import erasing_box  # noqa: E402
from lsnet_jax.models import DTYPES  # noqa: E402
from lsnet_jax.train import optim  # noqa: E402
from lsnet_jax.train.steps import StepConfig, init_train_state, train_step  # noqa: E402


def _timeit(run, min_time: float, warmup: int) -> float:
    """Seconds per call: ``warmup`` calls, then calls until ``min_time`` has passed (at least 3)."""
    for _ in range(warmup):
        run()
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < min_time:
        run()
        n += 1
    return (time.perf_counter() - t0) / n


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _device_peak_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def _xla_bytes(compiled) -> int | None:
    try:
        m = compiled.memory_analysis()
        return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
                   - m.alias_size_in_bytes)
    except Exception:
        return None


def matmul_peak_gflops(dtype: str, min_time: float, warmup: int) -> float:
    """GFLOP/s of one large square matrix product compiled by XLA on the default device (2048 on
    CPU, 8192 elsewhere), in ``dtype``: the ceiling the model rows are measured against. A row's
    ``% peak`` is its FLOPs (XLA's cost analysis) per second over this figure, so a row near 100%
    is compute-bound at what this device's XLA matmul reaches; the rest of a row's time is memory
    traffic (depthwise convolutions, SKA, normalisations) and small kernels."""
    n = 2048 if jax.default_backend() == "cpu" else 8192
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.standard_normal((n, n)), DTYPES[dtype]) for _ in range(2))
    compiled = jax.jit(jnp.matmul).lower(a, b).compile()
    return 2 * n ** 3 / _timeit(lambda: compiled(a, b).block_until_ready(), min_time, warmup) / 1e9


def _flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"]) if cost and "flops" in cost else None


def jax_rows(name: str, batch: int, img: int, dtype: str, modes: list[str], min_time: float,
             warmup: int, peak_gflops: float | None = None, impl: str = "auto") -> list[dict]:
    rows = []
    model = create_model(name, img_size=img, dtype=DTYPES[dtype], impl=impl)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, img, img, 3)), DTYPES[dtype])
    for mode in modes:
        base = dict(model=name, impl="jax", kernels=model.impl, batch=batch, img_size=img, dtype=dtype,
                    mode=mode, deploy=mode == "deploy", device=jax.devices()[0].device_kind)
        if mode in ("deploy", "unfolded"):
            m = fold(model) if mode == "deploy" else model
            graph, state = nnx.split(m)
            params = _count(nnx.state(m, nnx.Param))

            def infer(state, x, graph=graph):
                return nnx.merge(graph, state)(x)

            t0 = time.perf_counter()
            compiled = jax.jit(infer).lower(state, x).compile()
            compile_s = time.perf_counter() - t0
            per_batch = _timeit(lambda: compiled(state, x).block_until_ready(), min_time, warmup)
        else:
            setup = _seg_train_setup if name.endswith("_semfpn") else _train_setup
            compiled, state, batch_in, compile_s, params = setup(model, name, batch, img, dtype)
            holder = [state]

            def run():
                holder[0], metrics = compiled(holder[0], batch_in)
                metrics["loss"].block_until_ready()

            per_batch = _timeit(run, min_time, warmup)
        rows.append(base | _jax_figures(compiled, batch, per_batch, compile_s, params, peak_gflops))
        print(_fmt(rows[-1]), flush=True)
    return rows


def _jax_figures(compiled, batch: int, per_batch: float, compile_s: float, params: int,
                 peak_gflops: float | None) -> dict:
    """A JAX row's figures: rate, compile seconds, FLOPs (XLA's cost analysis), % of the matmul
    peak, XLA's buffer estimate and the device's high-water mark."""
    flops = _flops(compiled)
    return dict(images_per_s=batch / per_batch, ms_per_batch=1000 * per_batch, compile_s=compile_s, params=params,
                gflops_per_image=flops / batch / 1e9 if flops else None, matmul_peak_gflops=peak_gflops,
                pct_of_matmul_peak=100 * flops / per_batch / 1e9 / peak_gflops if flops and peak_gflops else None,
                peak_mb=(_xla_bytes(compiled) or 0) / 2 ** 20,
                device_peak_mb=(_device_peak_bytes() or 0) / 2 ** 20 or None)


def _train_setup(model, name: str, batch: int, img: int, dtype: str):
    num_classes = model.cfg.num_classes
    tx = optim.make_optimizer(optim.lr_schedule(4e-3, 625, 300), weight_decay=0.025)
    state, graphdef, _ = init_train_state(model, tx, seed=0)
    params = state.params
    rng = np.random.default_rng(0)
    batch_in = {"image": jnp.asarray(rng.integers(0, 256, (batch, img, img, 3)), jnp.uint8),
                "label": jnp.asarray(rng.integers(0, num_classes, batch), jnp.int32),
                # RandomErasing boxes as the pipeline draws them (probability 0.25 per image)
                "erase": jnp.asarray(np.stack([erasing_box(rng, img, img, 0.25) for _ in range(batch)]))}
    step = functools.partial(train_step, teacher=None, graphdef=graphdef, tx=tx,
                             cfg=StepConfig(num_classes=num_classes, compact_erase=model.impl == "xla_cpu"))
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(state, batch_in).compile()
    return compiled, state, batch_in, time.perf_counter() - t0, _count(params)


def distill_rows(name: str, teacher: str, batch: int, img: int, dtype: str, min_time: float, warmup: int,
                 peak_gflops: float | None = None, impl: str = "auto") -> list[dict]:
    """The hard-distillation training step of ``name``'s distillation-head model with ``teacher``
    (random weights, folded, as the loop runs it) and the teacher's forward alone at the same
    batch: how much of a distillation step the teacher takes."""
    student = name if name.endswith("_distill") else name + "_distill"
    model = create_model(student, img_size=img, dtype=DTYPES[dtype], impl=impl)
    t_model = create_model(teacher, num_classes=model.cfg.num_classes, dtype=DTYPES[dtype], impl=impl, deploy=True)
    t_graph, t_state = nnx.split(t_model)
    rng = np.random.default_rng(0)
    base = dict(impl="jax", kernels=model.impl, batch=batch, img_size=img, dtype=dtype, deploy=False,
                device=jax.devices()[0].device_kind)
    rows = []

    x = jnp.asarray(rng.standard_normal((batch, img, img, 3)), DTYPES[dtype])
    t0 = time.perf_counter()
    fwd = jax.jit(lambda s, x: nnx.merge(t_graph, s)(x)).lower(t_state, x).compile()
    rows.append((fwd, dict(model=teacher, mode="teacher", params=_count(nnx.state(t_model, nnx.Param)),
                           compile_s=time.perf_counter() - t0,
                           per_batch=_timeit(lambda: fwd(t_state, x).block_until_ready(), min_time, warmup))))

    tx = optim.make_optimizer(optim.lr_schedule(4e-3, 625, 300), weight_decay=0.025)
    state, graphdef, _ = init_train_state(model, tx, seed=0)
    batch_in = {"image": jnp.asarray(rng.integers(0, 256, (batch, img, img, 3)), jnp.uint8),
                "label": jnp.asarray(rng.integers(0, model.cfg.num_classes, batch), jnp.int32),
                "erase": jnp.asarray(np.stack([erasing_box(rng, img, img, 0.25) for _ in range(batch)]))}
    step = functools.partial(train_step, graphdef=graphdef, tx=tx, teacher_graphdef=t_graph,
                             cfg=StepConfig(num_classes=model.cfg.num_classes, distillation="hard",
                                            compact_erase=model.impl == "xla_cpu"))
    teacher_in = {"state": nnx.to_pure_dict(t_state)}
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(state, batch_in, teacher_in).compile()
    compile_s = time.perf_counter() - t0
    holder = [state]

    def run():
        holder[0], metrics = compiled(holder[0], batch_in, teacher_in)
        metrics["loss"].block_until_ready()

    rows.append((compiled, dict(model=student, mode="distill", params=_count(state.params), compile_s=compile_s,
                                per_batch=_timeit(run, min_time, warmup))))
    out = []
    for prog, r in rows:
        flops = _flops(prog)
        per_batch = r.pop("per_batch")
        out.append(base | r | dict(images_per_s=batch / per_batch, ms_per_batch=1000 * per_batch,
                                   gflops_per_image=flops / batch / 1e9 if flops else None,
                                   matmul_peak_gflops=peak_gflops,
                                   pct_of_matmul_peak=(100 * flops / per_batch / 1e9 / peak_gflops
                                                       if flops and peak_gflops else None),
                                   peak_mb=(_xla_bytes(prog) or 0) / 2 ** 20, device_peak_mb=None))
        print(_fmt(out[-1]), flush=True)
    share = out[0]["ms_per_batch"] / out[1]["ms_per_batch"]
    out[1]["teacher_share"] = share
    print(f"{teacher}'s forward is {100 * share:.0f}% of {student}'s distillation step ({dtype}, batch {batch})")
    return out


def _seg_train_setup(model, name: str, batch: int, img: int, dtype: str):
    """The segmenter's training step (``lsnet_jax.tasks.segmentation``: Dropout2d, frozen backbone
    BatchNorms, logits resized to the labels, mmseg's loss, AdamW with the poly schedule)."""
    from lsnet_jax.train import seg_steps as seg

    tx = optax.adamw(seg.poly_schedule(2e-4, 1e-6, 0.9, 40_000), weight_decay=1e-4)
    model.train()
    graphdef = nnx.graphdef(model)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    model.eval()
    state = seg.SegTrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=stats,
                              opt_state=tx.init(params), rng=jax.random.key_data(jax.random.key(0)))
    rng = np.random.default_rng(0)
    classes = model.cfg.num_classes
    batch_in = {"image": jnp.asarray(rng.integers(0, 256, (batch, img, img, 3)), jnp.uint8),
                "label": jnp.asarray(rng.integers(0, classes, (batch, img, img)), jnp.uint8),
                "valid": jnp.full((batch, 2), img, jnp.int32)}
    step = functools.partial(seg.seg_train_step, graphdef=graphdef, tx=tx, mean=(0.485, 0.456, 0.406),
                             std=(0.229, 0.224, 0.225))
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(state, batch_in).compile()
    return compiled, state, batch_in, time.perf_counter() - t0, _count(params)


# ----------------------------------------------------------------------------- detectors

def _det_batch(batch: int, hw: tuple[int, int], rng: np.random.Generator, boxes_per_image: int = 10,
               max_boxes: int = 100) -> dict[str, np.ndarray]:
    """A detection batch as the pipeline gives it, every image filling the padded shape: uint8
    images, ``img_shape`` = ``pad_shape`` = (H, W), ``scale_factor`` 1, ``boxes_per_image``
    random boxes of 16-400 px, padded to ``max_boxes``."""
    h, w = hw
    xy = rng.uniform(0, 0.6, (batch, max_boxes, 2)) * [w, h]
    wh = rng.uniform(16, 400, (batch, max_boxes, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], -1).astype(np.float32)
    shape = np.tile(np.asarray([h, w], np.int32), (batch, 1))
    return {"image": rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8), "img_shape": shape, "pad_shape": shape,
            "scale_factor": np.ones((batch, 4), np.float32), "boxes": boxes,
            "labels": rng.integers(0, 80, (batch, max_boxes)).astype(np.int32),
            "box_valid": np.arange(max_boxes)[None].repeat(batch, 0) < boxes_per_image}


def _set_head_bias(model, bias: float) -> None:
    """retina_cls's bias, for JAX and PyTorch alike: 0 (scores near 0.5) makes every (anchor, class)
    pair pass the 0.05 threshold, so each level sorts all of them and fills its ``nms_pre``: the
    busiest post-processing; -4.6 (the init's prior 0.01) lets few pass: the lightest."""
    cls = model.bbox_head.retina_cls
    if isinstance(cls.bias, nnx.Variable):
        cls.bias[...] = jnp.full(cls.bias.shape, bias, cls.bias.dtype)
    else:  # torch
        import torch

        with torch.no_grad():
            cls.bias.fill_(bias)


def det_jax_rows(name: str, batch: int, hw: tuple[int, int], dtype: str, modes: list[str], min_time: float,
                 warmup: int, peak_gflops: float | None = None, impl: str = "auto", head_bias: float = 0.0
                 ) -> list[dict]:
    """A RetinaNet: ``deploy`` the folded forward (raw outputs), ``detect`` the folded forward with
    the official post-processing (``inference.detection.detect_batch``: normalise, anchors, per-level
    top-k, decode, class-aware NMS, 100 per image), ``post`` that post-processing alone on the raw
    outputs, ``unfolded``, ``train`` (``det_steps.det_train_step``:
    frozen backbone BatchNorms, assigner, focal and L1 losses, AdamW)."""
    from lsnet_jax.inference.detection import detect_batch, retina_postprocess
    from lsnet_jax.models.lsnet import IMAGENET_DEFAULT_MEAN as MEAN, IMAGENET_DEFAULT_STD as STD
    from lsnet_jax.train import det_steps
    from lsnet_jax.train.seg_steps import init_state

    model = create_model(name, dtype=DTYPES[dtype], impl=impl)
    _set_head_bias(model, head_bias)
    rng = np.random.default_rng(0)
    b = {k: jnp.asarray(v) for k, v in _det_batch(batch, hw, rng).items()}
    x = jnp.asarray(rng.standard_normal((batch, *hw, 3)), DTYPES[dtype])
    rows = []
    for mode in (["deploy", "detect", "post"] if "deploy" in modes else []) + [m for m in modes if m != "deploy"]:
        base = dict(model=name, impl="jax", kernels=model.impl, batch=batch, img_size=_size_label(hw), dtype=dtype,
                    mode=mode, deploy=mode in ("deploy", "detect", "post"), device=jax.devices()[0].device_kind)
        t0 = time.perf_counter()
        if mode == "train":
            tx = det_steps.make_optimizer(det_steps.step_schedule(1e-4, 7330, (8, 11), 0.1, 500, 0.001), 0.05)
            state, graphdef, _ = init_state(model, tx, 0)
            params = _count(state.params)
            step = functools.partial(det_steps.det_train_step, graphdef=graphdef, tx=tx, mean=MEAN, std=STD,
                                     num_classes=model.cfg.num_classes,
                                     loss_cfg=det_steps.LossConfig(group_size=min(2, batch)))
            train_in = {k: b[k] for k in ("image", "img_shape", "pad_shape", "boxes", "labels", "box_valid")}
            compiled = jax.jit(step, donate_argnums=0).lower(state, train_in).compile()
            holder = [state]

            def run():
                holder[0], metrics = compiled(holder[0], train_in)
                metrics["loss"].block_until_ready()
        else:
            m = fold(model) if mode in ("deploy", "detect", "post") else model
            graph, state = nnx.split(m)
            params = _count(nnx.state(m, nnx.Param))
            if mode == "post":  # the post-processing alone, on the folded model's raw outputs
                raw = jax.jit(lambda s, x, graph=graph: nnx.merge(graph, s)(x))(state, x)
                post = functools.partial(retina_postprocess, num_classes=model.cfg.num_classes)
                fn = lambda r, t: jax.vmap(post)(*r, t["img_shape"].astype(jnp.float32), t["scale_factor"])  # noqa: E731
                test_in = {k: b[k] for k in ("img_shape", "scale_factor")}
                compiled = jax.jit(fn).lower(raw, test_in).compile()

                def run(compiled=compiled, raw=raw, test_in=test_in):
                    jax.block_until_ready(compiled(raw, test_in))
            elif mode == "detect":
                test_in = {k: b[k] for k in ("image", "img_shape", "scale_factor")}
                fn = lambda s, t, graph=graph: detect_batch(nnx.merge(graph, s), t, MEAN, STD)  # noqa: E731
                compiled = jax.jit(fn).lower(state, test_in).compile()

                def run(compiled=compiled, state=state, test_in=test_in):
                    jax.block_until_ready(compiled(state, test_in))
            else:
                fn = lambda s, x, graph=graph: nnx.merge(graph, s)(x)  # noqa: E731
                compiled = jax.jit(fn).lower(state, x).compile()

                def run(compiled=compiled, state=state):
                    jax.block_until_ready(compiled(state, x))
        compile_s = time.perf_counter() - t0
        per_batch = _timeit(run, min_time, warmup)
        rows.append(base | _jax_figures(compiled, batch, per_batch, compile_s, params, peak_gflops))
        print(_fmt(rows[-1]), flush=True)
    _post_share(rows)
    return rows


def _post_share(rows: list[dict]) -> None:
    """The post-processing's share of inference: the ``post`` row (post-processing alone, on raw
    outputs) over the ``detect`` row (forward and post-processing), timed apart: the difference of
    two noisy timings would be noisier."""
    post = {r["impl"]: r for r in rows if r["mode"] == "post"}
    for r in rows:
        if r["mode"] == "detect" and r["impl"] in post:
            r["postprocess_share"] = post[r["impl"]]["ms_per_batch"] / r["ms_per_batch"]
            print(f"{r['model']} {r['impl']} {r['dtype']} batch {r['batch']}: post-processing "
                  f"{100 * r['postprocess_share']:.0f}% of inference "
                  f"({post[r['impl']]['ms_per_batch']:.1f} of {r['ms_per_batch']:.1f} ms)")


def _torch_retina_loss(cls_scores, bbox_preds, boxes, labels, valid, num_classes: int):
    """RetinaNet's training losses in PyTorch, for timing: mmdet's work (max-IoU assignment with
    0.5 / 0.4 thresholds and each box's best anchor, sigmoid focal loss over the assigned anchors,
    L1 on the encoded deltas of the positives, both over the positives' count) in plain torch ops,
    on images that fill their padded shape (every anchor valid)."""
    import torch

    from lsnet_jax.torch_reference import retina_anchors

    def box_iou(a, b):
        lt, rb = torch.maximum(a[:, None, :2], b[None, :, :2]), torch.minimum(a[:, None, 2:], b[None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(-1)
        area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
        return inter / (area(a)[:, None] + area(b)[None] - inter)

    def sigmoid_focal_loss(x, t, alpha, gamma):
        p = torch.sigmoid(x)
        ce = torch.nn.functional.binary_cross_entropy_with_logits(x, t, reduction="none")
        pt = p * t + (1 - p) * (1 - t)
        return ((alpha * t + (1 - alpha) * (1 - t)) * ce * (1 - pt) ** gamma).sum()

    dev = cls_scores[0].device
    anchors = torch.cat([retina_anchors(c.shape[2], c.shape[3], 8 * 2 ** i).to(dev) for i, c in enumerate(cls_scores)])
    cls = torch.cat([c.permute(0, 2, 3, 1).reshape(c.shape[0], -1, num_classes) for c in cls_scores], 1)
    reg = torch.cat([r.permute(0, 2, 3, 1).reshape(r.shape[0], -1, 4) for r in bbox_preds], 1)
    loss_cls = loss_bbox = 0.0
    for i in range(cls.shape[0]):
        gt, gl = boxes[i][valid[i]], labels[i][valid[i]]
        iou = box_iou(anchors, gt)
        best, idx = iou.max(1)
        assigned = torch.full_like(best, -1, dtype=torch.long)
        assigned[best < 0.4] = 0
        assigned[best >= 0.5] = idx[best >= 0.5] + 1
        gt_best = iou.argmax(0)
        assigned[gt_best] = torch.arange(len(gt), device=dev) + 1
        pos = assigned > 0
        target = torch.zeros_like(cls[i])
        target[pos, gl[assigned[pos] - 1]] = 1.0
        n = max(int(pos.sum()), 1)
        keep = assigned >= 0
        loss_cls = loss_cls + sigmoid_focal_loss(cls[i][keep], target[keep], 0.25, 2.0) / n
        a, g = anchors[pos], gt[assigned[pos] - 1]
        pw, ph = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
        gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
        deltas = torch.stack([((g[:, 0] + g[:, 2]) - (a[:, 0] + a[:, 2])) * 0.5 / pw,
                              ((g[:, 1] + g[:, 3]) - (a[:, 1] + a[:, 3])) * 0.5 / ph,
                              torch.log(gw / pw), torch.log(gh / ph)], 1)
        loss_bbox = loss_bbox + (reg[i][pos] - deltas).abs().sum() / n
    return loss_cls / cls.shape[0], loss_bbox / cls.shape[0]


def _torch_device(dtype: str):
    """PyTorch on all cores: the device (CUDA if there is one), the dtype, a device sync."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    return dev, {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype], sync


def _torch_nms():
    """The fastest NMS this PyTorch has, and its name: torchvision's compiled ``nms`` (the twin of
    mmcv's kernel that MMDetection calls) where its C++ ops load, else a greedy walk over the
    IoU matrix computed at once (same result as the reference's loop)."""
    import torch

    try:
        from torchvision.ops import nms

        nms(torch.zeros((1, 4)), torch.zeros(1), 0.5)
        return nms, "torchvision nms"
    except Exception:  # e.g. a torchvision built for another torch: its C++ ops do not load
        pass

    def matrix_nms(boxes, scores, iou_threshold):
        order = torch.sort(scores, descending=True, stable=True).indices
        b = boxes[order]
        lt, rb = torch.maximum(b[:, None, :2], b[None, :, :2]), torch.minimum(b[:, None, 2:], b[None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(-1)
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        over = (inter / (area[:, None] + area[None] - inter) > iou_threshold).cpu().numpy()
        keep = np.ones(len(b), bool)
        for i in range(len(b)):
            if keep[i]:
                keep[i + 1:] &= ~over[i, i + 1:]
        return order[torch.from_numpy(keep).to(order.device)]

    return matrix_nms, "IoU-matrix nms"


def det_torch_rows(name: str, batch: int, hw: tuple[int, int], dtype: str, modes: list[str], min_time: float,
                   warmup: int, head_bias: float = 0.0) -> list[dict]:
    """The PyTorch reference detector (``torch_reference.create_torch_retinanet``): the folded
    forward, the forward with MMDetection's post-processing per image (``retina_postprocess`` with
    ``_torch_nms``), unfolded, and a training step (frozen backbone BatchNorms,
    ``_torch_retina_loss``, AdamW)."""
    import torch

    from lsnet_jax.torch_reference import create_torch_retinanet, fuse_, retina_postprocess

    nms, nms_name = _torch_nms()
    print(f"PyTorch post-processing with {nms_name}")

    dev, tdtype, sync = _torch_device(dtype)

    rng = np.random.default_rng(0)
    nb = _det_batch(batch, hw, rng)
    x = torch.randn(batch, 3, *hw, device=dev, dtype=tdtype)
    rows = []
    for mode in (["deploy", "detect", "post"] if "deploy" in modes else []) + [m for m in modes if m != "deploy"]:
        model = create_torch_retinanet(name).to(dev)
        _set_head_bias(model, head_bias)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        if mode != "train":
            with torch.no_grad():
                model = fuse_(model) if mode != "unfolded" else model
            model = model.to(tdtype).eval()

            def postprocess(cls, reg):
                for i in range(batch):
                    retina_postprocess([c[i:i + 1].float() for c in cls], [r[i:i + 1].float() for r in reg],
                                       tuple(nb["img_shape"][i]), nb["scale_factor"][i], nms=nms)

            if mode == "post":  # the post-processing alone, on the folded model's raw outputs
                with torch.inference_mode():
                    raw = model(x)

                def run(raw=raw, postprocess=postprocess):
                    with torch.inference_mode():
                        postprocess(*raw)
                    sync()
            else:
                def run(model=model, mode=mode, postprocess=postprocess):
                    with torch.inference_mode():
                        out = model(x)
                        if mode == "detect":
                            postprocess(*out)
                    sync()
        else:
            model = model.train()
            for m in model.backbone.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
            tb = {k: torch.as_tensor(nb[k], device=dev) for k in ("boxes", "labels", "box_valid")}

            def run(model=model, opt=opt, tb=tb):
                with torch.autocast(dev.type, dtype=tdtype, enabled=tdtype != torch.float32):
                    cls, reg = model(x.float())
                lc, lb = _torch_retina_loss([c.float() for c in cls], [r.float() for r in reg], tb["boxes"],
                                            tb["labels"].long(), tb["box_valid"], 80)
                opt.zero_grad(set_to_none=True)
                (lc + lb).backward()
                opt.step()
                sync()
        params = sum(p.numel() for p in model.parameters())
        per_batch = _timeit(run, min_time, warmup)
        peak = torch.cuda.max_memory_allocated() / 2 ** 20 if dev.type == "cuda" else None
        rows.append(dict(model=name, impl="torch-ref", batch=batch, img_size=_size_label(hw), dtype=dtype, mode=mode,
                         deploy=mode in ("deploy", "detect", "post"),
                         device=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
                         images_per_s=batch / per_batch, ms_per_batch=1000 * per_batch, compile_s=None,
                         params=params, gflops_per_image=None, peak_mb=peak, device_peak_mb=None,
                         matmul_peak_gflops=None, pct_of_matmul_peak=None))
        print(_fmt(rows[-1]), flush=True)
    _post_share(rows)
    return rows


def _size_label(hw: tuple[int, int]) -> int | str:
    return hw[0] if hw[0] == hw[1] else f"{hw[0]}x{hw[1]}"


def image_size(text: str) -> tuple[int, int]:
    """``N`` (N x N) or ``HxW`` (a detector's input, e.g. 800x1216: sides multiples of 32)."""
    parts = text.lower().split("x")
    if len(parts) > 2:
        raise argparse.ArgumentTypeError(f"{text!r}: give N or HxW")
    sides = [positive_int(p) for p in parts]
    return (sides[0], sides[-1])


# ----------------------------------------------------------------------------- PyTorch


def _torch_model(name: str, img: int, repo: str | None):
    import torch

    if repo is None:
        from lsnet_jax.torch_reference import create_torch_model, create_torch_segmenter, fuse_

        if name.endswith("_semfpn"):
            return create_torch_segmenter(name), fuse_, "torch-ref"
        return create_torch_model(name, img_size=img), fuse_, "torch-ref"
    if name.endswith("_semfpn"):
        raise SystemExit("--torch-repo times the official classifiers; the segmenters run the reference")
    sys.path.insert(0, os.path.abspath(repo))
    impl = "torch-official"
    try:
        import triton  # noqa: F401

        if not torch.cuda.is_available():
            raise ImportError("no CUDA device")
    except ImportError:  # the official SKA is a Triton kernel: use the reference SKA instead
        import types

        from lsnet_jax.torch_reference import ska_torch

        shim = types.ModuleType("model.ska")

        class SKA(torch.nn.Module):
            def forward(self, x, w):
                return ska_torch(x, w)

        shim.SKA = SKA
        sys.modules["model.ska"] = shim
        impl = "torch-official(ref SKA)"
    try:
        from model import lsnet as official
    except ImportError as e:
        raise SystemExit(f"cannot import model/lsnet.py from {repo}: {e} (the official code needs timm)")
    base = name.removesuffix("_distill")
    model = getattr(official, base)(distillation=name.endswith("_distill")).eval()

    def fuse_any(module):
        for child_name, child in list(module.named_children()):
            if hasattr(child, "fuse"):
                setattr(module, child_name, child.fuse())
            else:
                fuse_any(child)
        return module

    return model, fuse_any, impl


def _unit_norm(t):
    import torch

    if t.ndim <= 1:
        return torch.linalg.vector_norm(t)
    return torch.linalg.vector_norm(t, dim=tuple(range(1, t.ndim)), keepdim=True)


def torch_rows(name: str, batch: int, img: int, dtype: str, modes: list[str], min_time: float, warmup: int,
               repo: str | None, compile_model: bool = False) -> list[dict]:
    import torch

    dev, tdtype, sync = _torch_device(dtype)

    rows = []
    for mode in modes:
        model, fuse, impl = _torch_model(name, img, repo)
        model = model.to(dev)
        x = torch.randn(batch, 3, img, img, device=dev, dtype=tdtype)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        if mode in ("deploy", "unfolded"):
            if mode == "deploy":
                with torch.no_grad():
                    model = fuse(model)
            model = model.to(tdtype).eval()
            params = sum(p.numel() for p in model.parameters())

            def run():
                with torch.inference_mode():
                    model(x)
                sync()
        elif name.endswith("_semfpn"):  # mmseg's step: frozen backbone BN, CE at the labels' size, AdamW
            model = model.train()
            for m in model.backbone.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
            params = sum(p.numel() for p in model.parameters())
            opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=1e-4)
            y = torch.randint(0, 150, (batch, img, img), device=dev)

            def run():
                with torch.autocast(dev.type, dtype=tdtype, enabled=tdtype != torch.float32):
                    out = torch.nn.functional.interpolate(model(x.float()), size=(img, img), mode="bilinear",
                                                          align_corners=False)
                    loss = torch.nn.functional.cross_entropy(out.float(), y, ignore_index=255)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sync()
        else:
            model = model.train()
            params = sum(p.numel() for p in model.parameters())
            opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=0.025)
            ema = [p.detach().clone() for p in model.parameters()]
            y = torch.randint(0, 1000, (batch,), device=dev)
            targets = torch.nn.functional.one_hot(y, 1000).float() * 0.9 + 0.1 / 1000

            def run():
                with torch.autocast(dev.type, dtype=tdtype, enabled=tdtype != torch.float32):
                    out = model(x.float())
                    out = out[0] if isinstance(out, tuple) else out
                    loss = torch.sum(-targets * torch.log_softmax(out.float(), -1), -1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                with torch.no_grad():  # timm's AGC
                    for p in model.parameters():
                        pn, gn = _unit_norm(p), _unit_norm(p.grad)
                        mx = pn.clamp(min=1e-3) * 0.02
                        p.grad.copy_(torch.where(gn < mx, p.grad, p.grad * (mx / gn.clamp(min=1e-6))))
                opt.step()
                with torch.no_grad():
                    for e, p in zip(ema, model.parameters()):
                        e.mul_(0.99996).add_(p.detach(), alpha=1 - 0.99996)
                sync()
        compile_s = None
        if compile_model:  # TorchInductor: fused kernels (C++/OpenMP on CPU, Triton on GPU)
            model = torch.compile(model)
            impl = impl + "+compile"
            t0 = time.perf_counter()
            run()  # the first call compiles
            compile_s = time.perf_counter() - t0
        per_batch = _timeit(run, min_time, warmup)
        peak = torch.cuda.max_memory_allocated() / 2 ** 20 if dev.type == "cuda" else None
        rows.append(dict(model=name, impl=impl, batch=batch, img_size=img, dtype=dtype, mode=mode,
                         deploy=mode == "deploy", device=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
                         images_per_s=batch / per_batch, ms_per_batch=1000 * per_batch, compile_s=compile_s,
                         params=params, gflops_per_image=None, peak_mb=peak, device_peak_mb=None,
                         matmul_peak_gflops=None, pct_of_matmul_peak=None))
        print(_fmt(rows[-1]), flush=True)
    return rows


# ----------------------------------------------------------------------------- output

_HEAD = (f"{'model':<20}{'impl':<24}{'mode':<10}{'dtype':<10}{'batch':>6}{'images/s':>11}{'ms/batch':>10}"
         f"{'compile s':>10}{'peak MB':>9}{'GFLOPs/img':>11}{'% peak':>8}{'params':>12}")


def _fmt(r: dict) -> str:
    return (f"{r['model']:<20}{r['impl']:<24}{r['mode']:<10}{r['dtype']:<10}{r['batch']:>6}"
            f"{r['images_per_s']:>11.1f}{r['ms_per_batch']:>10.1f}"
            f"{(format(r['compile_s'], '.1f') if r['compile_s'] is not None else '-'):>10}"
            f"{(format(r['peak_mb'], '.0f') if r['peak_mb'] else '-'):>9}"
            f"{(format(r['gflops_per_image'], '.3f') if r['gflops_per_image'] else '-'):>11}"
            f"{(format(r['pct_of_matmul_peak'], '.0f') if r['pct_of_matmul_peak'] else '-'):>8}"
            f"{r['params']:>12,}")


def ratios(rows: list[dict]) -> list[str]:
    """JAX images/s over the PyTorch images/s of the same model, mode, dtype and batch."""
    out = []
    for r in rows:
        if r["impl"] != "jax":
            continue
        for t in rows:
            if t["impl"] != "jax" and all(t[k] == r[k] for k in ("model", "mode", "dtype", "batch", "img_size")):
                out.append(f"{r['model']} {r['mode']} {r['dtype']} batch {r['batch']}: JAX / {t['impl']} = "
                           f"{r['images_per_s'] / t['images_per_s']:.2f}x")
    return out


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    keys = sorted({(r["model"], r["impl"], r["mode"], r["dtype"]) for r in rows})
    for k in keys:
        pts = sorted((r["batch"], r["images_per_s"]) for r in rows if (r["model"], r["impl"], r["mode"], r["dtype"]) == k)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=" ".join(k))
    ax.set(xscale="log", xlabel="batch size", ylabel="images / s", title=f"LSNet throughput on {rows[0]['device']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", nargs="+", default=["lsnet_t"], choices=list_models())
    ap.add_argument("--batch", nargs="+", type=positive_int, default=[32])
    ap.add_argument("--img-size", type=image_size, default=(224, 224), metavar="N|HxW",
                    help="N x N, or H x W for a detector (e.g. 800x1216, a resized COCO image padded to 32)")
    ap.add_argument("--dtype", nargs="+", default=["float32"], choices=sorted(DTYPES))
    ap.add_argument("--deploy", action="store_true", help="folded inference")
    ap.add_argument("--unfolded", action="store_true", help="inference with BN and RepVGG branches")
    ap.add_argument("--train", action="store_true", help="a full training step")
    ap.add_argument("--distill", nargs="?", const="regnety_160", default=None, metavar="TEACHER",
                    help="with --train: also the hard-distillation step with TEACHER (default regnety_160, "
                         "DeiT's) and the teacher's forward alone, and the teacher's share of the step")
    ap.add_argument("--torch", action="store_true", help="also time PyTorch in the same run")
    ap.add_argument("--torch-repo", default=None, help="a local clone of the official LSNet code")
    ap.add_argument("--torch-compile", action="store_true",
                    help="time the PyTorch model under torch.compile (TorchInductor) as well as eagerly")
    ap.add_argument("--impl", default="auto", choices=kernels.IMPLS,
                    help="the JAX model's kernels (lsnet_jax.kernels; recorded per row as 'kernels')")
    ap.add_argument("--head-bias", type=float, default=0.0,
                    help="detectors: retina_cls's bias; 0 (default): every score passes 0.05, the busiest "
                         "post-processing; -4.6 (the init's prior 0.01): few pass, the lightest")
    ap.add_argument("--min-time", type=positive_float, default=3.0, help="seconds of timed calls per row")
    ap.add_argument("--warmup", type=nonnegative_int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--csv", default=None)
    ap.add_argument("--plot", default=None, help="PNG of images/s against batch size")
    args = ap.parse_args(argv)
    modes = [m for m in ("deploy", "unfolded", "train") if getattr(args, m)] or ["deploy", "unfolded", "train"]

    import platform

    hw = args.img_size
    if hw[0] != hw[1] and not all(n.endswith("_retinanet") for n in args.model):
        ap.error(f"--img-size {hw[0]}x{hw[1]}: classifiers and segmenters take square sizes here")
    print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind} ({jax.device_count()} device(s)), "
          f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
          f"{hw[0]}x{hw[1]}, GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')} "
          "(JAX and PyTorch alike: lsnet_jax.runtime)")
    peaks = {d: matmul_peak_gflops(d, args.min_time / 3, args.warmup) for d in args.dtype}
    print("XLA matmul peak (the '% peak' column's 100%): "
          + ", ".join(f"{d} {g:.0f} GFLOP/s" for d, g in peaks.items()))
    print(_HEAD + "\n" + "-" * len(_HEAD))
    rows = []
    for name in args.model:
        for dtype in args.dtype:
            for batch in args.batch:
                if name.endswith("_retinanet"):
                    rows += det_jax_rows(name, batch, hw, dtype, modes, args.min_time, args.warmup, peaks[dtype],
                                         args.impl, args.head_bias)
                    if args.torch or args.torch_compile or args.torch_repo:
                        rows += det_torch_rows(name, batch, hw, dtype, modes, args.min_time, args.warmup,
                                               args.head_bias)
                    continue
                rows += jax_rows(name, batch, hw[0], dtype, modes, args.min_time, args.warmup,
                                 peaks[dtype], args.impl)
                if args.distill and "train" in modes and name.startswith("lsnet_") and "_semfpn" not in name:
                    rows += distill_rows(name, args.distill, batch, hw[0], dtype, args.min_time,
                                         args.warmup, peaks[dtype], args.impl)
                if args.torch or args.torch_repo or args.torch_compile:
                    for compile_model in (False, True) if args.torch_compile else (False,):
                        rows += torch_rows(name, batch, hw[0], dtype, modes, args.min_time,
                                           args.warmup, args.torch_repo, compile_model)
    for line in ratios(rows):
        print(line)
    for r in rows:  # the allocator setting both frameworks ran under (lsnet_jax.runtime)
        r["glibc_tunables"] = os.environ.get("GLIBC_TUNABLES")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    restart_with_huge_pages()
    # on a GPU JAX would take 75% of its memory at start, and PyTorch, timed in the same process,
    # needs room too (set before JAX's client starts)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    sys.exit(main())
