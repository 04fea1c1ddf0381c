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
scaled to scenes of at most 4 digits.
"""

from lsnet_jax.train.config import maskrcnn_config


def get_config():
    c = maskrcnn_config("lsnet_t_maskrcnn")
    c.freeze_backbone_bn = False
    c.neck_channels = 64
    c.fc_channels = 256
    c.batch_size = 8
    c.group_size = 8
    c.epochs = 3  # 450 iterations per epoch (3,600 scenes)
    c.lr = 1e-3
    c.lr_schedule = "cosine"
    c.warmup_iters = 100
    c.train_cfg.proposal_nms_pre = 1000
    c.train_cfg.proposal_max_per_img = 300
    c.train_cfg.rcnn_num = 128
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
