"""COCOeval as MMDetection runs it, on known detections: perfect ones score 100 AP; a set with half
the boxes shifted (IoU 2/3) and ranked below the exact ones has an AP computed here by hand."""

from __future__ import annotations

import numpy as np
import pytest

from lsnet_jax.inference.coco_eval import evaluate_boxes, results_json


def _gt(n: int = 10) -> dict:
    images = [{"id": 7, "width": 2000, "height": 300, "file_name": "a.png"}, {"id": 9, "width": 64, "height": 64,
                                                                            "file_name": "b.png"}]
    anns = [{"id": i + 1, "image_id": 7, "category_id": 3, "bbox": [150.0 * i, 50.0, 100.0, 100.0], "area": 10000.0,
             "iscrowd": 0} for i in range(n)]
    return {"images": images, "annotations": anns, "categories": [{"id": 3, "name": "c"}, {"id": 5, "name": "d"}]}


def _boxes(shift: np.ndarray) -> np.ndarray:
    x = 150.0 * np.arange(len(shift)) + shift
    return np.stack([x, np.full_like(x, 50.0), x + 100, np.full_like(x, 150.0)], 1)


def test_perfect_detections_score_100_and_keys_are_mmdetections():
    det = {"boxes": _boxes(np.zeros(10)), "scores": np.linspace(0.9, 0.5, 10), "labels": np.zeros(10, int)}
    m = evaluate_boxes(_gt(), results_json([(7, det)], [3, 5]), category_ids=[3, 5])
    assert m["stats"]["AP"] == pytest.approx(1.0) and m["stats"]["AP50"] == pytest.approx(1.0)
    assert m["stats"]["APs"] == -1 and m["stats"]["APl"] == pytest.approx(1.0)  # all large: 100x100 > 96^2
    assert m["bbox_mAP"] == 1.0 and m["bbox_mAP_copypaste"] == "1.0000 1.0000 1.0000 -1.0000 -1.0000 1.0000"
    assert set(m) >= {"bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "bbox_mAP_s", "bbox_mAP_m", "bbox_mAP_l"}


def test_shifted_boxes_give_the_hand_computed_ap():
    """Five exact boxes (scores 0.9-0.8), five shifted by 20 px (IoU 80/120 = 2/3, scores below):
    at IoU thresholds 0.50-0.65 every box matches (AP 1); at 0.70-0.95 only the exact ones, ranked
    first: precision 1 up to recall 0.5, so 51 of COCO's 101 recall points. AP = (4 + 6 * 51/101) / 10."""
    shift = np.r_[np.zeros(5), np.full(5, 20.0)]
    det = {"boxes": _boxes(shift), "scores": np.r_[np.linspace(0.9, 0.8, 5), np.linspace(0.7, 0.6, 5)],
           "labels": np.zeros(10, int)}
    m = evaluate_boxes(_gt(), results_json([(7, det)], [3, 5]), category_ids=[3, 5])
    assert m["stats"]["AP"] == pytest.approx((4 + 6 * 51 / 101) / 10, abs=1e-9)
    assert m["stats"]["AP50"] == pytest.approx(1.0) and m["stats"]["AP75"] == pytest.approx(51 / 101, abs=1e-9)
    assert m["bbox_mAP"] == round((4 + 6 * 51 / 101) / 10, 4)
    assert m["stats"]["AR@100"] == pytest.approx((4 * 1.0 + 6 * 0.5) / 10)


def test_no_detections_is_zero_not_an_error():
    m = evaluate_boxes(_gt(), [], category_ids=[3, 5])
    assert m["bbox_mAP"] == 0.0 and m["stats"]["AP50"] == 0.0


def test_segm_on_known_masks_gives_the_hand_computed_ap():
    """Ten ground-truth instances whose masks (polygons, as COCO's files hold them) fill their
    100x100 boxes; the detections' boxes are exact (bbox AP 100) and their masks cut to the left
    80 columns (mask IoU 0.8): the masks match at thresholds 0.50-0.80 only, so segm AP = 7/10,
    AP75 1. The masks go through ``results_json`` as RLEs of boolean arrays."""
    gt = _gt()
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        a["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    boxes = _boxes(np.zeros(10))
    masks = np.zeros((10, 300, 2000), bool)
    for m, (x1, y1, x2, y2) in zip(masks, boxes.astype(int)):
        m[y1:y2, x1:x1 + 80] = True
    det = {"boxes": boxes, "scores": np.linspace(0.9, 0.5, 10), "labels": np.zeros(10, int), "masks": masks}
    results = results_json([(7, det)], [3, 5])
    assert all(set(r["segmentation"]) == {"size", "counts"} and r["segmentation"]["size"] == [300, 2000]
               for r in results)
    box = evaluate_boxes(gt, results, category_ids=[3, 5])
    segm = evaluate_boxes(gt, results, category_ids=[3, 5], iou_type="segm")
    assert box["bbox_mAP"] == 1.0
    assert segm["stats"]["AP"] == pytest.approx(0.7) and segm["stats"]["AP75"] == pytest.approx(1.0)
    assert segm["segm_mAP"] == 0.7 and segm["segm_mAP_copypaste"].startswith("0.7000 1.0000 1.0000")
