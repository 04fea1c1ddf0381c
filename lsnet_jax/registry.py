"""``create_model`` / ``list_models``: the LSNet variants by name, as timm users expect."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lsnet_jax.fold import fold
from lsnet_jax.model import DEFAULT_CFGS, LSNet, model_config, resize_attention_biases
from lsnet_jax.weights import load_flat, load_weights

log = logging.getLogger(__name__)


def list_models() -> list[str]:
    return sorted(DEFAULT_CFGS)


def create_model(name: str, pretrained: str | os.PathLike | None = None, num_classes: int | None = None,
                 img_size: int | None = None, dtype: jnp.dtype = jnp.float32, deploy: bool = False,
                 bn_group_size: int | None = None, seed: int = 0) -> LSNet:
    """Build ``name`` (see ``list_models()``), optionally with weights, in eval mode.

    pretrained: a directory written by ``convert_torch.py`` / ``save_weights``, or a
        ``.safetensors`` file. With another ``num_classes`` than the weights the heads are
        re-initialised; with another ``img_size`` the attention bias tables are resized.
    deploy: fold BatchNorms and RepVGG branches (``lsnet_jax.fold``) for inference.
    dtype: compute dtype (parameters stay float32).
    Call ``model.train()`` before training.
    """
    flat, meta = (None, {}) if pretrained is None else load_weights(pretrained)
    if meta.get("model") and meta["model"] != name:
        raise ValueError(f"{pretrained} holds weights of {meta['model']!r}, not {name!r}")
    ckpt_classes = int(meta.get("num_classes", 0)) or None
    if flat is not None and ckpt_classes is None and ("head", "l", "kernel") in flat:
        ckpt_classes = int(flat[("head", "l", "kernel")].shape[1])
    num_classes = num_classes if num_classes is not None else (ckpt_classes or DEFAULT_CFGS[name]["num_classes"])
    cfg = model_config(name, num_classes=num_classes, img_size=img_size or 224)
    new_head = flat is not None and ckpt_classes is not None and ckpt_classes != num_classes
    if flat is None or new_head:
        model = LSNet(cfg, dtype=dtype, bn_group_size=bn_group_size, rngs=nnx.Rngs(seed))
    else:  # every array comes from the weights: skip the random initialisation
        model = nnx.eval_shape(lambda: LSNet(cfg, dtype=dtype, bn_group_size=bn_group_size, rngs=nnx.Rngs(0)))
    if flat is not None:
        if new_head:
            log.info("new %d-class head (weights have %d classes)", num_classes, ckpt_classes)
            fresh = {tuple(p): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model))
                     if p[0] in ("head", "head_dist")}
            flat = {p: a for p, a in flat.items() if p[0] not in ("head", "head_dist")} | fresh
        res = cfg.resolutions()[3]
        flat = {p: (np.asarray(resize_attention_biases(jnp.asarray(a), res))
                    if p[-1] == "attention_biases" else a) for p, a in flat.items()}
        load_flat(model, flat, what=str(pretrained))
    if deploy:
        model = fold(model)
    model.eval()
    return model



def compiled(model: nnx.Module) -> Callable[[jax.Array], jax.Array]:
    """``model(x)`` as one XLA computation, compiled once per input shape, with the model's weights
    as they are now. For a model in eval mode; a handful of calls this way is much faster than
    running the model eagerly, op by op."""
    graph, state = nnx.split(model)
    apply = jax.jit(lambda s, x: nnx.merge(graph, s)(x))
    return functools.partial(apply, state)
