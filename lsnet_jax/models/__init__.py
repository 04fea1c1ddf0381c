"""The model families (LSNet classifiers so far), their layers with fold rules, and the registry."""

from lsnet_jax.models.fold import fold, fold_state
from lsnet_jax.models.lsnet import DEFAULT_CFGS, LSNet, LSNetConfig, model_config
from lsnet_jax.models.regnet import RegNet, RegNetCfg
from lsnet_jax.models.registry import DTYPES, compiled, create_model, list_models

__all__ = ["DEFAULT_CFGS", "DTYPES", "LSNet", "LSNetConfig", "compiled", "create_model", "fold", "fold_state",
           "list_models", "model_config", "RegNet", "RegNetCfg"]
