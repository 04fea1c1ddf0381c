"""LSNet-S on ImageNet-1k, the published recipe: expected top-1 77.8% (79.0% distilled).

    python train.py --config configs/lsnet_s.py --workdir runs/lsnet_s
    python train.py --config configs/lsnet_s.py:distill --workdir runs/lsnet_s_distill \\
        --config.distillation.teacher_model=NAME --config.distillation.teacher_checkpoint=WEIGHTS
"""

from lsnet_jax.train.config import variant_config


def get_config(arg: str = ""):
    return variant_config("lsnet_s", weight_decay=0.025, arg=arg)
