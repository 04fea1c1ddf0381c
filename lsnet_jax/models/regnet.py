"""RegNet ("Designing Network Design Spaces", Radosavovic et al. 2020) as Flax NNX modules (NHWC).

The family of DeiT's distillation teacher: the published ``lsnet_*_distill`` models were trained
with hard distillation from DeiT's RegNetY-160 (``regnety_160`` in timm 0.5.4, checkpoint
``regnety_160-a5fe301d.pth``, the weights of timm's ``regnety_160.deit_in1k``). The architecture
is timm's: a 3x3 stride-2 stem, four stages of bottleneck blocks (1x1, grouped 3x3 with the
stage's stride, squeeze-excitation for the Y models, 1x1 with its BatchNorm initialised to zero, a
1x1 projection shortcut where the shape changes), global average pooling and a linear head.
Per-block widths come from the quantised linear rule of ``RegNetCfg`` (timm's ``generate_regnet``
and ``adjust_widths_groups_comp``). Module names follow timm's state dict (``stem``, ``s1.b1.conv1``,
``se.fc1``, ``head.fc``) grouped into lists: ``stages[i].blocks[j]`` is timm's ``s{i+1}.b{j+1}``
(``lsnet_jax.models.regnet_official``).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lsnet_jax import kernels
from lsnet_jax.models.family import Family, Flat, fresh_heads
from lsnet_jax.models.layers import Conv, ConvBN, Linear, abstract
from lsnet_jax.models.lsnet import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class RegNetCfg:
    """A RegNet of the design space: ``depth`` blocks whose widths follow ``w0 + wa * j``,
    quantised to powers of ``wm`` (multiples of 8); stages are the runs of equal width. Field names
    as timm's ``RegNetCfg``."""

    depth: int
    w0: int
    wa: float
    wm: float
    group_size: int
    bottle_ratio: float = 1.0
    se_ratio: float = 0.0
    stem_width: int = 32
    num_classes: int = 1000
    in_chans: int = 3
    bn_momentum: float = 0.1
    bn_group_size: int | None = None
    impl: str = "auto"

    def block_widths(self, q: int = 8) -> list[int]:
        """The width of each block (timm's ``generate_regnet``)."""
        if not (self.wa >= 0 and self.w0 > 0 and self.wm > 1 and self.w0 % q == 0):
            raise ValueError(f"not a RegNet: w0={self.w0}, wa={self.wa}, wm={self.wm}")
        cont = np.arange(self.depth) * self.wa + self.w0
        exps = np.round(np.log(cont / self.w0) / np.log(self.wm))
        widths = np.round(self.w0 * np.power(self.wm, exps) / q) * q
        return widths.astype(int).tolist()

    def stages(self) -> list[tuple[int, int, int]]:
        """``(width, depth, group width)`` of each stage, widths made compatible with the groups
        (timm's ``adjust_widths_groups_comp``)."""
        widths, depths = np.unique(self.block_widths(), return_counts=True)
        out = []
        for w, d in zip(widths.tolist(), depths.tolist()):
            w_bot = int(w * self.bottle_ratio)
            g = min(self.group_size, w_bot)
            w_bot = int(round(w_bot / g) * g)
            out.append((int(w_bot / self.bottle_ratio), d, g))
        return out


def kaiming_normal_fan_out(key: Array, shape: tuple[int, ...]) -> Array:
    """PyTorch's ``kaiming_normal_(mode='fan_out', nonlinearity='relu')`` for an HWIO kernel
    (fan_out = k * k * cout), drawn on the host like ``layers.torch_uniform_init``."""
    std = math.sqrt(2.0 / (shape[0] * shape[1] * shape[3]))
    if isinstance(key, jax.core.Tracer):
        return std * jax.random.normal(key, shape, jnp.float32)
    seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
    return jnp.asarray((std * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32))


class SE(nnx.Module):
    """Squeeze-excitation: mean over the map, 1x1 conv (bias), ReLU, 1x1 conv (bias), sigmoid gate."""

    def __init__(self, channels: int, reduced: int, *, impl: str, rngs: nnx.Rngs):
        self.fc1 = Conv(channels, reduced, 1, use_bias=True, impl=impl, rngs=rngs)
        self.fc2 = Conv(reduced, channels, 1, use_bias=True, impl=impl, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = self.fc2(jax.nn.relu(self.fc1(s)))
        return x * jax.nn.sigmoid(s)


class Bottleneck(nnx.Module):
    """RegNet's block: 1x1, grouped 3x3 (stride), SE, 1x1 (BN init 0), plus the (projected) input, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, bottle_ratio: float, group_width: int,
                 se_ratio: float, **kw):
        mid = int(round(cout * bottle_ratio))
        self.conv1 = ConvBN(cin, mid, 1, **kw)
        self.conv2 = ConvBN(mid, mid, 3, stride, 1, groups=mid // group_width, **kw)
        self.se = SE(mid, int(round(cin * se_ratio)), impl=kw["impl"], rngs=kw["rngs"]) if se_ratio else None
        self.conv3 = ConvBN(mid, cout, 1, bn_weight_init=0.0, **kw)
        self.downsample = ConvBN(cin, cout, 1, stride, **kw) if cin != cout or stride != 1 else None

    def __call__(self, x: Array) -> Array:
        y = jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(x))))
        if self.se is not None:
            y = self.se(y)
        y = self.conv3(y)
        shortcut = x if self.downsample is None else self.downsample(x)
        return jax.nn.relu(y + shortcut)


class RegStage(nnx.Module):
    def __init__(self, cin: int, cout: int, depth: int, group_width: int, cfg: RegNetCfg, **kw):
        self.blocks = nnx.List([
            Bottleneck(cin if j == 0 else cout, cout, 2 if j == 0 else 1, cfg.bottle_ratio, group_width,
                       cfg.se_ratio, **kw)
            for j in range(depth)])

    def __call__(self, x: Array) -> Array:
        for block in self.blocks:
            x = block(x)
        return x


class RegNet(nnx.Module):
    """RegNet on NHWC images; ``model(x)`` returns float32 logits (``dtype`` is the compute dtype).
    ``deploy=True`` builds the folded form (every BatchNorm in its convolution)."""

    def __init__(self, cfg: RegNetCfg, *, deploy: bool = False, dtype: jnp.dtype = jnp.float32,
                 rngs: nnx.Rngs):
        self.cfg, self.deploy, self.dtype = cfg, deploy, dtype
        self.impl = kernels.resolve(cfg.impl)
        kw = dict(deploy=deploy, bn_group_size=cfg.bn_group_size, bn_momentum=cfg.bn_momentum, impl=self.impl,
                  rngs=rngs)
        self.stem = ConvBN(cfg.in_chans, cfg.stem_width, 3, 2, 1, **kw)
        stages, cin = [], cfg.stem_width
        for width, depth, group_width in cfg.stages():
            stages.append(RegStage(cin, width, depth, group_width, cfg, **kw))
            cin = width
        self.stages = nnx.List(stages)
        self.num_features = cin
        self.head = Linear(cin, cfg.num_classes, std=0.01, rngs=rngs) if cfg.num_classes > 0 else None
        if not deploy:  # timm's initialisation: every convolution Kaiming normal (fan out)
            for _, module in nnx.iter_graph(self):
                if isinstance(module, Conv):
                    module.kernel[...] = kaiming_normal_fan_out(rngs.params(), module.kernel[...].shape)

    def deploy_twin(self) -> RegNet:
        """The abstract (``nnx.eval_shape``) deploy form of this model, for ``models.fold``."""
        cfg = dataclasses.replace(self.cfg, impl=self.impl)
        return abstract(functools.partial(RegNet, cfg, deploy=True, dtype=self.dtype))

    @property
    def feature_info(self) -> list[dict]:
        return [dict(num_chs=w, reduction=4 * 2 ** i, module=f"stages.{i}")
                for i, (w, _, _) in enumerate(self.cfg.stages())]

    def forward_intermediates(self, x: Array) -> list[Array]:
        """The four stage outputs (strides 4, 8, 16, 32)."""
        x = jax.nn.relu(self.stem(x.astype(self.dtype)))
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def forward_features(self, x: Array) -> Array:
        return self.forward_intermediates(x)[-1]

    def forward_head(self, x: Array, pre_logits: bool = False) -> Array:
        x = jnp.mean(x, axis=(1, 2))
        out_dtype = jnp.promote_types(x.dtype, jnp.float32)
        if pre_logits or self.head is None:
            return x.astype(out_dtype)
        return self.head(x).astype(out_dtype)

    def __call__(self, x: Array) -> Array:
        return self.forward_head(self.forward_features(x))


def _cfg(w0: int, wa: float, wm: float, group_size: int, depth: int, se: bool) -> dict:
    return dict(w0=w0, wa=wa, wm=wm, group_size=group_size, depth=depth, se_ratio=0.25 if se else 0.0)


# timm 0.5.4's model_cfgs (FLOPs = the three trailing digits * 1e8)
VARIANTS: dict[str, dict] = {
    "regnetx_002": _cfg(24, 36.44, 2.49, 8, 13, False),
    "regnetx_004": _cfg(24, 24.48, 2.54, 16, 22, False),
    "regnetx_006": _cfg(48, 36.97, 2.24, 24, 16, False),
    "regnetx_008": _cfg(56, 35.73, 2.28, 16, 16, False),
    "regnetx_016": _cfg(80, 34.01, 2.25, 24, 18, False),
    "regnetx_032": _cfg(88, 26.31, 2.25, 48, 25, False),
    "regnetx_040": _cfg(96, 38.65, 2.43, 40, 23, False),
    "regnetx_064": _cfg(184, 60.83, 2.07, 56, 17, False),
    "regnetx_080": _cfg(80, 49.56, 2.88, 120, 23, False),
    "regnetx_120": _cfg(168, 73.36, 2.37, 112, 19, False),
    "regnetx_160": _cfg(216, 55.59, 2.1, 128, 22, False),
    "regnetx_320": _cfg(320, 69.86, 2.0, 168, 23, False),
    "regnety_002": _cfg(24, 36.44, 2.49, 8, 13, True),
    "regnety_004": _cfg(48, 27.89, 2.09, 8, 16, True),
    "regnety_006": _cfg(48, 32.54, 2.32, 16, 15, True),
    "regnety_008": _cfg(56, 38.84, 2.4, 16, 14, True),
    "regnety_016": _cfg(48, 20.71, 2.65, 24, 27, True),
    "regnety_032": _cfg(80, 42.63, 2.66, 24, 21, True),
    "regnety_040": _cfg(96, 31.41, 2.24, 64, 22, True),
    "regnety_064": _cfg(112, 33.22, 2.27, 72, 25, True),
    "regnety_080": _cfg(192, 76.82, 2.19, 56, 17, True),
    "regnety_120": _cfg(168, 73.36, 2.37, 112, 19, True),
    "regnety_160": _cfg(200, 106.23, 2.48, 112, 18, True),
    "regnety_320": _cfg(232, 115.89, 2.53, 232, 20, True),
}


def _default_cfg(**kw) -> dict:
    cfg = dict(input_size=(224, 224, 3), mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, crop_pct=0.875,
               interpolation="bicubic", num_classes=1000)
    return cfg | kw


# per-variant defaults as timm 0.5.4 keeps them; DeiT's RegNetY-160 (the teacher): 82.6 top-1
DEFAULT_CFGS: dict[str, dict] = {name: _default_cfg() for name in VARIANTS}
DEFAULT_CFGS["regnety_160"] = _default_cfg(crop_pct=1.0, test_input_size=(288, 288, 3), top1=82.6,
                                           hf_hub_id="timm/regnety_160.deit_in1k")


def model_config(name: str, num_classes: int = 1000, **overrides) -> RegNetCfg:
    """The config of variant ``name``; ``overrides`` set any other ``RegNetCfg`` field."""
    if name not in VARIANTS:
        raise ValueError(f"unknown RegNet {name!r}; available: {sorted(VARIANTS)}")
    return RegNetCfg(**(VARIANTS[name] | dict(num_classes=num_classes) | overrides))


# ----- the family (lsnet_jax.models.registry) -----

def build(name: str, num_classes: int, img_size: int, dtype, rngs: nnx.Rngs, **config) -> RegNet:
    del img_size  # any size runs
    return RegNet(model_config(name, num_classes, **config), dtype=dtype, rngs=rngs)


def adapt(flat: Flat, model: RegNet, ckpt_classes: int | None) -> Flat:
    """A new head where the class count differs (from ``model``'s fresh initialisation)."""
    return fresh_heads(flat, model, ckpt_classes, model.cfg.num_classes, lambda p: p[0] == "head")


FAMILY = Family(DEFAULT_CFGS, build, adapt, ("head", "kernel"))
