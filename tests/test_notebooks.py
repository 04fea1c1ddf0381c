"""The notebooks run top to bottom, headless, with their small settings (``LSNET_NOTEBOOK_SMALL=1``:
no downloads, tiny batches and steps), in the order a user runs them."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _run(path: Path, workdir: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    return nb


def _text(nb: nbformat.NotebookNode) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            out.append(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")))
    return "\n".join(out)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A copy of the parts of the repository the notebooks use, so their outputs stay out of it."""
    import shutil

    d = tmp_path_factory.mktemp("checkout")
    for name in ("notebooks", "scripts", "configs"):
        shutil.copytree(ROOT / name, d / name)
    for name in ("convert_torch.py", "train.py"):
        shutil.copy(ROOT / name, d / name)
    return d


def test_notebooks_run_top_to_bottom(checkout, monkeypatch):
    assert [p.name for p in NOTEBOOKS] == ["01_classify_and_benchmark.ipynb", "02_finetune.ipynb"]
    monkeypatch.setenv("LSNET_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("PYTHONPATH", str(checkout) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # one CPU device, as a user's runtime (with the tests' XLA flags, conftest)
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("LSNET_JAX_TEST_XLA_FLAGS", ""))
    first = _text(_run(checkout / "notebooks" / NOTEBOOKS[0].name, checkout / "notebooks"))
    assert "converting a random PyTorch model" in first  # no network in CI: the offline path ran
    assert "largest |JAX - PyTorch|" in first  # the converter checked the logits
    assert (checkout / "bench.png").stat().st_size > 5_000
    assert (checkout / "weights" / "lsnet_t" / "config.json").exists()
    second = _text(_run(checkout / "notebooks" / NOTEBOOKS[1].name, checkout / "notebooks"))
    assert "starting from weights/lsnet_t" in second  # fine-tuned from the converted weights
    top1 = float(re.search(r"test top-1 after 2 epoch\(s\): ([0-9.]+)%", second).group(1))
    print(f"fine-tuned at 48 px for 2 epochs: test top-1 {top1:.2f}%")
    assert top1 > 20.0, top1  # it learns: 10 classes, chance is 10%
    assert (checkout / "runs" / "finetune_small" / "weights" / "config.json").exists()
