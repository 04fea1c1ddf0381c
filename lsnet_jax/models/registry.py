"""``create_model`` / ``list_models``: every model family by name, as timm users expect.

A family registers its names with a ``Family``: how to build a model from its name, and how to fit
a checkpoint's arrays to a model built with other settings (another class count, another input
size). Three families: LSNet (the classifiers), LSNet + Semantic FPN (the ADE20K segmenters) and
RegNet (DeiT's RegNetY-160 distillation teacher and its design space, as timm 0.5.4).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lsnet_jax.checkpoints.state import JaxPath, flat_state, load_flat
from lsnet_jax.checkpoints.weights import load_weights, read_meta
from lsnet_jax.models import hub, lsnet, regnet, semfpn, semfpn_official
from lsnet_jax.models.fold import fold

log = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # compute dtypes by name (configs, CLIs)

Flat = dict[JaxPath, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Family:
    """``build(name, num_classes, img_size, dtype, rngs, **config) -> module`` and
    ``adapt(flat, model, ckpt_classes) -> flat``, which fits a checkpoint's arrays to ``model``;
    ``class_leaf`` is the path of the classifier kernel whose last axis counts the classes."""

    default_cfgs: Mapping[str, dict]
    build: Callable[..., nnx.Module]
    adapt: Callable[[Flat, nnx.Module, int | None], Flat]
    class_leaf: JaxPath = ("head", "l", "kernel")


def _build_lsnet(name: str, num_classes: int, img_size: int, dtype, rngs: nnx.Rngs,
                 **config) -> lsnet.LSNet:
    return lsnet.LSNet(lsnet.model_config(name, num_classes, img_size, **config), dtype=dtype, rngs=rngs)


def _adapt_lsnet(flat: Flat, model: lsnet.LSNet, ckpt_classes: int | None) -> Flat:
    """New heads where the class count differs (from ``model``'s fresh initialisation); bias tables
    resized to the model's last grid."""
    if ckpt_classes is not None and ckpt_classes != model.cfg.num_classes:
        log.info("new %d-class head (weights have %d classes)", model.cfg.num_classes, ckpt_classes)
        fresh = {p: a for p, a in flat_state(model).items() if p[0] in ("head", "head_dist")}
        flat = {p: a for p, a in flat.items() if p[0] not in ("head", "head_dist")} | fresh
    res = model.cfg.resolutions()[3]
    resize = lsnet.resize_attention_biases
    return {p: np.asarray(resize(jnp.asarray(a), res)) if p[-1] == "attention_biases" else a
            for p, a in flat.items()}


def _build_semfpn(name: str, num_classes: int, img_size: int, dtype, rngs: nnx.Rngs,
                  backbone_pretrained: str | os.PathLike | None = None, **config) -> semfpn.SemanticFPN:
    """The segmenter (``img_size`` plays no part: any multiple of 32 runs); ``backbone_pretrained``
    initialises the backbone from ImageNet classifier weights as the official ``init_weights``."""
    del img_size
    model = semfpn.SemanticFPN(semfpn.semfpn_config(name, num_classes, **config), dtype=dtype, rngs=rngs)
    if backbone_pretrained is not None:
        flat, meta = load_weights(backbone_pretrained)
        want = semfpn.VARIANTS[name]
        if meta.get("model") and meta["model"].removesuffix("_distill") != want:
            raise ValueError(f"{backbone_pretrained} holds {meta['model']!r} weights; the backbone of {name!r} "
                             f"is {want!r}")
        load_flat(model.backbone, semfpn_official.backbone_from_classifier(flat), what=str(backbone_pretrained))
    return model


def _adapt_semfpn(flat: Flat, model: semfpn.SemanticFPN, ckpt_classes: int | None) -> Flat:
    """A new ``conv_seg`` where the class count differs (from ``model``'s fresh initialisation)."""
    if ckpt_classes is not None and ckpt_classes != model.cfg.num_classes:
        log.info("new %d-class conv_seg (weights have %d classes)", model.cfg.num_classes, ckpt_classes)
        fresh = {p: a for p, a in flat_state(model).items() if p[:2] == ("decode_head", "conv_seg")}
        flat = {p: a for p, a in flat.items() if p[:2] != ("decode_head", "conv_seg")} | fresh
    return flat


def _build_regnet(name: str, num_classes: int, img_size: int, dtype, rngs: nnx.Rngs, **config) -> regnet.RegNet:
    del img_size  # any size runs
    return regnet.RegNet(regnet.model_config(name, num_classes, **config), dtype=dtype, rngs=rngs)


def _adapt_regnet(flat: Flat, model: regnet.RegNet, ckpt_classes: int | None) -> Flat:
    """A new head where the class count differs (from ``model``'s fresh initialisation)."""
    if ckpt_classes is not None and ckpt_classes != model.cfg.num_classes:
        log.info("new %d-class head (weights have %d classes)", model.cfg.num_classes, ckpt_classes)
        fresh = {p: a for p, a in flat_state(model).items() if p[0] == "head"}
        flat = {p: a for p, a in flat.items() if p[0] != "head"} | fresh
    return flat


FAMILIES: tuple[Family, ...] = (
    Family(lsnet.DEFAULT_CFGS, _build_lsnet, _adapt_lsnet),
    Family(semfpn.DEFAULT_CFGS, _build_semfpn, _adapt_semfpn, ("decode_head", "conv_seg", "kernel")),
    Family(regnet.DEFAULT_CFGS, _build_regnet, _adapt_regnet, ("head", "kernel")),
)


def _family(name: str) -> Family:
    for f in FAMILIES:
        if name in f.default_cfgs:
            return f
    raise ValueError(f"unknown model {name!r}; available: {list_models()}")


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
                if family.class_leaf[0] == "decode_head" else "")
        raise ValueError(f"{pretrained} holds weights of {meta['model']!r}, not {name!r}{hint}")
    ckpt_classes = int(meta.get("num_classes", 0)) or None
    if flat is not None and ckpt_classes is None and family.class_leaf in flat:
        ckpt_classes = int(flat[family.class_leaf].shape[-1])
    if num_classes is None:
        num_classes = ckpt_classes or family.default_cfgs[name]["num_classes"]
    build = functools.partial(family.build, name, num_classes, img_size or 224, dtype,
                              bn_group_size=bn_group_size, impl=impl, **config)
    new_head = flat is not None and ckpt_classes is not None and ckpt_classes != num_classes
    if flat is None or new_head:
        model = build(rngs=nnx.Rngs(seed))
    else:  # every array comes from the weights: skip the random initialisation
        model = nnx.eval_shape(lambda: build(rngs=nnx.Rngs(0)))
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
