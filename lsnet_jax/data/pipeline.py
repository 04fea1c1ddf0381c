"""The input pipeline: a source (``source``) read through grain in the order of ``sampler``,
each record decoded and augmented on the host (``transforms``), one global batch per step.

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
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence

import grain
import jax
import numpy as np

from lsnet_jax.data import transforms as T
from lsnet_jax.data.sampler import GroupPositions, Positions
from lsnet_jax.data.source import SourceInfo

log = logging.getLogger(__name__)



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



@dataclasses.dataclass(frozen=True)
class Loader:
    """This process's batches (a grain ``MapDataset``, read as ``finish`` says: threads, worker
    processes, prefetch) and its steps per epoch. ``dataset`` reads them all; ``iterator()`` reads
    them with a resumable position that does not depend on the reading (``Batches``)."""

    batches: grain.MapDataset
    finish: Callable[[grain.MapDataset], grain.IterDataset]
    steps_per_epoch: int

    @property
    def dataset(self) -> grain.IterDataset:
        return self.finish(self.batches)

    def iterator(self) -> Batches:
        return Batches(self.batches, self.finish)


class Batches:
    """An iterator over a loader's batches whose state is the number of batches it has given,
    ``{"batches": n}``. Grain's own state depends on how the batches are read (in this process:
    ``next_index``; by worker processes: each worker's), so a run could not resume after
    ``data.workers`` changed; this one starts reading at batch ``n`` (each batch is a pure function
    of its position), whatever the reading was and is. The states of grain's iterators that older
    checkpoints hold are read as well."""

    def __init__(self, batches: grain.MapDataset, finish: Callable[[grain.MapDataset], grain.IterDataset]):
        self._batches, self._finish = batches, finish
        self._done, self._it = 0, None

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> dict:
        if self._it is None:
            self._it = iter(self._finish(self._batches[self._done:]))
        batch = next(self._it)
        self._done += 1
        return batch

    def get_state(self) -> dict:
        return {"batches": self._done}

    def set_state(self, state: dict) -> None:
        n = batches_given(state)
        if not 0 <= n <= len(self._batches):
            raise ValueError(f"the saved data position ({n} batches) is outside this data's {len(self._batches)} "
                             f"batches: the dataset changed since the checkpoint was saved")
        self._done, self._it = n, None


def batches_given(state: dict) -> int:
    """The batches an iterator with ``state`` had given: ``Batches``' state, or grain's (in-process
    ``{"next_index": n}``; with worker processes, each worker's ``next_index`` summed)."""
    if "batches" in state:
        return int(state["batches"])
    if "next_index" in state:
        return int(state["next_index"])
    if "iterators_in_use_states" in state:
        return sum(int(w["next_index"]) for w in state["iterators_in_use_states"])
    raise ValueError(f"unknown data iterator state (keys {sorted(state)}): not written by lsnet_jax")


def _watch_parent(parent: int, interval: float) -> None:
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(0)  # the parent is gone (killed by any signal, or crashed): nothing to produce for


def die_with_parent(worker_index: int = 0, worker_count: int = 0, *, parent: int, interval: float = 0.5) -> None:
    """Run in each grain worker process: end it within ``interval`` s of its parent's end, however
    that ends (SIGTERM, SIGKILL, a crash). A killed parent runs no cleanup, and an orphaned worker
    would otherwise hold its memory (hundreds of MB) until it is killed by hand. ``parent`` is the
    pid of the process that started the workers, fixed there: a worker that gets here only after
    its parent died (still importing, on a loaded machine) must not take its new parent for it."""
    threading.Thread(target=_watch_parent, args=(parent, interval), daemon=True,
                     name="lsnet-die-with-parent").start()


def _finish(ds: grain.MapDataset, *, workers: int, threads: int, prefetch: int) -> grain.IterDataset:
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch))
    if workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; outside absl.app, use defaults
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers),
                             worker_init_fn=functools.partial(die_with_parent, parent=os.getpid()))
    return it


def _local_batch(global_batch: int) -> int:
    nproc = jax.process_count()
    if global_batch % nproc:
        raise ValueError(f"batch_size {global_batch} is not divisible by the {nproc} processes")
    return global_batch // nproc


def train_loader(source: Sequence[dict], info: SourceInfo, transform: Callable, global_batch: int,
                 seed: int, num_epochs: int, repeats: int = 1, workers: int = 0, threads: int = 2,
                 prefetch: int = 2, replicas: int = 1) -> Loader:
    """Batches of ``{'image' (B_local, H, W, 3) uint8, 'erase' (B_local, 4), 'label' (B_local,) int32,
    'skipped'}``
    for ``num_epochs`` epochs (plus one, as slack for skipped records). With ``repeats`` > 1 the
    copies of an image are dealt to different ``replicas`` (``lsnet_jax.data.sampler``)."""
    local = _local_batch(global_batch)
    if info.num_examples < global_batch:
        raise ValueError(f"the dataset has {info.num_examples} examples, fewer than one batch "
                         f"({global_batch}); lower batch_size")
    pos = Positions(info.num_examples, global_batch, local, jax.process_index(), seed, repeats, True, replicas)
    steps = pos.steps_per_epoch()
    ds = grain.MapDataset.range((num_epochs + 1) * steps * local).map(pos)
    ds = ds.map(_Load(source, transform, seed, info.num_examples))
    ds = ds.batch(local, drop_remainder=True, batch_fn=collate_train)
    return Loader(ds, functools.partial(_finish, workers=workers, threads=threads, prefetch=prefetch), steps)


def eval_loader(source: Sequence[dict], info: SourceInfo, transform: T.EvalTransform, global_batch: int,
                workers: int = 0, threads: int = 2, prefetch: int = 2) -> Loader:
    """One pass over the split in order, the last batch padded; ``mask`` marks real samples."""
    local = _local_batch(global_batch)
    steps = -(-info.num_examples // global_batch)
    pos = Positions(steps * global_batch, global_batch, local, jax.process_index(), 0, 1, False)
    ds = grain.MapDataset.range(steps * local).map(pos)
    ds = ds.map(_Load(source, transform, 0, info.num_examples))
    ds = ds.batch(local, drop_remainder=True, batch_fn=_CollateEval((transform.size, transform.size, 3)))
    return Loader(ds, functools.partial(_finish, workers=workers, threads=threads, prefetch=prefetch), steps)


def to_global(batch: dict[str, np.ndarray], sharding: jax.sharding.NamedSharding) -> dict[str, jax.Array]:
    """This process's slice of the batch -> global arrays sharded along the batch (data) axis."""
    out = {}
    for k, v in batch.items():
        if v.ndim == 0:  # per-process counters stay on the host
            continue
        out[k] = jax.make_array_from_process_local_data(sharding, v)
    return out


# ----- semantic segmentation: samples are dicts of arrays from a record-level transform -----

@dataclasses.dataclass
class _LoadSeg:
    """(position, record index) -> the transform of the whole record, or None if unreadable."""

    source: Sequence[dict]
    transform: Callable[[dict, np.random.Generator], dict]
    seed: int

    def __call__(self, pos_idx: tuple[int, int]) -> dict | None:
        q, idx = pos_idx
        record = self.source[idx]
        try:
            return self.transform(record, np.random.default_rng([self.seed, q]))
        except T.UnreadableImage as e:
            name = record.get("file_name", b"")
            name = name.decode() if isinstance(name, bytes) else name
            log.warning("skipped unreadable record %d (%s): %s", idx, name, e)
            return None


def collate_seg(items: Sequence[dict | None]) -> dict[str, np.ndarray]:
    """Stack the samples; an unreadable one's slot gets a copy of a readable one (counted)."""
    good = [x for x in items if x is not None]
    if not good:
        raise RuntimeError(f"all {len(items)} records of a batch are unreadable; check the dataset")
    filled = [x if x is not None else good[i % len(good)] for i, x in enumerate(items)]
    return {k: np.stack([x[k] for x in filled]) for k in good[0]} | {
        "skipped": np.asarray(len(items) - len(good), np.int32)}


def seg_train_loader(source: Sequence[dict], info: SourceInfo, transform: Callable, global_batch: int,
                     seed: int, num_steps: int, workers: int = 0, threads: int = 2, prefetch: int = 2,
                     groups: np.ndarray | None = None) -> Loader:
    """Batches of ``{'image' (B_local, crop, crop, 3) uint8, 'label' (B_local, crop, crop) uint8,
    'valid' (B_local, 2), 'skipped'}`` (or what ``transform`` gives) for at least ``num_steps``
    steps, in reshuffled epochs. ``groups`` (one id per record): every global batch is drawn from
    one group (``sampler.group_epoch_records``), e.g. the records of one padded shape."""
    local = _local_batch(global_batch)
    if info.num_examples < global_batch:
        raise ValueError(f"the dataset has {info.num_examples} examples, fewer than one batch "
                         f"({global_batch}); lower batch_size")
    if groups is not None:
        pos = GroupPositions(np.asarray(groups), global_batch, local, jax.process_index(), seed)
    else:
        pos = Positions(info.num_examples, global_batch, local, jax.process_index(), seed, 1, True)
    steps = pos.steps_per_epoch()
    epochs = -(-num_steps // steps) + 1  # one more, as slack
    ds = grain.MapDataset.range(epochs * steps * local).map(pos)
    ds = ds.map(_LoadSeg(source, transform, seed))
    ds = ds.batch(local, drop_remainder=True, batch_fn=collate_seg)
    return Loader(ds, functools.partial(_finish, workers=workers, threads=threads, prefetch=prefetch), steps)


@dataclasses.dataclass
class _LoadSegEval:
    source: Sequence[dict]
    transform: Callable[[dict], dict]

    def __call__(self, idx: int) -> dict:
        record = self.source[idx]
        name = record.get("file_name", b"")
        name = name.decode() if isinstance(name, bytes) else str(name)
        try:
            return self.transform(record) | {"index": idx, "file_name": name}
        except T.UnreadableImage as e:
            log.warning("skipped unreadable record %d (%s): %s", idx, name, e)
            return {"index": idx, "file_name": name, "error": str(e)}


def seg_eval_samples(source: Sequence[dict], transform: Callable[[dict], dict], threads: int = 2,
                     prefetch: int = 4, shard: bool = True) -> grain.IterDataset:
    """This process's share of a split (records ``process_index::process_count``; every record
    with ``shard=False``), one sample at a time (images keep their own sizes), decoded ahead by
    ``threads`` threads; an unreadable record comes as ``{'index', 'file_name', 'error'}``."""
    first, step = (jax.process_index(), jax.process_count()) if shard else (0, 1)
    ds = grain.MapDataset.range(first, len(source), step)
    ds = ds.map(_LoadSegEval(source, transform))
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch))
