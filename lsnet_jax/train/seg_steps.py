"""Module-level segmentation training steps (pure functions, jit-compiled by the loop in
``lsnet_jax.tasks.segmentation`` and by the benchmark): the state, the poly schedule, mmseg's loss
and one optimisation step. Imports neither grain nor TFDS."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from lsnet_jax.data.normalize import normalize
from lsnet_jax.kernels.resize import resize_bilinear

Array = jax.Array
IGNORE_INDEX = 255  # as lsnet_jax.data.segmentation (not imported here: it needs PIL and the pipeline)


@struct.dataclass
class SegTrainState:
    step: Array
    params: dict
    batch_stats: dict
    opt_state: Any
    rng: Array  # the run's base key; each step folds in its number (Dropout2d)


def poly_schedule(lr: float, min_lr: float, power: float, total: int) -> optax.Schedule:
    """mmcv's PolyLrUpdaterHook per iteration: ``(lr - min_lr) * (1 - it / total) ** power + min_lr``."""
    def schedule(it):
        frac = jnp.clip(jnp.asarray(it, jnp.float32) / total, 0.0, 1.0)
        return (lr - min_lr) * (1.0 - frac) ** power + min_lr
    return schedule


def seg_cross_entropy(logits: Array, labels: Array) -> tuple[Array, Array]:
    """(loss, pixel accuracy in percent): softmax cross-entropy at the labels' resolution, pixels
    labelled 255 contributing 0 but counted in the mean (mmseg 0.30); accuracy over the others (100
    when there are none, as mmseg logs it).
    A label beyond the logits' classes (a dataset prepared without its range checked) is ignored
    as 255 is, never indexed: it would make the loss NaN."""
    logits = logits.astype(jnp.float32)
    valid = (labels != IGNORE_INDEX) & (labels < logits.shape[-1])
    safe = jnp.where(valid, labels, 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    loss = jnp.sum(jnp.where(valid, ce, 0.0)) / labels.size
    hits = jnp.sum((jnp.argmax(logits, -1) == labels) & valid)
    # mmseg's accuracy: float32 eps added to both counts, so a batch with every pixel ignored logs 100
    eps = jnp.finfo(jnp.float32).eps
    return loss, 100.0 * (hits + eps) / (jnp.sum(valid) + eps)


def pad_mask(valid: Array, shape: tuple[int, int]) -> Array:
    """``(N, H, W, 1)`` True inside each image's un-padded ``valid`` (h, w) corner."""
    ys = jnp.arange(shape[0])[None, :, None]
    xs = jnp.arange(shape[1])[None, None, :]
    return ((ys < valid[:, 0, None, None]) & (xs < valid[:, 1, None, None]))[..., None]


def seg_train_step(state: SegTrainState, batch: dict[str, Array], *, graphdef: nnx.GraphDef,
                   tx: optax.GradientTransformation, mean: tuple[float, ...], std: tuple[float, ...]
                   ) -> tuple[SegTrainState, dict[str, Array]]:
    """One step: normalise (padding set to 0 after, as mmseg pads the normalised image), forward in
    training mode, logits resized bilinearly to the labels, loss, AdamW."""
    key = jax.random.fold_in(state.rng, state.step)
    images = normalize(batch["image"], mean, std)
    images = jnp.where(pad_mask(batch["valid"], images.shape[1:3]), images, 0.0)
    labels = batch["label"].astype(jnp.int32)

    def loss_fn(params):
        model = nnx.merge(graphdef, params, state.batch_stats)
        logits = resize_bilinear(model(images, dropout_key=key), labels.shape[1:3])
        loss, acc = seg_cross_entropy(logits, labels)
        return loss, (nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)), acc)

    (loss, (stats, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new = state.replace(step=state.step + 1, params=params, batch_stats=stats, opt_state=opt_state)
    return new, {"loss": loss, "acc_seg": acc}


def init_state(model: nnx.Module, tx: optax.GradientTransformation, seed: int
               ) -> tuple[SegTrainState, nnx.GraphDef, nnx.GraphDef]:
    """A dense-prediction run's starting state (segmentation's and detection's: the same fields),
    and the model's training- and eval-mode graph definitions."""
    model.train()
    graphdef = nnx.graphdef(model)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    model.eval()
    state = SegTrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=stats,
                          opt_state=tx.init(params), rng=jax.random.key_data(jax.random.key(seed)))
    return state, graphdef, nnx.graphdef(model)
