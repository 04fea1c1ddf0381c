"""Where records come from: TFDS datasets as random-access sources of ``{'image': bytes, 'label': int}``.

``open_source`` prepares the datasets this project builds itself (``lsnet_jax.data.builders``) on
first use, and for anything else says how to prepare it (``DatasetNotFoundError``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import tensorflow_datasets as tfds

from lsnet_jax.data import builders  # noqa: F401  (registers lsnet_digits and imagenet_folder)

log = logging.getLogger(__name__)

# datasets this project can build on the spot, with no download
_BUILT_HERE = {"lsnet_digits", "lsnet_seg_digits", "lsnet_det_digits"}


class DatasetNotFoundError(FileNotFoundError):
    pass


def _how_to_prepare(name: str, data_dir: str | None) -> str:
    where = data_dir or "~/tensorflow_datasets"
    if name == "imagenet_folder":
        return (f"build it from an ImageNet folder tree with `python scripts/prepare_imagenet.py "
                f"--train_dir D/train --val_dir D/val --data_dir {where}`")
    if name == "ade20k":
        return (f"build it from the ADEChallengeData2016 tree with `python scripts/prepare_ade20k.py "
                f"--root ADEChallengeData2016 --data_dir {where}`")
    if name == "coco_detection":
        return (f"build it from a local COCO 2017 tree with `python scripts/prepare_coco.py --root COCO "
                f"--data_dir {where}`")
    if name.startswith("imagenet2012"):
        return (f"download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar into "
                f"{where}/downloads/manual and run `tfds build {name} --data_dir {where}`, or build "
                f"'imagenet_folder' with scripts/prepare_imagenet.py and set data.name to it")
    if name.startswith("imagenet2012_corrupted"):
        return (f"put ILSVRC2012_img_val.tar in {where}/downloads/manual and run `tfds build {name} "
                f"--file_format=array_record --data_dir {where}` (building it needs TensorFlow)")
    return (f"run `tfds build {name} --file_format=array_record --data_dir {where}` (with network), or "
            f"point data_dir at the directory that holds it")


def _close_names(name: str) -> str:
    """"; did you mean ..." with the known datasets nearest to ``name``, or ""."""
    import difflib

    try:
        known = sorted(set(tfds.list_builders()) | set(_BUILT_HERE))
    except Exception:  # the catalogue itself unreadable: no suggestion
        return ""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def get_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    """The prepared TFDS builder of ``name``; datasets built here are prepared on first use.
    Raises ``DatasetNotFoundError`` saying how to prepare anything else."""
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # unknown name (TFDS's message lists its whole catalogue), unreadable directory
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise DatasetNotFoundError(f"TFDS dataset {name!r} not found in {data_dir or 'the default data_dir'}"
                                   f" ({type(e).__name__}: {first}){_close_names(name)}; "
                                   f"{_how_to_prepare(name, data_dir)}") from None
    if not builder.is_prepared():
        if name in _BUILT_HERE:
            log.info("preparing %s in %s", name, builder.data_dir)
            builder.download_and_prepare(file_format="array_record")
        else:
            raise DatasetNotFoundError(f"TFDS dataset {name!r} is not prepared in {builder.data_dir}; "
                                       f"{_how_to_prepare(name, data_dir)}")
    return builder


@dataclasses.dataclass(frozen=True)
class SourceInfo:
    num_examples: int
    num_classes: int
    class_names: tuple[str, ...] = ()
    version: str = ""  # the prepared dataset's (TFDS builder) version


def open_source(name: str, split: str, data_dir: str | None) -> tuple[Sequence[dict], SourceInfo]:
    """A random-access source of ``{'image': JPEG bytes, 'label': int}`` records and its size."""
    builder = get_builder(name, data_dir)
    if split not in builder.info.splits:
        raise ValueError(f"{name} has no split {split!r}; it has {sorted(builder.info.splits)}")
    fmt = builder.info.file_format
    if fmt is not None and getattr(fmt, "value", fmt) != "array_record":
        raise ValueError(f"{name} in {builder.data_dir} is stored as {builder.info.file_format}; grain "
                         f"needs random access: rebuild it with `--file_format=array_record`")
    source = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    label = builder.info.features["label"]
    return source, SourceInfo(len(source), label.num_classes, tuple(label.names), str(builder.info.version))


# whether a segmentation dataset's label 0 means "unlabelled" (mmseg's reduce_zero_label)
REDUCE_ZERO_LABEL = {"ade20k": True, "lsnet_seg_digits": False}


def segmentation_classes(name: str) -> tuple[str, ...]:
    """The class names of a segmentation dataset this project prepares (``ade20k``, ``lsnet_seg_digits``)."""
    from lsnet_jax.data.segmentation import ADE20K_CLASSES

    table = {"ade20k": ADE20K_CLASSES, "lsnet_seg_digits": builders.SEG_DIGITS_CLASSES}
    if name not in table:
        raise ValueError(f"unknown segmentation dataset {name!r}; known: {sorted(table)}")
    return table[name]


def open_seg_source(name: str, split: str, data_dir: str | None) -> tuple[Sequence[dict], SourceInfo]:
    """A random-access source of ``{'image': bytes, 'label': PNG bytes, 'file_name'}`` records."""
    classes = segmentation_classes(name)
    builder = get_builder(name, data_dir)
    if split not in builder.info.splits:
        raise ValueError(f"{name} has no split {split!r}; it has {sorted(builder.info.splits)}")
    skip = tfds.decode.SkipDecoding()
    source = builder.as_data_source(split=split, decoders={"image": skip, "label": skip})
    return source, SourceInfo(len(source), len(classes), classes, str(builder.info.version))


def open_det_source(name: str, split: str, data_dir: str | None
                    ) -> tuple[Sequence[dict], SourceInfo, list[dict]]:
    """A random-access source of ``{'image': bytes, 'file_name', 'objects': JSON}`` detection
    records (``builders.CocoDetection``), its info and its categories (label i is the i-th)."""
    builder = get_builder(name, data_dir)
    if split not in builder.info.splits:
        raise ValueError(f"{name} has no split {split!r}; it has {sorted(builder.info.splits)}")
    categories = list(builder.info.metadata.get("categories", []))
    if not categories:
        raise ValueError(f"{name} in {builder.data_dir} records no categories: it is not a detection dataset "
                         f"prepared by this project")
    source = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    names = tuple(str(c["name"]) for c in categories)
    return source, SourceInfo(len(source), len(names), names, str(builder.info.version)), categories
