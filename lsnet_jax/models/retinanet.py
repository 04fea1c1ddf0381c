"""LSNet + RetinaNet: the published COCO detectors (``lsnet_{t,s,b}_retinanet``).

Ordered as the official code runs it (``DETECTION_SPEC.md``, MMDetection 2.28.2): the LSNet
backbone exactly as the segmentation one (four stage outputs at strides 8-64, 14x14 attention bias
tables resized to the real token count at run time, every BatchNorm frozen) -> ``LSNetFPN`` with
the base config's ``add_extra_convs='on_input'``: a fifth level from a stride-2 3x3 conv on the raw
last stage (P3..P7, strides 8..128) -> MMDetection's ``RetinaHead`` (shared over the levels: 4 x
[3x3 conv, ReLU] per branch, ``retina_cls`` 9 x classes and ``retina_reg`` 9 x 4 channels, logits).
``lsnet_jax.inference.detection`` holds the anchors, the box coder and ``detect``, the official
inference. NHWC. The official state-dict names are in ``lsnet_jax.models.retinanet_official``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp
from flax import nnx

from lsnet_jax.kernels.resize import resize_nearest
from lsnet_jax.models.family import Family, Flat, fresh_heads
from lsnet_jax.models.layers import BatchNorm, Conv, abstract
from lsnet_jax.models.lsnet import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, LSNet, LSNetConfig
from lsnet_jax.models.semfpn import ConvModule, _init_kernel, dense_config, load_backbone

Array = jax.Array

NUM_ANCHORS = 9  # 3 scales x 3 ratios per location
STRIDES = (8, 16, 32, 64, 128)
PRIOR_PROB = 0.01  # retina_cls's bias: -log((1 - p) / p)


@dataclasses.dataclass(frozen=True)
class RetinaNetConfig:
    """An LSNet RetinaNet: its backbone's config, the neck's and head's widths."""

    backbone: LSNetConfig
    num_classes: int = 80
    neck_channels: int = 256
    feat_channels: int = 256
    stacked_convs: int = 4
    num_anchors: int = NUM_ANCHORS
    freeze_backbone_bn: bool = True  # the official LSNet.train() keeps every BatchNorm in eval mode


class RetinaFPN(nnx.Module):
    """``LSNetFPN`` with one extra level ``on_input``: lateral 1x1 convs, top-down nearest
    upsampling and addition, a 3x3 conv per backbone level, and ``fpn_convs[4]``, a 3x3 stride-2
    conv on the raw last backbone stage. Every conv Xavier-uniform, bias 0; no norm, no activation."""

    def __init__(self, in_channels: tuple[int, ...], out_channels: int, *, impl: str, rngs: nnx.Rngs):
        self.lateral_convs = nnx.List([ConvModule(c, out_channels, 1, impl=impl, rngs=rngs) for c in in_channels])
        convs = [ConvModule(out_channels, out_channels, 3, impl=impl, rngs=rngs) for _ in in_channels]
        convs.append(ConvModule(in_channels[-1], out_channels, 3, stride=2, impl=impl, rngs=rngs))
        self.fpn_convs = nnx.List(convs)

    def __call__(self, feats: list[Array]) -> list[Array]:
        lat = [conv(x) for conv, x in zip(self.lateral_convs, feats)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + resize_nearest(lat[i], lat[i - 1].shape[1:3])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, lat)]
        outs.append(self.fpn_convs[len(lat)](feats[-1]))
        return outs


class RetinaHead(nnx.Module):
    """MMDetection's ``RetinaHead`` (no norm), shared by every level. Init Normal(0, 0.01), bias 0,
    ``retina_cls`` bias ``-log(99)``."""

    def __init__(self, cfg: RetinaNetConfig, *, impl: str, rngs: nnx.Rngs):
        c = cfg.feat_channels

        def branch():
            convs = [ConvModule(cfg.neck_channels if i == 0 else c, c, 3, impl=impl, rngs=rngs)
                     for i in range(cfg.stacked_convs)]
            for m in convs:
                _init_kernel(m.conv, rngs.params(), "normal")
            return nnx.List(convs)

        self.cls_convs = branch()
        self.reg_convs = branch()
        self.retina_cls = Conv(c, cfg.num_anchors * cfg.num_classes, 3, 1, 1, use_bias=True, impl=impl, rngs=rngs)
        self.retina_reg = Conv(c, cfg.num_anchors * 4, 3, 1, 1, use_bias=True, impl=impl, rngs=rngs)
        _init_kernel(self.retina_cls, rngs.params(), "normal")
        _init_kernel(self.retina_reg, rngs.params(), "normal")
        self.retina_cls.bias[...] = jnp.full(self.retina_cls.bias.shape, -math.log((1 - PRIOR_PROB) / PRIOR_PROB),
                                             jnp.float32)

    def __call__(self, x: Array) -> tuple[Array, Array]:
        c = r = x
        for conv in self.cls_convs:
            c = jax.nn.relu(conv(c))
        for conv in self.reg_convs:
            r = jax.nn.relu(conv(r))
        return self.retina_cls(c), self.retina_reg(r)


class RetinaNet(nnx.Module):
    """LSNet + RetinaNet on NHWC normalised images (H, W multiples of 32).

    ``model(x)`` returns ``(cls_scores, bbox_preds)``, each a tuple of the 5 levels (strides 8 ...
    128), NHWC float32, with MMDetection's channel layout: class logit of anchor ``a`` and class
    ``c`` at channel ``a * classes + c``, its deltas (dx, dy, dw, dh) at ``a * 4 + k``.
    ``lsnet_jax.inference.detection.detect`` turns them into boxes. In training mode
    (``model.train()``) the backbone's BatchNorms stay frozen (running statistics; affine
    parameters trained), as the official backbone; nothing else has a norm.
    """

    def __init__(self, cfg: RetinaNetConfig, *, deploy: bool = False, dtype: jnp.dtype = jnp.float32,
                 rngs: nnx.Rngs):
        self.cfg, self.deploy, self.dtype = cfg, deploy, dtype
        self.backbone = LSNet(cfg.backbone, deploy=deploy, dtype=dtype, rngs=rngs)
        self.impl = self.backbone.impl
        for _, m in nnx.iter_modules(self.backbone):
            if isinstance(m, BatchNorm):
                m.frozen = cfg.freeze_backbone_bn
        self.neck = RetinaFPN(cfg.backbone.embed_dim, cfg.neck_channels, impl=self.impl, rngs=rngs)
        self.bbox_head = RetinaHead(cfg, impl=self.impl, rngs=rngs)

    def deploy_twin(self) -> RetinaNet:
        """The abstract deploy form of this model, for ``models.fold``."""
        cfg = dataclasses.replace(self.cfg, backbone=dataclasses.replace(self.cfg.backbone, impl=self.impl))
        return abstract(functools.partial(RetinaNet, cfg, deploy=True, dtype=self.dtype))

    def __call__(self, x: Array) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
        h, w = x.shape[1:3]
        if h % 32 or w % 32:
            raise ValueError(f"the detector takes images whose sides are multiples of 32, got {h}x{w}; pad them "
                             "bottom/right with 0 after normalising (the official Pad(size_divisor=32))")
        feats = self.neck(self.backbone.forward_intermediates(x))
        out = [self.bbox_head(f) for f in feats]
        f32 = lambda a: a.astype(jnp.promote_types(a.dtype, jnp.float32))  # noqa: E731
        return tuple(f32(c) for c, _ in out), tuple(f32(r) for _, r in out)


VARIANTS = {f"{base}_retinanet": base for base in ("lsnet_t", "lsnet_s", "lsnet_b")}

# Published COCO val2017 box AP (1x schedule); images resized to fit (1333, 800), padded to 32.
DEFAULT_CFGS: dict[str, dict] = {
    name: dict(input_size=(800, 1344, 3), mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, num_classes=80,
               test_scale=(1333, 800), size_divisor=32, box_ap=ap, task="detection")
    for name, ap in zip(VARIANTS, (34.2, 36.5, 39.2))
}


def retinanet_config(name: str, num_classes: int = 80, **overrides) -> RetinaNetConfig:
    """The config of ``lsnet_{t,s,b}_retinanet``; ``overrides`` set fields of the backbone's
    ``LSNetConfig`` (impl, depth, ...) or of ``RetinaNetConfig`` (feat_channels, ...)."""
    return dense_config(RetinaNetConfig, name, VARIANTS, "detector", num_classes, overrides)


# ----- the family (lsnet_jax.models.registry) -----

def build(name: str, num_classes: int, img_size: int, dtype, rngs: nnx.Rngs,
          backbone_pretrained: str | os.PathLike | None = None, **config) -> RetinaNet:
    """The detector (``img_size`` plays no part); ``backbone_pretrained`` initialises the backbone
    from ImageNet classifier weights as the official config's ``pretrained=`` (bias tables resized
    to 14x14 bicubically, the classifier head dropped)."""
    del img_size
    model = RetinaNet(retinanet_config(name, num_classes, **config), dtype=dtype, rngs=rngs)
    if backbone_pretrained is not None:
        load_backbone(model.backbone, backbone_pretrained, name, VARIANTS[name])
    return model


def adapt(flat: Flat, model: RetinaNet, ckpt_classes: int | None) -> Flat:
    """A new ``retina_cls`` where the class count differs (from ``model``'s fresh initialisation)."""
    return fresh_heads(flat, model, ckpt_classes, model.cfg.num_classes,
                       lambda p: p[:2] == ("bbox_head", "retina_cls"), "retina_cls")


FAMILY = Family(DEFAULT_CFGS, build, adapt, ("bbox_head", "retina_cls", "kernel"), outputs_per_class=NUM_ANCHORS)
