"""What stops a run with a message: a config that cannot run, a non-finite loss."""

from __future__ import annotations

import math
from typing import Any


class ConfigError(ValueError):
    pass


def check_finite(rows: list[dict], steps_per_epoch: int, checkpoint_dir: Any) -> None:
    """Stop on the first non-finite loss, naming its step."""
    bad = next((r for r in rows if not math.isfinite(r["loss"])), None)
    if bad is not None:
        raise FloatingPointError(
            f"non-finite loss {bad['loss']} at step {bad['step']} (epoch {(bad['step'] - 1) // steps_per_epoch}); "
            f"lower config.lr or check the data. Checkpoints up to the last good step are in {checkpoint_dir}")
