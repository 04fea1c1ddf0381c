"""Random PyTorch reference models with realistic, non-trivial statistics (for parity tests)."""

from __future__ import annotations

import torch
from torch import nn

from lsnet_jax.testing import diverse_images
from lsnet_jax.torch_reference import FFN, Attention, LSConv, RepVGGDW


def residual_branch_end_bns(model: nn.Module) -> list[nn.Module]:
    """BatchNorms that close a residual branch (zero- or small-initialised in trained networks)."""
    out: list[nn.Module] = []
    for m in model.modules():
        if isinstance(m, FFN):
            out.append(m.pw2.bn)
        elif isinstance(m, Attention):
            out.append(m.proj[1].bn)
        elif isinstance(m, LSConv):
            out.append(m.bn)
        elif isinstance(m, RepVGGDW):
            out += [m.conv.bn, m.conv1.bn]
    return out


@torch.no_grad()
def randomize_(model: nn.Module, seed: int, img_size: int = 224, logit_scale: float = 10.0,
               stats: str = "random") -> nn.Module:
    """Random affines, biases and bias tables, random BatchNorm running statistics, heads scaled so
    the logits are of order ``logit_scale``. Returns the model in eval mode.

    ``stats="random"``: running means U(-0.3, 0.3), running variances U(0.5, 1.5).
    ``stats="measured"``: the statistics of a training-mode pass over 16 random images, then
    perturbed, so every BatchNorm sees unit-variance activations as in a trained network. The head's
    BatchNorm then divides pooled features whose spread over images is small against their mean
    (|mean|/std up to ~25), which multiplies float32 rounding: PyTorch float32 is itself 0.6-1.1e-5
    of the logits' std away from float64 on such models, against 4-5e-7 with random statistics.

    BatchNorms closing a residual branch get gammas in [0.02, 0.1] (others [0.5, 1.5]), as trained
    residual networks have: with gammas of order 1 everywhere a random LSNet is chaotic, and even
    PyTorch float32 against float64 differs by 1e-2 of the logits' std.
    """
    if stats not in ("random", "measured"):
        raise ValueError(f"stats must be 'random' or 'measured', got {stats!r}")
    g = torch.Generator().manual_seed(seed)

    def rand(shape, lo, hi):
        return torch.rand(shape, generator=g) * (hi - lo) + lo

    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)):
            m.weight.copy_(rand(m.weight.shape, 0.5, 1.5))
            m.bias.copy_(rand(m.bias.shape, -0.3, 0.3))
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)) and m.bias is not None:
            m.bias.copy_(rand(m.bias.shape, -0.2, 0.2))
        if hasattr(m, "attention_biases"):
            m.attention_biases.copy_(torch.randn(m.attention_biases.shape, generator=g))
    for bn in residual_branch_end_bns(model):
        bn.weight.copy_(rand(bn.weight.shape, 0.02, 0.1))
    bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    if stats == "random":
        for m in bns:
            m.running_mean.copy_(rand(m.running_mean.shape, -0.3, 0.3))
            m.running_var.copy_(rand(m.running_var.shape, 0.5, 1.5))
    else:
        for m in bns:  # one training-mode pass with momentum 1 takes the batch statistics
            m.momentum = 1.0
        model.train()
        model(torch.from_numpy(diverse_images(16, img_size, seed + 1)))
        for m in bns:
            m.momentum = 0.1
            m.running_var.mul_(rand(m.running_var.shape, 0.95, 1.05))  # not exactly the batch's
            m.running_mean.add_(rand(m.running_mean.shape, -0.02, 0.02))
    model.eval()
    if hasattr(model, "roi_head"):  # Mask R-CNN: RPN logits of order 2, RoI class logits of order logit_scale
        from lsnet_jax.testing import random_boxes

        x = torch.from_numpy(diverse_images(1, img_size, seed + 2))
        cls, reg, feats = model(x)
        rois = torch.cat([torch.zeros(64, 1), torch.from_numpy(random_boxes(64, img_size, img_size, seed))], 1)
        box_cls, box_reg = model.bbox_forward(feats, rois)
        masks = model.mask_forward(feats, rois)
        head = model.roi_head
        for layer, outs, scale in ((model.rpn_head.rpn_cls, cls, 2.0), (model.rpn_head.rpn_reg, reg, 0.5),
                                   (head.bbox_head.fc_cls, [box_cls], logit_scale),
                                   (head.bbox_head.fc_reg, [box_reg], 0.5), (head.mask_head.conv_logits, [masks], 2.0)):
            std = torch.cat([o.flatten() for o in outs]).std()
            layer.weight.mul_(scale / std)
            layer.bias.mul_(scale / std)
        return model
    if hasattr(model, "bbox_head"):  # a detector: class logits of order logit_scale, deltas of order 0.5
        cls, reg = model(torch.from_numpy(diverse_images(1, img_size, seed + 2)))
        for conv, outs, scale in ((model.bbox_head.retina_cls, cls, logit_scale), (model.bbox_head.retina_reg, reg, 0.5)):
            std = torch.cat([o.flatten() for o in outs]).std()
            conv.weight.mul_(scale / std)
            conv.bias.mul_(scale / std)
        return model
    if hasattr(model, "decode_head"):  # a segmenter: its classifier is conv_seg
        heads = [model.decode_head.conv_seg]
    else:
        heads = [model.head.l] + ([model.head_dist.l] if getattr(model, "distillation", False) else [])
    std = model(torch.from_numpy(diverse_images(4 if len(heads) > 1 or img_size <= 224 else 1, img_size,
                                                seed + 2))).std()
    for h in heads:
        h.weight.mul_(logit_scale / std)
        h.bias.mul_(logit_scale / std)
    return model
