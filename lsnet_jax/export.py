"""Serving export: a model as serialized StableHLO (``jax.export``), with the weights inside.

The file runs wherever a JAX (or any StableHLO) runtime does, without this package or PyTorch:
``jax.export.deserialize(open(f, 'rb').read()).call(images)``. The batch dimension is symbolic
unless a batch size is given, so one file serves every batch size.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx
from jax import export


def export_model(model: nnx.Module, img_size: int, batch: int | None = None,
                 platforms: tuple[str, ...] | None = None) -> export.Exported:
    """``model`` (eval mode, any dtype) as a ``jax.export.Exported`` taking float32 NHWC images,
    normalised as the model expects, and returning float32 logits. ``platforms`` (e.g.
    ``("cpu", "cuda")``) lowers for several backends at once; default: the current one."""
    graph, state = nnx.split(model)

    def serve(images):
        return nnx.merge(graph, state)(images).astype(jnp.float32)

    shape = (export.symbolic_shape("b")[0] if batch is None else batch, img_size, img_size, 3)
    return export.export(jax.jit(serve), platforms=platforms)(jax.ShapeDtypeStruct(shape, jnp.float32))


def save_exported(exported: export.Exported, path: str | os.PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(exported.serialize())
    return p


def load_exported(path: str | os.PathLike) -> export.Exported:
    """Read a file written by ``save_exported``; call it with ``.call(images)``."""
    return export.deserialize(bytearray(Path(path).read_bytes()))
