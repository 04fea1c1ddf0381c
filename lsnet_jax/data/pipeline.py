"""The input pipeline: a TFDS data source read through grain, one global batch per step.

Order of records. Epoch ``e`` is a permutation of the dataset drawn from ``(seed, e)``; with
repeated augmentation (``repeats`` r > 1, timm's RASampler) each index appears r times in a row and
the epoch is cut back to the dataset's length, so an epoch still has ``len(dataset)`` samples.
Within each global batch of B samples the r copies of an image are spread B/r slots apart, so
they fall on different devices and BatchNorm groups, as timm spreads them over GPUs. The global
batch is split into one contiguous slice per process (``jax.process_index()``), and each process
reads only its slice: no overlap, and the global batch does not depend on the process count.

Every sample draws its augmentation from a generator seeded by ``(seed, global position)``, so the
data are a pure function of the step: the same on any number of devices, processes or worker
processes, and a restored grain iterator state gives exactly the batches an uninterrupted run sees.

Unreadable records (corrupt or truncated images) are skipped and counted: in a training batch their
slot is filled by a copy of a readable sample of the same batch (with that sample's own label);
in an evaluation batch the slot gets ``mask`` 0. Each batch carries ``skipped``, the number of such
records, which the training loop logs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds

from lsnet_jax.data import builders  # noqa: F401  (registers lsnet_digits and imagenet_folder)
from lsnet_jax.data import transforms as T

log = logging.getLogger(__name__)

# datasets this project can build on the spot, with no download
_BUILT_HERE = {"lsnet_digits"}


class DatasetNotFoundError(FileNotFoundError):
    pass


def _how_to_prepare(name: str, data_dir: str | None) -> str:
    where = data_dir or "~/tensorflow_datasets"
    if name == "imagenet_folder":
        return (f"build it from an ImageNet folder tree with `python scripts/prepare_imagenet.py "
                f"--train_dir D/train --val_dir D/val --data_dir {where}`")
    if name.startswith("imagenet2012"):
        return (f"download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar into "
                f"{where}/downloads/manual and run `tfds build {name} --data_dir {where}`, or build "
                f"'imagenet_folder' with scripts/prepare_imagenet.py and set data.name to it")
    if name.startswith("imagenet2012_corrupted"):
        return (f"put ILSVRC2012_img_val.tar in {where}/downloads/manual and run `tfds build {name} "
                f"--file_format=array_record --data_dir {where}` (building it needs TensorFlow)")
    return (f"run `tfds build {name} --file_format=array_record --data_dir {where}` (with network), or "
            f"point data_dir at the directory that holds it")


def get_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    """The prepared TFDS builder of ``name``; datasets built here are prepared on first use.
    Raises ``DatasetNotFoundError`` saying how to prepare anything else."""
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # unknown name, unreadable directory
        raise DatasetNotFoundError(f"TFDS dataset {name!r} not found in {data_dir or 'the default data_dir'}"
                                   f" ({type(e).__name__}: {e}); {_how_to_prepare(name, data_dir)}") from e
    if not builder.is_prepared():
        if name in _BUILT_HERE:
            log.info("preparing %s in %s", name, builder.data_dir)
            builder.download_and_prepare(file_format="array_record")
        else:
            raise DatasetNotFoundError(f"TFDS dataset {name!r} is not prepared in {builder.data_dir}; "
                                       f"{_how_to_prepare(name, data_dir)}")
    return builder


@dataclasses.dataclass(frozen=True)
class SourceInfo:
    num_examples: int
    num_classes: int
    class_names: tuple[str, ...] = ()


def open_source(name: str, split: str, data_dir: str | None) -> tuple[Sequence[dict], SourceInfo]:
    """A random-access source of ``{'image': JPEG bytes, 'label': int}`` records and its size."""
    builder = get_builder(name, data_dir)
    if split not in builder.info.splits:
        raise ValueError(f"{name} has no split {split!r}; it has {sorted(builder.info.splits)}")
    fmt = builder.info.file_format
    if fmt is not None and getattr(fmt, "value", fmt) != "array_record":
        raise ValueError(f"{name} in {builder.data_dir} is stored as {builder.info.file_format}; grain "
                         f"needs random access: rebuild it with `--file_format=array_record`")
    source = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    label = builder.info.features["label"]
    return source, SourceInfo(len(source), label.num_classes, tuple(label.names))


# ----------------------------------------------------------------------------- sample order


def epoch_order(seed: int, epoch: int, n: int, repeats: int) -> np.ndarray:
    """The record indices of one epoch (length n): a permutation, each index ``repeats`` times."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return np.repeat(perm, repeats)[:n] if repeats > 1 else perm


@dataclasses.dataclass
class _Positions:
    """Local stream index -> (global position, record index) for one process."""

    n: int
    global_batch: int
    local_batch: int
    process_index: int
    seed: int
    repeats: int
    shuffle: bool
    _cache: tuple = (None, None)

    def steps_per_epoch(self) -> int:
        return self.n // self.global_batch

    def __call__(self, k: int) -> tuple[int, int]:
        b, j = divmod(k, self.local_batch)
        slot = self.process_index * self.local_batch + j
        r = self.repeats
        if r > 1 and self.global_batch % r == 0:  # copy c of image i at slot c * (B/r) + i
            c, i = divmod(slot, self.global_batch // r)
            slot = i * r + c
        q = b * self.global_batch + slot  # global position
        if not self.shuffle:
            return q, q
        epoch, pos = divmod(q, self.steps_per_epoch() * self.global_batch)
        if self._cache[0] != epoch:
            self._cache = (epoch, epoch_order(self.seed, epoch, self.n, r))
        return q, int(self._cache[1][pos])


# ----------------------------------------------------------------------------- records -> batches


@dataclasses.dataclass
class _Load:
    """(position, record index) -> transformed sample, or None if the image cannot be read."""

    source: Sequence[dict]
    transform: Callable[[bytes, np.random.Generator], np.ndarray]
    seed: int
    n: int

    def __call__(self, pos_idx: tuple[int, int]) -> dict | None:
        q, idx = pos_idx
        if idx >= self.n:  # padding of the last evaluation batch
            return {"pad": True, "position": q}
        record = self.source[idx]
        rng = np.random.default_rng([self.seed, q])
        try:
            out = self.transform(record["image"], rng)
        except T.UnreadableImage as e:  # decoding failed; errors of the augmentations propagate
            name = record.get("file_name", b"")
            name = name.decode() if isinstance(name, bytes) else name
            log.warning("skipped unreadable record %d (%s): %s", idx, name, e)
            return None
        return out | {"label": int(record["label"])}


def collate_train(items: Sequence[dict | None]) -> dict[str, np.ndarray]:
    good = [x for x in items if x is not None]
    if not good:
        raise RuntimeError(f"all {len(items)} records of a batch are unreadable; check the dataset")
    filled = [x if x is not None else good[i % len(good)] for i, x in enumerate(items)]
    out = {k: np.stack([x[k] for x in filled]) for k in good[0] if k != "label"}
    return out | {"label": np.asarray([x["label"] for x in filled], np.int32),
                  "skipped": np.asarray(len(items) - len(good), np.int32)}


def _collate_eval(items: Sequence[dict | None], shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    def ok(x):
        return x is not None and "pad" not in x
    return {"image": np.stack([x["image"] if ok(x) else np.zeros(shape, np.uint8) for x in items]),
            "label": np.asarray([x["label"] if ok(x) else 0 for x in items], np.int32),
            "mask": np.asarray([ok(x) for x in items], np.float32),
            "skipped": np.asarray(sum(x is None for x in items), np.int32)}


@dataclasses.dataclass(frozen=True)
class _CollateEval:
    shape: tuple[int, ...]

    def __call__(self, items):
        return _collate_eval(items, self.shape)


# ----------------------------------------------------------------------------- transforms


@dataclasses.dataclass
class TrainTransform:
    """JPEG bytes -> ``{'image': uint8 HWC, 'erase': (top, left, h, w)}``: RandomResizedCrop, flip,
    RandAugment, and RandomErasing's box. The step normalises with ``mean``/``std`` and fills the
    box with noise on the device (``lsnet_jax.data.mix``)."""

    size: int
    mean: Sequence[float]
    std: Sequence[float]
    scale: Sequence[float] = (0.08, 1.0)
    ratio: Sequence[float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    randaugment: str | None = "rand-m9-mstd0.5-inc1"
    reprob: float = 0.25
    fast_decode: bool = True

    def __post_init__(self):
        fill = tuple(int(round(255 * m)) for m in self.mean)
        self._ra = T.RandAugment(self.randaugment, fill=fill) if self.randaugment else None

    def __call__(self, data: bytes, rng: np.random.Generator) -> np.ndarray:
        img = T.random_resized_crop(T.open_image(data), rng, self.size, self.scale, self.ratio,
                                    self.fast_decode)
        if self.hflip > 0 and rng.random() < self.hflip:
            img = img.transpose(T.Image.Transpose.FLIP_LEFT_RIGHT)
        if self._ra is not None:
            img = self._ra(img, rng)
        return {"image": np.asarray(img, np.uint8), "erase": T.erasing_box(rng, self.size, self.size, self.reprob)}


@dataclasses.dataclass
class EvalTransform:
    """JPEG bytes -> ``{'image': uint8 HWC}``: resize the shorter side to size/crop_pct (bicubic),
    centre crop. The step normalises on the device."""

    size: int
    crop_pct: float = 0.875
    fast_decode: bool = False

    def __call__(self, data: bytes, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        img = T.eval_resize_crop(T.open_image(data), self.size, self.crop_pct, self.fast_decode)
        return {"image": np.asarray(img, np.uint8)}


# ----------------------------------------------------------------------------- datasets


@dataclasses.dataclass(frozen=True)
class Loader:
    """A grain dataset of this process's batches and what the training loop needs to know."""

    dataset: grain.IterDataset
    steps_per_epoch: int
    num_examples: int
    num_classes: int
    global_batch: int


def _finish(ds: grain.MapDataset, workers: int, threads: int, prefetch: int) -> grain.IterDataset:
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch))
    if workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; outside absl.app, use defaults
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return it


def _local_batch(global_batch: int) -> int:
    nproc = jax.process_count()
    if global_batch % nproc:
        raise ValueError(f"batch_size {global_batch} is not divisible by the {nproc} processes")
    return global_batch // nproc


def train_loader(source: Sequence[dict], info: SourceInfo, transform: Callable, global_batch: int,
                 seed: int, num_epochs: int, repeats: int = 1, workers: int = 0, threads: int = 2,
                 prefetch: int = 2) -> Loader:
    """Batches of ``{'image' (B_local, H, W, 3) uint8, 'erase' (B_local, 4), 'label' (B_local,) int32,
    'skipped'}``
    for ``num_epochs`` epochs (plus one, as slack for skipped records)."""
    local = _local_batch(global_batch)
    if info.num_examples < global_batch:
        raise ValueError(f"the dataset has {info.num_examples} examples, fewer than one batch "
                         f"({global_batch}); lower batch_size")
    pos = _Positions(info.num_examples, global_batch, local, jax.process_index(), seed, repeats, True)
    steps = pos.steps_per_epoch()
    ds = grain.MapDataset.range((num_epochs + 1) * steps * local).map(pos)
    ds = ds.map(_Load(source, transform, seed, info.num_examples))
    ds = ds.batch(local, drop_remainder=True, batch_fn=collate_train)
    return Loader(_finish(ds, workers, threads, prefetch), steps, info.num_examples, info.num_classes,
                  global_batch)


def eval_loader(source: Sequence[dict], info: SourceInfo, transform: EvalTransform, global_batch: int,
                workers: int = 0, threads: int = 2, prefetch: int = 2) -> Loader:
    """One pass over the split in order, the last batch padded; ``mask`` marks real samples."""
    local = _local_batch(global_batch)
    steps = -(-info.num_examples // global_batch)
    pos = _Positions(steps * global_batch, global_batch, local, jax.process_index(), 0, 1, False)
    ds = grain.MapDataset.range(steps * local).map(pos)
    ds = ds.map(_Load(source, transform, 0, info.num_examples))
    ds = ds.batch(local, drop_remainder=True, batch_fn=_CollateEval((transform.size, transform.size, 3)))
    return Loader(_finish(ds, workers, threads, prefetch), steps, info.num_examples, info.num_classes,
                  global_batch)


def to_global(batch: dict[str, np.ndarray], sharding: jax.sharding.NamedSharding) -> dict[str, jax.Array]:
    """This process's slice of the batch -> global arrays sharded along the batch (data) axis."""
    out = {}
    for k, v in batch.items():
        if v.ndim == 0:  # per-process counters stay on the host
            continue
        out[k] = jax.make_array_from_process_local_data(sharding, v)
    return out
