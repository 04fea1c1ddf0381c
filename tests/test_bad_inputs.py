"""What a user types cannot delete or replace what a command reads: an output that is, holds or lies
inside an input is refused (with or without --overwrite), existing outputs are replaced only with
--overwrite, images of one name do not overwrite each other's label maps, and a killed writer's
temporary is removed by the next write. Every case is refused before any work, in one line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def _refused(capsys, *what: str) -> str:
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err
    for w in what:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def _run_dir(root: Path) -> Path:
    """A training run's directory as train.py leaves it, with a real (tiny) checkpoint: exported,
    it gives weights, so an export over the run would have replaced it."""
    from lsnet_jax.checkpoints import run as run_checkpoints

    w = root / "run"
    (w / "tensorboard").mkdir(parents=True)
    state = {"params": {"w": np.arange(3, dtype=np.float32)}, "batch_stats": {"m": np.ones(2, np.float32)}}
    for d in ("checkpoints", "best"):
        run_checkpoints.save(run_checkpoints.make_manager(w / d, 3, async_save=False), 10, state, None)
    (w / "run.json").write_text(json.dumps({"model": "lsnet_t", "num_classes": 10, "img_size": 32}))
    for f in ("log.txt", "steps.jsonl", "curves.png"):
        (w / f).write_text(f"the run's {f}\n")
    return w


def test_export_weights_never_writes_over_the_run_it_reads(tmp_path, capsys):
    """``--out W --overwrite`` deleted the whole run and printed "wrote W"; ``--out W/checkpoints``
    every checkpoint."""
    from lsnet_jax.cli.export_weights import main as export_weights

    w = _run_dir(tmp_path)
    before = _snapshot(w)
    for out in (w, w / "checkpoints", w / "checkpoints" / "10", w / "best", w / "log.txt", w / "run.json",
                w / "checkpoints" / "10" / "weights"):
        for extra in ([], ["--overwrite"]):
            assert export_weights(["--workdir", str(w), "--out", str(out), *extra]) == 2, (out, extra)
            _refused(capsys, "which this command reads", "Choose an output outside")
    assert _snapshot(w) == before
    # a new folder inside the run's directory is an output like any other (notebook 02 writes W/weights)
    from lsnet_jax.checkpoints.run import RUN_ENTRIES
    from lsnet_jax.checkpoints.weights import check_output

    check_output(w / "weights", False, [w / e for e in RUN_ENTRIES])
    assert export_weights(["--workdir", str(w), "--out", str(w / "weights")]) == 0
    assert (w / "weights" / "model.safetensors").is_file() and (w / "run.json").is_file()


def test_convert_never_writes_over_its_checkpoint(tmp_path, capsys):
    """``lsnet-convert D/x.pth D --overwrite`` deleted ``x.pth`` (here a .safetensors: no torch needed)."""
    from lsnet_jax.cli.convert import main as convert

    from safetensors.numpy import save_file

    from lsnet_jax.models.lsnet_official import expected_jax_shapes, jax_to_torch

    d = tmp_path / "d"
    d.mkdir()
    rng = np.random.default_rng(0)
    save_file(jax_to_torch({p: rng.normal(0, 0.05, s).astype(np.float32) for p, s in
                            expected_jax_shapes("lsnet_t").items()}), str(d / "x.safetensors"))  # converts
    link = tmp_path / "link"
    link.symlink_to(d)
    before = _snapshot(d)
    x = str(d / "x.safetensors")
    for argv in ([x, str(d), "--overwrite"], [x, x, "--overwrite"],
                 [x, str(link), "--overwrite"],  # another name of the same folder
                 ["--to-torch", str(d), str(d / "back.pth")], ["--to-torch", str(d), str(tmp_path), "--overwrite"]):
        assert convert(argv) == 2, argv
        _refused(capsys, "which this command reads")
    assert _snapshot(d) == before


@pytest.fixture
def seg_weights(tmp_path) -> Path:
    """A segmenter's weights directory as predict and export read it first (its config.json)."""
    w = tmp_path / "segw"
    w.mkdir()
    (w / "config.json").write_text(json.dumps({"model": "lsnet_t_semfpn", "num_classes": 3, "task": "segmentation"}))
    return w


def test_predict_never_replaces_an_image_or_an_earlier_label_map(seg_weights, tmp_path, capsys):
    from lsnet_jax.cli.predict import main as predict

    segin = tmp_path / "segin"
    segin.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), np.uint8)).save(segin / "photo.png")
    before = _snapshot(segin)
    # its label map would be segin/photo.png: the photo
    assert predict([str(segin / "photo.png"), "--checkpoint", str(seg_weights), "--out-dir", str(segin)]) == 2
    _refused(capsys, "photo.png", "which this command reads")
    assert predict([str(segin / "photo.png"), "--checkpoint", str(seg_weights), "--out-dir", str(segin),
                    "--overwrite"]) == 2
    _refused(capsys, "photo.png")
    # the report over the weights' config.json
    assert predict([str(segin / "photo.png"), "--checkpoint", str(seg_weights), "--json",
                    str(seg_weights / "config.json")]) == 2
    _refused(capsys, "config.json")
    assert _snapshot(segin) == before
    # label maps into a folder that cannot be made (below a file): known before any image is read
    (tmp_path / "a_file").write_text("x")
    assert predict([str(segin / "photo.png"), "--checkpoint", str(seg_weights), "--out-dir",
                    str(tmp_path / "a_file" / "seg")]) == 2
    _refused(capsys, "cannot write label maps", "is a file")
    # an earlier prediction is replaced only with --overwrite
    out = tmp_path / "out"
    out.mkdir()
    (out / "photo.png").write_bytes(b"an earlier label map")
    assert predict([str(segin / "photo.png"), "--checkpoint", str(seg_weights), "--out-dir", str(out)]) == 2
    _refused(capsys, "exist already", "--overwrite")
    assert (out / "photo.png").read_bytes() == b"an earlier label map"


def test_images_of_one_name_get_label_maps_of_their_own(tmp_path):
    from lsnet_jax.cli.predict import label_paths

    for d in ("a", "b", "c/d"):
        (tmp_path / d).mkdir(parents=True)
    out = tmp_path / "seg"
    assert label_paths([str(tmp_path / "a" / "x.jpg"), str(tmp_path / "b" / "y.png")], out) == [
        out / "x.png", out / "y.png"]
    assert label_paths([str(tmp_path / "a" / "x.jpg"), str(tmp_path / "b" / "x.png"), str(tmp_path / "c/d/x.gif")],
                       out) == [out / "a" / "x.png", out / "b" / "x.png", out / "c" / "d" / "x.png"]
    assert label_paths([str(tmp_path / "a" / "x.jpg"), str(tmp_path / "a" / "x.png")], out) == [
        out / "x_jpg.png", out / "x_png.png"]


def test_export_checks_its_output_before_the_work(tmp_path, capsys):
    """``lsnet-export`` replaced an existing file without asking, wrote a SavedModel into the
    weights it read, and found an unwritable output only after the whole export."""
    from lsnet_jax.cli.export import main as export

    w = tmp_path / "w"
    w.mkdir()
    (w / "config.json").write_text(json.dumps({"model": "lsnet_t", "num_classes": 10, "img_size": 32}))
    (tmp_path / "old.jaxexport").write_bytes(b"an earlier export")
    (tmp_path / "a_file").write_text("x")
    ro = tmp_path / "read_only"
    ro.mkdir()
    ro.chmod(0o555)
    cases = {
        "inside the weights": (["--weights", str(w), "--out", str(w / "sm"), "--format", "savedmodel"],
                               "which this command reads"),
        "the weights themselves": (["--weights", str(w), "--out", str(w), "--overwrite"], "which this command reads"),
        "an existing file": (["--weights", str(w), "--out", str(tmp_path / "old.jaxexport")], "--overwrite"),
        "below a file": (["--weights", str(w), "--out", str(tmp_path / "a_file" / "x.onnx")], "is a file"),
    }
    if os.geteuid() != 0:  # root writes anywhere
        cases["a read-only folder"] = (["--weights", str(w), "--out", str(ro / "x.onnx"), "--format", "onnx"],
                                       "not writable")
    try:
        for case, (argv, what) in cases.items():
            assert export(argv) == 2, case
            _refused(capsys, what)
    finally:
        ro.chmod(0o755)
    assert (tmp_path / "old.jaxexport").read_bytes() == b"an earlier export"
    assert sorted(p.name for p in w.iterdir()) == ["config.json"]


def test_evaluate_never_writes_its_report_over_the_weights(tmp_path, capsys):
    from lsnet_jax.cli.evaluate import main as evaluate

    w = tmp_path / "w"
    w.mkdir()
    (w / "config.json").write_text('{"model": "lsnet_t"}')
    assert evaluate(["--weights", str(w), "--data", "lsnet_digits", "--json", str(w / "config.json")]) == 2
    _refused(capsys, "config.json", "which this command reads")
    assert (w / "config.json").read_text() == '{"model": "lsnet_t"}'


def test_prepare_never_builds_where_rebuilding_would_delete_the_source(tmp_path, capsys):
    """The dataset directory a rebuild removes must not hold the images it is built from."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import prepare_imagenet

    data = tmp_path / "data"
    train = data / "imagenet_folder" / "1.0.0" / "train"
    (train / "cat").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(train / "cat" / "a.jpg")
    before = _snapshot(data)
    assert prepare_imagenet.main(["--train_dir", str(train), "--data_dir", str(data)]) == 2
    _refused(capsys, "could delete the source")
    assert _snapshot(data) == before


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    """A killed ``lsnet-convert`` left a 55 MB hidden temporary that nothing removed."""
    from lsnet_jax.checkpoints.weights import save_weights

    host = socket.gethostname()
    dead = tmp_path / f".w.tmp-{host}-{_dead_pid()}"
    (dead / "orbax").mkdir(parents=True)
    (dead / "model.safetensors").write_bytes(os.urandom(1024))
    dead_file = tmp_path / f".w.old-{host}-{_dead_pid()}"
    dead_file.write_bytes(b"x")
    live = tmp_path / f".w.tmp-{host}-{os.getppid()}"  # a writer still running
    other_host = tmp_path / f".w.tmp-elsewhere-{_dead_pid()}"  # on a shared disk: not ours to judge
    for d in (live, other_host):
        d.mkdir()
    save_weights(tmp_path / "w", {("a",): np.ones(3, np.float32)}, {"model": "x"})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["w", live.name, other_host.name]), names


def test_weights_that_are_not_float_or_not_finite_are_refused(tmp_path, capsys):
    """A safetensors file whose tensors are int8 converted with exit 0 into weights whose kernels
    were zero. Every read of weights checks their dtypes and values: the converter's and
    ``create_model(pretrained=...)``'s."""
    from safetensors.numpy import save_file

    from lsnet_jax import create_model
    from lsnet_jax.checkpoints.state import CheckpointValueError, flat_state, path_str
    from lsnet_jax.cli.convert import main as convert
    from lsnet_jax.models.lsnet_official import expected_jax_shapes, jax_to_torch

    rng = np.random.default_rng(0)
    sd = jax_to_torch({p: rng.normal(0, 0.05, s).astype(np.float32) for p, s in expected_jax_shapes("lsnet_t").items()})
    quantised = {k: (np.round(v * 127).astype(np.int8) if v.dtype == np.float32 else v) for k, v in sd.items()}
    save_file(quantised, str(tmp_path / "int8.safetensors"))
    nan = dict(sd)
    nan["head.l.weight"] = nan["head.l.weight"].copy()
    nan["head.l.weight"][3, 5] = np.nan
    save_file(nan, str(tmp_path / "nan.safetensors"))
    for name, what in (("int8", "are not floating point: "), ("nan", "hold NaN or inf: head.l.weight")):
        assert convert([str(tmp_path / f"{name}.safetensors"), str(tmp_path / name)]) == 2, name
        assert what in capsys.readouterr().err, name
        assert not (tmp_path / name).exists()
    # our own weights, damaged after they were written
    save_file({path_str(p): a for p, a in flat_state(create_model("lsnet_t", num_classes=10, img_size=32)).items()}
              | {"head.l.kernel": np.zeros((384, 10), np.int8)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointValueError, match=r"1 weights are not floating point: head.l.kernel \(int8\)"):
        create_model("lsnet_t", pretrained=tmp_path / "w.safetensors", num_classes=10, img_size=32)
