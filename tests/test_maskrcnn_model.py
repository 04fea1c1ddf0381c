"""LSNet + Mask R-CNN against the PyTorch reference written from DETECTION_SPEC.md: parameter counts
and the official keys, the RPN's raw outputs per level, the box head on given proposals and the mask
head on given boxes (RoIAlign on every level included), conversion both ways."""

from __future__ import annotations

import re

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs the [torch] extra")

import jax.numpy as jnp  # noqa: E402

import convert_torch  # noqa: E402
from lsnet_jax import create_model  # noqa: E402
from lsnet_jax.checkpoints.state import flat_state  # noqa: E402
from lsnet_jax.checkpoints.torch_io import read_checkpoint  # noqa: E402
from lsnet_jax.cli.convert import _maskrcnn_outputs  # noqa: E402
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
