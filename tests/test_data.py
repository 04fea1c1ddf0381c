"""The input pipeline on a tiny TFDS dataset of real JPEG files built on the fly."""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from pathlib import Path
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from data_utils import CLASS_COLOURS, build_folder_dataset, make_folder_tree, sample_photos
from PIL import Image

from lsnet_jax.data import pipeline, sampler, source
from lsnet_jax.data import transforms as T
from lsnet_jax.data.normalize import normalize
from lsnet_jax.train import augment

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    tree = make_folder_tree(root / "tree")
    build_folder_dataset(tree, root / "tfds")
    return tree, str(root / "tfds")


def _train(data_dir, size=64, batch=6, seed=0, repeats=1, workers=0, **tf):
    src, info = source.open_source("imagenet_folder", "train", data_dir)
    kw = dict(size=size, mean=MEAN, std=STD) | tf
    return pipeline.train_loader(src, info, T.TrainTransform(**kw), batch, seed, num_epochs=2,
                                 repeats=repeats, workers=workers)


def _take(loader, n, state=None):
    it = iter(loader.dataset)
    if state is not None:
        it.set_state(state)
    return [next(it) for _ in range(n)]


def test_source_counts_and_classes(folder):
    tree, data_dir = folder
    src, info = source.open_source("imagenet_folder", "train", data_dir)
    n_files = sum(1 for p in (tree / "train").rglob("*") if p.is_file())
    assert info.num_examples == n_files == 3 * 8 + 2 + len(sample_photos())
    assert info.num_classes == 3
    _, vinfo = source.open_source("imagenet_folder", "validation", data_dir)
    assert vinfo.num_examples == 12
    assert isinstance(src[0]["image"], bytes) and src[0]["image"][:2] == b"\xff\xd8"


def test_train_batches_shapes_ranges_and_determinism(folder):
    _, data_dir = folder
    loader = _train(data_dir)
    a = _take(loader, 4)
    b = _take(_train(data_dir), 4)
    for x, y in zip(a, b):
        assert x["image"].shape == (6, 64, 64, 3) and x["image"].dtype == np.uint8
        assert x["label"].shape == (6,) and x["label"].dtype == np.int32
        assert x["erase"].shape == (6, 4) and x["erase"].dtype == np.int32
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
        np.testing.assert_array_equal(x["erase"], y["erase"])
    imgs = np.concatenate([x["image"] for x in a])
    assert imgs.std() > 20 and imgs.min() < 30 and imgs.max() > 225  # photos and textures, not blanks
    boxes = np.concatenate([x["erase"] for x in a])
    on = boxes[:, 2] > 0
    assert (boxes[~on] == 0).all() and (boxes[on, 0] + boxes[on, 2] <= 64).all()
    assert (boxes[on, 1] + boxes[on, 3] <= 64).all()
    other_seed = _take(_train(data_dir, seed=1), 1)[0]
    assert not np.array_equal(other_seed["image"], a[0]["image"])


def test_epoch_order_is_a_permutation_per_epoch():
    for repeats in (1, 3):
        e0, e1 = (sampler.epoch_order(7, e, 50, repeats) for e in (0, 1))
        assert len(e0) == 50 * repeats and not np.array_equal(e0, e1)
        counts = np.bincount(e0, minlength=50)
        assert (counts == repeats).all()
        if repeats == 3:  # copies in a row, as the RASampler's list before dealing
            assert np.all(e0.reshape(50, 3) == e0.reshape(50, 3)[:, :1])
    np.testing.assert_array_equal(sampler.epoch_order(7, 0, 50, 1), sampler.epoch_order(7, 0, 50, 1))


def test_process_slices_do_not_overlap_and_rebuild_the_global_batch():
    n, gb = 40, 8
    one = sampler.Positions(n, gb, gb, 0, seed=3, repeats=1, shuffle=True)
    two = [sampler.Positions(n, gb, gb // 2, p, seed=3, repeats=1, shuffle=True) for p in range(2)]
    for b in range(2 * n // gb):
        glob = [one(b * gb + j) for j in range(gb)]
        parts = [two[p](b * gb // 2 + j) for p in range(2) for j in range(gb // 2)]
        assert parts == glob
        per_proc = [{two[p](b * gb // 2 + j)[1] for j in range(gb // 2)} for p in range(2)]
        assert not per_proc[0] & per_proc[1]
    # one epoch of positions covers every record once
    seen = [one(k)[1] for k in range(n // gb * gb)]
    assert sorted(seen) == list(range(n))


def official_rasampler(perm: np.ndarray, num_replicas: int, rank: int, repeats: int = 3) -> np.ndarray:
    """DeiT's RASampler (the official samplers.py), re-stated from LSNET_SPEC.md on a given
    permutation: indices repeated ``repeats`` times in a row, padded by their own head to a
    multiple of the replicas, dealt by stride, each replica keeping floor(n // 256 * 256 / R)."""
    n = len(perm)
    indices = [int(i) for i in perm for _ in range(repeats)]
    num_samples = int(math.ceil(n * repeats / num_replicas))
    total = num_samples * num_replicas
    indices += indices[:total - len(indices)]
    mine = indices[rank:total:num_replicas]
    return np.asarray(mine[:int(math.floor(n // 256 * 256 / num_replicas))])


def test_repeated_augmentation_is_the_official_rasampler_at_imagenet_scale():
    """8 replicas x 256 (the official 8 GPUs), ImageNet's 1,281,167 images: every GPU's batches
    equal the official sampler's on the same permutation; no GPU (BatchNorm group) sees an image
    twice in an epoch, so no image is mixed with its own copy."""
    n, gb, replicas, seed, epoch = 1_281_167, 2048, 8, 5, 3
    records = sampler.epoch_records(seed, epoch, n, gb, 3, replicas)
    steps = n // gb
    assert records.shape == (steps, gb) == (625, 2048)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    for rank in (0, 3, 7):
        official = official_rasampler(perm, replicas, rank)
        ours = records[:, rank * 256:(rank + 1) * 256].reshape(-1)
        np.testing.assert_array_equal(ours, official[:steps * 256])  # the DataLoader drops the partial batch
    groups = records.reshape(steps, replicas, 256)
    for r in range(replicas):
        assert len(np.unique(groups[:, r])) == steps * 256  # no image twice on one GPU in the epoch
    assert not np.any(groups == groups[:, :, ::-1])  # Mixup's partner (the group reversed) is never a copy
    # every image of the epoch has its 3 copies on 3 different GPUs
    gpu_of = np.repeat(np.arange(replicas)[None, :], steps, 0).repeat(256, 1).reshape(-1)
    rec = records.reshape(-1)
    order = np.argsort(rec, kind="stable")
    rec, gpu_of = rec[order], gpu_of[order]
    same = (rec[1:] == rec[:-1])
    assert same.sum() > n // 2 and not np.any(gpu_of[1:][same] == gpu_of[:-1][same])
    # the Positions a process reads are these records
    pos = sampler.Positions(n, gb, gb // 2, 1, seed, 3, True, replicas)
    b = epoch * steps + 17
    assert [pos(b * 1024 + j)[1] for j in (0, 5, 1023)] == [records[17, 1024 + j] for j in (0, 5, 1023)]


def test_mixup_is_drawn_per_bn_group():
    """With bn_group_size each group mixes within itself, with its own lambda and mode."""
    from lsnet_jax.train.augment import mixup_cutmix

    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(32, 8, 8, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, 32))
    key = jax.random.key(4)
    out, targets = mixup_cutmix(key, images, labels, 10, group_size=4)
    keys = jax.random.split(key, 8)
    lams = set()
    for g in range(8):
        o, t = mixup_cutmix(keys[g], images[4 * g:4 * g + 4], labels[4 * g:4 * g + 4], 10)
        np.testing.assert_array_equal(np.asarray(out[4 * g:4 * g + 4]), np.asarray(o))
        np.testing.assert_array_equal(np.asarray(targets[4 * g:4 * g + 4]), np.asarray(t))
        lams.add(round(float(t[0].max()), 4))
    assert len(lams) > 4  # independent draws


def test_resume_from_iterator_state_mid_epoch(folder):
    _, data_dir = folder
    full = _take(_train(data_dir), 7)
    it = iter(_train(data_dir).dataset)
    for _ in range(3):
        next(it)
    state = it.get_state()
    rest = _take(_train(data_dir), 4, state=state)
    for x, y in zip(full[3:], rest):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])


def _resume(loader, state, n):
    it = loader.iterator()
    it.set_state(state)
    return [next(it) for _ in range(n)]


def test_worker_processes_give_the_same_batches_and_resume(folder):
    """The same batches with or without worker processes; a position saved with one worker count
    resumes with another (``data.workers`` is a throughput knob: grain's own iterator state names
    each worker, and resuming it with another count crashed with ``KeyError: 'next_index'``); the
    grain states older checkpoints hold resume too."""
    _, data_dir = folder
    ref = _take(_train(data_dir), 5)
    it = _train(data_dir, workers=2).iterator()
    got = [next(it) for _ in range(3)]
    state = it.get_state()
    assert state == {"batches": 3}
    got += _resume(_train(data_dir, workers=2), state, 2)
    for x, y in zip(ref, got):
        np.testing.assert_array_equal(x["image"], y["image"])
    in_process = _resume(_train(data_dir), state, 2)  # saved with 2 workers, resumed with none
    with_workers = _resume(_train(data_dir, workers=3), {"batches": 2}, 1)  # and the other way
    legacy = _resume(_train(data_dir), {"next_index": 3}, 1)  # grain's in-process state
    grain_mp = iter(_train(data_dir, workers=2).dataset)  # grain's state with worker processes
    for _ in range(3):
        next(grain_mp)
    legacy_mp = _resume(_train(data_dir), grain_mp.get_state(), 1)
    for x, y in [(ref[3], in_process[0]), (ref[4], in_process[1]), (ref[2], with_workers[0]), (ref[3], legacy[0]),
                 (ref[3], legacy_mp[0])]:
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])


def test_corrupt_records_are_skipped_and_counted_labels_stay_right(folder, caplog):
    _, data_dir = folder
    loader = _train(data_dir, size=48, batch=8, randaugment=None, reprob=0.0, scale=(0.5, 1.0))
    src, info = source.open_source("imagenet_folder", "train", data_dir)
    bad = {i for i in range(len(src)) if b"zz_" in src[i]["file_name"]}
    pos = sampler.Positions(info.num_examples, 8, 8, 0, seed=0, repeats=1, shuffle=True)
    n_batches = 2 * info.num_examples // 8
    expected = sum(pos(k)[1] in bad for k in range(n_batches * 8))
    skipped, checked = 0, 0
    colours = CLASS_COLOURS
    photos = {p.name for p in sample_photos()}
    with caplog.at_level("WARNING"):
        for batch in _take(loader, 2 * info.num_examples // 8):
            skipped += int(batch["skipped"])
            for img, label in zip(batch["image"], batch["label"]):
                mean = img.reshape(-1, 3).mean(0)
                nearest = int(np.argmin(((colours - mean) ** 2).sum(-1)))
                if np.abs(colours[nearest] - mean).max() < 40:  # a synthetic image, not a photo
                    assert nearest == label
                    checked += 1
    assert len(bad) == 2 and skipped == expected >= 2
    assert checked > 20
    assert "skipped unreadable record" in caplog.text and "zz_truncated" in caplog.text
    assert photos  # the photos were decoded (class c0) without complaint
    assert "china.jpg" not in caplog.text and "flower.jpg" not in caplog.text


def test_only_decoding_errors_count_as_unreadable(folder):
    """A failing augmentation is a bug, not a bad record: it must stop the run, not be skipped."""
    _, data_dir = folder
    src, _ = source.open_source("imagenet_folder", "train", data_dir)
    good = next(i for i in range(len(src)) if b"zz_" not in src[i]["file_name"])
    bad = next(i for i in range(len(src)) if b"zz_truncated" in src[i]["file_name"])

    def broken(data, rng):
        T.decode_rgb(T.open_image(data))
        raise RuntimeError("augmentation bug")

    load = pipeline._Load(src, broken, 0, len(src))
    assert load((0, bad)) is None  # the truncated JPEG is skipped
    with pytest.raises(RuntimeError, match="augmentation bug"):
        load((0, good))
    with pytest.raises(T.UnreadableImage, match="UnidentifiedImageError"):
        T.open_image(b"not an image" * 10)


def test_eval_transform_equals_pil_resize_then_crop():
    for path in sample_photos():
        data = path.read_bytes()
        got = T.EvalTransform(224, crop_pct=0.875)(data)["image"]
        img = Image.open(path).convert("RGB")
        w, h = img.size
        short = int(224 / 0.875)  # 256
        size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        img = img.resize(size, Image.Resampling.BICUBIC)
        left, top = int(round((size[0] - 224) / 2)), int(round((size[1] - 224) / 2))
        ref = np.asarray(img)[top:top + 224, left:left + 224]
        assert got.shape == (224, 224, 3) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, ref)
        # normalisation on the device equals the float64 formula
        dev = np.asarray(normalize(jnp.asarray(got[None]), MEAN, STD))[0]
        ref64 = (ref / 255.0 - np.array(MEAN)) / np.array(STD)
        np.testing.assert_allclose(dev, ref64, atol=2e-6)


def test_eval_loader_pads_and_masks(folder):
    _, data_dir = folder
    src, info = source.open_source("imagenet_folder", "validation", data_dir)
    loader = pipeline.eval_loader(src, info, T.EvalTransform(32), 8)
    batches = list(loader.dataset)
    assert len(batches) == loader.steps_per_epoch == 2
    assert sum(b["mask"].sum() for b in batches) == 12
    assert batches[-1]["mask"].tolist() == [1] * 4 + [0] * 4
    labels = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
    assert sorted(np.bincount(labels).tolist()) == [4, 4, 4]


def test_rrc_params_follow_torchvision():
    rng = np.random.default_rng(0)
    for _ in range(500):
        top, left, h, w = T.rrc_params(rng, 500, 375)
        assert 0 <= top and top + h <= 375 and 0 <= left and left + w <= 500
        assert 0.08 * 500 * 375 * 0.9 <= h * w <= 500 * 375
        assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05
    # an extreme panorama falls back to a centre crop clamped to the largest ratio
    assert T.rrc_params(np.random.default_rng(0), 4000, 10, scale=(0.9, 1.0)) == (0, 1993, 10, 13)


def test_fast_decode_keeps_the_crop_close():
    data = sample_photos()[0].read_bytes()
    slow = T.random_resized_crop(T.open_image(data), np.random.default_rng(5), 64, (0.9, 1.0), fast_decode=False)
    fast = T.random_resized_crop(T.open_image(data), np.random.default_rng(5), 64, (0.9, 1.0), fast_decode=True)
    diff = np.abs(np.asarray(slow, np.float32) - np.asarray(fast, np.float32))
    assert diff.mean() < 4.0  # of 255: DCT-domain downscaling differs from bicubic only slightly


def test_randaugment_ops_all_run_and_change_images():
    img = Image.open(sample_photos()[1]).convert("RGB").resize((96, 64))
    rng = np.random.default_rng(0)
    ra = T.RandAugment("rand-m9-mstd0.5-inc1")
    assert (ra.n, ra.m, ra.mstd) == (2, 9.0, 0.5)
    for level in (9.0, 10.0, 0.0):  # N(9, 0.5) is clipped to [0, 10]: both ends occur
        for name in T.RAND_INCREASING_TRANSFORMS:
            op, to_arg = T._OPS[name]
            out = op(img, to_arg(rng, level, ra.hparams), ra.fill)
            assert out.size == img.size and out.mode == "RGB"
            if level > 0:
                assert not np.array_equal(np.asarray(out), np.asarray(img)), name
    # timm's PosterizeIncreasing at magnitude 10 keeps 0 bits: black (Pillow 13 refuses bits=0)
    assert T._OPS["PosterizeIncreasing"][1](rng, 10.0, ra.hparams) == 0
    assert not np.asarray(T._posterize(img, 0)).any()
    np.testing.assert_array_equal(np.asarray(T._posterize(img, 3)), np.asarray(img) & 0b11100000)
    outs = [np.asarray(ra(img, np.random.default_rng(s))) for s in range(20)]
    assert sum(not np.array_equal(o, np.asarray(img)) for o in outs) >= 10
    np.testing.assert_array_equal(np.asarray(ra(img, np.random.default_rng(3))), outs[3])
    with pytest.raises(ValueError, match="inc1"):
        T.RandAugment("rand-m9-mstd0.5")


def test_shears_and_translations_match_pillows_bicubic_affine():
    """The numpy shears/translations against Pillow's own ``transform`` (what timm calls), on
    real photos at RandAugment's magnitudes, square and not: every value within one level and
    almost all equal (float32 against Pillow's float64 before truncation)."""
    rng = np.random.default_rng(0)
    fill = (124, 116, 104)
    differ, total = 0, 0
    for path in sample_photos():
        photo = Image.open(path).convert("RGB")
        for size in [(96, 96), (120, 80), (57, 91)]:
            img = photo.resize(size, Image.Resampling.BICUBIC)
            w, h = size
            for _ in range(6):
                a = rng.choice([-1, 1]) * rng.uniform(0.2, 0.3)  # shear: 0.3 * level / 10
                t = rng.choice([-1, 1]) * rng.uniform(0.3, 0.45)  # translate: 0.45 * level / 10
                for name, arg, matrix in [("ShearX", a, (1, a, 0, 0, 1, 0)), ("ShearY", a, (1, 0, 0, a, 1, 0)),
                                          ("TranslateXRel", t, (1, 0, t * w, 0, 1, 0)),
                                          ("TranslateYRel", t, (1, 0, 0, 0, 1, t * h))]:
                    with mock.patch.object(T, "shift_lines", wraps=T.shift_lines) as numpy_path:
                        got = np.asarray(T._OPS[name][0](img, arg, fill), np.int16)
                    assert numpy_path.call_count == 1, name  # not Pillow compared with itself
                    ref = np.asarray(img.transform(img.size, Image.Transform.AFFINE, matrix,
                                                   resample=Image.Resampling.BICUBIC, fillcolor=fill), np.int16)
                    assert got.shape == ref.shape
                    assert np.abs(got - ref).max() <= 1, (name, arg, size)
                    assert (ref == np.asarray(fill, np.int16)).all(-1).sum() > 0  # the fill is in play
                    differ += int((got != ref).sum())
                    total += got.size
    assert differ / total < 1e-3, differ / total
    same = T.shift_lines(img, 0.0, 1, fill)
    np.testing.assert_array_equal(np.asarray(same), np.asarray(img))


def test_random_erasing_probability_and_box():
    rng = np.random.default_rng(0)
    boxes = np.stack([T.erasing_box(rng, 40, 50, prob=0.25) for _ in range(4000)])
    on = boxes[:, 2] > 0
    assert abs(on.mean() - 0.25) < 0.03
    areas = boxes[on, 2] * boxes[on, 3] / 2000
    assert 0.015 <= areas.min() and areas.max() <= 1 / 3 + 0.03
    assert (boxes[on, 0] + boxes[on, 2] <= 40).all() and (boxes[on, 1] + boxes[on, 3] <= 50).all()
    # the device fills exactly each box with its own N(0, 1) noise and leaves the rest
    def check(boxes, n, via_all_pixels):
        x = jnp.full((n, 40, 50, 3), 7.0)
        boxes = np.asarray(boxes, np.int32)
        key = jax.random.key(n)
        out = np.asarray(jax.jit(functools.partial(augment.erase, compact=True))(key, x, jnp.asarray(boxes)))
        seen = []
        for img, (top, left, h, w) in zip(out, boxes):
            inside = np.zeros((40, 50), bool)
            inside[top:top + h, left:left + w] = True
            assert (img[~inside] == 7.0).all()
            seen.append(img[inside].ravel())
        noise = np.concatenate(seen)
        assert abs(noise.mean()) < 0.1 and abs(noise.std() - 1) < 0.1, (noise.mean(), noise.std())
        # the full draw, a value per pixel of the batch: what the reference kernels' step always does
        full = np.asarray(augment._erase(key, x, jnp.asarray(boxes)))
        np.testing.assert_array_equal(np.asarray(augment.erase(key, x, jnp.asarray(boxes), compact=False)), full)
        if via_all_pixels:
            np.testing.assert_array_equal(out, full)
            return
        # compact (impl="xla_cpu"): the k-th erased image reads row k of an (n/2, H*W/3 + H + W) draw, its box row by
        # row; each erased pixel reads its own position, so every value is its own N(0, 1) sample
        pixels = 40 * 50 // 3 + 40 + 50
        draw = np.asarray(jax.random.normal(key, (max(1, n // 2) * pixels, 3)))
        used = []
        for k, (i, (top, left, h, w)) in enumerate((i, b) for i, b in enumerate(boxes) if b[2] > 0):
            idx = k * pixels + np.arange(h)[:, None] * w + np.arange(w)[None, :]
            np.testing.assert_array_equal(out[i, top:top + h, left:left + w], draw[idx])
            used.append(idx.ravel())
        used = np.concatenate(used)
        assert len(np.unique(used)) == len(used) and not np.array_equal(out, full)

    check([[5, 10, 20, 30], [0, 0, 0, 0], [0, 0, 39, 17], [0, 0, 0, 0], [30, 1, 9, 48], [0, 0, 0, 0]], 6,
          via_all_pixels=False)
    check([[5, 10, 20, 30], [1, 2, 3, 4]], 2, via_all_pixels=True)  # more boxes than half the batch
    check([[0, 0, 39, 49], [0, 0, 0, 0]], 2, via_all_pixels=True)  # a box larger than the recipe draws
    # a batch without boxes comes back unchanged, jitted and not
    x = jnp.full((2, 40, 50, 3), 7.0)
    none = jnp.zeros((2, 4), jnp.int32)
    erase = functools.partial(augment.erase, compact=True)
    np.testing.assert_array_equal(np.asarray(jax.jit(erase)(jax.random.key(0), x, none)), 7.0)
    np.testing.assert_array_equal(np.asarray(erase(jax.random.key(0), x, none)), 7.0)


def test_mixup_cutmix_targets_sum_to_one_and_match_the_images():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(8, 16, 16, 3)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, 8))
    kinds = set()
    for s in range(20):
        out, t = augment.mixup_cutmix(jax.random.key(s), x, y, 10, 0.8, 1.0, 1.0, 0.5, 0.1)
        np.testing.assert_allclose(np.asarray(t).sum(-1), 1.0, rtol=1e-6)
        out, t = np.asarray(out), np.asarray(t)
        xs, xr = np.asarray(x), np.asarray(x)[::-1]
        own = np.isclose(out, xs).all(-1)  # (N, H, W): pixel taken from the image itself
        if (own | np.isclose(out, xr).all(-1)).all():  # cutmix: a pasted box from the partner
            kinds.add("cutmix")
            lam = own[0].mean()
            box = ~own[0]
            if box.any():  # one rectangle, the same for every image
                ys, xs_ = np.nonzero(box)
                assert box.sum() == (np.ptp(ys) + 1) * (np.ptp(xs_) + 1)
                assert (~own == box).all()
        else:  # mixup: a convex combination
            kinds.add("mixup")
            d = xs - xr
            lam = float(((out - xr) * d).sum() / (d * d).sum())
            np.testing.assert_allclose(out, lam * xs + (1 - lam) * xr, atol=1e-5)
        ref = lam * augment.smooth_one_hot(y, 10, 0.1) + (1 - lam) * augment.smooth_one_hot(y[::-1], 10, 0.1)
        np.testing.assert_allclose(t, np.asarray(ref), atol=1e-5)
    assert kinds == {"cutmix", "mixup"}
    plain, t = augment.mixup_cutmix(jax.random.key(0), x, y, 10, 0.0, 0.0, 1.0, 0.5, 0.1)
    np.testing.assert_allclose(np.asarray(t).max(-1), 0.9 + 0.01, rtol=1e-6)


def test_missing_dataset_says_how_to_prepare(tmp_path):
    with pytest.raises(source.DatasetNotFoundError, match="prepare_imagenet.py"):
        source.open_source("imagenet_folder", "train", str(tmp_path))
    with pytest.raises(source.DatasetNotFoundError, match="not found|not prepared"):
        source.open_source("no_such_dataset_xyz", "train", str(tmp_path))


def test_digits_dataset_is_built_on_the_fly(tmp_path):
    src, info = source.open_source("lsnet_digits", "train", str(tmp_path))
    _, tinfo = source.open_source("lsnet_digits", "test", str(tmp_path))
    assert (info.num_examples, tinfo.num_examples, info.num_classes) == (1438, 359, 10)
    img = Image.open(__import__("io").BytesIO(src[0]["image"]))
    assert img.format == "JPEG" and img.size == (48, 48)
    assert math.isclose(sum(np.bincount([int(src[i]["label"]) for i in range(len(src))])), 1438)


def test_prepare_imagenet_script_builds_a_readable_dataset(tmp_path, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import prepare_imagenet

    tree = make_folder_tree(tmp_path / "tree", n_train=2, n_val=1, corrupt=False)
    out = tmp_path / "tfds"
    assert prepare_imagenet.main(["--train_dir", str(tree / "train"), "--val_dir", str(tree / "val"),
                                  "--data_dir", str(out)]) == 0
    assert "3 classes" in capsys.readouterr().out
    src, info = source.open_source("imagenet_folder", "validation", str(out))
    assert info.num_examples == 3 and info.num_classes == 3
    assert prepare_imagenet.main(["--train_dir", str(tmp_path / "nowhere"), "--data_dir", str(out)]) == 2


def test_bench_input_reports_rates_and_skipped(folder, tmp_path, capsys):
    """``scripts/bench_input.py`` on a given dataset: the figures the issue names, in the table and
    the JSON, with the two unreadable files of the tree counted as skipped."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import bench_input

    _, data_dir = folder
    out = tmp_path / "b.json"
    assert bench_input.main(["--data_dir", data_dir, "--n", "40", "--size", "64", "--workers", "1",
                             "--batch", "8", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["skipped"] == 2 and got["records"] == 28
    # the real loader through one grain worker: whole batches, the unreadable records among them skipped
    assert got["loader_workers"] == 1 and got["loader_images_per_s"] > 0 and got["loader_skipped"] > 0
    assert got["train_images_per_s_per_process"] > 0 and got["eval_images_per_s_per_process"] > 0
    assert set(got["train_stage_ms"]) == {"open + decode (reduced) + crop/resize", "flip", "RandAugment",
                                         "RandomErasing box + uint8 array"}
    assert list(got["randaugment_op_ms"]) == list(T.RAND_INCREASING_TRANSFORMS)
    assert all(ms > 0 for ms in got["randaugment_op_ms"].values())
    printed = capsys.readouterr().out
    assert "skipped as unreadable: 2" in printed and "Pillow affine ms" in printed


def test_prepare_imagenet_rebuilds_a_changed_tree_and_refuses_empty_classes(tmp_path, capsys):
    """Run again after an image was added, the dataset holds it (before: the old dataset was kept
    and "done" printed); unchanged, nothing is rebuilt; an empty class folder is refused (it would
    silently become a label) unless --allow_empty_classes."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import prepare_imagenet

    tree = make_folder_tree(tmp_path / "tree", n_train=2, n_val=1, corrupt=False)
    out = tmp_path / "tfds"
    args = ["--train_dir", str(tree / "train"), "--val_dir", str(tree / "val"), "--data_dir", str(out)]
    assert prepare_imagenet.main(args) == 0
    n = source.open_source("imagenet_folder", "train", str(out))[1].num_examples
    (tree / "train" / "c2" / "new.JPEG").write_bytes((tree / "train" / "c2" / "img_0.JPEG").read_bytes())
    capsys.readouterr()
    assert prepare_imagenet.main(args) == 0
    assert "out of date" in capsys.readouterr().out
    assert source.open_source("imagenet_folder", "train", str(out))[1].num_examples == n + 1
    assert prepare_imagenet.main(args) == 0
    assert "unchanged" in capsys.readouterr().out
    # an edit that keeps the size and modification time (cp -p, rsync -t): the default compares
    # paths, sizes and times and misses it; --verify hashes the bytes
    f = tree / "train" / "c2" / "img_0.JPEG"
    st, edited = f.stat(), bytearray(f.read_bytes())
    edited[len(edited) // 2] ^= 0x01  # a byte of the scan: same size, another image
    assert prepare_imagenet.main([*args, "--verify"]) == 0  # no content hash recorded yet: rebuilt
    assert "prepared without --verify" in capsys.readouterr().out
    assert prepare_imagenet.main([*args, "--verify"]) == 0
    assert "unchanged" in capsys.readouterr().out
    f.write_bytes(bytes(edited))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert prepare_imagenet.main(args) == 0
    assert "unchanged" in capsys.readouterr().out  # what the default cannot see (said in the README)
    assert prepare_imagenet.main([*args, "--verify"]) == 0
    assert "the contents of its train source changed" in capsys.readouterr().out

    (tree / "train" / "c3").mkdir()
    (tree / "val" / "c3").mkdir()
    assert prepare_imagenet.main(args) == 2
    err = capsys.readouterr().err
    assert "c3" in err and "--allow_empty_classes" in err and len(err.strip().splitlines()) == 1
    assert source.open_source("imagenet_folder", "train", str(out))[1].num_classes == 3  # untouched
    assert prepare_imagenet.main([*args, "--allow_empty_classes"]) == 0
    assert "kept as labels: c3" in capsys.readouterr().out
    assert source.open_source("imagenet_folder", "train", str(out))[1].num_classes == 4


def test_a_magic_bytes_corrupt_jpeg_is_left_out_by_prepare_and_survived_by_bench_input(tmp_path, capsys):
    """A file that starts like a JPEG and is junk after: prepare_imagenet reports it with its path,
    leaves it out and counts it (before: stored without a word); bench_input on a dataset that
    still holds one skips and counts it (before: a traceback)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import bench_input
    import prepare_imagenet

    tree = make_folder_tree(tmp_path / "tree", n_train=2, n_val=1, corrupt=False)
    bad = tree / "train" / "c1" / "zz_magic.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"junk" * 50)
    png = tree / "train" / "c2" / "zz_png.JPEG"  # a PNG named .JPEG decodes: kept
    Image.open(tree / "train" / "c2" / "img_0.JPEG").save(png, format="PNG")
    from lsnet_jax.data.builders import list_image_folder

    n_files = len(list_image_folder(tree / "train")[1])
    out = tmp_path / "tfds"
    capsys.readouterr()
    assert prepare_imagenet.main(["--train_dir", str(tree / "train"), "--data_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"left out {bad}" in printed and "1 files that do not decode left out" in printed
    assert source.open_source("imagenet_folder", "train", str(out))[1].num_examples == n_files - 1
    left = json.loads(next(out.rglob("left_out.json")).read_text())
    assert [r["path"] for r in left] == [str(bad)]
    assert json.loads(next(out.rglob("source.json")).read_text())["left_out"] == 1

    build_folder_dataset(tree, tmp_path / "unchecked")  # the record kept, as another tool might store it
    capsys.readouterr()
    assert bench_input.main(["--data_dir", str(tmp_path / "unchecked"), "--n", "20", "--size", "32",
                             "--json", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["skipped"] == 1
    assert bench_input.main(["--data_dir", str(tmp_path / "nothing")]) == 2
    assert "prepare_imagenet.py" in capsys.readouterr().err
