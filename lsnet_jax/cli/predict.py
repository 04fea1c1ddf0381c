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
and the classes found with their pixel shares printed (and in ``--json``). Images of one name in
several folders (``a/x.jpg b/x.png``) keep their folders under ``--out-dir`` (``seg/a/x.png``,
``seg/b/x.png``). Existing label maps are refused unless ``--overwrite``; an output that would
replace an input image or lie in the weights is refused always, before any image is read.

Detection weights (``*_retinanet``, ``*_maskrcnn``) draw their boxes instead (Mask R-CNN its
instance masks too, tinted in the class colour, and their RLEs as ``segmentation`` in the results):

    lsnet-predict street.jpg --checkpoint weights/lsnet_t_retinanet --out-dir det/ [--score-thr 0.3]

``det/street.png``: the photo with every box scoring at least ``--score-thr`` drawn in its class's
colour with the class name and score, and ``det/results.json``, every detection (scores above the
official 0.05) in COCO's results format (``image_id`` the image's 1-based place on the command line,
``bbox`` x, y, w, h in the image's pixels, ``category_id`` COCO's id of the label for an 80-class
head, else the label + 1). Each image goes through
the official test pipeline: OpenCV decoding, keep-ratio resize to ``--test-scale``, padding to 32.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from lsnet_jax.cli.args import crop_fraction, fraction, positive_int


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lsnet-predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    ap.add_argument("--checkpoint", required=True, help="weights directory or .safetensors file")
    ap.add_argument("--model", default=None, help="variant, if the weights do not name it")
    ap.add_argument("--topk", type=positive_int, default=5)
    ap.add_argument("--img-size", type=positive_int, default=None)
    ap.add_argument("--crop-pct", type=crop_fraction, default=None)
    ap.add_argument("--json", default=None, help="also write the predictions to this file")
    ap.add_argument("--out-dir", default="predictions", help="segmentation/detection: where the PNGs go")
    ap.add_argument("--overwrite", action="store_true", help="segmentation/detection: replace existing PNGs")
    ap.add_argument("--overlay", type=fraction, default=0.0,
                    help="segmentation: also write the labels over the image with this opacity (0-1)")
    ap.add_argument("--test-scale", type=positive_int, nargs=2, default=None, metavar=("LONG", "SHORT"),
                    help="segmentation/detection: the keep-ratio test resize (default: the weights' own, else "
                         "ADE20K's 2048 512 / COCO's 1333 800)")
    ap.add_argument("--score-thr", type=fraction, default=0.3,
                    help="detection: draw the boxes scoring at least this (every detection goes to the json)")
    args = ap.parse_args(argv)

    from lsnet_jax.checkpoints.weights import check_report
    from lsnet_jax.data.transforms import EvalTransform, read_image_file
    from lsnet_jax.inference.loading import inference_spec, num_classes
    from lsnet_jax.inference.predict import class_names, predict

    ckpt = Path(args.checkpoint)
    args.images = list(dict.fromkeys(args.images))  # an image named twice is predicted once
    inputs = [*args.images, *([ckpt] if ckpt.exists() else [])]
    try:
        if args.json:  # before the work: a report that cannot be written is known now, not after it
            check_report(args.json, inputs)
        spec = inference_spec(ckpt, args.model, args.img_size, args.crop_pct, allow_detector=True)
    except (FileNotFoundError, ValueError) as e:  # FileNotFoundError: published weights offline, not cached
        print(f"error: {e}", file=sys.stderr)
        return 2
    if spec.name.endswith("_semfpn"):
        return segment_files(args, spec, inputs)
    if spec.name.endswith(("_retinanet", "_maskrcnn")):
        return detect_files(args, spec, inputs)
    transform = EvalTransform(spec.img_size, spec.crop_pct)
    batch, ok, failed = [], [], []
    for f in args.images:
        x = read_or_skip(f, lambda p: transform(read_image_file(p))["image"], failed)
        if x is not None:
            batch.append(x)
            ok.append(f)
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


def label_paths(images: list[str], out_dir: Path) -> list[Path]:
    """Where each image's label map goes: ``out_dir/<stem>.png``; where two images share a stem,
    their paths below the folder that holds them all (``a/x.jpg``, ``b/x.png`` -> ``a/x.png``,
    ``b/x.png``; ``x.jpg``, ``x.png`` -> ``x_jpg.png``, ``x_png.png``). Never two images on one file."""
    stems = [Path(f).stem for f in images]
    if len(set(stems)) == len(stems):
        return [out_dir / f"{s}.png" for s in stems]
    real = [Path(os.path.realpath(f)) for f in images]
    root = Path(os.path.commonpath([p.parent for p in real]))
    rel = [p.relative_to(root).with_suffix("") for p in real]
    if len(set(rel)) < len(rel):  # one folder, one stem, two suffixes
        rel = [p.relative_to(root).with_name(p.name.replace(".", "_")) for p in real]
    return [out_dir / f"{r}.png" for r in rel]


def segment_files(args: argparse.Namespace, spec, inputs: list) -> int:
    from PIL import Image

    from lsnet_jax.checkpoints.weights import OutputError, check_inputs_kept, unwritable
    from lsnet_jax.data.segmentation import ADE20K_CLASSES, SegTestTransform, colorize, decode_image
    from lsnet_jax.data.transforms import read_image_file
    from lsnet_jax.inference.segmentation import logits_fn, predict_labels

    out = Path(args.out_dir)
    targets = label_paths(args.images, out)
    overlays = [t.with_name(f"{t.stem}_overlay.png") for t in targets] if args.overlay else []
    try:  # before any image is read: no output may replace an input, nor an earlier prediction unasked
        why = unwritable(out / "x.png")
        if why:
            raise OutputError(f"cannot write label maps into {out.absolute()}: {why}; give another --out-dir")
        for t in [*targets, *overlays]:
            check_inputs_kept(t, inputs)
        existing = [t for t in [*targets, *overlays] if t.exists()]
        if existing and not args.overwrite:
            raise OutputError(f"{len(existing)} of the label maps exist already ({existing[0]}"
                              f"{' ...' if len(existing) > 1 else ''}); give another --out-dir, or pass "
                              f"--overwrite to replace them")
    except OutputError as e:
        print(f"error: {e}", file=sys.stderr)
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
    results, failed = [], []
    for f, target in zip(args.images, targets):
        image = read_or_skip(f, lambda p: decode_image(read_image_file(p)), failed)
        if image is None:
            continue
        labels = predict_labels(fn, image, transform)
        colours = colorize(labels, classes)
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(colours).save(target)
        if args.overlay:
            blend = (1 - args.overlay) * image.astype(np.float32) + args.overlay * colours
            Image.fromarray(np.round(blend).astype(np.uint8)).save(target.with_name(f"{target.stem}_overlay.png"))
        ids, counts = np.unique(labels, return_counts=True)
        found = sorted(({"class": int(i), "name": names[i], "share": float(c / labels.size)}
                        for i, c in zip(ids, counts)), key=lambda r: -r["share"])
        print(f"{f} -> {target}")
        for r in found[:args.topk]:
            print(f"  {100 * r['share']:6.2f}%  {r['name']} ({r['class']})")
        results.append({"file": f, "labels": str(target), "classes": found})
    if args.json:
        Path(args.json).write_text(json.dumps({"model": spec.name, "checkpoint": str(args.checkpoint),
                                               "predictions": results, "skipped": failed}, indent=2))
    if failed:
        print(f"{len(failed)} of {len(args.images)} images skipped as unreadable", file=sys.stderr)
    return 1 if failed else 0 if results else 1


def read_or_skip(f: str, read, failed: list[str]):
    """``read(f)``; or, where the file is unreadable, truncated, not an image or missing, None with
    ``f`` added to ``failed`` and a line on stderr saying why."""
    try:
        return read(f)
    except Exception as e:
        failed.append(f)
        print(f"skipped {f}: cannot read it as an image ({type(e).__name__}: {e})", file=sys.stderr)
        return None


def detect_files(args: argparse.Namespace, spec, inputs: list) -> int:
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from PIL import Image, ImageDraw

    from lsnet_jax.checkpoints.weights import OutputError, check_inputs_kept, unwritable
    from lsnet_jax.data.coco import COCO_CATEGORY_IDS, COCO_CLASSES
    from lsnet_jax.data.dense import decode_color
    from lsnet_jax.data.detection import test_input
    from lsnet_jax.data.segmentation import palette
    from lsnet_jax.data.transforms import read_image_file
    from lsnet_jax.inference import maskrcnn
    from lsnet_jax.inference.coco_eval import mask_rles
    from lsnet_jax.inference.detection import detect_batch

    out = Path(args.out_dir)
    targets = label_paths(args.images, out)
    coco = out / "results.json"
    try:  # before any image is read: no output may replace an input, nor an earlier prediction unasked
        why = unwritable(out / "x.png")
        if why:
            raise OutputError(f"cannot write the drawings into {out.absolute()}: {why}; give another --out-dir")
        for t in [*targets, coco]:
            check_inputs_kept(t, inputs)
        existing = [t for t in [*targets, coco] if t.exists()]
        if existing and not args.overwrite:
            raise OutputError(f"{len(existing)} of the outputs exist already ({existing[0]}"
                              f"{' ...' if len(existing) > 1 else ''}); give another --out-dir, or pass "
                              f"--overwrite to replace them")
        model = spec.create()
    except (OutputError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    classes = model.cfg.num_classes
    names = spec.meta.get("class_names") or (COCO_CLASSES if classes == 80 else [f"class {i}" for i in range(classes)])
    colours = [tuple(int(v) for v in c) for c in palette(classes)]
    cat_ids = list(COCO_CATEGORY_IDS) if classes == len(COCO_CATEGORY_IDS) else list(range(1, classes + 1))
    scale = tuple(args.test_scale or spec.meta.get("test_scale") or (1333, 800))
    graph, state = nnx.split(model)
    with_masks = spec.name.endswith("_maskrcnn")
    det_fn = maskrcnn.detect_batch if with_masks else detect_batch
    fn = jax.jit(lambda s, b: det_fn(nnx.merge(graph, s), b, spec.mean, spec.std))  # one program per size
    results, report, failed = [], [], []
    for image_id, (f, target) in enumerate(zip(args.images, targets), 1):
        image = read_or_skip(f, lambda p: decode_color(read_image_file(p)), failed)
        if image is None:
            continue
        batch = {k: jnp.asarray(v[None]) for k, v in test_input(image, scale).items()}
        out_det = fn(state, batch)
        det = (out_det.to_lists([image.shape[:2]]) if with_masks else out_det.to_lists())[0]
        drawn = image.astype(np.float32)
        for m, score, label in zip(det.get("masks", ()), det["scores"], det["labels"]):
            if score >= args.score_thr:  # each shown instance's mask tinted in its class colour
                drawn[m] = 0.5 * drawn[m] + 0.5 * np.asarray(colours[int(label)], np.float32)
        canvas = Image.fromarray(np.round(drawn).astype(np.uint8))
        rles = mask_rles(det["masks"]) if with_masks else [None] * len(det["boxes"])
        draw = ImageDraw.Draw(canvas)
        shown = []
        for box, score, label, rle in zip(det["boxes"], det["scores"], det["labels"], rles):
            x1, y1, x2, y2 = (float(v) for v in box)
            results.append({"image_id": image_id, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score),
                            "category_id": cat_ids[int(label)]} | ({"segmentation": rle} if rle else {}))
            if score >= args.score_thr:
                draw.rectangle([x1, y1, x2, y2], outline=colours[int(label)], width=2)
                draw.text((x1 + 2, y1 + 1), f"{names[int(label)]} {score:.2f}", fill=colours[int(label)])
                shown.append({"name": names[int(label)], "label": int(label), "score": float(score),
                              "box": [x1, y1, x2, y2]})
        target.parent.mkdir(parents=True, exist_ok=True)
        canvas.save(target)
        print(f"{f} -> {target}: {len(det['boxes'])} detections, {len(shown)} at or above {args.score_thr}")
        for r in shown[:args.topk]:
            print(f"  {r['score']:.3f}  {r['name']} ({r['label']})  box {', '.join(f'{v:.1f}' for v in r['box'])}")
        report.append({"file": f, "image_id": image_id, "drawing": str(target), "detections": len(det["boxes"]),
                       "shown": shown})
    out.mkdir(parents=True, exist_ok=True)
    coco.write_text(json.dumps(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": spec.name, "checkpoint": str(args.checkpoint),
                                               "results": str(coco), "predictions": report, "skipped": failed},
                                              indent=2))
    if failed:
        print(f"{len(failed)} of {len(args.images)} images skipped as unreadable", file=sys.stderr)
    return 1 if failed else 0 if report else 1


def run() -> None:
    """The console script."""
    sys.exit(main())


if __name__ == "__main__":
    run()
