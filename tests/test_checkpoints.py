"""Loading weights: detection, round trips, and clear errors on corrupt or foreign checkpoints."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

import convert_torch
from lsnet_jax import create_model
from lsnet_jax.checkpoints.state import CheckpointMismatchError, flat_state
from lsnet_jax.checkpoints.weights import save_weights
from lsnet_jax.models.lsnet_official import detect_variant, expected_jax_shapes, jax_to_torch


def random_official_sd(name: str, seed: int = 0) -> dict[str, np.ndarray]:
    """An official-layout state dict with random values (built from the model's shapes)."""
    rng = np.random.default_rng(seed)
    flat = {p: rng.uniform(0.5, 1.5, s).astype(np.float32) for p, s in expected_jax_shapes(name).items()}
    return jax_to_torch(flat)


@pytest.fixture(scope="module")
def official_t(tmp_path_factory):
    sd = random_official_sd("lsnet_t")
    path = tmp_path_factory.mktemp("ckpt") / "lsnet_t.safetensors"
    save_file(sd, str(path))
    return sd, path


@pytest.mark.parametrize("name", ["lsnet_t", "lsnet_s_distill", "lsnet_b"])
def test_detects_variant_from_keys_and_shapes(name):
    assert detect_variant(random_official_sd(name)) == (name, 1000, 224)


def test_convert_safetensors_and_load_every_way(official_t, tmp_path):
    sd, path = official_t
    assert convert_torch.main([str(path), str(tmp_path / "w")]) == 0
    a = flat_state(create_model("lsnet_t", pretrained=tmp_path / "w"))
    b = flat_state(create_model("lsnet_t", pretrained=tmp_path / "w" / "model.safetensors"))
    assert a.keys() == b.keys()
    for p in a:
        np.testing.assert_array_equal(a[p], b[p])
    np.testing.assert_array_equal(a[("head", "l", "kernel")], sd["head.l.weight"].T)
    np.testing.assert_array_equal(a[("stages", 1, "downsample", "dw", "c", "kernel")],
                                  sd["blocks2.0.c.weight"].transpose(2, 3, 1, 0))
    # JAX -> official layout is the exact inverse
    back = jax_to_torch(a)
    assert back.keys() == sd.keys()
    for k in sd:
        if not k.endswith("num_batches_tracked"):  # buffers are regenerated as 0
            np.testing.assert_array_equal(back[k], sd[k], err_msg=k)


def test_new_head_keeps_the_trunk(official_t, tmp_path):
    _, path = official_t
    convert_torch.main([str(path), str(tmp_path / "w")])
    m = create_model("lsnet_t", pretrained=tmp_path / "w", num_classes=7)
    assert m.head.l.kernel.shape == (384, 7)
    ref = create_model("lsnet_t", pretrained=tmp_path / "w")
    np.testing.assert_array_equal(m.stages[2].blocks[0].ffn.pw1.c.kernel[...],
                                  ref.stages[2].blocks[0].ffn.pw1.c.kernel[...])


@pytest.mark.parametrize("damage", ["missing", "unexpected", "shape"])
def test_mismatched_checkpoint_lists_the_keys(official_t, tmp_path, damage, capsys):
    sd = dict(official_t[0])
    if damage == "missing":
        del sd["blocks3.3.mixer.lkp.cv4.bias"]
        key = "blocks3.3.mixer.lkp.cv4.bias"
    elif damage == "unexpected":
        sd["blocks3.3.mixer.extra.weight"] = np.zeros(3, np.float32)
        key = "blocks3.3.mixer.extra.weight"
    else:
        sd["blocks4.3.mixer.m.attention_biases"] = np.zeros((4, 9), np.float32)
        key = "blocks4.3.mixer.m.attention_biases"
    path = tmp_path / "bad.safetensors"
    save_file(sd, str(path))
    assert convert_torch.main([str(path), str(tmp_path / "out"), "--model", "lsnet_t"]) == 2
    err = capsys.readouterr().err
    assert key in err and "does not match" in err
    assert not (tmp_path / "out").exists()  # nothing half-written
    with pytest.raises(CheckpointMismatchError) as e:
        detect_variant(sd)
    assert "closest is 'lsnet_t'" in str(e.value) and key in str(e.value)


def test_foreign_checkpoint_is_refused(tmp_path, capsys):
    resnetish = {"conv1.weight": np.zeros((64, 3, 7, 7), np.float32), "fc.weight": np.zeros((1000, 2048), np.float32),
                 "fc.bias": np.zeros(1000, np.float32)}
    path = tmp_path / "resnet.safetensors"
    save_file(resnetish, str(path))
    assert convert_torch.main([str(path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "No LSNet variant fits" in err and "conv1.weight" in err and "blocks2.0.c.weight" in err


def test_truncated_files_are_explained(official_t, tmp_path, capsys):
    _, path = official_t
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:1000])
    assert convert_torch.main([str(cut), str(tmp_path / "out")]) == 2
    assert "not a readable safetensors file" in capsys.readouterr().err
    with pytest.raises(ValueError, match="truncated"):
        create_model("lsnet_t", pretrained=cut)
    with pytest.raises(FileNotFoundError, match="no weights"):
        create_model("lsnet_t", pretrained=tmp_path / "nowhere")


def test_jax_weights_of_another_variant_are_refused(tmp_path):
    zeros = {p: np.zeros(s, np.float32) for p, s in expected_jax_shapes("lsnet_t").items()}
    save_weights(tmp_path / "t", zeros, {"model": "lsnet_t", "num_classes": 1000})
    with pytest.raises(ValueError, match="holds weights of 'lsnet_t'"):
        create_model("lsnet_s", pretrained=tmp_path / "t")
    with pytest.raises(CheckpointMismatchError, match="missing in the checkpoint"):
        create_model("lsnet_s", pretrained=tmp_path / "t" / "model.safetensors")


@pytest.mark.parametrize("r,new", [(4, 7), (4, 3), (7, 4), (5, 5)])
def test_bias_table_resize_matches_pytorch_bicubic(r, new):
    """As the official fine-tuning code: F.interpolate(..., mode='bicubic'), align_corners False."""
    torch = pytest.importorskip("torch")
    from lsnet_jax.models.lsnet import resize_attention_biases

    table = np.random.default_rng(r * 10 + new).normal(size=(4, r * r)).astype(np.float32)
    got = np.asarray(resize_attention_biases(jnp.asarray(table), new))
    ref = torch.nn.functional.interpolate(torch.from_numpy(table).view(1, 4, r, r), size=(new, new),
                                          mode="bicubic").view(4, new * new).numpy()
    if r == new:
        np.testing.assert_array_equal(got, table)  # unchanged resolution: the table itself
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
