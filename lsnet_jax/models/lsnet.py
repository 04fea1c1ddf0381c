"""LSNet: the network, its variants and their default configurations.

Ordered as timm's model files: stage -> model -> variant table -> default configs. The registry
(``create_model``) is in ``lsnet_jax.models.registry``, the official PyTorch names in
``lsnet_jax.models.lsnet_official``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lsnet_jax import kernels
from lsnet_jax.kernels.resize import resize_bicubic_2d
from lsnet_jax.models.family import Family, Flat, fresh_heads
from lsnet_jax.models.layers import Block, BNLinear, ConvBN, abstract

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LSNetConfig:
    """Everything that determines an LSNet: its structure and parameter shapes, its BatchNorms'
    training behaviour and the implementation of its array operations (``lsnet_jax.kernels``)."""

    embed_dim: tuple[int, int, int, int]
    depth: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int] = (3, 3, 3, 4)
    key_dim: int = 16
    img_size: int = 224
    patch_size: int = 8
    in_chans: int = 3
    num_classes: int = 1000
    distillation: bool = False
    lks: int = 7  # LKP's large depthwise kernel
    sks: int = 3  # SKA's small dynamic kernel
    ska_groups: int = 8  # channels sharing one SKA kernel (C / ska_groups kernels per pixel)
    bn_momentum: float = 0.1  # PyTorch's convention: running = (1 - m) * running + m * batch
    bn_group_size: int | None = None  # None: statistics over the whole batch; 256: per-GPU as published
    impl: str = "auto"  # "auto" | "reference" | "xla_cpu" (lsnet_jax.kernels)
    # None: the attention bias tables fit the last grid of img_size (the classifier). An int r: the
    # tables are built for an r x r grid and the gathered bias is resized to the real token count at
    # run time, for any input size (the official segmentation backbone: r = 14)
    attn_resolution: int | None = None

    def resolutions(self) -> tuple[int, ...]:
        """Feature-map side of each stage: img/8, then halved (rounding up) three times."""
        r = self.img_size // self.patch_size
        out = [r]
        for _ in range(3):
            r = (r - 1) // 2 + 1
            out.append(r)
        return tuple(out)


class Downsample(nnx.Module):
    """Between stages: depthwise 3x3 stride-2 ConvBN, then 1x1 ConvBN to the next width."""

    def __init__(self, cin: int, cout: int, **kw):
        self.dw = ConvBN(cin, cin, 3, 2, 1, groups=cin, **kw)
        self.pw = ConvBN(cin, cout, **kw)

    def __call__(self, x: Array) -> Array:
        return self.pw(self.dw(x))


class Stage(nnx.Module):
    def __init__(self, cfg: LSNetConfig, i: int, **kw):
        dim = cfg.embed_dim[i]
        self.downsample = Downsample(cfg.embed_dim[i - 1], dim, **kw) if i > 0 else None
        attn_ratio = dim / (cfg.key_dim * cfg.num_heads[i])
        res = cfg.attn_resolution or cfg.resolutions()[i]
        lkp = (cfg.lks, cfg.sks, cfg.ska_groups)
        resize = cfg.attn_resolution is not None
        self.blocks = nnx.List([
            Block(dim, cfg.key_dim, cfg.num_heads[i], attn_ratio, res, stage=i, depth=d, lkp=lkp,
                  resize_bias=resize, **kw)
            for d in range(cfg.depth[i])
        ])

    def __call__(self, x: Array) -> Array:
        if self.downsample is not None:
            x = self.downsample(x)
        for blk in self.blocks:
            x = blk(x)
        return x


class LSNet(nnx.Module):
    """LSNet on NHWC images.

    ``model(x)`` returns logits. For a distilled model in training mode (``model.train()``) it
    returns the pair (head, head_dist); in eval mode (``model.eval()``) their mean, as the
    official code. ``deploy=True`` builds the folded form (see ``lsnet_jax.models.fold``).
    """

    def __init__(self, cfg: LSNetConfig, *, deploy: bool = False, dtype: jnp.dtype = jnp.float32,
                 rngs: nnx.Rngs):
        self.cfg, self.deploy, self.dtype = cfg, deploy, dtype
        self.impl = kernels.resolve(cfg.impl)  # "auto" is decided here, once
        kw = dict(deploy=deploy, bn_group_size=cfg.bn_group_size, bn_momentum=cfg.bn_momentum, impl=self.impl,
                  rngs=rngs)
        e0 = cfg.embed_dim[0]
        self.patch_embed = nnx.List([
            ConvBN(cfg.in_chans, e0 // 4, 3, 2, 1, **kw),
            ConvBN(e0 // 4, e0 // 2, 3, 2, 1, **kw),
            ConvBN(e0 // 2, e0, 3, 2, 1, **kw),
        ])
        self.stages = nnx.List([Stage(cfg, i, **kw) for i in range(4)])
        self.num_features = cfg.embed_dim[-1]
        has_head = cfg.num_classes > 0
        self.head = BNLinear(self.num_features, cfg.num_classes, **kw) if has_head else None
        self.head_dist = (
            BNLinear(self.num_features, cfg.num_classes, **kw) if has_head and cfg.distillation else None
        )
        self.deterministic = False  # set True by model.eval(): distilled models average their heads

    def deploy_twin(self) -> LSNet:
        """The abstract (``nnx.eval_shape``) deploy form of this model, for ``models.fold``."""
        cfg = dataclasses.replace(self.cfg, impl=self.impl)
        return abstract(functools.partial(LSNet, cfg, deploy=True, dtype=self.dtype))

    @property
    def feature_info(self) -> list[dict]:
        """Channels and stride of each stage output, as timm's ``feature_info``."""
        return [dict(num_chs=c, reduction=8 * 2 ** i, module=f"stages.{i}")
                for i, c in enumerate(self.cfg.embed_dim)]

    def _stem(self, x: Array) -> Array:
        x = x.astype(self.dtype)
        for i, conv in enumerate(self.patch_embed):
            x = conv(x)
            if i < 2:
                x = jax.nn.relu(x)
        return x

    def forward_intermediates(self, x: Array) -> list[Array]:
        """The four stage outputs (strides 8, 16, 32, 64), for dense-prediction heads."""
        x = self._stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def forward_features(self, x: Array) -> Array:
        """The last stage's feature map ``(N, H/64, W/64, C)``, before pooling."""
        x = self._stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x: Array, pre_logits: bool = False) -> Array | tuple[Array, Array]:
        x = jnp.mean(x, axis=(1, 2))
        out_dtype = jnp.promote_types(x.dtype, jnp.float32)  # bfloat16 compute, float32 logits
        if pre_logits or self.head is None:
            return x.astype(out_dtype)
        logits = self.head(x).astype(out_dtype)
        if self.head_dist is None:
            return logits
        dist = self.head_dist(x).astype(out_dtype)
        if self.deterministic:
            return (logits + dist) / 2
        return logits, dist

    def __call__(self, x: Array) -> Array | tuple[Array, Array]:
        return self.forward_head(self.forward_features(x))


# name -> (embed_dim, depth); all variants: img 224, patch 8, key_dim 16, heads (3, 3, 3, 4).
VARIANTS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "lsnet_t": ((64, 128, 256, 384), (0, 2, 8, 10)),
    "lsnet_s": ((96, 192, 320, 448), (1, 2, 8, 10)),
    "lsnet_b": ((128, 256, 384, 512), (4, 6, 8, 10)),
}

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)


def _default_cfg(top1: float) -> dict:
    return dict(input_size=(224, 224, 3), mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                crop_pct=0.875, interpolation="bicubic", num_classes=1000, top1=top1)


# Per-variant defaults as timm keeps them (input size HWC here, NHWC model).
DEFAULT_CFGS: dict[str, dict] = {
    "lsnet_t": _default_cfg(74.9),
    "lsnet_t_distill": _default_cfg(76.1),
    "lsnet_s": _default_cfg(77.8),
    "lsnet_s_distill": _default_cfg(79.0),
    "lsnet_b": _default_cfg(80.3),
    "lsnet_b_distill": _default_cfg(81.6),
}


def model_config(name: str, num_classes: int = 1000, img_size: int = 224, **overrides) -> LSNetConfig:
    """The config of variant ``name``; ``overrides`` set any other ``LSNetConfig`` field (the
    variant's ``embed_dim`` and ``depth`` too: a shallower LSNet-T has every kind of layer at
    ``depth=(0, 2, 2, 2)``)."""
    base = name.removesuffix("_distill")
    if name not in DEFAULT_CFGS:
        raise ValueError(f"unknown model {name!r}; available: {sorted(DEFAULT_CFGS)}")
    embed_dim, depth = overrides.pop("embed_dim", VARIANTS[base][0]), overrides.pop("depth", VARIANTS[base][1])
    if img_size % 8:
        raise ValueError(f"img_size must be a multiple of 8 (the stem's stride), got {img_size}")
    fields = {f.name for f in dataclasses.fields(LSNetConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown LSNet config field(s) {unknown}; the fields are {sorted(fields)}")
    kernels.resolve(overrides.get("impl", "auto"))  # an unknown impl fails here, naming the choices
    return LSNetConfig(embed_dim=tuple(embed_dim), depth=tuple(depth), img_size=img_size,
                       num_classes=num_classes, distillation=name.endswith("_distill"), **overrides)


def resize_attention_biases(table: Array, new_resolution: int) -> Array:
    """Resize a ``(heads, r*r)`` bias table to ``(heads, R*R)`` as the official fine-tuning code
    does (``F.interpolate(table.view(1, heads, r, r), size=(R, R), mode='bicubic')``): the table is
    a grid over (|dy|, |dx|). The same resolution returns the table unchanged."""
    heads, n = table.shape
    r = int(round(n ** 0.5))
    if r * r != n:
        raise ValueError(f"attention bias table of {n} entries is not a square grid")
    if r == new_resolution:
        return table
    grid = resize_bicubic_2d(table.reshape(heads, r, r).astype(jnp.float32), (new_resolution, new_resolution))
    return grid.reshape(heads, new_resolution * new_resolution).astype(table.dtype)


# ----- the family (lsnet_jax.models.registry) -----

def build(name: str, num_classes: int, img_size: int, dtype, rngs: nnx.Rngs, **config) -> LSNet:
    return LSNet(model_config(name, num_classes, img_size, **config), dtype=dtype, rngs=rngs)


def adapt(flat: Flat, model: LSNet, ckpt_classes: int | None) -> Flat:
    """New heads where the class count differs (from ``model``'s fresh initialisation); bias tables
    resized to the model's last grid."""
    flat = fresh_heads(flat, model, ckpt_classes, model.cfg.num_classes, lambda p: p[0] in ("head", "head_dist"))
    res = model.cfg.resolutions()[3]
    return {p: np.asarray(resize_attention_biases(jnp.asarray(a), res)) if p[-1] == "attention_biases" else a
            for p, a in flat.items()}


FAMILY = Family(DEFAULT_CFGS, build, adapt)
