"""LSNet + Mask R-CNN against the PyTorch reference written from DETECTION_SPEC.md: parameter counts
and the official keys, the RPN's raw outputs per level, the box head on given proposals and the mask
head on given boxes (RoIAlign on every level included), conversion both ways."""

from __future__ import annotations

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs the [torch] extra")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import convert_torch  # noqa: E402
from lsnet_jax import create_model  # noqa: E402
from lsnet_jax.checkpoints.state import flat_state  # noqa: E402
from lsnet_jax.checkpoints.torch_io import read_checkpoint  # noqa: E402
from lsnet_jax.cli.convert import _maskrcnn_outputs  # noqa: E402
from lsnet_jax.inference import maskrcnn as mrcnn  # noqa: E402
from lsnet_jax.models import maskrcnn_official  # noqa: E402
from lsnet_jax.testing import diverse_images, random_boxes  # noqa: E402
from lsnet_jax import torch_reference as ref  # noqa: E402
from torch_utils import randomize_  # noqa: E402

NAME = "lsnet_t_maskrcnn"
SIZE = (256, 320)  # a padded test image: sides multiples of 32, a non-square last grid
ROIS = 48


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A random reference Mask R-CNN saved as MMDetection does, converted by the CLI; its RPN
    outputs on one image, its box and mask heads on random boxes over all four RoI levels."""
    torch.manual_seed(7)  # the layers' default init
    tm = randomize_(ref.create_torch_maskrcnn(NAME), seed=7, img_size=256, logit_scale=3.0)
    d = tmp_path_factory.mktemp("maskrcnn")
    torch.save({"meta": {"CLASSES": ("a",) * 80}, "state_dict": tm.state_dict()}, d / f"{NAME}.pth")
    assert convert_torch.main([str(d / f"{NAME}.pth"), str(d / "jax")]) == 0
    x = diverse_images(1, SIZE[0], seed=11, width=SIZE[1])
    boxes = random_boxes(ROIS, *SIZE, seed=3)
    rois = torch.cat([torch.zeros(ROIS, 1), torch.from_numpy(boxes)], 1)
    with torch.inference_mode():
        cls, reg, feats = tm(torch.from_numpy(x))
        heads = (*tm.bbox_forward(feats, rois), tm.mask_forward(feats, rois))
    jm = create_model(NAME, pretrained=d / "jax")
    ours = _maskrcnn_outputs(jm, jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(boxes[None]))
    return dict(tm=tm, dir=d, x=x, boxes=boxes, cls=cls, reg=reg, feats=feats, heads=heads, ours=ours, jm=jm)


def test_parameter_counts_and_official_keys():
    """The spec's measured parameter counts and state-dict entry counts (buffers included); the
    reference's own keys and shapes for every variant."""
    for name, params, entries in (("lsnet_t_maskrcnn", 31_998_400, 735), ("lsnet_s_maskrcnn", 36_728_088, 763),
                                  ("lsnet_b_maskrcnn", 43_888_608, 1_003)):
        shapes = maskrcnn_official.expected_jax_shapes(name)
        sd = maskrcnn_official.jax_to_torch({p: np.zeros(s, np.float32) for p, s in shapes.items()})
        assert len(sd) == entries, name
        trainable = sum(int(np.prod(s)) for p, s in shapes.items() if p[-1] not in ("mean", "var"))
        assert trainable == params, name
        tsd = ref.create_torch_maskrcnn(name).state_dict()
        assert sorted(sd) == sorted(tsd)
        assert all(tuple(sd[k].shape) == tuple(v.shape) for k, v in tsd.items())
        rpn = sum(int(np.prod(s)) for p, s in shapes.items() if p[0] == "rpn_head")
        roi = sum(int(np.prod(s)) for p, s in shapes.items() if p[0] == "roi_head")
        assert (rpn, roi) == (593_935, 16_949_985)


def _err(ours, theirs, nchw: bool = True) -> float:
    theirs = theirs.numpy()
    theirs = theirs.transpose(0, 2, 3, 1) if nchw else theirs
    ours = np.asarray(ours).reshape(theirs.shape)
    assert ours.dtype == np.float32
    return float(np.abs(ours - theirs).max() / theirs.std())


def test_rpn_outputs_match_pytorch(converted):
    """Every level's objectness logits and deltas (P2..P6), within 1e-4 of each output's std."""
    cls, reg, _ = converted["ours"]
    assert [tuple(a.shape) for a in cls] == [(1, 64, 80, 3), (1, 32, 40, 3), (1, 16, 20, 3), (1, 8, 10, 3),
                                            (1, 4, 5, 3)]
    assert [a.shape[-1] for a in reg] == [12] * 5
    for level, (ours, theirs) in enumerate(zip((*cls, *reg), (*converted["cls"], *converted["reg"]))):
        assert theirs.std() > 0.1
        assert _err(ours, theirs) < 1e-4, level


def test_roi_heads_on_given_boxes_match_pytorch(converted):
    """The box head's 81 class logits and 320 deltas on given proposals, and the mask head's 28x28
    logits of the 80 classes on given boxes, every RoI level used: within 1e-4 of each output's std
    (fast RoIAlign; every box within its window)."""
    *_, heads = converted["ours"]
    levels = ref.map_roi_levels(torch.from_numpy(converted["boxes"])).numpy()
    assert set(levels) == {0, 1, 2, 3}
    box_cls, box_reg, masks = converted["heads"]
    assert heads[0].shape == (1, ROIS, 81) and heads[1].shape == (1, ROIS, 320)
    assert heads[2].shape == (1, ROIS, 28, 28, 80)
    for name, ours, theirs, nchw in (("cls", heads[0][0], box_cls, False), ("reg", heads[1][0], box_reg, False),
                                     ("mask", heads[2][0], masks, True)):
        assert _err(ours, theirs, nchw) < 1e-4, name


def test_convert_check_and_round_trip(converted, tmp_path, capsys):
    """``--check`` (RPN folded and not, both heads); JAX -> MMDetection layout -> JAX is exact and
    gives the reference's keys; the variant and class count are read from the keys and shapes."""
    tm, d = converted["tm"], converted["dir"]
    assert convert_torch.main([str(d / f"{NAME}.pth"), str(tmp_path / "c"), "--check"]) == 0
    out = capsys.readouterr().out
    print(out)
    m = re.search(r"RPN outputs ([0-9.e+-]+) of their std, folded ([0-9.e+-]+); on \d+ given RoIs: box head "
                  r"([0-9.e+-]+), mask head ([0-9.e+-]+)", out)
    assert m and max(float(v) for v in m.groups()) < 1e-4
    assert convert_torch.main(["--to-torch", str(d / "jax"), str(tmp_path / "back.pth")]) == 0
    obj = torch.load(tmp_path / "back.pth", weights_only=True)
    assert set(obj) == {"state_dict", "meta"} and len(obj["meta"]["CLASSES"]) == 80
    ref_sd = tm.state_dict()
    assert sorted(obj["state_dict"]) == sorted(ref_sd)
    for k, v in ref_sd.items():
        assert torch.equal(obj["state_dict"][k].to(v.dtype), v), k
    sd = read_checkpoint(tmp_path / "back.pth")
    flat = maskrcnn_official.torch_to_jax(sd, maskrcnn_official.expected_jax_shapes(NAME))
    again = flat_state(converted["jm"])
    assert set(flat) == set(again) and all(np.array_equal(flat[p], again[p]) for p in flat)
    for name in ("lsnet_s_maskrcnn", "lsnet_b_maskrcnn"):
        shapes = maskrcnn_official.expected_jax_shapes(name, 10)
        sd = maskrcnn_official.jax_to_torch({p: np.zeros(s, np.float32) for p, s in shapes.items()})
        assert maskrcnn_official.is_maskrcnn(sd) and maskrcnn_official.detect_variant(sd) == (name, 10)
    del sd["neck.extra_trans_convs.0.conv.bias"]
    sd["roi_head.mask_head.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"(?s)extra_trans_convs\.0\.conv\.bias.*mask_head\.extra\.weight"):
        maskrcnn_official.detect_variant(sd)


def test_new_class_count_reinitialises_the_class_heads(converted):
    ten = create_model(NAME, pretrained=converted["dir"] / "jax", num_classes=10)
    head = ten.roi_head
    assert head.bbox_head.fc_cls.kernel.shape == (1024, 11) and head.bbox_head.fc_reg.kernel.shape == (1024, 40)
    assert head.mask_head.conv_logits.kernel.shape == (1, 1, 256, 10)
    full = converted["jm"]
    assert np.array_equal(ten.rpn_head.rpn_cls.kernel[...], full.rpn_head.rpn_cls.kernel[...])
    assert np.array_equal(head.mask_head.upsample.kernel[...], full.roi_head.mask_head.upsample.kernel[...])


def _nhwc(levels):
    return tuple(jnp.asarray(a[0].numpy().transpose(1, 2, 0)) for a in levels)


def test_proposals_fed_the_reference_outputs_equal_mmdetection(converted):
    """The reference's RPN outputs through both proposal generators, with a resized image smaller
    than its padding (box clamps): the same proposals in the same order (up to equal scores),
    boxes within 1e-3 px, scores within 1e-6; the top-``nms_pre`` cut binds on P2 and P3, and the
    ``max_per_img`` cap binds at 1000 and not at 3000."""
    img_shape = (250, 301)
    for cap in (1000, 3000):
        boxes, scores = ref.rpn_proposals(converted["cls"], converted["reg"], img_shape, max_per_img=cap)
        assert (len(boxes) == 1000) if cap == 1000 else (1000 < len(boxes) < cap)
        cfg = mrcnn.RPNConfig(max_per_img=cap)
        ob, os_, ok = jax.jit(mrcnn.rpn_proposals, static_argnums=(3,))(
            _nhwc(converted["cls"]), _nhwc(converted["reg"]), jnp.asarray(img_shape, jnp.float32), cfg)
        ok = np.asarray(ok)
        assert ok.sum() == len(boxes) and ok[:len(boxes)].all()
        ob, os_ = np.asarray(ob)[ok], np.asarray(os_)[ok]
        assert np.abs(os_ - scores.numpy()).max() < 1e-6
        # equal scores (sigmoids of 3,000 random logits tie in float32) may come in either order
        by_score = lambda b, s: np.lexsort((b[:, 1], b[:, 0], -s))  # noqa: E731
        theirs = boxes.numpy()[by_score(boxes.numpy(), scores.numpy())]
        assert np.abs(ob[by_score(ob, os_)] - theirs).max() < 1e-3


def test_rcnn_postprocess_fed_the_reference_outputs_equals_mmdetection(converted):
    """The reference box head's outputs on 200 proposals (padded to 256 with invalid ones) through
    both ``get_bboxes`` + ``multiclass_nms``, with a scale factor: the same 100 detections, labels,
    boxes within 1e-3 px, scores within 1e-6."""
    tm, feats = converted["tm"], converted["feats"]
    img_shape, scale = (250, 301), (1.5, 1.25, 1.5, 1.25)
    props, _ = ref.rpn_proposals(converted["cls"], converted["reg"], img_shape)
    props = props[:200]
    with torch.inference_mode():
        cls, reg = tm.bbox_forward(feats, torch.cat([torch.zeros(len(props), 1), props], 1))
    boxes, scores, labels = ref.rcnn_postprocess(props, cls, reg, img_shape, scale)
    assert len(boxes) == 100
    pad = lambda a: np.concatenate([a.numpy(), np.full((56, a.shape[1]), 7.0, np.float32)])  # noqa: E731
    valid = np.arange(256) < 200
    ob, os_, ol, ok = jax.jit(mrcnn.bbox_postprocess)(jnp.asarray(pad(props)), jnp.asarray(valid), jnp.asarray(pad(cls)),
                                                      jnp.asarray(pad(reg)), jnp.asarray(img_shape, jnp.float32),
                                                      jnp.asarray(scale, jnp.float32))
    ok = np.asarray(ok)
    assert ok.all()
    assert np.array_equal(np.asarray(ol), labels.numpy())
    assert np.abs(np.asarray(ob) - boxes.numpy()).max() < 1e-3
    assert np.abs(np.asarray(os_) - scores.numpy()).max() < 1e-6


def test_paste_masks_equals_grid_sample_over_the_whole_image():
    """Pasting inside each box's region against ``F.grid_sample`` over the whole image in float64
    (the GPU path): values within 1e-5 inside the region, every binary pixel equal; boxes across the
    border, sub-pixel, fractional and larger than the image."""
    rng = np.random.default_rng(4)
    probs = rng.random((10, 28, 28)).astype(np.float32)
    boxes = np.asarray([[3.3, 4.7, 40.2, 30.9], [-10, -5, 20, 25], [50, 40, 79, 59], [10.5, 10.5, 11.2, 11.4],
                        [-20, -20, 100, 80], [0, 0, 80, 60], [60.1, 2.2, 95.0, 18.8], [30, 30, 30.9, 55],
                        [5, 50, 70, 58], [77.6, 57.3, 79.9, 59.9]], np.float32)
    ours = mrcnn.paste_masks(probs, boxes, (60, 80))
    want = ref.paste_masks_reference(torch.from_numpy(probs).double(), torch.from_numpy(boxes).double(), 60, 80).numpy()
    region = ours != 0
    assert region.sum() > 0.3 * ours.size / 10
    assert np.abs(ours - want)[region].max() < 1e-5
    assert np.array_equal(ours >= 0.5, want >= 0.5)


def test_detect_end_to_end_against_the_reference(converted):
    """``detect`` (one compiled program) against the reference cascade on the fixture's image:
    detections matched one to one by label and box (0.01 px), scores within 1e-4, but for at most
    two at the 100th detection's cut; each matched mask differs in under 0.5% of its box's pixels
    (binary, pasted into a 200x240 original with scale factor 1.25 / 1.3333)."""
    tm, feats, x = converted["tm"], converted["feats"], converted["x"]
    img_shape, scale, ori = (250, 320), (1.3333334, 1.25, 1.3333334, 1.25), (200, 240)
    props, _ = ref.rpn_proposals(converted["cls"], converted["reg"], img_shape)
    with torch.inference_mode():
        cls, reg = tm.bbox_forward(feats, torch.cat([torch.zeros(len(props), 1), props], 1))
        boxes, scores, labels = ref.rcnn_postprocess(props, cls, reg, img_shape, scale)
        sb = boxes * torch.tensor(scale)
        logits = tm.mask_forward(feats, torch.cat([torch.zeros(len(sb), 1), sb], 1))
        probs = logits[torch.arange(len(labels)), labels].sigmoid()
        masks = ref.paste_masks_reference(probs.double(), boxes.double(), *ori).numpy() >= 0.5
    det = jax.jit(mrcnn.detect)(converted["jm"], jnp.asarray(x.transpose(0, 2, 3, 1)),
                                jnp.asarray([img_shape], jnp.float32), jnp.asarray([scale], jnp.float32))
    got = det.to_lists([ori])[0]
    assert len(got["boxes"]) == len(boxes) == 100 and got["masks"].shape == (100, *ori)
    matched = 0
    for b, s, lab, m in zip(got["boxes"], got["scores"], got["labels"], got["masks"]):
        hit = np.flatnonzero((np.abs(boxes.numpy() - b).max(-1) < 0.01) & (labels.numpy() == lab))
        if len(hit) != 1:
            continue
        j = hit[0]
        assert abs(scores[j].item() - s) < 1e-4
        x1, y1, x2, y2 = b
        area = max((x2 - x1) * (y2 - y1), 1.0)
        assert (m != masks[j]).sum() <= max(0.005 * area, 1), (j, (m != masks[j]).sum(), area)
        matched += 1
    assert matched >= 98


def test_predict_draws_masks_and_writes_their_rles(converted, tmp_path):
    """lsnet-predict on a shipped photo with the converted random Mask R-CNN: results.json holds
    RLE masks at the photo's size; decoded, they are where the drawing changed the photo: every
    pixel outside all masks and all boxes (grown by the outline and label) is the photo's, the
    masks' pixels are tinted."""
    import json
    from pathlib import Path

    import sklearn.datasets
    from PIL import Image
    from pycocotools import mask as mask_utils

    from lsnet_jax.cli import predict

    photo = str(next((Path(sklearn.datasets.__file__).parent / "images").glob("china.jpg")))
    argv = [photo, "--checkpoint", str(converted["dir"] / "jax"), "--out-dir", str(tmp_path / "det"),
            "--test-scale", "320", "256", "--score-thr", "0.0"]
    assert predict.main(argv) == 0
    drawn = np.asarray(Image.open(tmp_path / "det" / "china.png")).astype(np.int32)
    orig = np.asarray(Image.open(photo).convert("RGB")).astype(np.int32)
    assert drawn.shape == orig.shape == (427, 640, 3)
    results = json.loads((tmp_path / "det" / "results.json").read_text())
    assert 0 < len(results) <= 100 and all(r["segmentation"]["size"] == [427, 640] for r in results)
    masks = mask_utils.decode([dict(r["segmentation"], counts=r["segmentation"]["counts"].encode())
                               for r in results]).astype(bool)
    covered = masks.any(-1)
    assert covered.sum() > 1000
    marked = covered.copy()
    for r in results:
        x, y, w, h = r["bbox"]
        marked[max(int(y) - 3, 0):int(y + h) + 4, max(int(x) - 3, 0):int(x + w) + 4] = True
        marked[max(int(y) - 3, 0):int(y) + 14, max(int(x) - 3, 0):int(x) + 200] = True  # the label text
    changed = np.abs(drawn - orig).max(-1) > 0
    assert not changed[~marked].any()
    assert changed[covered].mean() > 0.9


def _gt_batch(n_img: int = 2, m: int = 6, seed: int = 5):
    """Per image 4 and 3 gt boxes (padded to ``m``) over the fixture's 256x320 padded size, with
    elliptical masks inside them, random labels."""
    rng = np.random.default_rng(seed)
    h, w = SIZE
    boxes = np.zeros((n_img, m, 4), np.float32)
    masks = np.zeros((n_img, m, h, w), bool)
    labels = rng.integers(0, 80, (n_img, m)).astype(np.int32)
    valid = np.zeros((n_img, m), bool)
    yy, xx = np.mgrid[:h, :w] + 0.5
    for i, k in enumerate((4, 3)[:n_img]):
        for j in range(k):
            bw, bh = rng.uniform(24, 180), rng.uniform(24, 160)
            x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            boxes[i, j] = (x1, y1, x1 + bw, y1 + bh)
            cx, cy = x1 + bw / 2, y1 + bh / 2
            masks[i, j] = ((xx - cx) / (bw / 2)) ** 2 + ((yy - cy) / (bh / 2)) ** 2 <= 1
            valid[i, j] = True
    return boxes, labels, valid, masks


def test_losses_on_a_fixed_batch_equal_the_reference(converted):
    """Two images (one official GPU), their gts and masks, the samplers in first-k mode: the RPN's
    losses from each side's own RPN outputs, and the RoI head's (box, class, acc, mask) on the
    reference's proposals, within 1e-3 relative of the PyTorch restatement of MMDetection's
    assigners, samplers, targets and losses."""
    from flax import nnx

    from lsnet_jax.train import maskrcnn_steps as ms

    tm, jm = converted["tm"], converted["jm"]
    x = diverse_images(2, SIZE[0], seed=21, width=SIZE[1])
    boxes, labels, valid, masks = _gt_batch()
    tgt = [torch.from_numpy(boxes[i][valid[i]]) for i in range(2)]
    tlab = [torch.from_numpy(labels[i][valid[i]]).long() for i in range(2)]
    tmask = [torch.from_numpy(masks[i][valid[i]]) for i in range(2)]
    with torch.inference_mode():
        cls, reg, feats = tm(torch.from_numpy(x))
        want_rpn = ref.rpn_loss_reference(cls, reg, tgt)
        props = [ref.rpn_proposals([c[i:i + 1] for c in cls], [r[i:i + 1] for r in reg], SIZE, 2000, 1000)[0]
                 for i in range(2)]
        want_roi = ref.rcnn_loss_reference(tm, feats, props, tgt, tlab, tmask)
    pp = np.zeros((2, 1000, 4), np.float32)
    pv = np.zeros((2, 1000), bool)
    for i, p in enumerate(props):
        pp[i, :len(p)], pv[i, :len(p)] = p.numpy(), True
    batch = dict(boxes=jnp.asarray(boxes), labels=jnp.asarray(labels), box_valid=jnp.asarray(valid),
                 masks=jnp.asarray(masks), pad_shape=jnp.asarray([SIZE] * 2, jnp.float32),
                 img_shape=jnp.asarray([SIZE] * 2, jnp.float32))
    graph, state = nnx.split(jm)

    @jax.jit
    def losses(state, images, batch, pp, pv):
        model = nnx.merge(graph, state)
        return ms.maskrcnn_loss(model, images, batch, None, proposals=(pp, pv))

    got = losses(state, jnp.asarray(x.transpose(0, 2, 3, 1)), batch, jnp.asarray(pp), jnp.asarray(pv))
    pairs = dict(loss_rpn_cls=want_rpn[0], loss_rpn_bbox=want_rpn[1], loss_cls=want_roi[0], loss_bbox=want_roi[1],
                 loss_mask=want_roi[3])
    for k, want in pairs.items():
        want = float(want)
        print(k, float(got[k]), want)
        assert want > 0 and abs(float(got[k]) - want) <= 1e-3 * want, k
    assert float(got["acc"]) == float(want_roi[2])  # 0 for this random head; what acc counts, below
    s = dict(valid=jnp.asarray([[True] * 5 + [False] * 3] * 2), pos=jnp.asarray([[True] * 2 + [False] * 6] * 2),
             labels=jnp.asarray([[3, 4, 80, 80, 80, 80, 80, 80]] * 2), targets=jnp.zeros((2, 8, 4)))
    logits = jnp.zeros((2, 8, 81)).at[:, :, 80].set(1.0).at[:, 0, 3].set(2.0)  # right: 1 positive, 3 negatives
    out = ms.bbox_loss(logits, jnp.zeros((2, 8, 320)), s, 80, 2)
    assert float(out["acc"]) == pytest.approx(80.0) and float(out["loss_bbox"]) == 0.0


def test_pretrained_true_from_an_offline_hub_cache(converted, tmp_path, monkeypatch):
    """``create_model(NAME, pretrained=True)`` from an offline Hugging Face cache holding the
    MMDetection checkpoint (jameslahm/lsnet/lsnet_t_maskrcnn.pth) equals the converted weights."""
    hf_constants = pytest.importorskip("huggingface_hub.constants")
    from lsnet_jax.models import hub

    assert hub.PUBLISHED[NAME] == ("jameslahm/lsnet", f"{NAME}.pth")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--jameslahm--lsnet"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / f"{NAME}.pth").write_bytes((converted["dir"] / f"{NAME}.pth").read_bytes())
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LSNET_JAX_CACHE", str(tmp_path / "cache"))
    one_line = flat_state(create_model(NAME, pretrained=True))
    by_hand = flat_state(converted["jm"])
    assert set(one_line) == set(by_hand) and all(np.array_equal(one_line[p], by_hand[p]) for p in by_hand)
