"""Export a model for serving, checked against the JAX logits.

    lsnet-export --weights weights/lsnet_t --out lsnet_t.jaxexport --deploy
    lsnet-export --weights weights/lsnet_t --out lsnet_t_savedmodel --format savedmodel --deploy
    lsnet-export --weights weights/lsnet_t --out lsnet_t.tflite --format tflite --deploy
    lsnet-export --weights lsnet_t --out lsnet_t.onnx --format onnx --deploy   # the published weights
    lsnet-export --weights lsnet_t --out lsnet_t_int8.onnx --format onnx --quantize int8 --calibration imgs/
    lsnet-export --model lsnet_t --out lsnet_t_random.jaxexport   # random weights

Formats: ``stablehlo`` (``jax.export``, serialized), ``savedmodel`` (TF SavedModel, signature
``serving_default``) and ``tflite``, which go through jax2tf and need the ``[tf]`` extra, and
``onnx`` (LSNet classifiers and segmenters written directly as the NCHW graph ONNX Runtime runs
best, other models through jax2onnx; checked in ONNX Runtime: the ``[onnx]`` extra). ``--quantize
int8`` writes ONNX Runtime's int8 model instead: static (weights per channel, activation ranges
calibrated on the images of ``--calibration DIR``, preprocessed as the weights' eval transform) or
``--quantize-mode dynamic`` (ranges at run time); its check is the top-1 agreement with the float
JAX model on the calibration images (or random ones), which it prints.
Inputs are float32 NHWC images normalised as the model expects. The batch dimension is symbolic
unless ``--batch`` is given. The script reloads the file in its own runtime, runs it on random
images and prints the largest logit difference against the in-memory model (exit 1 above 1e-4 of
the logits' std). An existing ``--out`` is refused unless ``--overwrite``, and an output that is,
contains or lies inside ``--weights`` always; both are checked before the model is built.
"""

from __future__ import annotations

import argparse
import sys

from lsnet_jax.cli.args import positive_int


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lsnet-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=None, help="weights directory (lsnet-convert / lsnet-export-weights)")
    ap.add_argument("--model", default=None, help="model name (default: from the weights' config.json)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    ap.add_argument("--img-size", type=positive_int, default=None)
    ap.add_argument("--batch", type=positive_int, default=None, help="fixed batch size (default: symbolic)")
    ap.add_argument("--deploy", action="store_true", help="fold BatchNorms first")
    ap.add_argument("--format", default="stablehlo", choices=["stablehlo", "savedmodel", "tflite", "onnx"])
    ap.add_argument("--converter", default="auto", choices=["auto", "graph", "jax2onnx"],
                    help="onnx only: the direct LSNet graph (auto: where it applies) or jax2onnx")
    ap.add_argument("--ska-form", default="conv", choices=["conv", "slices"],
                    help="onnx graph only: SKA as one shift Conv + Mul + ReduceSum, or nine slices")
    ap.add_argument("--quantize", default=None, choices=["int8"], help="onnx only: ONNX Runtime's int8 quantization")
    ap.add_argument("--quantize-mode", default="static", choices=["static", "dynamic"])
    ap.add_argument("--calibration", default=None, metavar="DIR",
                    help="--quantize static: a folder of images whose activation ranges calibrate it")
    ap.add_argument("--calibration-max", type=positive_int, default=256, help="calibration images read at most")
    ap.add_argument("--platforms", nargs="+", default=None,
                    help="stablehlo only: e.g. cpu cuda (default: this backend)")
    args = ap.parse_args(argv)
    if args.quantize and args.format != "onnx":
        ap.error("--quantize applies to --format onnx")
    if args.quantize and args.quantize_mode == "static" and not args.calibration:
        ap.error("--quantize int8 (static) needs --calibration DIR, a folder of images like those served "
                 "(or --quantize-mode dynamic)")
    if args.calibration and not args.quantize:
        ap.error("--calibration applies to --quantize int8")

    from pathlib import Path

    from lsnet_jax.checkpoints.weights import OutputError, check_output

    try:  # before any work: the export takes minutes
        check_output(args.out, args.overwrite, [args.weights] if args.weights and Path(args.weights).exists() else [])
    except OutputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    import jax.numpy as jnp
    import numpy as np

    from lsnet_jax.inference import serving as E
    from lsnet_jax.inference.loading import inference_spec

    try:
        spec = inference_spec(args.weights, args.model, args.img_size)
    except ValueError as e:
        print(f"error: {e}" if args.weights else "error: give --model or --weights with a config.json",
              file=sys.stderr)
        return 2
    size = spec.img_size
    calib = None
    if args.calibration:  # before the model is built: a bad folder is known now
        try:
            calib, skipped = E.calibration_images(args.calibration, size, spec.mean, spec.std, spec.crop_pct,
                                                  limit=args.calibration_max)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"calibration: {len(calib)} images of {args.calibration}"
              + (f", {len(skipped)} unreadable skipped" if skipped else ""))
    # ONNX: LSNet classifiers and segmenters are written as a direct graph (onnx_graph); other
    # models go through jax2onnx, and TFLite through jax2tf, for both of which the plain lax
    # formulations convert to far fewer, faster operators than XLA:CPU's tuned forms (TFLite:
    # 2,333 against 4,023 ops, 2.7x faster under XNNPACK; docs/performance.md)
    model = spec.create(deploy=args.deploy, impl="reference" if args.format in ("onnx", "tflite") else "auto")
    try:
        if args.format == "stablehlo":
            platforms = tuple(args.platforms) if args.platforms else None
            path = E.save_exported(E.export_model(model, size, args.batch, platforms), args.out)
        elif args.format == "savedmodel":
            path = E.save_saved_model(model, size, args.out, args.batch)
        elif args.format == "onnx" and args.quantize:
            import tempfile

            with tempfile.TemporaryDirectory(prefix=".float-", dir=Path(args.out).absolute().parent) as d:
                fp = E.save_onnx(model, size, Path(d) / "float.onnx", args.batch, name=spec.name,
                                 converter=args.converter, ska_form=args.ska_form)
                path = E.quantize_onnx(fp, args.out, args.quantize_mode, calib)
        elif args.format == "onnx":
            path = E.save_onnx(model, size, args.out, args.batch, name=spec.name, converter=args.converter,
                               ska_form=args.ska_form)
        else:
            path = E.save_tflite(model, size, args.out, args.batch)
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the disk filled, or the folder became unwritable, during the export
        print(f"error: writing {args.out} failed: {e}", file=sys.stderr)
        return 1
    x = jnp.asarray(np.random.default_rng(0).standard_normal((args.batch or 3, size, size, 3)), jnp.float32)
    if calib is not None:  # int8 is judged on images like those served (a static batch: that many)
        n = args.batch or min(len(calib), 64)
        x = jnp.asarray(np.resize(calib, (n, *calib.shape[1:])))
    from lsnet_jax.models.registry import compiled

    ref = np.asarray(compiled(model)(x))  # one compiled program: eagerly, op by op, it takes longer than the export
    if args.format == "stablehlo":
        got = np.asarray(E.load_exported(path).call(x))
    elif args.format == "savedmodel":
        got = E.run_saved_model(path, np.asarray(x))
    elif args.format == "onnx":
        got = E.run_onnx(path, np.asarray(x))
    else:
        got = E.run_tflite(path, np.asarray(x))
    err = float(np.abs(got - ref).max() / max(ref.std(), 1e-12))
    size_mib = sum(f.stat().st_size for f in [path, *path.rglob("*")] if f.is_file()) / 2 ** 20
    if args.quantize:  # int8 is not float32 to 1e-4: say how far it moved the predictions
        agree = float(np.mean(got.argmax(-1) == ref.argmax(-1)))
        print(f"wrote {path} ({size_mib:.1f} MiB, onnx {args.quantize} {args.quantize_mode}); vs the float32 JAX "
              f"model on {len(x)} {'calibration' if calib is not None else 'random'} images: top-1 agreement "
              f"{100 * agree:.1f}%, max |diff| {err:.2f} of the logits' std")
        return 0
    print(f"wrote {path} ({size_mib:.1f} MiB, {args.format}); reloaded logits vs JAX: "
          f"max |diff| {err:.1e} of the logits' std")
    return 0 if err < 1e-4 else 1


def run() -> None:
    """The console script."""
    sys.exit(main())


if __name__ == "__main__":
    run()
