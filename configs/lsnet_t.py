"""LSNet-T on ImageNet-1k, the published recipe: 74.9% top-1 (76.1% with distillation).

    python train.py --config configs/lsnet_t.py --workdir runs/lsnet_t
    python train.py --config configs/lsnet_t.py:distill --workdir runs/lsnet_t_distill \
        --config.distillation.teacher_model=... --config.distillation.teacher_checkpoint=...

300 epochs at a global batch of 2048 (lr 4e-3). The official per-GPU BatchNorm is
``--config.bn_group_size=256``. The distilled recipe uses a RegNetY-160 teacher; any model that
``create_model`` knows, with its checkpoint, can teach here.
"""

from lsnet_jax.train.config import base_config


def get_config(arg: str = ""):
    c = base_config()
    c.model = "lsnet_t"
    c.weight_decay = 0.025
    if arg == "distill":
        c.model = "lsnet_t_distill"
        c.distillation.type = "hard"
    return c
