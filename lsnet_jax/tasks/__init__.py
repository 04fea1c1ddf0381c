"""The tasks of the one training loop, by the name ``config.task`` gives (default
``"classification"``). A task is a class ``Task(config, mesh)`` with the handful of named parts
``lsnet_jax.train.loop.Task`` lists; adding one is one file here, a model family
and a data source, and one line in ``TASKS``: the loop does not change."""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections

from lsnet_jax.tasks.classification import Classification
from lsnet_jax.tasks.detection import Detection
from lsnet_jax.tasks.segmentation import Segmentation
from lsnet_jax.train import loop
from lsnet_jax.train.checks import ConfigError

TASKS: dict[str, type] = {"classification": Classification, "segmentation": Segmentation, "detection": Detection}


def get(name: str) -> type:
    """The task class of ``config.task``."""
    if name not in TASKS:
        raise ConfigError(f"config.task={name!r} is not a task; choose one of {sorted(TASKS)}")
    return TASKS[name]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                       devices: list[jax.Device] | None = None) -> dict[str, Any]:
    """Train (or resume) ``config``'s task in ``workdir`` with the one loop; returns the last
    evaluation's ``log.txt`` row."""
    return loop.train_and_evaluate(get(config.get("task", "classification")), config, workdir, devices)
