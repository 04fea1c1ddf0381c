"""Turn the ADEChallengeData2016 tree into the TFDS dataset the segmentation pipeline reads (``ade20k``).

    python scripts/prepare_ade20k.py --root ADEChallengeData2016 --data_dir OUT

The tree is the one the official code reads (MMSegmentation's ADE20KDataset):
``images/{training,validation}/*.jpg`` and ``annotations/{training,validation}/*.png`` (uint8,
0 = other, 1..150 = classes; reduce_zero_label is applied when the pipeline loads them). 20,210
training and 2,000 validation pairs. The files are stored as they are, in array_record shards,
with a progress bar; each pair is decoded once on the way, and a pair that does not decode is
reported with its path, left out and counted (the summary and ``OUT/ade20k/1.0.0/left_out.json``).
Run again after the tree changed, it rebuilds (the source's file list, sizes and times are
recorded in ``source.json``); unchanged, it does nothing. TFDS's ``scene_parse150`` is another
task (the 2017 challenge's instance masks), not this data.
Train with ``--config.data.data_dir=OUT`` (``configs/fpn_lsnet_*_ade20k.py`` name ``ade20k``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="the ADEChallengeData2016 directory")
    ap.add_argument("--data_dir", required=True, help="TFDS data directory to write into")
    ap.add_argument("--verify", action="store_true",
                    help="also hash every source file's bytes, so that an edit keeping a file's size and "
                         "modification time is seen (by default: paths, sizes, modification times)")
    args = ap.parse_args(argv)

    from lsnet_jax.data.builders import (
        Ade20k,
        builder_to_prepare,
        list_ade20k,
        record_source,
        tree_fingerprint,
        write_left_out,
    )

    try:
        counts = {split: len(list_ade20k(args.root, split)) for split in ("training", "validation")}
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{counts['training']} training and {counts['validation']} validation pairs -> {args.data_dir}")
    pairs = {split: list_ade20k(args.root, split) for split in ("training", "validation")}
    fingerprint = {split: tree_fingerprint([f for pair in pairs[split] for f in pair], args.root,
                                           content=args.verify)
                   for split in pairs}
    try:
        builder = builder_to_prepare(lambda: Ade20k(root=args.root, data_dir=args.data_dir,
                                                    file_format="array_record"), fingerprint, sources=(args.root,))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if builder is None:
        return 0
    builder.download_and_prepare()
    record_source(builder.data_dir, fingerprint, root=str(Path(args.root).absolute()))
    write_left_out(builder.data_dir, builder.left_out)
    print(f"done: {builder.data_dir}; {len(builder.left_out)} unreadable pairs left out")
    print(f"train with: --config.data.data_dir={args.data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
