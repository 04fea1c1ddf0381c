"""The official LSNet Semantic FPN checkpoint names (MMSegmentation's ``backbone.*``, ``neck.*``,
``decode_head.*``), both ways; variant detection; the backbone's initialisation from an ImageNet
classifier as the official ``init_weights``. Pure numpy, no torch.

The backbone's keys are the classifier's (``lsnet_jax.models.lsnet_official``) under ``backbone.``,
without the head; its attention tables are 14x14 (``(heads, 196)``, ``attention_bias_idxs``
``(196, 196)``). MMSegmentation's ``ConvModule`` names its convolution ``conv`` and its norm ``bn``;
each scale head is a ``Sequential`` with the upsample layers between the ConvModules, so the k-th
block is entry ``2k``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np

from lsnet_jax.checkpoints.state import CheckpointMismatchError, JaxPath, state_shapes
from lsnet_jax.models import lsnet_official
from lsnet_jax.models.layers import abstract
from lsnet_jax.models.lsnet_official import LEAF_TO_TORCH
from lsnet_jax.models.semfpn import VARIANTS, SemanticFPN, semfpn_config

Flat = dict[JaxPath, np.ndarray]


def torch_key(path: JaxPath) -> str:
    """The official key of the segmenter's JAX leaf at ``path``."""
    p = [str(s) for s in path]
    if p[0] == "backbone":
        return "backbone." + lsnet_official.torch_key(tuple(path[1:]))
    if p[-1] not in LEAF_TO_TORCH:
        raise KeyError(f"no official name for {path} (deploy-form models have none: convert the training form)")
    leaf = LEAF_TO_TORCH[p[-1]]
    if p[0] == "neck":  # neck.{lateral,fpn}_convs.i.conv.{weight,bias}
        return ".".join(p[:-1] + [leaf])
    if p[0] == "decode_head" and p[1] == "scale_heads":  # .i.k.{c,bn}.x -> .i.{2k}.{conv,bn}.x
        part = {"c": "conv", "bn": "bn"}[p[4]]
        return f"decode_head.scale_heads.{p[2]}.{2 * int(p[3])}.{part}.{leaf}"
    if p[0] == "decode_head" and p[1] == "conv_seg":
        return f"decode_head.conv_seg.{leaf}"
    raise KeyError(f"no official name for {path}")


def torch_to_jax(state_dict: Mapping[str, np.ndarray], jax_shapes: Mapping[JaxPath, tuple[int, ...]],
                 what: str = "checkpoint") -> Flat:
    """An official segmentation state dict onto the JAX leaves, every key and shape checked."""
    return lsnet_official.torch_to_jax(state_dict, jax_shapes, what, key_fn=torch_key)


def jax_to_torch(params: Mapping[JaxPath, np.ndarray]) -> dict[str, np.ndarray]:
    """The official state dict (buffers included) of the JAX training-form leaves."""
    return lsnet_official.jax_to_torch(params, key_fn=torch_key)


def is_segmentation(state_dict: Mapping[str, np.ndarray]) -> bool:
    """Whether a state dict is an MMSegmentation segmenter's (``decode_head.*`` keys)."""
    return any(k.startswith("decode_head.") for k in state_dict)


@functools.lru_cache(maxsize=16)
def expected_jax_shapes(name: str, num_classes: int = 150) -> dict[JaxPath, tuple]:
    """Leaf shapes of the training-form segmenter, without initialising it (cached: detection
    tries every variant). Do not modify the returned dict."""
    cfg = semfpn_config(name, num_classes)
    return state_shapes(abstract(functools.partial(SemanticFPN, cfg)))


def detect_variant(state_dict: Mapping[str, np.ndarray]) -> tuple[str, int]:
    """(model name, num_classes) of an official segmentation state dict, from its keys and shapes."""
    if "decode_head.conv_seg.weight" not in state_dict:
        raise CheckpointMismatchError("checkpoint", ["decode_head.conv_seg.weight"], [], [],
                                      hint="A segmentation checkpoint has a decode_head.conv_seg classifier.")
    num_classes = int(np.shape(state_dict["decode_head.conv_seg.weight"])[0])
    name = lsnet_official.first_fit(state_dict, list(VARIANTS), lambda n: expected_jax_shapes(n, num_classes),
                                    torch_key, "No LSNet Semantic FPN fits these keys")
    return name, num_classes


