"""The segmentation pipelines against MMSegmentation's own classes (mmsegmentation 0.30.0 on mmcv
1.7.2, the versions of the official LSNet segmentation; ``scripts/install_references.sh``), as
``test_timm.py`` runs timm: mmseg's LoadImageFromFile, LoadAnnotations, Resize with a ratio range,
RandomCrop with cat_max_ratio, RandomFlip, PhotoMetricDistortion, Normalize and Pad, and the
official test path (MultiScaleFlipAug over the official ``AlignResize``), on the photos
scikit-learn ships and on an EXIF-rotated JPEG written here. Both sides draw from one numpy
RandomState sequence (mmseg's global ``np.random``, ours through ``LegacyDraws``), so every draw
(ratio, crop boxes, flip, the photometric coins and amounts) is the same: pixels and labels must be
identical, the normalised images equal to float32 rounding."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from data_utils import sample_photos
from PIL import Image

torch = pytest.importorskip("torch")
from lsnet_jax.torch_reference import import_timm  # noqa: E402

import_timm()  # torchvision beside the CPU torch (mmcv.runner imports it)
try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mmcv 1.7's notice of its 2.0 renaming
        import mmcv
        import mmseg
        from mmseg.datasets.builder import PIPELINES
        from mmseg.datasets.pipelines import Compose
        from mmseg.datasets.pipelines.transforms import PhotoMetricDistortion as MmsegPMD
        from mmseg.datasets.pipelines.transforms import Resize as MmsegResize
except ImportError as e:  # not a skip: these are the reference the pipelines are held to
    raise ImportError(f"{e}: the mmseg reference is not installed; run `bash scripts/install_references.sh` "
                      f"in the project's environment (.ci/run does)") from e

from lsnet_jax.data import dense  # noqa: E402
from lsnet_jax.data.normalize import normalize  # noqa: E402
from lsnet_jax.data.segmentation import SegTestTransform, SegTrainTransform, decode_image  # noqa: E402
from lsnet_jax.train.seg_steps import pad_mask, seg_cross_entropy  # noqa: E402

MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)  # the recipe's, on RGB


def test_reference_versions():
    import cv2

    assert (mmcv.__version__, mmseg.__version__) == ("1.7.2", "0.30.0")
    assert cv2.__version__ == "4.10.0"  # the pinned opencv-python-headless


class LegacyDraws:
    """numpy ``Generator``'s methods that the pipelines call, drawn from a legacy ``RandomState``
    exactly as mmseg calls ``np.random``: ``integers(a, b)`` is ``randint(a, b)``, ``random()`` is
    ``random_sample()``, ``uniform`` is ``uniform``."""

    def __init__(self, seed: int):
        self.state = np.random.RandomState(seed)

    def integers(self, low, high=None):
        return self.state.randint(low, high)

    def random(self):
        return self.state.random_sample()

    def uniform(self, low, high):
        return self.state.uniform(low, high)


@PIPELINES.register_module(force=True)
class AlignResize(MmsegResize):
    """The official LSNet segmentation's test resize (its ``align_resize.py``, with mmseg's
    Resize): keep-ratio ``mmcv.imrescale`` to the scale, then ``mmcv.imresize`` (bilinear) of each
    side up to a multiple of ``size_divisor``."""

    def __init__(self, size_divisor: int = 32, **kwargs):
        super().__init__(**kwargs)
        self.size_divisor = size_divisor

    def _align(self, img, interpolation="bilinear"):
        h = int(np.ceil(img.shape[0] / self.size_divisor)) * self.size_divisor
        w = int(np.ceil(img.shape[1] / self.size_divisor)) * self.size_divisor
        return mmcv.imresize(img, (w, h), interpolation=interpolation)

    def _resize_img(self, results):
        img, scale_factor = mmcv.imrescale(results["img"], results["scale"], return_scale=True)
        img = self._align(img)
        h, w = img.shape[:2]
        results["img"] = img
        results["img_shape"] = results["pad_shape"] = img.shape
        results["scale_factor"] = np.array([w / results["ori_shape"][1], h / results["ori_shape"][0]] * 2, np.float32)
        results["keep_ratio"] = True


def _exif_rotated_jpeg(path: Path) -> Path:
    """china.jpg saved with EXIF orientation 6 (the camera held rotated: shown 90 degrees clockwise)."""
    with Image.open(sample_photos()[0]) as im:
        exif = Image.Exif()
        exif[0x0112] = 6
        im.convert("RGB").save(path, "JPEG", quality=92, exif=exif.tobytes())
    return path


def _label_png(path: Path, h: int, w: int, seed: int) -> Path:
    """An ADE-like label map: 0 ('other', ignored after reduce_zero_label) and a few classes of
    1..150 in irregular regions, so that cat_max_ratio redraws happen and resizes meet edges."""
    rng = np.random.default_rng(seed)
    coarse = rng.choice(np.asarray([0, 3, 7, 12, 150], np.uint8), (h // 37 + 1, w // 29 + 1), p=[.2, .4, .2, .1, .1])
    label = np.repeat(np.repeat(coarse, 37, 0), 29, 1)[:h, :w]
    Image.fromarray(label).save(path)
    return path


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> list[tuple[Path, Path]]:
    """(image, label) files: the two sklearn photos and the EXIF-rotated one (its label at the
    displayed, rotated size, as a labelling tool that shows the photo upright would write it)."""
    root = tmp_path_factory.mktemp("mmseg")
    out = []
    for i, photo in enumerate([*sample_photos(), _exif_rotated_jpeg(root / "rotated.jpg")]):
        h, w = mmcv.imread(str(photo)).shape[:2]  # as displayed (EXIF applied)
        out.append((photo, _label_png(root / f"label{i}.png", h, w, i)))
    return out


def _results(image: Path, label: Path) -> dict:
    return {"img_info": {"filename": image.name}, "ann_info": {"seg_map": label.name},
            "img_prefix": str(image.parent), "seg_prefix": str(label.parent), "seg_fields": []}


def test_decoding_applies_exif_as_mmcv(scenes):
    image, _ = scenes[2]
    data = image.read_bytes()
    ours = decode_image(data)
    ref = mmcv.imfrombytes(data, flag="color", backend="cv2")  # mmseg LoadImageFromFile's call
    assert np.array_equal(ours, ref[..., ::-1])
    with Image.open(image) as im:
        stored = np.asarray(im.convert("RGB"))  # PIL: the stored (unrotated) pixels
    assert ours.shape == (stored.shape[1], stored.shape[0], 3)  # 427x640 stored, 640x427 shown
    assert np.abs(ours.astype(int) - np.rot90(stored, -1)).mean() < 1.5  # rotated clockwise (two JPEG decoders)


TRAIN_CASES = [  # (scale, ratio range, crop): the recipe, and the small digits recipe (crops padded)
    ((2048, 512), (0.5, 2.0), (512, 512)),
    ((256, 128), (0.5, 2.0), (96, 96)),
]


@pytest.mark.parametrize("case", range(len(TRAIN_CASES)))
def test_train_pipeline_equals_mmseg(scenes, case):
    """Decode -> reduce_zero_label -> Resize(ratio_range) -> RandomCrop(cat_max_ratio 0.75) ->
    RandomFlip(0.5) -> PhotoMetricDistortion -> Normalize(to_rgb) -> Pad: mmseg's classes and
    ``SegTrainTransform`` (normalisation and padding as the train step does them on the device), at
    the same draws, over enough seeds that every branch of the draws is taken."""
    scale, ratio_range, crop = TRAIN_CASES[case]
    tf = SegTrainTransform(scale=scale, ratio_range=ratio_range, crop=crop, cat_max_ratio=0.75, flip=0.5,
                           photometric=True, reduce_zero_label=True)
    pipe = Compose([
        dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", reduce_zero_label=True),
        dict(type="Resize", img_scale=scale, ratio_range=ratio_range),
        dict(type="RandomCrop", crop_size=crop, cat_max_ratio=0.75), dict(type="RandomFlip", prob=0.5),
        dict(type="PhotoMetricDistortion"), dict(type="Normalize", mean=MEAN, std=STD, to_rgb=True),
        dict(type="Pad", size=crop, pad_val=0, seg_pad_val=255)])
    changed, flips = [], set()
    for image, label in scenes:
        record = {"image": image.read_bytes(), "label": label.read_bytes()}
        for seed in range(8):
            np.random.seed(seed)
            results = _results(image, label)
            for t in pipe.transforms:
                before = results.get("img")
                results = t(results)
                if isinstance(t, MmsegPMD):
                    distorted = results["img"][..., ::-1]  # BGR -> RGB, before Normalize
                    changed.append(not np.array_equal(before, results["img"]))
            ours = tf(record, LegacyDraws(seed))
            h, w = ours["valid"]
            assert (h, w) == distorted.shape[:2], (image.name, seed)
            assert np.array_equal(ours["image"][:h, :w], distorted), (image.name, seed)
            assert np.array_equal(ours["label"], results["gt_semantic_seg"]), (image.name, seed)
            device = normalize(jnp.asarray(ours["image"][None]), tuple(m / 255 for m in MEAN),
                               tuple(s / 255 for s in STD))
            device = jnp.where(pad_mask(jnp.asarray(ours["valid"][None]), crop), device, 0.0)[0]
            np.testing.assert_allclose(np.asarray(device), results["img"], rtol=0, atol=2e-5)
            flips.add(results["flip"])
    assert flips == {True, False} and any(changed)


def test_test_pipeline_equals_the_official(scenes):
    """MultiScaleFlipAug((2048, 512), flip=False) over AlignResize(keep_ratio, 32) and Normalize,
    against ``SegTestTransform``; the label stays at its original size, as mmseg evaluates."""
    tf = SegTestTransform(scale=(2048, 512), size_divisor=32, reduce_zero_label=True)
    pipe = Compose([dict(type="LoadImageFromFile"), dict(
        type="MultiScaleFlipAug", img_scale=(2048, 512), flip=False,
        transforms=[dict(type="AlignResize", keep_ratio=True, size_divisor=32), dict(type="RandomFlip"),
                    dict(type="Normalize", mean=MEAN, std=STD, to_rgb=True)])])
    load_label = Compose([dict(type="LoadAnnotations", reduce_zero_label=True)])
    for image, label in scenes:
        ref = pipe(_results(image, label))
        ours = tf({"image": image.read_bytes(), "label": label.read_bytes()})
        assert ours["image"].shape[:2] == ref["img"][0].shape[:2]
        assert all(s % 32 == 0 for s in ours["image"].shape[:2])
        device = normalize(jnp.asarray(ours["image"][None]), tuple(m / 255 for m in MEAN), tuple(s / 255 for s in STD))
        np.testing.assert_allclose(np.asarray(device[0]), ref["img"][0], rtol=0, atol=2e-5)
        gt = load_label(_results(image, label))["gt_semantic_seg"]
        assert np.array_equal(ours["label"], gt)


@pytest.mark.parametrize("lengths", [(512, 683), (427, 640), (1000, 37), (33, 1000)])
def test_nearest_and_linear_resizes_are_mmcv(lengths):
    """The size pairs where ``floor(i * src / dst)`` and OpenCV's ``floor(i * (1 / (dst / src)))``
    part: every rescale the recipe draws from these sources, the labels and images through mmcv."""
    h, w = lengths
    rng = np.random.default_rng(h * w)
    label = rng.integers(0, 151, (h, w)).astype(np.uint8)
    img = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    for ratio in np.linspace(0.5, 2.0, 13):
        scale = (int(2048 * ratio), int(512 * ratio))
        size = dense.rescale_size(h, w, scale)
        ref_label = mmcv.imrescale(label, scale, interpolation="nearest")
        assert ref_label.shape == size
        assert np.array_equal(dense.resize_nearest(label, size), ref_label)
        assert np.array_equal(dense.resize_linear(img, size), mmcv.imrescale(img, scale))


def _mmseg_accuracy():
    """mmseg 0.30's ``accuracy`` (models/losses/accuracy.py: torch only), loaded from its file:
    ``mmseg.models`` itself imports compiled mmcv ops, absent from this mmcv build."""
    path = Path(mmseg.__file__).parent / "models" / "losses" / "accuracy.py"
    spec = importlib.util.spec_from_file_location("mmseg_accuracy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.accuracy


def test_acc_seg_equals_mmseg_including_an_all_ignored_batch():
    accuracy = _mmseg_accuracy()
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (2, 24, 20, 7)).astype(np.float32)
    labels = rng.integers(0, 7, (2, 24, 20))
    labels[rng.random(labels.shape) < 0.3] = 255
    all_ignored = np.full_like(labels, 255)
    for lab in (labels, all_ignored):
        _, ours = seg_cross_entropy(jnp.asarray(logits), jnp.asarray(lab))
        ref = accuracy(torch.from_numpy(logits).permute(0, 3, 1, 2), torch.from_numpy(lab), ignore_index=255)
        np.testing.assert_allclose(float(ours), float(ref), rtol=1e-6)
    assert float(ref) == pytest.approx(100.0)  # mmseg logs 100 when nothing is labelled


def test_photometric_distortion_hsv_is_opencv_on_both_row_paths():
    """OpenCV's uint8 HSV->RGB has a vectorised path for rows of 32 pixels or more that truncates
    where its scalar path (shorter rows) rounds; mmcv's ``hsv2bgr`` and ours take the same one."""
    rng = np.random.default_rng(1)
    for width in (17, 31, 32, 200):
        img = rng.integers(0, 256, (9, width, 3)).astype(np.uint8)
        hsv = dense.rgb_to_hsv(img)
        assert np.array_equal(hsv, mmcv.bgr2hsv(np.ascontiguousarray(img[..., ::-1])))
        hsv[..., 1] = np.clip(hsv[..., 1].astype(np.float32) * 1.3, 0, 255).astype(np.uint8)
        assert np.array_equal(dense.hsv_to_rgb(hsv), mmcv.hsv2bgr(hsv)[..., ::-1])

