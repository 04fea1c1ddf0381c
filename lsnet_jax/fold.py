"""Deploy form: fold BatchNorms and RepVGG branches into plain convolutions, as pure functions.

``fold_state(state) -> state`` maps the training form's nested state (``nnx.State.to_pure_dict()``)
to the deploy form's: every ConvBN becomes one conv with bias, every RepVGGDW (3x3 + 1x1 +
identity) one 3x3 depthwise conv, every BNLinear one Linear, and each attention's bias table is
gathered once into the dense ``(heads, N, N)`` bias. ``fold(model)`` builds the deploy model.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lsnet_jax.layers import BN_EPS, attention_bias_idxs

Tree = dict[Any, Any]


def _bn_affine(bn: Tree) -> tuple[jax.Array, jax.Array]:
    a = bn["scale"] / jnp.sqrt(bn["var"] + BN_EPS)
    return a, bn["bias"] - bn["mean"] * a


def fold_conv_bn(t: Tree) -> Tree:
    """ConvBN {c: {kernel}, bn} -> {c: {kernel, bias}}; HWIO kernel scaled per output channel."""
    a, b = _bn_affine(t["bn"])
    return {"c": {"kernel": t["c"]["kernel"] * a, "bias": b}}


def fold_repvgg_dw(t: Tree) -> Tree:
    """RepVGGDW {conv, conv1} (already folded) -> {conv}: 1x1 and identity join the 3x3 centre tap."""
    k3, b3 = t["conv"]["c"]["kernel"], t["conv"]["c"]["bias"]
    k1, b1 = t["conv1"]["c"]["kernel"], t["conv1"]["c"]["bias"]
    k = k3.at[1, 1].add(k1[0, 0] + 1.0)
    return {"conv": {"c": {"kernel": k, "bias": b3 + b1}}}


def fold_bn_linear(t: Tree) -> Tree:
    """BNLinear {bn, l} -> {l}: y = (x*a + b) W + c = x (a W) + (b W + c)."""
    a, b = _bn_affine(t["bn"])
    w = t["l"]["kernel"]
    return {"l": {"kernel": w * a[:, None], "bias": b @ w + t["l"]["bias"]}}


def fold_attention_bias(t: Tree) -> Tree:
    table = t["attention_biases"]
    res = int(round(table.shape[1] ** 0.5))
    out = {k: v for k, v in t.items() if k != "attention_biases"}
    out["ab"] = table[:, np.asarray(attention_bias_idxs(res))]
    return out


def fold_state(t: Any) -> Any:
    """Fold a training-form state tree (pure nested dict) into the deploy form."""
    if not isinstance(t, dict):
        return t
    t = {k: fold_state(v) for k, v in t.items()}
    keys = set(t)
    if keys == {"c", "bn"} and isinstance(t["bn"], dict):
        return fold_conv_bn(t)
    if keys == {"conv", "conv1"}:
        return fold_repvgg_dw(t)
    if keys == {"bn", "l"}:
        return fold_bn_linear(t)
    if "attention_biases" in keys:
        return fold_attention_bias(t)
    return t


def fold(model: nnx.Module) -> nnx.Module:
    """The deploy-form twin of an LSNet (training form), in eval mode."""
    from lsnet_jax.model import LSNet

    if model.deploy:
        raise ValueError("model is already in deploy form")
    folded = jax.jit(fold_state)(nnx.state(model).to_pure_dict())
    deploy = nnx.eval_shape(lambda: LSNet(model.cfg, deploy=True, dtype=model.dtype, rngs=nnx.Rngs(0)))
    state = nnx.state(deploy)
    nnx.replace_by_pure_dict(state, folded)
    nnx.update(deploy, state)
    deploy.eval()
    return deploy
