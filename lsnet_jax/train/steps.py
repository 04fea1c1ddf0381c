"""Module-level training and evaluation steps (pure functions, jit-compiled by the loop).

The state is a plain pytree of pure dicts (``TrainState``); the model's structure travels as an
``nnx.GraphDef`` bound statically. Under ``jit`` with the batch sharded along the mesh's data axis
and the state replicated, XLA computes BatchNorm statistics over the global batch (or per group of
``bn_group_size`` images, see ``lsnet_jax.models.layers.BatchNorm``) and all-reduces the gradients.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from lsnet_jax.data.normalize import normalize
from lsnet_jax.inference.metrics import cross_entropy, eval_sums
from lsnet_jax.train import optim
from lsnet_jax.train.augment import erase, mixup_cutmix

Array = jax.Array


@struct.dataclass
class TrainState:
    step: Array
    params: dict
    batch_stats: dict
    opt_state: Any
    ema_params: dict
    ema_stats: dict
    rng: Array  # the run's base key; each step folds in its number


def model_weights(state: TrainState) -> dict:
    """What ``DIR/best`` keeps (the weights and their EMA, for export): half the state, since the
    optimizer's moments are left out; a run resumes from ``DIR/checkpoints``."""
    return {"params": state.params, "batch_stats": state.batch_stats, "ema_params": state.ema_params,
            "ema_stats": state.ema_stats}


def init_train_state(model: nnx.Module, tx: optax.GradientTransformation, seed: int
                     ) -> tuple[TrainState, nnx.GraphDef, nnx.GraphDef]:
    """The state a run starts from, and the model's training- and eval-mode graph definitions.
    The EMA starts as its own copy of the weights (the state's buffers are donated to the step)."""
    model.train()
    graphdef = nnx.graphdef(model)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    model.eval()
    copy = functools.partial(jax.tree.map, jnp.copy)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=stats, opt_state=tx.init(params),
                       ema_params=copy(params), ema_stats=copy(stats),
                       rng=jax.random.key_data(jax.random.key(seed)))
    return state, graphdef, nnx.graphdef(model)


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Everything a training step needs besides the state and the batch (hashable, static)."""

    num_classes: int
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    smoothing: float = 0.1
    distillation: str = "none"  # 'none' | 'hard'
    distill_alpha: float = 0.5
    ema_decay: float = 0.99996
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    compact_erase: bool = False  # draw only the erased pixels' noise (faster on XLA:CPU)
    mix_group_size: int | None = None  # Mixup/CutMix drawn per group (the run's bn_group_size)

    @classmethod
    def from_config(cls, config, num_classes: int, impl: str) -> StepConfig:
        """From a run config (``lsnet_jax.train.config``) for a model whose kernels are ``impl``."""
        a, d = config.aug, config.distillation
        return cls(num_classes=num_classes, mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, mix_prob=a.mix_prob,
                   switch_prob=a.switch_prob, smoothing=a.smoothing, distillation=d.type, distill_alpha=d.alpha,
                   ema_decay=config.ema_decay, mean=tuple(a.mean), std=tuple(a.std),
                   compact_erase=impl == "xla_cpu", mix_group_size=config.get("bn_group_size") or None)


def soft_target_cross_entropy(logits: Array, targets: Array) -> Array:
    """timm's SoftTargetCrossEntropy: mean over the batch of ``-sum(t * log_softmax(x))``."""
    return jnp.mean(jnp.sum(-targets * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1))


def hard_distillation_loss(logits: Array, dist_logits: Array, targets: Array, teacher_logits: Array,
                           alpha: float) -> Array:
    """DeiT's hard distillation: ``(1 - alpha) * CE(head, targets) + alpha * CE(head_dist, argmax teacher)``."""
    teacher_labels = jnp.argmax(teacher_logits, axis=-1)
    return ((1 - alpha) * soft_target_cross_entropy(logits, targets)
            + alpha * jnp.mean(cross_entropy(dist_logits, teacher_labels)))


def train_step(state: TrainState, batch: dict[str, Array], teacher: dict | None, *, graphdef: nnx.GraphDef,
               tx: optax.GradientTransformation, cfg: StepConfig,
               teacher_graphdef: nnx.GraphDef | None = None) -> tuple[TrainState, dict[str, Array]]:
    """One optimisation step: normalise, erase, mixup/cutmix, forward in training mode, loss,
    AGC + AdamW, EMA. ``batch``: uint8 images, labels and RandomErasing boxes from the pipeline."""
    key = jax.random.fold_in(state.rng, state.step)
    k_erase, k_mix = jax.random.split(key)
    images = normalize(batch["image"], cfg.mean, cfg.std)
    if "erase" in batch:
        images = erase(k_erase, images, batch["erase"], cfg.compact_erase)
    images, targets = mixup_cutmix(k_mix, images, batch["label"], cfg.num_classes, cfg.mixup_alpha,
                                   cfg.cutmix_alpha, cfg.mix_prob, cfg.switch_prob, cfg.smoothing,
                                   cfg.mix_group_size)
    teacher_logits = None
    if cfg.distillation == "hard":
        t_model = nnx.merge(teacher_graphdef, teacher["state"])
        teacher_logits = jax.lax.stop_gradient(t_model(images))

    def loss_fn(params):
        model = nnx.merge(graphdef, params, state.batch_stats)
        out = model(images)
        new_stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
        if cfg.distillation == "hard":  # a _distill model in training mode: (head, head_dist)
            logits, dist = out
            loss = hard_distillation_loss(logits, dist, targets, teacher_logits, cfg.distill_alpha)
        elif isinstance(out, tuple):  # validate_config says the same for a run
            raise ValueError("a _distill model trains with hard distillation only (StepConfig.distillation='hard' "
                             "and a teacher); without a teacher train the plain model")
        else:
            loss = soft_target_cross_entropy(out, targets)
        return loss, new_stats

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    d = cfg.ema_decay
    new = state.replace(step=state.step + 1, params=params, batch_stats=new_stats, opt_state=opt_state,
                        ema_params=optim.ema_update(state.ema_params, params, d),
                        ema_stats=optim.ema_update(state.ema_stats, new_stats, d))
    return new, {"loss": loss}


def eval_step(params: dict, batch_stats: dict, batch: dict[str, Array], *, graphdef: nnx.GraphDef,
              mean: tuple[float, ...], std: tuple[float, ...]) -> dict[str, Array]:
    """Sums over the real (``mask`` 1) samples of a batch: loss, top-1 and top-5 hits, count."""
    model = nnx.merge(graphdef, params, batch_stats)
    logits = model(normalize(batch["image"], mean, std))
    return eval_sums(logits, batch["label"], batch["mask"])
