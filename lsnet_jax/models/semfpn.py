"""LSNet + Semantic FPN: the published ADE20K segmenters (``lsnet_{t,s,b}_semfpn``).

Ordered as the official code runs it (``SEGMENTATION_SPEC.md``): the LSNet backbone with its
segmentation differences (four stage outputs, 14x14 attention bias tables resized to the real token
count at run time, every BatchNorm frozen) -> ``LSNetFPN`` (lateral 1x1, nearest top-down, 3x3
per level) -> MMSegmentation's ``FPNHead`` (per level 3x3 ConvBN-ReLU blocks with 2x bilinear
upsampling, summed at 1/8 of the input, Dropout2d, ``conv_seg``) -> ``segment``, the official
whole-image inference. NHWC; every resize equals PyTorch's (``lsnet_jax.kernels.resize``). The
official state-dict names are in ``lsnet_jax.models.semfpn_official``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lsnet_jax.checkpoints.state import JaxPath, load_flat
from lsnet_jax.checkpoints.weights import load_weights
from lsnet_jax.models.family import Family, Flat, fresh_heads
from lsnet_jax.models.layers import BatchNorm, Conv, ConvBN, abstract
from lsnet_jax.models.lsnet import (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, LSNet, LSNetConfig, model_config,
                                   resize_attention_biases)
from lsnet_jax.kernels.resize import resize_bilinear, resize_nearest

Array = jax.Array

BIAS_RESOLUTION = 14  # the official backbone builds its attention with resolution=14


@dataclasses.dataclass(frozen=True)
class SemFPNConfig:
    """An LSNet Semantic FPN: its backbone's config and the neck's and head's widths."""

    backbone: LSNetConfig
    num_classes: int = 150
    neck_channels: int = 256
    head_channels: int = 128
    dropout: float = 0.1  # Dropout2d before conv_seg
    feature_strides: tuple[int, int, int, int] = (4, 8, 16, 32)  # FPNHead's; only the ratios matter
    bn_momentum: float = 0.1  # the head's (Sync)BatchNorms
    freeze_backbone_bn: bool = True  # the official backbone keeps every BatchNorm in eval mode


def _host_rng(key: Array) -> np.random.Generator:
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def _init_kernel(conv: Conv, key: Array, kind: str) -> None:
    """Re-initialise ``conv`` as MMSegmentation does: ``xavier`` (uniform, the FPN neck, bias 0),
    ``kaiming`` (normal, fan_out, ReLU gain: ConvModule's default), ``normal`` (std 0.01, bias 0:
    ``conv_seg``). Drawn on the host (numpy) when eager, as ``layers.torch_uniform_init``."""
    kh, kw, cin, cout = conv.kernel.shape
    if kind == "xavier":
        bound = math.sqrt(6.0 / (cin * kh * kw + cout * kh * kw))
        draw = lambda r: r.uniform(-bound, bound, conv.kernel.shape)  # noqa: E731
        jdraw = lambda k: jax.random.uniform(k, conv.kernel.shape, jnp.float32, -bound, bound)  # noqa: E731
    else:
        std = math.sqrt(2.0 / (cout * kh * kw)) if kind == "kaiming" else 0.01
        draw = lambda r: r.normal(0.0, std, conv.kernel.shape)  # noqa: E731
        jdraw = lambda k: std * jax.random.normal(k, conv.kernel.shape, jnp.float32)  # noqa: E731
    if isinstance(key, jax.core.Tracer):
        conv.kernel[...] = jdraw(key)
    else:
        conv.kernel[...] = jnp.asarray(draw(_host_rng(key)).astype(np.float32))
    if conv.bias is not None:
        conv.bias[...] = jnp.zeros(conv.bias.shape, jnp.float32)


class ConvModule(nnx.Module):
    """MMCV's ConvModule without norm or activation: one convolution with bias (``.conv``)."""

    def __init__(self, cin: int, cout: int, kernel_size: int, *, stride: int = 1, impl: str, rngs: nnx.Rngs):
        self.conv = Conv(cin, cout, kernel_size, stride, kernel_size // 2, use_bias=True, impl=impl, rngs=rngs)
        _init_kernel(self.conv, rngs.params(), "xavier")

    def __call__(self, x: Array) -> Array:
        return self.conv(x)


class LSNetFPN(nnx.Module):
    """The official ``LSNetFPN``: lateral 1x1 convs, top-down nearest upsampling and addition from
    the coarsest level, then a 3x3 conv per level; no norms, no activations, no extra levels."""

    def __init__(self, in_channels: tuple[int, ...], out_channels: int, *, impl: str, rngs: nnx.Rngs):
        self.lateral_convs = nnx.List([ConvModule(c, out_channels, 1, impl=impl, rngs=rngs) for c in in_channels])
        self.fpn_convs = nnx.List([ConvModule(out_channels, out_channels, 3, impl=impl, rngs=rngs)
                                   for _ in in_channels])

    def __call__(self, feats: list[Array]) -> list[Array]:
        lat = [conv(x) for conv, x in zip(self.lateral_convs, feats)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + resize_nearest(lat[i], lat[i - 1].shape[1:3])
        return [conv(x) for conv, x in zip(self.fpn_convs, lat)]


class FPNHead(nnx.Module):
    """MMSegmentation's ``FPNHead``: level i runs ``max(1, log2(stride_i / stride_0))`` blocks of
    3x3 conv (no bias) + BatchNorm + ReLU, each followed on levels i > 0 by a 2x bilinear upsample;
    the levels are summed at level 0's size (bilinear resize where sizes differ), then Dropout2d and
    the 1x1 classifier ``conv_seg``."""

    def __init__(self, cfg: SemFPNConfig, *, deploy: bool, impl: str, rngs: nnx.Rngs):
        s0 = cfg.feature_strides[0]
        c, kw = cfg.head_channels, dict(deploy=deploy, bn_momentum=cfg.bn_momentum, impl=impl, rngs=rngs)
        self.upsample = tuple(s != s0 for s in cfg.feature_strides)
        heads = []
        for i, s in enumerate(cfg.feature_strides):
            n = max(1, int(np.log2(s) - np.log2(s0)))
            blocks = [ConvBN(cfg.neck_channels if k == 0 else c, c, 3, 1, 1, **kw) for k in range(n)]
            for b in blocks:
                _init_kernel(b.c, rngs.params(), "kaiming")
            heads.append(nnx.List(blocks))
        self.scale_heads = nnx.List(heads)
        self.dropout = nnx.Dropout(cfg.dropout, broadcast_dims=(1, 2))
        self.conv_seg = Conv(c, cfg.num_classes, use_bias=True, impl=impl, rngs=rngs)
        _init_kernel(self.conv_seg, rngs.params(), "normal")

    def __call__(self, feats: list[Array], dropout_key: Array | None = None) -> Array:
        out = None
        for x, blocks, up in zip(feats, self.scale_heads, self.upsample):
            for conv in blocks:
                x = jax.nn.relu(conv(x))
                if up:
                    x = resize_bilinear(x, (2 * x.shape[1], 2 * x.shape[2]))
            out = x if out is None else out + resize_bilinear(x, out.shape[1:3])
        if not self.dropout.deterministic and self.dropout.rate > 0:
            if dropout_key is None:
                raise ValueError("a segmenter in training mode needs a dropout key: model(x, dropout_key=key)")
            out = self.dropout(out, rngs=dropout_key)
        return self.conv_seg(out)


class SemanticFPN(nnx.Module):
    """LSNet + Semantic FPN on NHWC normalised images (H, W multiples of 32).

    ``model(x)`` returns the decode head's logits at 1/8 of the input, ``(N, H/8, W/8, classes)``,
    float32; ``segment(model, x)`` resizes them to the input (or original) size as the official
    inference. In training mode (``model.train()``) the backbone's BatchNorms stay frozen (running
    statistics, affine parameters trained), the head's use the batch's statistics, and Dropout2d
    needs ``dropout_key``.
    """

    def __init__(self, cfg: SemFPNConfig, *, deploy: bool = False, dtype: jnp.dtype = jnp.float32,
                 rngs: nnx.Rngs):
        self.cfg, self.deploy, self.dtype = cfg, deploy, dtype
        self.backbone = LSNet(cfg.backbone, deploy=deploy, dtype=dtype, rngs=rngs)
        self.impl = self.backbone.impl
        for _, m in nnx.iter_modules(self.backbone):
            if isinstance(m, BatchNorm):
                m.frozen = cfg.freeze_backbone_bn
        self.neck = LSNetFPN(cfg.backbone.embed_dim, cfg.neck_channels, impl=self.impl, rngs=rngs)
        self.decode_head = FPNHead(cfg, deploy=deploy, impl=self.impl, rngs=rngs)

    def deploy_twin(self) -> SemanticFPN:
        """The abstract deploy form of this model, for ``models.fold``."""
        cfg = dataclasses.replace(self.cfg, backbone=dataclasses.replace(self.cfg.backbone, impl=self.impl))
        return abstract(functools.partial(SemanticFPN, cfg, deploy=True, dtype=self.dtype))

    def __call__(self, x: Array, dropout_key: Array | None = None) -> Array:
        h, w = x.shape[1:3]
        if h % 32 or w % 32:
            raise ValueError(f"the segmenter takes images whose sides are multiples of 32, got {h}x{w}; "
                             "resize them (lsnet_jax.data.segmentation.official_test_size gives the official size)")
        feats = self.backbone.forward_intermediates(x)
        logits = self.decode_head(self.neck(feats), dropout_key)
        return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


def segment(model: SemanticFPN, images: Array, out_size: tuple[int, int] | None = None,
            labels: bool = False) -> Array:
    """The official whole-image inference: the 1/8 logits resized (bilinear, align_corners False)
    to the input size, then, if ``out_size`` is given (the original image's (H, W) before the test
    resize), to that size. Returns the logits ``(N, H, W, classes)``, or with ``labels`` their
    argmax ``(N, H, W)`` int32."""
    logits = resize_bilinear(model(images), images.shape[1:3])
    if out_size is not None:
        logits = resize_bilinear(logits, tuple(out_size))
    return jnp.argmax(logits, axis=-1).astype(jnp.int32) if labels else logits


VARIANTS = {f"{base}_semfpn": base for base in ("lsnet_t", "lsnet_s", "lsnet_b")}

# Published single-scale ADE20K mIoU; mmseg's normalisation (mean/std 123.675/58.395 ... on 0-255
# is the ImageNet mean/std on 0-1); training crops 512x512, test images resized to fit 2048x512.
DEFAULT_CFGS: dict[str, dict] = {
    name: dict(input_size=(512, 512, 3), mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
               num_classes=150, test_scale=(2048, 512), size_divisor=32, miou=miou, task="segmentation")
    for name, miou in zip(VARIANTS, (40.1, 41.6, 43.1))
}


def semfpn_config(name: str, num_classes: int = 150, **overrides) -> SemFPNConfig:
    """The config of ``lsnet_{t,s,b}_semfpn``; ``overrides`` set fields of the backbone's
    ``LSNetConfig`` (impl, lks, ...) or of ``SemFPNConfig`` (dropout, head_channels, ...)."""
    # bn_momentum: the head's and the backbone's
    return dense_config(SemFPNConfig, name, VARIANTS, "segmenter", num_classes, overrides, shared=("bn_momentum",))


def dense_config(cls, name: str, variants: dict[str, str], kind: str, num_classes: int, overrides: dict,
                 shared: tuple[str, ...] = ()):
    """A dense model's config ``cls(backbone=..., num_classes=..., **head fields)``: ``overrides``
    split between ``cls``'s own fields and the backbone's ``LSNetConfig`` (``shared`` go to both),
    the backbone built for 14x14 attention tables, headless."""
    if name not in variants:
        raise ValueError(f"unknown {kind} {name!r}; available: {sorted(variants)}")
    own = {f.name for f in dataclasses.fields(cls)} - {"backbone", "num_classes"}
    head = {k: v for k, v in overrides.items() if k in own}
    backbone_kw = {k: v for k, v in overrides.items() if k not in own or k in shared}
    backbone_kw.pop("bn_group_size", None)  # frozen backbone BatchNorms have no batch statistics
    backbone = model_config(variants[name], num_classes=0, attn_resolution=BIAS_RESOLUTION, **backbone_kw)
    return cls(backbone=backbone, num_classes=num_classes, **head)


# ----- the family (lsnet_jax.models.registry) -----

def resize_classifier_biases(table: np.ndarray, resolution: int = BIAS_RESOLUTION) -> np.ndarray:
    """The official ``init_weights`` on one classifier bias table ``(heads, 16)``:
    ``F.interpolate(t.view(1, heads, 4, 4), size=(14, 14), mode='bicubic')`` -> ``(heads, 196)``.
    A classifier trained at another size has an r x r table (r = ceil(img / 64)); it is resized
    from its own grid the same way (the official code knows only 224-pixel classifiers)."""
    return np.asarray(resize_attention_biases(jnp.asarray(table, jnp.float32), resolution))


def backbone_from_classifier(flat: Mapping[JaxPath, np.ndarray]) -> Flat:
    """A classifier's JAX leaves as the segmenter's backbone leaves (non-strict as the official load:
    the heads are dropped) with the 4x4 bias tables resized to 14x14."""
    out = {}
    for path, a in flat.items():
        if path[0] in ("head", "head_dist"):
            continue
        if path[0] == "backbone":
            raise ValueError("these weights are a segmenter's, not a classifier's: load them with pretrained=")
        out[path] = resize_classifier_biases(np.asarray(a)) if path[-1] == "attention_biases" else np.asarray(a)
    return out


def build(name: str, num_classes: int, img_size: int, dtype, rngs: nnx.Rngs,
          backbone_pretrained: str | os.PathLike | None = None, **config) -> SemanticFPN:
    """The segmenter (``img_size`` plays no part: any multiple of 32 runs); ``backbone_pretrained``
    initialises the backbone from ImageNet classifier weights as the official ``init_weights``."""
    del img_size
    model = SemanticFPN(semfpn_config(name, num_classes, **config), dtype=dtype, rngs=rngs)
    if backbone_pretrained is not None:
        load_backbone(model.backbone, backbone_pretrained, name, VARIANTS[name])
    return model


def load_backbone(backbone: LSNet, weights: str | os.PathLike, name: str, want: str) -> None:
    """A dense model's backbone from ImageNet classifier weights of variant ``want`` (the official
    ``init_weights``: bias tables resized to 14x14, the head dropped, loaded non-strictly)."""
    flat, meta = load_weights(weights)
    if meta.get("model") and meta["model"].removesuffix("_distill") != want:
        raise ValueError(f"{weights} holds {meta['model']!r} weights; the backbone of {name!r} is {want!r}")
    load_flat(backbone, backbone_from_classifier(flat), what=str(weights))


def adapt(flat: Flat, model: SemanticFPN, ckpt_classes: int | None) -> Flat:
    """A new ``conv_seg`` where the class count differs (from ``model``'s fresh initialisation)."""
    return fresh_heads(flat, model, ckpt_classes, model.cfg.num_classes,
                       lambda p: p[:2] == ("decode_head", "conv_seg"), "conv_seg")


FAMILY = Family(DEFAULT_CFGS, build, adapt, ("decode_head", "conv_seg", "kernel"))
