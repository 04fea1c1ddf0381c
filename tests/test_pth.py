"""The torch-free .pth reader against torch.load itself: every dtype and layout a checkpoint holds
(float32/64/16, bfloat16, integer and boolean buffers, non-contiguous views, shared and expanded
storages, parameters, 0-d and empty tensors, a real optimizer's state, training-run arguments),
pickles carrying anything else refused without running them, and damaged files named."""

from __future__ import annotations

import argparse
import collections
import os
import zipfile

import ml_dtypes
import numpy as np
import pytest

from lsnet_jax.checkpoints.pth import PthError, RefusedPickle, load_pth

torch = pytest.importorskip("torch", reason="the reference reader")


def _as_numpy(t):
    """torch.load's tensors as numpy (bfloat16 through float32, exactly)."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.float().numpy().astype(ml_dtypes.bfloat16)
    return t.numpy()


def _assert_same(ours, ref, where="obj"):
    if isinstance(ref, torch.Tensor):
        want = _as_numpy(ref)
        assert isinstance(ours, np.ndarray) and ours.dtype == want.dtype and ours.shape == want.shape, where
        assert ours.flags.c_contiguous and ours.flags.owndata or ours.size == 0, where
        assert ours.tobytes() == np.ascontiguousarray(want).tobytes(), where  # bit for bit
    elif isinstance(ref, argparse.Namespace):
        _assert_same(ours, vars(ref), where)
    elif isinstance(ref, dict):
        assert isinstance(ours, dict) and list(ours) == list(ref), where
        for k in ref:
            _assert_same(ours[k], ref[k], f"{where}[{k!r}]")
    elif isinstance(ref, (list, tuple)):
        assert type(ours) is type(ref) and len(ours) == len(ref) or isinstance(ref, torch.Size), where
        for i, (a, b) in enumerate(zip(ours, ref)):
            _assert_same(a, b, f"{where}[{i}]")
    elif isinstance(ref, torch.dtype):
        assert str(ours) == str(ref).removeprefix("torch."), where
    else:
        assert ours == ref and type(ours) is type(ref), where


def test_every_dtype_and_layout_equals_torch_load(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g) * 3 + 1
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    model(torch.randn(2, 3, 8, 8, generator=g)).sum().backward()
    opt.step()  # its state: per-parameter moments and step counts
    sd = model.state_dict()  # float32 weights, int64 num_batches_tracked
    obj = {
        "model": sd,
        "optimizer": opt.state_dict(),
        "dtypes": collections.OrderedDict(
            f64=torch.randn(3, 2, dtype=torch.float64, generator=g), f16=torch.randn(4, generator=g).half(),
            bf16=(torch.randn(7, generator=g) * 100).bfloat16(), i32=torch.randint(-9, 9, (5,), dtype=torch.int32),
            i8=torch.randint(-100, 100, (3, 3), dtype=torch.int8), u8=torch.randint(0, 255, (4,), dtype=torch.uint8),
            i16=torch.randint(-900, 900, (2,), dtype=torch.int16), b=torch.rand(6, generator=g) > 0.5,
            c64=torch.randn(3, dtype=torch.complex64, generator=g)),
        "views": {  # one storage, read once: transposed, offset, strided and expanded views of it
            "base": base, "t": base.t(), "row": base[2], "col": base[:, 3], "strided": base[::2, 1::2],
            "expanded": base[0:1].expand(4, 5), "scalar": base[1, 1].clone(), "zero_d": torch.tensor(2.5),
            "empty": torch.empty(0, 3), "param": torch.nn.Parameter(torch.randn(2, 2, generator=g))},
        "args": argparse.Namespace(lr=4e-3, model="lsnet_t", betas=(0.9, 0.999), dist=False, ema=None),
        "epoch": 299, "max_accuracy": 74.88, "size": torch.Size([2, 3]), "dtype": torch.float16,
        "nested": [1, (2.0, "x"), {"set": {1, 2}}, b"raw", None, True],
    }
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    ref, ours = torch.load(path, weights_only=False), load_pth(path)
    assert ours["args"]["model"] == "lsnet_t"
    ref["args"] = vars(ref["args"])
    _assert_same(ours, ref)
    assert len({round(float(v), 4) for v in ours["dtypes"]["f64"].ravel()}) == 6  # real, varied values
    assert ours["model"]["1.num_batches_tracked"].dtype == np.int64


def test_a_converted_checkpoint_needs_no_torch(tmp_path, monkeypatch):
    """The official-layout state dict read by read_checkpoint with torch unimportable."""
    from lsnet_jax.checkpoints.torch_io import read_checkpoint, write_state_dict

    rng = np.random.default_rng(1)
    sd = {"patch_embed.0.c.weight": rng.normal(size=(16, 3, 3, 3)).astype(np.float32),
          "patch_embed.0.bn.num_batches_tracked": np.array(7, np.int64)}
    write_state_dict(sd, tmp_path / "t.pth")
    torch.save({"model": {"w": torch.randn(3).bfloat16()}, "args": argparse.Namespace(x=1)}, tmp_path / "b.pth")
    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # import torch now fails
    got = read_checkpoint(tmp_path / "t.pth")
    assert got.keys() == sd.keys() and got["patch_embed.0.bn.num_batches_tracked"].dtype == np.int64
    np.testing.assert_array_equal(got["patch_embed.0.c.weight"], sd["patch_embed.0.c.weight"])
    assert read_checkpoint(tmp_path / "b.pth")["w"].dtype == np.float32


class _Payload:
    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Custom:
    def __init__(self):
        self.x = 1


def test_a_pickle_carrying_anything_but_tensors_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    payload = _Payload()
    payload.marker = marker
    cases = {
        "system": ({"model": {"w": torch.zeros(2)}, "x": payload}, "system"),
        "class": ({"model": {"w": torch.zeros(2)}, "cfg": _Custom()}, "_Custom"),
        "quantized": ({"q": torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8)}, "quantized tensor"),
    }
    for name, (obj, what) in cases.items():
        torch.save(obj, tmp_path / f"{name}.pth")
        with pytest.raises(RefusedPickle, match=what) as e:
            load_pth(tmp_path / f"{name}.pth")
        assert "was not run" in str(e.value) and "--trust-pickle" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def test_damaged_and_foreign_files_are_named(tmp_path):
    torch.save({"model": {"w": torch.randn(1000)}}, tmp_path / "ok.pth")
    data = (tmp_path / "ok.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.pth").write_text("not a checkpoint")
    torch.save({"w": torch.randn(3)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "script.pt")
    with zipfile.ZipFile(tmp_path / "ok.pth") as z, zipfile.ZipFile(tmp_path / "nodata.pth", "w") as out:
        for n in z.namelist():  # a storage record dropped from the archive
            if "/data/" not in n:
                out.writestr(n, z.read(n))
    for name, what in (("cut", "truncated or corrupt"), ("text", "not a torch.save checkpoint"),
                       ("legacy", "legacy serialization"), ("nodata", "data/0 is missing")):
        with pytest.raises(PthError, match=what) as e:
            load_pth(tmp_path / f"{name}.pth")
        assert str(tmp_path / f"{name}.pth") in str(e.value)
    with pytest.raises(PthError, match="TorchScript"):
        load_pth(tmp_path / "script.pt")
    with pytest.raises(FileNotFoundError):
        load_pth(tmp_path / "missing.pth")
