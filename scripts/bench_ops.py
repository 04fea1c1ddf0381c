"""Formulations of LSNet's depthwise convolutions and SKA, timed on this backend at the model's shapes.

    python scripts/bench_ops.py [--model lsnet_t] [--batch 32] [--img-size 224] [--dtype float32]
                                [--json FILE]

``lsnet_jax.kernels.xla_cpu`` writes every depthwise convolution and SKA as shifted multiply-adds
with written-out backward passes, the forms measured fastest on XLA:CPU (docs/performance.md);
``lsnet_jax.kernels.reference`` is the plain formulation that runs on other backends. This script
times, for each distinct shape the model has (RepVGG 3x3, LKP 7x7, the strided 3x3 of the
downsamplings, the attention's 3x3 on the queries, SKA), the ``xla_cpu`` form against

- depthwise: the reference, XLA's grouped convolution (``feature_group_count=C``, cuDNN on GPU);
- SKA: the reference (the same shifted products, plain autodiff), and 3x3 patches
  (``lax.conv_general_dilated_patches``) contracted with the kernels,

forward and forward + backward (gradients with respect to the input and the kernel), each
compiled ahead of time and warmed up. The ``max rel diff`` column is each form's largest
difference from the ``xla_cpu`` one, over the largest value, so the table also shows they compute
the same thing. Run it once on a new backend before choosing a formulation there (a measured
winner goes into ``lsnet_jax.kernels``' ``"auto"`` table).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark import DTYPES, _timeit  # noqa: E402  (scripts/benchmark.py, beside this file)
from lsnet_jax.kernels import reference, xla_cpu  # noqa: E402
from lsnet_jax.cli.args import positive_float, positive_int  # noqa: E402
from lsnet_jax.models.lsnet import model_config  # noqa: E402
from lsnet_jax.runtime import restart_with_huge_pages  # noqa: E402


def patches_ska(x: jax.Array, w: jax.Array) -> jax.Array:
    """SKA as 3x3 patches of x (channel-major: patch channel c*9 + tap) times the tiled kernels."""
    n, h, wd, c = x.shape
    g = w.shape[3]
    p = lax.conv_general_dilated_patches(x, (3, 3), (1, 1), [(1, 1), (1, 1)],
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
    p = p.reshape(n, h, wd, c // g, g, 9)
    return jnp.einsum("nhwrgk,nhwgk->nhwrg", p, w.astype(x.dtype)).reshape(n, h, wd, c)


BASELINE = "xla_cpu"
FORMS: dict[str, dict[str, Callable]] = {  # the baseline first
    "depthwise": {BASELINE: xla_cpu.depthwise_conv, "reference (grouped conv)": reference.depthwise_conv},
    "ska": {BASELINE: lambda x, w, s: xla_cpu.ska(x, w), "reference": lambda x, w, s: reference.ska(x, w),
            "patches + einsum": lambda x, w, s: patches_ska(x, w)},
}


def model_shapes(name: str, img_size: int) -> list[tuple[str, str, int, int, int, int]]:
    """``(op, where, side, channels, kernel or groups, stride)`` for each distinct depthwise / SKA
    shape of the model."""
    cfg = model_config(name, img_size=img_size)
    res = cfg.resolutions()
    out = []
    for i, (dim, depth) in enumerate(zip(cfg.embed_dim, cfg.depth)):
        if i > 0:
            out.append(("depthwise", f"downsample {i}", res[i - 1], cfg.embed_dim[i - 1], 3, 2))
        if depth >= 1:
            out.append(("depthwise", f"RepVGG stage {i}", res[i], dim, 3, 1))
        if depth >= 2 and i < 3:
            out.append(("depthwise", f"LKP 7x7 stage {i}", res[i], dim // 2, 7, 1))
            out.append(("ska", f"SKA stage {i}", res[i], dim, dim // 8, 1))
        if depth >= 2 and i == 3:
            out.append(("depthwise", "attention q 3x3", res[i], cfg.key_dim * cfg.num_heads[i], 3, 1))
    seen, unique = set(), []
    for s in out:
        if (s[0],) + s[2:] not in seen:  # the same op at the same shape in another place
            seen.add((s[0],) + s[2:])
            unique.append(s)
    return unique


def _time(fn: Callable, args: tuple, min_time: float) -> float:
    """Milliseconds per call of ``fn`` compiled ahead of time, after two warm-up calls."""
    compiled = jax.jit(fn).lower(*args).compile()
    return 1000 * _timeit(lambda: jax.block_until_ready(compiled(*args)), min_time, 2)


def bench(name: str, batch: int, img_size: int, dtype: str, min_time: float) -> list[dict]:
    rng = np.random.default_rng(0)
    dt = DTYPES[dtype]
    rows = []
    for op, where, side, c, k, stride in model_shapes(name, img_size):
        x = jnp.asarray(rng.standard_normal((batch, side, side, c)), dt)
        second = (jnp.asarray(rng.standard_normal((k, k, 1, c)), jnp.float32) if op == "depthwise"
                  else jnp.asarray(rng.standard_normal((batch, side, side, k, 9)), dt))
        forms = FORMS[op]
        ref = jax.jit(forms[BASELINE], static_argnums=2)(x, second, stride).astype(jnp.float32)
        g = jnp.asarray(rng.standard_normal(ref.shape), dt)
        for form, f in forms.items():
            def fwd(x, s2, f=f):
                return f(x, s2, stride)

            def fwd_bwd(x, s2, g, f=f):
                def loss(a, b):
                    return jnp.sum((f(a, b, stride) * g).astype(jnp.float32))

                return jax.grad(loss, (0, 1))(x, s2)

            y = jax.jit(fwd)(x, second).astype(jnp.float32)
            diff = float(jnp.max(jnp.abs(y - ref)) / jnp.max(jnp.abs(ref)))
            rows.append(dict(model=name, op=op, where=where, shape=[batch, side, side, c],
                             kernel=k if op == "depthwise" else f"G={k}", stride=stride, form=form,
                             dtype=dtype,
                             device=jax.devices()[0].device_kind, fwd_ms=_time(fwd, (x, second), min_time),
                             fwd_bwd_ms=_time(fwd_bwd, (x, second, g), min_time), max_rel_diff=diff))
            r = rows[-1]
            print(f"{r['where']:<20}{str(tuple(r['shape'])):<20}{str(r['kernel']):>6}{r['stride']:>4}  "
                  f"{r['form']:<20}{r['fwd_ms']:>9.3f}{r['fwd_bwd_ms']:>12.3f}{r['max_rel_diff']:>14.1e}",
                  flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="lsnet_t", choices=("lsnet_t", "lsnet_s", "lsnet_b"))
    ap.add_argument("--batch", type=positive_int, default=32)
    ap.add_argument("--img-size", type=positive_int, default=224)
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--min-time", type=positive_float, default=1.0, help="seconds of timed calls per figure")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    print(f"JAX {jax.__version__} on {jax.devices()[0].device_kind}, {args.model} batch {args.batch}, "
          f"{args.img_size}px, {args.dtype}; ms per call")
    print(f"{'layer':<20}{'input':<20}{'k':>6}{'s':>4}  {'form':<20}{'fwd':>9}{'fwd+bwd':>12}"
          f"{'max rel diff':>14}")
    rows = bench(args.model, args.batch, args.img_size, args.dtype, args.min_time)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    restart_with_huge_pages()
    sys.exit(main())
