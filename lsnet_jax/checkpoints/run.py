"""Orbax checkpoints of a training run, and weights out of them.

A step's checkpoint holds the state pytree (``state``) and, as JSON (``data``), the data
iterator's state and the loop's running figures (``loop``).

``DIR/checkpoints`` keeps the last ``keep`` steps, written asynchronously; ``DIR/best`` keeps the
step with the best evaluation accuracy. ``restore_latest`` walks back from the newest step: a
checkpoint that fails to restore (partial, truncated, corrupt) is moved aside (``STEP.corrupt``,
reported in one line) and the previous one is tried, so the run saves that step again when it gets
there. Orbax writes into a temporary directory and renames it when complete, so a run killed while
saving leaves no step that looks complete. ``Saver`` turns a save that fails (a full disk,
permissions), in the foreground or in Orbax's background thread, into one ``CheckpointSaveError``
that names the step, the directory and its free space; the previous checkpoint stays intact.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from lsnet_jax.checkpoints.state import str_path
from lsnet_jax.checkpoints.weights import check_output, existing_ancestor, save_weights

log = logging.getLogger(__name__)


def _best_fn(metric: str) -> Callable[[dict], float]:
    """The saved metrics' value of ``metric`` (a best directory written before the one training loop
    named classification's ``test_acc1`` ``acc1``)."""
    return lambda m: m[metric] if metric in m else m["acc1"]


class KeepGood:
    """An Orbax preservation policy: the newest ``keep`` steps, and ``good`` (set by the training
    loop: the newest step known good) however many newer ones were saved since."""

    def __init__(self, keep: int):
        self.latest, self.good = ocp.checkpoint_managers.LatestN(keep), None

    def should_preserve(self, checkpoints, *, context) -> list[bool]:
        latest = self.latest.should_preserve(checkpoints, context=context)
        return [bool(k) or c.step == self.good for k, c in zip(latest, checkpoints)]


def make_manager(directory: str | os.PathLike, keep: int, async_save: bool = True,
                 best: str | None = None, good: KeepGood | None = None) -> ocp.CheckpointManager:
    """``DIR/checkpoints`` keeping ``keep`` steps (with ``good``, also its ``good`` step); with ``best``
    (a metric name), a directory that keeps the one step where that metric was highest."""
    rotation = dict(preservation_policy=good) if good is not None else dict(max_to_keep=1 if best else keep)
    opts = ocp.CheckpointManagerOptions(
        **rotation,
        enable_async_checkpointing=async_save,
        best_fn=_best_fn(best) if best else None, best_mode="max",
        create=True, cleanup_tmp_directories=True)  # a save killed midway leaves STEP.orbax-checkpoint-tmp
    return ocp.CheckpointManager(os.path.abspath(directory), options=opts, item_names=("state", "data"))


# One caller of Orbax's save and wait at a time in a process. Each Saver calls Orbax from its own
# thread, and a run has two (DIR/checkpoints and DIR/best, both saved at an epoch's end): called
# from both threads at once, an asynchronous save once never started its writes (its futures
# "completed 0/4" after Orbax's 300 s timeout, a CI run of test_train's preemption test). The
# writes themselves still run in Orbax's background threads, as before.
_ORBAX_CALLS = threading.RLock()


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written; the message says where, why, and what to do."""

    def __init__(self, step: int, directory: str | os.PathLike, reason: str, resume_dir: str | os.PathLike,
                 label: str = "checkpoint"):
        free = _free_bytes(directory)
        newest = max((s for s in complete_steps(resume_dir) if s != step), default=None)
        kept = (f"the checkpoint at step {newest} is intact in {resume_dir} and the same command resumes from it"
                if newest is not None else f"no complete checkpoint is in {resume_dir}: the same command starts "
                                           f"from the beginning")
        super().__init__(f"could not save the {label} at step {step} in {directory} ({reason}); "
                         f"{free / 2**30:.2f} GiB free there. Free space (or fix the permissions) or start "
                         f"elsewhere with --workdir; {kept}.")
        self.step = step


def complete_steps(directory: str | os.PathLike) -> list[int]:
    """The steps whose checkpoint Orbax finalised in ``directory`` (one being written, or whose
    write failed, is still under a temporary name)."""
    d = Path(directory)
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and p.is_dir()) if d.is_dir() else []


def _free_bytes(directory: str | os.PathLike) -> int:
    return shutil.disk_usage(existing_ancestor(directory)).free


def _first_line(e: BaseException) -> str:
    """The reason for a failure in one line; for TensorStore's long write errors, the OS error."""
    text = str(e).strip().splitlines()
    line = text[0] if text else ""
    os_error = re.search(r"\[os_error_code='?(\d+)'?\]", line)
    if os_error:
        code = int(os_error.group(1))
        return f"{os.strerror(code)} (errno {code})"
    return f"{type(e).__name__}: {line if len(line) <= 400 else line[:200] + ' ... ' + line[-150:]}"


def tree_bytes(tree: Any) -> int:
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


class Saver:
    """Saves steps through ``manager`` without holding up training, and turns a failed save into
    one ``CheckpointSaveError`` raised at that save (not as Orbax's background tracebacks).

    ``save`` checks the free space against the state's size, snapshots the state on its devices (a
    copy the next step's donation cannot touch) and returns: one process hands the snapshot to a
    thread that calls Orbax (which waits for the previous write, copies to the host and writes in
    the background). Several processes call Orbax in the loop's thread, because its synchronous
    part must run in the same order as the steps' collectives on every process. A failure in the
    background is found by ``poll``, which the loop calls every step at the cost of a flag read.
    A save asked for while the thread is still handing the previous one to Orbax waits for it, so
    at most two snapshots exist."""

    def __init__(self, manager: ocp.CheckpointManager, background: bool | None = None, label: str = "checkpoint",
                 resume_dir: str | os.PathLike | None = None):
        """``label``: what a failure names (``"best checkpoint"``); ``resume_dir``: where the run
        resumes from, which a failure names the newest complete step of (default: this one's)."""
        self.manager = manager
        self.label, self.resume_dir = label, resume_dir or manager.directory
        self.previous: int | None = manager.latest_step()  # the newest complete checkpoint
        self.writing: int | None = None  # the step Orbax may be writing in the background
        self._job: Future | None = None  # the thread's call of Orbax for ``self._job_step``
        self._job_step: int | None = None
        background = jax.process_count() == 1 if background is None else background
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="checkpoint") if background else None

    def save(self, step: int, state: Any, data_state: dict | None, metrics: dict | None = None) -> None:
        """``data_state``: JSON-able host state that resumes with the step (the data iterator's)."""
        self._collect()
        need, free = tree_bytes(state), _free_bytes(self.manager.directory)
        if free < need:
            raise CheckpointSaveError(step, self.manager.directory, f"it needs {need / 2**30:.2f} GiB",
                                      self.resume_dir, self.label)
        args = {"state": ocp.args.StandardSave(_snapshot(state) if self._pool else state)}
        if data_state is not None:
            args["data"] = ocp.args.JsonSave(data_state)
        prev, self.writing = self.writing, None
        if self._pool is None:
            self._write(step, prev, ocp.args.Composite(**args), metrics)
            self.writing = step
        else:
            self._job = self._pool.submit(self._write, step, prev, ocp.args.Composite(**args), metrics)
            self._job_step = step

    def _write(self, step: int, prev: int | None, args: ocp.args.Composite, metrics: dict | None) -> None:
        with _ORBAX_CALLS:
            if prev is not None:  # a failure of the previous write is that step's, not this one's
                self._finish(prev)
            try:
                self.manager.save(step, args=args, metrics=metrics)
            except Exception as e:
                raise CheckpointSaveError(step, self.manager.directory, _first_line(e), self.resume_dir,
                                          self.label) from None

    def _finish(self, step: int) -> None:
        """Wait for Orbax's write of ``step``; raise if it failed."""
        try:
            with _ORBAX_CALLS:
                self.manager.wait_until_finished()
        except Exception as e:
            raise CheckpointSaveError(step, self.manager.directory, _first_line(e), self.resume_dir,
                                          self.label) from None
        if not (Path(self.manager.directory) / str(step)).is_dir():
            raise CheckpointSaveError(step, self.manager.directory, "Orbax did not finalise it", self.resume_dir,
                                      self.label)
        self.previous = step

    def _collect(self) -> None:
        """Wait for the thread's call of Orbax (not for the write it starts); raise its failure."""
        if self._job is None:
            return
        job, self._job = self._job, None
        job.result()
        self.writing = self._job_step

    def poll(self) -> None:
        """Raise if a save has failed; returns at once while one is in progress."""
        if self._job is not None:
            if not self._job.done():
                return
            self._collect()
        if self.writing is not None and not self.manager.is_saving_in_progress():
            self.wait()

    def wait(self) -> None:
        """Wait until every save asked for is written; raise if one failed."""
        self._collect()
        if self.writing is not None:
            step, self.writing = self.writing, None
            self._finish(step)

    def close(self) -> None:
        """Let the saves in progress finish (their failures were raised by ``save`` / ``poll`` /
        ``wait`` already, or the run is ending on another error)."""
        with contextlib.suppress(Exception):
            self.wait()
        if self._pool is not None:
            self._pool.shutdown()
        with contextlib.suppress(Exception):
            self.manager.wait_until_finished()


@jax.jit
def _snapshot(tree: Any) -> Any:
    """A copy of ``tree`` in new buffers on the same devices (one dispatch for all leaves)."""
    return jax.tree.map(jnp.copy, tree)


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_state: dict | None,
         metrics: dict | None = None) -> None:
    """One save, waited for (tests, tools); the training loops use a ``Saver``."""
    saver = Saver(manager, background=False)
    saver.save(step, state, data_state, metrics)
    saver.wait()


def _from_orbax(tb) -> bool:
    while tb is not None:
        if f"{os.sep}orbax{os.sep}" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


class _DropOrbaxErrors(logging.Filter):
    """Orbax logs each failed write or read with several tracebacks (thousands of lines for one
    full disk), and asyncio reports its failed futures again when they are collected; the callers
    here raise the failure as one line, so these records are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        if f"{os.sep}orbax{os.sep}" in record.pathname:
            return False
        return not (record.exc_info and _from_orbax(record.exc_info[2]))


def _closed_loop(exc: BaseException | None) -> bool:
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


def _quiet_threads(previous):
    def hook(args):  # Orbax's background threads die with the write they ran ("Event loop is closed")
        if not (_from_orbax(args.exc_traceback) or _closed_loop(args.exc_value)):
            previous(args)
    return hook


def _quiet_unraisable(previous):
    def hook(args):  # the same, reported by TensorStore's threads as unraisable
        if not _closed_loop(args.exc_value):
            previous(args)
    return hook


def _quiet_excepthook(previous):
    def hook(kind, value, tb):  # TensorStore's callbacks into Orbax's closed event loop, once per chunk
        if not _closed_loop(value):
            previous(kind, value, tb)
    return hook


def _install_quiet() -> Callable[[], None]:
    """Install the filters and hooks; returns what puts the previous ones back."""
    f, loggers = _DropOrbaxErrors(), [logging.getLogger(n) for n in ("absl", "asyncio")]
    previous = threading.excepthook, sys.excepthook, sys.unraisablehook
    for logger in loggers:
        logger.addFilter(f)
    threading.excepthook, sys.excepthook, sys.unraisablehook = (
        _quiet_threads(previous[0]), _quiet_excepthook(previous[1]), _quiet_unraisable(previous[2]))

    def restore() -> None:
        for logger in loggers:
            logger.removeFilter(f)
        threading.excepthook, sys.excepthook, sys.unraisablehook = previous
    return restore


@contextlib.contextmanager
def quiet_orbax_errors() -> Iterator[None]:
    """Drop Orbax's error records and its background threads' tracebacks while inside."""
    restore = _install_quiet()
    try:
        yield
    finally:
        restore()


def install_quiet_orbax_errors() -> None:
    """The same for the rest of the process (command-line tools: asyncio reports failed futures
    when they are collected, possibly after the run has returned)."""
    _install_quiet()


def move_aside(path: Path, why: str = "corrupt") -> Path:
    """Rename ``path`` to ``path.corrupt`` (``.corrupt1``, ... if taken; or another ``why``); returns
    the new name."""
    target, i = path.with_name(f"{path.name}.{why}"), 0
    while target.exists():
        i += 1
        target = path.with_name(f"{path.name}.{why}{i}")
    os.rename(path, target)
    return target


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any) -> tuple[int, Any, dict | None] | None:
    """(step, state, data iterator state) of the newest checkpoint that restores, or None. Each
    newer one that does not restore is moved aside to ``STEP.corrupt`` (by the first process),
    with one line saying why, so that the run writes that step again."""
    moved = False
    try:
        with quiet_orbax_errors():
            for step in sorted(manager.all_steps(), reverse=True):
                try:
                    out = manager.restore(step, args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
                except Exception as e:  # a truncated or corrupt step: move it aside, try the previous one
                    path = Path(manager.directory) / str(step)
                    where = "left in place"
                    if jax.process_index() == 0 and path.is_dir():
                        where = f"moved aside to {move_aside(path).name}"
                        moved = True
                    log.warning("checkpoint at step %d in %s could not be restored (%s); %s; trying the previous "
                                "one", step, manager.directory, _first_line(e), where)
                    continue
                return step, out["state"], out.get("data")
        return None
    finally:
        if moved:
            manager.reload()


def _flatten(tree, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out |= _flatten(v, key) if isinstance(v, dict) else {key: np.asarray(v)}
    return out


# what a training run keeps in its work directory: no output of another command may replace them
RUN_ENTRIES = ("run.json", "run.lock", "checkpoints", "best", "log.txt", "steps.jsonl", "curves.png", "tensorboard")


def export_weights(workdir: str | os.PathLike, out: str | os.PathLike, ema: bool = False, best: bool = False,
                   step: int | None = None, overwrite: bool = False) -> Path:
    """Write the model (or its EMA) of the newest checkpoint in ``workdir/checkpoints`` (or of
    ``workdir/best``) as a weights directory that ``create_model(name, pretrained=out)``, the
    converter's way back to PyTorch and a distillation teacher read. ``out`` may lie in the work
    directory (``DIR/weights``) but never be, contain or lie inside what the run keeps there."""
    workdir = Path(workdir).absolute()
    run_entries = [workdir / e for e in RUN_ENTRIES]
    check_output(out, overwrite, run_entries)
    run_file = workdir / "run.json"
    if not run_file.exists():
        raise FileNotFoundError(f"{run_file} not found: is {workdir} a train.py work directory?")
    run = json.loads(run_file.read_text())
    ckpt_dir = workdir / ("best" if best else "checkpoints")
    with ocp.CheckpointManager(ckpt_dir, item_names=("state", "data")) as manager, quiet_orbax_errors():
        steps = sorted(manager.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {ckpt_dir}")
        if step is not None and step not in steps:
            raise FileNotFoundError(f"no checkpoint at step {step} in {ckpt_dir}; it holds steps {sorted(steps)}")
        state = None
        for s in [step] if step is not None else steps:  # the newest that restores
            try:
                state = manager.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
            except Exception as e:
                log.warning("checkpoint at step %d in %s could not be restored (%s)%s", s, ckpt_dir, _first_line(e),
                            "" if step is not None else "; trying the previous one")
                continue
            step = s
            break
        if state is None:
            raise ValueError(f"no checkpoint in {ckpt_dir} could be restored (tried steps "
                             f"{[step] if step is not None else sorted(steps)})")
    params, stats = (state["ema_params"], state["ema_stats"]) if ema else (state["params"], state["batch_stats"])
    flat = {str_path(k): v for k, v in (_flatten(params) | _flatten(stats)).items()}
    aug = run.get("config", {}).get("aug", {})
    meta = dict(model=run["model"], num_classes=run["num_classes"], img_size=run["img_size"],
                source=f"{workdir} step {step}{' (best)' if best else ''}", ema=ema)
    # the eval transform it was trained for (segmentation: the test resize)
    meta |= {k: aug[k] for k in ("mean", "std", "crop_pct", "test_scale", "size_divisor") if k in aug}
    if run.get("task"):
        meta["task"] = run["task"]
    if run.get("model_config"):  # a changed architecture (config.depth): create_model rebuilds it
        meta["model_config"] = run["model_config"]
    if len(run.get("class_names") or ()) == run["num_classes"]:
        meta["class_names"] = run["class_names"]
    return save_weights(out, flat, meta, overwrite=overwrite, inputs=run_entries)
