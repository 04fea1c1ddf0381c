"""The small segmentation default: LSNet-T + Semantic FPN on digit scenes, 2 CPU cores, no download.

    python train.py --config configs/seg_digits.py --workdir runs/seg_digits

``lsnet_seg_digits`` (prepared on first use in ``data.data_dir``): 128x128 scenes of scikit-learn's
handwritten digits pasted on textured backgrounds, every pixel labelled background or its digit
(11 classes), read by the ADE20K pipeline (ratio-range resize, random crop, flip, photometric
distortion, pad) with the same loss, poly schedule and mmseg metric. Differences from the ADE20K
recipe, and why: no ImageNet backbone exists offline, so the backbone trains from scratch with
its BatchNorms in training mode (``freeze_backbone_bn`` False) at a higher lr; background is a real
class (no ``reduce_zero_label``); ``cat_max_ratio`` is off (background covers most of any crop).
Measured: see the README (mIoU on the 200 test scenes of unseen digit glyphs).
"""

from lsnet_jax.train.config import segmentation_config


def get_config():
    c = segmentation_config("lsnet_t_semfpn")
    c.freeze_backbone_bn = False
    c.batch_size = 16
    c.iterations = 600
    c.lr = 1e-3
    c.min_lr = 1e-5
    c.weight_decay = 1e-4
    c.data.name = "lsnet_seg_digits"
    c.data.data_dir = "data/tfds"
    c.data.eval_split = "test"
    c.data.workers = 0
    c.data.threads = 2
    c.aug.scale = (512, 128)
    c.aug.ratio_range = (0.75, 1.5)
    c.aug.crop = (128, 128)
    c.aug.cat_max_ratio = 1.0
    c.aug.reduce_zero_label = False
    c.aug.test_scale = (512, 128)
    c.log_every_steps = 25
    c.eval_every_steps = 200
    c.checkpoint_every_steps = 100
    return c
