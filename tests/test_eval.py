"""Evaluation sets: label mappings, metrics, and the evaluation CLI on tiny TFDS datasets that carry
the real names, versions and features of imagenet2012, imagenet_a, imagenet_r, imagenet_sketch and
imagenet2012_corrupted (written by subclasses of the real TFDS builders, read by the real code)."""

from __future__ import annotations

import importlib
import io
import json

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from data_utils import pil_eval_transform, sample_photos
from lsnet_jax import create_model
from lsnet_jax.inference import eval_sets
from lsnet_jax.data import source
from lsnet_jax.checkpoints.state import flat_state
from lsnet_jax.checkpoints.weights import save_weights
from lsnet_jax.cli.evaluate import main as evaluate_main
from lsnet_jax.inference.metrics import hits


# the CLI's bookkeeping is under test, not the network: LSNet-T at depth (0, 1, 1, 1) (every stage, one
# block each), recorded in the weights' config as a training run records config.depth
SHALLOW = {"depth": [0, 1, 1, 1]}


def _naive_hits(logits: np.ndarray, labels: np.ndarray, classes) -> tuple[list[bool], list[bool]]:
    """Top-1/top-5 by a Python loop: rank the allowed classes by logit, look for the label."""
    allowed = list(range(logits.shape[1])) if classes is None else list(classes)
    t1, t5 = [], []
    for row, y in zip(logits, labels):
        ranked = sorted(allowed, key=lambda c: -row[c])
        t1.append(ranked[0] == y)
        t5.append(y in ranked[:5])
    return t1, t5


@pytest.mark.parametrize("classes", [None, eval_sets.IMAGENET_A_CLASSES, eval_sets.IMAGENET_R_CLASSES])
def test_hits_restrict_to_the_set_classes(classes):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(64, 1000)).astype(np.float32)
    pool = np.arange(1000) if classes is None else np.asarray(classes)
    labels = rng.choice(pool, 64)
    # make half the labels the best allowed class and a few the 2nd-5th, so hits are not all zero
    allowed = logits[:, pool]
    order = np.argsort(-allowed, axis=1)
    labels[:32] = pool[order[:32, 0]]
    labels[32:40] = pool[order[32:40, 3]]
    if classes is not None:
        labels[40] = 0 if 0 not in classes else 5  # a label outside the set is never a hit
        logits[40, labels[40]] = 100.0
    t1, t5 = hits(jnp.asarray(logits), jnp.asarray(labels), classes)
    n1, n5 = _naive_hits(logits, labels, classes)
    assert np.asarray(t1).tolist() == n1 and np.asarray(t5).tolist() == n5
    assert sum(n1) >= 32 and sum(n5) >= 40
    if classes is not None:
        assert not n5[40]
        # without the restriction the global arg-max (mostly outside the 200) would decide
        assert np.asarray(hits(jnp.asarray(logits), jnp.asarray(labels))[0]).sum() < sum(n1)


def test_class_lists_and_names():
    for cls in (eval_sets.IMAGENET_A_CLASSES, eval_sets.IMAGENET_R_CLASSES):
        assert len(cls) == len(set(cls)) == 200 and list(cls) == sorted(cls) and max(cls) < 1000
    names = eval_sets.imagenet_class_names()
    assert len(names) == 1000 and names[0].startswith("tench") and names[999].startswith("toilet tissue")
    assert names[eval_sets.IMAGENET_A_CLASSES[0]] == "stingray"
    assert names[eval_sets.IMAGENET_R_CLASSES[0]].startswith("goldfish")


def test_mce_on_a_known_error_table():
    alex = eval_sets.ALEXNET_ERR
    # every corruption at exactly AlexNet's error: every CE is 100, mCE is 100
    same = {f"{c}_{s}": 100 * (1 - alex[c]) for c in alex for s in eval_sets.SEVERITIES}
    assert eval_sets.mce(same) == pytest.approx(100.0)
    # gaussian noise at 10..50 % error over severities 1..5, the rest at half AlexNet's error
    table = {f"{c}_{s}": 100 * (1 - alex[c] / 2) for c in alex for s in eval_sets.SEVERITIES}
    for s, err in zip(eval_sets.SEVERITIES, (0.1, 0.2, 0.3, 0.4, 0.5)):
        table[f"gaussian_noise_{s}"] = 100 * (1 - err)
    ce_gauss = 100 * (0.1 + 0.2 + 0.3 + 0.4 + 0.5) / (5 * 0.886428)  # = 33.8437...
    expected = (ce_gauss + 14 * 50.0) / 15
    assert eval_sets.mce(table) == pytest.approx(expected, rel=1e-9)
    ces = eval_sets.corruption_errors(table | {f"saturate_{s}": 80.0 for s in eval_sets.SEVERITIES})
    assert ces["gaussian_noise"]["ce"] == pytest.approx(33.84369, rel=1e-6)
    assert ces["gaussian_noise"]["error"] == pytest.approx(30.0)
    assert ces["saturate"] == pytest.approx({"error": 20.0})  # extra corruptions: no AlexNet CE
    with pytest.raises(ValueError, match="severities \\[3\\]"):
        eval_sets.corruption_errors({k: v for k, v in table.items() if k != "fog_3"})
    with pytest.raises(ValueError, match="missing \\['fog'\\]"):
        eval_sets.mce({k: v for k, v in table.items() if not k.startswith("fog")})
    with pytest.raises(ValueError, match="unknown ImageNet-C corruption"):
        eval_sets.imagenet_c_sets(["fogg"])


# ----------------------------------------------------------------------------- mock TFDS datasets

_BUILDERS = {  # TFDS name -> module of the real builder
    "imagenet2012": "tensorflow_datasets.datasets.imagenet2012.imagenet2012_dataset_builder",
    "imagenet_a": "tensorflow_datasets.datasets.imagenet_a.imagenet_a_dataset_builder",
    "imagenet_r": "tensorflow_datasets.datasets.imagenet_r.imagenet_r_dataset_builder",
    "imagenet_sketch": "tensorflow_datasets.datasets.imagenet_sketch.imagenet_sketch_dataset_builder",
    "imagenet2012_corrupted": "tensorflow_datasets.datasets.imagenet2012_corrupted."
                              "imagenet2012_corrupted_dataset_builder",
}


def write_mock(tfds_name: str, split: str, examples: list[tuple[bytes, int]], data_dir: str) -> None:
    """A prepared array_record dataset under the real builder's name, version, config and features."""
    name, _, config = tfds_name.partition("/")
    real = importlib.import_module(_BUILDERS[name]).Builder

    class Mock(real, skip_registration=True):
        def _split_generators(self, dl_manager):
            return {split: self._generate_examples()}

        def _generate_examples(self, *args, **kwargs):
            for i, (jpeg, label) in enumerate(examples):
                yield f"{i:04d}", {"image": io.BytesIO(jpeg), "label": label, "file_name": f"{i:04d}.JPEG"}

    Mock.name, Mock.__module__ = name, real.__module__  # the real builder's code directory
    b = Mock(data_dir=data_dir, config=config or None, file_format="array_record")
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def test_eval_cli_on_every_set(tmp_path, capsys):
    """Labels are chosen from the model's own predictions (computed here in one batch, from a PIL
    resize + crop), so each set has a known mix of hits; the CLI must report exactly those."""
    size = 64
    model = create_model("lsnet_t", img_size=size, seed=3, **SHALLOW)
    save_weights(tmp_path / "w", flat_state(model), {"model": "lsnet_t", "num_classes": 1000, "img_size": size,
                                                    "model_config": SHALLOW})
    rng = np.random.default_rng(0)
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in sample_photos()]

    def image(i: int, square: bool) -> bytes:
        ph = photos[i % len(photos)]
        h, w = (224, 224) if square else (int(rng.integers(150, 300)), int(rng.integers(150, 300)))
        y, x = int(rng.integers(0, ph.shape[0] - h)), int(rng.integers(0, ph.shape[1] - w))
        noise = rng.normal(0, 20, (h, w, 3))
        return _jpeg(np.clip(ph[y:y + h, x:x + w] + noise, 0, 255).astype(np.uint8))

    sets = [eval_sets.EVAL_SETS[k] for k in ("imagenet", "imagenet_a", "imagenet_r", "imagenet_sketch")]
    sets += eval_sets.imagenet_c_sets(["fog"])
    jpegs = {s.key: [image(7 * k + i, s.tfds_name.startswith("imagenet2012_corrupted")) for i in range(6)]
             for k, s in enumerate(sets)}
    batch = np.stack([pil_eval_transform(j, size) for s in sets for j in jpegs[s.key]])
    all_logits = np.asarray(model(jnp.asarray(batch))).reshape(len(sets), 6, -1)
    expected = {}
    for k, (s, logits) in enumerate(zip(sets, all_logits)):
        pool = np.arange(1000) if s.classes is None else np.asarray(s.classes)
        ranked = pool[np.argsort(-logits[:, pool], axis=1)]
        labels = [int(ranked[0, 0]), int(ranked[1, 0]), int(ranked[2, 2]), int(ranked[3, 4]),
                  int(ranked[4, 9]), int(ranked[5, 0])]  # top-1 x3, top-5 x2, a miss
        files = jpegs[s.key]
        n = 6
        if k % 2:  # the last image replaced by an unreadable one, which must be skipped and counted
            files, n = files[:5] + [files[0][:300]], 5
        t1, t5 = _naive_hits(logits[:n], np.asarray(labels[:n]), s.classes)
        expected[s.key] = (100 * np.mean(t1), 100 * np.mean(t5), n, k % 2)
        write_mock(s.tfds_name, s.split, list(zip(files, labels)), str(tmp_path / "tfds"))

    out = tmp_path / "r.json"
    argv = ["--weights", str(tmp_path / "w"), "--data_dir", str(tmp_path / "tfds"), "--batch", "8",
            "--sets", "imagenet,imagenet_a,imagenet_r,imagenet_sketch,imagenet_c", "--json", str(out)]
    # ImageNet-C needs every severity of a corruption: only fog was written, so the CLI says which
    assert evaluate_main(argv + ["--corruptions", "fog,snow"]) == 2
    err = capsys.readouterr().err
    assert "5 of 14 eval sets are not available" in err and "imagenet2012_corrupted/snow_1" in err
    assert evaluate_main(argv + ["--corruptions", "fog"]) == 0
    got = json.loads(out.read_text())
    for key, (top1, top5, n, skipped) in expected.items():
        r = got["sets"][key]
        assert (r["images"], r["skipped"]) == (n, skipped), key
        assert r["top1"] == pytest.approx(top1, abs=1e-4), key
        assert r["top5"] == pytest.approx(top5, abs=1e-4), key
    fog = [100 - expected[f"imagenet_c/fog_{s}"][0] for s in eval_sets.SEVERITIES]
    assert got["imagenet_c"]["corruptions"]["fog"]["ce"] == pytest.approx(
        sum(fog) / (5 * 100 * eval_sets.ALEXNET_ERR["fog"]) * 100, rel=1e-6)
    assert "mce" not in got["imagenet_c"]  # 1 of 15 corruptions: no mCE claimed


def test_eval_sets_need_an_imagenet_head(tmp_path, capsys):
    model = create_model("lsnet_t", num_classes=10, img_size=64)
    save_weights(tmp_path / "w", flat_state(model), {"model": "lsnet_t", "num_classes": 10, "img_size": 64})
    write_mock("imagenet_a", "test", [(_jpeg(np.full((80, 80, 3), 90, np.uint8)), 6)] * 2, str(tmp_path / "d"))
    assert evaluate_main(["--weights", str(tmp_path / "w"), "--data_dir", str(tmp_path / "d"),
                          "--sets", "imagenet_a"]) == 2
    assert "10-class head" in capsys.readouterr().err
    with pytest.raises(source.DatasetNotFoundError, match="tfds build imagenet_r"):
        source.open_source("imagenet_r", "test", str(tmp_path / "d"))


def test_a_head_of_other_classes_is_refused_unless_mapped(tmp_path, capsys):
    """10-class weights on a 3-class dataset: refused before anything is compiled (before: top-1 0.0,
    exit 0); with --class_map (a file, or 'names' by the weights' class_names) the dataset's classes
    are scored among their head classes, as a Python loop over the model's own logits says."""
    from data_utils import build_folder_dataset, make_folder_tree

    size = 64
    names = [f"c{i}" for i in (5, 2, 7, 0, 9, 1, 3, 8, 4, 6)]  # the dataset's c0, c1, c2 are head 3, 5, 1
    model = create_model("lsnet_t", num_classes=10, img_size=size, seed=4, **SHALLOW)
    save_weights(tmp_path / "w", flat_state(model), {"model": "lsnet_t", "num_classes": 10, "img_size": size,
                                                    "class_names": names, "model_config": SHALLOW})
    tree = make_folder_tree(tmp_path / "tree", n_train=1, n_val=3, corrupt=False)
    build_folder_dataset(tree, tmp_path / "tfds")
    capsys.readouterr()  # TFDS's progress bars
    argv = ["--weights", str(tmp_path / "w"), "--data", "imagenet_folder", "--data_dir", str(tmp_path / "tfds"),
            "--batch", "8", "--json", str(tmp_path / "r.json")]
    assert evaluate_main(argv) == 2
    err = capsys.readouterr().err
    assert "10-class head" in err and "3 classes" in err and "--class_map" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r.json").exists()

    files = sorted((tree / "val").rglob("*.JPEG"), key=lambda p: str(p.relative_to(tree / "val")))
    labels = np.asarray([int(p.parent.name[1:]) for p in files])
    logits = np.asarray(model(jnp.asarray(np.stack([pil_eval_transform(p.read_bytes(), size) for p in files]))))
    mapping = (3, 5, 1)
    t1, t5 = _naive_hits(logits, np.asarray(mapping)[labels], mapping)
    (tmp_path / "map.json").write_text(json.dumps(list(mapping)))
    assert evaluate_main(argv + ["--class_map", str(tmp_path / "map.json")]) == 0
    got = json.loads((tmp_path / "r.json").read_text())
    assert got["class_map"] == list(mapping)
    r = got["sets"]["imagenet_folder/validation"]
    assert r["images"] == 9 and r["top1"] == pytest.approx(100 * np.mean(t1), abs=1e-4)
    assert r["top5"] == 100.0 and np.mean(t5) == 1.0  # 3 classes: always among the top 5
    from lsnet_jax.cli.evaluate import class_map

    assert class_map("names", ["c0", "c1", "c2"], 10, names) == mapping  # the same map, by name
    with pytest.raises(ValueError, match="not among the weights' class_names"):
        class_map("names", ["c0", "dog"], 10, names)
    (tmp_path / "bad.json").write_text("[3, 5]")
    assert evaluate_main(argv + ["--class_map", str(tmp_path / "bad.json")]) == 2
    assert "for each of the 3 dataset classes" in capsys.readouterr().err
