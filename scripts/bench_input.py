"""Input-pipeline throughput per worker process: the train transform (RandomResizedCrop, flip,
RandAugment, RandomErasing's box) and the eval transform (resize 256, crop 224). Both hand uint8
images to the step, which normalises and fills the erasing box on the device.

    python scripts/bench_input.py [--data_dir OUT --name imagenet_folder] [--n 400] [--workers N]
                                  [--json FILE]

Without ``--data_dir`` it makes ImageNet-like JPEGs (about 500x375, quality 90, cut from the photos
scikit-learn ships, plus two unreadable files) in a temporary TFDS dataset. Each figure is one
process running the real per-record code of the pipeline with no threads, so it is the rate one
grain worker delivers; a host feeds the device with ``data.workers`` of them. A table of where the
time goes (decode + crop, flip, RandAugment, erasing box) follows, then each RandAugment op's cost
on a 224x224 crop (with Pillow's own affine beside the numpy shears and translations), and a plain
PIL baseline (full decode + RandomResizedCrop + flip) for scale. With ``--workers N`` it also runs
the real training loader (grain with N worker processes, records read from the TFDS source,
batches of ``--batch``, repeated augmentation) and reports the images per second it delivers.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lsnet_jax.data import pipeline  # noqa: E402
from lsnet_jax.data.source import DatasetNotFoundError, open_source  # noqa: E402
from lsnet_jax.data import transforms as T  # noqa: E402
from lsnet_jax.models.lsnet import IMAGENET_DEFAULT_MEAN as MEAN  # noqa: E402
from lsnet_jax.models.lsnet import IMAGENET_DEFAULT_STD as STD  # noqa: E402


def make_imagenet_like(root: Path, n: int, seed: int = 0) -> None:
    """``root/{train,val}/cK/*.JPEG``: n random 500x375-ish crops of the sklearn photos, re-encoded."""
    import sklearn.datasets
    from PIL import Image

    photos = [Image.open(p).convert("RGB") for p in
              sorted((Path(sklearn.datasets.__file__).parent / "images").glob("*.jpg"))]
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for i in range(n if split == "train" else max(n // 4, 8)):
            photo = photos[i % len(photos)]
            w, h = int(rng.integers(440, 520)), int(rng.integers(330, 400))
            scale = max(w / photo.width, h / photo.height) * rng.uniform(1.0, 1.6)
            big = photo.resize((int(photo.width * scale) + 1, int(photo.height * scale) + 1), Image.BILINEAR)
            x, y = int(rng.integers(0, big.width - w + 1)), int(rng.integers(0, big.height - h + 1))
            img = big.crop((x, y, x + w, y + h))
            d = root / split / f"c{i % 4}"
            d.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=90)
            (d / f"{i:05d}.JPEG").write_bytes(buf.getvalue())
    bad = root / "train" / "c0"
    good = next(bad.glob("*.JPEG")).read_bytes()
    (bad / "zz_truncated.JPEG").write_bytes(good[: len(good) // 4])
    (bad / "zz_garbage.JPEG").write_bytes(b"not an image" * 100)


def rate(fn, items, repeat: int = 1) -> tuple[float, int]:
    """Images per second of ``fn`` over ``items`` and how many raised (counted as skipped)."""
    fn(items[0])  # warm-up
    skipped = 0
    t = time.perf_counter()
    for _ in range(repeat):
        for it in items:
            if fn(it) is None:
                skipped += 1
    return repeat * len(items) / (time.perf_counter() - t), skipped // repeat


def _readable(data: bytes) -> bool:
    try:
        T.open_image(data).convert("RGB")
        return True
    except Exception:  # the unreadable records the pipeline skips
        return False


def stage_table(data: list[bytes], size: int) -> list[tuple[str, float]]:
    """Mean milliseconds per image of each stage of the train transform."""
    rng = np.random.default_rng(0)
    ra = T.RandAugment("rand-m9-mstd0.5-inc1", fill=tuple(int(round(255 * m)) for m in MEAN))
    acc = dict.fromkeys(["open + decode (reduced) + crop/resize", "flip", "RandAugment",
                         "RandomErasing box + uint8 array"], 0.0)
    for d in data:
        t0 = time.perf_counter()
        img = T.random_resized_crop(T.open_image(d), rng, size)
        t1 = time.perf_counter()
        if rng.random() < 0.5:
            img = img.transpose(T.Image.Transpose.FLIP_LEFT_RIGHT)
        t2 = time.perf_counter()
        img = ra(img, rng)
        t3 = time.perf_counter()
        np.asarray(img, np.uint8)
        T.erasing_box(rng, size, size, 0.25)
        t4 = time.perf_counter()
        for k, dt in zip(acc, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            acc[k] += dt
    return [(k, 1000 * v / len(data)) for k, v in acc.items()]


def op_table(data: bytes, size: int, repeat: int = 40) -> list[tuple[str, float, float | None]]:
    """Milliseconds per call of each RandAugment op at magnitude 9 on a ``size`` crop, and for the
    shears and translations Pillow's generic bicubic affine, which they replace."""
    img = T.random_resized_crop(T.open_image(data), np.random.default_rng(0), size, (0.5, 0.5))
    ra = T.RandAugment("rand-m9-mstd0.5-inc1", fill=tuple(int(round(255 * m)) for m in MEAN))
    pillow = {"ShearX": lambda a: (1, a, 0, 0, 1, 0), "ShearY": lambda a: (1, 0, 0, a, 1, 0),
              "TranslateXRel": lambda a: (1, 0, a * size, 0, 1, 0),
              "TranslateYRel": lambda a: (1, 0, 0, 0, 1, a * size)}

    def ms(fn) -> float:
        fn()
        t = time.perf_counter()
        for _ in range(repeat):
            fn()
        return 1000 * (time.perf_counter() - t) / repeat

    rows = []
    for name in T.RAND_INCREASING_TRANSFORMS:
        op, to_arg = T._OPS[name]
        arg = to_arg(np.random.default_rng(1), 9.0, ra.hparams)
        ref = pillow.get(name)
        rows.append((name, ms(lambda: op(img, arg, ra.fill)),
                     ms(lambda: img.transform(img.size, T.Image.Transform.AFFINE, ref(arg), resample=T.BICUBIC,
                                              fillcolor=ra.fill)) if ref else None))
    return rows


def pipeline_rate(source, info, size: int, workers: int, batch: int = 32,
                  min_images: int = 1500) -> tuple[float, int, int]:
    """Images per second that the real training loader (grain, ``workers`` worker processes with the
    loader's default threads, the TFDS source read record by record) delivers as batches to this
    process, over about ``min_images`` images after its first batch (worker start-up); and the
    images and skipped records counted."""
    steps = max(2, -(-min_images // batch) + 1)
    epochs = -(-steps // (info.num_examples // batch))
    loader = pipeline.train_loader(source, info, T.TrainTransform(size, MEAN, STD), batch, seed=0,
                                   num_epochs=epochs, repeats=3, workers=workers)
    it = iter(loader.dataset)
    next(it)
    images = skipped = 0
    t = time.perf_counter()
    for _ in range(steps - 1):
        b = next(it)
        images += len(b["label"])
        skipped += int(b["skipped"])
    return images / (time.perf_counter() - t), images, skipped


def main(argv: list[str] | None = None) -> int:
    from lsnet_jax.cli.args import nonnegative_int, positive_int

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data_dir", default=None, help="a TFDS data_dir holding --name (default: make one)")
    ap.add_argument("--name", default="imagenet_folder")
    ap.add_argument("--split", default="train")
    ap.add_argument("--n", type=positive_int, default=400, help="records to time")
    ap.add_argument("--size", type=positive_int, default=224)
    ap.add_argument("--workers", type=nonnegative_int, default=0,
                    help="also run the real training loader with this many worker processes")
    ap.add_argument("--batch", type=positive_int, default=32, help="the training loader's batch size")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args(argv)

    tmp = None
    data_dir = args.data_dir
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory()
        root = Path(tmp.name)
        make_imagenet_like(root / "tree", args.n)
        from tensorflow_datasets.core import logging as _  # noqa: F401
        from lsnet_jax.data.builders import ImagenetFolder

        ImagenetFolder(train_dir=str(root / "tree" / "train"), val_dir=str(root / "tree" / "val"), check=False,
                       data_dir=str(root / "tfds"), file_format="array_record").download_and_prepare()  # keeps the 2
        data_dir = str(root / "tfds")
    import logging

    logging.getLogger("lsnet_jax.data.pipeline").setLevel(logging.ERROR)
    try:
        source, info = open_source(args.name, args.split, data_dir)
    except DatasetNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = min(args.n, info.num_examples)
    records = [source[i] for i in range(n)]  # read once: time the transforms, not the disk
    train = pipeline._Load(records, T.TrainTransform(args.size, MEAN, STD), 0, n)
    evalt = pipeline._Load(records, T.EvalTransform(args.size, 0.875), 0, n)
    positions = [(q, q) for q in range(n)]
    train_rate, skipped = rate(train, positions)
    eval_rate, _ = rate(evalt, positions)

    def plain(i):
        from PIL import Image
        try:
            img = Image.open(io.BytesIO(records[i]["image"])).convert("RGB")
        except Exception:
            return None
        rng = np.random.default_rng(i)
        top, left, h, w = T.rrc_params(rng, *img.size)
        img = img.crop((left, top, left + w, top + h)).resize((args.size, args.size), T.BICUBIC)
        return img.transpose(T.Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else img

    plain_rate, _ = rate(plain, list(range(n)))
    good = [r["image"] for r in records if _readable(r["image"])]
    if not good:
        print(f"error: none of the {n} records of {args.name}/{args.split} in {data_dir} decodes", file=sys.stderr)
        return 2
    sizes = [T.open_image(x).size for x in good[:50]]
    print(f"{n} records of {args.name}/{args.split} (e.g. {sizes[0][0]}x{sizes[0][1]}), one process, no threads")
    print(f"{'transform':<46}{'images/s per process':>22}")
    print(f"{'train (RRC + flip + RandAugment + erasing)':<46}{train_rate:>22.1f}")
    print(f"{'eval (resize 256 + centre crop 224)':<46}{eval_rate:>22.1f}")
    print(f"{'plain PIL: full decode + RRC + flip':<46}{plain_rate:>22.1f}")
    print(f"skipped as unreadable: {skipped}")
    print(f"\n{'train stage':<46}{'ms per image':>22}")
    table = stage_table(good[:200], args.size)
    for k, ms in table:
        print(f"{k:<46}{ms:>22.2f}")
    ops = op_table(good[0], args.size)
    print(f"\n{'RandAugment op (magnitude 9, one call)':<46}{'ms':>8}{'Pillow affine ms':>18}")
    for k, t, ref in ops:
        print(f"{k:<46}{t:>8.2f}" + (f"{ref:>18.2f}" if ref is not None else ""))
    loader_fig = {}
    if args.workers > 0:
        rate_w, images, skipped_w = pipeline_rate(source, info, args.size, args.workers, args.batch)
        cores = os.cpu_count() or 1
        print(f"\ntraining loader, {args.workers} worker processes, batches of {args.batch}: "
              f"{rate_w:.1f} images/s, {rate_w / cores:.1f} per core of this {cores}-core machine "
              f"({images} images, {skipped_w} unreadable records skipped)")
        loader_fig = {"loader_workers": args.workers, "loader_images_per_s": rate_w,
                      "loader_images_per_s_per_core": rate_w / cores, "loader_skipped": skipped_w}
    if args.json:
        Path(args.json).write_text(json.dumps(loader_fig | {
            "train_images_per_s_per_process": train_rate, "eval_images_per_s_per_process": eval_rate,
            "plain_pil_rrc_images_per_s": plain_rate, "skipped": skipped, "records": n,
            "train_stage_ms": dict(table), "randaugment_op_ms": {k: t for k, t, _ in ops}}, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
