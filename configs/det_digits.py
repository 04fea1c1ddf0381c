"""The small detection default: LSNet-T + RetinaNet on digit scenes, 2 CPU cores, no download.

    python train.py --config configs/det_digits.py --workdir runs/det_digits

``lsnet_det_digits`` (prepared on first use in ``data.data_dir``): the digit scenes of
``lsnet_jax.data.scenes`` (the ones seg_digits reads), 128x128, written as a COCO tree (PNG +
``instances_{train,test}.json`` with RLE masks) and read through the COCO reader, pipeline, anchors,
assigner, focal/L1 losses, post-processing and COCOeval of the COCO recipe. 1,200 train scenes
(2,054 digits), 200 test scenes (354 digits) drawn from glyphs the training never sees.

Differences from the COCO recipe (DETECTION_SPEC.md's small default), and why: scales (512, 128)
(the scenes stay 128x128), 8 images per step in one loss group, the backbone's BatchNorms in
training mode (no ImageNet weights offline: frozen, they would be an untrained affine map), AdamW
lr 1e-3 with a 100-iteration warm-up then cosine to 1e-5, no flip (digits are not mirror
symmetric; the spec's calibration used flip 0.5).

Measured (2026-12-03, this config, 2 CPU cores, dataset build and three evaluations included:
8 min 4 s): box AP / AP50 / AP75 on the 200 test scenes 0.3 / 0.6 / 0.3 at iteration 150,
6.5 / 9.9 / 7.9 at 300, 8.9 / 11.7 / 10.8 at 450 (APs 22.9, APm 9.4; AR@100 77.5: the digits are
found, their identity is what is still being learnt); train loss (mean of 25) 1.46 at 50, 0.78 at
300, 0.57 at 450. The issue's goal for this default, AP50 >= 50 in 10 minutes, is not reached yet.
The spec's calibration recipe (300 iterations, flip 0.5, cosine over them), run here with seeds 0
and 1: AP50 3.3 and 7.7, last-25 loss 0.84 and 0.71, against the official code's AP50 9.8 and
0.70 (one seed): within the spread of two seeds.
"""

from lsnet_jax.train.config import detection_config


def get_config():
    c = detection_config("lsnet_t_retinanet")
    c.freeze_backbone_bn = False
    c.batch_size = 8
    c.group_size = 8
    c.epochs = 3  # 150 iterations per epoch: 450 iterations, under 10 minutes on 2 cores
    c.lr = 1e-3
    c.lr_schedule = "cosine"
    c.warmup_iters = 100
    c.data.name = "lsnet_det_digits"
    c.data.data_dir = "data/tfds"
    c.data.eval_split = "test"
    c.data.workers = 0
    c.data.threads = 2
    c.aug.scale = (512, 128)
    c.aug.test_scale = (512, 128)
    c.aug.pad_shape = (128, 128)
    c.aug.max_boxes = 4
    c.aug.flip = 0.0
    c.eval_batch_size = 50
    c.log_every_steps = 25
    c.checkpoint_every_steps = 150
    return c
