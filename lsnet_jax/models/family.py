"""What a model family gives ``create_model`` (``lsnet_jax.models.registry``): its names' default
configs, how to build a model from a name, and how to fit a checkpoint's arrays to a model built
with other settings. Each family module defines its ``FAMILY`` beside its model."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping

import numpy as np
from flax import nnx

from lsnet_jax.checkpoints.state import JaxPath, flat_state

log = logging.getLogger("lsnet_jax.models.registry")

Flat = dict[JaxPath, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Family:
    """``build(name, num_classes, img_size, dtype, rngs, **config) -> module`` and
    ``adapt(flat, model, ckpt_classes) -> flat``, which fits a checkpoint's arrays to ``model``;
    ``class_leaf`` is the path of the classifier kernel whose last axis counts the classes
    (divided by ``outputs_per_class``: a detector's classifier has one output per anchor and class)."""

    default_cfgs: Mapping[str, dict]
    build: Callable[..., nnx.Module]
    adapt: Callable[[Flat, nnx.Module, int | None], Flat]
    class_leaf: JaxPath = ("head", "l", "kernel")
    outputs_per_class: int = 1

    def classes_of(self, flat: Flat) -> int | None:
        """The class count of weights of this family (None: no classifier among them)."""
        k = flat.get(self.class_leaf)
        return None if k is None else int(k.shape[-1]) // self.outputs_per_class


def fresh_heads(flat: Flat, model: nnx.Module, ckpt_classes: int | None, classes: int,
                is_head: Callable[[JaxPath], bool], what: str = "head") -> Flat:
    """``flat`` with the leaves ``is_head`` selects taken from ``model``'s fresh initialisation when
    the checkpoint's class count (``ckpt_classes``) is not the model's (``classes``)."""
    if ckpt_classes is None or ckpt_classes == classes:
        return flat
    log.info("new %d-class %s (weights have %d classes)", classes, what, ckpt_classes)
    fresh = {p: a for p, a in flat_state(model).items() if is_head(p)}
    return {p: a for p, a in flat.items() if not is_head(p)} | fresh
