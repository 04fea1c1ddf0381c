"""LSNet-T on ImageNet-1k, the published recipe: expected top-1 74.9% (76.1% distilled).

    python train.py --config configs/lsnet_t.py --workdir runs/lsnet_t
    python train.py --config configs/lsnet_t.py:distill --workdir runs/lsnet_t_distill \\
        --config.distillation.teacher_model=NAME --config.distillation.teacher_checkpoint=WEIGHTS
"""

from lsnet_jax.train.config import variant_config


def get_config(arg: str = ""):
    return variant_config("lsnet_t", weight_decay=0.025, arg=arg)
