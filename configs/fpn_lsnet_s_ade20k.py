"""LSNet-S + Semantic FPN on ADE20K, as published (40k iterations, global batch 32, AdamW 2e-4,
poly; official mIoU 41.6).

    python scripts/prepare_ade20k.py --root ADEChallengeData2016 --data_dir ~/tensorflow_datasets
    lsnet-convert lsnet_s.pth weights/lsnet_s          # the ImageNet backbone
    python train.py --config configs/fpn_lsnet_s_ade20k.py --workdir runs/fpn_lsnet_s \
        --config.backbone_weights=weights/lsnet_s
"""

from lsnet_jax.train.config import segmentation_config


def get_config():
    return segmentation_config("lsnet_s_semfpn")
