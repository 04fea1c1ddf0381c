"""Saving and loading LSNet weights: an Orbax checkpoint directory plus safetensors for interchange.

A weights directory written by ``save_weights`` (and by ``lsnet-convert``) holds
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

import numpy as np

from lsnet_jax.checkpoints.state import JaxPath, path_str, str_path

CONFIG_FILE, ORBAX_DIR, SAFETENSORS_FILE = "config.json", "orbax", "model.safetensors"


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
