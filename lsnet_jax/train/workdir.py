"""A work directory belongs to one run.

``run.json`` records the run's fingerprint: the task, the model, its class count, image size and
training data. A restart whose config has another fingerprint stops before it touches anything
(no checkpoint restored or moved, no log truncated, ``run.json`` left as it is), saying what
differs, how to start elsewhere and how to fine-tune from the old run instead. ``run.json`` is
written by a rename, so a kill mid-write leaves the old one.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from lsnet_jax.checkpoints.weights import process_alive, unwritable
from lsnet_jax.train.checks import ConfigError

RUN_FILE = "run.json"
FINGERPRINT_KEYS = ("task", "model", "arch", "num_classes", "img_size", "data")
# compared only where the run.json of the run being resumed records them (older ones do not)
RECORDED_KEYS = ("data_version", "data_examples", "batch_size", "seed", "repeats", "bn_group_size", "pad_shapes")


def fingerprint(task: str, model: str, num_classes: int, img_size: int, data_name: str,
                train_split: str, arch: dict[str, Any] | None = None, **order: Any) -> dict[str, Any]:
    """What a run's checkpoints depend on: another value of any of these cannot resume them.
    ``arch``: the model settings changed from the variant's (``config.architecture``), if any;
    ``order``: what the saved data position means (``data_version``, ``data_examples``: the
    prepared dataset; ``batch_size``, ``seed`` and the sampler's settings: which records the
    position's next batches hold). Everything else may change on resume (the learning rate of a
    fine-tune, the epochs, logging, workers) and is recorded in ``run.json``'s history."""
    fp = {"task": task, "model": model, "num_classes": int(num_classes), "img_size": int(img_size),
          "data": f"{data_name}/{train_split}"}
    if arch:
        fp["arch"] = json.loads(json.dumps(arch))  # as run.json holds it (tuples as lists)
    unknown = set(order) - set(RECORDED_KEYS)
    if unknown:
        raise ValueError(f"not fingerprint keys: {sorted(unknown)}")
    return fp | json.loads(json.dumps(order))


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
    keys = [*FINGERPRINT_KEYS, *(k for k in RECORDED_KEYS if k in old)]
    diff = [f"{k} {old.get(k)!r} -> {fp.get(k)!r}" for k in keys if old.get(k) != fp.get(k)]
    if diff:
        raise ConfigError(
            f"{workdir} holds another run ({old['model']}, {old['num_classes']} classes, {old['img_size']} px, "
            f"{old['data']}); this config differs: {'; '.join(diff)}. Nothing was changed. Start a new run with "
            f"--workdir NEW_DIR, or fine-tune from that run: lsnet-export-weights --workdir {workdir} --out W, "
            f"then --workdir NEW_DIR --config.init_weights=W.")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out |= _flat(v, f"{prefix}.{k}" if prefix else str(k))
    return out


def write_run_file(workdir: str | os.PathLike, fp: dict[str, Any], info: dict[str, Any], step: int = 0) -> None:
    """``run.json``: the fingerprint and what ``lsnet-export-weights`` needs, written by a rename.
    Its ``history`` keeps, for every start of the run (``step``: where it resumed), the settings
    that changed since the start before (``config.lr`` of a fine-tune, ``config.epochs``): the
    record of what the checkpoints were trained with is kept, not overwritten."""
    import time

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        old = json.loads((workdir / RUN_FILE).read_text())
    except (OSError, ValueError):
        old = {}
    old = old if isinstance(old, dict) else {}
    old_cfg, new_cfg = _flat(old.get("config", {})), _flat(json.loads(json.dumps(info.get("config", {}), default=str)))
    changes = {k: [old_cfg[k], v] for k, v in new_cfg.items() if k in old_cfg and old_cfg[k] != v}
    changes |= {k: [v, None] for k, v in old_cfg.items() if k not in new_cfg}
    history = list(old.get("history", []))
    history.append({"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "step": int(step)}
                   | ({"changed": changes} if changes else {}))
    tmp = workdir / f".{RUN_FILE}.tmp"
    tmp.write_text(json.dumps({**info, "fingerprint": fp, "history": history}, indent=2, default=str) + "\n")
    os.replace(tmp, workdir / RUN_FILE)


LOCK_FILE = "run.lock"


class WorkdirLocked(ConfigError):
    """Another run is using the work directory."""


class Lock:
    """``DIR/run.lock``, held by the run's first process while it runs: an advisory ``flock`` that
    the system releases when the process dies (so a killed run's lock is stale at once), with
    the holder (pid, host, start time, command) written in it for the message that refuses a
    second run. On a file system without ``flock`` a lock of this host whose process is gone
    is taken over as well."""

    def __init__(self, workdir: str | os.PathLike):
        self.path = Path(workdir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock, or raise ``WorkdirLocked`` naming its holder. Returns a line about a
        stale lock taken over (its holder), or None."""
        import fcntl
        import socket
        import sys
        import time

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        holder = _read_holder(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = False
        except BlockingIOError:
            held = True
        except OSError:  # no flock here (some network file systems): judge by the holder's pid
            held = bool(holder) and (holder.get("host") != socket.gethostname() or process_alive(holder.get("pid")))
        if held:
            os.close(fd)
            raise WorkdirLocked(
                f"{self.path.parent} is in use by another run ({_describe(holder)}); two runs on one work "
                f"directory would overwrite each other's checkpoints and logs. Wait for it to end (or stop "
                f"it), or start this run elsewhere with --workdir NEW_DIR") from None
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "command": " ".join(sys.argv)[:500]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        self._fd = fd
        return f"took over the stale lock of {_describe(holder)}: that run is gone" if holder else None

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)  # released: no holder to name (a killed run's stays, as stale)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def _read_holder(fd: int) -> dict | None:
    """The holder a lock file names (at most 4 KiB read), or None if it is empty or unreadable."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "null")
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return holder if isinstance(holder, dict) else None


def _describe(holder: dict | None) -> str:
    if not holder:
        return "a holder that did not name itself"
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}: "
            f"{holder.get('command', '?')}")

