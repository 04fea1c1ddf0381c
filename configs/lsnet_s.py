"""LSNet-S on ImageNet-1k, the published recipe: expected top-1 77.8% (79.0% distilled).

    python train.py --config configs/lsnet_s.py --workdir runs/lsnet_s
    python train.py --config configs/lsnet_s.py:distill --workdir runs/lsnet_s_distill \\
        --config.distillation.teacher_checkpoint=weights/regnety_160
    # (weights/regnety_160: lsnet-convert regnety_160-a5fe301d.pth weights/regnety_160, DeiT's teacher)

The lr schedule is the official per-epoch one (config.lr_schedule="official": stepped after each
epoch, so epochs 0 and 1 train at 1e-6, as the official logs); "per_step" is the smoother option.
"""

from lsnet_jax.train.config import variant_config


def get_config(arg: str = ""):
    return variant_config("lsnet_s", weight_decay=0.025, arg=arg)
