"""The order of records: which record each slot of each global batch reads, on each process.

Epoch ``e`` is a permutation of the dataset drawn from ``(seed, e)``. With repeated augmentation
(``repeats`` r > 1) the order is DeiT's RASampler (the official ``samplers.py``): each index of
the permutation repeated r times in a row, padded by its own head, then dealt to the ``replicas``
by stride (replica k takes positions k, k + R, k + 2R, ...), so the r copies of an image go to r
different replicas. A replica is one device's share of the global batch, or one BatchNorm group
(``bn_group_size``): the official run had 8 GPUs x 256 images, each GPU its own BatchNorm and its
own Mixup/CutMix draw, so no group holds two copies of an image and no image is mixed with its
own copy. Replica k's slice of global batch b is its positions b * B/R ... (b + 1) * B/R - 1. An
epoch has ``n // B`` steps (about n samples, n/r distinct images), as the official
``num_selected_samples``. The global batch is split into one contiguous slice per process, and
each process reads only its slice: the global batch does not depend on the process count.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def epoch_order(seed: int, epoch: int, n: int, repeats: int) -> np.ndarray:
    """The record indices of one epoch before dealing: a permutation, each index ``repeats`` times
    in a row (length ``repeats * n``)."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return np.repeat(perm, repeats) if repeats > 1 else perm


def epoch_records(seed: int, epoch: int, n: int, global_batch: int, repeats: int = 1,
                  replicas: int = 1) -> np.ndarray:
    """``(n // B, B)``: the record of every slot of every global batch of the epoch. Slot ``s``
    belongs to replica ``s // (B / R)``; replica k reads the order's positions k, k + R, ..."""
    if global_batch % replicas:
        raise ValueError(f"the global batch {global_batch} is not a whole number of {replicas} replicas")
    steps, per = n // global_batch, global_batch // replicas
    order = epoch_order(seed, epoch, n, repeats)
    i = np.arange(steps * per).reshape(steps, 1, per)  # a replica's own position
    k = np.arange(replicas).reshape(1, replicas, 1)
    p = i * replicas + k  # dealt by stride; beyond the order: padded by its own head
    return order[p % len(order)].reshape(steps, global_batch)


@dataclasses.dataclass
class Positions:
    """Local stream index -> (global position, record index) for one process."""

    n: int
    global_batch: int
    local_batch: int
    process_index: int
    seed: int
    repeats: int
    shuffle: bool
    replicas: int = 1
    _cache: tuple = (None, None)

    def steps_per_epoch(self) -> int:
        return self.n // self.global_batch

    def __call__(self, k: int) -> tuple[int, int]:
        b, j = divmod(k, self.local_batch)
        slot = self.process_index * self.local_batch + j
        q = b * self.global_batch + slot  # global position
        if not self.shuffle:
            return q, q
        epoch, step = divmod(b, self.steps_per_epoch())
        if self._cache[0] != epoch:
            self._cache = (epoch, epoch_records(self.seed, epoch, self.n, self.global_batch, self.repeats,
                                                self.replicas))
        return q, int(self._cache[1][step, slot])


def group_epoch_records(seed: int, epoch: int, groups: np.ndarray, global_batch: int) -> np.ndarray:
    """``(steps, B)``: the records of every global batch of an epoch drawn by group, as
    MMDetection's (Distributed)GroupSampler draws by aspect group: each group's records permuted
    (from ``(seed, epoch, group)``), padded by repeating its own head to a whole number of global
    batches and cut into batches; the batches of all groups then shuffled together (from
    ``(seed, epoch)``). Every batch holds one group (one padded shape: one compiled program).
    ``steps`` = the sum over groups of ``ceil(n_g / B)``, the same every epoch."""
    blocks = []
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        perm = members[np.random.default_rng([seed, epoch, int(g)]).permutation(len(members))]
        steps = -(-len(perm) // global_batch)
        blocks.append(perm[np.arange(steps * global_batch) % len(perm)].reshape(steps, global_batch))
    batches = np.concatenate(blocks)
    return batches[np.random.default_rng([seed, epoch]).permutation(len(batches))]


def group_steps(groups: np.ndarray, global_batch: int) -> int:
    """The steps of an epoch drawn by group: the sum over groups of ``ceil(n_g / B)``."""
    counts = np.unique(np.asarray(groups), return_counts=True)[1]
    return int(sum(-(-int(c) // global_batch) for c in counts))


@dataclasses.dataclass
class GroupPositions:
    """``Positions`` for batches drawn by group (``group_epoch_records``): local stream index ->
    (global position, record index) for one process, which reads its contiguous slice of each
    global batch."""

    groups: np.ndarray
    global_batch: int
    local_batch: int
    process_index: int
    seed: int
    _cache: tuple = (None, None)

    def __post_init__(self):
        self.groups = np.asarray(self.groups)
        self._steps = group_steps(self.groups, self.global_batch)

    def steps_per_epoch(self) -> int:
        return self._steps

    def __call__(self, k: int) -> tuple[int, int]:
        b, j = divmod(k, self.local_batch)
        slot = self.process_index * self.local_batch + j
        epoch, step = divmod(b, self._steps)
        if self._cache[0] != epoch:
            self._cache = (epoch, group_epoch_records(self.seed, epoch, self.groups, self.global_batch))
        return b * self.global_batch + slot, int(self._cache[1][step, slot])
