"""Image classification (``config.task`` ``"classification"``, the default): the published LSNet
recipe (LSNET_SPEC.md) as a task of the one loop (``lsnet_jax.train.loop``).

The data (``build_data``: grain over a TFDS source, repeated augmentation dealt to the BatchNorm
groups), the model (``build_model``) and the distillation teacher (``build_teacher``), AGC + AdamW
with the official schedule (``optim.from_config``), the step (``lsnet_jax.train.steps``), an
evaluation of the model and its EMA after every ``eval_every_epochs`` epochs, and the official
``log.txt`` row per epoch. ``DIR/best`` keeps the weights of the epoch with the best test top-1.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lsnet_jax import kernels
from lsnet_jax.data import pipeline, source
from lsnet_jax.data.transforms import EvalTransform, TrainTransform
from lsnet_jax.inference.evaluate import eval_step, run_eval
from lsnet_jax.models.registry import DTYPES, create_model, list_models, model_task
from lsnet_jax.train import optim
from lsnet_jax.train import workdir as workdirs
from lsnet_jax.train.checks import ConfigError, check_head
from lsnet_jax.train.config import architecture
from lsnet_jax.train.loop import Cadence, Init, LoopStats
from lsnet_jax.train.reporting import Panel
from lsnet_jax.train.steps import StepConfig, init_train_state, model_weights, train_step


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Stop before any work on settings that cannot run, saying what to change."""
    for key in ("batch_size", "epochs", "log_every_steps", "checkpoint_every_steps", "eval_every_epochs"):
        if not isinstance(config[key], int) or config[key] < 1:
            raise ConfigError(f"config.{key}={config[key]!r} must be a positive integer")
    if config.eval_batch_size is not None and config.eval_batch_size < 1:
        raise ConfigError(f"config.eval_batch_size={config.eval_batch_size!r} must be a positive integer (or None: "
                          f"batch_size)")
    if config.model not in list_models():
        raise ConfigError(f"config.model={config.model!r} is not a model; choose one of {list_models()}")
    if model_task(config.model) != "classification":
        classifiers = [n for n in list_models() if model_task(n) == "classification"]
        raise ConfigError(f"config.model={config.model!r} is a {model_task(config.model)} model; classification "
                          f"trains one of {classifiers} (its own task has its own config: --config.task)")
    if config.batch_size % num_devices:
        raise ConfigError(f"config.batch_size={config.batch_size} is not divisible by the {num_devices} "
                          f"devices; set --config.batch_size to a multiple of {num_devices}")
    eval_batch = config.eval_batch_size or config.batch_size
    if eval_batch % num_devices:
        raise ConfigError(f"config.eval_batch_size={eval_batch} is not divisible by the {num_devices} devices")
    if config.dtype not in DTYPES:
        raise ConfigError(f"config.dtype={config.dtype!r}; use one of {sorted(DTYPES)}")
    if config.impl not in kernels.IMPLS:
        raise ConfigError(f"config.impl={config.impl!r}; use one of {kernels.IMPLS}")
    if config.distillation.teacher_dtype and config.distillation.teacher_dtype not in DTYPES:
        raise ConfigError(f"config.distillation.teacher_dtype={config.distillation.teacher_dtype!r}; use one of "
                          f"{sorted(DTYPES)} or '' (the run's dtype)")
    if config.lr_schedule not in optim.SCHEDULES:
        raise ConfigError(f"config.lr_schedule={config.lr_schedule!r}; use one of {optim.SCHEDULES}")
    if config.img_size % 8:
        raise ConfigError(f"config.img_size={config.img_size} must be a multiple of 8")
    kind = config.distillation.type
    if kind not in ("none", "hard"):
        raise ConfigError(f"config.distillation.type={kind!r}; use 'none' or 'hard'")
    if kind == "none" and config.model.endswith("_distill"):
        # The official code builds no distillation head without a teacher (distillation type
        # 'none'), so its model is the plain one. Here the head would stay at its initialisation
        # while eval mode averages it into every prediction, and the weights written would carry
        # it under a name that promises a trained second head: train the plain model instead.
        plain = config.model.removesuffix("_distill")
        raise ConfigError(f"config.model={config.model!r} without a teacher (config.distillation.type='none') "
                          f"would leave its distillation head untrained but averaged into every prediction; "
                          f"train config.model={plain!r} (the official code builds no distillation head "
                          f"without a teacher), or give a teacher with --config.distillation.type=hard")
    if kind == "hard" and not config.model.endswith("_distill"):
        raise ConfigError(f"hard distillation needs a model with a distillation head, e.g. "
                          f"{config.model}_distill (config.model={config.model!r})")
    if kind == "hard" and not (config.distillation.teacher_model and config.distillation.teacher_checkpoint):
        raise ConfigError("hard distillation needs config.distillation.teacher_model and .teacher_checkpoint "
                          "(the published teacher: regnety_160 with DeiT's regnety_160-a5fe301d.pth converted by "
                          "lsnet-convert)")
    if kind == "hard" and config.distillation.teacher_model not in list_models():
        raise ConfigError(f"config.distillation.teacher_model={config.distillation.teacher_model!r} is not a model; "
                          f"choose one of {list_models()}")
    teacher = config.distillation.teacher_checkpoint
    if kind == "hard" and not (os.path.exists(teacher) or teacher.startswith("hf-hub:")):
        raise ConfigError(f"config.distillation.teacher_checkpoint={teacher!r} does not exist; give the teacher's "
                          f"weights directory (lsnet-convert regnety_160-a5fe301d.pth DIR, or lsnet-export-weights)")
    if config.init_weights and not (os.path.exists(config.init_weights) or config.init_weights.startswith("hf-hub:")):
        raise ConfigError(f"config.init_weights={config.init_weights!r} does not exist; give a directory written by "
                          f"lsnet-convert or lsnet-export-weights, or hf-hub:OWNER/REPO/FILE (e.g. "
                          f"hf-hub:jameslahm/lsnet/lsnet_t.pth, the published LSNet-T)")
    if config.bn_group_size and (config.batch_size // num_devices) % config.bn_group_size:
        raise ConfigError(f"config.bn_group_size={config.bn_group_size} must divide the per-device batch "
                          f"({config.batch_size // num_devices}); set --config.bn_group_size to a divisor of it, "
                          f"or to 0 for BatchNorm statistics over the global batch")


@dataclasses.dataclass(frozen=True)
class Data:
    train: pipeline.Loader
    eval: pipeline.Loader
    info: source.SourceInfo
    eval_info: source.SourceInfo
    num_classes: int


def sampler_replicas(config: ml_collections.ConfigDict) -> int:
    """The replicas repeated augmentation deals copies to: the BatchNorm groups (``bn_group_size``,
    the official per-GPU batch); one without groups, where BatchNorm spans the global batch. From
    the config alone, so that the data order does not depend on the number of devices."""
    return config.batch_size // config.bn_group_size if config.bn_group_size else 1


def build_data(config: ml_collections.ConfigDict, replicas: int = 1) -> Data:
    """The training and evaluation loaders of ``config.data`` with the transforms of ``config.aug``;
    ``replicas`` (``sampler_replicas``) for repeated augmentation."""
    d = config.data
    src, info = source.open_source(d.name, d.train_split, d.data_dir)
    esrc, einfo = source.open_source(d.name, d.eval_split, d.data_dir)
    io = dict(workers=d.workers, threads=d.threads, prefetch=d.prefetch)
    train = pipeline.train_loader(src, info, TrainTransform.from_config(config.aug, config.img_size),
                                  global_batch=config.batch_size, seed=config.seed, num_epochs=config.epochs,
                                  repeats=d.repeats, replicas=replicas, **io)
    evaluation = pipeline.eval_loader(esrc, einfo, EvalTransform.from_config(config.aug, config.img_size),
                                      global_batch=config.eval_batch_size or config.batch_size, **io)
    return Data(train, evaluation, info, einfo, config.num_classes or info.num_classes)


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> nnx.Module:
    """The model of ``config`` (from ``config.init_weights`` when set), in eval mode."""
    return create_model(config.model, pretrained=config.init_weights or None, num_classes=num_classes,
                        img_size=config.img_size, dtype=DTYPES[config.dtype],
                        bn_group_size=config.bn_group_size or None, seed=config.seed, impl=config.impl,
                        bn_momentum=config.bn_momentum, **architecture(config))


def build_teacher(config: ml_collections.ConfigDict,
                  num_classes: int) -> tuple[dict | None, nnx.GraphDef | None]:
    """The distillation teacher's state and graph (``None, None`` without hard distillation)."""
    if config.distillation.type != "hard":
        return None, None
    d = config.distillation
    # folded (deploy form): the teacher only runs forward, and most of a distillation step's
    # compute is its forward (RegNetY-160: ~16 GMACs at 224 against LSNet-T's 0.3)
    t = create_model(d.teacher_model, pretrained=d.teacher_checkpoint, img_size=config.img_size,
                     dtype=DTYPES[d.teacher_dtype or config.dtype], impl=config.impl, deploy=True)
    classes = t.cfg.num_classes
    if classes != num_classes:
        raise ConfigError(f"the teacher {d.teacher_model} ({d.teacher_checkpoint}) predicts {classes} classes, "
                          f"the dataset has {num_classes}: a teacher must be trained on the same classes")
    return {"state": nnx.to_pure_dict(nnx.state(t))}, nnx.graphdef(t)


class Classification:
    """The classification task of the one loop (``lsnet_jax.train.loop.Task``)."""

    best_metric = "test_acc1"
    curves = (Panel("test top-1 (%)", "log", "epoch", "epoch",
                    (("test_acc1", "model", "o-"), ("test_ema_acc1", "EMA", "s--"))),
              Panel("lr (epoch mean)", "log", "epoch", "epoch", (("train_lr", None, "o-"),)))

    def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh):
        validate_config(config, mesh.size)
        self.config, self.mesh = config, mesh
        self.data = build_data(config, sampler_replicas(config))
        self.num_classes, spe = self.data.num_classes, self.data.train.steps_per_epoch
        check_head(self.num_classes, self.data.info.num_classes, f"{config.data.name}/{config.data.train_split}")
        info = self.data.info
        self.fingerprint = workdirs.fingerprint(
            "classification", config.model, self.num_classes, config.img_size, config.data.name,
            config.data.train_split, architecture(config), data_version=info.version,
            data_examples=info.num_examples, batch_size=config.batch_size, seed=config.seed,
            repeats=config.data.repeats, bn_group_size=config.bn_group_size)
        self.cadence = Cadence(total_steps=config.epochs * spe, steps_per_epoch=spe, period=spe,
                               eval_every=config.eval_every_epochs)
        self.global_batch = config.batch_size
        self.schedule, self.tx = optim.from_config(config, spe)

    def train_iterator(self) -> Iterator[dict]:
        return self.data.train.iterator()

    def init(self) -> Init:
        config = self.config
        model = build_model(config, self.num_classes)
        self.n_parameters = sum(int(np.prod(x.shape)) for x in
                                jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param))))
        state, graphdef, eval_graphdef = init_train_state(model, self.tx, config.seed)
        step_cfg = StepConfig.from_config(config, self.num_classes, model.impl)
        del model
        teacher, teacher_graphdef = build_teacher(config, self.num_classes)
        rep, dat = NamedSharding(self.mesh, P()), NamedSharding(self.mesh, P("data"))
        self._eval_fn = jax.jit(functools.partial(eval_step, graphdef=eval_graphdef, mean=step_cfg.mean,
                                                  std=step_cfg.std), in_shardings=((rep, rep), dat),
                                out_shardings=rep)
        self._dat = dat
        step = functools.partial(train_step, graphdef=graphdef, tx=self.tx, cfg=step_cfg,
                                 teacher_graphdef=teacher_graphdef)
        return Init(state, teacher, step)

    def lr(self, steps: np.ndarray) -> np.ndarray:
        return self.schedule(steps)

    def _eval(self, params, batch_stats) -> dict[str, float]:
        return run_eval(lambda b: self._eval_fn((params, batch_stats), b), self.data.eval, self._dat)

    def evaluate(self, state) -> dict[str, Any]:
        return {"model": self._eval(state.params, state.batch_stats),
                "ema": self._eval(state.ema_params, state.ema_stats)}

    def row(self, done: int, stats: LoopStats, ev: dict[str, Any]) -> dict[str, Any]:
        m, e = ev["model"], ev["ema"]
        return stats.means() | {
            "test_loss": m["loss"], "test_acc1": m["top1"], "test_acc5": m["top5"],
            "test_ema_loss": e["loss"], "test_ema_acc1": e["top1"], "test_ema_acc5": e["top5"],
            "epoch": done // self.cadence.steps_per_epoch - 1, "n_parameters": self.n_parameters,
            "steps_per_epoch": self.cadence.steps_per_epoch, "step": done, "train_skipped": stats.skipped}

    def summary(self, row: dict[str, Any]) -> str:
        return (f"epoch {row['epoch']}: test top-1 {row['test_acc1']:.2f} top-5 {row['test_acc5']:.2f} loss "
                f"{row['test_loss']:.4f} | EMA top-1 {row['test_ema_acc1']:.2f}")

    def best_state(self, state) -> dict:
        return model_weights(state)

    def where(self, done: int) -> str:
        spe = self.cadence.steps_per_epoch
        return f"epoch {(done - 1) // spe}, step {(done - 1) % spe + 1}/{spe}" if done else "epoch 0"

    def run_info(self) -> dict[str, Any]:
        c = self.config
        return {"model": c.model, "num_classes": self.num_classes, "img_size": c.img_size,
                "n_parameters": self.n_parameters,
                "class_names": list(self.data.info.class_names)[:self.num_classes], "config": c.to_dict(),
                **({"model_config": architecture(c)} if architecture(c) else {})}

    def describe(self) -> str:
        c, cad = self.config, self.cadence
        return (f"{c.model}: {self.n_parameters} parameters, {self.num_classes} classes, "
                f"{self.data.info.num_examples} train / {self.data.eval_info.num_examples} eval images, "
                f"{cad.steps_per_epoch} steps/epoch x {c.epochs} epochs, peak lr "
                f"{optim.scaled_lr(c.lr, c.batch_size):.3g}")
