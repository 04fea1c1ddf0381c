"""Export a model for serving, checked against the JAX logits.

    lsnet-export --weights weights/lsnet_t --out lsnet_t.jaxexport --deploy
    lsnet-export --weights weights/lsnet_t --out lsnet_t_savedmodel --format savedmodel --deploy
    lsnet-export --weights weights/lsnet_t --out lsnet_t.tflite --format tflite --deploy
    lsnet-export --weights lsnet_t --out lsnet_t.onnx --format onnx --deploy   # the published weights
    lsnet-export --model lsnet_t --out lsnet_t_random.jaxexport   # random weights

Formats: ``stablehlo`` (``jax.export``, serialized), ``savedmodel`` (TF SavedModel, signature
``serving_default``) and ``tflite``, which go through jax2tf and need the ``[tf]`` extra, and
``onnx`` (LSNet classifiers and segmenters written directly as the NCHW graph ONNX Runtime runs
best, other models through jax2onnx; checked in ONNX Runtime: the ``[onnx]`` extra).
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
    ap.add_argument("--platforms", nargs="+", default=None,
                    help="stablehlo only: e.g. cpu cuda (default: this backend)")
    args = ap.parse_args(argv)

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
    # ONNX: LSNet classifiers and segmenters are written as a direct graph (onnx_graph); other
    # models go through jax2onnx, for which the plain lax formulations become ONNX Conv / Einsum
    # operators (XLA:CPU's tuned forms become thousands of slices and multiply-adds, slower in ORT)
    model = spec.create(deploy=args.deploy, impl="reference" if args.format == "onnx" else "auto")
    try:
        if args.format == "stablehlo":
            platforms = tuple(args.platforms) if args.platforms else None
            path = E.save_exported(E.export_model(model, size, args.batch, platforms), args.out)
        elif args.format == "savedmodel":
            path = E.save_saved_model(model, size, args.out, args.batch)
        elif args.format == "onnx":
            path = E.save_onnx(model, size, args.out, args.batch, name=spec.name)
        else:
            path = E.save_tflite(model, size, args.out, args.batch)
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the disk filled, or the folder became unwritable, during the export
        print(f"error: writing {args.out} failed: {e}", file=sys.stderr)
        return 1
    x = jnp.asarray(np.random.default_rng(0).standard_normal((args.batch or 3, size, size, 3)), jnp.float32)
    ref = np.asarray(model(x))
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
    print(f"wrote {path} ({size_mib:.1f} MiB, {args.format}); reloaded logits vs JAX: "
          f"max |diff| {err:.1e} of the logits' std")
    return 0 if err < 1e-4 else 1


def run() -> None:
    """The console script."""
    sys.exit(main())


if __name__ == "__main__":
    run()
