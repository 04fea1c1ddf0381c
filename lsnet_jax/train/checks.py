"""What stops a run with a message: a config that cannot run, a diverging run (``Health``)."""

from __future__ import annotations

import math


class ConfigError(ValueError):
    pass


def check_head(num_classes: int, data_classes: int, what: str) -> None:
    """A head must have an output for every label of the data (more is allowed: a head for classes
    to come); one smaller trains to a loss of 0 on nothing, or indexes past its outputs."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"config.num_classes={num_classes!r} must be a positive integer, or 0 for the "
                          f"{data_classes} classes of {what}")
    if num_classes < data_classes:
        raise ConfigError(f"config.num_classes={num_classes} is smaller than the {data_classes} classes of {what}: "
                          f"labels {num_classes} to {data_classes - 1} would have no output. Leave "
                          f"config.num_classes at 0 (the data's count) or give at least {data_classes}")


def first_non_finite(rows: list[dict]) -> dict | None:
    """The first row (``step``, ``loss``) whose loss is not finite, or None."""
    return next((r for r in rows if not math.isfinite(r["loss"])), None)


class Health:
    """Which saved steps are known good, read off the losses.

    The loss of step k+1 is computed from the state saved at step k, before its update, so it
    judges that state whatever the learning rate is now: the state is good when that loss is
    finite and at most ``factor`` times the median of the last ``window`` good losses (a finite
    state can be far gone: parameters of 1e29 give finite losses for a few steps). ``good`` is the
    newest step so judged good, and rotation keeps it (``checkpoints.run.KeepGood``); when a run
    diverges, the checkpoints after it are moved aside so that the same command resumes there."""

    def __init__(self, factor: float, recent: list[float] | None = None, window: int = 50, warmup: int = 10):
        self.factor, self.window, self.warmup = factor, window, warmup
        self.recent = [] if recent is None else recent  # updated in place (the loop saves it)
        self.seen: list[int] = []  # the steps this run saved (or resumed from)
        self.unjudged: list[int] = []  # of those, the ones whose next loss has not been seen
        self.good: int | None = None

    def saved(self, step: int) -> None:
        self.seen.append(step)
        self.unjudged.append(step)

    def suspects(self) -> list[int]:
        """The steps this run saved (or resumed from) after its newest good one."""
        return sorted(s for s in set(self.seen) if self.good is None or s > self.good)

    def healthy(self, loss: float) -> bool:
        if not math.isfinite(loss):
            return False
        if len(self.recent) < self.warmup:
            return True
        return loss <= self.factor * sorted(self.recent)[len(self.recent) // 2]

    def judge(self, rows: list[dict]) -> None:
        """Take the losses of ``rows`` (``step``, ``loss``) in order: each judges the state saved at
        the step before it."""
        for r in rows:
            ok = self.healthy(r["loss"])
            if r["step"] - 1 in self.unjudged:
                self.unjudged.remove(r["step"] - 1)
                if ok:
                    self.good = r["step"] - 1
            if ok:
                self.recent.append(float(r["loss"]))
                del self.recent[:-self.window]
