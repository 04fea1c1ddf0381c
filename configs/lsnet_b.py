"""LSNet-B on ImageNet-1k, the published recipe: expected top-1 80.3% (81.6% distilled).

    python train.py --config configs/lsnet_b.py --workdir runs/lsnet_b
    python train.py --config configs/lsnet_b.py:distill --workdir runs/lsnet_b_distill \\
        --config.distillation.teacher_model=NAME --config.distillation.teacher_checkpoint=WEIGHTS
"""

from lsnet_jax.train.config import variant_config


def get_config(arg: str = ""):
    return variant_config("lsnet_b", weight_decay=0.05, arg=arg)
