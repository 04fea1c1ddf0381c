"""Turn a local COCO 2017 tree into the TFDS dataset the detection pipeline reads (``coco_detection``).

    python scripts/prepare_coco.py --root COCO --data_dir OUT

The tree is the one MMDetection's CocoDataset reads: ``annotations/instances_{train,val}2017.json``,
``train2017/``, ``val2017/`` (splits ``train`` and ``validation``). Per image the file's bytes are
stored once, as they are, with the boxes and labels training uses (mmdet's filtering: no ignore,
no crowd, boxes meeting the image with area > 0 and sides >= 1; label i = the i-th category id),
their masks as RLE, and the image's own annotations for COCOeval. An annotation of an unknown
category, an image missing on disk, one that does not decode or decodes to another size than the
file says is reported, left out and counted (the summary and ``OUT/coco_detection/1.0.0/left_out.json``).
Run again after the tree changed, it rebuilds; unchanged, it does nothing (``source.json``).
Train with ``--config.data.data_dir=OUT`` (``configs/retinanet_lsnet_*_coco.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SPLITS = {"train": ("annotations/instances_train2017.json", "train2017"),
          "validation": ("annotations/instances_val2017.json", "val2017")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="the COCO directory (annotations/, train2017/, val2017/)")
    ap.add_argument("--data_dir", required=True, help="TFDS data directory to write into")
    ap.add_argument("--verify", action="store_true",
                    help="also hash every source file's bytes (by default: paths, sizes, modification times)")
    args = ap.parse_args(argv)

    from lsnet_jax.data.builders import (CocoDetection, builder_to_prepare, record_source, tree_fingerprint,
                                         write_left_out)

    root = Path(args.root)
    splits = {name: (root / ann, root / folder) for name, (ann, folder) in SPLITS.items()}
    for ann, folder in splits.values():
        if not ann.is_file() or not folder.is_dir():
            print(f"error: {ann} or {folder} is missing; expected the COCO 2017 layout (annotations/"
                  f"instances_{{train,val}}2017.json, train2017/, val2017/)", file=sys.stderr)
            return 2
    fingerprint = {name: tree_fingerprint([ann, *sorted(p for p in folder.iterdir() if p.is_file())], root,
                                          content=args.verify)
                   for name, (ann, folder) in splits.items()}
    try:
        builder = builder_to_prepare(
            lambda: CocoDetection(splits={k: (str(a), str(f)) for k, (a, f) in splits.items()}, data_dir=args.data_dir,
                                  file_format="array_record"), fingerprint, sources=(args.root,))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if builder is None:
        return 0
    try:
        builder.download_and_prepare()
    except ValueError as e:  # an annotation file that is not COCO's, categories that differ between splits
        print(f"error: {e}", file=sys.stderr)
        return 2
    record_source(builder.data_dir, fingerprint, root=str(root.absolute()))
    write_left_out(builder.data_dir, builder.left_out)
    print(f"done: {builder.data_dir}; {len(builder.left_out)} annotations or images left out")
    print(f"train with: --config.data.data_dir={args.data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
