"""LSNet-S + RetinaNet on COCO 2017, the official recipe (12 epochs at 16 images per step, AdamW
1e-4 with weight decay 0.05 but none on the attention biases, step decay at epochs 8 and 11 after a
500-iteration warm-up; official box AP 36.5).

    python scripts/prepare_coco.py --root COCO --data_dir ~/tensorflow_datasets
    lsnet-convert lsnet_s.pth weights/lsnet_s          # the ImageNet backbone
    python train.py --config configs/retinanet_lsnet_s_coco.py --workdir runs/retinanet_lsnet_s \
        --config.backbone_weights=weights/lsnet_s --config.data.data_dir=~/tensorflow_datasets

Static shapes: six padded training shapes (``aug.pad_shapes``: 800 x 1088/1216/1344 and their
portrait twins), each batch drawn from one (MMDetection's GroupSampler by orientation, with widths):
six train programs. Evaluation pads each image to its own multiples of 32 as the official test:
one eval program per distinct size. ``python scripts/det_shapes.py instances_train2017.json``
prints the programs and the padding against the official batches for any shape list.
"""

from lsnet_jax.train.config import detection_config


def get_config():
    return detection_config("lsnet_s_retinanet")
