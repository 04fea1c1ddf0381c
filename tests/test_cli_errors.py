"""Every command-line tool against bad input, as a hostile tester would try it: each case ends
with one clear ``error:`` line (what is wrong, what to do), exit 2 for bad arguments or data and
1 for a failure, no traceback, and no partial output left behind. Images a user may give
``lsnet-predict`` that are odd but valid (alpha, grayscale, CMYK, 1x1, 8000x8000) are predicted."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_utils import single_device_env

ROOT = Path(__file__).resolve().parents[1]


def _one_error(err: str) -> str:
    """The one error message (from its ``error:`` line on), checked: one, and no traceback."""
    lines = err.splitlines()
    starts = [i for i, x in enumerate(lines) if x.startswith("error:")]
    assert len(starts) == 1 and "Traceback" not in err, err[-3000:]
    return "\n".join(lines[starts[0]:])


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    from lsnet_jax import create_model
    from lsnet_jax.checkpoints.state import flat_state
    from lsnet_jax.checkpoints.weights import save_weights

    d = tmp_path_factory.mktemp("weights") / "w"
    save_weights(d, flat_state(create_model("lsnet_t", num_classes=10, img_size=32, seed=1)),
                 {"model": "lsnet_t", "num_classes": 10, "img_size": 32})
    return d


def test_convert_answers_bad_checkpoints_and_outputs(tmp_path, capsys):
    torch = pytest.importorskip("torch", reason="writes PyTorch checkpoints")
    import convert_torch

    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "text.pth").write_text("this is not a checkpoint\n")
    real = {"model": {"patch_embed.0.c.weight": torch.randn(16, 3, 3, 3), "head.l.weight": torch.randn(10, 64)}}
    torch.save(real, tmp_path / "real.pth")
    data = (tmp_path / "real.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    torch.save({"model": {"conv1.weight": torch.randn(64, 3, 7, 7), "fc.weight": torch.randn(1000, 2048)}},
               tmp_path / "resnet.pth")
    (tmp_path / "a_file").write_text("x")
    out = tmp_path / "out"
    cases = {
        "missing path": ([str(tmp_path / "nope.pth"), str(out)], "no checkpoint at"),
        "empty file": ([str(tmp_path / "empty.pth"), str(out)], "empty.pth"),
        "text file named .pth": ([str(tmp_path / "text.pth"), str(out)], "text.pth"),
        "truncated checkpoint": ([str(tmp_path / "truncated.pth"), str(out)], "truncated.pth"),
        "another model's state dict": ([str(tmp_path / "resnet.pth"), str(out)], "resnet.pth"),
        "output under a file": ([str(tmp_path / "real.pth"), str(tmp_path / "a_file" / "out")], "a_file"),
    }
    for case, (argv, what) in cases.items():
        capsys.readouterr()
        assert convert_torch.main(argv) == 2, case
        assert what in _one_error(capsys.readouterr().err), case
        assert not out.exists(), case  # nothing written
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["empty.pth", "text.pth", "real.pth", "truncated.pth", "resnet.pth", "a_file"])  # no temporary left


def _png(mode: str, size: tuple[int, int]) -> bytes:
    rng = np.random.default_rng(0)
    channels = {"RGBA": 4, "L": 1, "RGB": 3}[mode]
    a = rng.integers(0, 256, (size[1], size[0], channels), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a[..., 0] if channels == 1 else a, mode).save(buf, format="PNG")
    return buf.getvalue()


def test_predict_answers_odd_and_bad_images(weights, tmp_path, capsys):
    from lsnet_jax.cli.predict import main as predict

    good = {"alpha.png": _png("RGBA", (40, 30)), "gray.png": _png("L", (50, 40)), "one_pixel.png": _png("RGB", (1, 1)),
            "huge.png": _png("L", (8000, 8000))}
    cmyk = io.BytesIO()
    Image.new("CMYK", (64, 48), (10, 200, 30, 5)).save(cmyk, format="JPEG")
    good["cmyk.jpg"] = cmyk.getvalue()
    for name, data in good.items():
        (tmp_path / name).write_bytes(data)
    bad = {"text.jpg": b"not an image\n", "zero.jpg": b""}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "a_dir").mkdir()
    files = [str(tmp_path / n) for n in [*good, *bad, "a_dir"]]
    capsys.readouterr()
    assert predict([*files, "--checkpoint", str(weights), "--json", str(tmp_path / "p.json")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "3 of 8 images skipped as unreadable" in err
    for n in [*bad, "a_dir"]:
        assert f"skipped {tmp_path / n}" in err
    got = json.loads((tmp_path / "p.json").read_text())
    assert [Path(p["file"]).name for p in got["predictions"]] == list(good)
    assert predict([str(tmp_path / "zero.jpg"), "--checkpoint", str(weights)]) == 1
    assert "none of the images" in _one_error(capsys.readouterr().err)
    assert predict([str(tmp_path / "gray.png"), "--checkpoint", str(tmp_path / "no_weights")]) == 2
    assert "no_weights" in _one_error(capsys.readouterr().err)


def test_evaluate_and_export_answer_missing_inputs(weights, tmp_path, capsys):
    from lsnet_jax.cli.evaluate import main as evaluate
    from lsnet_jax.cli.export import main as export

    assert evaluate(["--weights", str(weights), "--data", "imagenet_folder", "--data_dir", str(tmp_path)]) == 2
    assert "prepare_imagenet.py" in _one_error(capsys.readouterr().err)
    assert evaluate(["--weights", str(tmp_path / "none"), "--data", "lsnet_digits"]) == 2
    assert "none" in _one_error(capsys.readouterr().err)
    assert export(["--weights", str(tmp_path / "none"), "--out", str(tmp_path / "e")]) == 2
    assert "none" in _one_error(capsys.readouterr().err)
    assert not (tmp_path / "e").exists()


def test_train_answers_bad_command_lines_in_one_line(tmp_path):
    """The bad command lines of train.py, run as a user would (in parallel: each is a process)."""
    (tmp_path / "a_file").write_text("x")
    env = single_device_env() | {"PYTHONPATH": str(ROOT),
                                                                       "LSNET_JAX_HUGE_PAGES": "0"}
    base = ["--config", str(ROOT / "configs" / "digits.py"), "--workdir", str(tmp_path / "w"),
            f"--config.data.data_dir={tmp_path / 'tfds'}"]
    cases = {
        "unknown config key": (["--config.no_such_key=1"], "no_such_key"),
        "negative batch": (["--config.batch_size=-8"], "batch_size"),
        "zero epochs": (["--config.epochs=0"], "epochs"),
        "missing config file": (["--config", str(tmp_path / "nope.py")], "nope.py"),
        "unknown dataset": (["--config.data.name=lsnet_digit"], "'lsnet_digit' not found"),
        "workdir not writable": (["--workdir", str(tmp_path / "a_file" / "w")], "a_file"),
        "init weights missing": (["--config.init_weights=" + str(tmp_path / "no_weights")], "no_weights"),
        "teacher missing": (["--config.model=lsnet_t_distill", "--config.distillation.type=hard",
                             "--config.distillation.teacher_model=regnety_002",
                             "--config.distillation.teacher_checkpoint=" + str(tmp_path / "no_teacher")], "no_teacher"),
    }
    procs = {case: subprocess.Popen([sys.executable, str(ROOT / "train.py"), *base, *argv], env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for case, (argv, _) in cases.items()}
    for case, p in procs.items():
        out, err = p.communicate(timeout=300)
        assert p.returncode == 2, (case, out[-2000:], err[-2000:])
        assert cases[case][1] in _one_error(err), case
        if "dataset" in case:  # not the 464 lines of TFDS's catalogue, but the names nearest
            assert len(_one_error(err).splitlines()) == 1 and "did you mean lsnet_digits" in err, (case, err[-2000:])
    assert not (tmp_path / "w").exists()  # nothing was started


@pytest.mark.parametrize("tool,argv,flag", [
    ("predict", ["x.png", "--checkpoint", "w", "--topk", "-3"], "--topk"),
    ("predict", ["x.png", "--checkpoint", "w", "--img-size", "0"], "--img-size"),
    ("predict", ["x.png", "--checkpoint", "w", "--crop-pct", "1.5"], "--crop-pct"),
    ("predict", ["x.png", "--checkpoint", "w", "--overlay", "2"], "--overlay"),
    ("predict", ["x.png", "--checkpoint", "w", "--overlay", "nan"], "--overlay"),
    ("predict", ["x.png", "--checkpoint", "w", "--test-scale", "512", "0"], "--test-scale"),
    ("evaluate", ["--weights", "w", "--batch", "-5"], "--batch"),
    ("evaluate", ["--weights", "w", "--batch", "2.5"], "--batch"),
    ("evaluate", ["--weights", "w", "--workers", "-1"], "--workers"),
    ("evaluate", ["--weights", "w", "--img-size", "-224"], "--img-size"),
    ("evaluate", ["--weights", "w", "--crop-pct", "0"], "--crop-pct"),
    ("evaluate", ["--weights", "w", "--test-scale", "-1", "512"], "--test-scale"),
    ("export", ["--model", "lsnet_t", "--out", "x", "--batch", "-5"], "--batch"),
    ("export", ["--model", "lsnet_t", "--out", "x", "--img-size", "0"], "--img-size"),
    ("export_weights", ["--workdir", "w", "--out", "x", "--step", "-1"], "--step"),
    ("convert", ["a.pth", "out", "--img-size", "0"], "--img-size"),
])
def test_every_number_flag_is_checked_in_one_line(tool, argv, flag, capsys):
    """``lsnet-predict --topk -3`` and ``lsnet-eval --batch -5`` printed tracebacks from deep inside."""
    import importlib

    main = importlib.import_module(f"lsnet_jax.cli.{tool}").main
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert f"error: argument {flag}" in err.strip().splitlines()[-1], err


def test_every_path_flag_is_checked_in_one_line(weights, tmp_path, capsys):
    """Paths that do not exist, are files where folders are wanted, or cannot be written."""
    from lsnet_jax.cli.evaluate import main as evaluate
    from lsnet_jax.cli.export import main as export
    from lsnet_jax.cli.export_weights import main as export_weights
    from lsnet_jax.cli.predict import main as predict

    (tmp_path / "a_file").write_text("x")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    cases = {
        "predict --checkpoint missing": (predict, [str(tmp_path / "x.png"), "--checkpoint", str(tmp_path / "no")], "no"),
        "predict --json over the image": (predict, [str(tmp_path / "x.png"), "--checkpoint", str(weights), "--json",
                                                    str(tmp_path / "x.png")], "x.png"),
        "evaluate --weights missing": (evaluate, ["--weights", str(tmp_path / "no"), "--data", "lsnet_digits"], "no"),
        "evaluate --class_map missing": (evaluate, ["--weights", str(weights), "--data", "lsnet_digits", "--split",
                                                    "test", "--data_dir", str(tmp_path / "tfds"), "--class_map",
                                                    str(tmp_path / "no.json")], "no.json"),
        "predict --json below a file": (predict, [str(tmp_path / "x.png"), "--checkpoint", str(weights), "--json",
                                                  str(tmp_path / "a_file" / "p.json")], "a_file"),
        "evaluate --json a folder": (evaluate, ["--weights", str(weights), "--data", "lsnet_digits", "--json",
                                                str(tmp_path)], "is a directory"),
        "export --out below a file": (export, ["--weights", str(weights), "--out", str(tmp_path / "a_file" / "x")],
                                      "a_file"),
        "export_weights --workdir missing": (export_weights, ["--workdir", str(tmp_path / "no"), "--out",
                                                              str(tmp_path / "o")], "run.json"),
        "export_weights --out below a file": (export_weights, ["--workdir", str(tmp_path), "--out",
                                                               str(tmp_path / "a_file" / "o")], "a_file"),
    }
    for case, (main, argv, what) in cases.items():
        assert main(argv) == 2, case
        assert what in _one_error(capsys.readouterr().err), case


@pytest.mark.parametrize("script,argv,flag", [
    ("benchmark", ["--batch", "-5"], "--batch"), ("benchmark", ["--min-time", "0"], "--min-time"),
    ("bench_ops", ["--img-size", "0"], "--img-size"), ("bench_serve", ["--calls", "-1"], "--calls"),
    ("bench_input", ["--workers", "-2"], "--workers"), ("bench_saves", ["--every", "0"], "--every"),
    ("model_summary", ["--batch", "0"], "--batch"),
])
def test_the_scripts_number_flags_are_checked_in_one_line(script, argv, flag, capsys, monkeypatch):
    """The same flags on the developer scripts (benchmarks, model summary) as on the tools."""
    import importlib

    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *argv])  # for the mains that read sys.argv
    main = importlib.import_module(script).main
    with pytest.raises(SystemExit) as e:
        main(argv) if main.__code__.co_argcount else main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert f"error: argument {flag}" in err.strip().splitlines()[-1], err
