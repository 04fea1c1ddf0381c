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
        flops = _flops(compiled)
        rows.append(base | dict(images_per_s=batch / per_batch, ms_per_batch=1000 * per_batch,
                                compile_s=compile_s, params=params,
                                gflops_per_image=flops / batch / 1e9 if flops else None,
                                matmul_peak_gflops=peak_gflops,
                                pct_of_matmul_peak=(100 * flops / per_batch / 1e9 / peak_gflops
                                                    if flops and peak_gflops else None),
                                peak_mb=(_xla_bytes(compiled) or 0) / 2 ** 20,
                                device_peak_mb=(_device_peak_bytes() or 0) / 2 ** 20 or None))
        print(_fmt(rows[-1]), flush=True)
    return rows


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

    torch.set_num_threads(os.cpu_count() or 1)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

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

_HEAD = (f"{'model':<16}{'impl':<24}{'mode':<10}{'dtype':<10}{'batch':>6}{'images/s':>11}{'ms/batch':>10}"
         f"{'compile s':>10}{'peak MB':>9}{'GFLOPs/img':>11}{'% peak':>8}{'params':>12}")


def _fmt(r: dict) -> str:
    return (f"{r['model']:<16}{r['impl']:<24}{r['mode']:<10}{r['dtype']:<10}{r['batch']:>6}"
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
    ap.add_argument("--img-size", type=positive_int, default=224)
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
    ap.add_argument("--min-time", type=positive_float, default=3.0, help="seconds of timed calls per row")
    ap.add_argument("--warmup", type=nonnegative_int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--csv", default=None)
    ap.add_argument("--plot", default=None, help="PNG of images/s against batch size")
    args = ap.parse_args(argv)
    modes = [m for m in ("deploy", "unfolded", "train") if getattr(args, m)] or ["deploy", "unfolded", "train"]

    import platform

    print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind} ({jax.device_count()} device(s)), "
          f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
          f"{args.img_size}x{args.img_size}, GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')} "
          "(JAX and PyTorch alike: lsnet_jax.runtime)")
    peaks = {d: matmul_peak_gflops(d, args.min_time / 3, args.warmup) for d in args.dtype}
    print("XLA matmul peak (the '% peak' column's 100%): "
          + ", ".join(f"{d} {g:.0f} GFLOP/s" for d, g in peaks.items()))
    print(_HEAD + "\n" + "-" * len(_HEAD))
    rows = []
    for name in args.model:
        for dtype in args.dtype:
            for batch in args.batch:
                rows += jax_rows(name, batch, args.img_size, dtype, modes, args.min_time, args.warmup,
                                 peaks[dtype], args.impl)
                if args.distill and "train" in modes and name.startswith("lsnet_") and "_semfpn" not in name:
                    rows += distill_rows(name, args.distill, batch, args.img_size, dtype, args.min_time,
                                         args.warmup, peaks[dtype], args.impl)
                if args.torch or args.torch_repo or args.torch_compile:
                    for compile_model in (False, True) if args.torch_compile else (False,):
                        rows += torch_rows(name, batch, args.img_size, dtype, modes, args.min_time,
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
