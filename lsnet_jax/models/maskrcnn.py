"""LSNet + Mask R-CNN: the published COCO instance segmenters (``lsnet_{t,s,b}_maskrcnn``).

Ordered as the official code runs it (``DETECTION_SPEC.md`` "Mask R-CNN", MMDetection 2.28.2): the
LSNet backbone exactly as the RetinaNet one (four stage outputs at strides 8-64, 14x14 attention
bias tables resized at run time, every BatchNorm frozen) -> ``LSNetFPN`` with
``num_extra_trans_convs=1``: a FINER fifth level, P2 = 3x3 conv of a 2x2 stride-2 transposed conv
of the top-down stride-8 lateral, so the levels are P2..P6 at strides 4..64 -> the RPN head (shared
3x3 conv + ReLU, 1x1 ``rpn_cls`` 3 anchors, 1x1 ``rpn_reg`` 12) -> the RoI head on P2..P5:
RoIAlign 7x7 (``lsnet_jax.kernels.roi_align``), ``Shared2FCBBoxHead`` (two 1024 fcs, 81 class
logits with background last, 320 class-specific deltas) and ``FCNMaskHead`` on RoIAlign 14x14 (4 x
[3x3 conv, ReLU], 2x2 stride-2 transposed conv, ReLU, 1x1 ``conv_logits``: 28x28 logits per class).
NHWC. The official state-dict names are in ``lsnet_jax.models.maskrcnn_official``.

``model(x)`` is the RPN's raw outputs per level; ``model.features(x)`` the five FPN levels, on which
``model.bbox_forward`` and ``model.mask_forward`` run the two RoI heads on given boxes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lsnet_jax.kernels import roi_align
from lsnet_jax.kernels.resize import resize_nearest
from lsnet_jax.models.family import Family, Flat, fresh_heads
from lsnet_jax.models.layers import BatchNorm, Conv, Linear, abstract
from lsnet_jax.models.lsnet import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, LSNet, LSNetConfig
from lsnet_jax.models.semfpn import ConvModule, _host_rng, _init_kernel, dense_config, load_backbone

Array = jax.Array

NUM_ANCHORS = 3  # 1 scale x 3 ratios per location
STRIDES = (4, 8, 16, 32, 64)  # P2..P6; the RoI heads read P2..P5
ROI_STRIDES = STRIDES[:4]


@dataclasses.dataclass(frozen=True)
class MaskRCNNConfig:
    """An LSNet Mask R-CNN: its backbone's config, the widths, and how RoIAlign bounds its adaptive
    sample count (``lsnet_jax.kernels.roi_align``): ``roi_align`` "window" (the fast form, exact for
    RoIs within a ``roi_window`` = (across, along) patch of feature pixels) or "points" (the reference form, exact for
    bins of at most ``roi_samples`` samples per axis)."""

    backbone: LSNetConfig
    num_classes: int = 80
    neck_channels: int = 256
    fc_channels: int = 1024
    num_anchors: int = NUM_ANCHORS
    roi_size: int = 7
    mask_roi_size: int = 14
    mask_convs: int = 4
    roi_align: str = "window"
    roi_window: tuple[int, int] = (32, 64)
    roi_samples: int = 8
    roi_chunk: int = 64
    freeze_backbone_bn: bool = True


def _draw(param: nnx.Param, key: Array, kind: str, scale: float) -> None:
    """Set ``param`` to U(-scale, scale) (``uniform``) or N(0, scale^2) (``normal``), drawn on the
    host when eager (as ``semfpn._init_kernel``)."""
    shape = param.shape
    if isinstance(key, jax.core.Tracer):
        fn = jax.random.uniform if kind == "uniform" else jax.random.normal
        v = fn(key, shape, jnp.float32, -scale, scale) if kind == "uniform" else scale * fn(key, shape, jnp.float32)
    else:
        r = _host_rng(key)
        v = jnp.asarray((r.uniform(-scale, scale, shape) if kind == "uniform" else r.normal(0.0, scale, shape))
                        .astype(np.float32))
    param[...] = v


class Dense(nnx.Module):
    """``nn.Linear`` (kernel ``(in, out)``), initialised as MMDetection's box head: ``xavier``
    (uniform, the shared fcs) or Normal with ``std``; bias 0."""

    def __init__(self, din: int, dout: int, init: str | float, *, rngs: nnx.Rngs):
        lin = Linear(din, dout, rngs=rngs)
        self.kernel, self.bias = lin.kernel, lin.bias
        if init == "xavier":
            _draw(self.kernel, rngs.params(), "uniform", math.sqrt(6.0 / (din + dout)))
        else:
            _draw(self.kernel, rngs.params(), "normal", float(init))

    def __call__(self, x: Array) -> Array:
        return x @ self.kernel[...].astype(x.dtype) + self.bias[...].astype(x.dtype)


class ConvTranspose2x2(nnx.Module):
    """``nn.ConvTranspose2d(cin, cout, 2, stride=2)``: ``out[2i+a, 2j+b, o] = bias[o] +
    sum_c x[i, j, c] * W[c, o, a, b]``. The kernel is stored ``(2, 2, cout, cin)``, the OIHW -> HWIO
    transpose of PyTorch's ``(cin, cout, 2, 2)``, so that conversion treats it as any conv.
    Init Kaiming normal, fan_out (PyTorch's: ``cin * 4`` for this weight), ReLU gain; bias 0."""

    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(jnp.zeros((2, 2, cout, cin), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))
        _draw(self.kernel, rngs.params(), "normal", math.sqrt(2.0 / (cin * 4)))

    def __call__(self, x: Array) -> Array:
        n, h, w, _ = x.shape
        k = self.kernel[...].astype(x.dtype)
        y = jnp.einsum("nijc,aboc->niajbo", x, k).reshape(n, 2 * h, 2 * w, k.shape[2])
        return y + self.bias[...].astype(x.dtype)


class TransConvModule(nnx.Module):
    """MMCV's ConvModule around a transposed conv (``.conv``), as ``neck.extra_trans_convs.0``."""

    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
        self.conv = ConvTranspose2x2(cin, cout, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.conv(x)


class MaskFPN(nnx.Module):
    """``LSNetFPN`` with one extra FINER level: lateral 1x1 convs, top-down nearest upsampling and
    addition, a 3x3 conv per backbone level, and P2 = ``extra_fpn_convs[0]`` (3x3) of
    ``extra_trans_convs[0]`` (2x2 stride 2) of the top-down stride-8 lateral. Outputs P2..P6.
    Convs Xavier-uniform, bias 0; the transposed conv Kaiming (it is no ``nn.Conv2d``)."""

    def __init__(self, in_channels: tuple[int, ...], out_channels: int, *, impl: str, rngs: nnx.Rngs):
        self.lateral_convs = nnx.List([ConvModule(c, out_channels, 1, impl=impl, rngs=rngs) for c in in_channels])
        self.fpn_convs = nnx.List([ConvModule(out_channels, out_channels, 3, impl=impl, rngs=rngs)
                                   for _ in in_channels])
        self.extra_trans_convs = nnx.List([TransConvModule(out_channels, out_channels, rngs=rngs)])
        self.extra_fpn_convs = nnx.List([ConvModule(out_channels, out_channels, 3, impl=impl, rngs=rngs)])

    def __call__(self, feats: list[Array]) -> list[Array]:
        lat = [conv(x) for conv, x in zip(self.lateral_convs, feats)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + resize_nearest(lat[i], lat[i - 1].shape[1:3])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, lat)]
        return [self.extra_fpn_convs[0](self.extra_trans_convs[0](lat[0]))] + outs


class RPNHead(nnx.Module):
    """MMDetection's ``RPNHead``: 3x3 ``rpn_conv`` + ReLU, 1x1 ``rpn_cls`` (A sigmoid logits) and
    ``rpn_reg`` (A x 4 deltas); Normal(0, 0.01), bias 0."""

    def __init__(self, cfg: MaskRCNNConfig, *, impl: str, rngs: nnx.Rngs):
        c = cfg.neck_channels
        self.rpn_conv = Conv(c, c, 3, 1, 1, use_bias=True, impl=impl, rngs=rngs)
        self.rpn_cls = Conv(c, cfg.num_anchors, 1, use_bias=True, impl=impl, rngs=rngs)
        self.rpn_reg = Conv(c, cfg.num_anchors * 4, 1, use_bias=True, impl=impl, rngs=rngs)
        for conv in (self.rpn_conv, self.rpn_cls, self.rpn_reg):
            _init_kernel(conv, rngs.params(), "normal")

    def __call__(self, x: Array) -> tuple[Array, Array]:
        x = jax.nn.relu(self.rpn_conv(x))
        return self.rpn_cls(x), self.rpn_reg(x)


class BBoxHead(nnx.Module):
    """``Shared2FCBBoxHead``: the 7x7 RoI feature flattened in PyTorch's (C, H, W) order, two fcs with
    ReLU, ``fc_cls`` (classes + 1, background last) and ``fc_reg`` (classes x 4, class-specific)."""

    def __init__(self, cfg: MaskRCNNConfig, *, rngs: nnx.Rngs):
        din = cfg.neck_channels * cfg.roi_size ** 2
        self.shared_fcs = nnx.List([Dense(din, cfg.fc_channels, "xavier", rngs=rngs),
                                    Dense(cfg.fc_channels, cfg.fc_channels, "xavier", rngs=rngs)])
        self.fc_cls = Dense(cfg.fc_channels, cfg.num_classes + 1, 0.01, rngs=rngs)
        self.fc_reg = Dense(cfg.fc_channels, cfg.num_classes * 4, 0.001, rngs=rngs)

    def __call__(self, roi_feats: Array) -> tuple[Array, Array]:
        x = jnp.swapaxes(roi_feats.reshape(roi_feats.shape[0], -1, roi_feats.shape[-1]), 1, 2)  # (R, C, HW)
        x = x.reshape(x.shape[0], -1)
        for fc in self.shared_fcs:
            x = jax.nn.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)


class MaskHead(nnx.Module):
    """``FCNMaskHead``: 4 x [3x3 conv, ReLU], 2x2 stride-2 transposed ``upsample``, ReLU, 1x1
    ``conv_logits`` (one channel per class). Every conv Kaiming normal fan_out, bias 0."""

    def __init__(self, cfg: MaskRCNNConfig, *, impl: str, rngs: nnx.Rngs):
        c = cfg.neck_channels
        convs = [ConvModule(c, c, 3, impl=impl, rngs=rngs) for _ in range(cfg.mask_convs)]
        for m in convs:
            _init_kernel(m.conv, rngs.params(), "kaiming")
        self.convs = nnx.List(convs)
        self.upsample = ConvTranspose2x2(c, c, rngs=rngs)
        self.conv_logits = Conv(c, cfg.num_classes, 1, use_bias=True, impl=impl, rngs=rngs)
        _init_kernel(self.conv_logits, rngs.params(), "kaiming")

    def __call__(self, roi_feats: Array) -> Array:
        x = roi_feats
        for m in self.convs:
            x = jax.nn.relu(m(x))
        return self.conv_logits(jax.nn.relu(self.upsample(x)))


class RoIHead(nnx.Module):
    def __init__(self, cfg: MaskRCNNConfig, *, impl: str, rngs: nnx.Rngs):
        self.bbox_head = BBoxHead(cfg, rngs=rngs)
        self.mask_head = MaskHead(cfg, impl=impl, rngs=rngs)


class MaskRCNN(nnx.Module):
    """LSNet + Mask R-CNN on NHWC normalised images (H, W multiples of 32).

    ``model(x)`` returns the RPN's ``(cls_scores, bbox_preds)``, each a tuple of the 5 levels
    (strides 4 ... 64), NHWC float32: objectness logit of anchor ``a`` at channel ``a``, its deltas
    at ``a * 4 + k``. ``features(x)`` gives the levels themselves; ``bbox_forward(feats, boxes)`` and
    ``mask_forward(feats, boxes)`` run the RoI heads on ``boxes (N, R, 4)`` (input pixels) per image.
    In training mode the backbone's BatchNorms stay frozen, as the official backbone.
    """

    def __init__(self, cfg: MaskRCNNConfig, *, deploy: bool = False, dtype: jnp.dtype = jnp.float32,
                 rngs: nnx.Rngs):
        if cfg.roi_align not in ("window", "points"):
            raise ValueError(f"roi_align={cfg.roi_align!r}: choose 'window' (fast) or 'points' (reference)")
        self.cfg, self.deploy, self.dtype = cfg, deploy, dtype
        self.backbone = LSNet(cfg.backbone, deploy=deploy, dtype=dtype, rngs=rngs)
        self.impl = self.backbone.impl
        for _, m in nnx.iter_modules(self.backbone):
            if isinstance(m, BatchNorm):
                m.frozen = cfg.freeze_backbone_bn
        self.neck = MaskFPN(cfg.backbone.embed_dim, cfg.neck_channels, impl=self.impl, rngs=rngs)
        self.rpn_head = RPNHead(cfg, impl=self.impl, rngs=rngs)
        self.roi_head = RoIHead(cfg, impl=self.impl, rngs=rngs)

    def deploy_twin(self) -> MaskRCNN:
        """The abstract deploy form of this model, for ``models.fold``."""
        cfg = dataclasses.replace(self.cfg, backbone=dataclasses.replace(self.cfg.backbone, impl=self.impl))
        return abstract(functools.partial(MaskRCNN, cfg, deploy=True, dtype=self.dtype))

    def features(self, x: Array) -> list[Array]:
        """The FPN levels P2..P6 (strides 4 ... 64), NHWC."""
        h, w = x.shape[1:3]
        if h % 32 or w % 32:
            raise ValueError(f"the detector takes images whose sides are multiples of 32, got {h}x{w}; pad them "
                             "bottom/right with 0 after normalising (the official Pad(size_divisor=32))")
        return self.neck(self.backbone.forward_intermediates(x))

    def rpn(self, feats: list[Array]) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
        out = [self.rpn_head(f) for f in feats]
        f32 = lambda a: a.astype(jnp.promote_types(a.dtype, jnp.float32))  # noqa: E731
        return tuple(f32(c) for c, _ in out), tuple(f32(r) for _, r in out)

    def __call__(self, x: Array) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
        return self.rpn(self.features(x))

    def roi_features(self, feats: list[Array], boxes: Array, out: int) -> tuple[Array, Array]:
        """``(N, R, out, out, C)`` RoIAligned features of ``boxes (N, R, 4)`` on their levels (the
        ``finest_scale`` mapping over P2..P5), and ``(N, R)`` whether each was exact (always True
        for the points form). Every image's levels go into one gather: level ``l`` of image ``n``
        is map ``n * 4 + l``."""
        n, r = boxes.shape[:2]
        maps = [feats[lv][i] for i in range(n) for lv in range(len(ROI_STRIDES))]
        levels = roi_align.roi_levels(boxes, len(ROI_STRIDES)) + len(ROI_STRIDES) * jnp.arange(n)[:, None]
        strides = ROI_STRIDES * n
        flat_boxes, flat_levels = boxes.reshape(-1, 4), levels.reshape(-1)
        if self.cfg.roi_align == "points":
            y = roi_align.roi_align_points(maps, flat_boxes, flat_levels, strides, out, self.cfg.roi_samples)
            fits = jnp.ones(flat_levels.shape, bool)
        else:
            y, fits = roi_align.roi_align_window(maps, flat_boxes, flat_levels, strides, out, self.cfg.roi_window,
                                                 self.cfg.roi_chunk)
        return y.reshape(n, r, out, out, -1), fits.reshape(n, r)

    def bbox_forward(self, feats: list[Array], boxes: Array) -> tuple[Array, Array]:
        """The box head on ``boxes (N, R, 4)``: ``cls_score (N, R, classes + 1)`` and ``bbox_pred
        (N, R, classes * 4)``, float32."""
        roi, _ = self.roi_features(feats, boxes, self.cfg.roi_size)
        n, r = boxes.shape[:2]
        cls, reg = self.roi_head.bbox_head(roi.reshape(n * r, *roi.shape[2:]))
        return cls.reshape(n, r, -1).astype(jnp.float32), reg.reshape(n, r, -1).astype(jnp.float32)

    def mask_forward(self, feats: list[Array], boxes: Array) -> Array:
        """The mask head on ``boxes (N, R, 4)``: ``(N, R, 28, 28, classes)`` logits, float32."""
        roi, _ = self.roi_features(feats, boxes, self.cfg.mask_roi_size)
        n, r = boxes.shape[:2]
        logits = self.roi_head.mask_head(roi.reshape(n * r, *roi.shape[2:]))
        return logits.reshape(n, r, *logits.shape[1:]).astype(jnp.float32)


VARIANTS = {f"{base}_maskrcnn": base for base in ("lsnet_t", "lsnet_s", "lsnet_b")}

# Published COCO val2017 box / mask AP (1x schedule); images resized to fit (1333, 800), padded to 32.
DEFAULT_CFGS: dict[str, dict] = {
    name: dict(input_size=(800, 1344, 3), mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, num_classes=80,
               test_scale=(1333, 800), size_divisor=32, box_ap=box, mask_ap=mask, task="detection")
    for name, box, mask in zip(VARIANTS, (35.0, 37.4, 40.8), (32.7, 34.8, 37.8))
}


def maskrcnn_config(name: str, num_classes: int = 80, **overrides) -> MaskRCNNConfig:
    """The config of ``lsnet_{t,s,b}_maskrcnn``; ``overrides`` set fields of the backbone's
    ``LSNetConfig`` (impl, depth, ...) or of ``MaskRCNNConfig`` (roi_align, roi_window, ...)."""
    return dense_config(MaskRCNNConfig, name, VARIANTS, "detector", num_classes, overrides)


# ----- the family (lsnet_jax.models.registry) -----

def build(name: str, num_classes: int, img_size: int, dtype, rngs: nnx.Rngs,
          backbone_pretrained: str | os.PathLike | None = None, **config) -> MaskRCNN:
    """The detector (``img_size`` plays no part); ``backbone_pretrained`` initialises the backbone
    from ImageNet classifier weights as the official config's ``pretrained=``."""
    del img_size
    model = MaskRCNN(maskrcnn_config(name, num_classes, **config), dtype=dtype, rngs=rngs)
    if backbone_pretrained is not None:
        load_backbone(model.backbone, backbone_pretrained, name, VARIANTS[name])
    return model


def _is_class_head(path) -> bool:
    return tuple(path[:3]) in (("roi_head", "bbox_head", "fc_cls"), ("roi_head", "bbox_head", "fc_reg"),
                               ("roi_head", "mask_head", "conv_logits"))


def adapt(flat: Flat, model: MaskRCNN, ckpt_classes: int | None) -> Flat:
    """New ``fc_cls``, ``fc_reg`` and ``conv_logits`` where the class count differs."""
    return fresh_heads(flat, model, ckpt_classes, model.cfg.num_classes, _is_class_head, "class heads")


FAMILY = Family(DEFAULT_CFGS, build, adapt, ("roi_head", "mask_head", "conv_logits", "kernel"))
