"""LSNet classifiers and segmenters written directly as the ONNX graph ONNX Runtime runs best.

``jax2onnx`` converts JAX's primitives one by one: the 1x1 convolutions (matrix products in NHWC)
become ``Einsum`` nodes, every reshape from a symbolic batch grows a Shape / Gather / Concat chain,
and the graph stays NHWC, which ORT's convolution kernels are not written for (1,924 nodes for
LSNet-T, 2.5x slower in ORT than the PyTorch reference's own ``torch.onnx.export``). This module
reads the folded model's structure and weights and writes the graph a convolutional network is in
ONNX: NCHW from the one ``Transpose`` at the entry, every convolution (1x1, depthwise, strided,
grouped) a ``Conv`` with its BatchNorm already folded, reshapes with static shapes after the batch
(``0`` copies the batch; no Shape node anywhere), and nothing between a ``Conv`` and its ``Relu`` /
``Add`` so that ORT's graph optimiser fuses them. Each choice, with its measured effect, is in
``docs/performance.md`` (``python scripts/bench_serve.py --only onnx onnx-static onnx-slices
onnx-jax2onnx torch-onnx`` measures the alternatives side by side).

- SKA is one constant depthwise ``Conv`` that writes the nine shifted copies of each channel, one
  ``Mul`` by the broadcast kernels and one ``ReduceSum`` over the taps (``ska="conv"``), or the
  nine ``Slice`` / ``Mul`` / ``Add`` of the PyTorch reference (``ska="slices"``).
- GroupNorm is ``InstanceNormalization`` over the grouped view plus the affine (as
  ``torch.onnx.export`` writes it).
- The attention's scale is folded into the query's depthwise conv; its bias is a constant (the
  segmenter's resized to the export's grid at export time).
- Resizes are the model's own matrices (bilinear: two ``MatMul`` by constants) and indices
  (nearest: two ``Gather``), so the graph computes exactly what the JAX model does.
- A distilled classifier in eval mode averages its two heads: one ``Gemm`` with the averaged weights.

Input ``images``: float32 NHWC, normalised as the model expects, batch symbolic (``B``) unless
given; output ``logits``: ``(B, classes)`` for a classifier, ``(B, H/8, W/8, classes)`` (NHWC, as
the JAX model) for a segmenter.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from flax import nnx

OPSET = 17
SKA_FORMS = ("conv", "slices")


@dataclasses.dataclass
class T:
    """A tensor of the graph being written: its name and its NCHW shape after the batch."""

    name: str
    c: int
    h: int = 1
    w: int = 1


def _np(v) -> np.ndarray:
    return np.asarray(v[...] if hasattr(v, "__getitem__") and not isinstance(v, np.ndarray) else v, np.float32)


class Graph:
    """Nodes and initializers, named in the order they are written."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list = []
        self.inits: list = []
        self._n = 0
        self._consts: dict[tuple, str] = {}

    def fresh(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"

    def const(self, value, stem: str = "c", dtype=np.float32) -> str:
        a = np.ascontiguousarray(np.asarray(value, dtype))
        key = (a.dtype.str, a.shape, a.tobytes()) if a.size <= 16 else None
        if key is not None and key in self._consts:  # small constants (shapes, axes) once
            return self._consts[key]
        name = self.fresh(stem)
        self.inits.append(self.numpy_helper.from_array(a, name))
        if key is not None:
            self._consts[key] = name
        return name

    def op(self, op_type: str, inputs: list[str], stem: str | None = None, **attrs) -> str:
        out = self.fresh(stem or op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def ops(self, op_type: str, inputs: list[str], n: int, **attrs) -> list[str]:
        outs = [self.fresh(op_type.lower()) for _ in range(n)]
        self.nodes.append(self.helper.make_node(op_type, inputs, outs, name=outs[0], **attrs))
        return outs

    def reshape(self, x: str, shape: tuple[int, ...]) -> str:
        """``shape`` after the batch: 0 copies the batch dimension, no Shape node."""
        return self.op("Reshape", [x, self.const([0, *shape], "shape", np.int64)])


def conv(g: Graph, x: T, kernel, bias, stride: int, pad: int, groups: int) -> T:
    """A convolution from an HWIO kernel (``layers.Conv``'s), as an ONNX ``Conv`` (OIHW)."""
    k = _np(kernel)
    kh, kw, _, cout = k.shape
    inputs = [x.name, g.const(k.transpose(3, 2, 0, 1), "w")]
    if bias is not None:
        inputs.append(g.const(_np(bias), "b"))
    out = g.op("Conv", inputs, kernel_shape=[kh, kw], strides=[stride, stride], pads=[pad] * 4, group=groups)
    return T(out, cout, (x.h + 2 * pad - kh) // stride + 1, (x.w + 2 * pad - kw) // stride + 1)


def conv_module(g: Graph, x: T, m) -> T:
    """``layers.Conv``, or a folded ``ConvBN`` (its ``.c``)."""
    if hasattr(m, "c"):
        if m.bn is not None:
            raise ValueError("the ONNX graph is written from the folded model (deploy=True or models.fold)")
        m = m.c
    groups = m.kernel.shape[3] if m.depthwise else m.groups
    return conv(g, x, m.kernel, m.bias, m.stride, m.pad, groups)


def relu(g: Graph, x: T) -> T:
    return dataclasses.replace(x, name=g.op("Relu", [x.name]))


def add(g: Graph, a: T, b: T) -> T:
    return dataclasses.replace(a, name=g.op("Add", [a.name, b.name]))


def channel_affine(g: Graph, x: T, scale: np.ndarray, shift: np.ndarray) -> T:
    s = g.const(scale.reshape(1, -1, 1, 1), "scale")
    b = g.const(shift.reshape(1, -1, 1, 1), "shift")
    return dataclasses.replace(x, name=g.op("Add", [g.op("Mul", [x.name, s]), b]))


def batch_norm(g: Graph, x: T, bn) -> T:
    """An eval-mode BatchNorm that no convolution absorbs (after SKA) as one scale and shift."""
    from lsnet_jax.models.layers import BN_EPS

    a = _np(bn.scale) / np.sqrt(_np(bn.var) + BN_EPS)
    return channel_affine(g, x, a, _np(bn.bias) - _np(bn.mean) * a)


def group_norm(g: Graph, x: T, m) -> T:
    """GroupNorm as InstanceNormalization of the ``(B, groups, rest)`` view, then the affine."""
    from lsnet_jax.models.layers import BN_EPS

    groups = m.num_groups
    v = g.reshape(x.name, (groups, -1))
    ones, zeros = g.const(np.ones(groups), "ones"), g.const(np.zeros(groups), "zeros")
    v = g.op("InstanceNormalization", [v, ones, zeros], epsilon=BN_EPS)
    y = T(g.reshape(v, (x.c, x.h, x.w)), x.c, x.h, x.w)
    return channel_affine(g, y, _np(m.scale), _np(m.bias))


def ska(g: Graph, x: T, w: T, form: str = "conv") -> T:
    """SKA of ``x`` ``(B, C, H, W)`` with the kernels ``w`` ``(B, G*9, H, W)`` (channel
    ``g*9 + k`` is tap k of kernel g; channel c of x uses kernel ``c mod G``)."""
    groups = w.c // 9
    r = x.c // groups
    wv = g.reshape(w.name, (1, groups, 9, x.h, x.w))  # (B, 1, G, 9, H, W): broadcast over r
    if form == "conv":
        # the nine shifted copies of every channel: a constant depthwise conv, channel c*9 + k
        taps = np.zeros((x.c * 9, 1, 3, 3), np.float32)
        for c in range(x.c):
            for k in range(9):
                taps[c * 9 + k, 0, k // 3, k % 3] = 1.0
        shifted = g.op("Conv", [x.name, g.const(taps, "taps")], kernel_shape=[3, 3], pads=[1] * 4, group=x.c)
        prod = g.op("Mul", [g.reshape(shifted, (r, groups, 9, x.h, x.w)), wv])
        out = g.op("ReduceSum", [prod, g.const([3], "axes", np.int64)], keepdims=0)
    elif form == "slices":
        xp = g.op("Pad", [x.name, g.const([0, 0, 1, 1, 0, 0, 1, 1], "pads", np.int64)])
        xp = g.reshape(xp, (r, groups, x.h + 2, x.w + 2))
        out = None
        axes = g.const([3, 4], "axes", np.int64)
        for k in range(9):
            i, j = divmod(k, 3)
            tap = g.op("Slice", [xp, g.const([i, j], "start", np.int64),
                                 g.const([i + x.h, j + x.w], "end", np.int64), axes])
            wk = g.op("Slice", [wv, g.const([k], "start", np.int64), g.const([k + 1], "end", np.int64),
                                g.const([3], "axes", np.int64)])
            wk = g.op("Squeeze", [wk, g.const([3], "axes", np.int64)])
            term = g.op("Mul", [tap, wk])
            out = term if out is None else g.op("Add", [out, term])
    else:
        raise ValueError(f"ska form {form!r}; choose one of {SKA_FORMS}")
    return T(g.reshape(out, (x.c, x.h, x.w)), x.c, x.h, x.w)


def lsconv(g: Graph, x: T, m, form: str) -> T:
    lkp = m.lkp
    w = conv_module(g, relu(g, conv_module(g, x, lkp.cv1)), lkp.cv2)
    w = relu(g, conv_module(g, w, lkp.cv3))
    w = group_norm(g, conv_module(g, w, lkp.cv4), lkp.norm)
    return add(g, batch_norm(g, ska(g, x, w, form), m.bn), x)


def squeeze_excite(g: Graph, x: T, m) -> T:
    s = T(g.op("GlobalAveragePool", [x.name]), x.c)
    s = conv_module(g, relu(g, conv_module(g, s, m.fc1)), m.fc2)
    return dataclasses.replace(x, name=g.op("Mul", [x.name, g.op("Sigmoid", [s.name])]))


def attention_bias(m, h: int, w: int) -> np.ndarray:
    """The dense ``(heads, N, N)`` bias at an ``h x w`` grid, as the JAX attention adds it."""
    from lsnet_jax.kernels.resize import resize_bicubic_2d

    bias = m.bias()
    n = h * w
    if m.resize_bias:
        bias = resize_bicubic_2d(bias, (n, n))
    elif (h, w) != (m.resolution, m.resolution):
        raise ValueError(f"Attention was built for a {m.resolution}x{m.resolution} grid but the export's "
                         f"is {h}x{w}: build the model with the export's img_size")
    return np.asarray(bias, np.float32)


def attention(g: Graph, x: T, m) -> T:
    nh, kd, d, n = m.num_heads, m.key_dim, m.d, x.h * x.w
    qkv = conv_module(g, x, m.qkv)
    q, k, v = g.ops("Split", [qkv.name, g.const([nh * kd, nh * kd, nh * d], "split", np.int64)], 3, axis=1)
    dw = m.dw.c  # the scale kd**-0.5 folded into the query's depthwise conv
    scale = kd ** -0.5
    q = conv(g, T(q, nh * kd, x.h, x.w), _np(dw.kernel) * scale, _np(dw.bias) * scale, 1, 1, nh * kd)
    qt = g.op("Transpose", [g.reshape(q.name, (nh, kd, n))], perm=[0, 1, 3, 2])  # (B, nh, N, kd)
    attn = g.op("MatMul", [qt, g.reshape(k, (nh, kd, n))])  # (B, nh, N, N)
    attn = g.op("Add", [attn, g.const(attention_bias(m, x.h, x.w)[None], "bias")])
    attn = g.op("Softmax", [attn], axis=-1)
    # out^T (B, nh, d, N) = v (B, nh, d, N) @ attn^T: the channel order h*d + j without a transpose back
    out = g.op("MatMul", [g.reshape(v, (nh, d, n)), g.op("Transpose", [attn], perm=[0, 1, 3, 2])])
    out = relu(g, T(g.reshape(out, (nh * d, x.h, x.w)), nh * d, x.h, x.w))
    return conv_module(g, out, m.proj)


def block(g: Graph, x: T, m, form: str) -> T:
    from lsnet_jax.models.layers import Attention, LSConv, RepVGGDW

    mixer = m.mixer
    if isinstance(mixer, Attention):
        x = add(g, x, attention(g, x, mixer))
    elif isinstance(mixer, LSConv):
        x = lsconv(g, x, mixer, form)
    elif isinstance(mixer, RepVGGDW):
        if mixer.conv1 is not None:
            raise ValueError("the ONNX graph is written from the folded model (deploy=True or models.fold)")
        x = conv_module(g, x, mixer.conv)
    else:
        raise TypeError(f"no ONNX form for the mixer {type(mixer).__name__}")
    if m.se is not None:
        x = squeeze_excite(g, x, m.se)
    ffn = conv_module(g, relu(g, conv_module(g, x, m.ffn.pw1)), m.ffn.pw2)
    return add(g, x, ffn)


def backbone(g: Graph, x: T, m, form: str) -> list[T]:
    """The stem and the four stages of an ``LSNet`` on NCHW ``x``: the stage outputs."""
    for i, c in enumerate(m.patch_embed):
        x = conv_module(g, x, c)
        if i < 2:
            x = relu(g, x)
    feats = []
    for stage in m.stages:
        if stage.downsample is not None:
            x = conv_module(g, conv_module(g, x, stage.downsample.dw), stage.downsample.pw)
        for b in stage.blocks:
            x = block(g, x, b, form)
        feats.append(x)
    return feats


def classifier_head(g: Graph, x: T, m) -> str:
    """Global average pool and the (folded) linear head; a distilled model's two heads averaged."""
    if m.head is None:
        raise ValueError("the model has no classifier head (num_classes=0)")
    heads = [m.head] if m.head_dist is None else [m.head, m.head_dist]
    for h in heads:
        if h.bn is not None:
            raise ValueError("the ONNX graph is written from the folded model (deploy=True or models.fold)")
    if m.head_dist is not None and not m.deterministic:
        raise ValueError("a distilled classifier in training mode returns two heads: export it in eval mode")
    w = sum(_np(h.l.kernel) for h in heads) / len(heads)
    b = sum(_np(h.l.bias) for h in heads) / len(heads)
    pooled = g.op("Flatten", [g.op("GlobalAveragePool", [x.name])], axis=1)
    return g.op("Gemm", [pooled, g.const(w, "head_w"), g.const(b, "head_b")], stem="logits")


def _resize_bilinear(g: Graph, x: T, h: int, w: int) -> T:
    from lsnet_jax.kernels.resize import bilinear_matrix

    if (x.h, x.w) == (h, w):
        return x
    y = g.op("MatMul", [x.name, g.const(bilinear_matrix(x.w, w).T, "mw")])  # (B, C, H, w)
    y = g.op("MatMul", [g.const(bilinear_matrix(x.h, h), "mh"), y])  # (B, C, h, w)
    return T(y, x.c, h, w)


def _resize_nearest(g: Graph, x: T, h: int, w: int) -> T:
    from lsnet_jax.kernels.resize import nearest_index

    if (x.h, x.w) == (h, w):
        return x
    y = g.op("Gather", [x.name, g.const(nearest_index(x.h, h), "rows", np.int64)], axis=2)
    y = g.op("Gather", [y, g.const(nearest_index(x.w, w), "cols", np.int64)], axis=3)
    return T(y, x.c, h, w)


def semantic_fpn(g: Graph, x: T, m, form: str) -> str:
    feats = backbone(g, x, m.backbone, form)
    lat = [conv_module(g, f, c.conv) for c, f in zip(m.neck.lateral_convs, feats)]
    for i in range(len(lat) - 1, 0, -1):
        lat[i - 1] = add(g, lat[i - 1], _resize_nearest(g, lat[i], lat[i - 1].h, lat[i - 1].w))
    levels = [conv_module(g, f, c.conv) for c, f in zip(m.neck.fpn_convs, lat)]
    head = m.decode_head
    out = None
    for f, blocks, up in zip(levels, head.scale_heads, head.upsample):
        for c in blocks:
            f = relu(g, conv_module(g, f, c))
            if up:
                f = _resize_bilinear(g, f, 2 * f.h, 2 * f.w)
        out = f if out is None else add(g, out, _resize_bilinear(g, f, out.h, out.w))
    logits = conv_module(g, out, head.conv_seg)
    return g.op("Transpose", [logits.name], stem="logits", perm=[0, 2, 3, 1])


def model_proto(model: nnx.Module, img_size: int | tuple[int, int], batch: int | None = None,
                name: str = "lsnet", ska_form: str = "conv"):
    """The ONNX ``ModelProto`` of a folded LSNet classifier or LSNet + Semantic FPN segmenter."""
    from onnx import TensorProto, checker, helper

    from lsnet_jax.models.lsnet import LSNet
    from lsnet_jax.models.semfpn import SemanticFPN

    if ska_form not in SKA_FORMS:
        raise ValueError(f"ska form {ska_form!r}; choose one of {SKA_FORMS}")
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    g = Graph()
    b = "B" if batch is None else batch
    nchw = T(g.op("Transpose", ["images"], perm=[0, 3, 1, 2]), 3, h, w)
    if isinstance(model, SemanticFPN):
        if h % 32 or w % 32:
            raise ValueError(f"the segmenter takes images whose sides are multiples of 32, got {h}x{w}")
        out = semantic_fpn(g, nchw, model, ska_form)
        classes = model.cfg.num_classes
        out_shape = [b, h // 8, w // 8, classes]
    elif isinstance(model, LSNet):
        out = classifier_head(g, backbone(g, nchw, model, ska_form)[-1], model)
        out_shape = [b, int(model.head.l.kernel.shape[-1])]
    else:
        raise TypeError(f"no direct ONNX graph for {type(model).__name__}")
    if model.dtype != np.float32:
        raise ValueError("the ONNX graph is written in float32: build the model with dtype float32")
    g.nodes.append(helper.make_node("Identity", [out], ["logits"]))
    graph = helper.make_graph(
        g.nodes, name, [helper.make_tensor_value_info("images", TensorProto.FLOAT, [b, h, w, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)], initializer=g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="lsnet-jax")
    proto.ir_version = 8  # what every ONNX Runtime from 1.14 reads
    checker.check_model(proto)
    return proto


def supports(model: nnx.Module) -> bool:
    """Whether ``model_proto`` writes this model (LSNet classifiers and segmenters)."""
    from lsnet_jax.models.lsnet import LSNet
    from lsnet_jax.models.semfpn import SemanticFPN

    return isinstance(model, (LSNet, SemanticFPN))
