"""Orbax checkpoints of a training run: the state pytree plus the data iterator's state (JSON).

``DIR/checkpoints`` keeps the last ``keep`` steps, written asynchronously; ``DIR/best`` keeps the
step with the best evaluation accuracy. ``restore_latest`` walks back from the newest step: a
checkpoint that fails to restore (partial, truncated, corrupt) is reported and the previous one is
tried. Orbax writes into a temporary directory and renames it when complete, so a run killed while
saving leaves no step that looks complete.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


def make_manager(directory: str | os.PathLike, keep: int, async_save: bool = True,
                 best: bool = False) -> ocp.CheckpointManager:
    opts = ocp.CheckpointManagerOptions(
        max_to_keep=1 if best else keep,
        enable_async_checkpointing=async_save,
        best_fn=(lambda m: m["acc1"]) if best else None, best_mode="max",
        create=True)
    return ocp.CheckpointManager(os.path.abspath(directory), options=opts, item_names=("state", "data"))


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_state: dict | None,
         metrics: dict | None = None) -> None:
    args = {"state": ocp.args.StandardSave(state)}
    if data_state is not None:
        args["data"] = ocp.args.JsonSave(data_state)
    manager.save(step, args=ocp.args.Composite(**args), metrics=metrics)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any) -> tuple[int, Any, dict | None] | None:
    """(step, state, data iterator state) of the newest checkpoint that restores, or None."""
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            out = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        except Exception as e:  # a truncated or corrupt step: report it, fall back to the previous one
            log.warning("checkpoint at step %d in %s could not be restored (%s: %s); trying the previous one",
                        step, manager.directory, type(e).__name__, str(e).splitlines()[0][:300])
            continue
        return step, out["state"], out.get("data")
    return None
