"""The one per-image operation that runs on the device in training and inference alike."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def normalize(images: jax.Array, mean, std) -> jax.Array:
    """uint8 NHWC -> float32, ``(x / 255 - mean) / std``."""
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return images.astype(jnp.float32) * (1.0 / (255.0 * std)) - mean / std
