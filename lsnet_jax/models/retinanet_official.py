"""The official LSNet RetinaNet checkpoint names (MMDetection's ``backbone.*``, ``neck.*``,
``bbox_head.*``), both ways, and variant detection. Pure numpy, no torch.

The backbone's keys are the segmentation backbone's (``lsnet_jax.models.semfpn_official``:
classifier names under ``backbone.``, 14x14 attention tables); the neck's and head's convolutions
are MMCV ``ConvModule``s (``.conv.``), ``retina_cls`` / ``retina_reg`` plain ``nn.Conv2d``s.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np

from lsnet_jax.checkpoints.state import CheckpointMismatchError, JaxPath, state_shapes
from lsnet_jax.models import lsnet_official
from lsnet_jax.models.layers import abstract
from lsnet_jax.models.lsnet_official import LEAF_TO_TORCH
from lsnet_jax.models.retinanet import NUM_ANCHORS, VARIANTS, RetinaNet, retinanet_config

Flat = dict[JaxPath, np.ndarray]


def torch_key(path: JaxPath) -> str:
    """The official key of the detector's JAX leaf at ``path``."""
    p = [str(s) for s in path]
    if p[0] == "backbone":
        return "backbone." + lsnet_official.torch_key(tuple(path[1:]))
    if p[-1] not in LEAF_TO_TORCH:
        raise KeyError(f"no official name for {path} (deploy-form models have none: convert the training form)")
    leaf = LEAF_TO_TORCH[p[-1]]
    if p[0] == "neck" or (p[0] == "bbox_head" and p[1] in ("cls_convs", "reg_convs")):
        return ".".join(p[:-1] + [leaf])  # {neck.lateral_convs,neck.fpn_convs,bbox_head.*_convs}.i.conv.x
    if p[0] == "bbox_head" and p[1] in ("retina_cls", "retina_reg"):
        return f"bbox_head.{p[1]}.{leaf}"
    raise KeyError(f"no official name for {path}")


def torch_to_jax(state_dict: Mapping[str, np.ndarray], jax_shapes: Mapping[JaxPath, tuple[int, ...]],
                 what: str = "checkpoint") -> Flat:
    """An official RetinaNet state dict onto the JAX leaves, every key and shape checked."""
    return lsnet_official.torch_to_jax(state_dict, jax_shapes, what, key_fn=torch_key)


def jax_to_torch(params: Mapping[JaxPath, np.ndarray]) -> dict[str, np.ndarray]:
    """The official state dict (buffers included) of the JAX training-form leaves."""
    return lsnet_official.jax_to_torch(params, key_fn=torch_key)


def is_retinanet(state_dict: Mapping[str, np.ndarray]) -> bool:
    """Whether a state dict is an MMDetection RetinaNet's (``bbox_head.retina_cls.*`` keys)."""
    return any(k.startswith("bbox_head.retina_cls.") for k in state_dict)


@functools.lru_cache(maxsize=16)
def expected_jax_shapes(name: str, num_classes: int = 80) -> dict[JaxPath, tuple]:
    """Leaf shapes of the training-form detector, without initialising it (cached: detection
    tries every variant). Do not modify the returned dict."""
    return state_shapes(abstract(functools.partial(RetinaNet, retinanet_config(name, num_classes))))


def num_classes_of(state_dict: Mapping[str, np.ndarray]) -> int:
    """The class count of a RetinaNet state dict: ``retina_cls`` has 9 anchors x classes outputs."""
    if "bbox_head.retina_cls.weight" not in state_dict:
        raise CheckpointMismatchError("checkpoint", ["bbox_head.retina_cls.weight"], [], [],
                                      hint="A RetinaNet checkpoint has a bbox_head.retina_cls classifier.")
    out = int(np.shape(state_dict["bbox_head.retina_cls.weight"])[0])
    if out % NUM_ANCHORS:
        raise CheckpointMismatchError("checkpoint", [], [], [("bbox_head.retina_cls.weight", (out,), (NUM_ANCHORS,))],
                                      hint=f"retina_cls has {out} outputs, not a multiple of the {NUM_ANCHORS} anchors")
    return out // NUM_ANCHORS


def detect_variant(state_dict: Mapping[str, np.ndarray]) -> tuple[str, int]:
    """(model name, num_classes) of an official RetinaNet state dict, from its keys and shapes."""
    num_classes = num_classes_of(state_dict)
    name = lsnet_official.first_fit(state_dict, list(VARIANTS), lambda n: expected_jax_shapes(n, num_classes),
                                    torch_key, "No LSNet RetinaNet fits these keys")
    return name, num_classes
