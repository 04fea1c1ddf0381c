"""The order of records: which record each slot of each global batch reads, on each process.

Epoch ``e`` is a permutation of the dataset drawn from ``(seed, e)``; with repeated augmentation
(``repeats`` r > 1, timm's RASampler) each index appears r times in a row and the epoch is cut back
to the dataset's length, so an epoch still has ``len(dataset)`` samples. Within each global batch
of B samples the r copies of an image are spread B/r slots apart, so they fall on different
devices and BatchNorm groups, as timm spreads them over GPUs. The global batch is split into one
contiguous slice per process, and each process reads only its slice: no overlap, and the global
batch does not depend on the process count.
"""

from __future__ import annotations

import dataclasses

import numpy as np


def epoch_order(seed: int, epoch: int, n: int, repeats: int) -> np.ndarray:
    """The record indices of one epoch (length n): a permutation, each index ``repeats`` times."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return np.repeat(perm, repeats)[:n] if repeats > 1 else perm


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
