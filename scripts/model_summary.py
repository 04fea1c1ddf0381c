#!/usr/bin/env python
"""Build LSNet variants and print what they are: parameters, MACs, folding check, CPU speed.

    python scripts/model_summary.py                      # LSNet-T
    python scripts/model_summary.py --models lsnet_t lsnet_s lsnet_b --batch 8

Needs no downloads: random weights. Parameters are counted as the official log does (trainable
tensors, BatchNorm running statistics excluded); MACs come from XLA's cost analysis of the
folded model at 224x224 (FLOPs / 2); "fold |diff|" is the largest logit difference between the
folded and unfolded model relative to the logits' std.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lsnet_jax import create_model, fold, list_models
from lsnet_jax.cli.args import positive_int
from lsnet_jax.checkpoints.state import state_shapes


def trainable(model: nnx.Module) -> int:
    return sum(int(np.prod(s)) for p, s in state_shapes(model).items() if p[-1] not in ("mean", "var"))


def summarise(name: str, batch: int, img: int) -> dict:
    model = create_model(name, img_size=img, seed=0)
    # move BatchNorm statistics off their initial values so folding has something to fold
    model.train()
    kw = {"dropout_key": jax.random.key(3)} if name.endswith("_semfpn") else {}  # the head's Dropout2d
    nnx.jit(lambda m, x: m(x, **kw))(model, jax.random.normal(jax.random.key(1), (8, img, img, 3)))
    model.eval()
    deploy = fold(model)
    graph, state = nnx.split(deploy)
    x = jax.random.normal(jax.random.key(2), (batch, img, img, 3))

    def infer(state, x):
        return nnx.merge(graph, state)(x)

    t0 = time.perf_counter()
    compiled = jax.jit(infer).lower(state, x).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    y = compiled(state, x).block_until_ready()
    ref = nnx.jit(lambda m, x: m(x))(model, x)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 2.0:
        compiled(state, x).block_until_ready()
        n += 1
    per_batch = (time.perf_counter() - t0) / n
    return dict(model=name, params=trainable(model), deploy_params=trainable(deploy),
                gmacs=float(cost.get("flops", 0.0)) / 2 / batch / 1e9,
                fold_diff=float(jnp.abs(y - ref).max() / ref.std()), compile_s=compile_s,
                images_per_s=batch / per_batch)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["lsnet_t"], choices=list_models())
    p.add_argument("--batch", type=positive_int, default=8)
    p.add_argument("--img-size", type=positive_int, default=224)
    args = p.parse_args()
    print(f"JAX {jax.__version__} on {jax.devices()[0].platform}, batch {args.batch}, {args.img_size}px, float32")
    head = f"{'model':<17}{'params':>12}{'deploy params':>15}{'GMACs':>8}{'fold |diff|':>13}{'compile s':>11}{'images/s':>10}"
    print(head + "\n" + "-" * len(head))
    for name in args.models:
        r = summarise(name, args.batch, args.img_size)
        print(f"{r['model']:<17}{r['params']:>12,}{r['deploy_params']:>15,}{r['gmacs']:>8.3f}"
              f"{r['fold_diff']:>13.1e}{r['compile_s']:>11.1f}{r['images_per_s']:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
