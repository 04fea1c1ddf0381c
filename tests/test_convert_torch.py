"""Conversion of official-layout PyTorch checkpoints, proven against the PyTorch reference."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs the [torch] extra")

import copy  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import convert_torch  # noqa: E402
from lsnet_jax import DEFAULT_CFGS, compiled, create_model, fold  # noqa: E402
from lsnet_jax.testing import diverse_images  # noqa: E402
from lsnet_jax.torch_reference import create_torch_model  # noqa: E402
from lsnet_jax.checkpoints.state import flat_state  # noqa: E402
from lsnet_jax.models.lsnet_official import jax_to_torch  # noqa: E402
from torch_utils import randomize_  # noqa: E402


CLASSIFIERS = sorted(DEFAULT_CFGS)  # the LSNet classifiers (list_models() also has the segmenters)


@pytest.fixture(scope="module", params=CLASSIFIERS)
def converted(request, tmp_path_factory):
    name = request.param
    tm = randomize_(create_torch_model(name), seed=CLASSIFIERS.index(name))
    d = tmp_path_factory.mktemp(name)
    torch.save({"model": tm.state_dict(), "epoch": 299}, d / f"{name}.pth")
    assert convert_torch.main([str(d / f"{name}.pth"), str(d / "jax")]) == 0
    return name, tm, d


def test_logits_match_pytorch(converted):
    name, tm, d = converted
    x = diverse_images(2, 224, seed=7)
    with torch.inference_mode():
        ref = tm(torch.from_numpy(x)).numpy()
    assert 3 < ref.std() < 30, "logits should be of order 10"
    xj = jnp.asarray(x.transpose(0, 2, 3, 1))
    model = create_model(name, pretrained=d / "jax")
    got = np.asarray(compiled(model)(xj))
    err = np.abs(got - ref).max() / ref.std()
    folded = np.asarray(compiled(create_model(name, pretrained=d / "jax", deploy=True))(xj))
    ferr = np.abs(folded - got).max() / ref.std()
    print(f"{name}: float32 |JAX - PyTorch| = {err:.2e} std, |folded - unfolded| = {ferr:.2e} std")
    assert err < 1e-5
    assert ferr < 5e-5


def test_logits_match_pytorch_with_measured_statistics(tmp_path):
    """BatchNorm statistics measured on images (unit-variance activations, as trained): the head's
    BatchNorm amplifies float32 rounding ~20x here, so PyTorch float32 itself sits ~1e-5 of the
    std from float64 (see ``randomize_``); the two float32 implementations agree to that floor."""
    name = "lsnet_t"
    tm = randomize_(create_torch_model(name), seed=11, stats="measured")
    torch.save({"model": tm.state_dict()}, tmp_path / "m.pth")
    assert convert_torch.main([str(tmp_path / "m.pth"), str(tmp_path / "jax")]) == 0
    x = diverse_images(2, 224, seed=7)
    with torch.inference_mode():
        ref = tm(torch.from_numpy(x)).numpy()
        ref64 = copy.deepcopy(tm).double()(torch.from_numpy(x.astype(np.float64))).numpy()
    got = np.asarray(create_model(name, pretrained=tmp_path / "jax")(jnp.asarray(x.transpose(0, 2, 3, 1))))
    floor = np.abs(ref - ref64).max() / ref.std()
    err = np.abs(got - ref).max() / ref.std()
    print(f"{name} (measured statistics): |JAX - PyTorch| = {err:.2e} std; PyTorch f32 vs f64 {floor:.2e}")
    assert err < max(3 * floor, 1e-6)


# every variant is held to float32 parity above; float64 (slow on CPU) proves the mapping exact on
# the two that exercise every kind of layer, the plain and the distillation head
@pytest.mark.parametrize("converted", ["lsnet_t", "lsnet_t_distill"], indirect=True)
def test_logits_match_pytorch_float64(converted):
    """In float64 the converted model and the PyTorch reference agree to rounding: the mapping
    (names, layouts, SKA channel tiling, attention heads) is exact, not just close."""
    name, tm, d = converted
    x = diverse_images(2, 224, seed=7).astype(np.float64)
    with torch.inference_mode():
        ref = copy.deepcopy(tm).double()(torch.from_numpy(x)).numpy()
    with jax.enable_x64(True):
        xj = jnp.asarray(x.transpose(0, 2, 3, 1))
        model = create_model(name, pretrained=d / "jax", dtype=jnp.float64)
        nnx.update(model, jax.tree.map(lambda a: a.astype(jnp.float64), nnx.state(model)))
        for deploy in (False, True):
            if deploy:
                model = fold(model)
            got = np.asarray(model.forward_head(model.forward_features(xj)), np.float64)
            err = np.abs(got - ref).max() / ref.std()
            print(f"{name}: float64 deploy={deploy} |JAX - PyTorch| = {err:.2e} std")
            assert err < 1e-9


def test_round_trip_is_exact(converted, tmp_path):
    name, tm, d = converted
    model = create_model(name, pretrained=d / "jax")
    back = tmp_path / "back.pth"
    assert convert_torch.main(["--to-torch", str(d / "jax"), str(back)]) == 0
    sd = torch.load(back)["model"]
    ref = tm.state_dict()
    assert sorted(sd) == sorted(ref)
    for k, v in ref.items():
        assert torch.equal(sd[k], v) or k.endswith("num_batches_tracked"), k
    # the exported state dict loads strictly into the reference, and converts back bit for bit
    create_torch_model(name).load_state_dict(sd, strict=True)
    assert convert_torch.main([str(back), str(tmp_path / "again")]) == 0
    again = flat_state(create_model(name, pretrained=tmp_path / "again"))
    for p, a in flat_state(model).items():
        np.testing.assert_array_equal(again[p], a, err_msg=str(p))
    assert set(jax_to_torch(flat_state(model))) == set(ref)


def test_an_existing_output_is_refused_unless_overwrite_and_written_whole(tmp_path, capsys):
    """A non-empty output is refused before anything is read or written (a user's files kept);
    with --overwrite it is replaced by a directory written beside it and renamed, with the
    modes of a plain write (0644 under umask 022), as is a --to-torch file."""
    import os
    import stat

    ckpt, out = tmp_path / "t.pth", tmp_path / "out"
    torch.save({"model": randomize_(create_torch_model("lsnet_t"), seed=5).state_dict()}, ckpt)
    (out / "orbax").mkdir(parents=True)
    (out / "orbax" / "mine.txt").write_text("a user's file")
    capsys.readouterr()
    assert convert_torch.main([str(ckpt), str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--overwrite" in err and str(out) in err
    assert (out / "orbax" / "mine.txt").read_text() == "a user's file"
    old = os.umask(0o022)
    try:
        assert convert_torch.main([str(ckpt), str(out), "--overwrite"]) == 0
        assert convert_torch.main(["--to-torch", str(out), str(tmp_path / "back.pth")]) == 0
    finally:
        os.umask(old)
    assert not (out / "orbax" / "mine.txt").exists() and (out / "model.safetensors").is_file()
    modes = {str(f.relative_to(tmp_path)): stat.S_IMODE(f.stat().st_mode)
             for f in [*out.rglob("*"), tmp_path / "back.pth"] if f.is_file()}
    assert set(modes.values()) == {0o644}, modes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.pth", "out", "t.pth"]  # no temporary left
    assert convert_torch.main(["--to-torch", str(out), str(tmp_path / "back.pth")]) == 2
    assert create_model("lsnet_t", pretrained=out).cfg.num_classes == 1000
