"""Detection data: a COCO-format tree prepared as MMDetection's CocoDataset reads it (its
annotation filtering, category mapping and bad input: unknown category ids, degenerate boxes,
images missing or corrupt, reported with ids/paths, left out, counted), the ground truth handed
back to COCOeval, the train filter, and the train/test transforms' boxes against hand computation."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lsnet_jax.data import source
from lsnet_jax.data.detection import DetTestTransform, DetTrainTransform, ground_truth, objects, train_indices
from lsnet_jax.inference.coco_eval import evaluate_boxes, results_json

ROOT = Path(__file__).resolve().parents[1]


def _jpeg(h: int, w: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3)).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _tree(root: Path) -> Path:
    """A COCO 2017 layout: train with 6 images (one without annotations, one of 20 px, one corrupt,
    one missing on disk, one crowd-only), val with 3; categories 1, 3 and 7 (labels 0, 1, 2)."""
    cats = [{"id": 7, "name": "g"}, {"id": 1, "name": "a"}, {"id": 3, "name": "c"}]
    for split, folder in (("train", "train2017"), ("val", "val2017")):
        (root / folder).mkdir(parents=True)
    (root / "annotations").mkdir()
    train_images = [(1, 60, 80), (2, 64, 48), (3, 20, 40), (4, 50, 50), (5, 40, 60), (6, 48, 64)]
    for i, h, w in train_images:
        if i != 5:  # 5: missing on disk
            (root / "train2017" / f"{i}.jpg").write_bytes(_jpeg(h, w, i) if i != 4 else b"\xff\xd8\xff\xe0junk")
    anns = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 5, 30, 20], "area": 600, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [40, 30, 30, 25], "area": 750, "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 99, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},  # unknown
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0.5, 10], "area": 5, "iscrowd": 0},  # w < 1
        {"id": 5, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "area": 0, "iscrowd": 0},  # area 0
        {"id": 6, "image_id": 1, "category_id": 1, "bbox": [90, 70, 10, 10], "area": 100, "iscrowd": 0},  # outside
        {"id": 7, "image_id": 3, "category_id": 1, "bbox": [1, 1, 10, 10], "area": 100, "iscrowd": 0},
        {"id": 8, "image_id": 4, "category_id": 1, "bbox": [1, 1, 10, 10], "area": 100, "iscrowd": 0},
        {"id": 9, "image_id": 6, "category_id": 3, "bbox": [0, 0, 64, 48], "area": 3072, "iscrowd": 1},
    ]
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(
        {"images": [{"id": i, "file_name": f"{i}.jpg", "height": h, "width": w} for i, h, w in train_images],
         "annotations": anns, "categories": cats}))
    val_images = [(11, 64, 96), (12, 96, 64), (13, 48, 48)]
    for i, h, w in val_images:
        (root / "val2017" / f"{i}.jpg").write_bytes(_jpeg(h, w, i))
    vanns = [{"id": 21, "image_id": 11, "category_id": 1, "bbox": [4, 4, 40, 30], "area": 1200, "iscrowd": 0},
             {"id": 22, "image_id": 12, "category_id": 7, "bbox": [10, 20, 30, 50], "area": 1500, "iscrowd": 0},
             {"id": 23, "image_id": 12, "category_id": 3, "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 1}]
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(
        {"images": [{"id": i, "file_name": f"{i}.jpg", "height": h, "width": w} for i, h, w in val_images],
         "annotations": vanns, "categories": cats}))
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("coco")
    root = _tree(tmp / "COCO")
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "prepare_coco.py"), "--root", str(root),
                          "--data_dir", str(tmp / "tfds")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return tmp, out.stdout


def test_prepare_reports_and_leaves_out_bad_input(prepared):
    tmp, stdout = prepared
    assert "annotation 3 of image 1: category id 99 is not among the file's categories" in stdout
    assert "5.jpg: image 5 is not on disk" in stdout
    assert "4.jpg" in stdout and "3 annotations or images left out" in stdout
    left = json.loads(next((tmp / "tfds").rglob("left_out.json")).read_text())
    assert len(left) == 3
    src, info, cats = source.open_det_source("coco_detection", "train", str(tmp / "tfds"))
    assert [c["id"] for c in cats] == [1, 3, 7] and info.num_classes == 3 and info.class_names == ("a", "c", "g")
    by_id = {objects(src[i])["image_id"]: objects(src[i]) for i in range(len(src))}
    assert sorted(by_id) == [1, 2, 3, 6]  # 4 corrupt, 5 missing
    one = by_id[1]
    assert one["boxes"] == [[10, 5, 40, 25], [40, 30, 70, 55]] and one["labels"] == [1, 2]  # ids 3 -> 1, 7 -> 2
    assert sorted(a["id"] for a in one["annotations"]) == [1, 2, 4, 5, 6]  # for COCOeval, as the file holds them
    assert by_id[6]["boxes"] == [] and by_id[6]["has_annotation"]  # crowd only: trains with no box
    assert not by_id[2]["has_annotation"]
    idx, sizes = train_indices(src)
    kept = [objects(src[i])["image_id"] for i in idx]
    assert sizes == [(objects(src[i])["height"], objects(src[i])["width"]) for i in idx]
    assert sorted(kept) == [1, 6]  # 2: no annotation (filter_empty_gt); 3: shorter side 20 < 32
    again = subprocess.run([sys.executable, str(ROOT / "scripts" / "prepare_coco.py"), "--root", str(tmp / "COCO"),
                            "--data_dir", str(tmp / "tfds")], capture_output=True, text=True)
    assert again.returncode == 0 and "unchanged" in again.stdout


def test_ground_truth_feeds_cocoeval(prepared):
    """The val ground truth from the records: its own boxes as detections score AP 1, the crowd
    box (which COCOeval ignores) included in the ground truth and detected by nothing."""
    tmp, _ = prepared
    src, _, cats = source.open_det_source("coco_detection", "validation", str(tmp / "tfds"))
    gt = ground_truth(src, cats)
    assert sorted(a["id"] for a in gt["annotations"]) == [21, 22, 23]
    dets = []
    for i in range(len(src)):
        obj = objects(src[i])
        dets.append((obj["image_id"], {"boxes": np.asarray(obj["boxes"]).reshape(-1, 4), "scores": np.ones(len(obj["boxes"])),
                                        "labels": np.asarray(obj["labels"], int)}))
    m = evaluate_boxes(gt, results_json(dets, [c["id"] for c in cats]), [c["id"] for c in cats])
    assert m["stats"]["AP"] == pytest.approx(1.0) and m["stats"]["AP50"] == pytest.approx(1.0)


def test_transforms_resize_flip_and_pad_boxes(prepared):
    """A 60x80 image resized to fit (1333, 800): factor min(1333/80, 800/60) = 13.33 -> 800x1067
    (mmcv's rounding), boxes times (1067/80, 800/60) and clipped; flipped: x1' = W - x2."""
    tmp, _ = prepared
    src, _, _ = source.open_det_source("coco_detection", "train", str(tmp / "tfds"))
    rec = next(src[i] for i in range(len(src)) if objects(src[i])["image_id"] == 1)
    shapes = ((1088, 1088), (1344, 1344))
    plain = DetTrainTransform((1333, 800), 0.0, shapes, 4)(rec, np.random.default_rng(0))
    assert tuple(plain["img_shape"]) == (800, 1067) and tuple(plain["pad_shape"]) == (800, 1088)
    sx, sy = np.float32(1067 / 80), np.float32(800 / 60)
    want = np.asarray([[10, 5, 40, 25], [40, 30, 70, 55]], np.float32) * np.asarray([sx, sy, sx, sy], np.float32)
    want[:, 0::2] = np.clip(want[:, 0::2], 0, 1067)
    np.testing.assert_allclose(plain["boxes"][:2], want, rtol=1e-6)
    assert plain["box_valid"].tolist() == [True, True, False, False] and plain["labels"][:2].tolist() == [1, 2]
    assert plain["image"].shape == (1088, 1088, 3) and not plain["image"][800:].any() and not plain["image"][:, 1067:].any()
    flipped = DetTrainTransform((1333, 800), 1.0, shapes, 4)(rec, np.random.default_rng(0))
    np.testing.assert_allclose(flipped["boxes"][:2], np.stack([1067 - want[:, 2], want[:, 1], 1067 - want[:, 0],
                                                               want[:, 3]], 1), rtol=1e-6)
    assert np.array_equal(flipped["image"][:800, :1067], plain["image"][:800, :1067][:, ::-1])
    test = DetTestTransform((1333, 800), shapes)(rec)
    np.testing.assert_allclose(test["scale_factor"], [sx, sy, sx, sy])
    assert int(test["image_id"]) == 1 and np.array_equal(test["image"], plain["image"])
    own = DetTestTransform((1333, 800))(rec)  # the official test: its own multiples of 32
    assert own["image"].shape == (800, 1088, 3) and np.array_equal(own["image"], plain["image"][:800, :1088])
    with pytest.raises(ValueError, match="fits none of the pad shapes"):
        DetTestTransform((1333, 800), ((800, 800),))(rec)


def test_lsnet_eval_detection_and_a_head_of_other_classes(prepared, tmp_path, capsys):
    """``lsnet-eval --task detection`` over the prepared split (a shallow random detector: COCOeval
    runs, the json holds mmdet's keys and every image); weights of another class count are refused."""
    from lsnet_jax import create_model
    from lsnet_jax.checkpoints.state import flat_state
    from lsnet_jax.checkpoints.weights import save_weights
    from lsnet_jax.cli import evaluate

    tmp, _ = prepared
    for classes in (3, 10):
        m = create_model("lsnet_t_retinanet", num_classes=classes, depth=(0, 1, 1, 1))
        save_weights(tmp_path / f"w{classes}", flat_state(m), {"model": "lsnet_t_retinanet", "num_classes": classes,
                                                               "task": "detection", "model_config": {"depth": [0, 1, 1, 1]}})
    args = ["--data", "coco_detection", "--split", "validation", "--data_dir", str(tmp / "tfds"), "--test-scale",
            "128", "96", "--pad", "128"]
    assert evaluate.main(["--weights", str(tmp_path / "w3"), *args, "--json", str(tmp_path / "m.json")]) == 0
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["images"] == 3 and report["skipped"] == 0 and report["task"] == "detection"
    assert {"bbox_mAP", "bbox_mAP_50", "bbox_mAP_copypaste", "stats"} <= set(report)
    assert "bbox_mAP_copypaste" in capsys.readouterr().out
    assert evaluate.main(["--weights", str(tmp_path / "w10"), *args]) == 2
    assert "detects 10 classes but coco_detection/validation has 3 categories" in capsys.readouterr().err
