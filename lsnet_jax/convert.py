"""Name and layout mapping between official PyTorch LSNet state dicts and lsnet_jax models.

Pure numpy: nothing here imports torch. The JAX model groups the official flat sequences into
stages (``blocks{i+1}.0/.1`` are stage i's ``downsample.dw/.pw``, its blocks follow from index 2),
drops the ``Residual`` wrappers (``mixer.m``, ``ffn.m``), and keeps NHWC/HWIO layouts.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from lsnet_jax.layers import attention_bias_idxs

JaxPath = tuple  # of str | int
_ATTN = ("qkv", "dw", "proj", "attention_biases")
_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
                  "var": "running_var", "attention_biases": "attention_biases"}
# Buffers of the official model that hold no learned state: checked or regenerated, never loaded.
TORCH_BUFFER_SUFFIXES = ("num_batches_tracked", "attention_bias_idxs")


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


def torch_key(path: JaxPath) -> str:
    """The official state-dict key of the JAX parameter at ``path``."""
    p = list(path)
    if p[0] == "patch_embed":
        prefix, rest = [f"patch_embed.{2 * int(p[1])}"], p[2:]
    elif p[0] == "stages":
        i = int(p[1])
        if p[2] == "downsample":
            prefix, rest = [f"blocks{i + 1}.{ {'dw': 0, 'pw': 1}[p[3]] }"], p[4:]
        elif p[2] == "blocks":
            prefix, rest = [f"blocks{i + 1}.{int(p[3]) + (2 if i > 0 else 0)}"], p[4:]
            if rest[0] == "mixer" and rest[1] in _ATTN:
                rest = ["mixer", "m"] + (["proj", "1"] if rest[1] == "proj" else [rest[1]]) + rest[2:]
            elif rest[0] == "ffn":
                rest = ["ffn", "m"] + rest[1:]
        else:
            raise KeyError(f"no official name for {path}")
    elif p[0] in ("head", "head_dist"):
        prefix, rest = [p[0]], p[1:]
    else:
        raise KeyError(f"no official name for {path}")
    if rest[-1] not in _LEAF_TO_TORCH:
        raise KeyError(f"no official name for {path} (deploy-form models have none: convert the "
                       "training form)")
    rest[-1] = _LEAF_TO_TORCH[rest[-1]]
    return ".".join(str(s) for s in prefix + rest)


def to_torch_layout(path: JaxPath, a: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel" and a.ndim == 4:
        return np.ascontiguousarray(a.transpose(3, 2, 0, 1))  # HWIO -> OIHW
    if path[-1] == "kernel" and a.ndim == 2:
        return np.ascontiguousarray(a.T)  # (in, out) -> (out, in)
    return a


def to_jax_layout(path: JaxPath, a: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel" and a.ndim == 4:
        return np.ascontiguousarray(a.transpose(2, 3, 1, 0))  # OIHW -> HWIO
    if path[-1] == "kernel" and a.ndim == 2:
        return np.ascontiguousarray(a.T)
    return a


def torch_shape(path: JaxPath, shape: tuple[int, ...]) -> tuple[int, ...]:
    return to_torch_layout(path, np.empty(shape, np.uint8)).shape


def torch_to_jax(state_dict: Mapping[str, np.ndarray], jax_shapes: Mapping[JaxPath, tuple[int, ...]],
                 what: str = "checkpoint") -> dict[JaxPath, np.ndarray]:
    """Map an official state dict onto the JAX leaves described by ``jax_shapes``.

    Every JAX leaf must be found with the right shape and every checkpoint entry used (buffers
    ``num_batches_tracked`` ignored, ``attention_bias_idxs`` checked against the grid the model was
    built for); otherwise a ``CheckpointMismatchError`` lists the keys.
    """
    out: dict[JaxPath, np.ndarray] = {}
    used: set[str] = set()
    missing, mismatched = [], []
    for path, shape in jax_shapes.items():
        key = torch_key(path)
        if key not in state_dict:
            missing.append(key)
            continue
        used.add(key)
        a = np.asarray(state_dict[key])
        want = torch_shape(path, tuple(shape))
        if tuple(a.shape) != want:
            mismatched.append((key, tuple(a.shape), want))
            continue
        out[path] = to_jax_layout(path, a).astype(np.float32)
    unexpected = []
    for key, value in state_dict.items():
        if key in used or key.endswith("num_batches_tracked"):
            continue
        if key.endswith("attention_bias_idxs"):
            table_key = key.replace("attention_bias_idxs", "attention_biases")
            n = int(round(np.asarray(value).shape[0] ** 0.5))
            if table_key in used and np.array_equal(np.asarray(value), attention_bias_idxs(n)):
                continue
        unexpected.append(key)
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(what, sorted(missing), sorted(unexpected), mismatched)
    return out


def jax_to_torch(params: Mapping[JaxPath, np.ndarray]) -> dict[str, np.ndarray]:
    """An official-layout state dict (buffers included) from the JAX training-form leaves."""
    sd: dict[str, np.ndarray] = {}
    for path, a in params.items():
        key = torch_key(path)
        sd[key] = to_torch_layout(path, np.asarray(a, np.float32))
        if path[-1] == "mean":
            sd[key.replace("running_mean", "num_batches_tracked")] = np.zeros((), np.int64)
        if path[-1] == "attention_biases":
            n = int(round(a.shape[1] ** 0.5))
            sd[key.replace("attention_biases", "attention_bias_idxs")] = attention_bias_idxs(n).astype(np.int64)
    return sd


def unwrap_checkpoint(obj: object, use_ema: bool = False) -> dict[str, np.ndarray]:
    """The state dict inside an official checkpoint: ``{'model': sd}``, ``{'model_ema': sd}``,
    ``{'state_dict': sd}`` or a bare state dict. ``module.`` prefixes (DDP) are stripped."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"expected a checkpoint dict, got {type(obj).__name__}")
    if use_ema:
        if "model_ema" not in obj:
            raise ValueError(f"--ema: the checkpoint has no 'model_ema' entry (top-level keys: {sorted(obj)[:10]})")
        sd = obj["model_ema"]
    elif "model" in obj and isinstance(obj["model"], Mapping):
        sd = obj["model"]
    elif "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        sd = obj["state_dict"]
    elif "model_ema" in obj and isinstance(obj["model_ema"], Mapping):
        sd = obj["model_ema"]
    else:
        sd = obj
    out = {}
    for k, v in sd.items():
        if not hasattr(v, "shape"):
            raise ValueError(f"checkpoint entry {k!r} is a {type(v).__name__}, not a tensor: this is not "
                             "a model state dict (is it an optimizer or a whole training checkpoint?)")
        out[k.removeprefix("module.")] = v
    return out


def expected_jax_shapes(name: str, num_classes: int = 1000, img_size: int = 224) -> dict[JaxPath, tuple]:
    """Leaf shapes of the training-form JAX model, without initialising it."""
    from flax import nnx

    from lsnet_jax.model import LSNet, model_config
    from lsnet_jax.weights import state_shapes

    return state_shapes(nnx.eval_shape(lambda: LSNet(model_config(name, num_classes, img_size), rngs=nnx.Rngs(0))))


def detect_variant(state_dict: Mapping[str, np.ndarray]) -> tuple[str, int, int]:
    """(model name, num_classes, img_size) of an official state dict, from its keys and shapes.

    Raises ``CheckpointMismatchError`` against the closest variant when none fits exactly.
    """
    from lsnet_jax.model import VARIANTS

    if "head.l.weight" not in state_dict:
        num_classes = 1000
    else:
        num_classes = int(np.shape(state_dict["head.l.weight"])[0])
    distill = any(k.startswith("head_dist.") for k in state_dict)
    sizes = [np.shape(v)[-1] for k, v in state_dict.items() if k.endswith("attention_biases")]
    # the most common table size (one damaged table must not decide the input size)
    res = int(round(max(set(sizes), key=sizes.count) ** 0.5)) if sizes else 4
    img_size = 224 if res == 4 else res * 64  # the last grid is ceil(img / 64)
    best = None
    for base in VARIANTS:
        name = base + ("_distill" if distill else "")
        try:
            torch_to_jax(state_dict, expected_jax_shapes(name, num_classes, img_size), what=name)
            return name, num_classes, img_size
        except CheckpointMismatchError as e:
            score = len(e.missing) + len(e.unexpected) + len(e.mismatched)
            if best is None or score < best[0]:
                best = (score, name, e)
    _, name, e = best
    raise CheckpointMismatchError(
        "checkpoint", e.missing, e.unexpected, e.mismatched,
        hint=f"No LSNet variant fits these keys; the closest is {name!r} (differences above). "
             "Is this an LSNet checkpoint? Pass --model to compare against a specific variant.")
