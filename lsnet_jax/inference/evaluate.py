"""Evaluation through the project's pipeline: one jit-able eval step and one loop over a split,
shared by training's per-epoch evaluation and ``lsnet-eval`` (``lsnet_jax.cli.evaluate``).

Every split goes through the same eval transform (resize the shorter side to size/crop_pct,
bicubic, centre crop); the sets of the paper and their metrics are in
``lsnet_jax.inference.eval_sets``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lsnet_jax.data import pipeline
from lsnet_jax.data.normalize import normalize
from lsnet_jax.inference import eval_sets as E
from lsnet_jax.inference.metrics import eval_sums

log = logging.getLogger(__name__)
Array = jax.Array


def eval_step(states: tuple, batch: dict[str, Array], *, graphdef: nnx.GraphDef, mean: tuple[float, ...],
              std: tuple[float, ...], classes: tuple[int, ...] | None = None) -> dict[str, Array]:
    """The eval-mode model (``graphdef`` merged with ``states``) on a batch of uint8 images:
    ``eval_sums`` over its real samples (loss, top-1 and top-5 hits, count)."""
    model = nnx.merge(graphdef, *states)
    return eval_sums(model(normalize(batch["image"], mean, std)), batch["label"], batch["mask"], classes)


def run_eval(step: Callable[[dict[str, Array]], dict[str, Array]], loader: pipeline.Loader,
             sharding: jax.sharding.NamedSharding, label: str | None = None, total: int | None = None,
             every: int = 10) -> dict[str, float]:
    """One pass of ``step`` over ``loader``: ``{'images', 'skipped', 'loss', 'top1', 'top5'}``
    (accuracies in %). With ``label``, a progress line every ``every`` batches (images/s, and the
    ETA against ``total`` images)."""
    sums, skipped, t0 = None, 0, time.time()
    for i, b in enumerate(loader.dataset):
        skipped += int(b["skipped"])
        out = step(pipeline.to_global(b, sharding))
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
        if label is not None and ((i + 1) % every == 0 or i + 1 == loader.steps_per_epoch):
            s = {k: float(v) for k, v in jax.device_get(sums).items()}
            rate = s["count"] / max(time.time() - t0, 1e-9)
            eta = ((total or 0) - s["count"] - skipped) / max(rate, 1e-9)
            print(f"{label}[{i + 1}/{loader.steps_per_epoch}] top-1 {100 * s['acc1'] / max(s['count'], 1):.2f} "
                  f"{rate:.0f} images/s ETA {max(eta, 0):.0f} s", flush=True)
    s = {k: float(v) for k, v in jax.device_get(sums).items()}
    n = max(s["count"], 1.0)
    if skipped:
        log.warning("evaluation skipped %d unreadable records", skipped)
    return {"images": int(s["count"]), "skipped": skipped, "loss": s["loss"] / n, "top1": 100 * s["acc1"] / n,
            "top5": 100 * s["acc5"] / n}


def resolve_sets(names: Sequence[str], corruptions: Sequence[str]) -> list[E.EvalSet]:
    out = []
    for name in names:
        if name == "imagenet_c":
            out += E.imagenet_c_sets(corruptions)
        elif name in E.EVAL_SETS:
            out.append(E.EVAL_SETS[name])
        else:
            raise ValueError(f"unknown eval set {name!r}; choose from {[*E.EVAL_SETS, 'imagenet_c']}, or "
                             f"give --data NAME --split SPLIT for another TFDS dataset")
    return out


def data_sharding(devices: Sequence[jax.Device] | None = None) -> jax.sharding.NamedSharding:
    """Batches sharded along one ``data`` axis over ``devices`` (default: all)."""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    return NamedSharding(Mesh(np.asarray(jax.devices() if devices is None else devices), ("data",)), P("data"))
