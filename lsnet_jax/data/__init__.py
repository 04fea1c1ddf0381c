"""ImageNet-style input pipeline: TFDS data sources read through grain (see ``pipeline``).

The pipeline's names are imported on first use, so ``lsnet_jax.data.mix`` and
``lsnet_jax.data.transforms`` (what the model, the training step and the benchmark need) import
without grain and TensorFlow Datasets, as on an accelerator image that has only jax, flax and optax.
"""

from __future__ import annotations

import importlib
from typing import Any

from lsnet_jax.data.mix import mixup_cutmix, smooth_one_hot

_PIPELINE = ("DatasetNotFoundError", "EvalTransform", "Loader", "TrainTransform", "eval_loader", "open_source",
             "to_global", "train_loader")

__all__ = sorted(_PIPELINE + ("mixup_cutmix", "smooth_one_hot"))


def __getattr__(name: str) -> Any:
    if name in _PIPELINE:
        return getattr(importlib.import_module("lsnet_jax.data.pipeline"), name)
    raise AttributeError(f"module 'lsnet_jax.data' has no attribute {name!r}")
