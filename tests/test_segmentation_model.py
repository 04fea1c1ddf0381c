"""LSNet + Semantic FPN against the PyTorch reference written from SEGMENTATION_SPEC.md: logits,
bias-table resizes, the classifier -> backbone initialisation, conversion both ways."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs the [torch] extra")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import convert_torch  # noqa: E402
from lsnet_jax import compiled, create_model  # noqa: E402
from lsnet_jax.checkpoints.state import flat_state  # noqa: E402
from lsnet_jax.checkpoints.torch_io import read_checkpoint  # noqa: E402
from lsnet_jax.checkpoints.weights import save_weights  # noqa: E402
from lsnet_jax.models import lsnet_official, semfpn_official  # noqa: E402
from lsnet_jax.models.layers import BatchNorm  # noqa: E402
from lsnet_jax.kernels.resize import resize_bicubic_2d, resize_bilinear, resize_nearest  # noqa: E402
from lsnet_jax.testing import diverse_images  # noqa: E402
from lsnet_jax.torch_reference import create_torch_model, create_torch_segmenter  # noqa: E402
from torch_utils import randomize_  # noqa: E402

NAME = "lsnet_t_semfpn"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A random reference segmenter saved as MMSegmentation does, converted by the CLI."""
    tm = randomize_(create_torch_segmenter(NAME), seed=5, img_size=256)
    d = tmp_path_factory.mktemp("semfpn")
    torch.save({"meta": {"CLASSES": ("a",) * 150}, "state_dict": tm.state_dict(), "optimizer": {}},
               d / f"{NAME}.pth")
    assert convert_torch.main([str(d / f"{NAME}.pth"), str(d / "jax")]) == 0
    return tm, d


def test_logits_match_pytorch_at_512(converted):
    """Random weights and BatchNorm statistics, logits of order 10: the 8x8 last grid resizes the
    196x196 bias tables down."""
    tm, d = converted
    x = diverse_images(1, 512, seed=9)
    with torch.inference_mode():
        ref = tm(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
    assert ref.shape == (1, 64, 64, 150)
    assert 3 < ref.std() < 30, "logits should be of order 10"
    got = np.asarray(compiled(create_model(NAME, pretrained=d / "jax"))(jnp.asarray(x.transpose(0, 2, 3, 1))))
    err = np.abs(got - ref).max() / ref.std()
    print(f"512x512: |JAX - PyTorch| = {err:.2e} std")
    assert got.dtype == np.float32 and err < 1e-4


def test_convert_check_at_512x640_and_round_trip(converted, tmp_path, capsys):
    """``--check`` (a non-square 512x640 input: a 10x8 last grid) compares the converted model,
    folded and not, with the reference; JAX -> official (MMSegmentation's wrapping) -> JAX is
    exact and gives the reference's own keys."""
    import re

    tm, d = converted
    assert convert_torch.main([str(d / f"{NAME}.pth"), str(tmp_path / "c"), "--check"]) == 0
    out = capsys.readouterr().out
    print(out)
    std = float(re.search(r"logit std ([0-9.e+-]+)", out).group(1))
    errs = [float(v) for v in re.findall(r"\(([0-9.e+-]+) std\)", out)]
    assert 3 < std < 30 and len(errs) == 2  # unfolded, folded: in units of the logits' std
    assert max(errs) < 1e-4
    assert convert_torch.main(["--to-torch", str(d / "jax"), str(tmp_path / "back.pth")]) == 0
    obj = torch.load(tmp_path / "back.pth", weights_only=True)
    assert set(obj) == {"state_dict", "meta"} and len(obj["meta"]["CLASSES"]) == 150
    ref_sd = tm.state_dict()
    assert sorted(obj["state_dict"]) == sorted(ref_sd)
    for k, v in ref_sd.items():
        assert torch.equal(obj["state_dict"][k].to(v.dtype), v), k
    sd = read_checkpoint(tmp_path / "back.pth")
    flat = semfpn_official.torch_to_jax(sd, semfpn_official.expected_jax_shapes(NAME))
    again = flat_state(create_model(NAME, pretrained=d / "jax"))
    assert set(flat) == set(again)
    assert all(np.array_equal(flat[p], again[p]) for p in flat)


def test_detects_variant_and_lists_bad_keys():
    for name in ("lsnet_s_semfpn", "lsnet_b_semfpn"):
        shapes = semfpn_official.expected_jax_shapes(name, 19)
        sd = semfpn_official.jax_to_torch({p: np.zeros(s, np.float32) for p, s in shapes.items()})
        assert semfpn_official.is_segmentation(sd)
        assert semfpn_official.detect_variant(sd) == (name, 19)
    del sd["neck.fpn_convs.3.conv.bias"]
    sd["decode_head.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"(?s)neck\.fpn_convs\.3\.conv\.bias.*decode_head\.extra\.weight"):
        semfpn_official.detect_variant(sd)


@pytest.mark.parametrize("n", [64, 88, 300])
def test_bias_resize_equals_torch_bicubic(n):
    """The gathered (heads, 196, 196) bias resized to (heads, N, N) as F.interpolate bicubic does:
    down (8x8, 8x11 grids) and up."""
    rng = np.random.default_rng(n)
    bias = rng.standard_normal((4, 196, 196)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(bias)[None], size=(n, n), mode="bicubic", align_corners=False)[0]
    got = np.asarray(resize_bicubic_2d(jnp.asarray(bias), (n, n)))
    assert np.abs(got - ref.numpy()).max() < 1e-5


@pytest.mark.parametrize("src,dst", [((8, 11), (16, 22)), ((11, 6), (21, 12)), ((64, 80), (512, 640)),
                                     ((60, 84), (37, 53))])
def test_bilinear_and_nearest_equal_torch(src, dst):
    x = np.random.default_rng(0).standard_normal((2, 3) + src).astype(np.float32)
    xt = torch.from_numpy(x)
    xj = jnp.asarray(x.transpose(0, 2, 3, 1))
    bil = F.interpolate(xt, size=dst, mode="bilinear", align_corners=False).numpy().transpose(0, 2, 3, 1)
    near = F.interpolate(xt, size=dst, mode="nearest").numpy().transpose(0, 2, 3, 1)
    assert np.abs(np.asarray(resize_bilinear(xj, dst)) - bil).max() < 1e-5
    assert np.array_equal(np.asarray(resize_nearest(xj, dst)), near)


def test_backbone_from_classifier_equals_official_init_weights(tmp_path):
    """create_model(..., backbone_pretrained=classifier) against the official init_weights run in
    torch: the (heads, 16) tables resized with F.interpolate(view(1, heads, 4, 4), (14, 14),
    bicubic), attention_bias_idxs dropped, the head ignored, a non-strict load."""
    cls = randomize_(create_torch_model("lsnet_t"), seed=3)
    ckpt = {k: v.clone() for k, v in cls.state_dict().items()}
    official = {}
    for k, v in ckpt.items():
        if "attention_bias_idxs" in k:
            continue
        if "attention_biases" in k and v.shape[1] == 16:
            v = F.interpolate(v.view(1, v.shape[0], 4, 4), size=(14, 14), mode="bicubic",
                              align_corners=False).view(v.shape[0], 196)
        official[k] = v
    seg = create_torch_segmenter(NAME)
    missing, unexpected = seg.backbone.load_state_dict(official, strict=False)
    assert all(k.startswith("head.") for k in unexpected) and unexpected
    assert all(k.endswith("attention_bias_idxs") for k in missing)

    flat = lsnet_official.torch_to_jax({k: v.numpy() for k, v in ckpt.items()},
                                       lsnet_official.expected_jax_shapes("lsnet_t"))
    save_weights(tmp_path / "cls", flat, {"model": "lsnet_t", "num_classes": 1000})
    model = create_model(NAME, backbone_pretrained=tmp_path / "cls")
    ours = semfpn_official.jax_to_torch(flat_state(model))
    for k, v in seg.backbone.state_dict().items():
        if k.endswith(("num_batches_tracked", "attention_bias_idxs")):
            continue
        # float32 rounding apart: torch sums the 16 bicubic taps in float32, we in float64
        assert np.abs(ours["backbone." + k] - v.numpy()).max() < 1e-5, k
    with pytest.raises(ValueError, match="backbone_pretrained"):
        create_model(NAME, pretrained=tmp_path / "cls")


def test_training_mode_freezes_backbone_bn_and_needs_a_dropout_key():
    model = create_model(NAME, num_classes=5)
    model.train()
    bns = [m for _, m in nnx.iter_modules(model) if isinstance(m, BatchNorm)]
    backbone = {id(m) for _, m in nnx.iter_modules(model.backbone) if isinstance(m, BatchNorm)}
    assert all(m.frozen for m in bns if id(m) in backbone)
    assert not any(m.frozen for m in bns if id(m) not in backbone) and len(bns) > len(backbone)
    x = jnp.asarray(diverse_images(2, 64, 1).transpose(0, 2, 3, 1))
    with pytest.raises(ValueError, match="dropout key"):
        model(x)
    before = {p: a.copy() for p, a in flat_state(model.backbone).items() if p[-1] in ("mean", "var")}
    out = nnx.jit(lambda m, x, k: m(x, dropout_key=k))(model, x, jax.random.key(0))
    assert out.shape == (2, 8, 8, 5)
    after = flat_state(model.backbone)
    assert all(np.array_equal(before[p], after[p]) for p in before)  # frozen statistics untouched
    head_bn = model.decode_head.scale_heads[0][0].bn
    assert not np.allclose(np.asarray(head_bn.mean[...]), 0.0)  # the head's BatchNorm did update
    with pytest.raises(ValueError, match="multiples of 32"):
        model.eval()
        model(x[:, :48])
