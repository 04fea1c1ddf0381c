"""The small instance-segmentation default: LSNet-T + Mask R-CNN on digit scenes, 2 CPU cores, no
download.

    python train.py --config configs/maskrcnn_digits.py --workdir runs/maskrcnn_digits

``lsnet_det_digits`` (prepared on first use in ``data.data_dir``, shared with det_digits): the
128x128 digit scenes with their instance masks (RLE in the COCO json), read through the COCO
reader, the mask-carrying train pipeline, the RPN and RoI assigners and samplers, the five losses,
the two-stage inference with mask pasting, and COCOeval of boxes and masks.

Differences from the COCO recipe, and why (as det_digits): scales (512, 128), 8 images per step in
one loss group, the backbone's BatchNorms in training mode (no ImageNet weights offline), AdamW lr
1e-3 with a 100-iteration warm-up then cosine, no flip; the neck, RPN and mask head 64 wide and the
box head's fcs 256 (the published 256 / 1024 are for 800x1333 images); the proposals (300 of the
top 1,000 per level in training and test) and the RoI sampler (128 per image, a quarter positive)
scaled to scenes of at most 4 digits (32 RoIs per image, a quarter positive), the mask head's convs
2 instead of 4 (at the published 4 on every positive the mask head was 2/3 of a step), 450
iterations (one epoch).

Measured (2026-12-08, this config, 2 CPU cores, the dataset already built (its build takes 6 s),
one evaluation included: 6 min 34 s): on the 200 test scenes box AP / AP50 / AP75 56.9 / 72.5 /
70.7, mask AP / AP50 / AP75 62.7 / 72.5 / 72.1 (box AR@100 81.0); train rows (means of 25
iterations) loss 4.47 at 25 (loss_rpn_cls 0.684, loss_cls 2.12, acc 49.0, loss_mask 0.968), 1.08
at 225, 0.74 at 450 (loss_cls 0.373, acc 87.5, loss_bbox 0.270, loss_mask 0.084). The same config
over 3 epochs (1,350 iterations, cosine over them): box / mask AP50 76.3 / 76.3 at 450 and 90.2 /
90.2 at 900 (box AP 76.0, mask AP 82.1), 10.3 minutes to the second evaluation.
"""

from lsnet_jax.train.config import maskrcnn_config


def get_config():
    c = maskrcnn_config("lsnet_t_maskrcnn")
    c.freeze_backbone_bn = False
    c.neck_channels = 64
    c.fc_channels = 256
    c.mask_convs = 2  # the published 4 at 14x14 on every positive: 2/3 of a step's time
    c.batch_size = 8
    c.group_size = 8
    c.epochs = 1  # 450 iterations (3,600 scenes): about 6 minutes on 2 cores, dataset build included
    c.lr = 1e-3
    c.lr_schedule = "cosine"
    c.warmup_iters = 100
    c.train_cfg.proposal_nms_pre = 1000
    c.train_cfg.proposal_max_per_img = 300
    c.train_cfg.rcnn_num = 32
    c.test.rpn_max_per_img = 300
    c.data.name = "lsnet_det_digits"
    c.data.data_dir = "data/tfds"
    c.data.eval_split = "test"
    c.data.workers = 0
    c.data.threads = 2
    c.aug.scale = (512, 128)
    c.aug.test_scale = (512, 128)
    c.aug.pad_shapes = ((128, 128),)
    c.aug.max_boxes = 4
    c.aug.flip = 0.0
    c.eval_batch_size = 50
    c.log_every_steps = 25
    c.checkpoint_every_steps = 450
    return c
