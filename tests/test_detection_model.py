"""LSNet + RetinaNet against the PyTorch reference written from DETECTION_SPEC.md: parameter
counts and the official keys, raw outputs per level, anchors, the box coder, NMS and the whole
test-time post-processing (fed the reference's raw outputs, and end to end), conversion both ways."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs the [torch] extra")

import jax.numpy as jnp  # noqa: E402

import convert_torch  # noqa: E402
from lsnet_jax import compiled, create_model  # noqa: E402
from lsnet_jax.checkpoints.state import flat_state  # noqa: E402
from lsnet_jax.checkpoints.torch_io import read_checkpoint  # noqa: E402
from lsnet_jax.data.coco import COCO_CATEGORY_IDS  # noqa: E402
from lsnet_jax.inference import detection  # noqa: E402
from lsnet_jax.models import retinanet_official  # noqa: E402
from lsnet_jax.testing import diverse_images  # noqa: E402
from lsnet_jax import torch_reference as ref  # noqa: E402
from torch_utils import randomize_  # noqa: E402

NAME = "lsnet_t_retinanet"
SIZE = (256, 320)  # a padded test image: sides multiples of 32, a non-square last grid


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A random reference detector (class logits of order 2, shifted so that ~15% of the (anchor,
    class) pairs pass the 0.05 score threshold: the top-1000 cut and NMS both matter) saved as
    MMDetection does, converted by the CLI; its raw outputs on one image."""
    tm = randomize_(ref.create_torch_retinanet(NAME), seed=5, img_size=256, logit_scale=2.0)
    with torch.no_grad():
        tm.bbox_head.retina_cls.bias.sub_(5.0)
    d = tmp_path_factory.mktemp("retinanet")
    torch.save({"meta": {"CLASSES": ("a",) * 80}, "state_dict": tm.state_dict()}, d / f"{NAME}.pth")
    assert convert_torch.main([str(d / f"{NAME}.pth"), str(d / "jax")]) == 0
    x = diverse_images(1, SIZE[0], seed=9, width=SIZE[1])
    with torch.inference_mode():
        cls, reg = tm(torch.from_numpy(x))
    return tm, d, x, cls, reg


def test_parameter_counts_and_official_keys():
    """The spec's measured parameter counts and state-dict entry counts (buffers included); the
    reference's own keys and shapes for LSNet-T."""
    for name, params, entries in (("lsnet_t_retinanet", 20_950_212, 727), ("lsnet_s_retinanet", 25_827_356, 755),
                                  ("lsnet_b_retinanet", 33_135_332, 995)):
        shapes = retinanet_official.expected_jax_shapes(name)
        sd = retinanet_official.jax_to_torch({p: np.zeros(s, np.float32) for p, s in shapes.items()})
        assert len(sd) == entries, name
        trainable = sum(int(np.prod(s)) for p, s in shapes.items() if p[-1] not in ("mean", "var"))
        assert trainable == params, name
    tsd = ref.create_torch_retinanet(NAME).state_dict()
    shapes = retinanet_official.expected_jax_shapes(NAME)
    ours = retinanet_official.jax_to_torch({p: np.zeros(s, np.float32) for p, s in shapes.items()})
    assert sorted(ours) == sorted(tsd)
    assert all(tuple(ours[k].shape) == tuple(v.shape) for k, v in tsd.items())


def test_raw_outputs_match_pytorch(converted):
    """Every level's class logits and deltas, float32, within 1e-4 of each output's std (the
    spec: float32 reassociation alone gives ~7e-5; a semantic slip gives order 1)."""
    tm, d, x, cls, reg = converted
    xj = jnp.asarray(x.transpose(0, 2, 3, 1))
    for deploy in (False,):  # the folded form: test_convert_check_and_round_trip (--check compares both)
        jcls, jreg = compiled(create_model(NAME, pretrained=d / "jax", deploy=deploy))(xj)
        assert [tuple(a.shape) for a in jcls] == [(1, 32, 40, 720), (1, 16, 20, 720), (1, 8, 10, 720),
                                                 (1, 4, 5, 720), (1, 2, 3, 720)]
        assert [a.shape[-1] for a in jreg] == [36] * 5
        for level, (ours, theirs) in enumerate(zip((*jcls, *jreg), (*cls, *reg))):
            theirs = theirs.numpy().transpose(0, 2, 3, 1)
            err = np.abs(np.asarray(ours) - theirs).max() / theirs.std()
            assert ours.dtype == jnp.float32 and err < 1e-4, (deploy, level, err)


def test_anchors_equal_mmdetection():
    """Per level equal to the reference generator (float32, bit for bit) and to a float64
    restatement (1e-4 px), in the (y, x, a) order; the spec's stride-8 base anchors."""
    for level, stride in enumerate((8, 16, 32, 64, 128)):
        h, w = 5 + level, 7 - level
        ours = detection.level_anchors(h, w, stride)
        assert np.array_equal(ours, ref.retina_anchors(h, w, stride).numpy())
        for y, x, a in ((0, 0, 0), (h - 1, w - 1, 8), (2, 1, 4)):
            r, s = divmod(a, 3)
            hr = math.sqrt((0.5, 1.0, 2.0)[r])
            aw, ah = stride * 4 * 2 ** (s / 3) / hr, stride * 4 * 2 ** (s / 3) * hr
            want = (x * stride - aw / 2, y * stride - ah / 2, x * stride + aw / 2, y * stride + ah / 2)
            assert np.abs(ours[(y * w + x) * 9 + a] - want).max() < 1e-4
    base = detection.base_anchors(8)
    np.testing.assert_allclose(base[[0, 1, 2, 3, 4, 5, 6]][:, :2], [
        (-22.6274, -11.3137), (-28.5088, -14.2544), (-35.9188, -17.9594), (-16, -16), (-20.1587, -20.1587),
        (-25.3984, -25.3984), (-11.3137, -22.6274)], atol=1e-4)


def test_box_coder_round_trip_and_clamps():
    rng = np.random.default_rng(0)
    anchors = np.concatenate([rng.uniform(0, 200, (64, 2)), rng.uniform(0, 200, (64, 2))], 1).astype(np.float32)
    anchors[:, 2:] = anchors[:, :2] + rng.uniform(4, 120, (64, 2)).astype(np.float32)
    gt = np.maximum(anchors + rng.normal(0, 6, (64, 4)).astype(np.float32), 0)  # inside the image: no clamp
    gt[:, 2:] = np.maximum(gt[:, 2:], gt[:, :2] + 1)
    deltas = detection.encode(jnp.asarray(anchors), jnp.asarray(gt))
    back = detection.decode(jnp.asarray(anchors), deltas, jnp.asarray([1e4, 1e4]))
    assert np.abs(np.asarray(back) - gt).max() < 1e-3
    wild = rng.normal(0, 3, (64, 4)).astype(np.float32)  # dw, dh beyond the clamp; boxes beyond the image
    ours = detection.decode(jnp.asarray(anchors), jnp.asarray(wild), jnp.asarray([150.0, 180.0]))
    theirs = ref.delta2bbox(torch.from_numpy(anchors), torch.from_numpy(wild), (150, 180)).numpy()
    assert np.abs(np.asarray(ours) - theirs).max() < 1e-3
    assert np.asarray(ours)[:, [0, 2]].max() <= 180 and np.asarray(ours)[:, [1, 3]].max() <= 150


@pytest.mark.parametrize("seed", range(3))
def test_nms_keeps_what_the_greedy_walk_keeps(seed):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, (300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (300, 2))], 1).astype(np.float32)
    scores = rng.random(300).astype(np.float32)
    valid = rng.random(300) < 0.9
    want = ref.nms_reference(torch.from_numpy(boxes[valid]), torch.from_numpy(scores[valid]), 0.5).numpy()
    want = np.flatnonzero(valid)[want]
    keep, ok = detection.nms(jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(valid), 0.5, 400)
    keep, ok = np.asarray(keep), np.asarray(ok)
    assert ok.sum() == len(want) and np.array_equal(keep[:ok.sum()], want) and not ok[ok.sum():].any()


def test_postprocess_fed_the_reference_outputs_equals_mmdetection(converted):
    """The reference's raw outputs through both post-processings, with a resized image smaller
    than its padding (box clamps) and a scale factor: the same detections, labels, boxes within
    1e-3 px, scores within 1e-6."""
    _, _, _, cls, reg = converted
    img_shape, scale = (250, 301), (1.5, 1.25, 1.5, 1.25)
    boxes, scores, labels = ref.retina_postprocess(cls, reg, img_shape, scale)
    assert len(boxes) == 100  # enough candidates for the cap to bind
    ours = detection.retina_postprocess(
        tuple(jnp.asarray(c[0].numpy().transpose(1, 2, 0)) for c in cls),
        tuple(jnp.asarray(r[0].numpy().transpose(1, 2, 0)) for r in reg),
        jnp.asarray(img_shape, jnp.float32), jnp.asarray(scale, jnp.float32), 80)
    got = detection.Detections(*(a[None] for a in (ours.boxes, ours.scores, ours.labels, ours.valid))).to_lists()[0]
    assert len(got["boxes"]) == len(boxes)
    assert np.array_equal(got["labels"], labels.numpy())
    assert np.abs(got["boxes"] - boxes.numpy()).max() < 1e-3
    assert np.abs(got["scores"] - scores.numpy()).max() < 1e-6


def test_convert_check_and_round_trip(converted, tmp_path, capsys):
    """``--check`` on the official wrapping at a second size (384x512): raw outputs folded and not
    within 1e-4 of their std, and ``detect`` end to end against the reference model and
    post-processing, detections matched by label and box (0.05 px: random weights clamp boxes flat
    to the border, where IoU is undefined) but for at most two at the 100th detection's cut;
    JAX -> MMDetection layout -> JAX is exact and gives the reference's keys."""
    tm, d, *_ = converted
    assert convert_torch.main([str(d / f"{NAME}.pth"), str(tmp_path / "c"), "--check"]) == 0
    out = capsys.readouterr().out
    print(out)
    errs = [float(v) for v in re.findall(r"([0-9.e+-]+) of their std, folded ([0-9.e+-]+)", out)[0]]
    assert max(errs) < 1e-4
    ref_n, jax_n, same = map(int, re.search(r"reference (\d+), JAX (\d+), (\d+) with", out).groups())
    assert ref_n == jax_n > 0 and same >= ref_n - 2
    assert convert_torch.main(["--to-torch", str(d / "jax"), str(tmp_path / "back.pth")]) == 0
    obj = torch.load(tmp_path / "back.pth", weights_only=True)
    assert set(obj) == {"state_dict", "meta"} and len(obj["meta"]["CLASSES"]) == 80
    ref_sd = tm.state_dict()
    assert sorted(obj["state_dict"]) == sorted(ref_sd)
    for k, v in ref_sd.items():
        assert torch.equal(obj["state_dict"][k].to(v.dtype), v), k
    sd = read_checkpoint(tmp_path / "back.pth")
    flat = retinanet_official.torch_to_jax(sd, retinanet_official.expected_jax_shapes(NAME))
    again = flat_state(create_model(NAME, pretrained=d / "jax"))
    assert set(flat) == set(again) and all(np.array_equal(flat[p], again[p]) for p in flat)


def test_detects_variant_new_classes_and_lists_bad_keys(converted):
    for name in ("lsnet_s_retinanet", "lsnet_b_retinanet"):
        shapes = retinanet_official.expected_jax_shapes(name, 10)
        sd = retinanet_official.jax_to_torch({p: np.zeros(s, np.float32) for p, s in shapes.items()})
        assert retinanet_official.is_retinanet(sd)
        assert retinanet_official.detect_variant(sd) == (name, 10)
    del sd["neck.fpn_convs.4.conv.bias"]
    sd["bbox_head.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"(?s)neck\.fpn_convs\.4\.conv\.bias.*bbox_head\.extra\.weight"):
        retinanet_official.detect_variant(sd)
    _, d, *_ = converted
    ten = create_model(NAME, pretrained=d / "jax", num_classes=10)  # a new retina_cls, the rest loaded
    assert ten.bbox_head.retina_cls.kernel.shape == (3, 3, 256, 90)
    full = create_model(NAME, pretrained=d / "jax")
    assert np.array_equal(ten.bbox_head.retina_reg.kernel[...], full.bbox_head.retina_reg.kernel[...])


def test_pretrained_true_predict_and_the_tools_refusing_detectors(converted, tmp_path, monkeypatch):
    """``create_model(NAME, pretrained=True)`` from an offline Hugging Face cache holding the
    MMDetection checkpoint equals the converted weights (the class names from its ``meta``); the
    classifier-only tools answer detection weights with one line (exit 2); lsnet-predict draws."""
    hf_constants = pytest.importorskip("huggingface_hub.constants")
    from lsnet_jax.checkpoints.weights import read_meta
    from lsnet_jax.cli import evaluate, export, predict

    _, d, *_ = converted
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--jameslahm--lsnet"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / f"{NAME}.pth").write_bytes((d / f"{NAME}.pth").read_bytes())
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LSNET_JAX_CACHE", str(tmp_path / "cache"))
    one_line = flat_state(create_model(NAME, pretrained=True))
    by_hand = flat_state(create_model(NAME, pretrained=d / "jax"))
    assert set(one_line) == set(by_hand) and all(np.array_equal(one_line[p], by_hand[p]) for p in by_hand)
    meta = read_meta(next((tmp_path / "cache").rglob("config.json")).parent)
    assert meta["task"] == "detection" and meta["class_names"] == ["a"] * 80
    from PIL import Image

    Image.new("RGB", (64, 48)).save(tmp_path / "a.png")
    for main, argv in ((evaluate.main, ["--weights", str(d / "jax"), "--data", "x"]),
                       (export.main, ["--weights", str(d / "jax"), "--out", str(tmp_path / "e"), "--format", "stablehlo"])):
        assert main(argv) == 2
    assert not (tmp_path / "e").exists()
    # lsnet-predict draws the boxes and writes COCO results (the random detector finds plenty)
    import sklearn.datasets

    photo = str(next((Path(sklearn.datasets.__file__).parent / "images").glob("china.jpg")))
    argv = [photo, "--checkpoint", str(d / "jax"), "--out-dir", str(tmp_path / "det"), "--test-scale", "320", "256",
            "--json", str(tmp_path / "p.json")]
    assert predict.main(argv) == 0
    drawn = np.asarray(Image.open(tmp_path / "det" / "china.png"))
    assert drawn.shape == (427, 640, 3) and not np.array_equal(drawn, np.asarray(Image.open(photo).convert("RGB")))
    results = json.loads((tmp_path / "det" / "results.json").read_text())
    assert 0 < len(results) <= 100 and all(r["score"] > 0.05 and r["image_id"] == 1 for r in results)
    assert {r["category_id"] for r in results} <= set(COCO_CATEGORY_IDS)
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["predictions"][0]["detections"] == len(results)
    assert predict.main(argv) == 2  # the drawings exist: refused without --overwrite
