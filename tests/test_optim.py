"""Optimisation pieces against independent computations: timm's schedule, decay mask and AGC
re-implemented in numpy on PyTorch layouts, EMA in closed form, the losses in float64 numpy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lsnet_jax.checkpoints.torch_io import to_torch_layout
from lsnet_jax.models.lsnet import LSNet, model_config
from lsnet_jax.models.lsnet_official import torch_key
from lsnet_jax.train import optim
from lsnet_jax.train.checks import Health, first_non_finite
from lsnet_jax.train.steps import hard_distillation_loss, soft_target_cross_entropy

DATA = Path(__file__).parent / "data"


def timm_cosine_lr(t: int, base: float, warmup_t: int, warmup_lr: float, min_lr: float, t_initial: int) -> float:
    """timm 0.5.4 CosineLRScheduler._get_lr (cycle_mul 1, cycle_limit 1, no warmup_prefix)."""
    if t < warmup_t:
        return warmup_lr + t * (base - warmup_lr) / warmup_t
    if t < t_initial:
        return min_lr + 0.5 * (base - min_lr) * (1 + math.cos(math.pi * t / t_initial))
    return min_lr


def test_scaled_lr_is_the_published_one():
    assert optim.scaled_lr(1e-3, 2048) == pytest.approx(4e-3)


def test_lr_schedule_at_known_steps():
    spe, epochs = 100, 300
    sched = optim.lr_schedule(4e-3, spe, epochs, warmup_epochs=5, warmup_lr=1e-6, min_lr=1e-5)
    assert float(sched(0)) == pytest.approx(1e-6)
    assert float(sched(250)) == pytest.approx(1e-6 + 250 * (4e-3 - 1e-6) / 500, rel=1e-6)
    assert float(sched(15000)) == pytest.approx(1e-5 + 0.5 * (4e-3 - 1e-5), rel=1e-5)  # half way: mid value
    assert float(sched(30000)) == pytest.approx(1e-5) and float(sched(40000)) == pytest.approx(1e-5)
    for t in [0, 1, 499, 500, 501, 1234, 14999, 29999]:
        ref = timm_cosine_lr(t, 4e-3, 500, 1e-6, 1e-5, 30000)
        assert float(sched(t)) == pytest.approx(ref, rel=2e-5), t


def test_official_schedule_equals_the_official_log():
    """The 300 train_lr values the official LSNet-T run logged (copied from the official
    repository's logs/lsnet_t.log into tests/data): per epoch, the scheduler stepped after each epoch."""
    logged = np.asarray(json.loads((DATA / "lsnet_t_train_lr.json").read_text())["train_lr"])
    ours = optim.official_epoch_lrs(optim.scaled_lr(1e-3, 2048), 300, 5, 1e-6, 1e-5)
    assert ours.shape == logged.shape == (300,)
    np.testing.assert_allclose(ours, logged, rtol=1e-9, atol=0)
    assert logged[0] == logged[1] == pytest.approx(1e-6) and logged[2] == pytest.approx(8.008e-4)
    # the per-step function trains every step of epoch e at that epoch's value (float32)
    spe = 7
    sched = optim.epoch_lr_schedule(4e-3, spe, 300, 5, 1e-6, 1e-5)
    steps = np.arange(0, 300 * spe + 3 * spe)
    got = np.asarray(jax.jit(sched)(steps))
    want = np.append(logged, [1e-5] * 3)[steps // spe]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # the per-step cosine without the lag is the option that differs: epoch 0 averages ~4e-4
    per_step = optim.lr_schedule(4e-3, spe, 300)
    assert float(np.mean(np.asarray(per_step(np.arange(spe))))) > 300 * logged[0]


@pytest.fixture(scope="module")
def lsnet_t_params():
    model = nnx.eval_shape(lambda: LSNet(model_config("lsnet_t"), rngs=nnx.Rngs(0)))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _flat(tree) -> dict[tuple, object]:
    return {tuple(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_decay_mask_over_the_real_tree(lsnet_t_params):
    """The official rule on the official key list: decay iff ndim > 1 and not attention_biases."""
    official = json.loads((DATA / "official_state_dict_keys.json").read_text())["lsnet_t"]
    shapes = {k: shape for k, shape, _ in official["state_dict"]}
    mask = _flat(optim.decay_mask(lsnet_t_params))
    params = _flat(lsnet_t_params)
    assert len(mask) == len(params)
    n_decay, n_total = 0, 0
    for path, m in mask.items():
        key = torch_key(path)
        ref = len(shapes[key]) > 1 and not key.endswith("attention_biases")
        assert m == ref, key
        n_decay += m
        n_total += 1
    assert 0 < n_decay < n_total
    assert not any(m for p, m in mask.items() if p[-1] in ("bias", "scale", "attention_biases"))


def numpy_timm_agc(p: np.ndarray, g: np.ndarray, clip: float, eps: float) -> np.ndarray:
    """timm.utils.agc.adaptive_clip_grad on one PyTorch-layout tensor, in float64 numpy."""
    def unitwise_norm(x):
        if x.ndim <= 1:
            return np.sqrt((x ** 2).sum())
        return np.sqrt((x ** 2).sum(axis=tuple(range(1, x.ndim)), keepdims=True))
    max_norm = np.maximum(unitwise_norm(p), eps) * clip
    g_norm = unitwise_norm(g)
    clipped = g * (max_norm / np.maximum(g_norm, 1e-6))
    return np.where(g_norm < max_norm, g, clipped)


def test_agc_matches_timm_on_pytorch_layouts(lsnet_t_params):
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0, 0.05, s.shape).astype(np.float32), lsnet_t_params)
    # gradients whose unit norms straddle the threshold: some units clipped, some not
    grads = jax.tree.map(lambda p: (rng.normal(0, 1, p.shape) * 10.0 ** rng.uniform(-5, -1, p.shape[-1:]))
                         .astype(np.float32), params)
    out, _ = optim.adaptive_grad_clip(0.02, 1e-3).update(grads, optax.EmptyState(), params)
    fp, fg, fo = _flat(params), _flat(grads), _flat(out)
    n_clipped = n_kept = 0
    for path in fp:
        p_t = to_torch_layout(path, np.asarray(fp[path], np.float64))
        g_t = to_torch_layout(path, np.asarray(fg[path], np.float64))
        ref = numpy_timm_agc(p_t, g_t, 0.02, 1e-3)
        got = to_torch_layout(path, np.asarray(fo[path], np.float64))
        np.testing.assert_allclose(got, ref, rtol=2e-5, atol=1e-12, err_msg=str(path))
        changed = ~np.isclose(ref, g_t)
        n_clipped += changed.any()
        n_kept += (~changed).any()
    assert n_clipped > 20 and n_kept > 20


def test_agc_treats_1d_tensors_as_one_unit():
    p = {"bn": {"scale": jnp.asarray([1.0, 0.0, 0.0])}}
    g = {"bn": {"scale": jnp.asarray([0.0, 0.03, 0.04])}}  # norm 0.05 > 0.02 * 1
    out, _ = optim.adaptive_grad_clip(0.02, 1e-3).update(g, optax.EmptyState(), p)
    np.testing.assert_allclose(np.asarray(out["bn"]["scale"]), [0.0, 0.012, 0.016], rtol=1e-5)


def test_adamw_step_with_mask_matches_numpy():
    params = {"k": {"kernel": jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32)},
              "n": {"bias": jnp.asarray([0.5, -0.5, 1.0, 2.0], jnp.float32)}}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)
    tx = optim.make_optimizer(lambda s: 1e-2, weight_decay=0.05, clip_grad=None)
    upd, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, upd)
    for name, leaf, decay in (("k", "kernel", True), ("n", "bias", False)):
        p = np.asarray(params[name][leaf], np.float64)
        m, v = 0.1 * 0.1, 0.001 * 0.01  # first Adam moments after one step
        mhat, vhat = m / 0.1, v / 0.001
        ref = p - 1e-2 * (mhat / (np.sqrt(vhat) + 1e-8) + (0.05 * p if decay else 0))
        np.testing.assert_allclose(np.asarray(new[name][leaf]), ref, rtol=1e-5)


def test_ema_closed_form():
    e = {"w": jnp.asarray([1.0, -2.0]), "s": {"mean": jnp.asarray([0.0])}}
    p = {"w": jnp.asarray([3.0, 5.0]), "s": {"mean": jnp.asarray([4.0])}}
    for _ in range(10):
        e = optim.ema_update(e, p, 0.9)
    k = 0.9 ** 10
    np.testing.assert_allclose(np.asarray(e["w"]), k * np.array([1.0, -2.0]) + (1 - k) * np.array([3.0, 5.0]),
                               rtol=1e-6)
    np.testing.assert_allclose(np.asarray(e["s"]["mean"]), (1 - k) * 4.0, rtol=1e-6)


def _log_softmax64(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_losses_against_numpy():
    rng = np.random.default_rng(1)
    logits, dist, teacher = (rng.normal(0, 3, (6, 10)).astype(np.float32) for _ in range(3))
    t = rng.dirichlet(np.ones(10), 6).astype(np.float32)
    ref = float(np.mean(np.sum(-t * _log_softmax64(logits), -1)))
    assert float(soft_target_cross_entropy(jnp.asarray(logits), jnp.asarray(t))) == pytest.approx(ref, rel=1e-5)
    hard = teacher.argmax(-1)
    ref_kd = 0.5 * ref + 0.5 * float(np.mean(-_log_softmax64(dist)[np.arange(6), hard]))
    got = hard_distillation_loss(jnp.asarray(logits), jnp.asarray(dist), jnp.asarray(t), jnp.asarray(teacher), 0.5)
    assert float(got) == pytest.approx(ref_kd, rel=1e-5)


def test_a_saved_state_is_good_when_the_loss_after_it_is_finite_and_no_spike():
    rows = [{"step": s, "loss": v} for s, v in [(12, 2.0), (13, float("nan")), (14, float("inf"))]]
    assert first_non_finite(rows[:1]) is None and first_non_finite(rows)["step"] == 13
    h = Health(factor=10.0, warmup=3)
    h.judge([{"step": s, "loss": 2.0 + 0.1 * s} for s in range(1, 6)])
    h.saved(5)  # judged by step 6's loss
    h.judge([{"step": 6, "loss": 2.5}])
    assert h.good == 5 and h.suspects() == []
    h.saved(6)
    h.saved(8)
    h.judge([{"step": 7, "loss": 30.0}, {"step": 8, "loss": 2.4}])  # a spike (12x the median) judges step 6
    assert h.good == 5 and h.suspects() == [6, 8] and 30.0 not in h.recent  # a spike stays out of the median
    h.judge([{"step": 9, "loss": 2.3}])
    assert h.good == 8 and h.suspects() == []
    h.saved(9)
    h.judge([{"step": 10, "loss": float("nan")}])
    assert h.good == 8 and h.suspects() == [9] and len(h.recent) == 8


@pytest.mark.parametrize("name,wd", [("lsnet_t", 0.025), ("lsnet_s", 0.025), ("lsnet_b", 0.05)])
def test_variant_configs_hold_the_published_recipe(name, wd):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c, d = module.get_config(), module.get_config("distill")
    assert (c.model, d.model, d.distillation.type) == (name, f"{name}_distill", "hard")
    assert (c.epochs, c.batch_size, c.weight_decay, c.warmup_epochs, c.clip_grad) == (300, 2048, wd, 5, 0.02)
    assert optim.scaled_lr(c.lr, c.batch_size) == pytest.approx(4e-3)
    assert (c.min_lr, c.warmup_lr, c.ema_decay, c.dtype) == (1e-5, 1e-6, 0.99996, "float32")
    assert (c.aug.randaugment, c.aug.reprob, c.aug.mixup, c.aug.cutmix, c.aug.smoothing, c.data.repeats) == \
        ("rand-m9-mstd0.5-inc1", 0.25, 0.8, 1.0, 0.1, 3)
    # the official run, not only its hyper-parameters: per-epoch lr, per-GPU (256) groups, full decodes
    assert (c.lr_schedule, c.bn_group_size, c.aug.fast_decode) == ("official", 256, False)
    assert (d.distillation.teacher_model, d.distillation.alpha) == ("regnety_160", 0.5)
