"""Serving LSNet on a CPU, every way a user can: one table, a PNG and JSON.

    python scripts/bench_serve.py [--model lsnet_t] [--img 224] [--batch 32] [--calls 100]
        [--min-time 3] [--rounds 5] [--only jax onnx ...] [--json serve.json] [--plot serve.png]

Runtimes, each on the folded (deploy) model with the same input size: this project's JAX jit
(float32, bfloat16), its StableHLO export (``jax.export``), its TFLite export (LiteRT's XNNPACK
delegate), its ONNX exports in ONNX Runtime (the direct graph ``lsnet-export`` writes, with a
symbolic and a static batch, with SKA as nine slices, int8 static and dynamic, and through
jax2onnx); beside them the PyTorch reference
(``lsnet_jax.torch_reference``, BN folded) eager (float32, bfloat16 autocast), under
``torch.compile``, and its own ``torch.onnx.export`` in ONNX Runtime. Per runtime: latency at
batch 1 (median and p90 over ``--calls`` calls) and throughput at ``--batch`` (images/s over
``--min-time`` seconds), after warm-up; build time (compile / convert) apart. Every runtime is
built first, then all are timed in turn, ``--rounds`` times, each round a share of the calls and
seconds: a shared machine's drifting speed falls on every runtime alike. Weights are random:
speed does not depend on their values. Every runtime uses all cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

Runner = Callable[[np.ndarray], object]  # NHWC float32 images -> outputs (blocked on)


def jax_runner(name: str, img: int, dtype: str) -> Callable[[int], Runner]:
    import jax
    import jax.numpy as jnp

    from lsnet_jax import create_model

    model = create_model(name, img_size=img, deploy=True, dtype=getattr(jnp, dtype))
    fn = jax.jit(lambda x: model(x))
    cache = {}

    def for_batch(b: int) -> Runner:
        if b not in cache:
            cache[b] = fn.lower(jax.ShapeDtypeStruct((b, img, img, 3), jnp.float32)).compile()
        c = cache[b]
        return lambda x: jax.block_until_ready(c(x))
    return for_batch


def stablehlo_runner(name: str, img: int, tmp: Path) -> Callable[[int], Runner]:
    import jax

    from lsnet_jax import create_model
    from lsnet_jax.inference import serving as E

    exported = E.load_exported(E.save_exported(E.export_model(create_model(name, img_size=img, deploy=True), img),
                                               tmp / "m.jaxexport"))
    call = jax.jit(exported.call)
    return lambda b: (lambda x: jax.block_until_ready(call(x)))


def tflite_runner(name: str, img: int, tmp: Path) -> Callable[[int], Runner]:
    from ai_edge_litert.interpreter import Interpreter

    from lsnet_jax import create_model
    from lsnet_jax.inference import serving as E

    # as lsnet-export --format tflite builds it (the plain lax forms: 2.7x faster under XNNPACK)
    path = E.save_tflite(create_model(name, img_size=img, deploy=True, impl="reference"), img, tmp / "m.tflite")

    def for_batch(b: int) -> Runner:
        interp = Interpreter(model_path=str(path), num_threads=os.cpu_count())
        inp = interp.get_input_details()[0]
        interp.resize_tensor_input(inp["index"], (b, img, img, 3))
        interp.allocate_tensors()
        out = interp.get_output_details()[0]["index"]

        def run(x):
            interp.set_tensor(inp["index"], x)
            interp.invoke()
            return interp.get_tensor(out)
        return run
    return for_batch


def _ort(path: Path):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda b: (lambda x: sess.run(None, {name: x})[0])


def onnx_runner(name: str, img: int, tmp: Path, converter: str = "graph", ska_form: str = "conv",
                batch: int | None = None, quantize: str | None = None) -> Callable[[int], Runner]:
    from lsnet_jax import create_model
    from lsnet_jax.inference import serving as E

    model = create_model(name, img_size=img, deploy=True, impl="reference")  # as lsnet-export --format onnx

    def save(path: Path, b: int | None) -> Path:
        path = E.save_onnx(model, img, path, b, converter=converter, ska_form=ska_form)
        if quantize is None:
            return path
        from lsnet_jax.testing import diverse_images

        calib = diverse_images(16, img, seed=0).transpose(0, 2, 3, 1)  # speed does not depend on the ranges
        return E.quantize_onnx(path, path.with_suffix(".int8.onnx"), quantize, calib)

    if batch is None:
        return _ort(save(tmp / "m.onnx", None))
    one, many = _ort(save(tmp / "m1.onnx", 1)), _ort(save(tmp / "mb.onnx", batch))
    return lambda b: (one if b == 1 else many)(b)


def _torch_model(name: str, img: int):
    import torch

    from lsnet_jax.torch_reference import create_torch_model, fuse_

    torch.set_num_threads(os.cpu_count())
    return fuse_(create_torch_model(name, img_size=img).eval())


def _nchw(run: Callable) -> Runner:
    import torch

    def call(x):
        with torch.inference_mode():
            return run(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    return call


def torch_runner(name: str, img: int, mode: str) -> Callable[[int], Runner]:
    import torch

    model = _torch_model(name, img)
    if mode == "compile":
        model = torch.compile(model)
    if mode == "bfloat16":
        def run(t):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(t)
        return lambda b: _nchw(run)
    return lambda b: _nchw(model)


def torch_onnx_runner(name: str, img: int, tmp: Path) -> Callable[[int], Runner]:
    import torch

    model = _torch_model(name, img)
    path = tmp / "torch.onnx"
    import warnings

    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and constant-folding notes
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, img, img),), str(path), input_names=["images"],
                          dynamic_axes={"images": {0: "B"}}, dynamo=False)
    session = _ort(path)
    return lambda b: (lambda x: session(b)(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))


def measure_round(for_batch: Callable[[int], Runner], img: int, batch: int, calls: int, min_time: float
                  ) -> tuple[list[float], int, float]:
    """One round for one runtime: ``calls`` timed batch-1 calls, then batch calls for at least
    ``min_time`` seconds; (batch-1 seconds per call, batch calls made, their seconds)."""
    rng = np.random.default_rng(0)
    one = rng.standard_normal((1, img, img, 3)).astype(np.float32)
    many = rng.standard_normal((batch, img, img, 3)).astype(np.float32)
    run1, run_b = for_batch(1), for_batch(batch)
    for _ in range(3):
        run1(one)
    lat = []
    for _ in range(calls):
        t = time.perf_counter()
        run1(one)
        lat.append(time.perf_counter() - t)
    for _ in range(2):  # torch.compile recompiles for a second shape on a later call
        run_b(many)
    n, t0 = 0, time.perf_counter()
    while (time.perf_counter() - t0) < min_time or n < 2:
        run_b(many)
        n += 1
    return lat, n, time.perf_counter() - t0


def summarize(lat: list[float], n: int, seconds: float, batch: int) -> dict:
    return {"batch1_median_ms": 1e3 * statistics.median(lat),
            "batch1_p90_ms": 1e3 * float(np.percentile(lat, 90)),
            f"batch{batch}_images_per_s": n * batch / seconds}


RUNTIMES = {  # key: (label, dtype, builder(name, img, tmp, batch))
    "jax": ("JAX jit", "float32", lambda n, i, t, b: jax_runner(n, i, "float32")),
    "jax-bf16": ("JAX jit", "bfloat16", lambda n, i, t, b: jax_runner(n, i, "bfloat16")),
    "stablehlo": ("StableHLO export (jax.export)", "float32", lambda n, i, t, b: stablehlo_runner(n, i, t)),
    "tflite": ("TFLite export (LiteRT, XNNPACK)", "float32", lambda n, i, t, b: tflite_runner(n, i, t)),
    "onnx": ("ONNX export (lsnet-export) in ONNX Runtime", "float32", lambda n, i, t, b: onnx_runner(n, i, t)),
    "onnx-static": ("ONNX export, static batch, in ONNX Runtime", "float32",
                    lambda n, i, t, b: onnx_runner(n, i, t, batch=b)),
    "onnx-slices": ("ONNX export, SKA as nine slices, in ONNX Runtime", "float32",
                    lambda n, i, t, b: onnx_runner(n, i, t, ska_form="slices")),
    "onnx-int8": ("ONNX export, int8 static (QDQ, calibrated), in ONNX Runtime", "int8",
                  lambda n, i, t, b: onnx_runner(n, i, t, quantize="static")),
    "onnx-int8-dynamic": ("ONNX export, int8 dynamic, in ONNX Runtime", "int8",
                          lambda n, i, t, b: onnx_runner(n, i, t, quantize="dynamic")),
    "onnx-jax2onnx": ("ONNX export (jax2onnx) in ONNX Runtime", "float32",
                      lambda n, i, t, b: onnx_runner(n, i, t, converter="jax2onnx")),
    "torch": ("PyTorch reference, eager", "float32", lambda n, i, t, b: torch_runner(n, i, "eager")),
    "torch-bf16": ("PyTorch reference, eager (autocast)", "bfloat16", lambda n, i, t, b: torch_runner(n, i, "bfloat16")),
    "torch-compile": ("PyTorch reference, torch.compile", "float32", lambda n, i, t, b: torch_runner(n, i, "compile")),
    "torch-onnx": ("PyTorch reference, torch.onnx.export in ONNX Runtime", "float32", lambda n, i, t, b: torch_onnx_runner(n, i, t)),
}


def plot(rows: list[dict], batch: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['runtime']} ({r['dtype']})" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.45 * len(rows) + 1.5), sharey=True)
    colors = ["tab:blue" if not r["runtime"].startswith("PyTorch") else "tab:gray" for r in rows]
    axes[0].barh(labels, [r["batch1_median_ms"] for r in rows], color=colors)
    axes[0].set_xlabel("batch 1 latency, median (ms; lower is better)")
    axes[1].barh(labels, [r[f"batch{batch}_images_per_s"] for r in rows], color=colors)
    axes[1].set_xlabel(f"batch {batch} throughput (images/s; higher is better)")
    axes[0].invert_yaxis()
    fig.suptitle(f"{rows[0]['model']} at {rows[0]['img']}px on {rows[0]['cpu']} (blue: lsnet-jax, grey: PyTorch)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    from lsnet_jax.cli.args import positive_float, positive_int

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="lsnet_t")
    ap.add_argument("--img", type=positive_int, default=224)
    ap.add_argument("--batch", type=positive_int, default=32)
    ap.add_argument("--calls", type=positive_int, default=100, help="batch-1 calls timed")
    ap.add_argument("--min-time", type=positive_float, default=3.0, help="seconds of batch calls timed")
    ap.add_argument("--rounds", type=positive_int, default=5,
                    help="the runtimes are timed in turn this many times (--calls and --min-time split among them)")
    ap.add_argument("--only", nargs="+", choices=list(RUNTIMES), default=list(RUNTIMES))
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args(argv)
    import platform

    cpu = f"{platform.machine()} x{os.cpu_count()}"
    built = {}  # key: (for_batch, build seconds); all held at once so that the rounds interleave
    with tempfile.TemporaryDirectory() as d:
        for key in args.only:
            label, dtype, build = RUNTIMES[key]
            t = time.perf_counter()
            try:
                (Path(d) / key).mkdir()
                for_batch = build(args.model, args.img, Path(d) / key, args.batch)
                for_batch(1), for_batch(args.batch)  # compile / convert / load, outside the timing
                measure_round(for_batch, args.img, args.batch, 1, 0.0)  # and one call of each
            except Exception as e:  # a runtime that is not installed or cannot run this model: say so
                print(f"{label} ({dtype}): not measured ({type(e).__name__}: {str(e).splitlines()[0][:150]})",
                      file=sys.stderr)
                continue
            built[key] = (for_batch, time.perf_counter() - t)
            print(f"{label} ({dtype}): built in {built[key][1]:.1f} s", file=sys.stderr, flush=True)
        # the machine's speed drifts (shared hosts): every runtime is timed in each of --rounds
        # rounds, in turn, and its figures pool its rounds
        pooled = {key: ([], 0, 0.0) for key in built}
        calls, secs = max(1, args.calls // args.rounds), args.min_time / args.rounds
        for i in range(args.rounds):
            for key, (for_batch, _) in built.items():
                lat, n, t = measure_round(for_batch, args.img, args.batch, calls, secs)
                p = pooled[key]
                pooled[key] = (p[0] + lat, p[1] + n, p[2] + t)
            print(f"round {i + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    rows = []
    for key, (lat, n, t) in pooled.items():
        label, dtype, _ = RUNTIMES[key]
        r = summarize(lat, n, t, args.batch)
        rows.append({"runtime": label, "dtype": dtype, "model": args.model, "img": args.img, "cpu": cpu,
                     "build_s": built[key][1], **r})
        print(f"{label} ({dtype}): {r}", file=sys.stderr, flush=True)
    tp = f"batch{args.batch}_images_per_s"
    print(f"{args.model} at {args.img}px, folded, on {cpu}")
    print(f"| runtime | dtype | batch 1 median ms | batch 1 p90 ms | batch {args.batch} images/s | build s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['runtime']} | {r['dtype']} | {r['batch1_median_ms']:.2f} | {r['batch1_p90_ms']:.2f} | "
              f"{r[tp]:.1f} | {r['build_s']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    if args.plot and rows:
        plot(rows, args.batch, args.plot)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
