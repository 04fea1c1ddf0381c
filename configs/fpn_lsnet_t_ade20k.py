"""LSNet-T + Semantic FPN on ADE20K, as published (40k iterations, global batch 32, AdamW 2e-4,
poly; official mIoU 40.1).

    python scripts/prepare_ade20k.py --root ADEChallengeData2016 --data_dir ~/tensorflow_datasets
    lsnet-convert lsnet_t.pth weights/lsnet_t          # the ImageNet backbone
    python train.py --config configs/fpn_lsnet_t_ade20k.py --workdir runs/fpn_lsnet_t \
        --config.backbone_weights=weights/lsnet_t
"""

from lsnet_jax.train.config import segmentation_config


def get_config():
    return segmentation_config("lsnet_t_semfpn")
