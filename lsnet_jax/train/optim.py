"""The published optimisation, as pure functions over pure-dict parameter trees.

- ``timm_cosine``: timm's ``CosineLRScheduler`` (warm-up from ``warmup_lr``, no warm-up prefix,
  cosine to ``min_lr`` over ``epochs``, then ``min_lr``) at a (possibly fractional) epoch, in float64.
- ``epoch_lr_schedule`` ("official"): what the official loop trains with. It steps timm's
  scheduler once per epoch, after the epoch (``lr_scheduler.step(epoch)``), so epoch 0 trains at
  ``warmup_lr`` and epoch e >= 1 at ``timm_cosine(e - 1)``: 1e-6 for epochs 0 and 1, 8.008e-4 for
  epoch 2 ... (the ``train_lr`` column of the official logs).
- ``lr_schedule`` ("per_step"): the same cosine evaluated per step, without the lag: smoother, and
  the warm-up starts at once (epoch 0 averages ~4e-4 instead of 1e-6); not what the official ran.
- ``decay_mask``: no weight decay on 1-D tensors (biases, norm weights) nor on attention biases.
- ``adaptive_grad_clip``: timm's AGC. Per output unit (dim 0 of the PyTorch tensor: the last axis of
  our HWIO / (in, out) kernels, the head axis of a bias table) the gradient's norm is capped at
  ``clip * max(|param|, eps)``; a 1-D tensor is one unit. ``optax.adaptive_grad_clip`` takes 1-D
  tensors elementwise, hence this one.
- ``make_optimizer``: AGC, then AdamW with the mask and the schedule.
"""

from __future__ import annotations

from collections.abc import Callable
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

Params = Any


def scaled_lr(base_lr: float, global_batch: int, reference_batch: int = 512) -> float:
    """Linear scaling rule of the recipe: lr = base_lr * batch / 512."""
    return base_lr * global_batch / reference_batch


def timm_cosine(t: float, peak_lr: float, epochs: int, warmup_epochs: float = 5, warmup_lr: float = 1e-6,
                min_lr: float = 1e-5) -> float:
    """timm 0.5.4's ``CosineLRScheduler(t_initial=epochs, lr_min=min_lr, warmup_t=warmup_epochs,
    warmup_lr_init=warmup_lr, cycle_limit=1)`` at epoch ``t``, in float64."""
    if t < warmup_epochs:
        return warmup_lr + t * (peak_lr - warmup_lr) / warmup_epochs
    if t >= epochs:
        return min_lr
    return min_lr + 0.5 * (peak_lr - min_lr) * (1 + math.cos(math.pi * t / epochs))


def official_epoch_lrs(peak_lr: float, epochs: int, warmup_epochs: float = 5, warmup_lr: float = 1e-6,
                       min_lr: float = 1e-5) -> np.ndarray:
    """The lr of each epoch of the official run (float64): the scheduler starts at ``warmup_lr``
    and is stepped after each epoch, so epoch e trains at ``timm_cosine(e - 1)``."""
    lrs = [warmup_lr if warmup_epochs else timm_cosine(0, peak_lr, epochs, warmup_epochs, warmup_lr, min_lr)]
    lrs += [timm_cosine(e - 1, peak_lr, epochs, warmup_epochs, warmup_lr, min_lr) for e in range(1, epochs)]
    return np.asarray(lrs, np.float64)


def epoch_lr_schedule(peak_lr: float, steps_per_epoch: int, epochs: int, warmup_epochs: float = 5,
                      warmup_lr: float = 1e-6, min_lr: float = 1e-5) -> Callable[[jax.Array], jax.Array]:
    """lr at a (0-based) step under the official per-epoch schedule (``official_epoch_lrs``): one
    value per epoch, looked up by ``step // steps_per_epoch``; ``min_lr`` after the last epoch."""
    table = np.append(official_epoch_lrs(peak_lr, epochs, warmup_epochs, warmup_lr, min_lr), min_lr)
    table = jnp.asarray(table, jnp.float32)

    def schedule(step):
        epoch = jnp.asarray(step, jnp.int32) // steps_per_epoch
        return table[jnp.clip(epoch, 0, epochs)]

    return schedule


SCHEDULES = ("official", "per_step")


def lr_schedule(peak_lr: float, steps_per_epoch: int, epochs: int, warmup_epochs: float = 5,
                warmup_lr: float = 1e-6, min_lr: float = 1e-5) -> Callable[[jax.Array], jax.Array]:
    """lr at a (0-based) step: linear warm-up from ``warmup_lr`` to ``peak_lr`` over the warm-up
    steps, then ``min_lr + (peak - min_lr) / 2 * (1 + cos(pi * t / T))`` with t the step (counted
    from 0, as timm without ``warmup_prefix``) and T = epochs * steps_per_epoch; ``min_lr`` after."""
    warmup = max(int(round(warmup_epochs * steps_per_epoch)), 0)
    total = epochs * steps_per_epoch

    def schedule(step):
        t = jnp.asarray(step, jnp.float32)
        warm = warmup_lr + t * (peak_lr - warmup_lr) / max(warmup, 1)
        cos = min_lr + 0.5 * (peak_lr - min_lr) * (1 + jnp.cos(jnp.pi * jnp.minimum(t, total) / total))
        return jnp.where(t < warmup, warm, jnp.where(t < total, cos, min_lr))

    return schedule


def _name(key) -> str:
    return str(getattr(key, "key", getattr(key, "name", key)))


def decay_mask(params: Params) -> Params:
    """True where weight decay applies: tensors of 2 or more dims other than attention biases."""
    return jax.tree_util.tree_map_with_path(
        lambda path, p: p.ndim > 1 and _name(path[-1]) != "attention_biases", params)


def unit_axes(path, ndim: int) -> tuple[int, ...]:
    """Axes summed over for one unit of AGC: all but the PyTorch tensor's dim 0."""
    if ndim <= 1:
        return tuple(range(ndim))
    keep = ndim - 1 if _name(path[-1]) == "kernel" else 0  # HWIO / (in, out) kernels: out is last
    return tuple(a for a in range(ndim) if a != keep)


def _unit_norm(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=axes, keepdims=True))


def adaptive_grad_clip(clip_factor: float = 0.02, eps: float = 1e-3) -> optax.GradientTransformation:
    """timm's ``adaptive_clip_grad`` (see the module docstring)."""

    def update(updates, state, params):
        def clip(path, g, p):
            axes = unit_axes(path, p.ndim)
            max_norm = clip_factor * jnp.maximum(_unit_norm(p, axes), eps)
            g_norm = _unit_norm(g, axes)
            clipped = g * (max_norm / jnp.maximum(g_norm, 1e-6))
            return jnp.where(g_norm < max_norm, g, clipped).astype(g.dtype)
        return jax.tree_util.tree_map_with_path(clip, updates, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(schedule: Callable, weight_decay: float, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8, clip_grad: float | None = 0.02, clip_eps: float = 1e-3
                   ) -> optax.GradientTransformation:
    """AGC (if ``clip_grad``), then AdamW with the decay mask. timm's AdamW decays as
    ``p -= lr * wd * p``, as optax's."""
    adamw = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)
    return optax.chain(adaptive_grad_clip(clip_grad, clip_eps), adamw) if clip_grad else adamw


def ema_update(ema: Params, new: Params, decay: float) -> Params:
    """timm's ModelEma: ``ema = decay * ema + (1 - decay) * new``, leaf by leaf (weights and BN stats)."""
    return jax.tree.map(lambda e, n: decay * e + (1.0 - decay) * n, ema, new)


def from_config(config, steps_per_epoch: int) -> tuple[Callable, optax.GradientTransformation]:
    """The schedule and the optimizer of a run config (``lsnet_jax.train.config``)."""
    c = config
    if c.lr_schedule not in SCHEDULES:
        raise ValueError(f"config.lr_schedule must be one of {SCHEDULES}, got {c.lr_schedule!r}")
    make = epoch_lr_schedule if c.lr_schedule == "official" else lr_schedule
    schedule = make(scaled_lr(c.lr, c.batch_size), steps_per_epoch, c.epochs, c.warmup_epochs, c.warmup_lr, c.min_lr)
    tx = make_optimizer(schedule, c.weight_decay, c.opt_betas[0], c.opt_betas[1], c.opt_eps,
                        c.clip_grad or None, c.clip_eps)
    return schedule, tx
