"""Turn an ImageNet folder tree into the TFDS dataset the pipeline reads (``imagenet_folder``).

    python scripts/prepare_imagenet.py --train_dir D/train --val_dir D/val --data_dir OUT

The tree is the one the official repo expects (``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``),
with any number of classes (sorted directory names give the labels, as torchvision's
ImageFolder). Files are stored as they are, in array_record shards, with a progress bar. Train
with ``--config.data.name=imagenet_folder --config.data.data_dir=OUT``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train_dir", required=True, help="D/train with one sub-directory per class")
    ap.add_argument("--val_dir", default=None, help="D/val with the same class sub-directories")
    ap.add_argument("--data_dir", required=True, help="TFDS data directory to write into")
    args = ap.parse_args(argv)

    from lsnet_jax.data.builders import ImagenetFolder, list_image_folder

    try:
        classes, items = list_image_folder(args.train_dir)
        n_val = len(list_image_folder(args.val_dir)[1]) if args.val_dir else 0
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(classes)} classes, {len(items)} train images, {n_val} validation images -> {args.data_dir}")
    builder = ImagenetFolder(train_dir=args.train_dir, val_dir=args.val_dir, data_dir=args.data_dir,
                             file_format="array_record")
    try:
        builder.download_and_prepare()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done: {builder.data_dir}")
    print(f"train with: --config.data.name=imagenet_folder --config.data.data_dir={args.data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
