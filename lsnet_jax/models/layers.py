"""LSNet building blocks as Flax NNX modules (NHWC).

Names follow the paper and the official PyTorch code (ConvBN = ``Conv2d_BN``, LKP, SKA, LSConv,
RepVGGDW ...) so that a reader of either finds their way, and so that checkpoint conversion is a
name mapping (``lsnet_jax.models.lsnet_official``). Every module takes ``deploy``: the deploy form
has the BatchNorms folded into the convolutions, the training form has them apart. A module that
changes between the two forms carries its rule, ``fold_rule(state) -> state`` on its pure state
dict (children already folded), as timm's ``ConvNorm.fuse``; ``lsnet_jax.models.fold`` walks a
model and applies them. Array operations come from ``lsnet_jax.kernels``, in the implementation
``impl`` names. Parameters are float32; ``dtype`` is the compute dtype.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lsnet_jax import kernels
from lsnet_jax.kernels.resize import resize_bicubic_2d

Array = jax.Array
Tree = dict[Any, Any]
BN_EPS = 1e-5


class Buffer(nnx.Variable):
    """A constant array carried with the model (the deploy form's precomputed attention bias)."""


class ShapeRngs:
    """The ``rngs`` of a model built only for its shapes (``abstract``): every stream gives one
    fixed key. ``nnx.Rngs`` under ``nnx.eval_shape`` costs ~2 s for LSNet-B: each draw updates a
    traced counter, and that update asks the tracer for its sharding, whose error message prints
    the jaxpr built so far (quadratic in the number of layers)."""

    def __init__(self) -> None:
        self._key = jax.random.key(0)

    def __getattr__(self, stream: str):
        if stream.startswith("_"):
            raise AttributeError(stream)
        return lambda: self._key


def abstract(build):
    """``build(rngs=...)``'s module with ``jax.ShapeDtypeStruct`` leaves, no array computed."""
    return nnx.eval_shape(lambda: build(rngs=ShapeRngs()))


def torch_uniform_init(key: Array, shape: tuple[int, ...], fan_in: int) -> Array:
    """PyTorch's default Conv2d weight/bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Eagerly the draw is made on the host by numpy, seeded from ``key``: ``jax.random.uniform``
    compiles once per shape, which made building a model take ~10 s on CPU. Under a trace
    (``nnx.eval_shape``, ``jit``) it falls back to ``jax.random``.
    """
    bound = 1.0 / math.sqrt(fan_in)
    if isinstance(key, jax.core.Tracer):
        return jax.random.uniform(key, shape, jnp.float32, -bound, bound)
    seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
    return jnp.asarray(np.random.default_rng(seed).uniform(-bound, bound, shape).astype(np.float32))


class Conv(nnx.Module):
    """2-D convolution, HWIO kernel, PyTorch padding semantics, initialised as PyTorch does.

    The kernel is picked from the shape: depthwise (``groups == cin == cout``), 1x1 (a matrix
    product), dense or grouped (``cin`` and ``cout`` multiples of ``groups``: RegNet), each from
    the implementation ``impl`` (``lsnet_jax.kernels``).
    """

    def __init__(self, cin: int, cout: int, kernel_size: int = 1, stride: int = 1, pad: int = 0,
                 groups: int = 1, use_bias: bool = False, *, impl: str = "auto", rngs: nnx.Rngs):
        if groups < 1 or cin % groups or cout % groups:
            raise ValueError(f"groups={groups} must divide both channel counts ({cin}->{cout})")
        self.depthwise = groups == cin == cout and groups > 1
        self.groups = groups
        if self.depthwise and pad != kernel_size // 2:
            raise ValueError("depthwise convolutions use padding kernel_size // 2")
        self.stride, self.pad = stride, pad
        self.impl = kernels.resolve(impl)
        fan_in = (cin // groups) * kernel_size * kernel_size
        shape = (kernel_size, kernel_size, cin // groups, cout)
        self.kernel = nnx.Param(torch_uniform_init(rngs.params(), shape, fan_in))
        self.bias = nnx.Param(torch_uniform_init(rngs.params(), (cout,), fan_in)) if use_bias else None

    def __call__(self, x: Array) -> Array:
        k = self.kernel[...]
        b = None if self.bias is None else self.bias[...].astype(x.dtype)
        ops = kernels.get(self.impl)
        if self.depthwise:
            return ops.depthwise_conv(x, k, self.stride, b)
        if self.groups > 1:
            return ops.conv2d(x, k, self.stride, self.pad, b, self.groups)
        if k.shape[0] == 1 and self.stride == 1 and self.pad == 0:
            return ops.conv1x1(x, k, b)
        return ops.conv2d(x, k, self.stride, self.pad, b)


class BatchNorm(nnx.Module):
    """BatchNorm over all axes but the last, with PyTorch's semantics.

    ``momentum`` (PyTorch's 0.1) on the running statistics, unbiased running variance, eps 1e-5.
    In training mode (``use_running_average=False``) the statistics are taken over the whole
    (global) batch, or per group of ``group_size`` images as the official per-GPU BatchNorm did.
    A ``frozen`` BatchNorm uses its running statistics in training mode too (and never updates
    them), as a detection/segmentation backbone's ``norm_eval``; its affine parameters still train.
    """

    def __init__(self, num_features: int, scale_init: float = 1.0, momentum: float = 0.1,
                 group_size: int | None = None, impl: str = "auto"):
        self.scale = nnx.Param(jnp.full((num_features,), scale_init, jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.momentum = momentum
        self.group_size = group_size
        self.impl = kernels.resolve(impl)
        self.use_running_average = False
        self.frozen = False

    def __call__(self, x: Array) -> Array:
        if self.use_running_average or self.frozen:
            return self._affine(x, self.mean[...], self.var[...])
        mean, var = kernels.get(self.impl).batch_norm_stats(x, self.group_size)
        per_group = x.size // x.shape[-1] // (1 if self.group_size is None else x.shape[0] // self.group_size)
        unbiased = var * (per_group / max(per_group - 1, 1))
        if self.group_size is not None:  # running stats follow the average group
            batch_mean, unbiased = jnp.mean(mean, 0), jnp.mean(unbiased, 0)
        else:
            batch_mean = mean
        m = self.momentum
        self.mean[...] = (1 - m) * self.mean[...] + m * jax.lax.stop_gradient(batch_mean)
        self.var[...] = (1 - m) * self.var[...] + m * jax.lax.stop_gradient(unbiased)
        if self.group_size is None:
            return self._affine(x, mean, var)
        n = x.shape[0]
        xg = x.reshape((n // self.group_size, self.group_size) + x.shape[1:])
        bshape = (mean.shape[0],) + (1,) * (x.ndim - 1) + (mean.shape[1],)
        y = self._affine(xg, mean.reshape(bshape), var.reshape(bshape))
        return y.reshape(x.shape)

    def _affine(self, x: Array, mean: Array, var: Array) -> Array:
        a = self.scale[...] * jax.lax.rsqrt(var + BN_EPS)
        b = self.bias[...] - mean * a
        return x * a.astype(x.dtype) + b.astype(x.dtype)


def bn_affine(bn: Tree) -> tuple[Array, Array]:
    """A BatchNorm's state in eval mode as ``x * a + b``."""
    a = bn["scale"] / jnp.sqrt(bn["var"] + BN_EPS)
    return a, bn["bias"] - bn["mean"] * a


class ConvBN(nnx.Module):
    """``Conv2d_BN``: convolution without bias, then BatchNorm (deploy: one conv with bias)."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 1, stride: int = 1, pad: int = 0,
                 groups: int = 1, bn_weight_init: float = 1.0, *, deploy: bool = False,
                 bn_group_size: int | None = None, bn_momentum: float = 0.1, impl: str = "auto",
                 rngs: nnx.Rngs):
        self.c = Conv(cin, cout, kernel_size, stride, pad, groups, use_bias=deploy, impl=impl, rngs=rngs)
        self.bn = None if deploy else BatchNorm(cout, bn_weight_init, bn_momentum, bn_group_size, impl)

    def __call__(self, x: Array) -> Array:
        x = self.c(x)
        return x if self.bn is None else self.bn(x)

    @staticmethod
    def fold_rule(t: Tree) -> Tree:
        """{c: {kernel}, bn} -> {c: {kernel, bias}}: the HWIO kernel scaled per output channel."""
        a, b = bn_affine(t["bn"])
        return {"c": {"kernel": t["c"]["kernel"] * a, "bias": b}}


class Linear(nnx.Module):
    """Linear layer, kernel ``(in, out)``, timm's trunc-normal init (std 0.02, cut at +-2)."""

    def __init__(self, din: int, dout: int, std: float = 0.02, *, rngs: nnx.Rngs):
        w = jax.random.truncated_normal(rngs.params(), -2.0 / std, 2.0 / std, (din, dout), jnp.float32)
        self.kernel = nnx.Param(w * std)
        self.bias = nnx.Param(jnp.zeros((dout,), jnp.float32))

    def __call__(self, x: Array) -> Array:
        return x @ self.kernel[...].astype(x.dtype) + self.bias[...].astype(x.dtype)


class BNLinear(nnx.Module):
    """``BN_Linear``: BatchNorm1d then Linear (deploy: one Linear)."""

    def __init__(self, din: int, dout: int, *, deploy: bool = False, bn_group_size: int | None = None,
                 bn_momentum: float = 0.1, impl: str = "auto", rngs: nnx.Rngs):
        self.bn = None if deploy else BatchNorm(din, 1.0, bn_momentum, bn_group_size, impl)
        self.l = Linear(din, dout, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.l(x if self.bn is None else self.bn(x))

    @staticmethod
    def fold_rule(t: Tree) -> Tree:
        """{bn, l} -> {l}: y = (x*a + b) W + c = x (a W) + (b W + c)."""
        a, b = bn_affine(t["bn"])
        w = t["l"]["kernel"]
        return {"l": {"kernel": w * a[:, None], "bias": b @ w + t["l"]["bias"]}}


class FFN(nnx.Module):
    """Pointwise MLP ``pw1`` (C -> 2C), ReLU, ``pw2`` (2C -> C, BN weight init 0). No residual."""

    def __init__(self, dim: int, hidden: int, **kw):
        self.pw1 = ConvBN(dim, hidden, **kw)
        self.pw2 = ConvBN(hidden, dim, bn_weight_init=0.0, **kw)

    def __call__(self, x: Array) -> Array:
        return self.pw2(jax.nn.relu(self.pw1(x)))


class RepVGGDW(nnx.Module):
    """Depthwise 3x3 ConvBN + depthwise 1x1 ConvBN + identity (deploy: one 3x3 depthwise conv)."""

    def __init__(self, dim: int, *, deploy: bool = False, **kw):
        self.conv = ConvBN(dim, dim, 3, 1, 1, groups=dim, deploy=deploy, **kw)
        self.conv1 = None if deploy else ConvBN(dim, dim, 1, 1, 0, groups=dim, deploy=deploy, **kw)

    def __call__(self, x: Array) -> Array:
        if self.conv1 is None:
            return self.conv(x)
        return self.conv(x) + self.conv1(x) + x

    @staticmethod
    def fold_rule(t: Tree) -> Tree:
        """{conv, conv1} (each already one conv with bias) -> {conv}: the 1x1 and the identity join
        the 3x3's centre tap."""
        k3, b3 = t["conv"]["c"]["kernel"], t["conv"]["c"]["bias"]
        k1, b1 = t["conv1"]["c"]["kernel"], t["conv1"]["c"]["bias"]
        return {"conv": {"c": {"kernel": k3.at[1, 1].add(k1[0, 0] + 1.0), "bias": b3 + b1}}}


def make_divisible(v: float, divisor: int = 8) -> int:
    """timm's rounding of SE widths (``round_limit=0``): nearest multiple of ``divisor``."""
    return max(divisor, int(v + divisor / 2) // divisor * divisor)


class SqueezeExcite(nnx.Module):
    """timm's SEModule: mean -> 1x1 conv -> ReLU -> 1x1 conv -> sigmoid gate."""

    def __init__(self, dim: int, rd_ratio: float = 0.25, *, impl: str = "auto", rngs: nnx.Rngs, **_):
        rd = make_divisible(dim * rd_ratio)
        self.fc1 = Conv(dim, rd, use_bias=True, impl=impl, rngs=rngs)
        self.fc2 = Conv(rd, dim, use_bias=True, impl=impl, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = self.fc2(jax.nn.relu(self.fc1(s)))
        return x * jax.nn.sigmoid(s)


class GroupNorm(nnx.Module):
    """GroupNorm (eps 1e-5) returning the grouped view ``(N, H, W, groups, C/groups)``.

    LKP's normalised output is directly the SKA kernel tensor: channel ``g*9 + k`` is tap k of
    kernel g, and each group is exactly one kernel's 9 taps.
    """

    def __init__(self, num_groups: int, num_channels: int):
        self.num_groups = num_groups
        self.scale = nnx.Param(jnp.ones((num_channels,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_channels,), jnp.float32))

    def __call__(self, x: Array) -> Array:
        n, h, w, c = x.shape
        g = self.num_groups
        xg = x.astype(jnp.promote_types(x.dtype, jnp.float32)).reshape(n, h, w, g, c // g)
        mean = jnp.mean(xg, axis=(1, 2, 4), keepdims=True)
        var = jnp.mean(jnp.square(xg - mean), axis=(1, 2, 4), keepdims=True)
        y = (xg - mean) * jax.lax.rsqrt(var + BN_EPS)
        y = y * self.scale[...].reshape(g, c // g) + self.bias[...].reshape(g, c // g)
        return y.astype(x.dtype)


class LKP(nnx.Module):
    """Large-kernel perception: a ``lks`` x ``lks`` depthwise view of half the channels produces the
    per-pixel SKA kernels ``(N, H, W, C/groups, sks**2)``."""

    def __init__(self, dim: int, lks: int = 7, sks: int = 3, groups: int = 8, *, rngs: nnx.Rngs, **kw):
        half = dim // 2
        self.cv1 = ConvBN(dim, half, rngs=rngs, **kw)
        self.cv2 = ConvBN(half, half, lks, 1, (lks - 1) // 2, groups=half, rngs=rngs, **kw)
        self.cv3 = ConvBN(half, half, rngs=rngs, **kw)
        impl = kw.get("impl", "auto")
        self.cv4 = Conv(half, sks * sks * dim // groups, use_bias=True, impl=impl, rngs=rngs)
        self.norm = GroupNorm(dim // groups, sks * sks * dim // groups)

    def __call__(self, x: Array) -> Array:
        x = jax.nn.relu(self.cv3(self.cv2(jax.nn.relu(self.cv1(x)))))
        return self.norm(self.cv4(x))


class LSConv(nnx.Module):
    """LS convolution: ``BN(SKA(x, LKP(x))) + x``."""

    def __init__(self, dim: int, lks: int = 7, sks: int = 3, groups: int = 8, *,
                 bn_group_size: int | None = None, bn_momentum: float = 0.1, impl: str = "auto",
                 rngs: nnx.Rngs, **kw):
        kw = dict(kw, bn_group_size=bn_group_size, bn_momentum=bn_momentum, impl=impl, rngs=rngs)
        self.lkp = LKP(dim, lks, sks, groups, **kw)
        self.bn = BatchNorm(dim, momentum=bn_momentum, group_size=bn_group_size, impl=impl)
        self.impl = kernels.resolve(impl)

    def __call__(self, x: Array) -> Array:
        return self.bn(kernels.get(self.impl).ska(x, self.lkp(x))) + x


@functools.lru_cache(maxsize=None)
def attention_bias_idxs(resolution: int) -> np.ndarray:
    """Index of the bias of each (query, key) pair: distinct (|dy|, |dx|) offsets, first-seen order."""
    points = list(itertools.product(range(resolution), range(resolution)))
    offsets: dict[tuple[int, int], int] = {}
    idxs = []
    for p1 in points:
        for p2 in points:
            off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            idxs.append(offsets.setdefault(off, len(offsets)))
    n = len(points)
    out = np.asarray(idxs, np.int32).reshape(n, n)
    out.setflags(write=False)
    return out


class Attention(nnx.Module):
    """LeViT-style attention with a depthwise 3x3 on the queries and a relative-position bias table.

    The bias table is built for a ``resolution x resolution`` grid. With ``resize_bias`` False (the
    classifier) the input must be that grid; another input size needs the table resized
    (``lsnet_jax.models.lsnet.resize_attention_biases``). With ``resize_bias`` True (the official
    segmentation backbone) any grid is accepted: the gathered ``(heads, R*R, R*R)`` bias is resized
    as an image to ``(heads, N, N)``, N = H*W tokens, with PyTorch's bicubic interpolation.
    """

    def __init__(self, dim: int, key_dim: int, num_heads: int, attn_ratio: float, resolution: int,
                 *, deploy: bool = False, resize_bias: bool = False, rngs: nnx.Rngs, **kw):
        self.num_heads, self.key_dim, self.resolution = num_heads, key_dim, resolution
        self.resize_bias = resize_bias
        self.d = int(attn_ratio * key_dim)
        nh_kd, dh = key_dim * num_heads, self.d * num_heads
        self.qkv = ConvBN(dim, dh + 2 * nh_kd, deploy=deploy, rngs=rngs, **kw)
        self.dw = ConvBN(nh_kd, nh_kd, 3, 1, 1, groups=nh_kd, deploy=deploy, rngs=rngs, **kw)
        self.proj = ConvBN(dh, dim, bn_weight_init=0.0, deploy=deploy, rngs=rngs, **kw)
        n = resolution * resolution  # grid points, and also the number of distinct offsets
        if deploy:
            self.attention_biases = None
            self.ab = Buffer(jnp.zeros((num_heads, n, n), jnp.float32))
        else:
            self.attention_biases = nnx.Param(jnp.zeros((num_heads, n), jnp.float32))
            self.ab = None

    def bias(self) -> Array:
        if self.ab is not None:
            return self.ab[...]
        return self.attention_biases[...][:, attention_bias_idxs(self.resolution)]

    @staticmethod
    def fold_rule(t: Tree) -> Tree:
        """The bias table gathered once into its dense ``(heads, N, N)`` form, ``ab``."""
        table = t["attention_biases"]
        res = int(round(table.shape[1] ** 0.5))
        out = {k: v for k, v in t.items() if k != "attention_biases"}
        out["ab"] = table[:, np.asarray(attention_bias_idxs(res))]
        return out

    def __call__(self, x: Array) -> Array:
        b, h, w, _ = x.shape
        n = h * w
        bias = self.bias()
        if self.resize_bias:
            bias = resize_bicubic_2d(bias, (n, n))
        elif (h, w) != (self.resolution, self.resolution):
            raise ValueError(
                f"Attention was built for a {self.resolution}x{self.resolution} grid but got {h}x{w}; "
                "build the model with the matching img_size (create_model(..., img_size=...)), which "
                "resizes the bias tables of pretrained weights")
        nh, kd, d = self.num_heads, self.key_dim, self.d
        qkv = self.qkv(x)
        q, k, v = jnp.split(qkv, [nh * kd, 2 * nh * kd], axis=-1)
        q = self.dw(q)
        q, k, v = q.reshape(b, n, nh, kd), k.reshape(b, n, nh, kd), v.reshape(b, n, nh, d)
        attn = jnp.einsum("bihc,bjhc->bhij", q, k) * (kd ** -0.5) + bias.astype(x.dtype)
        attn = jax.nn.softmax(attn, axis=-1)
        out = jnp.einsum("bhij,bjhd->bihd", attn, v).reshape(b, h, w, nh * d)
        return self.proj(jax.nn.relu(out))


class Block(nnx.Module):
    """LSNet block ``depth`` of stage ``stage``: (RepVGGDW + SE | LSConv | Attention) then FFN.
    ``lkp`` holds LSConv's ``(lks, sks, groups)``."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, attn_ratio: float, resolution: int,
                 stage: int, depth: int, lkp: tuple[int, int, int] = (7, 3, 8), resize_bias: bool = False,
                 **kw):
        if depth % 2 == 0:
            self.mixer = RepVGGDW(dim, **kw)
            self.se = SqueezeExcite(dim, 0.25, **kw)
        elif stage == 3:
            self.mixer = Attention(dim, key_dim, num_heads, attn_ratio, resolution, resize_bias=resize_bias, **kw)
            self.se = None
        else:
            self.mixer = LSConv(dim, *lkp, **kw)
            self.se = None
        self.ffn = FFN(dim, 2 * dim, **kw)

    def __call__(self, x: Array) -> Array:
        if isinstance(self.mixer, Attention):
            x = x + self.mixer(x)
        else:
            x = self.mixer(x)  # RepVGGDW and LSConv carry their own residual
        if self.se is not None:
            x = self.se(x)
        return x + self.ffn(x)
