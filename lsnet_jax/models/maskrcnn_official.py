"""The official LSNet Mask R-CNN checkpoint names (MMDetection's ``backbone.*``, ``neck.*``,
``rpn_head.*``, ``roi_head.{bbox_head,mask_head}.*``), both ways, and variant detection. Pure
numpy, no torch.

The backbone's keys are the segmentation backbone's (``lsnet_jax.models.semfpn_official``); every
other JAX path is its official key with the leaf renamed (``kernel`` -> ``weight``). The two
transposed convs (``neck.extra_trans_convs.0.conv``, ``roi_head.mask_head.upsample``) store their
PyTorch ``(in, out, 2, 2)`` weight as a ``(2, 2, out, in)`` kernel: the same OIHW -> HWIO transpose
as every conv.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np

from lsnet_jax.checkpoints.state import CheckpointMismatchError, JaxPath, state_shapes
from lsnet_jax.models import lsnet_official
from lsnet_jax.models.layers import abstract
from lsnet_jax.models.lsnet_official import LEAF_TO_TORCH
from lsnet_jax.models.maskrcnn import VARIANTS, MaskRCNN, maskrcnn_config

Flat = dict[JaxPath, np.ndarray]
HEADS = ("neck", "rpn_head", "roi_head")


def torch_key(path: JaxPath) -> str:
    """The official key of the detector's JAX leaf at ``path``."""
    p = [str(s) for s in path]
    if p[0] == "backbone":
        return "backbone." + lsnet_official.torch_key(tuple(path[1:]))
    if p[-1] not in LEAF_TO_TORCH:
        raise KeyError(f"no official name for {path} (deploy-form models have none: convert the training form)")
    if p[0] in HEADS:
        return ".".join(p[:-1] + [LEAF_TO_TORCH[p[-1]]])
    raise KeyError(f"no official name for {path}")


def torch_to_jax(state_dict: Mapping[str, np.ndarray], jax_shapes: Mapping[JaxPath, tuple[int, ...]],
                 what: str = "checkpoint") -> Flat:
    """An official Mask R-CNN state dict onto the JAX leaves, every key and shape checked."""
    return lsnet_official.torch_to_jax(state_dict, jax_shapes, what, key_fn=torch_key)


def jax_to_torch(params: Mapping[JaxPath, np.ndarray]) -> dict[str, np.ndarray]:
    """The official state dict (buffers included) of the JAX training-form leaves."""
    return lsnet_official.jax_to_torch(params, key_fn=torch_key)


def is_maskrcnn(state_dict: Mapping[str, np.ndarray]) -> bool:
    """Whether a state dict is an MMDetection two-stage detector's (``rpn_head.*`` and
    ``roi_head.*`` keys)."""
    return any(k.startswith("rpn_head.") for k in state_dict) and any(k.startswith("roi_head.") for k in state_dict)


@functools.lru_cache(maxsize=16)
def expected_jax_shapes(name: str, num_classes: int = 80) -> dict[JaxPath, tuple]:
    """Leaf shapes of the training-form detector, without initialising it (cached). Read only."""
    return state_shapes(abstract(functools.partial(MaskRCNN, maskrcnn_config(name, num_classes))))


def num_classes_of(state_dict: Mapping[str, np.ndarray]) -> int:
    """The class count of a Mask R-CNN state dict: ``fc_cls`` has classes + 1 (background) outputs."""
    key = "roi_head.bbox_head.fc_cls.weight"
    if key not in state_dict:
        raise CheckpointMismatchError("checkpoint", [key], [], [],
                                      hint="A Mask R-CNN checkpoint has a roi_head.bbox_head.fc_cls classifier.")
    return int(np.shape(state_dict[key])[0]) - 1


def detect_variant(state_dict: Mapping[str, np.ndarray]) -> tuple[str, int]:
    """(model name, num_classes) of an official Mask R-CNN state dict, from its keys and shapes."""
    num_classes = num_classes_of(state_dict)
    name = lsnet_official.first_fit(state_dict, list(VARIANTS), lambda n: expected_jax_shapes(n, num_classes),
                                    torch_key, "No LSNet Mask R-CNN fits these keys")
    return name, num_classes
