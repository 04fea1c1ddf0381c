"""LSNet's official PyTorch state-dict names and the mapping onto the JAX model, both ways.

Beside the model as timm keeps a ``checkpoint_filter_fn`` beside its: a change of the model's
layout changes this file and nothing in ``lsnet_jax.checkpoints``, which holds the generic I/O and
layout changes. Pure numpy: nothing here imports torch. The JAX model groups the official flat
sequences into stages (``blocks{i+1}.0/.1`` are stage i's ``downsample.dw/.pw``, its blocks follow
from index 2), drops the ``Residual`` wrappers (``mixer.m``, ``ffn.m``), and keeps NHWC/HWIO
layouts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import numpy as np

from lsnet_jax.checkpoints.state import CheckpointMismatchError, JaxPath, check_values, state_shapes
from lsnet_jax.checkpoints.torch_io import to_jax_layout, to_torch_layout, torch_shape
from lsnet_jax.models.layers import abstract, attention_bias_idxs
from lsnet_jax.models.lsnet import VARIANTS, LSNet, model_config

_ATTN = ("qkv", "dw", "proj", "attention_biases")
LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
                  "var": "running_var", "attention_biases": "attention_biases"}


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
    if rest[-1] not in LEAF_TO_TORCH:
        raise KeyError(f"no official name for {path} (deploy-form models have none: convert the "
                       "training form)")
    rest[-1] = LEAF_TO_TORCH[rest[-1]]
    return ".".join(str(s) for s in prefix + rest)


def torch_to_jax(state_dict: Mapping[str, np.ndarray], jax_shapes: Mapping[JaxPath, tuple[int, ...]],
                 what: str = "checkpoint", key_fn: Callable[[JaxPath], str] = torch_key
                 ) -> dict[JaxPath, np.ndarray]:
    """Map an official state dict onto the JAX leaves described by ``jax_shapes``; ``key_fn`` names
    each leaf's official key (LSNet's by default; the segmenter passes its own).

    Every JAX leaf must be found with the right shape and every checkpoint entry used (buffers
    ``num_batches_tracked`` ignored, ``attention_bias_idxs`` checked against the grid the model was
    built for); otherwise a ``CheckpointMismatchError`` lists the keys.
    """
    out: dict[JaxPath, np.ndarray] = {}
    used: set[str] = set()
    missing, mismatched = [], []
    for path, shape in jax_shapes.items():
        key = key_fn(path)
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
    check_values({key_fn(p): state_dict[key_fn(p)] for p in jax_shapes}, what)  # before the float32 cast
    return out


def jax_to_torch(params: Mapping[JaxPath, np.ndarray],
                 key_fn: Callable[[JaxPath], str] = torch_key) -> dict[str, np.ndarray]:
    """An official-layout state dict (buffers included) from the JAX training-form leaves."""
    sd: dict[str, np.ndarray] = {}
    for path, a in params.items():
        key = key_fn(path)
        sd[key] = to_torch_layout(path, np.asarray(a, np.float32))
        if path[-1] == "mean":
            sd[key.replace("running_mean", "num_batches_tracked")] = np.zeros((), np.int64)
        if path[-1] == "attention_biases":
            n = int(round(a.shape[1] ** 0.5))
            sd[key.replace("attention_biases", "attention_bias_idxs")] = attention_bias_idxs(n).astype(np.int64)
    return sd


@functools.lru_cache(maxsize=32)
def expected_jax_shapes(name: str, num_classes: int = 1000, img_size: int = 224) -> dict[JaxPath, tuple]:
    """Leaf shapes of the training-form JAX model, without initialising it (cached: detection tries
    every variant, ~2 s of tracing each for LSNet-B). Do not modify the returned dict."""
    return state_shapes(abstract(functools.partial(LSNet, model_config(name, num_classes, img_size))))


def detect_variant(state_dict: Mapping[str, np.ndarray]) -> tuple[str, int, int]:
    """(model name, num_classes, img_size) of an official state dict, from its keys and shapes.

    Raises ``CheckpointMismatchError`` against the closest variant when none fits exactly.
    """
    if "head.l.weight" not in state_dict:
        num_classes = 1000
    else:
        num_classes = int(np.shape(state_dict["head.l.weight"])[0])
    distill = any(k.startswith("head_dist.") for k in state_dict)
    sizes = [np.shape(v)[-1] for k, v in state_dict.items() if k.endswith("attention_biases")]
    # the most common table size (one damaged table must not decide the input size)
    res = int(round(max(set(sizes), key=sizes.count) ** 0.5)) if sizes else 4
    img_size = 224 if res == 4 else res * 64  # the last grid is ceil(img / 64)
    names = [base + ("_distill" if distill else "") for base in VARIANTS]
    if "head.l.weight" in state_dict and np.ndim(state_dict["head.l.weight"]) == 2:  # the likely one first
        width = np.shape(state_dict["head.l.weight"])[1]
        names.sort(key=lambda n: VARIANTS[n.removesuffix("_distill")][0][-1] != width)
    name = first_fit(state_dict, names, lambda n: expected_jax_shapes(n, num_classes, img_size), torch_key,
                     "No LSNet variant fits these keys", "Is this an LSNet checkpoint? ")
    return name, num_classes, img_size


def first_fit(state_dict: Mapping[str, np.ndarray], names: list[str], shapes: Callable[[str], dict],
              key_fn: Callable[[JaxPath], str], nothing: str, ask: str = "") -> str:
    """The first of ``names`` whose leaves (``shapes(name)``) the state dict fits exactly; else a
    ``CheckpointMismatchError`` listing the differences to the closest one."""
    best = None
    for name in names:
        try:
            torch_to_jax(state_dict, shapes(name), what=name, key_fn=key_fn)
            return name
        except CheckpointMismatchError as e:
            score = len(e.missing) + len(e.unexpected) + len(e.mismatched)
            if best is None or score < best[0]:
                best = (score, name, e)
    _, name, e = best
    raise CheckpointMismatchError(
        "checkpoint", e.missing, e.unexpected, e.mismatched,
        hint=f"{nothing}; the closest is {name!r} (differences above). {ask}Pass --model to compare "
             "against a specific variant.")
