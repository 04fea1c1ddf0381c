"""A work directory belongs to one run.

``run.json`` records the run's fingerprint: the task, the model, its class count, image size and
training data. A restart whose config has another fingerprint stops before it touches anything
(no checkpoint restored or moved, no log truncated, ``run.json`` left as it is), saying what
differs, how to start elsewhere and how to fine-tune from the old run instead. ``run.json`` is
written by a rename, so a kill mid-write leaves the old one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lsnet_jax.checkpoints.weights import unwritable
from lsnet_jax.train.checks import ConfigError

RUN_FILE = "run.json"
FINGERPRINT_KEYS = ("task", "model", "arch", "num_classes", "img_size", "data")


def fingerprint(task: str, model: str, num_classes: int, img_size: int, data_name: str,
                train_split: str, arch: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a run's checkpoints depend on: another value of any of these cannot resume them.
    ``arch``: the model settings changed from the variant's (``config.architecture``), if any."""
    fp = {"task": task, "model": model, "num_classes": int(num_classes), "img_size": int(img_size),
          "data": f"{data_name}/{train_split}"}
    if arch:
        fp["arch"] = json.loads(json.dumps(arch))  # as run.json holds it (tuples as lists)
    return fp


def recorded_fingerprint(run: dict[str, Any]) -> dict[str, Any]:
    """The fingerprint a ``run.json`` records (rebuilt from its fields if it predates fingerprints)."""
    if "fingerprint" in run:
        return run["fingerprint"]
    data = run.get("config", {}).get("data", {})
    return fingerprint(run.get("task", "classification"), run["model"], run["num_classes"], run["img_size"],
                       data.get("name", "?"), data.get("train_split", "train"))


def _has_run(workdir: Path) -> bool:
    ckpt = workdir / "checkpoints"
    return ckpt.is_dir() and any(ckpt.iterdir())


def check(workdir: str | os.PathLike, fp: dict[str, Any]) -> None:
    """Raise ``ConfigError`` if ``workdir`` holds a run of another fingerprint (nothing is changed)."""
    workdir = Path(workdir)
    why = unwritable(workdir / RUN_FILE)
    if why:
        raise ConfigError(f"cannot write the work directory {workdir}: {why}; give a writable --workdir")
    run_file = workdir / RUN_FILE
    if not run_file.exists():
        if _has_run(workdir):
            raise ConfigError(f"{workdir} holds checkpoints but no {RUN_FILE}, so it cannot be told whether they "
                              f"belong to this run; start elsewhere with --workdir, or restore {run_file}")
        return
    try:
        old = recorded_fingerprint(json.loads(run_file.read_text()))
    except (ValueError, KeyError) as e:
        raise ConfigError(f"{run_file} is unreadable ({type(e).__name__}: {e}); start elsewhere with --workdir, "
                          f"or repair it") from None
    diff = [f"{k} {old.get(k)!r} -> {fp.get(k)!r}" for k in FINGERPRINT_KEYS if old.get(k) != fp.get(k)]
    if diff:
        raise ConfigError(
            f"{workdir} holds another run ({old['model']}, {old['num_classes']} classes, {old['img_size']} px, "
            f"{old['data']}); this config differs: {'; '.join(diff)}. Nothing was changed. Start a new run with "
            f"--workdir NEW_DIR, or fine-tune from that run: lsnet-export-weights --workdir {workdir} --out W, "
            f"then --workdir NEW_DIR --config.init_weights=W.")


def write_run_file(workdir: str | os.PathLike, fp: dict[str, Any], info: dict[str, Any]) -> None:
    """``run.json``: the fingerprint and what ``lsnet-export-weights`` needs, written by a rename."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = workdir / f".{RUN_FILE}.tmp"
    tmp.write_text(json.dumps({**info, "fingerprint": fp}, indent=2, default=str) + "\n")
    os.replace(tmp, workdir / RUN_FILE)
