"""Classify image files from the command line.

    python -m lsnet_jax.predict cat.jpg dog.png --checkpoint weights/lsnet_t [--topk 5] [--json out.json]

``--checkpoint`` is a weights directory (``convert_torch.py``, ``python -m lsnet_jax.train.export``)
or a ``.safetensors`` file (then ``--model`` names the variant). Each image goes through the eval
transform (resize to size/crop_pct, bicubic, centre crop); the top-k classes are printed with their
probabilities. Class names: those stored with the weights (a training run records its dataset's),
ImageNet's for a 1000-class head, else ``class <i>``. An unreadable file is reported and skipped;
the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

_WNID = re.compile(r"n\d{8}")


def class_names(meta: Mapping[str, Any], num_classes: int) -> list[str]:
    """Readable names of a head's classes (see the module docstring)."""
    names = list(meta.get("class_names") or ())
    if len(names) == num_classes and not all(_WNID.fullmatch(n) for n in names):
        return names
    if num_classes == 1000:
        from lsnet_jax.eval_sets import imagenet_class_names

        return imagenet_class_names()
    return [f"class {i}" for i in range(num_classes)]


def predict(model, images: np.ndarray, mean: Sequence[float], std: Sequence[float], k: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC images -> (top-k class indices, their softmax probabilities), each (N, k).
    Compiles the model for this call; to classify many batches, call ``compiled(model)`` once."""
    import jax
    import jax.numpy as jnp

    from lsnet_jax.data import mix
    from lsnet_jax.registry import compiled

    logits = compiled(model)(mix.normalize(jnp.asarray(images), tuple(mean), tuple(std))).astype(jnp.float32)
    prob, idx = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), min(k, logits.shape[-1]))
    return np.asarray(idx), np.asarray(prob)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    ap.add_argument("--checkpoint", required=True, help="weights directory or .safetensors file")
    ap.add_argument("--model", default=None, help="variant, if the weights do not name it")
    ap.add_argument("--topk", type=int, default=5)
    ap.add_argument("--img-size", type=int, default=None)
    ap.add_argument("--crop-pct", type=float, default=None)
    ap.add_argument("--json", default=None, help="also write the predictions to this file")
    args = ap.parse_args(argv)

    from lsnet_jax import create_model
    from lsnet_jax.data.pipeline import EvalTransform
    from lsnet_jax.model import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from lsnet_jax.weights import read_meta

    ckpt = Path(args.checkpoint)
    meta = read_meta(ckpt)
    name = args.model or meta.get("model")
    if name is None:
        print(f"error: {ckpt} does not name its model; give --model (e.g. lsnet_t)", file=sys.stderr)
        return 2
    size = args.img_size or int(meta.get("img_size", 224))
    transform = EvalTransform(size, args.crop_pct or float(meta.get("crop_pct", 0.875)))
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
        model = create_model(name, pretrained=ckpt, img_size=size)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    names = class_names(meta, int(model.head.l.kernel.shape[-1]))
    idx, prob = predict(model, np.stack(batch), meta.get("mean", IMAGENET_DEFAULT_MEAN),
                        meta.get("std", IMAGENET_DEFAULT_STD), args.topk)
    results = []
    for f, row_i, row_p in zip(ok, idx, prob):
        print(f)
        top = [{"class": int(i), "name": names[i], "prob": float(p)} for i, p in zip(row_i, row_p)]
        for r, t in enumerate(top, 1):
            print(f"  {r}. {100 * t['prob']:6.2f}%  {t['name']} ({t['class']})")
        results.append({"file": f, "top": top})
    if args.json:
        Path(args.json).write_text(json.dumps({"model": name, "checkpoint": str(ckpt), "predictions": results,
                                               "skipped": failed}, indent=2))
    if failed:
        print(f"{len(failed)} of {len(args.images)} images skipped as unreadable", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
