"""What int8 costs a trained classifier: float32 JAX, the float32 ONNX graph and ONNX Runtime's
int8 static and dynamic quantizations on a held-out split, side by side.

    python scripts/int8_accuracy.py --weights weights/digits [--dataset lsnet_digits]
        [--data-dir data/tfds] [--split test] [--calibration-split train] [--calibration 256]

The weights are what ``lsnet-export-weights`` writes (the README's digits run:
``lsnet-export-weights --workdir runs/digits --out weights/digits --ema --best``). Calibration
images come from ``--calibration-split`` (never the split measured), written as the JPEG files
they are stored as and read back by ``lsnet-export --quantize int8 --calibration DIR``, as a user
would. Per model: top-1 on the split, top-1 agreement with float32 JAX, and the largest logit
difference from it in units of the logits' standard deviation. Latency is in
``scripts/bench_serve.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from lsnet_jax.cli.args import positive_int

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--dataset", default="lsnet_digits")
    ap.add_argument("--data-dir", default="data/tfds")
    ap.add_argument("--split", default="test")
    ap.add_argument("--calibration-split", default="train")
    ap.add_argument("--calibration", type=positive_int, default=256, help="calibration images")
    args = ap.parse_args(argv)

    import jax.numpy as jnp

    from lsnet_jax.cli import export as cli
    from lsnet_jax.data.source import open_source
    from lsnet_jax.data.transforms import EvalTransform
    from lsnet_jax.inference import serving as E
    from lsnet_jax.inference.loading import inference_spec
    from lsnet_jax.models.registry import compiled

    spec = inference_spec(args.weights)
    source, info = open_source(args.dataset, args.split, args.data_dir)
    transform = EvalTransform(spec.img_size, spec.crop_pct)
    x = np.stack([transform(source[i]["image"])["image"] for i in range(len(source))]).astype(np.float32) / 255
    x = ((x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)).astype(np.float32)
    y = np.asarray([int(source[i]["label"]) for i in range(len(source))])
    model = spec.create(deploy=True)
    ref = np.asarray(compiled(model)(jnp.asarray(x)))
    rows = [("JAX jit", "float32", ref)]
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        calib_src, _ = open_source(args.dataset, args.calibration_split, args.data_dir)
        (d / "calib").mkdir()
        for i in range(min(args.calibration, len(calib_src))):
            (d / "calib" / f"{i:05d}.jpg").write_bytes(calib_src[i]["image"])
        fp = E.save_onnx(model, spec.img_size, d / "float.onnx")
        rows.append(("ONNX graph in ONNX Runtime", "float32", E.run_onnx(fp, x)))
        if cli.main(["--weights", str(args.weights), "--out", str(d / "int8.onnx"), "--format", "onnx",
                     "--quantize", "int8", "--calibration", str(d / "calib"),
                     "--calibration-max", str(args.calibration)]) != 0:
            return 1
        rows.append((f"int8 static ({args.calibration} calibration images)", "int8", E.run_onnx(d / "int8.onnx", x)))
        dyn = E.quantize_onnx(fp, d / "dynamic.onnx", "dynamic")
        rows.append(("int8 dynamic", "int8", E.run_onnx(dyn, x)))
    print(f"{spec.name} ({args.weights}) on {args.dataset} {args.split}, {len(y)} images at {spec.img_size}px")
    print("| model | dtype | top-1 % | top-1 agreement with float32 % | max logit diff (std) |")
    print("|---|---|---|---|---|")
    for name, dtype, logits in rows:
        print(f"| {name} | {dtype} | {100 * np.mean(logits.argmax(-1) == y):.2f} | "
              f"{100 * np.mean(logits.argmax(-1) == ref.argmax(-1)):.2f} | "
              f"{np.abs(logits - ref).max() / ref.std():.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
