"""``create_model`` / ``list_models``: every model family by name, as timm users expect.

Each family is a ``Family`` (``lsnet_jax.models.family``) defined in its own module: how to build a
model from its name, and how to fit a checkpoint's arrays to a model built with other settings
(another class count, another input size). Five families, listed in ``FAMILIES``: LSNet (the
classifiers), LSNet + Semantic FPN (the ADE20K segmenters), LSNet + RetinaNet (the COCO
detectors), LSNet + Mask R-CNN (the COCO instance segmenters) and RegNet (DeiT's RegNetY-160 distillation teacher and its design space, as timm 0.5.4).
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lsnet_jax.checkpoints.state import JaxPath, load_flat
from lsnet_jax.checkpoints.weights import load_weights, read_meta
from lsnet_jax.models import hub, lsnet, maskrcnn, regnet, retinanet, semfpn
from lsnet_jax.models.layers import abstract
from lsnet_jax.models.family import Family
from lsnet_jax.models.fold import fold

log = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # compute dtypes by name (configs, CLIs)

Flat = dict[JaxPath, np.ndarray]


# The one table of model families, in the order ``list_models`` knows them: each family's module
# defines its ``FAMILY`` (names, build, checkpoint fitting) beside its model, so a new family is
# that module plus one line here. A table rather than registration at import time: which names
# exist does not depend on which modules happen to have been imported, and one line lists them all.
FAMILIES: tuple[Family, ...] = (lsnet.FAMILY, semfpn.FAMILY, retinanet.FAMILY, maskrcnn.FAMILY, regnet.FAMILY)


def _family(name: str) -> Family:
    for f in FAMILIES:
        if name in f.default_cfgs:
            return f
    raise ValueError(f"unknown model {name!r}; available: {list_models()}")


def model_task(name: str) -> str:
    """What ``name`` does: "classification", "segmentation" or "detection" (its default config's)."""
    return _family(name).default_cfgs[name].get("task", "classification")


def list_models(pattern: str = "*") -> list[str]:
    """Every model name, or those matching the shell-style ``pattern`` (``"*_semfpn"``)."""
    return sorted(n for f in FAMILIES for n in f.default_cfgs if fnmatch.fnmatchcase(n, pattern))


def create_model(name: str, pretrained: str | os.PathLike | bool | None = None, num_classes: int | None = None,
                 img_size: int | None = None, dtype: jnp.dtype = jnp.float32, deploy: bool = False,
                 bn_group_size: int | None = None, seed: int = 0, impl: str = "auto",
                 **config: Any) -> nnx.Module:
    """Build ``name`` (see ``list_models()``), optionally with weights, in eval mode.

    pretrained: ``True`` for the published checkpoint of ``name`` (downloaded from the Hugging Face
        Hub, converted once and cached: ``lsnet_jax.models.hub``), ``"hf-hub:OWNER/REPO[/FILE][@REV]"``,
        a directory written by ``lsnet-convert`` / ``save_weights``, or a ``.safetensors`` file.
        With another ``num_classes`` than the weights the heads are re-initialised; with another
        ``img_size`` the attention bias tables are resized. ``name`` may be ``"hf-hub:..."`` itself:
        the model is then the one the weights hold.
    deploy: fold BatchNorms and RepVGG branches (``lsnet_jax.models.fold``) for inference.
    dtype: compute dtype (parameters stay float32).
    impl: the array operations (``lsnet_jax.kernels``): "auto", "reference" or "xla_cpu".
    config: any other field of the family's config (for LSNet ``LSNetConfig``: bn_momentum, lks ...).
    Call ``model.train()`` before training.
    """
    if name.startswith(hub.PREFIX):  # weights from a Hugging Face repository; the model is what they hold
        if pretrained not in (None, True):
            raise ValueError(f"{name} names the weights already; pretrained={pretrained!r} is a second source")
        pretrained = hub.resolve(name)
        name = read_meta(pretrained)["model"]
    pretrained = None if pretrained is False else hub.resolve(pretrained, name)
    family = _family(name)
    if pretrained is not None and config.get("backbone_pretrained") is not None:
        raise ValueError("pretrained= loads a whole segmenter, backbone_pretrained= only its backbone from a "
                         "classifier: give one of them")
    flat, meta = (None, {}) if pretrained is None else load_weights(pretrained)
    if meta.get("model") and meta["model"] != name:
        hint = (f"; to start {name}'s backbone from a classifier, pass backbone_pretrained={str(pretrained)!r}"
                if family.class_leaf[0] in ("decode_head", "bbox_head") else "")
        raise ValueError(f"{pretrained} holds weights of {meta['model']!r}, not {name!r}{hint}")
    ckpt_classes = int(meta.get("num_classes", 0)) or None
    if flat is not None and ckpt_classes is None:
        ckpt_classes = family.classes_of(flat)
    if num_classes is None:
        num_classes = ckpt_classes or family.default_cfgs[name]["num_classes"]
    for k, v in meta.get("model_config", {}).items():  # the weights' architecture (a run's config.depth)
        config.setdefault(k, tuple(v) if isinstance(v, list) else v)
    build = functools.partial(family.build, name, num_classes, img_size or 224, dtype,
                              bn_group_size=bn_group_size, impl=impl, **config)
    new_head = flat is not None and ckpt_classes is not None and ckpt_classes != num_classes
    if flat is None or new_head:
        model = build(rngs=nnx.Rngs(seed))
    else:  # every array comes from the weights: skip the random initialisation
        model = abstract(build)
    if flat is not None:
        load_flat(model, family.adapt(flat, model, ckpt_classes), what=str(pretrained))
    if deploy:
        model = fold(model)
    model.eval()
    return model


def compiled(model: nnx.Module) -> Callable[[jax.Array], jax.Array]:
    """``model(x)`` as one XLA computation, compiled once per input shape, with the model's weights
    as they are now. For a model in eval mode; a handful of calls this way is much faster than
    running the model eagerly, op by op."""
    graph, state = nnx.split(model)
    apply = jax.jit(lambda s, x: nnx.merge(graph, s)(x))
    return functools.partial(apply, state)
