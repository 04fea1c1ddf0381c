"""How many programs a detection run compiles, and what its padding costs against the official batches.

    python scripts/det_shapes.py COCO/annotations/instances_train2017.json [--val instances_val2017.json]
    python scripts/det_shapes.py ann.json --config configs/retinanet_lsnet_t_coco.py

Reads the image sizes of a COCO-format json (no image is opened): the training images as
MMDetection keeps them (an annotation, a shorter side of at least ``aug.min_size``), resized to
``aug.scale``, each padded to its batch shape among ``aug.pad_shapes`` (``lsnet_jax.data.detection``).
Prints the shapes in use (one compiled train program each), the pixels per epoch padded here, in
the official batches (2 images of one aspect group per GPU, padded to their largest) and to each
image's own multiples of 32, and with ``--val`` the distinct test sizes (one eval program each
when ``aug.test_pad_shapes`` is empty, the official test padding).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

from lsnet_jax.data.detection import padding_stats, record_shape


def _config(path: str):
    spec = importlib.util.spec_from_file_location("det_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def train_sizes(ann: dict, min_size: int) -> list[tuple[int, int]]:
    with_ann = {a["image_id"] for a in ann.get("annotations", [])}
    return [(int(i["height"]), int(i["width"])) for i in ann["images"]
            if i["id"] in with_ann and min(int(i["height"]), int(i["width"])) >= min_size]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ann", help="COCO-format json of the training split")
    ap.add_argument("--val", help="COCO-format json of the evaluation split")
    ap.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs/retinanet_lsnet_t_coco.py"))
    args = ap.parse_args(argv)
    c = _config(args.config)
    try:
        ann = json.loads(Path(args.ann).read_text())
        sizes = train_sizes(ann, c.aug.min_size)
        pad_shapes = [tuple(s) for s in c.aug.pad_shapes]
        st = padding_stats(sizes, tuple(c.aug.scale), pad_shapes)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"error: {args.ann}: {e}", file=sys.stderr)
        return 2
    print(f"{st['images']} training images at scale {tuple(c.aug.scale)}, pad shapes {pad_shapes}")
    print(f"{'train shape (H x W)':>20} {'images':>8} {'share':>7}")
    for (h, w), n in st["programs"]:
        print(f"{f'{h} x {w}':>20} {n:>8} {100 * n / st['images']:>6.1f}%")
    print(f"train programs: {len(st['programs'])}")
    v = st["valid"]
    print(f"{'padding':>20} {'Mpixels':>10} {'x resized':>10}")
    for key, what in (("own", "own 32-multiple"), ("official", "official batches"), ("ours", "these shapes")):
        print(f"{what:>20} {st[key] / 1e6:>10.1f} {st[key] / v:>10.3f}")
    print(f"these shapes / official batches: {st['ours'] / st['official']:.3f} (pixels per epoch)")
    if args.val:
        val = json.loads(Path(args.val).read_text())
        test = [tuple(s) for s in c.aug.test_pad_shapes]
        shapes = {record_shape(int(i["height"]), int(i["width"]), tuple(c.aug.test_scale), test)
                  for i in val["images"]}
        print(f"eval programs: {len(shapes)} ({len(val['images'])} images, test pad shapes "
              f"{test or 'each image its own multiples of 32'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
