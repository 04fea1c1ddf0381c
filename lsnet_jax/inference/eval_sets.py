"""The evaluation sets of the paper as TFDS datasets, their label mappings and metrics.

=================  ====================================  ==========  ===========================
key                TFDS name                             split       metric
=================  ====================================  ==========  ===========================
imagenet           imagenet2012                          validation  top-1 / top-5 of 1000
imagenet_a         imagenet_a                            test        top-1 / top-5 of its 200
imagenet_r         imagenet_r                            test        top-1 / top-5 of its 200
imagenet_sketch    imagenet_sketch                       test        top-1 / top-5 of 1000
imagenet_c         imagenet2012_corrupted/<c>_<s>        validation  mCE (AlexNet-normalised)
=================  ====================================  ==========  ===========================

ImageNet-A and ImageNet-R hold 200 of the 1000 classes; TFDS keeps their labels as 1000-class
indices. As Hendrycks et al. evaluate them, the prediction is the arg-max over those 200 classes'
logits only. The class lists are the published ones (the same as timm's
``imagenet_{a,r}_indices.txt``).

ImageNet-C: the corruption error of corruption c is the model's top-1 error summed over severities
1-5 divided by AlexNet's (Hendrycks & Dietterich, 2019); mCE is the mean over the 15 benchmark
corruptions (the 4 extra ones are reported but not averaged). AlexNet's errors are the published
means over the five severities.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

IMAGENET_A_CLASSES = (
    6, 11, 13, 15, 17, 22, 23, 27, 30, 37, 39, 42, 47, 50, 57, 70, 71, 76, 79, 89, 90, 94, 96, 97,
    99, 105, 107, 108, 110, 113, 124, 125, 130, 132, 143, 144, 150, 151, 207, 234, 235, 254, 277,
    283, 287, 291, 295, 298, 301, 306, 307, 308, 309, 310, 311, 313, 314, 315, 317, 319, 323, 324,
    326, 327, 330, 334, 335, 336, 347, 361, 363, 372, 378, 386, 397, 400, 401, 402, 404, 407, 411,
    416, 417, 420, 425, 428, 430, 437, 438, 445, 456, 457, 461, 462, 470, 472, 483, 486, 488, 492,
    496, 514, 516, 528, 530, 539, 542, 543, 549, 552, 557, 561, 562, 569, 572, 573, 575, 579, 589,
    606, 607, 609, 614, 626, 627, 640, 641, 642, 643, 658, 668, 677, 682, 684, 687, 701, 704, 719,
    736, 746, 749, 752, 758, 763, 765, 768, 773, 774, 776, 779, 780, 786, 792, 797, 802, 803, 804,
    813, 815, 820, 823, 831, 833, 835, 839, 845, 847, 850, 859, 862, 870, 879, 880, 888, 890, 897,
    900, 907, 913, 924, 932, 933, 934, 937, 943, 945, 947, 951, 954, 956, 957, 959, 971, 972, 980,
    981, 984, 986, 987, 988,
)
IMAGENET_R_CLASSES = (
    1, 2, 4, 6, 8, 9, 11, 13, 22, 23, 26, 29, 31, 39, 47, 63, 71, 76, 79, 84, 90, 94, 96, 97, 99,
    100, 105, 107, 113, 122, 125, 130, 132, 144, 145, 147, 148, 150, 151, 155, 160, 161, 162, 163,
    171, 172, 178, 187, 195, 199, 203, 207, 208, 219, 231, 232, 234, 235, 242, 245, 247, 250, 251,
    254, 259, 260, 263, 265, 267, 269, 276, 277, 281, 288, 289, 291, 292, 293, 296, 299, 301, 308,
    309, 310, 311, 314, 315, 319, 323, 327, 330, 334, 335, 337, 338, 340, 341, 344, 347, 353, 355,
    361, 362, 365, 366, 367, 368, 372, 388, 390, 393, 397, 401, 407, 413, 414, 425, 428, 430, 435,
    437, 441, 447, 448, 457, 462, 463, 469, 470, 471, 472, 476, 483, 487, 515, 546, 555, 558, 570,
    579, 583, 587, 593, 594, 596, 609, 613, 617, 621, 629, 637, 657, 658, 701, 717, 724, 763, 768,
    774, 776, 779, 780, 787, 805, 812, 815, 820, 824, 833, 847, 852, 866, 875, 883, 889, 895, 907,
    928, 931, 932, 933, 934, 936, 937, 943, 945, 947, 948, 949, 951, 953, 954, 957, 963, 965, 967,
    980, 981, 983, 988,
)

# the 15 benchmark corruptions (TFDS config names), and AlexNet's top-1 error on each, averaged
# over severities 1-5 (Hendrycks & Dietterich, 2019)
ALEXNET_ERR = {
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640,
    "defocus_blur": 0.819880, "glass_blur": 0.826268, "motion_blur": 0.785948, "zoom_blur": 0.798360,
    "snow": 0.866816, "frost": 0.826572, "fog": 0.819324, "brightness": 0.564592,
    "contrast": 0.853204, "elastic_transform": 0.646056, "pixelate": 0.717840,
    "jpeg_compression": 0.606500,
}
CORRUPTIONS = tuple(ALEXNET_ERR)
EXTRA_CORRUPTIONS = ("gaussian_blur", "saturate", "spatter", "speckle_noise")
SEVERITIES = (1, 2, 3, 4, 5)


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """One evaluation split: where it lives in TFDS and which of the 1000 classes it scores."""

    key: str
    tfds_name: str
    split: str
    classes: tuple[int, ...] | None = None  # None: all classes of the model


EVAL_SETS = {
    "imagenet": EvalSet("imagenet", "imagenet2012", "validation"),
    "imagenet_a": EvalSet("imagenet_a", "imagenet_a", "test", IMAGENET_A_CLASSES),
    "imagenet_r": EvalSet("imagenet_r", "imagenet_r", "test", IMAGENET_R_CLASSES),
    "imagenet_sketch": EvalSet("imagenet_sketch", "imagenet_sketch", "test"),
}


def imagenet_c_sets(corruptions: Sequence[str] = CORRUPTIONS,
                    severities: Sequence[int] = SEVERITIES) -> list[EvalSet]:
    """One ``EvalSet`` per (corruption, severity), keyed ``imagenet_c/<corruption>_<severity>``."""
    known = CORRUPTIONS + EXTRA_CORRUPTIONS
    bad = [c for c in corruptions if c not in known]
    if bad:
        raise ValueError(f"unknown ImageNet-C corruption(s) {bad}; choose from {list(known)}")
    bad_s = [s for s in severities if s not in SEVERITIES]
    if bad_s:
        raise ValueError(f"ImageNet-C severities are 1-5, got {bad_s}")
    return [EvalSet(f"imagenet_c/{c}_{s}", f"imagenet2012_corrupted/{c}_{s}", "validation")
            for c in corruptions for s in severities]


def corruption_errors(top1: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """From top-1 accuracies in % keyed ``<corruption>_<severity>`` (all five severities of a
    corruption needed) to, per corruption: the mean error over severities (%) and, for the 15
    benchmark corruptions, the AlexNet-normalised corruption error CE (%)."""
    out = {}
    for c in CORRUPTIONS + EXTRA_CORRUPTIONS:
        got = [top1.get(f"{c}_{s}") for s in SEVERITIES]
        if all(v is None for v in got):
            continue
        if any(v is None for v in got):
            missing = [s for s, v in zip(SEVERITIES, got) if v is None]
            raise ValueError(f"ImageNet-C {c}: severities {missing} were not evaluated; a corruption "
                             f"error needs all five")
        err = [1.0 - v / 100.0 for v in got]
        row = {"error": 100.0 * float(np.mean(err))}
        if c in ALEXNET_ERR:
            row["ce"] = 100.0 * float(np.sum(err) / (len(SEVERITIES) * ALEXNET_ERR[c]))
        out[c] = row
    return out


def mce(top1: Mapping[str, float]) -> float:
    """Mean corruption error (%) over the 15 benchmark corruptions; raises if any is missing."""
    ces = corruption_errors(top1)
    missing = [c for c in CORRUPTIONS if c not in ces]
    if missing:
        raise ValueError(f"mCE needs all 15 benchmark corruptions; missing {missing}")
    return float(np.mean([ces[c]["ce"] for c in CORRUPTIONS]))


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names in index order (the list tensorflow_datasets ships)."""
    from tensorflow_datasets.datasets.siscore.labels import IMAGENET_LABELS_LIST

    if len(IMAGENET_LABELS_LIST) != 1000:
        raise RuntimeError(f"expected 1000 ImageNet class names, tensorflow_datasets has "
                           f"{len(IMAGENET_LABELS_LIST)}")
    return list(IMAGENET_LABELS_LIST)
