"""LSNet ("LSNet: See Large, Focus Small", CVPR 2025) in JAX / Flax NNX."""

from lsnet_jax.kernels import ska
from lsnet_jax.models import (DEFAULT_CFGS, LSNet, LSNetConfig, compiled, create_model, fold, fold_state,
                              list_models, model_config)

__all__ = ["DEFAULT_CFGS", "LSNet", "LSNetConfig", "compiled", "create_model", "fold", "fold_state", "list_models",
           "model_config", "ska"]
__version__ = "0.1.0"
