"""What a run writes for people: the official JSON-lines ``log.txt``, per-step losses, TensorBoard
scalars (tensorboardX: a maintained writer without TensorFlow), a progress line with images/s and
ETA, and ``curves.png`` next to the log."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger("lsnet_jax.train")


def read_jsonl(path: Path, step: bool = False) -> list[dict]:
    """The JSON objects of a JSON-lines file, one a line; ``[]`` if there is no file. A line that is
    not a whole JSON object (torn by a kill or a full disk mid-write) is dropped with a warning, and
    so, with ``step``, is an object without an integer ``step`` (``{}``: not a row of a run's log)."""
    if not path.exists():
        return []
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            log.warning("%s line %d is not a whole JSON object (a write cut short?); dropped: %.80s", path, i, line)
            continue
        if step and (not isinstance(row.get("step"), int) or isinstance(row.get("step"), bool)):
            log.warning("%s line %d is not a row of a run's log (no integer 'step'); dropped: %.80s", path, i, line)
            continue
        rows.append(row)
    return rows


def _fmt_time(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """Periodic progress lines: step, epoch, loss, lr, images/s (since the last line) and ETA.

    The ETA is from the rate over the whole run so far, which is steady, not over the last window,
    which jumps with every evaluation and epoch start: its clock starts at the first line (so that
    compilation is left out), and the time ``exclude`` is told of (evaluations) is left out too."""

    def __init__(self, total_steps: int, steps_per_epoch: int, global_batch: int, start_step: int,
                 clock=time.monotonic):
        self.total, self.spe, self.batch = total_steps, steps_per_epoch, global_batch
        self._clock = clock
        self._t, self._step = clock(), start_step
        self._window_excluded = 0.0
        self._t0: float | None = None  # the first line: where the ETA's clock starts
        self._s0, self._excluded = start_step, 0.0

    def exclude(self, seconds: float) -> None:
        """Time that is not training (an evaluation): left out of the rates."""
        self._window_excluded += seconds
        self._excluded += seconds

    def line(self, step: int, loss: float, lr: float, skipped: int) -> str:
        now = self._clock()
        rate = (step - self._step) * self.batch / max(now - self._t - self._window_excluded, 1e-9)
        if self._t0 is None:  # this window holds the compilation: no ETA from it
            self._t0, self._s0, self._excluded = now, step, 0.0
            eta = "-:--:--"
        else:
            mean_rate = (step - self._s0) * self.batch / max(now - self._t0 - self._excluded, 1e-9)
            eta = _fmt_time((self.total - step) * self.batch / max(mean_rate, 1e-9))
        self._t, self._step, self._window_excluded = now, step, 0.0
        epoch, in_epoch = divmod(step - 1, self.spe)
        in_epoch += 1
        extra = f" skipped {skipped}" if skipped else ""
        return (f"epoch {epoch} step {in_epoch}/{self.spe} ({step}/{self.total}) loss {loss:.4f} "
                f"lr {lr:.3e} {rate:.1f} img/s ETA {eta}{extra}")


@dataclasses.dataclass(frozen=True)
class Panel:
    """One panel of ``curves.png``: ``lines`` (row key, legend label or None, matplotlib style) of
    the rows of ``source`` (``"log"``: log.txt, one row an evaluation; ``"steps"``: steps.jsonl)
    against their ``x`` key."""

    title: str
    source: str
    x: str
    xlabel: str
    lines: tuple[tuple[str, str | None, str], ...]


class Reporter:
    """Writes ``log.txt`` (one JSON object per epoch, the official field names), ``steps.jsonl``
    (every step's loss and lr), TensorBoard events and ``curves.png`` into the work directory."""

    def __init__(self, workdir: str | os.PathLike, resume_step: int, tensorboard: bool = True, write: bool = True,
                 panels: tuple[Panel, ...] = ()):
        """``write=False`` (every process but the first of a multi-host run): read-only, no files
        touched. ``panels``: ``curves.png``'s panels after the train loss (the task's)."""
        self.dir = Path(workdir)
        self.panels = tuple(panels)
        self.log_path, self.steps_path = self.dir / "log.txt", self.dir / "steps.jsonl"
        self.write = write
        self._tb = None
        if not write:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self._truncate(self.steps_path, lambda r: r["step"] <= resume_step)
        self._truncate(self.log_path, lambda r: r["step"] <= resume_step)
        if tensorboard:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(str(self.dir / "tensorboard"), purge_step=resume_step + 1)

    @staticmethod
    def _truncate(path: Path, keep) -> None:
        """Drop lines a killed run wrote after the checkpoint it resumes from, and torn lines;
        rewritten by a rename, so a kill now leaves the old file."""
        if not path.exists():
            return
        rows = read_jsonl(path, step=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows if keep(r)))
        os.replace(tmp, path)

    def steps(self, rows: list[dict]) -> None:
        if not self.write:
            return
        with self.steps_path.open("a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        if self._tb is not None:
            for r in rows:
                for k, v in r.items():
                    if k != "step":
                        self._tb.add_scalar(f"train/{k}", v, r["step"])

    def train(self, row: dict) -> None:
        """A train row of ``log.txt`` (the official logs': means over the logging interval)."""
        if not self.write:
            return
        with self.log_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def epoch(self, stats: dict, step: int) -> None:
        if not self.write:
            return
        with self.log_path.open("a") as f:
            f.write(json.dumps(stats) + "\n")
        if self._tb is not None:
            for k, v in stats.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "n_parameters"):
                    self._tb.add_scalar(k.replace("_", "/", 1), v, step)
            self._tb.flush()
        self.plot()

    def plot(self) -> None:
        """``curves.png``: the training loss per step, then the task's panels (``Panel``)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = {"log": read_jsonl(self.log_path, step=True), "steps": read_jsonl(self.steps_path, step=True)}
        fig, ax = plt.subplots(1, 1 + len(self.panels), figsize=(5 * (1 + len(self.panels)), 4), squeeze=False)
        ax = ax[0]
        steps = rows["steps"]
        if steps:
            ax[0].plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.7)
        ax[0].set(title="train loss", xlabel="step")
        for a, panel in zip(ax[1:], self.panels):
            labelled = False
            for key, label, style in panel.lines:
                src = [r for r in rows[panel.source] if key in r]  # log.txt: evaluation rows (not train rows)
                if src:
                    a.plot([r[panel.x] for r in src], [r[key] for r in src], style, label=label)
                    labelled |= label is not None
            a.set(title=panel.title, xlabel=panel.xlabel)
            if labelled:
                a.legend()
        for a in ax:
            a.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(self.dir / "curves.png", dpi=90)
        plt.close(fig)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
