"""The recipe's pieces against timm's own code (timm 0.5.4, the version the official LSNet trained
with; torchvision's RandomResizedCrop), on the same inputs: RegNetY-160 (the distillation
teacher), the lr scheduler as the official loop steps it, AGC + AdamW with the official
no-weight-decay set, Mixup/CutMix, RandAugment ``rand-m9-mstd0.5-inc1`` op by op on real photos
and its op/magnitude law, RandomErasing's and RandomResizedCrop's boxes, the eval transform,
SoftTargetCrossEntropy, the official hard DistillationLoss and ModelEma.

Deterministic parts are compared at fixed draws (pixels, values); random laws by two-sample
Kolmogorov-Smirnov tests on a few thousand seeded draws of each (fixed seeds: no flakiness).
Where this project deliberately differs (speed), the test states the bound."""

from __future__ import annotations

import io
import math
import random
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from data_utils import sample_photos
from flax import nnx
from PIL import Image
from scipy import stats

torch = pytest.importorskip("torch")
from lsnet_jax.torch_reference import import_timm  # noqa: E402

timm = import_timm()

from timm.data import auto_augment as timm_aa  # noqa: E402

from lsnet_jax.data import transforms as T  # noqa: E402
from lsnet_jax.train import augment, optim  # noqa: E402
from lsnet_jax.train.steps import hard_distillation_loss, soft_target_cross_entropy  # noqa: E402

KS_P = 1e-3  # the two samples come from one law unless the KS p-value is below this


def test_timm_is_the_recipe_version():
    assert timm.__version__ == "0.5.4"


# ----------------------------------------------------------------------------- RegNetY-160


@torch.no_grad()
def _randomised_regnet(name: str, seed: int, logit_scale: float = 10.0):
    """timm's model with random BatchNorm statistics and affines, the head scaled so that the
    logits are of order ``logit_scale``."""
    torch.manual_seed(seed)
    tm = timm.create_model(name).eval()
    g = torch.Generator().manual_seed(seed)
    for m in tm.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.uniform_(-0.2, 0.2, generator=g)
    x = torch.from_numpy(_images(2, 64, seed))
    std = float(tm(x).std())
    tm.head.fc.weight.mul_(logit_scale / std)
    return tm


def _images(n: int, size: int, seed: int) -> np.ndarray:
    from lsnet_jax.testing import diverse_images

    return diverse_images(n, size, seed)


def test_regnety_160_equals_timm(tmp_path):
    """DeiT's teacher through the real route: a DeiT-layout ``{'model': sd}`` .pth written by
    torch, ``lsnet-convert`` (variant detected), ``create_model(pretrained=...)``; float32 logits
    within 1e-4 of their std of timm's, folded too; 83,590,140 parameters as timm."""
    from lsnet_jax.cli.convert import main as convert_main
    from lsnet_jax.models.registry import compiled, create_model

    tm = _randomised_regnet("regnety_160", seed=1)
    n_timm = sum(p.numel() for p in tm.parameters())
    assert n_timm == 83_590_140
    torch.save({"model": tm.state_dict()}, tmp_path / "regnety_160-test.pth")
    assert convert_main([str(tmp_path / "regnety_160-test.pth"), str(tmp_path / "w")]) == 0
    x = _images(2, 96, seed=2)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    assert 5 < ref.std() < 20  # logits of order 10
    xj = jnp.asarray(x.transpose(0, 2, 3, 1))
    model = create_model("regnety_160", pretrained=tmp_path / "w")
    n_ours = sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert n_ours == n_timm
    got = np.asarray(compiled(model)(xj))
    err = np.abs(got - ref).max() / ref.std()
    folded = np.asarray(compiled(create_model("regnety_160", pretrained=tmp_path / "w", deploy=True))(xj))
    err_folded = np.abs(folded - ref).max() / ref.std()
    print(f"regnety_160 vs timm: logit std {ref.std():.3g}, max |diff| {err:.2g} std, folded {err_folded:.2g} std")
    assert err < 1e-4 and err_folded < 1e-4


def test_regnet_conversion_round_trip_is_exact(tmp_path):
    """timm's regnety_002 -> lsnet-convert -> --to-torch: timm loads the result strictly and every
    tensor is bit-identical; bfloat16 compute gives float32 logits close to timm's; a checkpoint
    of no known RegNet names its stages."""
    from lsnet_jax.checkpoints.state import CheckpointMismatchError
    from lsnet_jax.cli.convert import main as convert_main
    from lsnet_jax.models import regnet_official

    tm = _randomised_regnet("regnety_002", seed=3)
    torch.save(tm.state_dict(), tmp_path / "r.pth")
    assert convert_main([str(tmp_path / "r.pth"), str(tmp_path / "w")]) == 0
    assert convert_main(["--to-torch", str(tmp_path / "w"), str(tmp_path / "back.pth")]) == 0
    back = torch.load(tmp_path / "back.pth")["model"]
    fresh = timm.create_model("regnety_002")
    fresh.load_state_dict(back, strict=True)
    for k, v in tm.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(back[k], v), k
    # bfloat16 compute: float32 logits close to timm's float32 ones
    from lsnet_jax.models.registry import compiled, create_model

    x = _images(4, 64, seed=4)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    bf16 = np.asarray(compiled(create_model("regnety_002", pretrained=tmp_path / "w", dtype=jnp.bfloat16))(
        jnp.asarray(x.transpose(0, 2, 3, 1))))
    assert bf16.dtype == np.float32 and np.corrcoef(bf16.ravel(), ref.ravel())[0, 1] > 0.99
    sd = {k: v.numpy() for k, v in tm.state_dict().items() if not k.startswith("s4.")}
    with pytest.raises(CheckpointMismatchError, match="No RegNet variant has these stages"):
        regnet_official.detect_variant(sd)


# ----------------------------------------------------------------------------- lr schedule


def test_schedules_equal_timms_scheduler():
    """The official loop: ``create_scheduler(args)``, train an epoch at the optimizer's lr, then
    ``lr_scheduler.step(epoch)``. The per-step option: the same scheduler with t_in_epochs=False."""
    from timm.scheduler import create_scheduler
    from timm.scheduler.cosine_lr import CosineLRScheduler

    class Args:
        sched, epochs, lr, min_lr, warmup_lr, warmup_epochs = "cosine", 300, 4e-3, 1e-5, 1e-6, 5
        cooldown_epochs, decay_epochs, decay_rate, lr_noise, lr_noise_pct, lr_noise_std = 10, 30, 0.1, None, 0.67, 1.0
        lr_cycle_mul, lr_cycle_limit, seed, patience_epochs = 1.0, 1, 0, 10

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=4e-3)
    sched, _ = create_scheduler(Args, opt)
    timm_lrs = []
    for epoch in range(300):
        timm_lrs.append(opt.param_groups[0]["lr"])
        sched.step(epoch)
    ours = optim.official_epoch_lrs(4e-3, 300, 5, 1e-6, 1e-5)
    np.testing.assert_allclose(ours, timm_lrs, rtol=1e-12, atol=0)

    spe = 13
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=4e-3)
    per_step = CosineLRScheduler(opt, t_initial=300 * spe, lr_min=1e-5, warmup_lr_init=1e-6, warmup_t=5 * spe,
                                 t_in_epochs=False)
    steps = np.arange(0, 301 * spe, 7)
    want = []
    for t in steps:
        per_step.step_update(int(t))
        want.append(opt.param_groups[0]["lr"])
    got = np.asarray(optim.lr_schedule(4e-3, spe, 300)(steps))  # float32, in the step
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7 * 4e-3)


# ----------------------------------------------------------------------------- AGC + AdamW


def _nest(flat: dict) -> dict:
    out: dict = {}
    for path, v in flat.items():
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return out


def test_agc_adamw_and_decay_set_equal_timms_optimizer():
    """Two optimizer steps on LSNet-T's parameters with random gradients of mixed scales (some
    units clipped, some not): timm's ``create_optimizer_v2('adamw')`` with the official
    ``no_weight_decay`` (keys holding 'attention_biases') after ``adaptive_clip_grad(0.02,
    eps=1e-3)``, against ``optim.make_optimizer``. Same decay set, same parameters after."""
    from timm.optim import create_optimizer_v2
    from timm.utils import adaptive_clip_grad

    from lsnet_jax.checkpoints.torch_io import to_jax_layout, to_torch_layout
    from lsnet_jax.models.lsnet_official import torch_key
    from lsnet_jax.torch_reference import create_torch_model

    torch.manual_seed(0)
    tm = create_torch_model("lsnet_t")
    tm.no_weight_decay = lambda: {k for k in tm.state_dict() if "attention_biases" in k}
    opt = create_optimizer_v2(tm, "adamw", lr=4e-3, weight_decay=0.025, eps=1e-8, betas=(0.9, 0.999))
    names = {id(p): n for n, p in tm.named_parameters()}
    timm_decay = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    timm_no_decay = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}

    from lsnet_jax.models.lsnet_official import expected_jax_shapes

    paths = {torch_key(p): p for p in expected_jax_shapes("lsnet_t") if p[-1] in ("kernel", "bias", "scale",
                                                                                  "attention_biases")}
    assert set(paths) == set(names.values())
    params = _nest({paths[n]: jnp.asarray(to_jax_layout(paths[n], p.detach().numpy())) for n, p in tm.named_parameters()})
    mask = optim.decay_mask(params)
    ours_decay = {torch_key(tuple(str(getattr(k, "key", k)) for k in path))
                  for path, m in jax.tree_util.tree_flatten_with_path(mask)[0] if m}
    assert ours_decay == timm_decay and len(timm_no_decay) > 0
    print(f"decay set: {len(timm_decay)} tensors decayed, {len(timm_no_decay)} not (timm and ours)")

    tx = optim.make_optimizer(lambda step: 4e-3, weight_decay=0.025)
    state = tx.init(params)

    @jax.jit
    def step(grads, state, params):
        updates, state = tx.update(grads, state, params)
        return jax.tree.map(lambda p, u: p + u, params, updates), state

    rng = np.random.default_rng(1)
    clipped_units = []
    for _ in range(2):
        grads_t = {}
        for n, p in tm.named_parameters():
            scale = 10 ** rng.uniform(-5, 0)
            grads_t[n] = (rng.standard_normal(p.shape) * scale).astype(np.float32)
            p.grad = torch.from_numpy(grads_t[n].copy())
        before = {n: p.grad.clone() for n, p in tm.named_parameters()}
        adaptive_clip_grad(tm.parameters(), 0.02, eps=1e-3)
        clipped_units.append(sum(int((before[n] != p.grad).any()) for n, p in tm.named_parameters()))
        opt.step()
        grads = _nest({paths[n]: jnp.asarray(to_jax_layout(paths[n], g)) for n, g in grads_t.items()})
        params, state = step(grads, state, params)
    assert all(0 < c < len(names) for c in clipped_units)  # AGC both clipped and passed tensors
    flat = {torch_key(tuple(str(getattr(k, "key", k)) for k in path)): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    worst = 0.0
    for n, p in tm.named_parameters():
        got = to_torch_layout(paths[n], flat[n])
        worst = max(worst, float(np.abs(got - p.detach().numpy()).max()))
    print(f"after 2 AGC + AdamW steps: max |ours - timm| {worst:.2g} (lr 4e-3)")
    assert worst < 1e-6


# ----------------------------------------------------------------------------- Mixup / CutMix


def _timm_mixup(**kw):
    from timm.data import Mixup

    return Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode="batch",
                 label_smoothing=0.1, num_classes=10, **kw)


@pytest.mark.parametrize("use_cutmix", [False, True])
def test_mixup_cutmix_at_a_fixed_draw_equal_timm(use_cutmix):
    """timm's Mixup with its draws fixed (lambda 0.62, box centre (5, 17)) and ours at the same
    draw: CutMix pixels and targets exactly, Mixup within float32 rounding."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3, 24, 32)).astype(np.float32)
    y = np.array([0, 3, 3, 9, 1, 5])
    lam, cy, cx = 0.62, 5, 17
    draws = iter([0.0, 0.0 if use_cutmix else 0.9])  # rand() < prob; rand() < switch_prob
    ints = iter([cy, cx])
    with mock.patch.object(np.random, "rand", lambda *a: next(draws)), \
            mock.patch.object(np.random, "beta", lambda *a: lam), \
            mock.patch.object(np.random, "randint", lambda *a, **k: next(ints)):
        xt, yt = _timm_mixup()(torch.from_numpy(x.copy()), torch.from_numpy(y))
    targets = augment.smooth_one_hot(jnp.asarray(y), 10, 0.1)
    if use_cutmix:
        mask, lam_c = augment.cutmix_box_at(jnp.int32(cy), jnp.int32(cx), 24, 32, jnp.float32(lam))
    else:
        mask, lam_c = jnp.zeros((24, 32), bool), jnp.float32(lam)
    xo, yo = augment.mix_with(jnp.asarray(x.transpose(0, 2, 3, 1)), targets, jnp.asarray(use_cutmix), lam_c, mask)
    xo = np.asarray(xo).transpose(0, 3, 1, 2)
    if use_cutmix:
        np.testing.assert_array_equal(xo, xt.numpy())
        assert 0 < float(mask.mean()) < 1
    else:
        np.testing.assert_allclose(xo, xt.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(yo), yt.numpy(), rtol=1e-6, atol=1e-7)


def test_mixup_cutmix_laws_equal_timm():
    """4000 draws each at 32x32: how often CutMix is chosen, and the (corrected) lambda of each
    mode, have the same law as timm's ``_params_per_batch`` + ``cutmix_bbox_and_lam``."""
    from timm.data.mixup import cutmix_bbox_and_lam

    n = 4000
    np.random.seed(0)
    mix = _timm_mixup()
    timm_cut, timm_mix = [], []
    for _ in range(n):
        lam, use_cutmix = mix._params_per_batch()
        if use_cutmix:
            timm_cut.append(cutmix_bbox_and_lam((1, 3, 32, 32), lam, correct_lam=True)[1])
        else:
            timm_mix.append(lam)
    draw = jax.jit(jax.vmap(lambda k: augment.mix_draw(k, 32, 32)[:2]))
    use, lam = (np.asarray(a) for a in draw(jax.random.split(jax.random.key(0), n)))
    ours_cut, ours_mix = lam[use], lam[~use]
    frac_t, frac_o = len(timm_cut) / n, use.mean()
    sd = math.sqrt(0.25 / n)
    assert abs(frac_t - 0.5) < 4 * sd and abs(frac_o - 0.5) < 4 * sd
    p_mix = stats.ks_2samp(ours_mix, timm_mix).pvalue
    p_cut = stats.ks_2samp(ours_cut, timm_cut).pvalue
    print(f"Mixup/CutMix laws vs timm: CutMix share {frac_o:.3f} / {frac_t:.3f}; KS p mixup lambda "
          f"{p_mix:.2g}, cutmix corrected lambda {p_cut:.2g}")
    assert p_mix > KS_P and p_cut > KS_P


# ----------------------------------------------------------------------------- RandAugment


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    """224x224 centre regions of the photos scikit-learn ships."""
    out = []
    for p in sample_photos():
        img = Image.open(p).convert("RGB")
        w, h = img.size
        out.append(img.crop(((w - 224) // 2, (h - 224) // 2, (w + 224) // 2, (h + 224) // 2)))
    return out


FILL = (124, 116, 104)  # timm's img_mean for the ImageNet mean
HPARAMS = dict(timm_aa._HPARAMS_DEFAULT, img_mean=FILL, interpolation=Image.BICUBIC)
AFFINE = {"ShearX", "ShearY", "TranslateXRel", "TranslateYRel"}


class _Sign:
    """A stand-in for both RNGs' ``random()``: the same sign decision on both sides."""

    def __init__(self, value: float):
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize("name", T.RAND_INCREASING_TRANSFORMS)
def test_randaugment_ops_equal_timm(name, photos):
    """Each op of the increasing set at magnitudes 0, 4.5, 9, 10 and both signs, on real photos:
    the same argument as timm's ``LEVEL_TO_ARG``, and the same pixels as timm's op. Shears and
    translations (numpy ``shift_lines``, 1.7-2.5x faster than Pillow's generic affine path, which
    timm calls) are within one level on fewer than 0.25% of pixels; every other op is identical."""
    assert name in timm_aa._RAND_INCREASING_TRANSFORMS
    op, to_arg = T._OPS[name]
    for magnitude in (0.0, 4.5, 9.0, 10.0):
        for sign in (0.2, 0.8):
            with mock.patch.object(random, "random", lambda: sign):
                level_fn = timm_aa.LEVEL_TO_ARG[name]
                timm_args = level_fn(magnitude, HPARAMS) if level_fn is not None else ()
            arg = to_arg(_Sign(sign), magnitude, dict(translate_pct=0.45))
            assert (timm_args == ()) == (arg is None), name
            if timm_args:
                assert timm_args == (arg,), (name, magnitude, timm_args, arg)
            for img in photos:
                if name == "PosterizeIncreasing" and timm_args == (0,):
                    # m=10 asks for 0 bits: a black image in the Pillow of 2022; Pillow >= 10
                    # refuses bits=0, so timm's op raises here; ours keeps the black image
                    want = np.zeros_like(np.asarray(img))
                else:
                    want = np.asarray(timm_aa.NAME_TO_OP[name](img, *timm_args, fillcolor=FILL, resample=Image.BICUBIC))
                got = np.asarray(op(img, arg, FILL))
                diff = np.abs(got.astype(int) - want.astype(int))
                if name in AFFINE:
                    assert diff.max() <= 1 and (diff > 0).mean() < 0.0025, (name, magnitude, diff.max(), (diff > 0).mean())
                else:
                    np.testing.assert_array_equal(got, want, err_msg=f"{name} m={magnitude}")


def test_randaugment_law_equals_timm():
    """``rand-m9-mstd0.5-inc1``: which ops are applied, how many per image, and at what magnitude,
    over 3000 calls each, against timm's ``rand_augment_transform`` (ops recorded, not run)."""
    n = 3000
    img = Image.new("RGB", (8, 8), (100, 50, 20))
    timm_calls: list[list[tuple[str, float]]] = []
    ra = timm_aa.rand_augment_transform("rand-m9-mstd0.5-inc1", dict(HPARAMS))
    for augment_op in ra.ops:
        def level(magnitude, hparams, _name=augment_op.name):
            timm_calls[-1].append((_name, magnitude))
            return ()
        augment_op.level_fn = level
        augment_op.aug_fn = lambda img, *a, **k: img
    random.seed(0)
    np.random.seed(0)
    for _ in range(n):
        timm_calls.append([])
        ra(img)
    ours_calls: list[list[tuple[str, float]]] = []
    recording = {}
    for name, (op, to_arg) in T._OPS.items():
        def record(rng, level, hp, _name=name):
            ours_calls[-1].append((_name, level))
            return None
        recording[name] = (lambda img, a, fill: img, record)
    ours_ra = T.RandAugment("rand-m9-mstd0.5-inc1", FILL)
    rng = np.random.default_rng(0)
    with mock.patch.dict(T._OPS, recording):
        for _ in range(n):
            ours_calls.append([])
            ours_ra(img, rng)
    names = list(T.RAND_INCREASING_TRANSFORMS)
    count = lambda calls: np.bincount([names.index(o) for c in calls for o, _ in c], minlength=len(names))  # noqa: E731
    ct, co = count(timm_calls), count(ours_calls)
    chi = stats.chi2_contingency(np.stack([ct, co])).pvalue
    per_image = stats.chi2_contingency(np.stack([np.bincount([len(c) for c in timm_calls], minlength=3),
                                                 np.bincount([len(c) for c in ours_calls], minlength=3)])).pvalue
    mags = stats.ks_2samp([m for c in timm_calls for _, m in c], [m for c in ours_calls for _, m in c]).pvalue
    print(f"RandAugment law vs timm: ops applied {co.sum()} / {ct.sum()}; chi2 p ops {chi:.2g}, ops per image "
          f"{per_image:.2g}; KS p magnitude {mags:.2g}")
    assert chi > KS_P and per_image > KS_P and mags > KS_P


# ----------------------------------------------------------------------------- boxes and crops


def test_random_erasing_box_law_equals_timm():
    """RandomErasing (p 0.25, 'pixel', one box, area 0.02-1/3, aspect 0.3-3.3) at 224: how often
    a box is drawn, and its height, width, top and left, against timm's (box read off the tensor)."""
    from timm.data.random_erasing import RandomErasing

    n, size = 4000, 224
    random.seed(0)
    torch.manual_seed(0)
    er = RandomErasing(0.25, mode="pixel", max_count=1, device="cpu")
    timm_boxes = []
    for _ in range(n):
        x = torch.zeros(3, size, size)
        er(x)
        nz = np.argwhere(x.abs().sum(0).numpy() > 0)
        if len(nz):
            (t, l), (b, r) = nz.min(0), nz.max(0)
            timm_boxes.append((t, l, b - t + 1, r - l + 1))
    rng = np.random.default_rng(0)
    ours = [T.erasing_box(rng, size, size) for _ in range(n)]
    ours = [b for b in ours if b[2] > 0]
    sd = math.sqrt(0.25 * 0.75 / n)
    assert abs(len(ours) / n - 0.25) < 4 * sd and abs(len(timm_boxes) / n - 0.25) < 4 * sd
    ps = [stats.ks_2samp(np.asarray(ours)[:, i], np.asarray(timm_boxes)[:, i]).pvalue for i in range(4)]
    print(f"RandomErasing vs timm: boxes {len(ours)} / {len(timm_boxes)}; KS p (top, left, h, w) "
          + ", ".join(f"{p:.2g}" for p in ps))
    assert min(ps) > KS_P


def test_random_resized_crop_equals_torchvision():
    """The box law (scale 0.08-1, ratio 3/4-4/3) on a 640x427 photo against torchvision's
    ``RandomResizedCrop.get_params``; at a given box, the pixels of timm's
    ``RandomResizedCropAndInterpolation`` (torchvision's crop, then bicubic resize) exactly."""
    import torchvision.transforms as tvt
    from timm.data.transforms import RandomResizedCropAndInterpolation

    photo = Image.open(sample_photos()[0]).convert("RGB")
    n = 4000
    torch.manual_seed(0)
    tv = np.asarray([tvt.RandomResizedCrop.get_params(photo, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)])
    rng = np.random.default_rng(0)
    ours = np.asarray([T.rrc_params(rng, photo.size[0], photo.size[1]) for _ in range(n)])
    ps = [stats.ks_2samp(ours[:, i], tv[:, i]).pvalue for i in range(4)]
    print("RandomResizedCrop vs torchvision: KS p (top, left, h, w) " + ", ".join(f"{p:.2g}" for p in ps))
    assert min(ps) > KS_P
    buf = io.BytesIO()
    photo.save(buf, format="PNG")
    rrc = RandomResizedCropAndInterpolation(224, interpolation="bicubic")
    for box in [(10, 20, 300, 250), (0, 0, 427, 640), (100, 333, 97, 131)]:
        with mock.patch.object(RandomResizedCropAndInterpolation, "get_params", return_value=box), \
                mock.patch.object(T, "rrc_params", return_value=box):
            want = np.asarray(rrc(photo))
            got = np.asarray(T.random_resized_crop(T.open_image(buf.getvalue()), rng, 224))
        np.testing.assert_array_equal(got, want)


def test_eval_transform_equals_timm_create_transform():
    """timm's ``create_transform(224, is_training=False, interpolation='bicubic', crop_pct=0.875)``
    (resize 256, centre crop, ToTensor, Normalize) on the real photos, against ``EvalTransform``
    (uint8 out, normalised on the device): 0 levels apart."""
    from timm.data import create_transform

    from lsnet_jax.data.normalize import normalize

    tf = create_transform(224, is_training=False, interpolation="bicubic", crop_pct=0.875)
    for path in sample_photos():
        data = path.read_bytes()
        want = tf(Image.open(io.BytesIO(data)).convert("RGB")).numpy().transpose(1, 2, 0)
        got = T.EvalTransform(224, 0.875)(data)["image"]
        got = np.asarray(normalize(jnp.asarray(got[None]), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))[0]
        levels = np.abs(got - want) * np.asarray([0.229, 0.224, 0.225]) * 255
        assert levels.max() < 1e-3, levels.max()


# ----------------------------------------------------------------------------- losses and EMA


def test_losses_equal_timm_and_the_official_distillation_loss():
    """SoftTargetCrossEntropy against timm's; hard distillation against the official
    DistillationLoss('hard', alpha 0.5, tau 1) re-stated in torch from the official losses.py:
    ``(1 - alpha) * base(outputs, labels) + alpha * F.cross_entropy(outputs_kd, teacher.argmax(1))``."""
    from timm.loss import SoftTargetCrossEntropy

    rng = np.random.default_rng(0)
    logits, kd, teacher = (rng.normal(0, 3, (16, 10)).astype(np.float32) for _ in range(3))
    targets = rng.dirichlet(np.ones(10) * 0.3, 16).astype(np.float32)
    base = SoftTargetCrossEntropy()
    ref_ce = float(base(torch.from_numpy(logits), torch.from_numpy(targets)))
    assert float(soft_target_cross_entropy(jnp.asarray(logits), jnp.asarray(targets))) == pytest.approx(ref_ce, rel=1e-6)
    t = torch.from_numpy
    ref = (0.5 * base(t(logits), t(targets))
           + 0.5 * torch.nn.functional.cross_entropy(t(kd), t(teacher).argmax(dim=1)))
    ours = hard_distillation_loss(jnp.asarray(logits), jnp.asarray(kd), jnp.asarray(targets), jnp.asarray(teacher), 0.5)
    assert float(ours) == pytest.approx(float(ref), rel=1e-6)


def test_ema_equals_timm_model_ema():
    """timm's ModelEma (decay 0.99996 on every state-dict entry, BN statistics included) over three
    updates of a small conv-BN network, against ``optim.ema_update``."""
    from timm.utils import ModelEma

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Linear(6, 4))
    ema = ModelEma(net, decay=0.99996, device="cpu")
    ours = {k: v.numpy().astype(np.float32) for k, v in net.state_dict().items() if v.is_floating_point()}
    for _ in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            net[1].running_mean.add_(torch.randn(8))
            net[1].running_var.mul_(1.5)
        ema.update(net)
        new = {k: v.numpy() for k, v in net.state_dict().items() if k in ours}
        ours = jax.tree.map(np.asarray, optim.ema_update({k: jnp.asarray(v) for k, v in ours.items()},
                                                         {k: jnp.asarray(v) for k, v in new.items()}, 0.99996))
    for k, v in ema.ema.state_dict().items():
        if k in ours:
            np.testing.assert_allclose(ours[k], v.numpy(), rtol=1e-6, atol=1e-7, err_msg=k)
