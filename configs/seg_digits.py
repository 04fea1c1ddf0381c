"""The small segmentation default: LSNet-T + Semantic FPN on digit scenes, 2 CPU cores, no download.

    python train.py --config configs/seg_digits.py --workdir runs/seg_digits

``lsnet_seg_digits`` (prepared on first use in ``data.data_dir``): 128x128 scenes of scikit-learn's
handwritten digits pasted in bright colours on dark textured backgrounds, every pixel labelled
background or its digit (11 classes; the test scenes use digit glyphs the training never saw), read by the ADE20K pipeline (ratio-range resize, random crop, flip, photometric
distortion, pad) with the same loss, poly schedule and mmseg metric. Differences from the ADE20K
recipe, and why: no ImageNet backbone exists offline, so the backbone trains from scratch with
its BatchNorms in training mode (``freeze_backbone_bn`` False) at a higher lr; background is a real
class (no ``reduce_zero_label``); ``cat_max_ratio`` is off (background covers most of any crop).

Measured (2026-12-02, 2 CPU cores, 9 min 39 s including the dataset build): mIoU 21.4, aAcc 78.8,
mAcc 32.8 on the 200 test scenes after 800 iterations (14.9 at 400); background IoU 97.1, the
digits 1-25. Predicting background everywhere scores mIoU 6.5 / aAcc 72. The digits' identity is
what is slow to learn from scratch (their ink is found early); longer runs keep improving.
"""

from lsnet_jax.train.config import segmentation_config


def get_config():
    c = segmentation_config("lsnet_t_semfpn")
    c.freeze_backbone_bn = False
    c.batch_size = 16
    c.iterations = 800
    c.lr = 2e-3
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
    c.eval_every_steps = 400
    c.checkpoint_every_steps = 200
    return c
