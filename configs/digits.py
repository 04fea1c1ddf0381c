"""The small default: LSNet-T on scikit-learn's handwritten digits, on a laptop CPU, no download.

    python train.py --config configs/digits.py --workdir runs/digits

The 1,797 8x8 digits that scikit-learn ships are upscaled to 48x48 JPEGs and prepared as the TFDS
dataset ``lsnet_digits`` on first use (in ``data.data_dir``), then read by the ImageNet pipeline
(grain, RandomResizedCrop, RandAugment, RandomErasing, Mixup/CutMix) at 32x32. Expected: about
98% top-1 on the 359 held-out digits after 20 epochs, a few minutes on 2 CPU cores.
"""

from lsnet_jax.train.config import base_config


def get_config():
    c = base_config()
    c.model = "lsnet_t"
    c.img_size = 32
    c.batch_size = 64
    c.eval_batch_size = 120
    c.epochs = 20
    c.lr = 0.016  # per 512 images -> 2e-3 at batch 64
    c.warmup_epochs = 1
    c.lr_schedule = "per_step"  # 20 short epochs: the official one-epoch lag would idle epoch 0
    c.min_lr = 1e-5
    c.ema_decay = 0.95  # short run: the EMA must forget the high-lr phase (ImageNet: 0.99996)
    c.data.name = "lsnet_digits"
    c.data.data_dir = "data/tfds"
    c.data.eval_split = "test"
    c.data.repeats = 1
    c.data.workers = 0
    c.data.threads = 2
    c.aug.scale = (0.5, 1.0)
    c.aug.hflip = 0.0  # digits are not mirror-symmetric
    c.aug.randaugment = "rand-m3-mstd0.5-inc1"
    c.aug.reprob = 0.1
    c.aug.mixup = 0.2
    c.aug.cutmix = 0.0
    c.aug.crop_pct = 1.0
    c.aug.mean = (0.5, 0.5, 0.5)
    c.aug.std = (0.5, 0.5, 0.5)
    c.log_every_steps = 10
    c.checkpoint_every_steps = 100
    return c
