"""One way from a weights directory to a model ready for inference, with the eval transform its
weights were trained for: what ``lsnet-eval``, ``lsnet-predict`` and ``lsnet-export`` share."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from flax import nnx

from lsnet_jax.checkpoints.weights import read_meta
from lsnet_jax.models import hub
from lsnet_jax.models.lsnet import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from lsnet_jax.models.registry import create_model


@dataclasses.dataclass(frozen=True)
class InferenceSpec:
    """What inference with some weights needs to know, read from their ``config.json`` (or given)."""

    name: str
    weights: str | os.PathLike | None
    img_size: int
    crop_pct: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    meta: dict[str, Any]

    def create(self, deploy: bool = False, impl: str = "auto") -> nnx.Module:
        """The model, with the weights, in eval mode (folded with ``deploy``)."""
        return create_model(self.name, pretrained=self.weights, img_size=self.img_size, deploy=deploy, impl=impl)


def inference_spec(weights: str | os.PathLike | None, model: str | None = None, img_size: int | None = None,
                   crop_pct: float | None = None, allow_detector: bool = False) -> InferenceSpec:
    """Model name, input size, crop_pct and mean/std: as given, else from the weights' config.json,
    else the ImageNet defaults. Raises ``ValueError`` when nothing names the model."""
    if weights is not None and not Path(weights).exists() and str(weights) in hub.PUBLISHED:
        weights = hub.resolve(True, str(weights))  # a published model's name
    weights = hub.resolve(weights)
    if weights is not None and not Path(weights).exists():
        raise ValueError(f"no weights at {weights}: give a directory written by lsnet-convert or "
                         f"lsnet-export-weights, a .safetensors file, a published model's name "
                         f"({', '.join(sorted(hub.PUBLISHED))}) or hf-hub:OWNER/REPO[/FILE]")
    meta = read_meta(weights)
    name = model or meta.get("model")
    if name is None:
        raise ValueError(f"{weights} does not name its model (no config.json); give --model (e.g. lsnet_t)")
    if str(name).endswith(("_retinanet", "_maskrcnn")) and not allow_detector:
        raise ValueError(f"{name} is a detector: lsnet-export takes classifiers and segmenters so far "
                         f"(lsnet-eval --task detection evaluates it, lsnet-predict draws its boxes); detect with lsnet_jax.inference.detection.detect (the model's raw "
                         f"outputs through the official post-processing)")
    return InferenceSpec(name=name, weights=weights, img_size=img_size or int(meta.get("img_size", 224)),
                         crop_pct=crop_pct or float(meta.get("crop_pct", 0.875)),
                         mean=tuple(meta.get("mean", IMAGENET_DEFAULT_MEAN)),
                         std=tuple(meta.get("std", IMAGENET_DEFAULT_STD)), meta=meta)


def num_classes(model: nnx.Module) -> int:
    """The class count of a classifier's head."""
    return int(model.head.l.kernel.shape[-1])
