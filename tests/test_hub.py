"""``create_model(name, pretrained=True)`` offline: a Hugging Face cache populated here with a
checkpoint written by PyTorch (the official model, random weights and statistics, saved as a
training run saves it), ``HF_HUB_OFFLINE``. The logits equal the ``convert_torch.py`` route's; the
second call reads the converted cache with neither torch nor huggingface_hub importable."""

from __future__ import annotations

import argparse
import sys

import jax
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch", reason="writes the official checkpoint")
hf_constants = pytest.importorskip("huggingface_hub.constants")

from torch_utils import randomize_  # noqa: E402

from lsnet_jax.models import hub  # noqa: E402
from lsnet_jax.models.registry import create_model  # noqa: E402
from lsnet_jax.testing import diverse_images  # noqa: E402
from lsnet_jax.torch_reference import create_torch_model  # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An offline Hugging Face cache holding jameslahm/lsnet@main: lsnet_t.pth (10 classes)."""
    cache = tmp_path / "hf" / "hub"
    repo = cache / "models--jameslahm--lsnet"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    tm = randomize_(create_torch_model("lsnet_t", num_classes=10), seed=3)
    ckpt = repo / "snapshots" / COMMIT / "lsnet_t.pth"
    torch.save({"model": tm.state_dict(), "epoch": 299, "args": argparse.Namespace(model="lsnet_t", lr=4e-3)},
               ckpt)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LSNET_JAX_CACHE", str(tmp_path / "lsnet_cache"))
    return ckpt


def _logits_fn(model):
    graphdef, _ = nnx.split(model)
    return jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))


def test_pretrained_true_equals_the_convert_route_and_is_cached(hf_cache, tmp_path, monkeypatch):
    import convert_torch

    assert convert_torch.main([str(hf_cache), str(tmp_path / "converted")]) == 0
    by_hand = create_model("lsnet_t", pretrained=tmp_path / "converted")
    one_line = create_model("lsnet_t", pretrained=True)
    x = diverse_images(2, 224, seed=4).transpose(0, 2, 3, 1)  # NHWC
    logits = _logits_fn(by_hand)
    want, got = logits(nnx.state(by_hand), x), logits(nnx.state(one_line), x)
    assert want.shape == (2, 10) and float(np.std(want)) > 1e-3
    np.testing.assert_array_equal(got, want)
    cached = list((tmp_path / "lsnet_cache").rglob("config.json"))
    assert len(cached) == 1 and "hf-hub:jameslahm/lsnet/lsnet_t.pth@main" in cached[0].read_text()

    # the second call: the converted cache only (the Hugging Face copy gone, torch and the hub client
    # unimportable), by name and by hf-hub: name
    hf_cache.unlink()
    for module in ("torch", "huggingface_hub"):
        monkeypatch.setitem(sys.modules, module, None)
    again = create_model("lsnet_t", pretrained=True)
    by_spec = create_model("hf-hub:jameslahm/lsnet/lsnet_t.pth")
    np.testing.assert_array_equal(logits(nnx.state(again), x), want)
    np.testing.assert_array_equal(logits(nnx.state(by_spec), x), want)


def test_offline_without_a_copy_says_what_to_download(hf_cache):
    with pytest.raises(hub.PretrainedUnavailable) as e:
        create_model("lsnet_s_distill", pretrained=True)
    msg = str(e.value)
    assert "download jameslahm/lsnet lsnet_s_distill.pth" in msg and "offline" in msg and "lsnet-convert" in msg
    with pytest.raises(ValueError, match="no published weights for 'regnety_002'"):
        create_model("regnety_002", pretrained=True)
    with pytest.raises(ValueError, match="expected hf-hub:OWNER/REPO"):
        create_model("hf-hub:lsnet_t")
    assert hub.HubSpec.parse("hf-hub:a/b/c/d.pth@v1.0") == hub.HubSpec("a/b", "c/d.pth", "v1.0")


def test_the_tools_take_published_names_and_hub_names(hf_cache, tmp_path, capsys):
    from lsnet_jax.cli.predict import main as predict_main
    from lsnet_jax.inference.loading import inference_spec

    spec = inference_spec("lsnet_t")  # not a path here: the published model's name
    assert spec.name == "lsnet_t" and spec.meta["num_classes"] == 10
    assert inference_spec("hf-hub:jameslahm/lsnet/lsnet_t.pth").weights == spec.weights
    (tmp_path / "x.jpg").write_bytes(b"not read")
    assert predict_main([str(tmp_path / "x.jpg"), "--checkpoint", "lsnet_b"]) == 2  # offline, not cached
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "lsnet_b.pth" in err
