"""A model's state as a flat ``{path: array}`` dict, and loading one into a model with every key
and shape checked both ways.

Paths are tuples of attribute names and list indices (``("stages", 2, "blocks", 1, "mixer", "lkp",
"cv4", "kernel")``); on disk they are joined by dots (``path_str``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

JaxPath = tuple  # of str | int


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model; lists every offending key on both sides."""

    def __init__(self, what: str, missing: list[str], unexpected: list[str],
                 mismatched: list[tuple[str, tuple, tuple]], hint: str = ""):
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        lines = [f"{what}: the checkpoint does not match the model."]

        def section(title: str, items: list[str]) -> None:
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines.extend(f"    {k}" for k in items[:50])
                if len(items) > 50:
                    lines.append(f"    ... and {len(items) - 50} more")

        section("missing in the checkpoint", missing)
        section("unexpected in the checkpoint", unexpected)
        section("wrong shape (key: checkpoint vs model)",
                [f"{k}: {tuple(a)} vs {tuple(b)}" for k, a, b in mismatched])
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))


class CheckpointValueError(ValueError):
    """A checkpoint's weights are of the right keys and shapes but not usable values: not floating
    point (a quantised or integer tensor), or not finite."""


def is_float_dtype(dtype: np.dtype) -> bool:
    """Floating point, bfloat16 included (numpy does not count it)."""
    import ml_dtypes

    return np.issubdtype(dtype, np.floating) or dtype == ml_dtypes.bfloat16


def check_values(items: Mapping[str, Any], what: str) -> None:
    """Every array of ``items`` (name -> weights of a float leaf) is floating point and finite, or
    a ``CheckpointValueError`` names the offending ones (at most 10, with their count)."""
    wrong = [f"{k} ({np.asarray(a).dtype})" for k, a in items.items() if not is_float_dtype(np.asarray(a).dtype)]
    if wrong:
        raise CheckpointValueError(
            f"{what}: {len(wrong)} weights are not floating point: {', '.join(wrong[:10])}"
            f"{' ...' if len(wrong) > 10 else ''}. These models' weights are float16, bfloat16, float32 or "
            f"float64 (a quantised checkpoint cannot be read as them: give the float one)")
    bad = [k for k, a in items.items() if not np.isfinite(np.asarray(a, np.float32)).all()]
    if bad:
        raise CheckpointValueError(
            f"{what}: {len(bad)} weights hold NaN or inf: {', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}. "
            f"The file was saved from a diverged run or is damaged; use an earlier checkpoint")


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
    check_values({path_str(tuple(p)): flat[tuple(p)] for p, v in nnx.to_flat_state(state)
                  if is_float_dtype(np.dtype(v.get_value().dtype))}, what)
    for path, var in nnx.to_flat_state(state):
        var.set_value(jax.numpy.asarray(flat[tuple(path)], var.get_value().dtype))
    nnx.update(model, state)
