"""Static shapes for detection: the batch shape of an image, batches drawn by shape group (resumable,
one shape per batch, sliced per process), evaluation batched by shape, and the padding report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lsnet_jax.data import pipeline, source
from lsnet_jax.data.detection import batch_shape, padding_stats, record_shape, shape_groups
from lsnet_jax.data.sampler import GroupPositions, group_epoch_records, group_steps
from lsnet_jax.inference.detection_eval import batches

ROOT = Path(__file__).resolve().parents[1]
COCO_SHAPES = ((800, 1088), (800, 1216), (800, 1344), (1088, 800), (1216, 800), (1344, 800))


def test_batch_shape_of_coco_sizes():
    """The spec's examples: 480x640 -> 800x1067 (padded 800x1088), 427x640 -> 800x1199 (800x1216);
    360x640 -> 750x1333 (768x1344: held by 800x1344); a square 640x640 -> 800x800 ties 800x1088 and
    1088x800 by area and goes with its aspect group (w/h > 1 is false: portrait)."""
    assert record_shape(480, 640, (1333, 800), COCO_SHAPES) == (800, 1088)
    assert record_shape(427, 640, (1333, 800), COCO_SHAPES) == (800, 1216)
    assert record_shape(360, 640, (1333, 800), COCO_SHAPES) == (800, 1344)
    assert record_shape(640, 427, (1333, 800), COCO_SHAPES) == (1216, 800)
    assert record_shape(640, 640, (1333, 800), COCO_SHAPES) == (1088, 800)
    assert record_shape(640, 641, (1333, 800), COCO_SHAPES) == (800, 1088)
    assert record_shape(360, 640, (1333, 800)) == (768, 1344)  # no shapes: its own multiples of 32
    with pytest.raises(ValueError, match="fits none of the pad shapes"):
        batch_shape(800, 1300, ((800, 1216),))


def test_group_batches_hold_one_group_and_cover_each_epoch():
    groups = np.repeat([0, 1, 2], [37, 5, 64])  # 3 + 1 + 4 batches of 16
    b = 16
    assert group_steps(groups, b) == 8
    seen = []
    for epoch in range(3):
        recs = group_epoch_records(7, epoch, groups, b)
        assert recs.shape == (8, b)
        assert all(len(set(groups[r])) == 1 for r in recs)  # one shape per batch
        count = np.bincount(recs.ravel(), minlength=len(groups))
        assert count.min() >= 1  # every record once per epoch, a group's shortfall filled by repeats
        for g, n in ((0, 37), (1, 5), (2, 64)):
            assert count[groups == g].sum() == -(-n // b) * b
        np.testing.assert_array_equal(recs, group_epoch_records(7, epoch, groups, b))
        seen.append(recs)
    assert not np.array_equal(seen[0], seen[1])


def test_group_positions_slice_the_global_batch_per_process():
    groups = np.repeat([0, 1], [20, 13])
    one = GroupPositions(groups, 8, 8, 0, 3)
    halves = [GroupPositions(groups, 8, 4, p, 3) for p in (0, 1)]
    for step in range(2 * one.steps_per_epoch()):
        want = [one(step * 8 + j) for j in range(8)]
        got = [halves[j // 4](step * 4 + j % 4) for j in range(8)]
        assert got == want


class _Sizes:
    """Records of two sizes; the transform pads each to its batch shape."""

    def __init__(self, sizes):
        self.sizes = sizes

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, i):
        return {"i": i, "size": self.sizes[i]}


def _pad_tf(record, rng):
    h, w = batch_shape(*record["size"], ((32, 64), (64, 32)))
    return {"image": np.full((h, w, 1), record["i"], np.int32), "noise": np.asarray(rng.random(), np.float32)}


def test_loader_batches_by_shape_and_resumes():
    sizes = [(20, 50)] * 11 + [(50, 20)] * 6
    src = _Sizes(sizes)
    groups, used = shape_groups(sizes, (64, 64), ((32, 64), (64, 32)))
    assert used == [(32, 64), (64, 32)]
    loader = pipeline.seg_train_loader(src, source.SourceInfo(len(src), 1), _pad_tf, 4, 0, 10, groups=groups)
    assert loader.steps_per_epoch == 3 + 2
    it = loader.iterator()
    first = [next(it) for _ in range(7)]
    for b in first:
        ids = b["image"][:, 0, 0, 0]
        assert {sizes[i] for i in ids} in ({(20, 50)}, {(50, 20)})
        assert b["image"].shape[1:3] == ((32, 64) if sizes[ids[0]] == (20, 50) else (64, 32))
    state = it.get_state()
    again = loader.iterator()
    again.set_state({"batches": 4})
    for b, want in zip([next(again) for _ in range(3)], first[4:]):
        np.testing.assert_array_equal(b["image"], want["image"])
        np.testing.assert_array_equal(b["noise"], want["noise"])
    assert state == {"batches": 7}


def test_eval_batches_keep_one_shape_each():
    def sample(i, shape):
        return {"image": np.zeros(shape + (3,), np.uint8), "img_shape": np.asarray(shape), "scale_factor": np.ones(4),
                "ori_shape": np.asarray(shape), "image_id": np.asarray(i)}

    shapes = [(32, 64), (64, 32), (32, 64), (32, 64), (64, 32)]
    samples = [sample(i, s) for i, s in enumerate(shapes)] + [{"error": "bad", "index": 5}]
    out = list(batches(samples, 2))
    real = [(b["image_id"][:n].tolist(), b["image"].shape[1:3]) for b, n in out if b is not None]
    assert sorted(real) == [([0, 2], (32, 64)), ([1, 4], (64, 32)), ([3], (32, 64))]
    assert sum(b is None for b, _ in out) == 1


def test_padding_report_by_hand(tmp_path):
    """Two landscape images (480x640 -> 800x1067, 427x640 -> 800x1199) make one official GPU batch
    padded to 800x1216 each; here they pad to 800x1088 and 800x1216; a 640x480 portrait one alone."""
    st = padding_stats([(480, 640), (427, 640), (640, 480)], (1333, 800), COCO_SHAPES)
    assert st["valid"] == 800 * 1067 + 800 * 1199 + 1067 * 800
    assert st["own"] == 800 * 1088 + 800 * 1216 + 1088 * 800 == st["ours"]
    assert st["official"] == 2 * 800 * 1216 + 1088 * 800
    assert st["programs"] == [((800, 1088), 1), ((800, 1216), 1), ((1088, 800), 1)]
    ann = {"images": [{"id": i, "height": h, "width": w} for i, (h, w) in enumerate([(480, 640), (427, 640), (640, 480),
                                                                                     (20, 640)])],
           "annotations": [{"image_id": i} for i in range(4)]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(ann))
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "det_shapes.py"), str(path), "--val", str(path)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "3 training images" in out.stdout  # the 20-pixel one is left out (min_size 32)
    assert "train programs: 3" in out.stdout and "eval programs: 4" in out.stdout
    assert f"{(800 * 1088 + 800 * 1216 + 1088 * 800) / (2 * 800 * 1216 + 1088 * 800):.3f}" in out.stdout
