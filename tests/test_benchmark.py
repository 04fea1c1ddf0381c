"""scripts/benchmark.py end to end at a tiny size: one row per implementation and mode in the table,
JSON and CSV with the fields users script against, the printed JAX / PyTorch ratios, and the
``% peak`` figure against the matrix product it measured first."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import benchmark  # noqa: E402


def test_benchmark_rows_files_and_ratios(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1:glibc.malloc.arena_max=4")  # as set at start
    js, cs = tmp_path / "bench.json", tmp_path / "bench.csv"
    rc = benchmark.main(["--model", "lsnet_t", "--batch", "2", "--img-size", "64", "--deploy", "--unfolded",
                         "--torch", "--min-time", "0.05", "--warmup", "1",
                         "--json", str(js), "--csv", str(cs)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "GLIBC_TUNABLES=glibc.malloc.hugetlb=1:glibc.malloc.arena_max=4 (JAX and PyTorch alike" in out
    rows = json.loads(js.read_text())
    assert [(r["impl"], r["mode"]) for r in rows] == [("jax", "deploy"), ("jax", "unfolded"),
                                                      ("torch-ref", "deploy"), ("torch-ref", "unfolded")]
    assert [r.get("kernels") for r in rows] == ["xla_cpu", "xla_cpu", None, None]  # what "auto" is on CPU
    for r in rows:
        assert (r["model"], r["batch"], r["dtype"], r["img_size"]) == ("lsnet_t", 2, "float32", 64)
        assert r["deploy"] == (r["mode"] == "deploy")
        assert r["images_per_s"] == pytest.approx(2 / (r["ms_per_batch"] / 1000))
        assert r["glibc_tunables"] == "glibc.malloc.hugetlb=1:glibc.malloc.arena_max=4"  # both frameworks' allocator
    # the folded model has fewer parameters (BN and RepVGG branches folded), in both frameworks
    assert rows[0]["params"] < rows[1]["params"] and rows[2]["params"] < rows[3]["params"]
    peak = float(re.search(r"float32 (\d+) GFLOP/s", out).group(1))
    for r in rows[:2]:
        assert r["matmul_peak_gflops"] == pytest.approx(peak, abs=0.5)
        assert r["pct_of_matmul_peak"] == pytest.approx(
            100 * r["gflops_per_image"] * r["images_per_s"] / r["matmul_peak_gflops"])
        assert 0 < r["pct_of_matmul_peak"] < 100
    for mode, (j, t) in {"deploy": (rows[0], rows[2]), "unfolded": (rows[1], rows[3])}.items():
        printed = re.search(rf"lsnet_t {mode} float32 batch 2: JAX / torch-ref = ([0-9.]+)x", out)
        assert float(printed.group(1)) == pytest.approx(j["images_per_s"] / t["images_per_s"], abs=0.006)
    with open(cs, newline="") as f:
        table = list(csv.DictReader(f))
    assert [(r["impl"], r["mode"], float(r["images_per_s"])) for r in table] == [
        (r["impl"], r["mode"], pytest.approx(r["images_per_s"])) for r in rows]


def test_bench_ops_times_each_shape_and_forms_agree(tmp_path, capsys):
    import bench_ops

    js = tmp_path / "ops.json"
    assert bench_ops.main(["--model", "lsnet_b", "--batch", "2", "--img-size", "64", "--min-time", "0.01",
                           "--json", str(js)]) == 0
    rows = json.loads(js.read_text())
    # LSNet-B at 64 px: stages at 8, 4, 2, 1 px; every stage has blocks
    where = list(dict.fromkeys(r["where"] for r in rows))
    assert where == ["RepVGG stage 0", "LKP 7x7 stage 0", "SKA stage 0", "downsample 1", "RepVGG stage 1",
                     "LKP 7x7 stage 1", "SKA stage 1", "downsample 2", "RepVGG stage 2", "LKP 7x7 stage 2",
                     "SKA stage 2", "downsample 3", "RepVGG stage 3", "attention q 3x3"]
    first = {w: next(r for r in rows if r["where"] == w) for w in where}
    assert (first["LKP 7x7 stage 0"]["shape"], first["LKP 7x7 stage 0"]["kernel"]) == ([2, 8, 8, 64], 7)  # half C
    assert (first["SKA stage 0"]["shape"], first["SKA stage 0"]["kernel"]) == ([2, 8, 8, 128], "G=16")  # C/8 groups
    assert (first["downsample 1"]["shape"], first["downsample 1"]["stride"]) == ([2, 8, 8, 128], 2)
    for w, base in first.items():
        others = [r for r in rows if r["where"] == w and r is not base]
        assert base["form"] == "xla_cpu" and base["fwd_ms"] > 0
        # depthwise: the reference (grouped conv); SKA: the reference and patches
        assert [r["form"] for r in others] == (["reference", "patches + einsum"] if w.startswith("SKA")
                                               else ["reference (grouped conv)"])
        for other in others:
            assert other["fwd_bwd_ms"] > 0
            assert other["max_rel_diff"] < 1e-5, other  # they compute the same
    assert "SKA stage 0" in capsys.readouterr().out


def test_benchmarks_import_without_the_data_stack():
    """The GPU machines' image has jax, flax, optax and torch but not grain, TensorFlow Datasets or
    ml_collections: the benchmarks and the model must import there (the step and the kernels need
    none of them), while the pipeline itself still says what it lacks."""
    code = textwrap.dedent("""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in ("grain", "tensorflow_datasets", "ml_collections", "tensorflow"):
                    raise ImportError("not installed: " + name)
        sys.meta_path.insert(0, Block())
        sys.path.insert(0, "scripts")
        import benchmark, bench_ops, lsnet_jax.data.transforms, lsnet_jax.train.steps, lsnet_jax.models.fold
        try:
            import lsnet_jax.data.pipeline
        except ImportError as e:
            print("pipeline:", e)
        print("imported")
    """)
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "LSNET_JAX_HUGE_PAGES": "0"})
    assert out.returncode == 0, out.stderr
    assert "pipeline: not installed: grain" in out.stdout and out.stdout.strip().endswith("imported")


def test_detector_rows_post_processing_share_and_the_fallback_nms(tmp_path, capsys):
    """A RetinaNet at a tiny non-square size: the folded forward and the official inference in both
    frameworks, the post-processing's share printed from them; the PyTorch NMS the benchmark falls
    back to (torchvision's C++ ops may not load) keeps what the reference's greedy loop keeps."""
    import torch

    from lsnet_jax.torch_reference import nms_reference

    rng = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=rng) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(300, 2, generator=rng) * 40], 1)
    scores = torch.rand(300, generator=rng)
    nms, _ = benchmark._torch_nms()
    for thr in (0.3, 0.5, 0.7):
        assert nms(boxes, scores, thr).tolist() == nms_reference(boxes, scores, thr).tolist()
    js = tmp_path / "det.json"
    assert benchmark.main(["--model", "lsnet_t_retinanet", "--batch", "1", "--img-size", "64x96", "--deploy",
                           "--torch", "--min-time", "0.01", "--warmup", "0", "--json", str(js)]) == 0
    out = capsys.readouterr().out
    rows = json.loads(js.read_text())
    assert [(r["impl"], r["mode"], r["img_size"]) for r in rows] == [
        (impl, mode, "64x96") for impl in ("jax", "torch-ref") for mode in ("deploy", "detect", "post")]
    for detect, post in ((rows[1], rows[2]), (rows[4], rows[5])):  # post-processing alone over detect
        assert detect["postprocess_share"] == pytest.approx(post["ms_per_batch"] / detect["ms_per_batch"])
        assert (f"{detect['impl']} float32 batch 1: post-processing {100 * detect['postprocess_share']:.0f}% of "
                f"inference") in out
    assert "lsnet_t_retinanet detect float32 batch 1: JAX / torch-ref = " in out
    with pytest.raises(SystemExit):
        benchmark.main(["--model", "lsnet_t", "--img-size", "64x96"])  # classifiers take square sizes
