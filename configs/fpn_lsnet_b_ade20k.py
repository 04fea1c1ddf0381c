"""LSNet-B + Semantic FPN on ADE20K, as published (40k iterations, global batch 32, AdamW 2e-4,
poly; official mIoU 43.1).

    python scripts/prepare_ade20k.py --root ADEChallengeData2016 --data_dir ~/tensorflow_datasets
    lsnet-convert lsnet_b.pth weights/lsnet_b          # the ImageNet backbone
    python train.py --config configs/fpn_lsnet_b_ade20k.py --workdir runs/fpn_lsnet_b \
        --config.backbone_weights=weights/lsnet_b
"""

from lsnet_jax.train.config import segmentation_config


def get_config():
    return segmentation_config("lsnet_b_semfpn")
