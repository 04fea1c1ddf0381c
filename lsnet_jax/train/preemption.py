"""Graceful preemption: SIGTERM (what a preemptible VM or a cluster scheduler sends) or SIGINT
(Ctrl-C) lets the training step in flight finish; the loop then writes a checkpoint at that
step, says where it stopped and how to resume, and returns normally (exit 0).

One process: a Python signal handler sets a flag the loop reads after every step; a second
Ctrl-C interrupts at once, except while that last checkpoint is being written (it would be lost):
then it is said to be coming, and the run stops as soon as it is written. Several processes
(``jax.distributed``): every process must stop at the same step, so JAX's preemption service (its
own SIGTERM handler, installed by ``jax.distributed.initialize``) agrees on one; ``reached(step)``
asks it every step.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

import jax
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preemption:
    """``with Preemption() as p: ... if p.reached(step): save and stop``."""

    def __init__(self):
        self.signal: str | None = None
        self.saving = False  # the stop's checkpoint is being written: a second Ctrl-C waits for it
        self._previous: dict[int, object] = {}
        self._distributed = jax.process_count() > 1

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None and signum == signal.SIGINT:  # a second Ctrl-C: stop now
            if self.saving:
                print("a second Ctrl-C: the checkpoint of this step is being written; the run stops as soon "
                      "as it is", file=sys.stderr, flush=True)
                return
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def __enter__(self) -> Preemption:
        if not self._distributed and threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()

    def reached(self, step: int) -> bool:
        """Whether to save and stop after ``step`` (the same answer on every process)."""
        if self._distributed:
            if multihost_utils.reached_preemption_sync_point(step):
                self.signal = self.signal or "SIGTERM"
                return True
            return False
        return self.signal is not None


def stop_after(preempt: Preemption, done: int, end: int, saved: bool, save, saver) -> bool:
    """Whether the loop stops after step ``done`` (preempted before the end); if so, that step's
    checkpoint is written (``save(done)`` unless ``saved`` already) and waited for."""
    if not (preempt.reached(done) and done < end):
        return False
    preempt.saving = True
    try:
        if not saved:
            save(done)
        saver.wait()
    finally:
        preempt.saving = False
    return True
