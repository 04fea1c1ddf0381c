"""Top-1 / top-5 of a model on ImageNet and its robustness sets, through the project's pipeline.

    lsnet-eval --weights weights/lsnet_t --sets imagenet,imagenet_a,imagenet_r
    lsnet-eval --weights weights/lsnet_t --sets imagenet_c --json c.json
    lsnet-eval --weights W --data lsnet_digits --split test --data_dir data/tfds

``--weights`` is a directory written by ``lsnet-convert`` or ``lsnet-export-weights`` (converted
or trained, EMA or not); ``--deploy`` folds it first. The model name, class count, image size,
mean/std and crop_pct come from its config.json unless given. Every set goes through the same
eval transform (resize the shorter side to size/crop_pct, bicubic, centre crop). The sets and
their metrics are described in ``lsnet_jax.inference.eval_sets``; ``--data``/``--split`` evaluate
any other TFDS image-classification split. Prints progress lines (images/s, ETA) and writes
``--json``.

Detection (``--task detection``, or any ``*_retinanet`` / ``*_maskrcnn`` weights): COCOeval (pycocotools) of the
official inference over a prepared COCO-format split (``scripts/prepare_coco.py``, or the digit
scenes ``lsnet_det_digits``), every image resized to fit ``--test-scale`` and padded to its own
multiples of 32 as the official test (batched by padded size: one compiled program per size; or
``--pad SIDE``: all to one square, one program); prints pycocotools' table and mmdet's
``bbox_mAP_copypaste`` (and for Mask R-CNN the masks' ``segm`` COCOeval and ``segm_mAP_copypaste``):

    lsnet-eval --weights weights/lsnet_t_retinanet --data coco_detection --split validation --data_dir D
    lsnet-eval --weights W --data lsnet_det_digits --split test --data_dir data/tfds --test-scale 512 128

Segmentation (``--task segmentation``, or any ``*_semfpn`` weights):

    lsnet-eval --weights weights/lsnet_t_semfpn --data ade20k --split validation
    lsnet-eval --weights W --data lsnet_seg_digits --split test --data_dir data/tfds --json m.json

mIoU, mAcc, aAcc and the per-class IoU/Acc (with class names) over the whole split, as mmseg:
each image at the official test size (keep-ratio resize to fit ``--test-scale``, then to multiples
of 32), its logits resized back to the original size.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from pathlib import Path

from lsnet_jax.cli.args import crop_fraction, nonnegative_int, positive_int


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lsnet-eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--sets", default=None,
                    help="comma-separated: imagenet, imagenet_a, imagenet_r, imagenet_sketch, imagenet_c")
    ap.add_argument("--corruptions", default="benchmark",
                    help="ImageNet-C corruptions: 'benchmark' (the 15 of mCE), 'all' (+4 extra) or a list")
    ap.add_argument("--data", default=None, help="any other TFDS dataset (instead of --sets)")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--data_dir", default=None)
    ap.add_argument("--batch", type=positive_int, default=256)
    ap.add_argument("--img-size", type=positive_int, default=None)
    ap.add_argument("--crop-pct", type=crop_fraction, default=None)
    ap.add_argument("--deploy", action="store_true", help="fold BatchNorms first")
    ap.add_argument("--workers", type=nonnegative_int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--class_map", default=None,
                    help="with --data, when the head's classes are not the dataset's: 'names' (each dataset class "
                         "to the head's class of the same name, from the weights' class_names) or a JSON file "
                         "with the head index of each dataset label; scored among those head classes only")
    ap.add_argument("--task", choices=("classification", "segmentation", "detection"), default=None,
                    help="default: segmentation for *_semfpn weights, detection for *_retinanet and *_maskrcnn, else classification")
    ap.add_argument("--test-scale", type=positive_int, nargs=2, default=None, metavar=("LONG", "SHORT"),
                    help="segmentation/detection: the keep-ratio test resize (default: the weights' own, else "
                         "ADE20K's 2048 512 / COCO's 1333 800)")
    ap.add_argument("--pad", type=positive_int, default=None, metavar="SIDE",
                    help="detection: every image padded to SIDE x SIDE (a multiple of 32): one compiled "
                         "program, outputs a little off the official ones; default: each image to its own "
                         "multiples of 32 as the official test (one program per distinct size)")
    args = ap.parse_args(argv)
    from lsnet_jax.checkpoints.weights import OutputError, check_report

    try:  # before the work: the report can be written, and never replaces what is read
        if args.json:
            check_report(args.json, [p for p in (args.weights, args.data_dir, args.class_map)
                                     if p and Path(p).exists()])
    except OutputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        from lsnet_jax.checkpoints.weights import read_meta

        name = args.model or read_meta(args.weights).get("model", "")
    except (OSError, ValueError):
        name = args.model or ""
    if args.task == "segmentation" or (args.task is None and name.endswith("_semfpn")):
        return evaluate_segmentation(args)
    if args.task == "detection" or (args.task is None and name.endswith(("_retinanet", "_maskrcnn"))):
        return evaluate_detection(args)

    import jax
    from flax import nnx

    from lsnet_jax.data import pipeline, source
    from lsnet_jax.data.transforms import EvalTransform
    from lsnet_jax.inference import eval_sets as E
    from lsnet_jax.inference.evaluate import data_sharding, eval_step, resolve_sets, run_eval
    from lsnet_jax.inference.loading import inference_spec, num_classes

    corr = {"benchmark": E.CORRUPTIONS, "all": E.CORRUPTIONS + E.EXTRA_CORRUPTIONS}.get(
        args.corruptions, tuple(c for c in args.corruptions.split(",") if c))
    try:
        spec = inference_spec(args.weights, args.model, args.img_size, args.crop_pct)
        if args.data is not None:
            sets = [E.EvalSet(f"{args.data}/{args.split}", args.data, args.split)]
        else:
            sets = resolve_sets((args.sets or "imagenet").split(","), corr)
        sources, missing = {}, []
        for s in sets:  # every set is checked before the first is evaluated
            try:
                sources[s.key] = source.open_source(s.tfds_name, s.split, args.data_dir)
            except source.DatasetNotFoundError as e:
                missing.append(str(e))
        if missing:
            raise ValueError(f"{len(missing)} of {len(sets)} eval sets are not available:\n  " + "\n  ".join(missing))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    model = spec.create(deploy=args.deploy)
    classes = num_classes(model)
    for s in sets:
        if s.tfds_name != args.data and classes != 1000:
            print(f"error: {s.key} scores ImageNet's 1000 classes; {args.weights} has a {classes}-class "
                  f"head", file=sys.stderr)
            return 2
    if args.data is not None:  # before anything is compiled: a wrong head would score unrelated indices
        info = sources[sets[0].key][1]
        try:
            mapping = class_map(args.class_map, list(info.class_names), classes, spec.meta.get("class_names"))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if mapping is None and classes != info.num_classes:
            print(f"error: {args.weights} has a {classes}-class head and {sets[0].key} has {info.num_classes} "
                  f"classes, so its labels are not the head's indices (top-1 would be meaningless). Evaluate "
                  f"weights trained on this dataset, or say which head class each dataset class is: --class_map "
                  f"names (by the weights' class_names) or --class_map FILE.json (a list of head indices)",
                  file=sys.stderr)
            return 2
        if mapping is not None:
            sets = [dataclasses.replace(sets[0], classes=mapping)]
    graph, state = nnx.split(model)
    batch = args.batch - args.batch % jax.device_count() or jax.device_count()
    sharding = data_sharding()
    transform = EvalTransform(spec.img_size, spec.crop_pct)
    steps: dict = {}
    results = {}
    t0 = time.time()
    for i, s in enumerate(sets):
        src, info = sources[s.key]
        if s.classes not in steps:
            steps[s.classes] = jax.jit(functools.partial(eval_step, graphdef=graph, mean=spec.mean, std=spec.std,
                                                         classes=s.classes))
        step = functools.partial(steps[s.classes], (state,))
        if s.tfds_name == args.data and s.classes is not None:  # --class_map: dataset labels -> head indices
            step = functools.partial(_mapped_labels, step, jax.numpy.asarray(s.classes, jax.numpy.int32))
        label = f"{s.key} ({i + 1}/{len(sets)}) " if len(sets) > 1 else f"{s.key} "
        loader = pipeline.eval_loader(src, info, transform, batch, args.workers)
        r = run_eval(step, loader, sharding, label, info.num_examples)
        results[s.key] = {k: r[k] for k in ("images", "skipped", "top1", "top5")}
        print(f"{s.key}: top-1 {r['top1']:.2f} top-5 {r['top5']:.2f} on {r['images']} images "
              f"({r['skipped']} unreadable skipped)", flush=True)
    summary = {"model": spec.name, "weights": str(args.weights), "img_size": spec.img_size,
               "crop_pct": spec.crop_pct, "deploy": args.deploy, "seconds": round(time.time() - t0, 1),
               "sets": results}
    if args.data is not None and sets[0].classes is not None:
        summary["class_map"] = list(sets[0].classes)
    c_top1 = {k.split("/", 1)[1]: v["top1"] for k, v in results.items() if k.startswith("imagenet_c/")}
    if c_top1:
        try:
            summary["imagenet_c"] = {"corruptions": E.corruption_errors(c_top1)}
            if all(c in summary["imagenet_c"]["corruptions"] for c in E.CORRUPTIONS):
                summary["imagenet_c"]["mce"] = E.mce(c_top1)
                print(f"ImageNet-C mCE {summary['imagenet_c']['mce']:.2f}")
        except ValueError as e:
            print(f"warning: {e}", file=sys.stderr)
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


def _mapped_labels(step, to_head, batch: dict):
    return step(batch | {"label": to_head[batch["label"]]})


def class_map(spec: str | None, data_classes: list[str], head_classes: int,
              head_names: list[str] | None) -> tuple[int, ...] | None:
    """The head index of each dataset label from ``--class_map`` ('names' or a JSON file), checked."""
    if spec is None:
        return None
    if spec == "names":
        if not head_names:
            raise ValueError("--class_map names needs the weights' class_names (config.json); give a JSON file "
                             "with the head index of each dataset label instead")
        missing = [c for c in data_classes if c not in head_names]
        if missing:
            raise ValueError(f"{len(missing)} dataset classes are not among the weights' class_names "
                             f"(e.g. {missing[:5]}); give a JSON file with the head index of each dataset label")
        return tuple(head_names.index(c) for c in data_classes)
    try:
        raw = json.loads(Path(spec).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"--class_map {spec}: not 'names' nor a readable JSON file ({e})") from None
    if isinstance(raw, dict):  # {dataset class name: head index}
        raw = [raw.get(c) for c in data_classes]
    if (not isinstance(raw, list) or len(raw) != len(data_classes)
            or not all(isinstance(i, int) and 0 <= i < head_classes for i in raw)):
        raise ValueError(f"--class_map {spec} must give, for each of the {len(data_classes)} dataset classes, a "
                         f"head index in 0..{head_classes - 1} (a JSON list, or an object keyed by class name)")
    return tuple(raw)


def evaluate_segmentation(args: argparse.Namespace) -> int:
    from lsnet_jax.data import pipeline, source
    from lsnet_jax.data.segmentation import SegTestTransform
    from lsnet_jax.inference.loading import inference_spec
    from lsnet_jax.inference.segmentation import evaluate_segmenter, logits_fn

    data = args.data or "ade20k"
    try:
        spec = inference_spec(args.weights, args.model)
        if not spec.name.endswith("_semfpn"):
            raise ValueError(f"{spec.name} is not a segmenter; segmentation needs *_semfpn weights")
        src, info = source.open_seg_source(data, args.split, args.data_dir)
        model = spec.create(deploy=args.deploy)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    classes = model.cfg.num_classes
    if classes != info.num_classes:
        print(f"error: {args.weights} segments {classes} classes but {data} has {info.num_classes}",
              file=sys.stderr)
        return 2
    scale = tuple(args.test_scale or spec.meta.get("test_scale") or (2048, 512))
    transform = SegTestTransform(scale, int(spec.meta.get("size_divisor", 32)), source.REDUCE_ZERO_LABEL[data])
    t0 = time.time()
    r = evaluate_segmenter(logits_fn(model, spec.mean, spec.std), pipeline.seg_eval_samples(src, transform),
                           classes, info.class_names, progress_every=100)
    print(f"{data}/{args.split}: mIoU {r['mIoU']:.2f} aAcc {r['aAcc']:.2f} mAcc {r['mAcc']:.2f} on "
          f"{info.num_examples - r['skipped']} images ({r['skipped']} unreadable skipped)")
    for n, v in r["per_class"].items():
        iou = "  n/a" if v["IoU"] is None else f"{v['IoU']:6.2f}"
        acc = "  n/a" if v["Acc"] is None else f"{v['Acc']:6.2f}"
        print(f"  {n:24s} IoU {iou}  Acc {acc}")
    summary = {"model": spec.name, "weights": str(args.weights), "task": "segmentation", "data": data,
               "split": args.split, "test_scale": scale, "deploy": args.deploy, "seconds": round(time.time() - t0, 1),
               "images": info.num_examples - r["skipped"]} | r
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


def evaluate_detection(args: argparse.Namespace) -> int:
    import jax
    from flax import nnx

    from lsnet_jax.data import source
    from lsnet_jax.data.detection import DetTestTransform
    from lsnet_jax.inference import maskrcnn
    from lsnet_jax.inference.detection import detect_batch
    from lsnet_jax.inference.detection_eval import evaluate_detector
    from lsnet_jax.inference.loading import inference_spec

    data = args.data or "coco_detection"
    try:
        spec = inference_spec(args.weights, args.model, allow_detector=True)
        if not spec.name.endswith(("_retinanet", "_maskrcnn")):
            raise ValueError(f"{spec.name} is not a detector; detection needs *_retinanet or *_maskrcnn weights")
        src, info, categories = source.open_det_source(data, args.split, args.data_dir)
        model = spec.create(deploy=args.deploy)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    classes = model.cfg.num_classes
    if classes != info.num_classes:
        print(f"error: {args.weights} detects {classes} classes but {data}/{args.split} has {info.num_classes} "
              f"categories", file=sys.stderr)
        return 2
    scale = tuple(args.test_scale or spec.meta.get("test_scale") or (1333, 800))
    side = args.pad
    if side is not None and side % 32:
        print(f"error: --pad {side} is not a multiple of 32", file=sys.stderr)
        return 2
    graph, state = nnx.split(model)
    det_fn = maskrcnn.detect_batch if spec.name.endswith("_maskrcnn") else detect_batch
    fn = jax.jit(lambda s, b: det_fn(nnx.merge(graph, s), b, spec.mean, spec.std))
    transform = DetTestTransform(scale, ((side, side),) if side else ())
    t0 = time.time()
    try:
        r = evaluate_detector(functools.partial(fn, state), src, categories, transform, min(args.batch, 8),
                              progress_every=500)
    except ValueError as e:  # an image that does not fit the padded shape
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(r["summary"], end="")
    segm = f", segm_mAP_copypaste {r['segm_mAP_copypaste']}" if "segm_mAP_copypaste" in r else ""
    print(f"{data}/{args.split}: bbox_mAP_copypaste {r['bbox_mAP_copypaste']}{segm} on {r['images']} images "
          f"({r['skipped']} unreadable skipped), {r['detections']} detections")
    summary = {"model": spec.name, "weights": str(args.weights), "task": "detection", "data": data,
               "split": args.split, "test_scale": scale, "pad": side, "deploy": args.deploy,
               "seconds": round(time.time() - t0, 1)} | {k: v for k, v in r.items() if k != "summary"}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


def run() -> None:
    """The console script: huge pages for XLA's buffers first (``lsnet_jax.runtime``)."""
    from lsnet_jax.runtime import restart_with_huge_pages

    restart_with_huge_pages()
    sys.exit(main())


if __name__ == "__main__":
    run()
