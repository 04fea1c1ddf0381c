"""Serving exports (StableHLO, TF SavedModel, TFLite, ONNX) reproduce the JAX logits, for any batch size."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import convert_torch
from lsnet_jax import create_model
from lsnet_jax.inference import serving as E
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
    ref = np.asarray(m(jnp.asarray(x)))  # the JAX logits; the model is per-image, so ref[:n] is x[:n]'s
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
    ref = np.asarray(seg(jnp.asarray(x)))
    assert ref.shape == (3, SIZE // 8, SIZE // 8, 11) and ref.std() > 0.1, ref.std()
    path = E.save_onnx(seg, SIZE, tmp_path / "seg.onnx")
    for n in (1, 3):
        _close(E.run_onnx(path, x[:n]), ref[:n])
