"""Weights out of a training run: ``python -m lsnet_jax.train.export --workdir DIR --out W [--ema] [--best]``.

Writes the model (or its EMA) of the newest checkpoint in ``DIR/checkpoints`` (or of ``DIR/best``)
as a weights directory that ``create_model(name, pretrained=W)``, ``convert_torch.py --to-torch``
and a distillation teacher (``--config.distillation.teacher_checkpoint=W``) read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from lsnet_jax.weights import save_weights, str_path


def _flatten(tree, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out |= _flatten(v, key) if isinstance(v, dict) else {key: np.asarray(v)}
    return out


def export_weights(workdir: str | os.PathLike, out: str | os.PathLike, ema: bool = False, best: bool = False,
                   step: int | None = None) -> Path:
    import orbax.checkpoint as ocp

    workdir = Path(workdir).absolute()
    run_file = workdir / "run.json"
    if not run_file.exists():
        raise FileNotFoundError(f"{run_file} not found: is {workdir} a train.py work directory?")
    run = json.loads(run_file.read_text())
    ckpt_dir = workdir / ("best" if best else "checkpoints")
    with ocp.CheckpointManager(ckpt_dir, item_names=("state", "data")) as manager:
        steps = manager.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {ckpt_dir}")
        step = max(steps) if step is None else step
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    params, stats = (state["ema_params"], state["ema_stats"]) if ema else (state["params"], state["batch_stats"])
    flat = {str_path(k): v for k, v in (_flatten(params) | _flatten(stats)).items()}
    aug = run.get("config", {}).get("aug", {})
    meta = dict(model=run["model"], num_classes=run["num_classes"], img_size=run["img_size"],
                source=f"{workdir} step {step}{' (best)' if best else ''}", ema=ema)
    meta |= {k: aug[k] for k in ("mean", "std", "crop_pct") if k in aug}  # the eval transform it was trained for
    if len(run.get("class_names") or ()) == run["num_classes"]:
        meta["class_names"] = run["class_names"]
    return save_weights(out, flat, meta)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ema", action="store_true", help="the EMA weights (and EMA BatchNorm statistics)")
    ap.add_argument("--best", action="store_true", help="the best checkpoint instead of the newest")
    ap.add_argument("--step", type=int, default=None)
    args = ap.parse_args(argv)
    try:
        out = export_weights(args.workdir, args.out, args.ema, args.best, args.step)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
