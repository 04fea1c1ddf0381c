"""LSNet-S + RetinaNet on COCO 2017, the official recipe (12 epochs at 16 images per step, AdamW
1e-4 with weight decay 0.05 but none on the attention biases, step decay at epochs 8 and 11 after a
500-iteration warm-up; official box AP 36.5).

    python scripts/prepare_coco.py --root COCO --data_dir ~/tensorflow_datasets
    lsnet-convert lsnet_s.pth weights/lsnet_s          # the ImageNet backbone
    python train.py --config configs/retinanet_lsnet_s_coco.py --workdir runs/retinanet_lsnet_s \
        --config.backbone_weights=weights/lsnet_s --config.data.data_dir=~/tensorflow_datasets

Not yet the official numbers: every image is padded to one 1344x1344 shape (one compiled program),
where the official batches pad to their largest image (800 x up to 1344 for two landscape images);
the backbone's last-stage attention attends over the padding, so outputs differ from the official
ones. Batches grouped by orientation into a few padded shapes are the next step (issue 28).
"""

from lsnet_jax.train.config import detection_config


def get_config():
    return detection_config("lsnet_s_retinanet")
