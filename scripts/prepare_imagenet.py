"""Turn an ImageNet folder tree into the TFDS dataset the pipeline reads (``imagenet_folder``).

    python scripts/prepare_imagenet.py --train_dir D/train --val_dir D/val --data_dir OUT

The tree is the one the official repo expects (``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``),
with any number of classes (sorted directory names give the labels, as torchvision's
ImageFolder; a class folder without images is refused unless --allow_empty_classes). Files are
stored as they are, in array_record shards, with a progress bar. Each file is decoded once on the
way (JPEGs at 1/8 scale, which still reads all their data): one that does not decode (truncated,
corrupt, not an image whatever its name) is reported with its path, left out, counted in the
summary and listed in OUT/imagenet_folder/1.0.0/left_out.json. Run again after the tree changed,
it rebuilds the dataset (the source's file list, sizes and times are recorded in source.json);
unchanged, it does nothing. Train with ``--config.data.name=imagenet_folder --config.data.data_dir=OUT``.
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
    ap.add_argument("--allow_empty_classes", action="store_true",
                    help="keep class folders without images as labels (by default they are refused: a label "
                         "no image has changes every later class index)")
    ap.add_argument("--verify", action="store_true",
                    help="also hash every source file's bytes: an edit that keeps a file's size and "
                         "modification time (cp -p, rsync -t, tar x) is then seen (by default a rerun "
                         "compares each file's path, size and modification time)")
    args = ap.parse_args(argv)

    from lsnet_jax.data.builders import (
        ImagenetFolder,
        builder_to_prepare,
        empty_classes,
        list_image_folder,
        record_source,
        tree_fingerprint,
        write_left_out,
    )

    try:
        classes, items = list_image_folder(args.train_dir)
        val = list_image_folder(args.val_dir)[1] if args.val_dir else []
        empty = empty_classes(args.train_dir)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if empty and not args.allow_empty_classes:
        print(f"error: {len(empty)} class folders of {args.train_dir} hold no image ({', '.join(empty[:10])}"
              f"{', ...' if len(empty) > 10 else ''}); each would become a label no image has. Remove them, or "
              f"pass --allow_empty_classes to keep them as labels (e.g. to keep a fixed class numbering)",
              file=sys.stderr)
        return 2
    if empty:
        print(f"warning: {len(empty)} class folders hold no image and are kept as labels: {', '.join(empty[:10])}")
    print(f"{len(classes)} classes, {len(items)} train images, {len(val)} validation images -> {args.data_dir}")
    fingerprint = {"train": tree_fingerprint([p for p, _ in items], args.train_dir, classes, args.verify)}
    if args.val_dir:
        fingerprint["validation"] = tree_fingerprint([p for p, _ in val], args.val_dir, classes, args.verify)

    try:
        b = builder_to_prepare(lambda: ImagenetFolder(train_dir=args.train_dir, val_dir=args.val_dir,
                                                      data_dir=args.data_dir, file_format="array_record"),
                               fingerprint, sources=tuple(d for d in (args.train_dir, args.val_dir) if d))
        if b is None:
            return 0
        b.download_and_prepare()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    record_source(b.data_dir, fingerprint, train_dir=str(Path(args.train_dir).absolute()),
                  val_dir=str(Path(args.val_dir).absolute()) if args.val_dir else None, empty_classes=empty,
                  left_out=len(b.left_out))
    listed = write_left_out(b.data_dir, b.left_out)
    print(f"done: {b.data_dir}; {len(b.left_out)} files that do not decode left out"
          + (f" (listed in {listed})" if b.left_out else ""))
    print(f"train with: --config.data.name=imagenet_folder --config.data.data_dir={args.data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
