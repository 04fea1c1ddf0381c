"""``lsnet-predict``: top-k with class names on real image files."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from data_utils import pil_eval_transform, sample_photos
from lsnet_jax import create_model
from lsnet_jax.checkpoints.state import flat_state
from lsnet_jax.checkpoints.weights import save_weights
from lsnet_jax.cli.predict import main as predict_main
from lsnet_jax.inference.predict import class_names


def test_predict_cli_matches_the_model(tmp_path, capsys):
    size = 64
    model = create_model("lsnet_t", img_size=size, seed=5)
    save_weights(tmp_path / "w", flat_state(model), {"model": "lsnet_t", "num_classes": 1000, "img_size": size})
    files = [str(p) for p in sample_photos()]  # the JPEG photos scikit-learn ships
    png = tmp_path / "crop.png"
    Image.open(files[0]).crop((50, 60, 350, 260)).save(png)
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(open(files[1], "rb").read()[:2000])
    files += [str(png), str(bad)]
    out = tmp_path / "p.json"
    assert predict_main(files + ["--checkpoint", str(tmp_path / "w"), "--json", str(out)]) == 1  # one skipped
    text, err = capsys.readouterr()
    assert "skipped" in err and "truncated.jpg" in err and "1 of 4 images skipped" in err
    got = json.loads(out.read_text())
    assert [p["file"] for p in got["predictions"]] == files[:3] and got["skipped"] == [str(bad)]

    # reference: PIL resize + crop, numpy normalisation, the model's logits, float64 softmax
    names = class_names({}, 1000)
    batch = np.stack([pil_eval_transform(open(f, "rb").read(), size) for f in files[:3]])  # noqa: SIM115
    all_logits = np.asarray(model(batch), np.float64)
    for f, pred, logits in zip(files[:3], got["predictions"], all_logits):
        p = np.exp(logits - logits.max())
        p /= p.sum()
        top = np.argsort(-p)[:5]
        assert [t["class"] for t in pred["top"]] == top.tolist()
        np.testing.assert_allclose([t["prob"] for t in pred["top"]], p[top], rtol=1e-3, atol=1e-6)
        assert [t["name"] for t in pred["top"]] == [names[i] for i in top]
        assert f"{names[top[0]]} ({top[0]})" in text


def test_class_names():
    assert class_names({"class_names": [f"n{i:08d}" for i in range(1000)]}, 1000)[1].startswith("goldfish")
    assert class_names({"class_names": ["cat", "dog"]}, 2) == ["cat", "dog"]
    assert class_names({"class_names": ["cat", "dog"]}, 3) == ["class 0", "class 1", "class 2"]
    assert class_names({}, 10)[9] == "class 9"


def test_predict_reports_what_is_wrong(tmp_path, capsys):
    assert predict_main([str(tmp_path / "missing.jpg"), "--checkpoint", str(tmp_path)]) == 2
    assert "give --model" in capsys.readouterr().err
    img = tmp_path / "x.jpg"
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(buf, format="JPEG")
    img.write_bytes(buf.getvalue())
    assert predict_main([str(img), "--checkpoint", str(tmp_path / "nothing"), "--model", "lsnet_t"]) == 2
    assert "no weights at" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict_main(["--checkpoint", "w"])  # no image given
