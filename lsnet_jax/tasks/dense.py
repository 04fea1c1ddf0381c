"""What the dense-prediction tasks (segmentation, detection) share: the config checks every run
of theirs needs, and building the model from a whole model's or a classifier backbone's weights."""

from __future__ import annotations

import os

import ml_collections
from flax import nnx

from lsnet_jax import kernels
from lsnet_jax.models.registry import DTYPES, create_model
from lsnet_jax.train.checks import ConfigError
from lsnet_jax.train.config import architecture


def validate_common(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """The batch over the devices, the dtype, the kernels, the weights' paths."""
    if config.batch_size % num_devices:
        raise ConfigError(f"config.batch_size={config.batch_size} is not divisible by the {num_devices} "
                          f"devices; set --config.batch_size to a multiple of {num_devices}")
    if config.dtype not in DTYPES:
        raise ConfigError(f"config.dtype={config.dtype!r}; use one of {sorted(DTYPES)}")
    if config.impl not in kernels.IMPLS:
        raise ConfigError(f"config.impl={config.impl!r}; use one of {kernels.IMPLS}")
    for key in ("backbone_weights", "init_weights"):
        if config[key] and not (os.path.exists(config[key]) or config[key].startswith("hf-hub:")):
            raise ConfigError(f"config.{key}={config[key]!r} does not exist; give a weights directory "
                              "(lsnet-convert or lsnet-export-weights)")


def build_model(config: ml_collections.ConfigDict, num_classes: int, **extra) -> nnx.Module:
    """The model (from ``init_weights``, or its backbone from ``backbone_weights``), eval mode."""
    kw = dict(extra)
    if config.backbone_weights and not config.init_weights:
        kw["backbone_pretrained"] = config.backbone_weights
    return create_model(config.model, pretrained=config.init_weights or None, num_classes=num_classes,
                        dtype=DTYPES[config.dtype], seed=config.seed, impl=config.impl,
                        freeze_backbone_bn=config.freeze_backbone_bn, **architecture(config), **kw)
