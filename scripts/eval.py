"""Top-1 / top-5 of a model on a TFDS image-classification split, through the project's pipeline.

    python scripts/eval.py --weights weights/lsnet_t --data imagenet2012 --split validation
    python scripts/eval.py --weights W --data lsnet_digits --split test --data_dir data/tfds --deploy

``--weights`` is a directory written by ``convert_torch.py`` or ``python -m lsnet_jax.train.export``;
the model name, class count, image size, mean/std and crop_pct come from its config.json unless
given. The eval transform is timm's (resize the shorter side to size/crop_pct, bicubic, centre
crop). Prints a progress line with images/s and writes ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", default="imagenet2012")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--data_dir", default=None)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--img-size", type=int, default=None)
    ap.add_argument("--crop-pct", type=float, default=None)
    ap.add_argument("--deploy", action="store_true", help="fold BatchNorms first")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from lsnet_jax import create_model
    from lsnet_jax.data import mix, pipeline
    from lsnet_jax.model import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    meta_file = Path(args.weights) / "config.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    name = args.model or meta.get("model")
    if name is None:
        print("error: --model is needed (the weights have no config.json naming it)", file=sys.stderr)
        return 2
    size = args.img_size or int(meta.get("img_size", 224))
    crop_pct = args.crop_pct or float(meta.get("crop_pct", 0.875))
    mean, std = tuple(meta.get("mean", IMAGENET_DEFAULT_MEAN)), tuple(meta.get("std", IMAGENET_DEFAULT_STD))
    try:
        source, info = pipeline.open_source(args.data, args.split, args.data_dir)
    except (pipeline.DatasetNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model = create_model(name, pretrained=args.weights, img_size=size, deploy=args.deploy)
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    batch = args.batch - args.batch % jax.device_count() or jax.device_count()
    loader = pipeline.eval_loader(source, info, pipeline.EvalTransform(size, crop_pct), batch, args.workers)
    from flax import nnx

    graph, state = nnx.split(model)

    @jax.jit
    def step(state, images, labels, mask):
        logits = nnx.merge(graph, state)(mix.normalize(images, mean, std)).astype(jnp.float32)
        top = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
        hit = top == labels[:, None]
        return jnp.sum(hit[:, 0] * mask), jnp.sum(jnp.any(hit, -1) * mask), jnp.sum(mask)

    sharding = NamedSharding(mesh, P("data"))
    sums, skipped, t0 = np.zeros(3), 0, time.time()
    for i, b in enumerate(loader.dataset):
        skipped += int(b["skipped"])
        g = pipeline.to_global(b, sharding)
        sums += np.asarray(jax.device_get(step(state, g["image"], g["label"], g["mask"])))
        if (i + 1) % 10 == 0 or i + 1 == loader.steps_per_epoch:
            rate = sums[2] / (time.time() - t0)
            eta = (info.num_examples - sums[2]) / max(rate, 1e-9)
            print(f"[{i + 1}/{loader.steps_per_epoch}] top-1 {100 * sums[0] / sums[2]:.2f} "
                  f"{rate:.0f} images/s ETA {eta:.0f} s", flush=True)
    result = {"model": name, "weights": str(args.weights), "data": args.data, "split": args.split,
              "img_size": size, "crop_pct": crop_pct, "deploy": args.deploy, "images": int(sums[2]),
              "skipped": skipped, "top1": 100 * sums[0] / sums[2], "top5": 100 * sums[1] / sums[2]}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
