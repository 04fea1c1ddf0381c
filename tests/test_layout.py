"""The package's import graph: no circle between modules, and arrows between packages one way
(cli -> tasks -> train / inference -> models / data / checkpoints -> kernels), read from the source;
the one training loop imports no task, model or evaluation."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "lsnet_jax"
# which of the package's parts each part may import (the README's layout section)
ALLOWED = {
    "kernels": set(),
    "checkpoints": set(),
    "data": {"kernels"},  # the PyTorch/OpenCV-exact resizes of kernels/resize.py
    "models": {"kernels", "checkpoints"},
    "inference": {"models", "data", "checkpoints", "kernels"},
    "train": {"kernels", "models", "data", "checkpoints", "inference"},
    "tasks": {"kernels", "models", "data", "checkpoints", "inference", "train"},
    "cli": {"kernels", "models", "data", "checkpoints", "inference", "train", "tasks", "runtime", "testing",
            "torch_reference"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = ("lsnet_jax",) + p.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at module level or inside functions."""
    edges = {}
    for name, path in mods.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lsnet_jax"):
                found |= {t for t in [node.module] + [f"{node.module}.{a.name}" for a in node.names] if t in mods}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name in mods}
        # importing a package's own parent package is how Python loads it, not an arrow
        edges[name] = {t for t in found if t != name and not name.startswith(t + ".")}
    return edges


def _part(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_no_import_circle_and_parts_import_downwards():
    mods = _modules()
    edges = _imports(mods)
    assert len(mods) > 30 and sum(map(len, edges.values())) > 50  # the graph was read
    wrong = sorted(f"{a} -> {b}" for a, bs in edges.items() for b in bs
                   if _part(a) in ALLOWED and _part(b) != _part(a) and _part(b) not in ALLOWED[_part(a)])
    assert not wrong, wrong
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(u: str, path: list[str]) -> None:
        seen[u] = 1
        for v in sorted(edges[u]):
            assert seen.get(v) != 1, f"import circle: {' -> '.join(path[path.index(v):] + [v])}"
            if v not in seen:
                visit(v, path + [v])
        seen[u] = 2

    for m in sorted(mods):
        if m not in seen:
            visit(m, [m])


def test_the_loop_imports_no_task_and_every_task_uses_it():
    """``train/loop.py`` knows nothing of labels, pixels or boxes: of the package it imports only the
    loop's helpers (train's reporting, work directory, checks, preemption), the checkpoints and the
    host-to-mesh batch (``data.pipeline.to_global``), directly or through them; each task imports the loop."""
    mods = _modules()
    edges = _imports(mods)
    reach, todo = set(), ["lsnet_jax.train.loop"]
    while todo:
        for v in edges[todo.pop()] - reach:
            reach.add(v)
            todo.append(v)
    forbidden = sorted(m for m in reach if _part(m) in ("tasks", "models", "inference", "cli")
                       or m in ("lsnet_jax.train.steps", "lsnet_jax.train.seg_steps", "lsnet_jax.train.optim"))
    assert not forbidden, forbidden
    assert "lsnet_jax.train.reporting" in reach and "lsnet_jax.checkpoints.run" in reach  # the graph was read
    # the task modules (tasks.dense holds what the dense ones share: no task of its own)
    tasks = [m for m in mods if m.startswith("lsnet_jax.tasks.") and m != "lsnet_jax.tasks.dense"]
    assert len(tasks) >= 2 and all("lsnet_jax.train.loop" in edges[m] for m in tasks), tasks
