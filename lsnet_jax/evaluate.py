"""Top-1 / top-5 of a model on ImageNet and its robustness sets, through the project's pipeline.

    python -m lsnet_jax.evaluate --weights weights/lsnet_t --sets imagenet,imagenet_a,imagenet_r
    python -m lsnet_jax.evaluate --weights weights/lsnet_t --sets imagenet_c --json c.json
    python -m lsnet_jax.evaluate --weights W --data lsnet_digits --split test --data_dir data/tfds

``--weights`` is a directory written by ``convert_torch.py`` or ``python -m lsnet_jax.train.export``
(converted or trained, EMA or not); ``--deploy`` folds it first. The model name, class count, image
size, mean/std and crop_pct come from its config.json unless given. Every set goes through the
same eval transform (resize the shorter side to size/crop_pct, bicubic, centre crop). The sets and
their metrics are described in ``lsnet_jax.eval_sets``; ``--data``/``--split`` evaluate any other
TFDS image-classification split. Prints progress lines (images/s, ETA) and writes ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lsnet_jax import eval_sets as E

Array = jax.Array


def hits(logits: Array, labels: Array, classes: Sequence[int] | None = None, k: int = 5) -> tuple[Array, Array]:
    """Per-sample top-1 and top-k hits. With ``classes`` only those logits compete (ImageNet-A/R);
    a label outside them is never hit."""
    if classes is not None:
        idx = jnp.asarray(classes, jnp.int32)
        position = jnp.full((logits.shape[-1],), -1, jnp.int32).at[idx].set(jnp.arange(len(classes)))
        logits, labels = logits[:, idx], position[labels]
    top = jax.lax.top_k(logits, min(k, logits.shape[-1]))[1]
    hit = top == labels[:, None]
    return hit[:, 0], jnp.any(hit, axis=-1)


def make_eval_step(model, mean: Sequence[float], std: Sequence[float],
                   classes: Sequence[int] | None) -> Callable:
    """A jitted ``(state, uint8 images, labels, mask) -> (top-1 hits, top-5 hits, count)``."""
    from flax import nnx

    from lsnet_jax.data import mix

    graph, _ = nnx.split(model)

    @jax.jit
    def step(state, images, labels, mask):
        logits = nnx.merge(graph, state)(mix.normalize(images, mean, std)).astype(jnp.float32)
        top1, top5 = hits(logits, labels, classes)
        return jnp.sum(top1 * mask), jnp.sum(top5 * mask), jnp.sum(mask)

    return step


def evaluate_split(step: Callable, state, source, info, size: int, crop_pct: float, batch: int,
                   workers: int = 0, label: str = "", every: int = 10) -> dict[str, float]:
    """One pass over ``source``: ``{'images', 'skipped', 'top1', 'top5'}`` (accuracies in %)."""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from lsnet_jax.data import pipeline

    sharding = NamedSharding(Mesh(np.asarray(jax.devices()), ("data",)), P("data"))
    loader = pipeline.eval_loader(source, info, pipeline.EvalTransform(size, crop_pct), batch, workers)
    sums, skipped, t0 = np.zeros(3), 0, time.time()
    for i, b in enumerate(loader.dataset):
        skipped += int(b["skipped"])
        g = pipeline.to_global(b, sharding)
        sums += np.asarray(jax.device_get(step(state, g["image"], g["label"], g["mask"])))
        if (i + 1) % every == 0 or i + 1 == loader.steps_per_epoch:
            rate = sums[2] / max(time.time() - t0, 1e-9)
            eta = (info.num_examples - sums[2] - skipped) / max(rate, 1e-9)
            print(f"{label}[{i + 1}/{loader.steps_per_epoch}] top-1 {100 * sums[0] / max(sums[2], 1):.2f} "
                  f"{rate:.0f} images/s ETA {max(eta, 0):.0f} s", flush=True)
    n = max(sums[2], 1)
    return {"images": int(sums[2]), "skipped": skipped, "top1": 100 * sums[0] / n, "top5": 100 * sums[1] / n}


def resolve_sets(names: Sequence[str], corruptions: Sequence[str]) -> list[E.EvalSet]:
    out = []
    for name in names:
        if name == "imagenet_c":
            out += E.imagenet_c_sets(corruptions)
        elif name in E.EVAL_SETS:
            out.append(E.EVAL_SETS[name])
        else:
            raise ValueError(f"unknown eval set {name!r}; choose from {[*E.EVAL_SETS, 'imagenet_c']}, or "
                             f"give --data NAME --split SPLIT for another TFDS dataset")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--sets", default=None,
                    help="comma-separated: imagenet, imagenet_a, imagenet_r, imagenet_sketch, imagenet_c")
    ap.add_argument("--corruptions", default="benchmark",
                    help="ImageNet-C corruptions: 'benchmark' (the 15 of mCE), 'all' (+4 extra) or a list")
    ap.add_argument("--data", default=None, help="any other TFDS dataset (instead of --sets)")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--data_dir", default=None)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--img-size", type=int, default=None)
    ap.add_argument("--crop-pct", type=float, default=None)
    ap.add_argument("--deploy", action="store_true", help="fold BatchNorms first")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    from flax import nnx

    from lsnet_jax import create_model
    from lsnet_jax.data import pipeline
    from lsnet_jax.model import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from lsnet_jax.weights import read_meta

    meta = read_meta(args.weights)
    name = args.model or meta.get("model")
    if name is None:
        print("error: --model is needed (the weights have no config.json naming it)", file=sys.stderr)
        return 2
    size = args.img_size or int(meta.get("img_size", 224))
    crop_pct = args.crop_pct or float(meta.get("crop_pct", 0.875))
    mean, std = tuple(meta.get("mean", IMAGENET_DEFAULT_MEAN)), tuple(meta.get("std", IMAGENET_DEFAULT_STD))
    corr = {"benchmark": E.CORRUPTIONS, "all": E.CORRUPTIONS + E.EXTRA_CORRUPTIONS}.get(
        args.corruptions, tuple(c for c in args.corruptions.split(",") if c))
    try:
        if args.data is not None:
            sets = [E.EvalSet(f"{args.data}/{args.split}", args.data, args.split)]
        else:
            sets = resolve_sets((args.sets or "imagenet").split(","), corr)
        sources, missing = {}, []
        for s in sets:  # every set is checked before the first is evaluated
            try:
                sources[s.key] = pipeline.open_source(s.tfds_name, s.split, args.data_dir)
            except pipeline.DatasetNotFoundError as e:
                missing.append(str(e))
        if missing:
            raise ValueError(f"{len(missing)} of {len(sets)} eval sets are not available:\n  " + "\n  ".join(missing))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    model = create_model(name, pretrained=args.weights, img_size=size, deploy=args.deploy)
    num_classes = model.head.l.kernel.shape[-1]
    for s in sets:
        if s.tfds_name != args.data and num_classes != 1000:
            print(f"error: {s.key} scores ImageNet's 1000 classes; {args.weights} has a {num_classes}-class "
                  f"head", file=sys.stderr)
            return 2
    _, state = nnx.split(model)
    batch = args.batch - args.batch % jax.device_count() or jax.device_count()
    steps: dict = {}
    results = {}
    t0 = time.time()
    for i, s in enumerate(sets):
        source, info = sources[s.key]
        if s.classes not in steps:
            steps[s.classes] = make_eval_step(model, mean, std, s.classes)
        step = steps[s.classes]
        label = f"{s.key} ({i + 1}/{len(sets)}) " if len(sets) > 1 else f"{s.key} "
        results[s.key] = evaluate_split(step, state, source, info, size, crop_pct, batch, args.workers, label)
        r = results[s.key]
        print(f"{s.key}: top-1 {r['top1']:.2f} top-5 {r['top5']:.2f} on {r['images']} images "
              f"({r['skipped']} unreadable skipped)", flush=True)
    summary = {"model": name, "weights": str(args.weights), "img_size": size, "crop_pct": crop_pct,
               "deploy": args.deploy, "seconds": round(time.time() - t0, 1), "sets": results}
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


if __name__ == "__main__":
    from lsnet_jax.runtime import restart_with_huge_pages

    restart_with_huge_pages()
    sys.exit(main())
