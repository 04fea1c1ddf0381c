"""Saving and loading LSNet weights: an Orbax checkpoint directory plus safetensors for interchange.

A weights directory written by ``save_weights`` (and by ``convert_torch.py``) holds
``config.json`` (model name, classes, image size, where the weights came from), ``orbax/``
(the state as an Orbax PyTree checkpoint) and ``model.safetensors`` (the same arrays, keys are
the JAX paths joined by dots, e.g. ``stages.2.blocks.1.mixer.lkp.cv4.kernel``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from lsnet_jax.convert import CheckpointMismatchError, JaxPath

CONFIG_FILE, ORBAX_DIR, SAFETENSORS_FILE = "config.json", "orbax", "model.safetensors"


def path_str(path: JaxPath) -> str:
    return ".".join(str(p) for p in path)


def str_path(key: str) -> JaxPath:
    return tuple(int(p) if p.isdigit() else p for p in key.split("."))


def state_shapes(model: nnx.Module) -> dict[JaxPath, tuple[int, ...]]:
    """Shape of every array leaf (parameters, BatchNorm statistics, buffers) by path."""
    return {tuple(p): tuple(v.shape) for p, v in nnx.to_flat_state(nnx.state(model))}


def flat_state(model: nnx.Module) -> dict[JaxPath, np.ndarray]:
    return {tuple(p): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model))}


def load_flat(model: nnx.Module, flat: Mapping[JaxPath, Any], what: str = "weights") -> None:
    """Load every leaf of ``model`` from ``flat``; all keys must match both ways, with shapes."""
    shapes = state_shapes(model)
    missing = sorted(path_str(p) for p in shapes if p not in flat)
    unexpected = sorted(path_str(p) for p in flat if p not in shapes)
    mismatched = [(path_str(p), tuple(np.shape(flat[p])), s) for p, s in shapes.items()
                  if p in flat and tuple(np.shape(flat[p])) != s]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(what, missing, unexpected, mismatched)
    state = nnx.state(model)
    for path, var in nnx.to_flat_state(state):
        var.set_value(jax.numpy.asarray(flat[tuple(path)], var.get_value().dtype))
    nnx.update(model, state)


def save_weights(directory: str | os.PathLike, state: Mapping[JaxPath, Any], meta: Mapping[str, Any]) -> Path:
    """Write a flat state (``flat_state(model)``) to ``directory`` (Orbax + safetensors + config.json)."""
    import orbax.checkpoint as ocp
    from safetensors.numpy import save_file

    d = Path(directory).absolute()
    d.mkdir(parents=True, exist_ok=True)
    flat = {path_str(p): np.ascontiguousarray(a) for p, a in state.items()}
    save_file(flat, str(d / SAFETENSORS_FILE))
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(d / ORBAX_DIR, flat, force=True)
    (d / CONFIG_FILE).write_text(json.dumps(dict(meta), indent=2, sort_keys=True) + "\n")
    return d


def read_meta(path: str | os.PathLike | None) -> dict[str, Any]:
    """The ``config.json`` of a weights directory (model, classes, image size, mean/std, crop_pct,
    class names); ``{}`` for a bare ``.safetensors`` file, ``None`` or a directory without one."""
    f = Path(path) / CONFIG_FILE if path is not None else None
    return json.loads(f.read_text()) if f is not None and f.is_file() else {}


def load_weights(path: str | os.PathLike) -> tuple[dict[JaxPath, np.ndarray], dict[str, Any]]:
    """Read a weights directory (Orbax preferred, else safetensors) or a ``.safetensors`` file."""
    p = Path(path).absolute()
    if not p.exists():
        raise FileNotFoundError(f"no weights at {p}: give a directory written by convert_torch.py or "
                                "save_weights, or a .safetensors file")
    meta = read_meta(p)
    if p.is_dir():
        if (p / ORBAX_DIR).exists():
            import orbax.checkpoint as ocp

            with ocp.StandardCheckpointer() as ckptr:
                flat = ckptr.restore(p / ORBAX_DIR)
            return {str_path(k): np.asarray(v) for k, v in flat.items()}, meta
        if (p / SAFETENSORS_FILE).exists():
            p = p / SAFETENSORS_FILE
        else:
            raise FileNotFoundError(f"{p} holds neither {ORBAX_DIR}/ nor {SAFETENSORS_FILE}")
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        flat = load_file(str(p))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"cannot read {p} as safetensors ({e}); is the file truncated or of another format?") from e
    return {str_path(k): v for k, v in flat.items()}, meta
