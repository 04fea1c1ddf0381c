"""An official PyTorch state dict to lsnet_jax weights, for every model family: LSNet classifiers,
the MMSegmentation Semantic FPN segmenters, the MMDetection RetinaNet and Mask R-CNN detectors and timm / DeiT
RegNets. The family, variant, class
count and input size are read from the keys and shapes (or given); every key and shape is
checked against the model both ways. No torch: the state dict is numpy (``read_checkpoint``)."""

from __future__ import annotations

import numpy as np

from lsnet_jax.checkpoints.state import JaxPath


def from_official(sd: dict[str, np.ndarray], model: str | None = None, img_size: int = 224,
                  what: str = "checkpoint") -> tuple[dict[JaxPath, np.ndarray], dict]:
    """(flat weights, their ``config.json`` fields: model, num_classes, img_size or task)."""
    from lsnet_jax.models import maskrcnn_official, regnet_official, retinanet_official, semfpn_official
    from lsnet_jax.models.lsnet_official import detect_variant, expected_jax_shapes, torch_to_jax

    if maskrcnn_official.is_maskrcnn(sd) or (model or "").endswith("_maskrcnn"):
        if model:
            name, num_classes = model, maskrcnn_official.num_classes_of(sd)
        else:
            name, num_classes = maskrcnn_official.detect_variant(sd)
        flat = maskrcnn_official.torch_to_jax(sd, maskrcnn_official.expected_jax_shapes(name, num_classes),
                                              what=what)
        return flat, dict(model=name, num_classes=num_classes, task="detection")

    if retinanet_official.is_retinanet(sd) or (model or "").endswith("_retinanet"):
        if model:
            name, num_classes = model, retinanet_official.num_classes_of(sd)
        else:
            name, num_classes = retinanet_official.detect_variant(sd)
        flat = retinanet_official.torch_to_jax(sd, retinanet_official.expected_jax_shapes(name, num_classes),
                                               what=what)
        return flat, dict(model=name, num_classes=num_classes, task="detection")

    if semfpn_official.is_segmentation(sd) or (model or "").endswith("_semfpn"):
        if model:
            name, num_classes = model, int(np.shape(sd.get("decode_head.conv_seg.weight", np.empty(150)))[0])
        else:
            name, num_classes = semfpn_official.detect_variant(sd)
        flat = semfpn_official.torch_to_jax(sd, semfpn_official.expected_jax_shapes(name, num_classes), what=what)
        return flat, dict(model=name, num_classes=num_classes, task="segmentation")
    if regnet_official.is_regnet(sd) or (model or "").startswith("regnet"):
        if model:
            name = model
            num_classes = int(np.shape(sd["head.fc.weight"])[0]) if "head.fc.weight" in sd else 1000
        else:
            name, num_classes = regnet_official.detect_variant(sd)
        return regnet_official.torch_to_jax(sd, name, num_classes, what=what), dict(
            model=name, num_classes=num_classes, img_size=224)
    if model:
        name, num_classes = model, int(sd["head.l.weight"].shape[0]) if "head.l.weight" in sd else 1000
    else:
        name, num_classes, img_size = detect_variant(sd)
    flat = torch_to_jax(sd, expected_jax_shapes(name, num_classes, img_size), what=what)
    return flat, dict(model=name, num_classes=num_classes, img_size=img_size)
