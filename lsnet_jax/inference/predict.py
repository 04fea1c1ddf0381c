"""Top-k classes of images, with readable class names (``lsnet-predict``, the notebooks)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_WNID = re.compile(r"n\d{8}")


def class_names(meta: Mapping[str, Any], num_classes: int) -> list[str]:
    """Readable names of a head's classes: those stored with the weights (a training run records its
    dataset's) unless they are bare WordNet ids, ImageNet's for a 1000-class head, else ``class <i>``."""
    names = list(meta.get("class_names") or ())
    if len(names) == num_classes and not all(_WNID.fullmatch(n) for n in names):
        return names
    if num_classes == 1000:
        from lsnet_jax.inference.eval_sets import imagenet_class_names

        return imagenet_class_names()
    return [f"class {i}" for i in range(num_classes)]


def predict(model, images: np.ndarray, mean: Sequence[float], std: Sequence[float], k: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC images -> (top-k class indices, their softmax probabilities), each (N, k).
    Compiles the model for this call; to classify many batches, call ``compiled(model)`` once."""
    import jax
    import jax.numpy as jnp

    from lsnet_jax.data.normalize import normalize
    from lsnet_jax.models.registry import compiled

    logits = compiled(model)(normalize(jnp.asarray(images), tuple(mean), tuple(std))).astype(jnp.float32)
    prob, idx = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), min(k, logits.shape[-1]))
    return np.asarray(idx), np.asarray(prob)
