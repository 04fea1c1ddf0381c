"""Segmentation training on the digit scenes: exact resume, the log, evaluation and prediction
against independent computations."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from data_utils import preempted_run

from lsnet_jax.data import source
from lsnet_jax.data.segmentation import decode_image, decode_label, palette
from lsnet_jax.models.registry import create_model
from lsnet_jax.models.semfpn import segment
from lsnet_jax.train.reporting import read_jsonl
from lsnet_jax.train.seg_steps import poly_schedule, seg_cross_entropy

ROOT = Path(__file__).resolve().parents[1]


def digits_config(data_dir, **over):
    spec = importlib.util.spec_from_file_location("seg_digits", ROOT / "configs" / "seg_digits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.data.data_dir = str(data_dir)
    c.depth = (0, 1, 1, 1)  # every stage, one block each: the backbone's layers are checked in test_segmentation_model
    c.aug.crop = (64, 64)
    c.aug.scale = (256, 64)
    c.aug.test_scale = (256, 64)  # the 128x128 test scenes evaluated at 64x64
    c.batch_size = 4
    c.iterations = 6
    c.eval_every_steps = 6
    c.checkpoint_every_steps = 3
    c.log_every_steps = 3
    c.async_checkpoint = False
    c.tensorboard = False
    for k, v in over.items():
        c[k] = v
    return c


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One uninterrupted 6-iteration run, and one preempted (SIGTERM) after its first logged
    iteration and resumed, on 2 devices."""
    from lsnet_jax.tasks import train_and_evaluate

    tmp = tmp_path_factory.mktemp("seg")
    devices = jax.devices()[:2]
    full = train_and_evaluate(digits_config(tmp / "tfds"), tmp / "full", devices)
    _, stopped = preempted_run(digits_config(tmp / "tfds", log_every_steps=1), tmp / "resumed", devices)
    assert 1 <= stopped < 6 and (tmp / "resumed" / "checkpoints" / str(stopped)).is_dir(), stopped
    assert not [r for r in read_jsonl(tmp / "resumed" / "log.txt") if r["mode"] == "val"]  # stopped before it
    resumed = train_and_evaluate(digits_config(tmp / "tfds"), tmp / "resumed", devices)
    return tmp, full, resumed


def test_resume_gives_the_same_losses_and_evaluation(runs):
    tmp, full, resumed = runs
    a, b = read_jsonl(tmp / "full" / "steps.jsonl"), read_jsonl(tmp / "resumed" / "steps.jsonl")
    assert [r["step"] for r in a] == list(range(1, 7)) == [r["step"] for r in b]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert full["mIoU"] == resumed["mIoU"] and 0 <= full["mIoU"] <= 100
    log = read_jsonl(tmp / "full" / "log.txt")
    assert [r for r in log if r["step"] == 6] == [r for r in read_jsonl(tmp / "resumed" / "log.txt") if r["step"] == 6]
    train = [r for r in log if r["mode"] == "train"]  # mmseg's rows: every log_every_steps (3) iterations
    assert [r["iter"] for r in train] == [3, 6]
    for r in train:
        assert r["decode.loss_ce"] == r["loss"] == pytest.approx(np.mean([x["loss"] for x in a[r["iter"] - 3:r["iter"]]]))
    row = log[-1]
    assert row["mode"] == "val" and {"iter", "mIoU", "aAcc", "mAcc", "loss"} <= set(row) and row["iter"] == 6
    assert row["loss"] == pytest.approx(np.mean([r["loss"] for r in a]))
    assert (tmp / "full" / "curves.png").stat().st_size > 0
    c = digits_config(tmp / "tfds")
    sched = poly_schedule(c.lr, c.min_lr, c.power, 6)
    assert [r["lr"] for r in a] == pytest.approx([float(sched(s)) for s in range(6)])


def test_poly_schedule_equals_the_official_log():
    """The official LSNet-T log's lr at every 50th of its 40k iterations: poly 0.9 to 1e-6. mmcv
    logs the lr rounded to 5 decimals, so this holds each value within 5e-6 (the log's precision)."""
    sched = poly_schedule(2e-4, 1e-6, 0.9, 40_000)
    rows = json.loads((ROOT / "tests" / "data" / "lsnet_t_semfpn_lr.json").read_text())["rows"]
    assert len(rows) == 800 and rows[-1][0] == 40_000
    for it, lr in rows:  # row `it` (1-based) logs the lr of that iteration: sched(it - 1)
        assert abs(float(sched(it - 1)) - lr) <= 5.0001e-6, (it, lr)


def test_loss_counts_ignored_pixels_in_the_mean():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 4, 5, 3)).astype(np.float32)
    labels = rng.integers(0, 3, (2, 4, 5))
    labels[0, :2] = 255
    labels[1, 3, :2] = 7  # beyond the 3 classes (a dataset prepared unchecked): ignored, never indexed
    loss, acc = seg_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    total, hits, valid = 0.0, 0, 0
    for idx in np.ndindex(labels.shape):  # a plain loop, float64
        t = labels[idx]
        if t == 255 or t >= 3:
            continue
        z = logits[idx].astype(np.float64)
        total += np.log(np.exp(z).sum()) - z[t]
        hits += int(np.argmax(z) == t)
        valid += 1
    assert float(loss) == pytest.approx(total / labels.size, rel=1e-5)
    assert float(acc) == pytest.approx(100 * hits / valid, rel=1e-5)


@pytest.fixture(scope="module")
def weights(runs):
    """Random weights (predictions spread over all 11 classes, unlike a 6-iteration run's) saved
    with the digits' test resize, and the exported run's weights."""
    from lsnet_jax.checkpoints.state import flat_state
    from lsnet_jax.checkpoints.weights import save_weights
    from lsnet_jax.cli import export_weights

    tmp = runs[0]
    assert export_weights.main(["--workdir", str(tmp / "full"), "--out", str(tmp / "w_run")]) == 0
    meta = json.loads((tmp / "w_run" / "config.json").read_text())
    assert meta["test_scale"] == [256, 64] and meta["task"] == "segmentation" and meta["num_classes"] == 11
    model = create_model("lsnet_t_semfpn", num_classes=11, seed=4)
    save_weights(tmp / "w", flat_state(model), {"model": "lsnet_t_semfpn", "num_classes": 11,
                                                "test_scale": [512, 128], "task": "segmentation"})
    return tmp / "w", tmp / "tfds"


def test_eval_cli_equals_a_naive_computation(weights, tmp_path):
    from lsnet_jax.cli import evaluate

    w, data_dir = weights
    out = tmp_path / "m.json"
    assert evaluate.main(["--weights", str(w), "--data", "lsnet_seg_digits", "--split", "test",
                          "--data_dir", str(data_dir), "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    src, info = source.open_seg_source("lsnet_seg_digits", "test", str(data_dir))
    model = create_model("lsnet_t_semfpn", pretrained=w)
    mean, std = np.asarray((0.485, 0.456, 0.406)), np.asarray((0.229, 0.224, 0.225))
    fn = jax.jit(lambda x: segment(model, x, labels=True))
    inter, union, lab_area = np.zeros(11), np.zeros(11), np.zeros(11)
    for i in range(len(src)):
        img = decode_image(src[i]["image"])  # 128x128: the test resize keeps it
        lab = decode_label(src[i]["label"], False)
        pred = np.asarray(fn(jnp.asarray(((img / 255.0 - mean) / std)[None], jnp.float32)))[0]
        for c in range(11):
            p, t = pred == c, lab == c
            inter[c] += (p & t).sum()
            union[c] += (p | t).sum()
            lab_area[c] += t.sum()
    assert (inter > 0).sum() >= 5, "the random model should predict many classes"
    iou = [inter[c] / union[c] for c in range(11) if union[c] > 0]
    acc = [inter[c] / lab_area[c] for c in range(11) if lab_area[c] > 0]
    assert got["images"] == 200 and got["task"] == "segmentation"
    assert got["mIoU"] == pytest.approx(100 * np.mean(iou), abs=0.02)
    assert got["mAcc"] == pytest.approx(100 * np.mean(acc), abs=0.02)
    assert got["aAcc"] == pytest.approx(100 * inter.sum() / lab_area.sum(), abs=0.02)
    assert set(got["per_class"]) == set(info.class_names)


def test_predict_writes_label_maps_and_overlays(weights, tmp_path):
    from lsnet_jax.cli import predict

    w, data_dir = weights
    src, _ = source.open_seg_source("lsnet_seg_digits", "test", str(data_dir))
    f = tmp_path / "scene.png"
    f.write_bytes(src[0]["image"])
    junk = tmp_path / "junk.jpg"
    junk.write_text("not an image")
    rc = predict.main([str(f), str(junk), "--checkpoint", str(w), "--out-dir", str(tmp_path / "out"),
                       "--overlay", "0.5", "--json", str(tmp_path / "p.json")])
    assert rc == 1  # one unreadable file, reported
    labels = np.asarray(Image.open(tmp_path / "out" / "scene.png"))
    assert labels.shape == (128, 128, 3)
    colours = {tuple(c) for c in palette(11)}
    assert {tuple(c) for c in labels.reshape(-1, 3)} <= colours
    overlay = np.asarray(Image.open(tmp_path / "out" / "scene_overlay.png")).astype(float)
    photo = np.asarray(Image.open(io.BytesIO(src[0]["image"])).convert("RGB")).astype(float)
    assert np.abs(overlay - (0.5 * photo + 0.5 * labels)).max() <= 1.0
    p = json.loads((tmp_path / "p.json").read_text())
    assert p["skipped"] == [str(junk)] and abs(sum(c["share"] for c in p["predictions"][0]["classes"]) - 1) < 1e-6


def test_a_head_smaller_than_the_labels_is_refused(runs, tmp_path):
    """``num_classes=1`` on 10 labels trained to a loss of 0 and exited 0 (classification: test_train)."""
    from lsnet_jax.tasks import train_and_evaluate
    from lsnet_jax.train.checks import ConfigError

    tmp, _, _ = runs
    with pytest.raises(ConfigError, match=r"config.num_classes=3 is smaller than the \d+ classes of lsnet_seg_digits"):
        train_and_evaluate(digits_config(tmp / "tfds", num_classes=3), tmp_path / "w", jax.devices()[:1])
    assert not (tmp_path / "w").exists()
