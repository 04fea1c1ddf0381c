"""LSNet ("LSNet: See Large, Focus Small", CVPR 2025) in JAX / Flax NNX."""

from lsnet_jax.fold import fold, fold_state
from lsnet_jax.model import DEFAULT_CFGS, LSNet, LSNetConfig, model_config
from lsnet_jax.ops import ska
from lsnet_jax.registry import compiled, create_model, list_models

__all__ = ["DEFAULT_CFGS", "LSNet", "LSNetConfig", "compiled", "create_model", "fold", "fold_state", "list_models",
           "model_config", "ska"]
__version__ = "0.1.0"
