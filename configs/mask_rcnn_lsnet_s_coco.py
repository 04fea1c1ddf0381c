"""LSNet-S + Mask R-CNN on COCO 2017, the official recipe (12 epochs at 16 images per step, AdamW
1e-4 with weight decay 0.05 but none on the attention biases, step decay at epochs 8 and 11 after a
500-iteration warm-up; official box / mask AP 37.4 / 34.8).

    python scripts/prepare_coco.py --root COCO --data_dir ~/tensorflow_datasets
    lsnet-convert lsnet_s.pth weights/lsnet_s          # the ImageNet backbone
    python train.py --config configs/mask_rcnn_lsnet_s_coco.py --workdir runs/mask_rcnn_lsnet_s \
        --config.backbone_weights=weights/lsnet_s --config.data.data_dir=~/tensorflow_datasets

Static shapes as the RetinaNet recipe's: six padded training shapes (one train program each), each
image's instance masks padded with it (aug.max_boxes x H x W bytes per image); 1,000 proposals
and 512 sampled RoIs per image with valid masks; evaluation pads each image to its own multiples of
32 as the official test (one eval program per distinct size).
"""

from lsnet_jax.train.config import maskrcnn_config


def get_config():
    return maskrcnn_config("lsnet_s_maskrcnn")
