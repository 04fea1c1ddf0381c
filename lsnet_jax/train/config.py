"""The published recipe as an ``ml_collections.ConfigDict``; ``configs/*.py`` start from it.

Every hyper-parameter of a run lives here; ``train.py --config configs/X.py --config.key=value``
overrides any of them, and an unknown key is an error.
"""

from __future__ import annotations

import ml_collections

from lsnet_jax.models.lsnet import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD


def base_config() -> ml_collections.ConfigDict:
    """LSNet on ImageNet-1k as published (DeiT-style recipe, timm 0.5.4; see LSNET_SPEC.md)."""
    c = ml_collections.ConfigDict()
    c.model = "lsnet_t"
    c.num_classes = 0  # 0: the dataset's class count
    c.img_size = 224
    c.dtype = "float32"  # published: float32 (autocast off); "bfloat16" computes in bfloat16
    # BatchNorm statistics, Mixup/CutMix draws and repeated-augmentation dealing per group of this
    # many images, as the official per-GPU batch (8 GPUs x 256); None or 0: the global batch.
    # The running statistics average the groups' batch statistics, where DDP keeps GPU 0's: same
    # expectation, sqrt(groups) less noise (2.83x smaller RMS error at 8 groups; README, Training)
    c.bn_group_size = ml_collections.config_dict.placeholder(int)
    c.bn_momentum = 0.1  # PyTorch's BatchNorm momentum (running = 0.9 running + 0.1 batch)
    c.impl = "auto"  # the array operations (lsnet_jax.kernels): "auto" | "reference" | "xla_cpu"
    # blocks per stage; (): the variant's (lsnet_t: (0, 2, 8, 10)). A shallower model for smoke runs and
    # tests, e.g. (0, 2, 2, 2), which still holds every kind of layer; recorded with the weights
    c.depth = ()
    c.seed = 0
    c.init_weights = ""  # fine-tuning: a weights directory (lsnet-convert or lsnet-export-weights) or an hf-hub: name;
    # another class count re-initialises the heads, another img_size resizes the attention bias tables

    c.batch_size = 2048  # global
    c.eval_batch_size = ml_collections.config_dict.placeholder(int)  # None: batch_size
    c.epochs = 300
    c.lr = 1e-3  # per 512 images; scaled linearly with batch_size (2048 -> 4e-3)
    c.warmup_lr = 1e-6
    c.min_lr = 1e-5
    c.warmup_epochs = 5
    # "official": one lr per epoch, the scheduler stepped after each epoch as the official loop
    # (epoch e trains at timm's cosine at e - 1; epochs 0 and 1 at warmup_lr), reproducing the
    # train_lr column of the official logs exactly. "per_step": the same cosine evaluated at every
    # step, without the one-epoch lag (smoother; not what the published models were trained with).
    c.lr_schedule = "official"
    c.weight_decay = 0.025
    c.opt_betas = (0.9, 0.999)
    c.opt_eps = 1e-8
    c.clip_grad = 0.02  # adaptive gradient clipping factor (timm 'agc'); 0 disables
    c.clip_eps = 1e-3  # AGC's floor on a unit's parameter norm (timm's eps)
    c.ema_decay = 0.99996

    c.data = ml_collections.ConfigDict()
    c.data.name = "imagenet2012"  # any TFDS image-classification dataset; or 'imagenet_folder'
    c.data.data_dir = ml_collections.config_dict.placeholder(str)  # None: TFDS's default
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.repeats = 3  # repeated augmentation
    c.data.workers = 8  # grain worker processes per host (0: in the main process)
    c.data.threads = 4
    c.data.prefetch = 2

    c.aug = ml_collections.ConfigDict()
    c.aug.scale = (0.08, 1.0)
    c.aug.ratio = (3 / 4, 4 / 3)
    c.aug.hflip = 0.5
    c.aug.randaugment = "rand-m9-mstd0.5-inc1"  # '' disables
    c.aug.translate_pct = 0.45  # RandAugment's TranslateRel at magnitude 10 (timm's hparams default)
    c.aug.reprob = 0.25
    c.aug.erase_area = (0.02, 1 / 3)  # RandomErasing's box area, as a fraction of the image
    c.aug.erase_min_aspect = 0.3  # box aspect log-uniform in [0.3, 1/0.3]
    c.aug.mixup = 0.8
    c.aug.cutmix = 1.0
    c.aug.mix_prob = 1.0
    c.aug.switch_prob = 0.5
    c.aug.smoothing = 0.1
    c.aug.crop_pct = 0.875
    c.aug.mean = IMAGENET_DEFAULT_MEAN
    c.aug.std = IMAGENET_DEFAULT_STD
    # JPEG draft decoding at 1/2, 1/4, 1/8 scale when the crop still has the output's pixels: much
    # faster on large photos, but not the official pixels (measured on 800x600 photos: 41% of
    # RandomResizedCrop draws differ, by 1.4-6.7 levels on average and up to 79; 0% on 500x375).
    # Off in the published recipe; an option for speed.
    c.aug.fast_decode = False

    c.distillation = ml_collections.ConfigDict()
    c.distillation.type = "none"  # 'hard' for the *_distill models
    c.distillation.alpha = 0.5
    c.distillation.teacher_model = "regnety_160"  # DeiT's teacher, as published (any create_model name)
    c.distillation.teacher_checkpoint = ""  # its weights: lsnet-convert regnety_160-a5fe301d.pth DIR
    c.distillation.teacher_dtype = ""  # "": the run's dtype; "bfloat16" halves the teacher's cost on GPU/TPU

    c.log_every_steps = 50
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3  # the newest; besides them, the newest judged good is never rotated out
    # a loss above this many times the median of the last 50 is a divergence: the checkpoint before
    # it is not judged good (a non-finite loss or state stops the run; see train.checks.Health)
    c.divergence_factor = 10.0
    c.async_checkpoint = True
    c.eval_every_epochs = 1
    c.max_steps = ml_collections.config_dict.placeholder(int)  # stop early (tests, smoke runs)
    c.tensorboard = True
    return c


def variant_config(model: str, weight_decay: float, arg: str = "") -> ml_collections.ConfigDict:
    """The recipe for ``model`` (``lsnet_t``/``_s``/``_b``); ``arg == "distill"`` selects the
    distillation-head model with hard distillation (teacher given on the command line).
    300 epochs at a global batch of 2048 (lr 4e-3) in groups of 256 (``bn_group_size``: the official
    8 GPUs' own BatchNorm statistics, Mixup draws and repeated-augmentation shares; 0 for one
    group over the global batch, e.g. where 256 does not divide the per-device batch). The published distilled models used a RegNetY-160 teacher; any
    model ``create_model`` knows, with its weights, can teach here; the default is the published
    teacher, ``regnety_160`` (DeiT's ``regnety_160-a5fe301d.pth`` = timm's ``regnety_160.deit_in1k``,
    converted by ``lsnet-convert``)."""
    if arg not in ("", "distill"):
        raise ValueError(f"config argument must be empty or 'distill', got {arg!r}")
    c = base_config()
    c.model = model + ("_distill" if arg else "")
    c.weight_decay = weight_decay
    c.bn_group_size = 256
    if arg:
        c.distillation.type = "hard"
    return c


def segmentation_config(model: str = "lsnet_t_semfpn") -> ml_collections.ConfigDict:
    """LSNet + Semantic FPN on ADE20K as published (SEGMENTATION_SPEC.md, the official
    configs/sem_fpn/fpn_lsnet_*_ade20k_40k.py): AdamW 2e-4, weight decay 1e-4 on every parameter,
    poly 0.9 to 1e-6 per iteration, 40k iterations at a global batch of 32, 512x512 crops."""
    c = ml_collections.ConfigDict()
    c.task = "segmentation"
    c.model = model
    c.num_classes = 0  # 0: the dataset's class count
    c.dtype = "float32"
    c.impl = "auto"
    c.depth = ()  # the backbone's blocks per stage ((): the variant's)
    c.seed = 0
    c.backbone_weights = ""  # ImageNet classifier weights (official: lsnet_t.pth through lsnet-convert)
    c.init_weights = ""  # a whole segmenter's weights (fine-tuning); takes precedence over backbone_weights
    c.freeze_backbone_bn = True  # the official backbone keeps every BatchNorm in eval mode
    c.bn_momentum = 0.1  # the head's SyncBN

    c.batch_size = 32  # global (8 GPUs x 4)
    c.iterations = 40_000
    c.lr = 2e-4
    c.min_lr = 1e-6
    c.power = 0.9
    c.weight_decay = 1e-4
    c.opt_betas = (0.9, 0.999)
    c.opt_eps = 1e-8

    c.data = ml_collections.ConfigDict()
    c.data.name = "ade20k"  # scripts/prepare_ade20k.py builds it
    c.data.data_dir = ml_collections.config_dict.placeholder(str)
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.workers = 8
    c.data.threads = 4
    c.data.prefetch = 2

    c.aug = ml_collections.ConfigDict()
    c.aug.scale = (2048, 512)  # Resize's img_scale: long side <= 2048 r, short side <= 512 r
    c.aug.ratio_range = (0.5, 2.0)
    c.aug.crop = (512, 512)
    c.aug.cat_max_ratio = 0.75
    c.aug.flip = 0.5
    c.aug.photometric = True
    c.aug.reduce_zero_label = True  # ADE20K: 0 ("other") is ignored, k -> k - 1
    c.aug.test_scale = (2048, 512)
    c.aug.size_divisor = 32  # AlignResize
    c.aug.mean = IMAGENET_DEFAULT_MEAN  # mmseg's (123.675, 116.28, 103.53) / 255
    c.aug.std = IMAGENET_DEFAULT_STD

    c.log_every_steps = 50
    c.eval_every_steps = 4000
    c.checkpoint_every_steps = 4000
    return _loop_keys(c)


HEAD_WIDTHS = ("neck_channels", "feat_channels", "stacked_convs", "fc_channels", "mask_convs")  # a detector's (0: published)


def architecture(config: ml_collections.ConfigDict) -> dict:
    """The model settings a run changes from its variant's (``config.depth``, a detector's
    ``HEAD_WIDTHS``), as ``create_model`` keyword arguments; ``{}`` for the published architecture."""
    out = {"depth": tuple(int(d) for d in config.depth)} if config.get("depth") else {}
    out |= {k: int(config[k]) for k in HEAD_WIDTHS if config.get(k)}
    if config.get("roi_window"):  # Mask R-CNN's RoIAlign patch (across, along), lsnet_jax.kernels.roi_align
        out["roi_window"] = tuple(int(v) for v in config.roi_window)
    return out


def detection_config(model: str = "lsnet_t_retinanet") -> ml_collections.ConfigDict:
    """LSNet + RetinaNet on COCO as published (DETECTION_SPEC.md, the official
    configs/retinanet_lsnet_*_fpn_1x_coco.py): AdamW 1e-4, weight decay 0.05 on every parameter but
    the attention biases, step decay at epochs 8 and 11 with a 500-iteration linear warm-up, 12
    epochs at 16 images per step (8 GPUs x 2), images resized to fit (1333, 800)."""
    c = ml_collections.ConfigDict()
    c.task = "detection"
    c.model = model
    c.num_classes = 0  # 0: the dataset's class count
    c.dtype = "float32"
    c.impl = "auto"
    c.depth = ()  # the backbone's blocks per stage ((): the variant's)
    c.neck_channels = 0  # the FPN's width (0: the published 256)
    c.feat_channels = 0  # the head's conv width (0: the published 256)
    c.stacked_convs = 0  # the head's convs per branch (0: the published 4)
    c.seed = 0
    c.backbone_weights = ""  # ImageNet classifier weights (official: lsnet_t.pth through lsnet-convert)
    c.init_weights = ""  # a whole detector's weights (fine-tuning); takes precedence over backbone_weights
    c.freeze_backbone_bn = True  # the official LSNet.train() keeps every BatchNorm in eval mode

    c.batch_size = 16  # global (8 GPUs x 2)
    c.group_size = 2  # images per official GPU: each group's focal-loss normaliser (avg_factor) is its own
    c.epochs = 12
    c.lr = 1e-4
    c.lr_schedule = "step"  # "step" (official: milestones, warm-up) | "cosine" (the digit scenes')
    c.milestones = (8, 11)  # 0-based epochs where the lr is multiplied by 0.1
    c.warmup_iters = 500
    c.warmup_ratio = 0.001
    c.min_lr_ratio = 0.01  # "cosine": the last iteration's lr / lr
    c.weight_decay = 0.05
    c.opt_betas = (0.9, 0.999)
    c.opt_eps = 1e-8

    c.data = ml_collections.ConfigDict()
    c.data.name = "coco_detection"  # scripts/prepare_coco.py builds it
    c.data.data_dir = ml_collections.config_dict.placeholder(str)
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.max_train_examples = 0  # > 0: only the first this many training images (smoke runs, tests)
    c.data.max_eval_examples = 0  # > 0: only the first this many evaluation images
    c.data.workers = 8
    c.data.threads = 4
    c.data.prefetch = 2

    c.aug = ml_collections.ConfigDict()
    c.aug.scale = (1333, 800)  # Resize: long side <= 1333, short side <= 800, ratio kept
    c.aug.test_scale = (1333, 800)
    c.aug.flip = 0.5
    # Training batches: each image padded (bottom/right) to the smallest of these (H, W) that holds
    # it, each batch drawn from one shape (MMDetection's GroupSampler, with widths for its two aspect
    # groups): one compiled train program per shape. COCO at (1333, 800) resizes 4:3 photos to
    # 800x1067 (padded 800x1088), 3:2 to 800x1199 (800x1216), wider ones to 1333 wide (800x1344).
    c.aug.pad_shapes = ((800, 1088), (800, 1216), (800, 1344), (1088, 800), (1216, 800), (1344, 800))
    # Evaluation: () pads each image to its own multiples of 32 as the official test (outputs equal
    # the official ones; one program per distinct size); or a list of shapes as above (fewer programs).
    c.aug.test_pad_shapes = ()
    c.aug.max_boxes = 100  # gt boxes per image, padded with a mask
    c.aug.min_size = 32  # training images with a shorter side are left out (mmdet's filter)
    c.aug.mean = IMAGENET_DEFAULT_MEAN  # mmdet's (123.675, 116.28, 103.53) / 255 on RGB
    c.aug.std = IMAGENET_DEFAULT_STD

    c.test = ml_collections.ConfigDict()
    c.test.score_thr = 0.05
    c.test.nms_pre = 1000
    c.test.iou_threshold = 0.5
    c.test.max_per_img = 100
    c.eval_batch_size = 8

    c.log_every_steps = 50
    c.eval_every_epochs = 1
    c.checkpoint_every_steps = 1000
    return _loop_keys(c)


def maskrcnn_config(model: str = "lsnet_t_maskrcnn") -> ml_collections.ConfigDict:
    """LSNet + Mask R-CNN on COCO as published (DETECTION_SPEC.md, the official
    configs/mask_rcnn_lsnet_*_fpn_1x_coco.py): the RetinaNet recipe's optimizer, schedule, data and
    batches (``detection_config``), the two-stage model's ``train_cfg`` and ``test_cfg``, instance
    masks in the batches."""
    c = detection_config(model)
    del c.feat_channels, c.stacked_convs  # RetinaNet's head widths
    c.fc_channels = 0  # the box head's fc width (0: the published 1024)
    c.mask_convs = 0  # the mask head's 3x3 convs (0: the published 4)
    c.roi_window = ()  # RoIAlign's patch in feature pixels, (across, along) the RoI (): (32, 64), exact to 1333 px
    c.train_cfg = ml_collections.ConfigDict()
    c.train_cfg.rpn_num = 256  # RPN RandomSampler (a half positive)
    c.train_cfg.proposal_nms_pre = 2000  # train_cfg.rpn_proposal
    c.train_cfg.proposal_max_per_img = 1000
    c.train_cfg.rcnn_num = 512  # RoI RandomSampler (a quarter positive, gts added as proposals)
    c.test.rpn_nms_pre = 1000  # test_cfg.rpn
    c.test.rpn_max_per_img = 1000
    c.test.rpn_iou_threshold = 0.7
    del c.test.nms_pre  # RetinaNet's: the RoI head keeps every pair above score_thr
    return c


def _loop_keys(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The one loop's keys the dense tasks share (checkpoints, divergence, stopping, TensorBoard)."""
    c.keep_checkpoints = 3  # the newest; besides them, the newest judged good is never rotated out
    # a loss above this many times the median of the last 50 is a divergence: the checkpoint before
    # it is not judged good (a non-finite loss or state stops the run; see train.checks.Health)
    c.divergence_factor = 10.0
    c.async_checkpoint = True
    c.max_steps = ml_collections.config_dict.placeholder(int)
    c.tensorboard = True
    return c
