"""Mask R-CNN as a task of the one loop, on the digit scenes: a short run and a preempted and
resumed twin give the same losses step for step (the samplers are keyed by the run's key and the
step), log the official Mask R-CNN keys, and evaluate boxes and masks; the mask-carrying train
pipeline against pycocotools' own decode."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest

KEYS = ("loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "acc", "loss_bbox", "loss_mask")


def digits_config(data_dir, **over):
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("maskrcnn_digits", root / "configs" / "maskrcnn_digits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.data.data_dir = str(data_dir)
    c.data.max_train_examples = 8
    c.data.max_eval_examples = 3
    c.depth = (0, 1, 1, 1)  # the layers are checked in test_maskrcnn_model: here the task
    c.neck_channels, c.fc_channels = 16, 32
    c.aug.scale = c.aug.test_scale = (256, 64)  # the 128x128 scenes at 64x64
    c.aug.pad_shapes = ((64, 64),)
    c.train_cfg.proposal_nms_pre, c.train_cfg.proposal_max_per_img, c.train_cfg.rcnn_num = 200, 50, 32
    c.test.rpn_nms_pre, c.test.rpn_max_per_img, c.test.max_per_img = 200, 50, 20
    c.batch_size, c.group_size, c.epochs, c.warmup_iters = 4, 2, 2, 2
    c.eval_batch_size = 3
    c.eval_every_epochs = 2
    c.checkpoint_every_steps = 1
    c.log_every_steps = 2
    c.async_checkpoint = False
    c.tensorboard = False
    for k, v in over.items():
        c[k] = v
    return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted 2-epoch run (2 iterations per epoch, 2 devices, 2 loss groups), and one
    preempted after its first iteration and resumed."""
    from data_utils import preempted_run

    from lsnet_jax.data.builders import LsnetDetDigits
    from lsnet_jax.tasks import train_and_evaluate

    tmp = tmp_path_factory.mktemp("maskrcnn")
    LsnetDetDigits(data_dir=str(tmp / "tfds"), train_scenes=16).download_and_prepare(
        file_format="array_record")
    devices = jax.devices()[:2]
    full = train_and_evaluate(digits_config(tmp / "tfds"), tmp / "full", devices)
    _, stopped = preempted_run(digits_config(tmp / "tfds"), tmp / "resumed", devices)
    assert 1 <= stopped < 4, stopped
    resumed = train_and_evaluate(digits_config(tmp / "tfds"), tmp / "resumed", devices)
    return tmp, full, resumed


def test_training_resumes_exactly_and_logs_the_official_keys(runs):
    from lsnet_jax.train.reporting import read_jsonl

    tmp, full, resumed = runs
    a, b = read_jsonl(tmp / "full" / "steps.jsonl"), read_jsonl(tmp / "resumed" / "steps.jsonl")
    assert [r["step"] for r in a] == list(range(1, 5)) == [r["step"] for r in b]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    for r in a:
        assert all(np.isfinite(r[k]) for k in KEYS) and r["loss"] == pytest.approx(
            sum(r[k] for k in KEYS if k != "acc"), rel=1e-5)
        assert r["loss_rpn_cls"] > 0 and r["loss_cls"] > 0 and r["loss_mask"] > 0 and 0 <= r["acc"] <= 100
    log = read_jsonl(tmp / "full" / "log.txt")
    assert log == read_jsonl(tmp / "resumed" / "log.txt")
    train = [r for r in log if r["mode"] == "train"]
    assert [(r["epoch"], r["iter"]) for r in train] == [(1, 2), (2, 2)] and all(set(KEYS) <= set(r) for r in train)
    val = [r for r in log if r["mode"] == "val"][-1]
    for t in ("bbox", "segm"):
        assert {f"{t}_mAP", f"{t}_mAP_50", f"{t}_mAP_copypaste"} <= set(val)
    assert full["segm_mAP_copypaste"] == resumed["segm_mAP_copypaste"]
    assert (tmp / "full" / "curves.png").stat().st_size > 0


def test_train_pipeline_carries_each_boxes_mask(runs):
    """DetTrainTransform(with_masks): every kept box's mask, resized nearest with the image, inside
    its box; the masks of a record equal pycocotools' decode of its RLEs at the original size."""
    from pycocotools import mask as mask_utils

    from lsnet_jax.data import source
    from lsnet_jax.data.detection import DetTrainTransform, objects

    tmp, *_ = runs
    src, _, _ = source.open_det_source("lsnet_det_digits", "train", str(tmp / "tfds"))
    tf = DetTrainTransform((512, 128), 0.0, ((128, 128),), 4, with_masks=True)
    for i in range(4):
        rec = src[i]
        out = tf(rec, np.random.default_rng(0))
        obj = objects(rec)
        k = int(out["box_valid"].sum())
        assert out["masks"].shape == (4, 128, 128) and not out["masks"][k:].any()
        want = mask_utils.decode([dict(r, counts=r["counts"].encode()) for r in obj["masks"]]).transpose(2, 0, 1)
        assert np.array_equal(out["masks"][:k], want)  # 128x128 scenes: the resize keeps them
        for m, (x1, y1, x2, y2) in zip(out["masks"][:k], out["boxes"][:k]):
            ys, xs = np.nonzero(m)
            assert xs.min() >= x1 - 1 and xs.max() < x2 + 1 and ys.min() >= y1 - 1 and ys.max() < y2 + 1
