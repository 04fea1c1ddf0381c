"""timm's (and DeiT's) RegNet state-dict names and the mapping onto the JAX RegNet, both ways.

timm names a block ``s{i+1}.b{j+1}`` and a conv-BN pair ``conv`` / ``bn``; the JAX model groups
the blocks into ``stages[i].blocks[j]`` and names the convolution of a ``ConvBN`` ``c``. DeiT's
teacher checkpoint (``regnety_160-a5fe301d.pth``) is ``{'model': state_dict}`` in timm 0.5.4's
names; timm's own ``regnety_160.deit_in1k`` weights use the same names. Pure numpy.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np

from lsnet_jax.checkpoints.state import CheckpointMismatchError, JaxPath, state_shapes
from lsnet_jax.models import lsnet_official
from lsnet_jax.models.layers import abstract
from lsnet_jax.models.regnet import VARIANTS, RegNet, model_config


def torch_key(path: JaxPath) -> str:
    """The timm state-dict key of the JAX parameter at ``path``."""
    p = [str(s) for s in path]
    if p[0] == "stages":
        prefix, rest = [f"s{int(p[1]) + 1}", f"b{int(p[3]) + 1}"], p[4:]
    elif p[0] == "stem":
        prefix, rest = ["stem"], p[1:]
    elif p[0] == "head":
        prefix, rest = ["head", "fc"], p[1:]
    else:
        raise KeyError(f"no timm name for {path}")
    if rest[-1] not in lsnet_official.LEAF_TO_TORCH:
        raise KeyError(f"no timm name for {path}")
    rest = ["conv" if s == "c" else s for s in rest[:-1]] + [lsnet_official.LEAF_TO_TORCH[rest[-1]]]
    return ".".join(prefix + rest)


def is_regnet(state_dict: Mapping[str, np.ndarray]) -> bool:
    return "stem.conv.weight" in state_dict and "s1.b1.conv1.conv.weight" in state_dict


@functools.lru_cache(maxsize=32)
def expected_jax_shapes(name: str, num_classes: int = 1000) -> dict[JaxPath, tuple]:
    """Leaf shapes of the training-form RegNet, without initialising it (cached: detection may try
    several variants). Do not modify the returned dict."""
    return state_shapes(abstract(functools.partial(RegNet, model_config(name, num_classes))))


def _layout(state_dict: Mapping[str, np.ndarray]) -> tuple[int, list[tuple[int, int, int]], bool]:
    """(stem width, per stage (width, depth, group width), has SE) read off the keys and shapes."""
    stages = []
    for i in range(1, 5):
        blocks = {k.split(".")[1] for k in state_dict if k.startswith(f"s{i}.b")}
        if not blocks:
            break
        w = int(np.shape(state_dict[f"s{i}.b1.conv3.conv.weight"])[0])
        group_width = int(np.shape(state_dict[f"s{i}.b1.conv2.conv.weight"])[1])
        stages.append((w, len(blocks), group_width))
    return int(np.shape(state_dict["stem.conv.weight"])[0]), stages, "s1.b1.se.fc1.weight" in state_dict


def torch_to_jax(state_dict: Mapping[str, np.ndarray], name: str, num_classes: int,
                 what: str = "checkpoint") -> dict[JaxPath, np.ndarray]:
    """Every leaf of ``name`` from the state dict (keys and shapes checked both ways)."""
    return lsnet_official.torch_to_jax(state_dict, expected_jax_shapes(name, num_classes), what, torch_key)


def jax_to_torch(params: Mapping[JaxPath, np.ndarray]) -> dict[str, np.ndarray]:
    return lsnet_official.jax_to_torch(params, torch_key)


def detect_variant(state_dict: Mapping[str, np.ndarray]) -> tuple[str, int]:
    """(model name, num_classes) of a timm RegNet state dict, from its stage widths, depths,
    group widths and SE; a ``CheckpointMismatchError`` names the closest variant otherwise."""
    num_classes = int(np.shape(state_dict["head.fc.weight"])[0]) if "head.fc.weight" in state_dict else 1000
    stem, stages, se = _layout(state_dict)
    names = [n for n in VARIANTS if n.startswith("regnety" if se else "regnetx")]
    for name in names:
        cfg = model_config(name)
        if cfg.stem_width == stem and cfg.stages() == stages:
            torch_to_jax(state_dict, name, num_classes, what=name)  # every key and shape, both ways
            return name, num_classes
    raise CheckpointMismatchError(
        "RegNet checkpoint", [], [], [],
        hint=f"No RegNet variant has these stages (stem {stem}, (width, depth, group width) {stages}, "
             f"{'with' if se else 'without'} SE); known: {sorted(VARIANTS)}")
