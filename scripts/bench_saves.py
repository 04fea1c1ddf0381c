"""How much a checkpoint save holds up training: the loop's thread calling Orbax itself (as several
processes do) against handing a snapshot to the saver's thread (one process).

    python scripts/bench_saves.py [--model lsnet_t] [--steps 66] [--every 11] [--batch 64] [--img 32]

Real training steps of the digits recipe (``configs/digits.py``: LSNet-T at 32x32, batch 64, the
state ~176 MB) on random images, a save every ``--every`` steps into a temporary directory (Orbax,
asynchronous writes), each step waited for. Prints one table: the time the loop's thread spends in
``Saver.save``, the steps' median, the slowest step and the whole run's time, per mode.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from lsnet_jax.checkpoints import run as run_checkpoints
from lsnet_jax.cli.args import positive_int
from lsnet_jax.train import optim
from lsnet_jax.tasks.classification import build_model
from lsnet_jax.train.steps import StepConfig, init_train_state, train_step

ROOT = Path(__file__).resolve().parents[1]


def digits_config(model: str, batch: int, img: int):
    spec = importlib.util.spec_from_file_location("digits", ROOT / "configs" / "digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.model, c.batch_size, c.img_size = model, batch, img
    return c


def setup(args: argparse.Namespace):
    """(a fresh state, the jitted step, a batch): one compilation for both modes."""
    config = digits_config(args.model, args.batch, args.img)
    model = build_model(config, 10)
    _, tx = optim.from_config(config, args.every)
    state, graphdef, _ = init_train_state(model, tx, 0)
    step_cfg = StepConfig.from_config(config, 10, model.impl)
    step = jax.jit(functools.partial(train_step, graphdef=graphdef, tx=tx, cfg=step_cfg), donate_argnums=0)
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (args.batch, args.img, args.img, 3), np.uint8),
             "label": rng.integers(0, 10, (args.batch,), np.int32)}
    return state, step, batch


def run(mode: str, args: argparse.Namespace, directory: Path, state, step, batch) -> dict[str, float]:
    state = jax.tree.map(lambda x: x.copy(), state)  # the step donates its input
    state, m = step(state, batch, None)  # compiled by the first mode
    float(m["loss"])
    saver = run_checkpoints.Saver(run_checkpoints.make_manager(directory / mode, keep=2),
                                  background=mode == "saver thread")
    saver.save(0, state, {"iterator": 0})  # the snapshot's compilation, outside the figures
    saver.wait()
    steps, in_save = [], []
    start = time.perf_counter()
    for i in range(1, args.steps + 1):
        t = time.perf_counter()
        state, m = step(state, batch, None)
        float(m["loss"])
        steps.append(time.perf_counter() - t)
        if i % args.every == 0:
            t = time.perf_counter()
            saver.save(i, state, {"iterator": i})
            in_save.append(time.perf_counter() - t)
        saver.poll()
    saver.wait()
    total = time.perf_counter() - start
    saver.close()
    return {"save (loop's thread), median s": statistics.median(in_save), "save, max s": max(in_save),
            "step median s": statistics.median(steps), "slowest step s": max(steps), "run s": total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lsnet_t")
    ap.add_argument("--steps", type=positive_int, default=66)
    ap.add_argument("--every", type=positive_int, default=11)
    ap.add_argument("--batch", type=positive_int, default=64)
    ap.add_argument("--img", type=positive_int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        init = setup(args)
        rows = {mode: run(mode, args, Path(d), *init) for mode in ("loop's thread", "saver thread")}
    keys = list(next(iter(rows.values())))
    print(f"{args.model}, {args.steps} steps of batch {args.batch} at {args.img}px, a save every {args.every} "
          f"steps, {jax.devices()[0].platform} x{jax.device_count()}")
    print(f"| Orbax called from | {' | '.join(keys)} |")
    print(f"|---|{'---|' * len(keys)}")
    for mode, r in rows.items():
        print(f"| {mode} | {' | '.join(f'{r[k]:.3f}' for k in keys)} |")


if __name__ == "__main__":
    main()
