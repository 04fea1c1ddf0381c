"""ImageNet-style input pipeline: TFDS data sources read through grain (see ``pipeline``)."""

from lsnet_jax.data.mix import mixup_cutmix, smooth_one_hot
from lsnet_jax.data.pipeline import (DatasetNotFoundError, EvalTransform, Loader, TrainTransform, eval_loader,
                                     open_source, to_global, train_loader)

__all__ = ["DatasetNotFoundError", "EvalTransform", "Loader", "TrainTransform", "eval_loader", "mixup_cutmix",
           "open_source", "smooth_one_hot", "to_global", "train_loader"]
