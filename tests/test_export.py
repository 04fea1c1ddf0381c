"""Serving exports (StableHLO, TF SavedModel, TFLite, ONNX) reproduce the JAX logits, for any batch size."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import convert_torch
from lsnet_jax import create_model
from lsnet_jax.inference import serving as E
from lsnet_jax.models.registry import compiled
from lsnet_jax.testing import diverse_images
from lsnet_jax.torch_reference import create_torch_model
from torch_utils import randomize_

SIZE = 64


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """LSNet-T in its serving (folded) form, converted from a PyTorch reference model with random
    affines, BatchNorm statistics and bias tables and logits of order 10 (``torch_utils.randomize_``;
    a fresh model's zero-initialised residual branches and small head give logits of ~1e-4,
    against which any tolerance is meaningless)."""
    d = tmp_path_factory.mktemp("served")
    tm = randomize_(create_torch_model("lsnet_t", num_classes=10, img_size=SIZE), seed=5, img_size=SIZE)
    torch.save({"model": tm.state_dict()}, d / "t.pth")
    assert convert_torch.main([str(d / "t.pth"), str(d / "jax"), "--model", "lsnet_t", "--img-size", str(SIZE)]) == 0
    m = create_model("lsnet_t", pretrained=d / "jax", img_size=SIZE, deploy=True)
    x = _images(5, 11)
    ref = np.asarray(compiled(m)(jnp.asarray(x)))  # the JAX logits; the model is per-image, so ref[:n] is x[:n]'s
    assert 3 < ref.std() < 30
    return m, x, ref, d / "jax"


def _images(n: int, seed: int) -> np.ndarray:
    return diverse_images(n, SIZE, seed=seed).transpose(0, 2, 3, 1)


def _close(got: np.ndarray, ref: np.ndarray) -> None:
    """Within 1e-4 of the logits' standard deviation."""
    assert got.shape == ref.shape and got.dtype == np.float32
    err = np.abs(got - ref).max() / ref.std()
    print(f"max |export - JAX| = {err:.1e} of the logits' std")
    assert err < 1e-4


def test_stablehlo_reproduces_the_logits(served, tmp_path):
    model, x, ref, _ = served
    exported = E.load_exported(E.save_exported(E.export_model(model, SIZE), tmp_path / "m.jaxexport"))
    for n in (1, 5):  # one file, any batch size
        _close(np.asarray(exported.call(jnp.asarray(x[:n]))), ref[:n])


def test_savedmodel_and_tflite_reproduce_the_logits(served, tmp_path):
    model, x, ref, _ = served
    saved = E.save_saved_model(model, SIZE, tmp_path / "saved")
    tfl = E.save_tflite(model, SIZE, tmp_path / "m.tflite")
    for n in (1, 3):
        _close(E.run_saved_model(saved, x[:n]), ref[:n])
        _close(E.run_tflite(tfl, x[:n]), ref[:n])


def test_onnx_reproduces_the_logits_at_any_batch_size(served, tmp_path):
    """The direct graph (what lsnet-export writes for LSNet): Conv nodes in NCHW behind one entry
    Transpose, no Einsum, no Shape chains, one file for every batch size; a static-batch file;
    and jax2onnx, the converter for other models, on the same weights."""
    import collections

    import onnx

    model, x, ref, weights = served
    path = E.save_onnx(model, SIZE, tmp_path / "m.onnx")
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "B"  # one file, any batch size
    ops = collections.Counter(n.op_type for n in graph.node)
    # LSNet-T: 119 convolutions (SKA's nine shifts are one constant depthwise Conv per LSConv)
    assert ops["Conv"] == 119 and ops["Transpose"] == 1 + 5 * 2, ops  # the entry, two in each of 5 attentions
    assert not {"Einsum", "Shape", "BatchNormalization"} & set(ops), ops
    for n in (1, 2, 5):
        _close(E.run_onnx(path, x[:n]), ref[:n])
    static = E.save_onnx(model, SIZE, tmp_path / "m2.onnx", batch=2, ska_form="slices")
    _close(E.run_onnx(static, x[:2]), ref[:2])
    ref_model = create_model("lsnet_t", pretrained=weights, img_size=SIZE, deploy=True, impl="reference")
    other = E.save_onnx(ref_model, SIZE, tmp_path / "j.onnx", converter="jax2onnx")
    _close(E.run_onnx(other, x[:2]), ref[:2])
    assert not list(tmp_path.glob(".*tmp*"))


def test_onnx_of_the_segmenter_reproduces_its_logits(tmp_path):
    """The folded LSNet-T Semantic FPN as the direct ONNX graph in ONNX Runtime, every weight moved off
    its initial value before folding (a fresh model's zero-initialised residual branches would
    hide errors)."""
    import jax
    from flax import nnx

    from lsnet_jax.models.fold import fold

    model = create_model("lsnet_t_semfpn", num_classes=11, impl="reference")
    params = nnx.state(model, nnx.Param)
    leaves, tree = jax.tree.flatten(params)
    rng = np.random.default_rng(3)
    nnx.update(model, jax.tree.unflatten(tree, [
        a + 0.05 * rng.standard_normal(a.shape).astype(a.dtype) for a in leaves]))
    seg = fold(model)
    x = _images(3, 7)
    ref = np.asarray(compiled(seg)(jnp.asarray(x)))
    assert ref.shape == (3, SIZE // 8, SIZE // 8, 11) and ref.std() > 0.1, ref.std()
    path = E.save_onnx(seg, SIZE, tmp_path / "seg.onnx")
    for n in (1, 3):
        _close(E.run_onnx(path, x[:n]), ref[:n])


def _photo_crops(n: int, seed: int) -> list[bytes]:
    """``n`` JPEG crops (random places and sizes) of the photos scikit-learn ships."""
    import io

    from PIL import Image

    from data_utils import sample_photos

    photos = [Image.open(p).convert("RGB") for p in sample_photos()]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        im = photos[i % len(photos)]
        s = int(rng.integers(64, 320))
        x, y = int(rng.integers(0, im.width - s)), int(rng.integers(0, im.height - s))
        buf = io.BytesIO()
        im.crop((x, y, x + s, y + s)).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def test_int8_onnx_agrees_with_float_on_shipped_photos(served, tmp_path, capsys):
    """lsnet-export --quantize int8 --calibration DIR (static, calibrated on crops of the shipped
    photos; a corrupt file in the folder is skipped and counted) and dynamic quantization: top-1
    agreement with the float32 JAX model on 48 other crops of at least 95%, the logits within 0.2
    of their std (measured: 48 / 48 for both, 0.04 of the std)."""
    import onnx

    from lsnet_jax.cli import export as cli
    from lsnet_jax.models.lsnet import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    model, _, _, weights = served
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, data in enumerate(_photo_crops(16, seed=1)):
        (calib / f"{i:02d}.jpg").write_bytes(data)
    (calib / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "int8.onnx"
    with pytest.raises(SystemExit) as e:  # static quantization without calibration images: refused up front
        cli.main(["--weights", str(weights), "--out", str(out), "--format", "onnx", "--quantize", "int8"])
    assert e.value.code == 2 and "--calibration DIR" in capsys.readouterr().err
    assert cli.main(["--weights", str(weights), "--out", str(out), "--format", "onnx", "--quantize", "int8",
                     "--calibration", str(calib)]) == 0
    printed = capsys.readouterr()
    assert "calibration: 16 images" in printed.out and "1 unreadable skipped" in printed.out
    assert "broken.jpg" in printed.err
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(str(out)).graph.node}
    test_dir = tmp_path / "test"
    test_dir.mkdir()
    for i, data in enumerate(_photo_crops(48, seed=2)):
        (test_dir / f"{i:02d}.jpg").write_bytes(data)
    x, _ = E.calibration_images(test_dir, SIZE, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    ref = np.asarray(compiled(model)(jnp.asarray(x)))
    dynamic = E.quantize_onnx(E.save_onnx(model, SIZE, tmp_path / "f.onnx"), tmp_path / "dyn.onnx", "dynamic")
    for path in (out, dynamic):
        got = E.run_onnx(path, x)
        agree = np.mean(got.argmax(-1) == ref.argmax(-1))
        err = np.abs(got - ref).max() / ref.std()
        print(f"{path.name}: top-1 agreement {100 * agree:.1f}% on {len(x)} crops, max |diff| {err:.2f} of the std")
        assert agree >= 0.95 and err < 0.2, (agree, err)
