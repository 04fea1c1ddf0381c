"""RetinaNet's training targets and losses against a numpy restatement of MMDetection 2.28.2
(loops in the order mmdet runs them): the assigner's four steps (on float32 IoUs, as mmdet: its
low-quality step tests equality), the valid-anchor flags of a padded batch, the focal and L1
losses (float64) and their avg_factor per official GPU."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lsnet_jax.inference.detection import level_anchors
from lsnet_jax.train import det_steps

NUM_CLASSES = 6


def _iou32(a, b):
    """mmdet's bbox_overlaps, pair by pair, in float32 as mmdet computes it: the assigner's
    low-quality step compares IoUs for EQUALITY with each gt's maximum, so its ties (mirror-image
    anchors) are float32 ties, which float64 would break."""
    f = np.float32
    a, b = np.asarray(a, f), np.asarray(b, f)
    out = np.zeros((len(a), len(b)), f)
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            w = max(f(0), min(p[2], q[2]) - max(p[0], q[0]))
            h = max(f(0), min(p[3], q[3]) - max(p[1], q[1]))
            inter = w * h
            union = max((p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter, f(1e-6))
            out[i, j] = inter / union
    return out


def _assign64(anchors, gts, pos=0.5, neg=0.4, min_pos=0.0):
    """MaxIoUAssigner.assign_wrt_overlaps over the given (valid) anchors, step by step."""
    assigned = -np.ones(len(anchors), int)
    if len(gts) == 0:
        return np.zeros(len(anchors), int)
    ov = _iou32(gts, anchors)
    max_ov, argmax = ov.max(0), ov.argmax(0)
    assigned[(max_ov >= 0) & (max_ov < neg)] = 0
    assigned[max_ov >= pos] = argmax[max_ov >= pos] + 1
    gt_max = ov.max(1)
    for i in range(len(gts)):
        if gt_max[i] >= min_pos:
            assigned[ov[i] == gt_max[i]] = i + 1
    return assigned


def _encode64(a, g):
    px, py, pw, ph = (a[0] + a[2]) / 2, (a[1] + a[3]) / 2, a[2] - a[0], a[3] - a[1]
    gx, gy, gw, gh = (g[0] + g[2]) / 2, (g[1] + g[3]) / 2, g[2] - g[0], g[3] - g[1]
    return np.array([(gx - px) / pw, (gy - py) / ph, math.log(gw / pw), math.log(gh / ph)])


def _scene(rng, pad_shape, n_gt):
    h, w = pad_shape
    xy = rng.uniform(0, [w * 0.8, h * 0.8], (n_gt, 2))
    wh = rng.uniform(12, 70, (n_gt, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], 1)
    return boxes, rng.integers(0, NUM_CLASSES, n_gt)


LEVELS = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]  # a 128x128 padded batch
STRIDES = (8, 16, 32, 64, 128)


@pytest.fixture(scope="module")
def batch():
    """Four images of one padded 128x128 batch: own padded sizes 128x128, 96x128, 128x64 and 64x64
    (the anchors beyond them are invalid); 5, 3, 0 (all background) and 7 gts, padded to 8; the
    gt list of one image holds a duplicate box (a tie between gts)."""
    rng = np.random.default_rng(0)
    pads = [(128, 128), (96, 128), (128, 64), (64, 64)]
    counts = [5, 3, 0, 7]
    boxes = np.zeros((4, 8, 4), np.float32)
    labels = np.zeros((4, 8), np.int32)
    valid = np.zeros((4, 8), bool)
    for i, (p, c) in enumerate(zip(pads, counts)):
        b, lab = _scene(rng, p, c)
        if i == 3:
            b[4] = b[1]  # two gts with one box: the later one wins the anchors they share
        boxes[i, :c], labels[i, :c], valid[i, :c] = b, lab, True
    cls = [rng.normal(-3, 1.5, (4, h, w, 9 * NUM_CLASSES)).astype(np.float32) for h, w in LEVELS]
    reg = [rng.normal(0, 0.4, (4, h, w, 36)).astype(np.float32) for h, w in LEVELS]
    return dict(boxes=boxes, labels=labels, box_valid=valid, pad_shape=np.asarray(pads, np.int32)), cls, reg


def _valid64(pad):
    flags = []
    for (h, w), s in zip(LEVELS, STRIDES):
        for y in range(h):
            for x in range(w):
                flags += [y < math.ceil(pad[0] / s) and x < math.ceil(pad[1] / s)] * 9
    return np.asarray(flags)


def test_assigner_equals_mmdetection(batch):
    b, _, _ = batch
    anchors = np.concatenate([level_anchors(h, w, s) for (h, w), s in zip(LEVELS, STRIDES)])
    for i in range(4):
        flags = _valid64(b["pad_shape"][i])
        got_flags = det_steps.anchor_valid_flags(LEVELS, STRIDES, jnp.asarray(b["pad_shape"][i], jnp.float32))
        assert np.array_equal(np.asarray(got_flags), flags)
        gts = b["boxes"][i][b["box_valid"][i]].astype(np.float64)
        want = -np.ones(len(anchors), int)
        want[flags] = _assign64(anchors[flags].astype(np.float64), gts)
        got = np.asarray(det_steps.assign(jnp.asarray(anchors), jnp.asarray(flags), jnp.asarray(b["boxes"][i]),
                                          jnp.asarray(b["box_valid"][i])))
        assert np.array_equal(got, want), i
        if len(gts):
            assert (got > 0).sum() >= len(gts) and (got == 0).sum() > 0 and (got == -1).sum() > 0
        else:
            assert (got[flags] == 0).all()
    dup = np.asarray(det_steps.assign(jnp.asarray(anchors), jnp.asarray(_valid64(b["pad_shape"][3])),
                                      jnp.asarray(b["boxes"][3]), jnp.asarray(b["box_valid"][3])))
    assert (dup == 5).sum() > 0 and (dup == 2).sum() == 0  # gt 4 (index 5) overwrote gt 1's anchors


def _losses64(b, cls, reg, group):
    anchors = np.concatenate([level_anchors(h, w, s) for (h, w), s in zip(LEVELS, STRIDES)]).astype(np.float64)
    n = len(b["boxes"])
    lc, lb, npos = np.zeros(n), np.zeros(n), np.zeros(n)
    for i in range(n):
        flags = _valid64(b["pad_shape"][i])
        gts = b["boxes"][i][b["box_valid"][i]].astype(np.float64)
        labs = b["labels"][i][b["box_valid"][i]]
        assigned = -np.ones(len(anchors), int)
        assigned[flags] = _assign64(anchors[flags], gts)
        logits = np.concatenate([c[i].reshape(-1, NUM_CLASSES) for c in cls]).astype(np.float64)
        deltas = np.concatenate([r[i].reshape(-1, 4) for r in reg]).astype(np.float64)
        for a in range(len(anchors)):
            if assigned[a] < 0:
                continue
            t = np.zeros(NUM_CLASSES)
            if assigned[a] > 0:
                t[labs[assigned[a] - 1]] = 1
                lb[i] += np.abs(deltas[a] - _encode64(anchors[a], gts[assigned[a] - 1])).sum()
                npos[i] += 1
            x = logits[a]
            p = 1 / (1 + np.exp(-x))
            pt = (1 - p) * t + p * (1 - t)
            w = (0.25 * t + 0.75 * (1 - t)) * pt ** 2
            bce = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
            lc[i] += (bce * w).sum()
    eps = float(np.finfo(np.float32).eps)
    avg = np.maximum(npos, 1).reshape(-1, group).sum(1) + eps
    return np.mean(lc.reshape(-1, group).sum(1) / avg), np.mean(lb.reshape(-1, group).sum(1) / avg), npos.sum()


@pytest.mark.parametrize("group", [2, 4])
def test_losses_equal_mmdetection(batch, group):
    """Focal loss over every (valid anchor, class) pair, L1 over the positives, each over the
    group's avg_factor + eps, averaged over groups: 1e-5 relative of the float64 restatement."""
    b, cls, reg = batch
    got = jax.jit(lambda c, r, bb: det_steps.retina_loss(c, r, bb, NUM_CLASSES, det_steps.LossConfig(group_size=group)))(
        tuple(map(jnp.asarray, cls)), tuple(map(jnp.asarray, reg)), {k: jnp.asarray(v) for k, v in b.items()})
    want_cls, want_bbox, want_pos = _losses64(b, cls, reg, group)
    assert int(got["num_pos"]) == want_pos > 0
    assert abs(float(got["loss_cls"]) - want_cls) <= 1e-5 * want_cls
    assert abs(float(got["loss_bbox"]) - want_bbox) <= 1e-5 * want_bbox
    assert float(got["loss"]) == pytest.approx(want_cls + want_bbox, rel=1e-5)


# ----- the detection task of the one loop, on the digit scenes -----

def digits_config(data_dir, **over):
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("det_digits", root / "configs" / "det_digits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.data.data_dir = str(data_dir)
    c.data.max_train_examples = 16
    c.data.max_eval_examples = 10
    c.depth = (0, 1, 1, 1)  # the backbone's layers are checked elsewhere: here the detection task
    c.neck_channels = c.feat_channels = 32  # so is the head at the published widths (test_detection_model)
    c.stacked_convs = 2
    c.aug.scale = c.aug.test_scale = (256, 64)  # the 128x128 scenes at 64x64
    c.aug.pad_shapes = ((64, 64),)
    c.batch_size, c.group_size, c.epochs, c.warmup_iters = 4, 2, 2, 2
    c.eval_batch_size = 10
    c.eval_every_epochs = 2  # one evaluation, at the end
    c.checkpoint_every_steps = 2
    c.log_every_steps = 2
    c.async_checkpoint = False
    c.tensorboard = False
    for k, v in over.items():
        c[k] = v
    return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted 2-epoch run (4 iterations per epoch, 2 devices, 2 loss groups), and one
    preempted (SIGTERM) after its first logged iteration and resumed."""
    from data_utils import preempted_run

    from lsnet_jax.tasks import train_and_evaluate

    from lsnet_jax.data.builders import LsnetDetDigits

    tmp = tmp_path_factory.mktemp("det")
    # the real builder with 48 train scenes (the run reads 16): the same code as the 3,600, a tenth of the build
    LsnetDetDigits(data_dir=str(tmp / "tfds"), train_scenes=48).download_and_prepare(file_format="array_record")
    devices = jax.devices()[:2]
    full = train_and_evaluate(digits_config(tmp / "tfds"), tmp / "full", devices)
    _, stopped = preempted_run(digits_config(tmp / "tfds"), tmp / "resumed", devices)
    assert 1 <= stopped < 8 and (tmp / "resumed" / "checkpoints" / str(stopped)).is_dir(), stopped
    resumed = train_and_evaluate(digits_config(tmp / "tfds"), tmp / "resumed", devices)
    return tmp, full, resumed


def test_training_resumes_exactly_and_logs_mmdetections_keys(runs):
    from lsnet_jax.train.reporting import read_jsonl

    tmp, full, resumed = runs
    a, b = read_jsonl(tmp / "full" / "steps.jsonl"), read_jsonl(tmp / "resumed" / "steps.jsonl")
    assert [r["step"] for r in a] == list(range(1, 9)) == [r["step"] for r in b]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in a)  # a 2-iteration warm-up spikes, as B's official start
    log = read_jsonl(tmp / "full" / "log.txt")
    assert log == read_jsonl(tmp / "resumed" / "log.txt")  # train rows too: a resumed window is the same steps
    train = [r for r in log if r["mode"] == "train"]  # mmdet's: every log_every_steps (2) iterations of an epoch
    assert [(r["epoch"], r["iter"], r["step"]) for r in train] == [(1, 2, 2), (1, 4, 4), (2, 2, 6), (2, 4, 8)]
    for r in train:
        for k in ("loss", "loss_cls", "loss_bbox"):
            assert r[k] == pytest.approx(np.mean([x[k] for x in a[r["step"] - 2:r["step"]]]))
        assert r["lr"] == a[r["step"] - 1]["lr"]
    rows = [r for r in log if r["mode"] == "val"]
    assert [r["epoch"] for r in rows] == [2] and [r["iter"] for r in rows] == [8]
    keys = {"bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "bbox_mAP_s", "bbox_mAP_m", "bbox_mAP_l", "bbox_mAP_copypaste"}
    assert keys <= set(rows[-1]) and len(rows[-1]["bbox_mAP_copypaste"].split()) == 6
    assert full["bbox_mAP_copypaste"] == resumed["bbox_mAP_copypaste"] and full["detections"] == resumed["detections"]
    assert rows[-1]["loss"] == pytest.approx(np.mean([r["loss"] for r in a[4:]]))
    assert all(r["loss"] == pytest.approx(r["loss_cls"] + r["loss_bbox"], rel=1e-5) for r in a)
    assert rows[-1]["loss_cls"] == pytest.approx(np.mean([r["loss_cls"] for r in a[4:]]))
    assert rows[-1]["loss_bbox"] == pytest.approx(np.mean([r["loss_bbox"] for r in a[4:]]))
    assert (tmp / "full" / "curves.png").stat().st_size > 0
    # the lr: warm-up from 0.001 x over 2 iterations, then cosine to 0.01 x at the last (8th)
    lr = [r["lr"] for r in a]
    assert lr[0] == pytest.approx(1e-6, rel=1e-4) and lr[2] == pytest.approx(1e-3, rel=1e-6)
    assert lr[-1] == pytest.approx(1e-5, rel=1e-4)


def test_detection_config_errors_stop_at_start(tmp_path):
    from lsnet_jax.tasks.detection import validate_config
    from lsnet_jax.train.checks import ConfigError

    with pytest.raises(ConfigError, match="must divide the per-device batch"):
        validate_config(digits_config(tmp_path, group_size=3), 1)
    with pytest.raises(ConfigError, match="'linear'; use 'step'"):
        validate_config(digits_config(tmp_path, lr_schedule="linear"), 1)
    with pytest.raises(ConfigError, match="detection needs a detector"):
        validate_config(digits_config(tmp_path, model="lsnet_t"), 1)
    with pytest.raises(ConfigError, match="multiples of 32"):
        c = digits_config(tmp_path)
        c.aug.pad_shapes = ((100, 100),)
        validate_config(c, 1)
