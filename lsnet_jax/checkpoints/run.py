"""Orbax checkpoints of a training run, and weights out of them.

A step's checkpoint holds the state pytree (``state``) and, as JSON (``data``), the data
iterator's state and the loop's running figures (``loop``).

``DIR/checkpoints`` keeps the last ``keep`` steps, written asynchronously; ``DIR/best`` keeps the
step with the best evaluation accuracy. ``restore_latest`` walks back from the newest step: a
checkpoint that fails to restore (partial, truncated, corrupt) is reported and the previous one is
tried. Orbax writes into a temporary directory and renames it when complete, so a run killed while
saving leaves no step that looks complete.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import orbax.checkpoint as ocp

from lsnet_jax.checkpoints.state import str_path
from lsnet_jax.checkpoints.weights import save_weights

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
    """``data_state``: JSON-able host state that resumes with the step (the data iterator's)."""
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


def _flatten(tree, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out |= _flatten(v, key) if isinstance(v, dict) else {key: np.asarray(v)}
    return out


def export_weights(workdir: str | os.PathLike, out: str | os.PathLike, ema: bool = False, best: bool = False,
                   step: int | None = None) -> Path:
    """Write the model (or its EMA) of the newest checkpoint in ``workdir/checkpoints`` (or of
    ``workdir/best``) as a weights directory that ``create_model(name, pretrained=out)``, the
    converter's way back to PyTorch and a distillation teacher read."""
    workdir = Path(workdir).absolute()
    run_file = workdir / "run.json"
    if not run_file.exists():
        raise FileNotFoundError(f"{run_file} not found: is {workdir} a train.py work directory?")
    run = json.loads(run_file.read_text())
    ckpt_dir = workdir / ("best" if best else "checkpoints")
    with ocp.CheckpointManager(ckpt_dir, item_names=("state", "data")) as manager:
        steps = manager.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {ckpt_dir}")
        step = max(steps) if step is None else step
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    params, stats = (state["ema_params"], state["ema_stats"]) if ema else (state["params"], state["batch_stats"])
    flat = {str_path(k): v for k, v in (_flatten(params) | _flatten(stats)).items()}
    aug = run.get("config", {}).get("aug", {})
    meta = dict(model=run["model"], num_classes=run["num_classes"], img_size=run["img_size"],
                source=f"{workdir} step {step}{' (best)' if best else ''}", ema=ema)
    # the eval transform it was trained for (segmentation: the test resize)
    meta |= {k: aug[k] for k in ("mean", "std", "crop_pct", "test_scale", "size_divisor") if k in aug}
    if run.get("task"):
        meta["task"] = run["task"]
    if len(run.get("class_names") or ()) == run["num_classes"]:
        meta["class_names"] = run["class_names"]
    return save_weights(out, flat, meta)
