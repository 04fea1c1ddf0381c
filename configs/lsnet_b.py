"""LSNet-B on ImageNet-1k, the published recipe: 80.3% top-1 (81.6% with distillation).

    python train.py --config configs/lsnet_b.py --workdir runs/lsnet_b
    python train.py --config configs/lsnet_b.py:distill --workdir runs/lsnet_b_distill \
        --config.distillation.teacher_model=... --config.distillation.teacher_checkpoint=...

300 epochs at a global batch of 2048 (lr 4e-3). The official per-GPU BatchNorm is
``--config.bn_group_size=256``. The distilled recipe uses a RegNetY-160 teacher; any model that
``create_model`` knows, with its checkpoint, can teach here.
"""

from lsnet_jax.train.config import base_config


def get_config(arg: str = ""):
    c = base_config()
    c.model = "lsnet_b"
    c.weight_decay = 0.05  # LSNet-B: 0.05
    if arg == "distill":
        c.model = "lsnet_b_distill"
        c.distillation.type = "hard"
    return c
