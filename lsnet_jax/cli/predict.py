"""Classify image files from the command line.

    lsnet-predict cat.jpg dog.png --checkpoint weights/lsnet_t [--topk 5] [--json out.json]

``--checkpoint`` is a weights directory (``lsnet-convert``, ``lsnet-export-weights``) or a
``.safetensors`` file (then ``--model`` names the variant). Each image goes through the eval
transform (resize to size/crop_pct, bicubic, centre crop); the top-k classes are printed with their
probabilities. Class names: those stored with the weights (a training run records its dataset's),
ImageNet's for a 1000-class head, else ``class <i>``. An unreadable file is reported and skipped;
the exit status is then 1.

Segmentation weights (``*_semfpn``) write a coloured label map per image instead:

    lsnet-predict room.jpg --checkpoint weights/lsnet_t_semfpn --out-dir seg/ [--overlay 0.5]

``seg/room.png`` (one colour per class, ``lsnet_jax.data.segmentation.palette``), with
``--overlay A`` also ``seg/room_overlay.png`` (the colours blended over the photo with opacity A),
and the classes found with their pixel shares printed (and in ``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lsnet-predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    ap.add_argument("--checkpoint", required=True, help="weights directory or .safetensors file")
    ap.add_argument("--model", default=None, help="variant, if the weights do not name it")
    ap.add_argument("--topk", type=int, default=5)
    ap.add_argument("--img-size", type=int, default=None)
    ap.add_argument("--crop-pct", type=float, default=None)
    ap.add_argument("--json", default=None, help="also write the predictions to this file")
    ap.add_argument("--out-dir", default="predictions", help="segmentation: where the label PNGs go")
    ap.add_argument("--overlay", type=float, default=0.0,
                    help="segmentation: also write the labels over the image with this opacity (0-1)")
    ap.add_argument("--test-scale", type=int, nargs=2, default=None, metavar=("LONG", "SHORT"),
                    help="segmentation: the keep-ratio test resize (default: the weights' own, else "
                         "ADE20K's 2048 512)")
    args = ap.parse_args(argv)

    from lsnet_jax.data.transforms import EvalTransform
    from lsnet_jax.inference.loading import inference_spec, num_classes
    from lsnet_jax.inference.predict import class_names, predict

    ckpt = Path(args.checkpoint)
    try:
        spec = inference_spec(ckpt, args.model, args.img_size, args.crop_pct)
    except (FileNotFoundError, ValueError) as e:  # FileNotFoundError: published weights offline, not cached
        print(f"error: {e}", file=sys.stderr)
        return 2
    if spec.name.endswith("_semfpn"):
        return segment_files(args, spec)
    transform = EvalTransform(spec.img_size, spec.crop_pct)
    batch, ok, failed = [], [], []
    for f in args.images:
        try:
            batch.append(transform(Path(f).read_bytes())["image"])
            ok.append(f)
        except Exception as e:  # unreadable, truncated, not an image, missing
            failed.append(f)
            print(f"skipped {f}: cannot read it as an image ({type(e).__name__}: {e})", file=sys.stderr)
    if not ok:
        print("error: none of the images could be read", file=sys.stderr)
        return 1
    try:
        model = spec.create()
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    names = class_names(spec.meta, num_classes(model))
    idx, prob = predict(model, np.stack(batch), spec.mean, spec.std, args.topk)
    results = []
    for f, row_i, row_p in zip(ok, idx, prob):
        print(f)
        top = [{"class": int(i), "name": names[i], "prob": float(p)} for i, p in zip(row_i, row_p)]
        for r, t in enumerate(top, 1):
            print(f"  {r}. {100 * t['prob']:6.2f}%  {t['name']} ({t['class']})")
        results.append({"file": f, "top": top})
    if args.json:
        Path(args.json).write_text(json.dumps({"model": spec.name, "checkpoint": str(ckpt), "predictions": results,
                                               "skipped": failed}, indent=2))
    if failed:
        print(f"{len(failed)} of {len(args.images)} images skipped as unreadable", file=sys.stderr)
    return 1 if failed else 0


def segment_files(args: argparse.Namespace, spec) -> int:
    from PIL import Image

    from lsnet_jax.data.segmentation import ADE20K_CLASSES, SegTestTransform, colorize, decode_image
    from lsnet_jax.inference.segmentation import logits_fn, predict_labels

    if not 0.0 <= args.overlay <= 1.0:
        print(f"error: --overlay must be in [0, 1], got {args.overlay}", file=sys.stderr)
        return 2
    try:
        model = spec.create()
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    classes = model.cfg.num_classes
    names = spec.meta.get("class_names") or (ADE20K_CLASSES if classes == 150 else [f"class {i}" for i in range(classes)])
    scale = tuple(args.test_scale or spec.meta.get("test_scale") or (2048, 512))
    fn = logits_fn(model, spec.mean, spec.std)
    transform = SegTestTransform(scale, int(spec.meta.get("size_divisor", 32)))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results, failed = [], []
    for f in args.images:
        try:
            image = decode_image(Path(f).read_bytes())
        except Exception as e:  # unreadable, truncated, not an image, missing
            failed.append(f)
            print(f"skipped {f}: cannot read it as an image ({type(e).__name__}: {e})", file=sys.stderr)
            continue
        labels = predict_labels(fn, image, transform)
        colours = colorize(labels, classes)
        stem = Path(f).stem
        Image.fromarray(colours).save(out / f"{stem}.png")
        if args.overlay:
            blend = (1 - args.overlay) * image.astype(np.float32) + args.overlay * colours
            Image.fromarray(np.round(blend).astype(np.uint8)).save(out / f"{stem}_overlay.png")
        ids, counts = np.unique(labels, return_counts=True)
        found = sorted(({"class": int(i), "name": names[i], "share": float(c / labels.size)}
                        for i, c in zip(ids, counts)), key=lambda r: -r["share"])
        print(f"{f} -> {out / (stem + '.png')}")
        for r in found[:args.topk]:
            print(f"  {100 * r['share']:6.2f}%  {r['name']} ({r['class']})")
        results.append({"file": f, "labels": str(out / f"{stem}.png"), "classes": found})
    if args.json:
        Path(args.json).write_text(json.dumps({"model": spec.name, "checkpoint": str(args.checkpoint),
                                               "predictions": results, "skipped": failed}, indent=2))
    if failed:
        print(f"{len(failed)} of {len(args.images)} images skipped as unreadable", file=sys.stderr)
    return 1 if failed else 0 if results else 1


def run() -> None:
    """The console script."""
    sys.exit(main())


if __name__ == "__main__":
    run()
