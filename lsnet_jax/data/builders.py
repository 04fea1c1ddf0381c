"""TFDS builders for the datasets this project makes itself, in array_record format (no TensorFlow).

- ``lsnet_digits``: scikit-learn's handwritten digits (1,797 8x8 images, shipped with the package),
  upscaled and stored as JPEG, split 80/20 into ``train`` / ``test`` with a fixed seed. The small
  default of ``train.py`` (``configs/digits.py``) reads it through the ImageNet pipeline.
- ``imagenet_folder``: an ImageNet-style tree (``train/<class>/*.JPEG``, ``val/<class>/*.JPEG``,
  any number of classes) as ``train`` / ``validation``; ``scripts/prepare_imagenet.py`` builds it.
  The files' bytes are stored as they are (no re-encoding); unreadable files are skipped and
  counted when the pipeline decodes them.

Importing this module registers both with TFDS, so ``tfds.data_source(name, data_dir=...)`` reads them.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

DIGITS_SIZE = 48
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _features(class_names: list[str]) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(encoding_format="jpeg"),
        "label": tfds.features.ClassLabel(names=class_names),
        "file_name": tfds.features.Text(),
    })


def digits_jpegs(size: int = DIGITS_SIZE, quality: int = 95) -> tuple[list[bytes], np.ndarray]:
    """The scikit-learn digits as ``size`` x ``size`` RGB JPEGs (bicubic upscaling), and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = []
    for img in digits.images:  # 8x8, values 0..16, ink bright
        pil = Image.fromarray(np.round(img * (255 / 16)).astype(np.uint8), mode="L")
        pil = pil.resize((size, size), Image.Resampling.BICUBIC).convert("RGB")
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=quality)
        out.append(buf.getvalue())
    return out, digits.target.astype(np.int64)


class LsnetDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's handwritten digits, upscaled to 48x48 RGB JPEGs; 1,437 train / 360 test."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, description=self.__doc__,
                                     features=_features([str(i) for i in range(10)]),
                                     supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        images, labels = digits_jpegs()
        order = np.random.default_rng(0).permutation(len(labels))
        n_test = len(labels) // 5
        return {"train": self._generate_examples(images, labels, order[n_test:]),
                "test": self._generate_examples(images, labels, order[:n_test])}

    def _generate_examples(self, images, labels, indices):
        for i in indices:
            yield int(i), {"image": images[i], "label": int(labels[i]), "file_name": f"digit_{i:04d}.jpg"}


def list_image_folder(root: str | os.PathLike) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted sub-directory names) and ``(path, label)`` of every image file below."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory; expected {root}/<class>/<images>")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise FileNotFoundError(f"{root} has no class sub-directories; expected {root}/<class>/<images>")
    items = [(p, label) for label, c in enumerate(classes) for p in sorted((root / c).rglob("*"))
             if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    return classes, items


class ImagenetFolder(tfds.core.GeneratorBasedBuilder):
    """An ImageNet-style folder tree (``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``)."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, train_dir: str | None = None, val_dir: str | None = None, **kwargs):
        self._dirs = {"train": train_dir, "validation": val_dir}
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        train_dir = self._dirs["train"]
        classes = list_image_folder(train_dir)[0] if train_dir else None
        features = _features(classes) if classes else None
        if features is None:  # reading a prepared dataset: class names come from its files
            features = tfds.features.FeaturesDict({
                "image": tfds.features.Image(encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(),
                "file_name": tfds.features.Text()})
        return tfds.core.DatasetInfo(builder=self, description=self.__doc__, features=features,
                                     supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        classes = list_image_folder(self._dirs["train"])[0]
        splits = {}
        for split, d in self._dirs.items():
            if d is None:
                continue
            found, items = list_image_folder(d)
            if split != "train" and found != classes:
                missing = sorted(set(classes) - set(found))[:5]
                extra = sorted(set(found) - set(classes))[:5]
                raise ValueError(f"{d} has other classes than the train directory "
                                 f"(missing e.g. {missing}, extra e.g. {extra})")
            splits[split] = self._generate_examples(items, Path(d))
        return splits

    def _generate_examples(self, items, root):
        for path, label in items:
            key = str(path.relative_to(root))
            yield key, {"image": path.read_bytes(), "label": label, "file_name": key}
