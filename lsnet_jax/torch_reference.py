"""A PyTorch LSNet written from ``LSNET_SPEC.md`` with the official state-dict names (NCHW).

An independent implementation to prove conversion and parity against (tests, ``convert_torch.py
--check`` and the benchmark's ``--torch``); it needs no Triton: SKA is pure torch (nine shifted
multiply-adds, no loop over pixels). Requires the ``[torch]`` extra.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from torch.nn import functional as F


class Conv2d_BN(nn.Sequential):
    def __init__(self, a: int, b: int, ks: int = 1, stride: int = 1, pad: int = 0, groups: int = 1,
                 bn_weight_init: float = 1.0):
        super().__init__()
        self.add_module("c", nn.Conv2d(a, b, ks, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(b))
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.constant_(self.bn.bias, 0)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        c, bn = self.c, self.bn
        s = bn.weight / (bn.running_var + bn.eps).sqrt()
        m = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, groups=c.groups)
        m.weight.copy_(c.weight * s[:, None, None, None])
        m.bias.copy_(bn.bias - bn.running_mean * s)
        return m


class BN_Linear(nn.Sequential):
    def __init__(self, a: int, b: int, std: float = 0.02):
        super().__init__()
        self.add_module("bn", nn.BatchNorm1d(a))
        self.add_module("l", nn.Linear(a, b))
        nn.init.trunc_normal_(self.l.weight, std=std, a=-2.0, b=2.0)
        nn.init.constant_(self.l.bias, 0)

    @torch.no_grad()
    def fuse(self) -> nn.Linear:
        bn, l = self.bn, self.l
        s = bn.weight / (bn.running_var + bn.eps).sqrt()
        shift = bn.bias - bn.running_mean * s
        m = nn.Linear(l.in_features, l.out_features)
        m.weight.copy_(l.weight * s[None, :])
        m.bias.copy_(l.weight @ shift + l.bias)
        return m


class Residual(nn.Module):
    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x):
        return x + self.m(x)


class FFN(nn.Module):
    def __init__(self, ed: int, h: int):
        super().__init__()
        self.pw1 = Conv2d_BN(ed, h)
        self.pw2 = Conv2d_BN(h, ed, bn_weight_init=0.0)

    def forward(self, x):
        return self.pw2(F.relu(self.pw1(x)))


class RepVGGDW(nn.Module):
    def __init__(self, ed: int):
        super().__init__()
        self.conv = Conv2d_BN(ed, ed, 3, 1, 1, groups=ed)
        self.conv1 = Conv2d_BN(ed, ed, 1, 1, 0, groups=ed)

    def forward(self, x):
        return self.conv(x) + self.conv1(x) + x


class SqueezeExcite(nn.Module):
    def __init__(self, ch: int, rd_ratio: float = 0.25, divisor: int = 8):
        super().__init__()
        rd = max(divisor, int(ch * rd_ratio + divisor / 2) // divisor * divisor)
        self.fc1 = nn.Conv2d(ch, rd, 1)
        self.fc2 = nn.Conv2d(rd, ch, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


def ska_torch(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """SKA: x (B, C, H, W), w (B, G, 9, H, W); channel c uses kernel c mod G (kernels tiled)."""
    b, c, h, wd = x.shape
    g = w.shape[1]
    xp = F.pad(x, (1, 1, 1, 1)).view(b, c // g, g, h + 2, wd + 2)
    out = torch.zeros(b, c // g, g, h, wd, dtype=x.dtype, device=x.device)
    for i in range(3):
        for j in range(3):
            out += xp[..., i:i + h, j:j + wd] * w[:, None, :, 3 * i + j]
    return out.view(b, c, h, wd)


class LKP(nn.Module):
    def __init__(self, dim: int, lks: int = 7, sks: int = 3, groups: int = 8):
        super().__init__()
        self.cv1 = Conv2d_BN(dim, dim // 2)
        self.cv2 = Conv2d_BN(dim // 2, dim // 2, lks, 1, (lks - 1) // 2, groups=dim // 2)
        self.cv3 = Conv2d_BN(dim // 2, dim // 2)
        self.cv4 = nn.Conv2d(dim // 2, sks * sks * dim // groups, 1)
        self.norm = nn.GroupNorm(dim // groups, sks * sks * dim // groups)
        self.g, self.taps = dim // groups, sks * sks

    def forward(self, x):
        x = F.relu(self.cv3(self.cv2(F.relu(self.cv1(x)))))
        w = self.norm(self.cv4(x))
        return w.view(w.shape[0], self.g, self.taps, w.shape[2], w.shape[3])


class LSConv(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.lkp = LKP(dim)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x):
        return self.bn(ska_torch(x, self.lkp(x))) + x


class Attention(nn.Module):
    def __init__(self, dim: int, key_dim: int, num_heads: int, attn_ratio: float, resolution: int,
                 resize_bias: bool = False):
        super().__init__()
        self.nh, self.kd, self.resize_bias = num_heads, key_dim, resize_bias
        self.d = int(attn_ratio * key_dim)
        self.qkv = Conv2d_BN(dim, 2 * num_heads * key_dim + num_heads * self.d)
        self.dw = Conv2d_BN(num_heads * key_dim, num_heads * key_dim, 3, 1, 1, groups=num_heads * key_dim)
        self.proj = nn.Sequential(nn.ReLU(), Conv2d_BN(num_heads * self.d, dim, bn_weight_init=0.0))
        pts = list(itertools.product(range(resolution), range(resolution)))
        table: dict = {}
        idx = [table.setdefault((abs(a[0] - b[0]), abs(a[1] - b[1])), len(table)) for a in pts for b in pts]
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(table)))
        self.register_buffer("attention_bias_idxs", torch.LongTensor(idx).view(len(pts), len(pts)))

    def forward(self, x):
        b, _, h, w = x.shape
        n = h * w
        q, k, v = self.qkv(x).split([self.nh * self.kd, self.nh * self.kd, self.nh * self.d], dim=1)
        q = self.dw(q).reshape(b, self.nh, self.kd, n)
        k = k.reshape(b, self.nh, self.kd, n)
        v = v.reshape(b, self.nh, self.d, n)
        bias = self.attention_biases[:, self.attention_bias_idxs]
        if self.resize_bias:  # the segmentation backbone: the bias resized as an image to N x N
            bias = F.interpolate(bias[None], size=(n, n), mode="bicubic", align_corners=False)[0]
        attn = (q.transpose(-2, -1) @ k * self.kd ** -0.5 + bias).softmax(-1)
        return self.proj((v @ attn.transpose(-2, -1)).reshape(b, -1, h, w))


class Block(nn.Module):
    def __init__(self, ed: int, kd: int, nh: int, ar: float, resolution: int, stage: int, depth: int,
                 resize_bias: bool = False):
        super().__init__()
        if depth % 2 == 0:
            self.mixer = RepVGGDW(ed)
            self.se = SqueezeExcite(ed, 0.25)
        else:
            self.se = nn.Identity()
            attn = Attention(ed, kd, nh, ar, resolution, resize_bias)
            self.mixer = Residual(attn) if stage == 3 else LSConv(ed)
        self.ffn = Residual(FFN(ed, 2 * ed))

    def forward(self, x):
        return self.ffn(self.se(self.mixer(x)))


class LSNet(nn.Module):
    """The classifier; with ``backbone=True`` the segmentation backbone: attention built for a 14x14
    grid with its bias resized to the real token count, no head, ``forward`` returns the four stage
    outputs."""

    def __init__(self, embed_dim, depth, num_heads=(3, 3, 3, 4), key_dim=16, img_size=224, patch_size=8,
                 in_chans=3, num_classes=1000, distillation=False, backbone=False):
        super().__init__()
        self.backbone = backbone
        e = embed_dim
        self.patch_embed = nn.Sequential(
            Conv2d_BN(in_chans, e[0] // 4, 3, 2, 1), nn.ReLU(),
            Conv2d_BN(e[0] // 4, e[0] // 2, 3, 2, 1), nn.ReLU(),
            Conv2d_BN(e[0] // 2, e[0], 3, 2, 1))
        res = img_size // patch_size
        for i in range(4):
            seq = nn.Sequential()
            if i > 0:
                seq.append(Conv2d_BN(e[i - 1], e[i - 1], 3, 2, 1, groups=e[i - 1]))
                seq.append(Conv2d_BN(e[i - 1], e[i], 1))
                res = (res - 1) // 2 + 1
            for d in range(depth[i]):
                seq.append(Block(e[i], key_dim, num_heads[i], e[i] / (key_dim * num_heads[i]),
                                 14 if backbone else res, i, d, resize_bias=backbone))
            setattr(self, f"blocks{i + 1}", seq)
        self.distillation = distillation
        if backbone:
            return
        self.head = BN_Linear(e[-1], num_classes)
        if distillation:
            self.head_dist = BN_Linear(e[-1], num_classes)

    def forward(self, x):
        x = self.patch_embed(x)
        if self.backbone:
            outs = []
            for i in range(1, 5):
                x = getattr(self, f"blocks{i}")(x)
                outs.append(x)
            return outs
        x = self.blocks4(self.blocks3(self.blocks2(self.blocks1(x))))
        x = x.mean((2, 3))
        if not self.distillation:
            return self.head(x)
        out = self.head(x), self.head_dist(x)
        return out if self.training else (out[0] + out[1]) / 2


def fuse_(module: nn.Module) -> nn.Module:
    """Fold ConvBN, RepVGGDW and BN_Linear in place (for a fair folded-BN torch benchmark)."""
    for name, child in list(module.named_children()):
        if isinstance(child, Conv2d_BN):
            setattr(module, name, child.fuse())
        elif isinstance(child, BN_Linear):
            setattr(module, name, child.fuse())
        elif isinstance(child, RepVGGDW):
            conv, conv1 = child.conv.fuse(), child.conv1.fuse()
            with torch.no_grad():
                conv.weight[:, :, 1, 1] += conv1.weight[:, :, 0, 0] + 1.0
                conv.bias += conv1.bias
            setattr(module, name, conv)
        else:
            fuse_(child)
    return module


_VARIANTS = {
    "lsnet_t": ((64, 128, 256, 384), (0, 2, 8, 10)),
    "lsnet_s": ((96, 192, 320, 448), (1, 2, 8, 10)),
    "lsnet_b": ((128, 256, 384, 512), (4, 6, 8, 10)),
}


def create_torch_model(name: str, num_classes: int = 1000, img_size: int = 224) -> LSNet:
    """The reference for ``lsnet_{t,s,b}[_distill]``, in eval mode."""
    base = name.removesuffix("_distill")
    if base not in _VARIANTS:
        raise ValueError(f"unknown model {name!r}")
    e, d = _VARIANTS[base]
    return LSNet(e, d, num_classes=num_classes, img_size=img_size, distillation=name.endswith("_distill")).eval()


# ----- Semantic FPN (SEGMENTATION_SPEC.md): LSNetFPN neck, MMSegmentation's FPNHead -----

class ConvModule(nn.Module):
    """MMCV's ConvModule: ``conv`` (+ ``bn`` + ReLU when ``norm``)."""

    def __init__(self, cin: int, cout: int, ks: int, norm: bool):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, ks, padding=ks // 2, bias=not norm)
        self.bn = nn.BatchNorm2d(cout) if norm else None

    def forward(self, x):
        x = self.conv(x)
        return x if self.bn is None else F.relu(self.bn(x))


class Upsample2x(nn.Module):
    def forward(self, x):
        return F.interpolate(x, size=(2 * x.shape[2], 2 * x.shape[3]), mode="bilinear", align_corners=False)


class LSNetFPN(nn.Module):
    def __init__(self, in_channels, out_channels: int = 256):
        super().__init__()
        self.lateral_convs = nn.ModuleList([ConvModule(c, out_channels, 1, False) for c in in_channels])
        self.fpn_convs = nn.ModuleList([ConvModule(out_channels, out_channels, 3, False) for _ in in_channels])

    def forward(self, feats):
        lat = [conv(x) for conv, x in zip(self.lateral_convs, feats)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:], mode="nearest")
        return [conv(x) for conv, x in zip(self.fpn_convs, lat)]


class FPNHead(nn.Module):
    def __init__(self, in_channels: int = 256, channels: int = 128, num_classes: int = 150,
                 strides=(4, 8, 16, 32)):
        super().__init__()
        self.scale_heads = nn.ModuleList()
        for i, s in enumerate(strides):
            n = max(1, int(math.log2(s) - math.log2(strides[0])))
            layers = []
            for k in range(n):
                layers.append(ConvModule(in_channels if k == 0 else channels, channels, 3, True))
                if s != strides[0]:
                    layers.append(Upsample2x())
            self.scale_heads.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout2d(0.1)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats):
        out = self.scale_heads[0](feats[0])
        for i in range(1, len(feats)):
            out = out + F.interpolate(self.scale_heads[i](feats[i]), size=out.shape[2:], mode="bilinear",
                                      align_corners=False)
        return self.conv_seg(self.dropout(out))


class SemanticFPN(nn.Module):
    def __init__(self, embed_dim, depth, num_classes: int = 150):
        super().__init__()
        self.backbone = LSNet(embed_dim, depth, backbone=True)
        self.neck = LSNetFPN(embed_dim)
        self.decode_head = FPNHead(num_classes=num_classes)

    def forward(self, x):
        """The decode head's logits at 1/8 of the input."""
        return self.decode_head(self.neck(self.backbone(x)))


def create_torch_segmenter(name: str, num_classes: int = 150) -> SemanticFPN:
    """The reference for ``lsnet_{t,s,b}_semfpn``, in eval mode."""
    base = name.removesuffix("_semfpn")
    if base not in _VARIANTS or not name.endswith("_semfpn"):
        raise ValueError(f"unknown segmenter {name!r}")
    e, d = _VARIANTS[base]
    return SemanticFPN(e, d, num_classes).eval()


def import_timm():
    """``import timm`` (the test extra pins 0.5.4, the recipe's version), beside the CPU build of
    torch. timm imports torchvision, whose PyPI wheel is built for CUDA: beside a CPU torch its
    compiled operators (``torchvision::nms`` ...) do not load and its import fails while
    registering their meta kernels. Only torchvision's Python transforms are used (timm's
    transforms, RandomResizedCrop), so those registrations are skipped during the import; any
    use of torchvision's compiled operators would still fail loudly."""
    import sys

    if "timm" in sys.modules:
        return sys.modules["timm"]
    try:
        import torchvision  # noqa: F401
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        register_fake = torch.library.register_fake

        def skip_torchvision_ops(op, func=None, *args, **kwargs):
            if isinstance(op, str) and op.startswith("torchvision::"):
                return (lambda f: f) if func is None else func
            return register_fake(op, func, *args, **kwargs)

        torch.library.register_fake = skip_torchvision_ops
        try:
            import torchvision  # noqa: F401, F811
        finally:
            torch.library.register_fake = register_fake
    import timm

    return timm


# ----- RetinaNet (DETECTION_SPEC.md): LSNetFPN with an extra level on the input, RetinaHead -----

class RetinaFPN(LSNetFPN):
    """``LSNetFPN`` with ``add_extra_convs='on_input'``: ``fpn_convs[4]`` (3x3, stride 2) on the raw
    last backbone stage."""

    def __init__(self, in_channels, out_channels: int = 256):
        super().__init__(in_channels, out_channels)
        extra = ConvModule(in_channels[-1], out_channels, 3, False)
        extra.conv = nn.Conv2d(in_channels[-1], out_channels, 3, stride=2, padding=1)
        self.fpn_convs.append(extra)

    def forward(self, feats):
        lat = [conv(x) for conv, x in zip(self.lateral_convs, feats)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:], mode="nearest")
        outs = [conv(x) for conv, x in zip(self.fpn_convs[:len(lat)], lat)]
        return outs + [self.fpn_convs[len(lat)](feats[-1])]


class RetinaHead(nn.Module):
    def __init__(self, num_classes: int = 80, in_channels: int = 256, feat_channels: int = 256,
                 stacked_convs: int = 4, num_anchors: int = 9):
        super().__init__()
        self.cls_convs = nn.ModuleList([ConvModule(in_channels if i == 0 else feat_channels, feat_channels, 3, False)
                                        for i in range(stacked_convs)])
        self.reg_convs = nn.ModuleList([ConvModule(in_channels if i == 0 else feat_channels, feat_channels, 3, False)
                                        for i in range(stacked_convs)])
        self.retina_cls = nn.Conv2d(feat_channels, num_anchors * num_classes, 3, padding=1)
        self.retina_reg = nn.Conv2d(feat_channels, num_anchors * 4, 3, padding=1)

    def forward(self, x):
        c = r = x
        for conv in self.cls_convs:
            c = F.relu(conv(c))
        for conv in self.reg_convs:
            r = F.relu(conv(r))
        return self.retina_cls(c), self.retina_reg(r)


class RetinaNet(nn.Module):
    def __init__(self, embed_dim, depth, num_classes: int = 80):
        super().__init__()
        self.backbone = LSNet(embed_dim, depth, backbone=True)
        self.neck = RetinaFPN(embed_dim)
        self.bbox_head = RetinaHead(num_classes)

    def forward(self, x):
        """(cls_scores, bbox_preds): per level (strides 8 ... 128) NCHW logits and deltas."""
        out = [self.bbox_head(f) for f in self.neck(self.backbone(x))]
        return [c for c, _ in out], [r for _, r in out]


def create_torch_retinanet(name: str, num_classes: int = 80, depth=None) -> RetinaNet:
    """The reference for ``lsnet_{t,s,b}_retinanet`` (``depth``: a shallower backbone), in eval mode."""
    base = name.removesuffix("_retinanet")
    if base not in _VARIANTS or not name.endswith("_retinanet"):
        raise ValueError(f"unknown detector {name!r}")
    e, d = _VARIANTS[base]
    return RetinaNet(e, depth or d, num_classes).eval()


def retina_anchors(h: int, w: int, stride: int, octave_base_scale: float = 4.0, scales_per_octave: int = 3,
                   ratios=(0.5, 1.0, 2.0)) -> torch.Tensor:
    """MMDetection's AnchorGenerator for one level, ``(h*w*A, 4)`` float32 in (y, x, a) order:
    base size = stride, anchors centred on each cell's top-left corner (center_offset 0)."""
    scales = torch.tensor([octave_base_scale * 2 ** (i / scales_per_octave) for i in range(scales_per_octave)])
    ratios_t = torch.tensor(ratios)
    h_ratios = torch.sqrt(ratios_t)
    w_ratios = 1 / h_ratios
    ws = (stride * w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (stride * h_ratios[:, None] * scales[None, :]).reshape(-1)
    base = torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=-1)
    sx = torch.arange(0, w) * stride
    sy = torch.arange(0, h) * stride
    yy, xx = torch.meshgrid(sy.float(), sx.float(), indexing="ij")
    shifts = torch.stack([xx.reshape(-1), yy.reshape(-1), xx.reshape(-1), yy.reshape(-1)], dim=-1)
    return (base[None, :, :] + shifts[:, None, :]).reshape(-1, 4)


def delta2bbox(anchors: torch.Tensor, deltas: torch.Tensor, max_shape, stds=(1.0, 1.0, 1.0, 1.0),
               wh_ratio_clip: float = 16 / 1000) -> torch.Tensor:
    """DeltaXYWHBBoxCoder.decode: deltas (dx, dy, dw, dh) on anchors, dw/dh clamped, boxes clamped to
    ``max_shape`` (h, w): the resized image before padding."""
    d = deltas * deltas.new_tensor(stds)
    dx, dy, dw, dh = d.unbind(-1)
    r = abs(math.log(wh_ratio_clip))
    dw, dh = dw.clamp(-r, r), dh.clamp(-r, r)
    px, py = (anchors[:, 0] + anchors[:, 2]) * 0.5, (anchors[:, 1] + anchors[:, 3]) * 0.5
    pw, ph = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    gx, gy = px + pw * dx, py + ph * dy
    gw, gh = pw * dw.exp(), ph * dh.exp()
    x1, y1, x2, y2 = gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5, gy + gh * 0.5
    h, w = max_shape
    return torch.stack([x1.clamp(0, w), y1.clamp(0, h), x2.clamp(0, w), y2.clamp(0, h)], dim=-1)


def nms_reference(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """MMCV's greedy NMS (offset 0): walk the boxes by descending score, drop every later box whose
    IoU with a kept one is above the threshold. Returns the kept indices in that order."""
    order = torch.sort(scores, descending=True, stable=True).indices
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    keep = []
    for pos, i in enumerate(order.tolist()):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[pos + 1:]
        xx1 = torch.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = torch.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = torch.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = torch.minimum(boxes[i, 3], boxes[rest, 3])
        inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
        iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest[iou > iou_threshold]] = True
    return torch.tensor(keep, dtype=torch.long)


def retina_postprocess(cls_scores, bbox_preds, img_shape, scale_factor, score_thr: float = 0.05,
                       nms_pre: int = 1000, iou_threshold: float = 0.5, max_per_img: int = 100,
                       nms=nms_reference):
    """MMDetection 2.28's RetinaHead test path for one image (levels NCHW with batch 1): per level
    the (anchor, class) pairs above ``score_thr``, the top ``nms_pre`` of them, decoded; the levels
    joined, divided by ``scale_factor``; class-aware NMS (mmcv ``batched_nms``: boxes offset by
    label * (max coordinate + 1)); the first ``max_per_img``. Returns (boxes (K, 4), scores, labels).
    ``nms(boxes, scores, iou_threshold)``: the kept indices by descending score (the greedy loop
    here; ``torchvision.ops.nms``, mmcv's compiled kernel's twin, for timing)."""
    all_boxes, all_scores, all_labels = [], [], []
    for level, (cls, reg) in enumerate(zip(cls_scores, bbox_preds)):
        _, ca, h, w = cls.shape
        num_classes = ca // 9
        scores = cls[0].permute(1, 2, 0).reshape(-1, num_classes).sigmoid()
        deltas = reg[0].permute(1, 2, 0).reshape(-1, 4)
        anchors = retina_anchors(h, w, 8 * 2 ** level).to(cls.device)
        valid = scores > score_thr
        kept = scores[valid]
        idxs = torch.nonzero(valid)
        k = min(nms_pre, len(kept))
        kept, order = kept.sort(descending=True)
        kept, idxs = kept[:k], idxs[order[:k]]
        anchor_idx, labels = idxs[:, 0], idxs[:, 1]
        all_boxes.append(delta2bbox(anchors[anchor_idx], deltas[anchor_idx], img_shape))
        all_scores.append(kept)
        all_labels.append(labels)
    boxes = torch.cat(all_boxes) / torch.as_tensor(scale_factor, dtype=torch.float32, device=cls_scores[0].device)
    scores, labels = torch.cat(all_scores), torch.cat(all_labels)
    if len(boxes) == 0:
        return boxes, scores, labels
    offsets = labels.to(boxes) * (boxes.max() + 1)
    keep = nms(boxes + offsets[:, None], scores, iou_threshold)[:max_per_img]
    return boxes[keep], scores[keep], labels[keep]



# ----- Mask R-CNN (DETECTION_SPEC.md): LSNetFPN with a finer level, RPN, RoIAlign, box and mask heads -----

def roi_align_reference(x: torch.Tensor, rois: torch.Tensor, output_size: int, spatial_scale: float
                        ) -> torch.Tensor:
    """MMCV's / torchvision's RoIAlign (``aligned=True``, ``sampling_ratio=0``, average), restated
    from the kernel's definition in plain torch, one RoI at a time with ITS sample count (no bound):
    ``x`` NCHW, ``rois (K, 5)`` as (batch index, x1, y1, x2, y2); differentiable in ``x`` by autograd
    (the same sums of sample weights torchvision's backward scatters). torchvision's compiled
    ``roi_align`` does not load beside the CPU torch build (its wheel is built for CUDA), hence this."""
    _, _, height, width = x.shape
    outs = []
    for roi in rois:
        b = int(roi[0])
        x1, y1, x2, y2 = (float(v) * spatial_scale - 0.5 for v in roi[1:])
        bin_h, bin_w = (y2 - y1) / output_size, (x2 - x1) / output_size
        gh, gw = max(math.ceil(bin_h), 0), max(math.ceil(bin_w), 0)
        count = max(gh * gw, 1)
        res = x.new_zeros((x.shape[1], output_size, output_size))
        if gh and gw:
            py = torch.arange(output_size, dtype=torch.float64)[:, None]
            iy = torch.arange(gh, dtype=torch.float64)[None]
            ix = torch.arange(gw, dtype=torch.float64)[None]
            ys = (y1 + py * bin_h + (iy + 0.5) * bin_h / gh).reshape(-1)  # (out * gh,)
            xs = (x1 + py * bin_w + (ix + 0.5) * bin_w / gw).reshape(-1)
            Y, X = torch.meshgrid(ys, xs, indexing="ij")
            vals = _bilinear(x[b], Y, X, height, width)  # (C, out * gh, out * gw)
            res = vals.reshape(x.shape[1], output_size, gh, output_size, gw).sum((2, 4)) / count
        outs.append(res)
    return torch.stack(outs) if outs else x.new_zeros((0, x.shape[1], output_size, output_size))


def _bilinear(img: torch.Tensor, y: torch.Tensor, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """torchvision's ``bilinear_interpolate`` at every (y, x): ``img (C, H, W)`` -> ``(C, *y.shape)``."""
    outside = (y < -1.0) | (y > height) | (x < -1.0) | (x > width)
    y, x = y.clamp(min=0), x.clamp(min=0)
    y_low, x_low = y.floor().long(), x.floor().long()
    y_edge, x_edge = y_low >= height - 1, x_low >= width - 1
    y_low, x_low = torch.where(y_edge, height - 1, y_low), torch.where(x_edge, width - 1, x_low)
    y_high = torch.where(y_edge, height - 1, y_low + 1)
    x_high = torch.where(x_edge, width - 1, x_low + 1)
    y, x = torch.where(y_edge, y_low.to(y), y), torch.where(x_edge, x_low.to(x), x)
    ly, lx = (y - y_low).to(img.dtype), (x - x_low).to(img.dtype)
    hy, hx = 1 - ly, 1 - lx
    v = (hy * hx * img[:, y_low, x_low] + hy * lx * img[:, y_low, x_high] + ly * hx * img[:, y_high, x_low]
         + ly * lx * img[:, y_high, x_high])
    return torch.where(outside, torch.zeros((), dtype=img.dtype), v)


def map_roi_levels(rois: torch.Tensor, num_levels: int = 4, finest_scale: float = 56.0) -> torch.Tensor:
    """SingleRoIExtractor.map_roi_levels on ``(K, 4)`` boxes."""
    scale = torch.sqrt((rois[:, 2] - rois[:, 0]) * (rois[:, 3] - rois[:, 1]))
    return torch.floor(torch.log2(scale / finest_scale + 1e-6)).clamp(min=0, max=num_levels - 1).long()


def roi_extract(feats, rois: torch.Tensor, output_size: int, strides=(4, 8, 16, 32)) -> torch.Tensor:
    """SingleRoIExtractor: each RoI (batch index, x1, y1, x2, y2) RoIAligned on its level."""
    levels = map_roi_levels(rois[:, 1:])
    out = feats[0].new_zeros((len(rois), feats[0].shape[1], output_size, output_size))
    for i, stride in enumerate(strides):
        sel = levels == i
        if sel.any():
            out[sel] = roi_align_reference(feats[i], rois[sel], output_size, 1.0 / stride)
    return out


class MaskFPN(LSNetFPN):
    """``LSNetFPN`` with ``num_extra_trans_convs=1``: P2 = 3x3 conv of a 2x2 stride-2 transposed conv
    of the top-down ``lat[0]``; outputs (P2, P3, P4, P5, P6)."""

    def __init__(self, in_channels, out_channels: int = 256):
        super().__init__(in_channels, out_channels)
        trans = ConvModule(out_channels, out_channels, 1, False)
        trans.conv = nn.ConvTranspose2d(out_channels, out_channels, 2, stride=2)
        self.extra_trans_convs = nn.ModuleList([trans])
        self.extra_fpn_convs = nn.ModuleList([ConvModule(out_channels, out_channels, 3, False)])

    def forward(self, feats):
        lat = [conv(x) for conv, x in zip(self.lateral_convs, feats)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[2:], mode="nearest")
        outs = [conv(x) for conv, x in zip(self.fpn_convs, lat)]
        return [self.extra_fpn_convs[0](self.extra_trans_convs[0](lat[0]))] + outs


class RPNHead(nn.Module):
    def __init__(self, channels: int = 256, num_anchors: int = 3):
        super().__init__()
        self.rpn_conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(channels, num_anchors, 1)
        self.rpn_reg = nn.Conv2d(channels, num_anchors * 4, 1)

    def forward(self, x):
        x = F.relu(self.rpn_conv(x))
        return self.rpn_cls(x), self.rpn_reg(x)


class Shared2FCBBoxHead(nn.Module):
    def __init__(self, num_classes: int = 80, channels: int = 256, roi: int = 7, fc: int = 1024):
        super().__init__()
        self.shared_fcs = nn.ModuleList([nn.Linear(channels * roi * roi, fc), nn.Linear(fc, fc)])
        self.fc_cls = nn.Linear(fc, num_classes + 1)
        self.fc_reg = nn.Linear(fc, num_classes * 4)

    def forward(self, x):
        x = x.flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)


class FCNMaskHead(nn.Module):
    def __init__(self, num_classes: int = 80, channels: int = 256):
        super().__init__()
        self.convs = nn.ModuleList([ConvModule(channels, channels, 3, False) for _ in range(4)])
        self.upsample = nn.ConvTranspose2d(channels, channels, 2, stride=2)
        self.conv_logits = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x):
        for conv in self.convs:
            x = F.relu(conv(x))
        return self.conv_logits(F.relu(self.upsample(x)))


class RoIHead(nn.Module):
    def __init__(self, num_classes: int = 80):
        super().__init__()
        self.bbox_head = Shared2FCBBoxHead(num_classes)
        self.mask_head = FCNMaskHead(num_classes)


class MaskRCNN(nn.Module):
    def __init__(self, embed_dim, depth, num_classes: int = 80):
        super().__init__()
        self.backbone = LSNet(embed_dim, depth, backbone=True)
        self.neck = MaskFPN(embed_dim)
        self.rpn_head = RPNHead()
        self.roi_head = RoIHead(num_classes)

    def features(self, x):
        """(P2, P3, P4, P5, P6), NCHW."""
        return self.neck(self.backbone(x))

    def forward(self, x):
        """The RPN's (cls_scores, bbox_preds) per level (strides 4 ... 64) and the FPN levels."""
        feats = self.features(x)
        out = [self.rpn_head(f) for f in feats]
        return [c for c, _ in out], [r for _, r in out], feats

    def bbox_forward(self, feats, rois: torch.Tensor):
        """RoI head on ``rois (K, 5)``: (cls_score (K, 81), bbox_pred (K, 320))."""
        return self.roi_head.bbox_head(roi_extract(feats[:4], rois, 7))

    def mask_forward(self, feats, rois: torch.Tensor) -> torch.Tensor:
        """Mask logits ``(K, 80, 28, 28)`` on ``rois (K, 5)``."""
        return self.roi_head.mask_head(roi_extract(feats[:4], rois, 14))


def create_torch_maskrcnn(name: str, num_classes: int = 80, depth=None) -> MaskRCNN:
    """The reference for ``lsnet_{t,s,b}_maskrcnn`` (``depth``: a shallower backbone), in eval mode."""
    base = name.removesuffix("_maskrcnn")
    if base not in _VARIANTS or not name.endswith("_maskrcnn"):
        raise ValueError(f"unknown detector {name!r}")
    e, d = _VARIANTS[base]
    return MaskRCNN(e, depth or d, num_classes).eval()


def rpn_proposals(cls_scores, bbox_preds, img_shape, nms_pre: int = 1000, max_per_img: int = 1000,
                  iou_threshold: float = 0.7, nms=nms_reference):
    """MMDetection 2.28's RPNHead test path for one image (levels NCHW, batch 1): per level sigmoid
    scores, the top ``nms_pre`` when there are more, decoded and clamped; joined; boxes with w or
    h <= 0 dropped; NMS within each level (mmcv ``batched_nms`` with the level as the class); the
    first ``max_per_img``. Returns (boxes (K, 4), scores (K,))."""
    boxes, scores, ids = [], [], []
    for level, (cls, reg) in enumerate(zip(cls_scores, bbox_preds)):
        _, a, h, w = cls.shape
        s = cls[0].permute(1, 2, 0).reshape(-1).sigmoid()
        d = reg[0].permute(1, 2, 0).reshape(-1, 4)
        anchors = retina_anchors(h, w, 4 * 2 ** level, octave_base_scale=8.0, scales_per_octave=1).to(cls.device)
        if s.shape[0] > nms_pre:
            s, order = s.sort(descending=True)
            s, order = s[:nms_pre], order[:nms_pre]
            d, anchors = d[order], anchors[order]
        boxes.append(delta2bbox(anchors, d, img_shape))
        scores.append(s)
        ids.append(torch.full(s.shape, level, dtype=torch.long))
    boxes, scores, ids = torch.cat(boxes), torch.cat(scores), torch.cat(ids)
    ok = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)
    boxes, scores, ids = boxes[ok], scores[ok], ids[ok]
    offsets = ids.to(boxes) * (boxes.max() + 1)
    keep = nms(boxes + offsets[:, None], scores, iou_threshold)[:max_per_img]
    return boxes[keep], scores[keep]


def rcnn_postprocess(rois: torch.Tensor, cls_score: torch.Tensor, bbox_pred: torch.Tensor, img_shape, scale_factor,
                     score_thr: float = 0.05, iou_threshold: float = 0.5, max_per_img: int = 100, nms=nms_reference):
    """MMDetection 2.28's ``BBoxHead.get_bboxes`` + ``multiclass_nms`` for one image: softmax, the
    class-specific deltas decoded on their RoI (stds 0.1, 0.1, 0.2, 0.2), clamped, divided by
    ``scale_factor``; every (RoI, class) pair above ``score_thr``; class-aware NMS; the first
    ``max_per_img``. Returns (boxes (K, 4), scores, labels)."""
    num_classes = cls_score.shape[1] - 1
    scores = F.softmax(cls_score, -1)[:, :num_classes]
    r = rois[:, None, :].expand(-1, num_classes, -1).reshape(-1, 4)
    boxes = delta2bbox(r, bbox_pred.reshape(-1, 4), img_shape, stds=(0.1, 0.1, 0.2, 0.2))
    boxes = boxes / torch.as_tensor(scale_factor, dtype=boxes.dtype)
    scores = scores.reshape(-1)
    labels = torch.arange(num_classes).repeat(len(rois))
    ok = scores > score_thr
    boxes, scores, labels = boxes[ok], scores[ok], labels[ok]
    if len(boxes) == 0:
        return boxes, scores, labels
    offsets = labels.to(boxes) * (boxes.max() + 1)
    keep = nms(boxes + offsets[:, None], scores, iou_threshold)[:max_per_img]
    return boxes[keep], scores[keep], labels[keep]


def paste_masks_reference(masks: torch.Tensor, boxes: torch.Tensor, img_h: int, img_w: int) -> torch.Tensor:
    """``_do_paste_mask`` over the WHOLE image (its GPU path, skip_empty False): ``masks (K, m, m)``
    probabilities, ``F.grid_sample`` at every pixel centre of an ``img_h x img_w`` image."""
    x1, y1, x2, y2 = (boxes[:, i:i + 1] for i in range(4))
    img_y = torch.arange(img_h, dtype=masks.dtype) + 0.5
    img_x = torch.arange(img_w, dtype=masks.dtype) + 0.5
    img_y = (img_y[None] - y1) / (y2 - y1) * 2 - 1
    img_x = (img_x[None] - x1) / (x2 - x1) * 2 - 1
    gx = img_x[:, None, :].expand(len(boxes), img_h, img_w)
    gy = img_y[:, :, None].expand(len(boxes), img_h, img_w)
    grid = torch.stack([gx, gy], dim=3)
    return F.grid_sample(masks[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]


# ----- Mask R-CNN training targets and losses (mmdet 2.28.2), the samplers in their first-k mode -----

def bbox_overlaps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / torch.clamp(area_a[:, None] + area_b[None] - inter, min=1e-6)


def max_iou_assign(bboxes: torch.Tensor, gt: torch.Tensor, pos_thr: float, neg_thr: float, min_pos_iou: float
                   ) -> torch.Tensor:
    """MaxIoUAssigner.assign_wrt_overlaps (gt_max_assign_all, match_low_quality): -1 / 0 / gt + 1."""
    assigned = torch.full((len(bboxes),), -1, dtype=torch.long)
    if len(gt) == 0:
        assigned[:] = 0
        return assigned
    overlaps = bbox_overlaps(gt, bboxes)
    max_overlaps, argmax = overlaps.max(0)
    gt_max, _ = overlaps.max(1)
    assigned[(max_overlaps >= 0) & (max_overlaps < neg_thr)] = 0
    pos = max_overlaps >= pos_thr
    assigned[pos] = argmax[pos] + 1
    for i in range(len(gt)):
        if gt_max[i] >= min_pos_iou:
            assigned[overlaps[i] == gt_max[i]] = i + 1
    return assigned


def first_k_sample(assigned: torch.Tensor, num: int, pos_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """RandomSampler with its random draws replaced by the first candidates: (pos, neg) indices."""
    pos = torch.nonzero(assigned > 0)[:, 0][:int(num * pos_fraction)]
    neg = torch.nonzero(assigned == 0)[:, 0][:num - len(pos)]
    return pos, neg


def bbox2delta(p: torch.Tensor, g: torch.Tensor, stds=(1.0, 1.0, 1.0, 1.0)) -> torch.Tensor:
    px, py = (p[:, 0] + p[:, 2]) * 0.5, (p[:, 1] + p[:, 3]) * 0.5
    pw, ph = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
    gx, gy = (g[:, 0] + g[:, 2]) * 0.5, (g[:, 1] + g[:, 3]) * 0.5
    gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
    d = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], -1)
    return d / d.new_tensor(stds)


EPS = float(torch.finfo(torch.float32).eps)


def rpn_loss_reference(rpn_cls, rpn_reg, gt_boxes, img_count: int = 2):
    """One GPU's RPN losses (its images NCHW levels): (loss_rpn_cls, loss_rpn_bbox), every anchor of
    the padded batch valid (the images' pad shapes are the batch's)."""
    lc = lb = 0.0
    avg = 0
    for i in range(img_count):
        anchors = torch.cat([retina_anchors(c.shape[2], c.shape[3], 4 * 2 ** lv, 8.0, 1)
                             for lv, c in enumerate(rpn_cls)])
        cls = torch.cat([c[i].permute(1, 2, 0).reshape(-1) for c in rpn_cls])
        reg = torch.cat([r[i].permute(1, 2, 0).reshape(-1, 4) for r in rpn_reg])
        assigned = max_iou_assign(anchors, gt_boxes[i], 0.7, 0.3, 0.3)
        pos, neg = first_k_sample(assigned, 256, 0.5)
        idx = torch.cat([pos, neg])
        target = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
        lc = lc + F.binary_cross_entropy_with_logits(cls[idx], target, reduction="sum")
        lb = lb + (reg[pos] - bbox2delta(anchors[pos], gt_boxes[i][assigned[pos] - 1])).abs().sum()
        avg += max(len(pos), 1) + max(len(neg), 1)
    return lc / (avg + EPS), lb / (avg + EPS)


def rcnn_loss_reference(model: MaskRCNN, feats, proposals, gt_boxes, gt_labels, gt_masks, num_classes: int = 80):
    """One GPU's RoI-head losses on given proposals (per image (P, 4)): gts prepended, assigned,
    first-k sampled (512, a quarter positive), box head, mask targets (RoIAlign of each positive's gt
    mask over its clipped box at scale 1, 28x28, >= 0.5) and mask head. Returns loss_cls,
    loss_bbox, acc, loss_mask."""
    rois, labels, targets, pos_rois, pos_labels, mask_t = [], [], [], [], [], []
    for i, props in enumerate(proposals):
        assigned = max_iou_assign(props, gt_boxes[i], 0.5, 0.5, 0.5)
        cand = torch.cat([gt_boxes[i], props])
        assigned = torch.cat([torch.arange(1, len(gt_boxes[i]) + 1), assigned])
        pos, neg = first_k_sample(assigned, 512, 0.25)
        gt = assigned[pos] - 1
        idx = torch.cat([pos, neg])
        rois.append(torch.cat([torch.full((len(idx), 1), float(i)), cand[idx]], 1))
        labels.append(torch.cat([gt_labels[i][gt], torch.full((len(neg),), num_classes, dtype=torch.long)]))
        targets.append(bbox2delta(cand[pos], gt_boxes[i][gt], (0.1, 0.1, 0.2, 0.2)))
        pos_rois.append(torch.cat([torch.full((len(pos), 1), float(i)), cand[pos]], 1))
        pos_labels.append(gt_labels[i][gt])
        h, w = gt_masks[i].shape[1:]
        clipped = cand[pos].clone()
        clipped[:, [0, 2]] = clipped[:, [0, 2]].clamp(0, w)
        clipped[:, [1, 3]] = clipped[:, [1, 3]].clamp(0, h)
        for g, box in zip(gt.tolist(), clipped):
            m = gt_masks[i][g][None, None].double()
            mask_t.append(roi_align_reference(m, torch.cat([torch.zeros(1), box.double()])[None], 28, 1.0)[0, 0] >= 0.5)
    rois, labels = torch.cat(rois), torch.cat(labels)
    cls_score, bbox_pred = model.roi_head.bbox_head(roi_extract(feats[:4], rois, 7))
    n = len(rois)
    loss_cls = F.cross_entropy(cls_score, labels, reduction="sum") / (max(n, 1) + EPS)
    pos = labels < num_classes
    own = bbox_pred.reshape(n, -1, 4)[pos, labels[pos]]
    loss_bbox = (own - torch.cat(targets)).abs().sum() / (n + EPS)
    acc = 100.0 * (cls_score.argmax(1) == labels).float().mean()
    pr = torch.cat(pos_rois)
    logits = model.roi_head.mask_head(roi_extract(feats[:4], pr, 14))
    picked = logits[torch.arange(len(pr)), torch.cat(pos_labels)]
    loss_mask = F.binary_cross_entropy_with_logits(picked, torch.stack(mask_t).to(picked), reduction="mean")
    return loss_cls, loss_bbox, acc, loss_mask
