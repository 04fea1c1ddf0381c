"""Deploy form: every module that changes between the training and the deploy form is folded by
its own rule (``fold_rule``, beside the module in ``lsnet_jax.models.layers``).

``fold_state(model, state) -> state`` walks ``model``'s modules alongside its pure state dict
(``nnx.to_pure_dict(nnx.state(model))``), children first, and applies each module's rule to its
part of the state: ConvBN -> one conv with bias, RepVGGDW (3x3 + 1x1 + identity) -> one 3x3
depthwise conv, BNLinear -> one Linear, an attention's bias table -> its dense ``(heads, N, N)``
bias. It reads only the modules' structure, so it is a pure function of ``state`` and jit-compiles.
``fold(model)`` returns the deploy model.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx


def fold_state(model: nnx.Module, state: Any) -> Any:
    """The deploy form of ``state``, the training-form state of ``model`` as a pure nested dict."""
    if not isinstance(state, dict):
        return state
    out = {}
    for key, value in state.items():
        child = model[key] if isinstance(key, int) else getattr(model, key)
        out[key] = fold_state(child, value) if isinstance(child, nnx.Module) else value
    rule = getattr(type(model), "fold_rule", None)
    return rule(out) if rule is not None else out


def fold(model: nnx.Module) -> nnx.Module:
    """The deploy-form twin of a model in training form (``model.deploy_twin()``), in eval mode."""
    if model.deploy:
        raise ValueError("model is already in deploy form")
    folded = jax.jit(lambda s: fold_state(model, s))(nnx.to_pure_dict(nnx.state(model)))
    deploy = model.deploy_twin()
    state = nnx.state(deploy)
    nnx.replace_by_pure_dict(state, folded)
    nnx.update(deploy, state)
    deploy.eval()
    return deploy
