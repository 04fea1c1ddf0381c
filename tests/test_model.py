"""Structure, parameter counts, initialisation and API of the JAX LSNet."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lsnet_jax import DEFAULT_CFGS, LSNet, create_model, fold, model_config
from lsnet_jax.models.layers import BatchNorm, attention_bias_idxs
from lsnet_jax.models.lsnet_official import expected_jax_shapes, jax_to_torch

CLASSIFIERS = sorted(DEFAULT_CFGS)  # the LSNet classifiers (list_models() also has the segmenters)
OFFICIAL = json.loads((Path(__file__).parent / "data" / "official_state_dict_keys.json").read_text())


def n_trainable(shapes: dict) -> int:
    """Trainable tensors as the official log counts them: no BatchNorm running statistics."""
    return sum(int(np.prod(s)) for p, s in shapes.items() if p[-1] not in ("mean", "var"))


def test_parameter_counts_equal_official():
    counts = {name: n_trainable(expected_jax_shapes(name)) for name in CLASSIFIERS}
    assert counts["lsnet_t"] == 11_409_832  # the official training log
    assert counts["lsnet_t_distill"] == 11_795_600
    for name, c in counts.items():
        assert c == OFFICIAL[name]["params"], name


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_layout_equals_official_state_dict(name):
    """Every official key, with its shape and dtype, is produced by the JAX model, and no other."""
    shapes = expected_jax_shapes(name)
    sd = jax_to_torch({p: np.broadcast_to(np.float32(0), s) for p, s in shapes.items()})
    ours = {k: (list(v.shape), "int64" if v.dtype == np.int64 else "float32") for k, v in sd.items()}
    theirs = {k: (s, t) for k, s, t in OFFICIAL[name]["state_dict"]}
    assert sorted(ours) == sorted(theirs)
    assert ours == theirs


def test_attention_bias_index_enumerates_offsets():
    r = 4
    idx = attention_bias_idxs(r)
    pts = [(i, j) for i in range(r) for j in range(r)]
    assert idx.shape == (16, 16) and idx.max() == r * r - 1
    first = {}
    for a, pa in enumerate(pts):
        for b, pb in enumerate(pts):
            off = (abs(pa[0] - pb[0]), abs(pa[1] - pb[1]))
            assert first.setdefault(off, idx[a, b]) == idx[a, b]
    assert [first[(dy, dx)] for dy in range(r) for dx in range(r)] == list(range(16))  # row-major


@pytest.fixture(scope="module")
def tiny():
    return create_model("lsnet_t_distill", img_size=64, num_classes=10)


def test_initialisation_follows_official(tiny):
    blk = tiny.stages[2].blocks[1]
    assert float(jnp.abs(blk.ffn.pw2.bn.scale[...]).max()) == 0.0  # bn_weight_init=0
    assert float(jnp.abs(blk.ffn.pw1.bn.scale[...] - 1).max()) == 0.0
    attn = tiny.stages[3].blocks[1].mixer
    assert float(jnp.abs(attn.proj.bn.scale[...]).max()) == 0.0
    assert float(jnp.abs(attn.attention_biases[...]).max()) == 0.0
    k = np.asarray(tiny.stages[2].blocks[1].mixer.lkp.cv1.c.kernel[...])  # 1x1, fan_in 256
    bound = 1 / np.sqrt(256)
    assert np.abs(k).max() <= bound and np.abs(k).max() > 0.95 * bound
    assert abs(k.std() - bound / np.sqrt(3)) < 0.05 * bound  # uniform(-b, b)
    w = np.asarray(tiny.head.l.kernel[...])
    assert abs(w.std() - 0.02) < 0.002 and float(jnp.abs(tiny.head.l.bias[...]).max()) == 0.0


@nnx.jit
def forward(model, x):
    return model(x)


def test_api_shapes_and_distillation_modes(tiny):
    x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
    feats = nnx.jit(lambda m, x: m.forward_intermediates(x))(tiny, x)
    assert [f.shape for f in feats] == [(2, 8, 8, 64), (2, 4, 4, 128), (2, 2, 2, 256), (2, 1, 1, 384)]
    assert [i["reduction"] for i in tiny.feature_info] == [8, 16, 32, 64]
    assert tiny.forward_head(feats[-1], pre_logits=True).shape == (2, 384)
    logits = forward(tiny, x)
    assert logits.shape == (2, 10)
    tiny.train()
    both = forward(tiny, x)
    tiny.eval()
    assert isinstance(both, tuple) and len(both) == 2
    with pytest.raises(ValueError, match="built for a 1x1 grid"):
        forward(tiny, jnp.zeros((1, 128, 128, 3)))


def test_other_resolution_and_bfloat16():
    m = create_model("lsnet_t", img_size=288, dtype=jnp.bfloat16)
    assert m.stages[3].blocks[1].mixer.resolution == 5
    y = forward(m, jnp.ones((1, 288, 288, 3)))
    assert y.dtype == jnp.float32 and y.shape == (1, 1000) and bool(jnp.all(jnp.isfinite(y)))


def test_fold_matches_unfolded_with_trained_statistics(tiny):
    """Fold after a few training-mode steps have moved every BatchNorm's statistics."""
    model = create_model("lsnet_t_distill", img_size=64, num_classes=10, seed=3)
    model.train()
    for i in range(3):
        forward(model, 2.0 * jax.random.normal(jax.random.key(i), (8, 64, 64, 3)) + 0.5)
    model.eval()
    x = jax.random.normal(jax.random.key(9), (4, 64, 64, 3))
    ref = forward(model, x)
    folded = fold(model)
    got = forward(folded, x)
    assert not any(isinstance(m, BatchNorm) for _, m in nnx.iter_graph(folded.stages[3].blocks[0].mixer))
    assert float(jnp.abs(got - ref).max()) < 5e-5 * float(ref.std()) + 1e-7


def test_batchnorm_training_semantics_match_torch_formulae():
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (6, 3, 3, 4)).astype(np.float32)
    bn = BatchNorm(4)
    y = np.asarray(bn(jnp.asarray(x)))
    flat = x.reshape(-1, 4).astype(np.float64)
    mean, var = flat.mean(0), flat.var(0)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.mean[...], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(bn.var[...], 0.9 + 0.1 * flat.var(0, ddof=1), rtol=1e-5)  # unbiased


def test_batchnorm_groups_normalise_each_group_alone():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 2, 2, 3)).astype(np.float32) * np.arange(1, 9)[:, None, None, None]
    grouped = np.asarray(BatchNorm(3, group_size=4)(jnp.asarray(x)))
    for g in range(2):
        alone = np.asarray(BatchNorm(3)(jnp.asarray(x[4 * g: 4 * g + 4])))
        np.testing.assert_allclose(grouped[4 * g: 4 * g + 4], alone, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not divisible"):
        BatchNorm(3, group_size=3)(jnp.asarray(x))


def test_unknown_model_is_explained():
    with pytest.raises(ValueError, match="available"):
        model_config("lsnet_xl")
    with pytest.raises(ValueError, match="multiple of 8"):
        create_model("lsnet_t", img_size=100)
    with pytest.raises(ValueError, match="impl='triton'; choose one of"):
        create_model("lsnet_t", impl="triton")
    with pytest.raises(ValueError, match=r"unknown LSNet config field\(s\) \['lks_size'\]"):
        create_model("lsnet_t", lks_size=5)
    assert isinstance(nnx.eval_shape(lambda: LSNet(model_config("lsnet_s"), rngs=nnx.Rngs(0))), LSNet)


def test_reference_and_xla_cpu_kernels_give_the_same_model():
    """The same LSNet-T with ``impl="reference"`` (plain lax, plain autodiff: what runs off CPU)
    and ``impl="xla_cpu"`` (the CPU formulations): logits, BatchNorm statistics, every parameter's
    gradient and the input's, in training mode, equal in float64. Float64: with random weights a
    training-mode LSNet amplifies float32 rounding to ~0.5% of its gradients."""
    # two blocks a stage: RepVGGDW and LSConv blocks, RepVGGDW and attention in the last stage,
    # every downsampling: each kind of layer, at a third of LSNet-T's depth (and compile time)
    small = dict(img_size=64, num_classes=10, seed=1, dtype=jnp.float64, depth=(0, 2, 2, 2))
    with jax.enable_x64(True):
        model = create_model("lsnet_t", impl="xla_cpu", **small)
        model.train()
        twin = create_model("lsnet_t", impl="reference", **small)
        twin.train()
        graphs = {"xla_cpu": nnx.graphdef(model), "reference": nnx.graphdef(twin)}
        assert model.impl == "xla_cpu" and twin.impl == "reference" and graphs["xla_cpu"] != graphs["reference"]
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        rest = jax.tree.map(lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                            nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param))))
        leaves, treedef = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.key(4), len(leaves))
        # every parameter moved off its initial value (zero BN scales would hide gradients)
        params = jax.tree.unflatten(treedef, [p.astype(jnp.float64) + 0.1 * jax.random.normal(k, p.shape, jnp.float64)
                                              for p, k in zip(leaves, keys)])
        x = 1.5 * jax.random.normal(jax.random.key(5), (4, 64, 64, 3), jnp.float64) + 0.3
        r = jax.random.normal(jax.random.key(6), (4, 10), jnp.float64)

        def loss(graph, params, rest, x):
            m = nnx.merge(graph, params, rest)
            logits = m(x)
            return jnp.sum(logits * r), (logits, nnx.to_pure_dict(nnx.state(m, nnx.BatchStat)))

        def run(impl):
            f = jax.value_and_grad(functools.partial(loss, graphs[impl]), argnums=(0, 2), has_aux=True)
            return jax.jit(f)(params, rest, x)

        cpu, ref = run("xla_cpu"), run("reference")
        a, b = jax.tree.leaves(cpu), jax.tree.leaves(ref)
        assert len(a) == len(b) > 100 and all(u.dtype == jnp.float64 for u in a)
        # each leaf against the largest value of its kind (the gradients of BatchNorm biases that
        # another BatchNorm follows are zero up to rounding, so their own scale says nothing)
        for part_a, part_b in ((cpu[0], ref[0]), (cpu[1], ref[1])):
            la, lb = jax.tree.leaves(part_a), jax.tree.leaves(part_b)
            scale = max(float(jnp.abs(u).max()) for u in la)
            worst = max(float(jnp.abs(u - v).max()) for u, v in zip(la, lb)) / scale
            assert worst < 1e-9, worst
        assert float(jnp.abs(cpu[1][1]).max()) > 0  # the input gradient is not trivially zero
