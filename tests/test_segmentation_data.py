"""The segmentation pipeline (mmseg's train and test transforms), ADE20K's preparation and mmseg's
metric, against hand-computed values and re-statements of the mmseg rules (test_mmseg.py holds
the pipeline to mmseg's own classes)."""

from __future__ import annotations

import colorsys
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lsnet_jax.data import pipeline, source
from lsnet_jax.data.dense import hsv_to_rgb, rgb_to_hsv
from lsnet_jax.data.segmentation import (IGNORE_INDEX, SegTestTransform, SegTrainTransform, choose_crop,
                                         decode_label, official_test_size, random_crop_box, rescale_size)
from lsnet_jax.inference.metrics import intersect_and_union, segmentation_metrics

COLOURS = np.asarray([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255),
                      (128, 128, 128), (255, 255, 255)], np.uint8)


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def block_scene(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A label map of 1..8 in 24x24 blocks (0 = 'other' in a few) and an image of one colour per class."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 9, (-(-h // 24), -(-w // 24))).astype(np.uint8)
    label = np.repeat(np.repeat(coarse, 24, 0), 24, 1)[:h, :w]
    image = np.where(label[..., None] > 0, COLOURS[np.maximum(label, 1) - 1], 0).astype(np.uint8)
    return image, label


@pytest.mark.parametrize("seed", range(4))
def test_train_crop_keeps_labels_aligned_with_pixels(seed):
    """After resize, crop, flip and pad, every pixel whose 5x5 neighbourhood has one label shows
    that label's colour (reduce_zero_label: label k is class k - 1, 0 is ignored)."""
    image, label = block_scene(200, 300, seed)
    tf = SegTrainTransform(scale=(256, 128), ratio_range=(0.5, 2.0), crop=(96, 96), cat_max_ratio=0.75,
                           photometric=False)
    out = tf({"image": png(image), "label": png(label)}, np.random.default_rng(seed))
    img, lab, (h, w) = out["image"], out["label"], out["valid"]
    assert img.shape == (96, 96, 3) and lab.shape == (96, 96)
    assert (lab[h:] == IGNORE_INDEX).all() and (lab[:, w:] == IGNORE_INDEX).all()
    assert (img[h:] == 0).all() and (img[:, w:] == 0).all()
    checked = 0
    for y in range(2, h - 2):
        for x in range(2, w - 2):
            patch = lab[y - 2:y + 3, x - 2:x + 3]
            if (patch == patch[0, 0]).all() and patch[0, 0] != IGNORE_INDEX:
                assert (img[y, x] == COLOURS[patch[0, 0]]).all(), (y, x)
                checked += 1
    assert checked > 500
    # reduce_zero_label: 'other' (0) is ignored and is black
    assert ((lab == IGNORE_INDEX)[:h, :w] == (img[:h, :w].max(-1) == 0)).mean() > 0.95


def test_resize_sizes_follow_mmcv_rescale():
    assert rescale_size(375, 500, (2048, 512)) == (512, 683)  # short side bound
    assert rescale_size(300, 3000, (2048, 512)) == (205, 2048)  # long side bound
    assert official_test_size(375, 500) == (512, 704)  # AlignResize: up to multiples of 32
    assert official_test_size(512, 512) == (512, 512)
    tf = SegTestTransform()
    image, label = block_scene(375, 500, 0)
    out = tf({"image": png(image), "label": png(label)})
    assert out["image"].shape == (512, 704, 3) and out["label"].shape == (375, 500)
    assert np.array_equal(out["label"], decode_label(png(label), True))


def test_padding_of_a_small_image():
    image, label = block_scene(40, 50, 1)
    tf = SegTrainTransform(scale=(50, 40), ratio_range=(1.0, 1.0), crop=(64, 64), flip=0.0, photometric=False,
                           reduce_zero_label=False)
    out = tf({"image": png(image), "label": png(label)}, np.random.default_rng(0))
    assert tuple(out["valid"]) == (40, 50)
    assert np.array_equal(out["label"][:40, :50], label) and np.array_equal(out["image"][:40, :50], image)
    assert (out["label"][40:] == 255).all() and (out["label"][:, 50:] == 255).all()
    assert (out["image"][40:] == 0).all() and (out["image"][:, 50:] == 0).all()


def _mmseg_crop(label, crop, ratio, rng):
    """mmseg 0.30's RandomCrop.__call__ box choice, re-stated."""
    def bbox():
        mh, mw = max(label.shape[0] - crop[0], 0), max(label.shape[1] - crop[1], 0)
        oh, ow = rng.integers(0, mh + 1), rng.integers(0, mw + 1)
        return oh, oh + crop[0], ow, ow + crop[1]
    box = bbox()
    for _ in range(10):
        seg = label[box[0]:box[1], box[2]:box[3]]
        labels, cnt = np.unique(seg, return_counts=True)
        cnt = cnt[labels != 255]
        if len(cnt) > 1 and np.max(cnt) / np.sum(cnt) < ratio:
            break
        box = bbox()
    return box


@pytest.mark.parametrize("seed", range(20))
def test_cat_max_ratio_redraws_as_mmseg(seed):
    label = np.zeros((64, 640), np.uint8)
    label[:, 600:] = 2  # only crops reaching far right hold two classes in proportion < 0.75
    label[:, :8] = 255
    box = choose_crop(label, (64, 64), 0.75, np.random.default_rng(seed))
    assert box == _mmseg_crop(label, (64, 64), 0.75, np.random.default_rng(seed))
    seg = label[:, box[2]:box[3]]
    _, cnt = np.unique(seg[seg != 255], return_counts=True)
    draws = np.random.default_rng(seed)
    boxes = [random_crop_box(64, 640, (64, 64), draws) for _ in range(11)]
    if not (len(cnt) > 1 and cnt.max() / cnt.sum() < 0.75):
        assert box == boxes[-1]  # ten redraws failed: the last drawn box is kept
    single = np.ones((64, 640), np.uint8)  # one class: no crop can pass, the 11th box is used
    assert choose_crop(single, (64, 64), 0.75, np.random.default_rng(seed)) == boxes[-1]
    assert choose_crop(single, (64, 64), 1.0, np.random.default_rng(seed)) == boxes[0]  # off: no check


def test_reduce_zero_label():
    lab = np.asarray([[0, 1, 2], [150, 0, 7]], np.uint8)
    assert np.array_equal(decode_label(png(lab), True), [[255, 0, 1], [149, 255, 6]])
    assert np.array_equal(decode_label(png(lab), False), lab)


def test_hsv_matches_colorsys():
    rgb = np.random.default_rng(0).integers(0, 256, (500, 3)).astype(np.uint8)
    hsv = rgb_to_hsv(rgb[None])[0].astype(np.float64)
    for (r, g, b), (h, s, v) in zip(rgb / 255.0, hsv):
        eh, es, ev = colorsys.rgb_to_hsv(r, g, b)
        # OpenCV's uint8 S and H come from fixed-point tables: within a level of the exact values
        assert abs(v - ev * 255) < 0.51 and abs(s - es * 255) < 1.0
        if es > 0:
            assert min(abs(h - eh * 180), 180 - abs(h - eh * 180)) < 1.0
    back = hsv_to_rgb(rgb_to_hsv(rgb[None]))[0].astype(int)
    assert np.abs(back - rgb).max() <= 5  # H in 2-degree steps: up to 255 / 60 levels, as OpenCV


def test_metrics_on_known_tables():
    """3 classes; class 2 never in the labels but predicted (IoU 0, Acc NaN); class 1 nowhere
    (both NaN, out of the means); ignored pixels (255) left out."""
    label = np.asarray([[0, 0, 0, 255], [3, 3, 0, 255]], np.uint8)
    pred = np.asarray([[0, 0, 2, 1], [3, 0, 0, 2]])
    areas = intersect_and_union(pred, label, 4)
    # class 0: label 4 px (0,0),(0,1),(0,2),(1,2); pred 0 at (0,0),(0,1),(1,1),(1,2) -> inter 3, union 5
    # class 2: pred at (0,2) -> inter 0, union 1; class 3: label 2, pred 1, inter 1, union 2
    assert areas.tolist() == [[3, 0, 0, 1], [5, 0, 1, 2], [4, 0, 1, 1], [4, 0, 0, 2]]
    m = segmentation_metrics(areas * 2, ("a", "b", "c", "d"))  # sums over a split: scale-free
    assert m["aAcc"] == pytest.approx(100 * 4 / 6)
    assert m["mIoU"] == pytest.approx(100 * (3 / 5 + 0 + 1 / 2) / 3)
    assert m["mAcc"] == pytest.approx(100 * (3 / 4 + 1 / 2) / 2)
    assert m["per_class"]["b"] == {"IoU": None, "Acc": None}
    assert m["per_class"]["c"] == {"IoU": 0.0, "Acc": None}


def test_corrupt_records_are_skipped_and_counted():
    image, label = block_scene(100, 120, 2)
    good = {"image": png(image), "label": png(label), "file_name": "ok.png"}
    bad = {"image": b"\xff\xd8\xff\xe0" + b"junk" * 20, "label": png(label), "file_name": "bad.jpg"}
    records = [good, bad, good, good]
    info = source.SourceInfo(4, 150)
    tf = SegTrainTransform(scale=(128, 64), crop=(64, 64))
    batches = list(pipeline.seg_train_loader(records, info, tf, 4, 0, 2).dataset)
    assert [int(b["skipped"]) for b in batches] == [1] * len(batches)
    assert batches[0]["image"].shape == (4, 64, 64, 3)
    samples = list(pipeline.seg_eval_samples(records, SegTestTransform(scale=(128, 64))))
    assert ["error" in s for s in samples] == [False, True, False, False]


def test_prepare_ade20k_leaves_out_and_counts_unreadable_pairs(tmp_path):
    import subprocess
    import sys

    root = tmp_path / "ADEChallengeData2016"
    for split, n in (("training", 4), ("validation", 2)):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for i in range(n):
            image, label = block_scene(60 + 8 * i, 80, i)
            Image.fromarray(image).save(root / "images" / split / f"ADE_{split}_{i}.jpg")
            Image.fromarray(label).save(root / "annotations" / split / f"ADE_{split}_{i}.png")
    (root / "images" / "training" / "ADE_bad.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"junk" * 50)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "annotations" / "training" / "ADE_bad.png")
    image, label = block_scene(60, 80, 9)  # a label value above ADE20K's 150: made the loss NaN
    label[:3, :4] = 200
    Image.fromarray(image).save(root / "images" / "training" / "ADE_high.jpg")
    Image.fromarray(label).save(root / "annotations" / "training" / "ADE_high.png")
    image, label = block_scene(60, 80, 10)  # EXIF-rotated photo, label at the stored size: mmseg turns the image
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(image).save(root / "images" / "training" / "ADE_turned.jpg", exif=exif.tobytes())
    Image.fromarray(label).save(root / "annotations" / "training" / "ADE_turned.png")
    out = subprocess.run([sys.executable, "scripts/prepare_ade20k.py", "--root", str(root), "--data_dir",
                          str(tmp_path / "tfds")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "3 unreadable pairs left out" in out.stdout and "ADE_bad.jpg" in out.stdout
    assert "ADE_high.jpg: label map holds values 200 above 150 (12 pixels)" in out.stdout
    assert ("ADE_turned.jpg: label map is 80x60, the image 60x80 as shown (its EXIF orientation turns the "
            "stored 80x60" in out.stdout), out.stdout
    src, info = source.open_seg_source("ade20k", "train", str(tmp_path / "tfds"))
    assert info.num_examples == 4 and info.num_classes == 150
    left = json.loads(next((tmp_path / "tfds").rglob("left_out.json")).read_text())
    assert sorted(Path(r["path"]).name for r in left) == ["ADE_bad.jpg", "ADE_high.jpg", "ADE_turned.jpg"]
    sample = SegTestTransform()(src[0])
    assert sample["label"].max() <= 7 or sample["label"].max() == 255
    # run again: unchanged, nothing is done; after a pair was added, the dataset is rebuilt with it
    args = [sys.executable, "scripts/prepare_ade20k.py", "--root", str(root), "--data_dir", str(tmp_path / "tfds")]
    again = subprocess.run(args, capture_output=True, text=True)
    assert again.returncode == 0 and "unchanged" in again.stdout, again.stdout + again.stderr
    for kind, ext in (("images", "jpg"), ("annotations", "png")):
        (root / kind / "training" / f"ADE_training_new.{ext}").write_bytes(
            (root / kind / "training" / f"ADE_training_0.{ext}").read_bytes())
    again = subprocess.run(args, capture_output=True, text=True)
    assert again.returncode == 0 and "out of date" in again.stdout, again.stdout + again.stderr
    assert source.open_seg_source("ade20k", "train", str(tmp_path / "tfds"))[1].num_examples == 5
    missing = subprocess.run([sys.executable, "scripts/prepare_ade20k.py", "--root", str(tmp_path / "nope"),
                              "--data_dir", str(tmp_path / "t2")], capture_output=True, text=True)
    assert missing.returncode == 2 and "ADEChallengeData2016 layout" in missing.stderr


def test_digit_scenes_are_drawn_as_the_detection_spec_says():
    """The one scene generator (segmentation now, detection next): DETECTION_SPEC.md's draw gives
    2,054 train and 354 test instances; masks never overlap, boxes are their masks' tight boxes,
    the label map is the union of the masks (digit + 1), and the ink is where the masks are."""
    from lsnet_jax.data.scenes import digit_scene, glyph_split

    (train_g, train_d), (test_g, test_d) = glyph_split()
    assert (len(train_g), len(test_g)) == (1438, 359)
    rng = np.random.default_rng(2)
    scenes = [digit_scene(test_g, test_d, rng) for _ in range(200)]
    assert sum(len(s.digits) for s in scenes) == 354
    rng = np.random.default_rng(1)
    assert sum(len(digit_scene(train_g, train_d, rng).digits) for _ in range(1200)) == 2054
    for s in scenes[:50]:
        assert s.image.shape == (128, 128, 3) and s.image.dtype == np.uint8 and s.masks.shape[1:] == (128, 128)
        assert s.masks.sum(0).max() <= 1  # never overlapping
        expected = np.zeros((128, 128), np.uint8)
        for m, box, d in zip(s.masks, s.boxes, s.digits):
            ys, xs = np.nonzero(m)
            assert tuple(box) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            expected[m] = d + 1
        assert np.array_equal(s.label, expected)
        ink = s.image.astype(int).min(-1) >= 150  # digit colours are 170-255 per channel, backgrounds < 140
        assert (ink & (s.label > 0)).sum() > 0.9 * ink.sum()


def test_a_one_pixel_wide_image_gets_a_test_size_it_can_be_resized_to():
    """A 5000x1 image rescaled to fit (2048, 512) became 2048x0, and segmentation predict died
    with a traceback; a side is at least 1, then padded up to the divisor."""
    assert rescale_size(5000, 1, (2048, 512)) == (2048, 1) and official_test_size(5000, 1) == (2048, 32)
    assert rescale_size(1, 1, (2048, 512)) == (512, 512)
    out = SegTestTransform().image(np.full((5000, 1, 3), 200, np.uint8))
    assert out.shape == (2048, 32, 3) and int(out.min()) == 200
