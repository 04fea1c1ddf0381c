"""LSNet's array operations in two implementations, chosen explicitly by the model's config.

- ``reference``: what each operation computes, in plain ``jnp`` / ``lax`` with plain autodiff.
- ``xla_cpu``: the same operations formulated for speed on XLA:CPU (custom VJPs, chunked kernel
  gradients, a space-to-depth stem, tuned constants), held equal to ``reference`` by the tests.

Both modules expose ``conv1x1``, ``depthwise_conv``, ``conv2d``, ``ska`` and
``batch_norm_stats`` with the same signatures. A model is built with ``impl`` one of ``IMPLS``;
``"auto"`` is resolved once, when the model is built (``resolve``): ``xla_cpu`` where the default
backend is the CPU, ``reference`` elsewhere (no formulation has been measured faster on a GPU or
TPU yet).
"""

from __future__ import annotations

from types import ModuleType

import jax

from lsnet_jax.kernels import reference, xla_cpu
from lsnet_jax.kernels.reference import ska

IMPLS = ("auto", "reference", "xla_cpu")
_MODULES: dict[str, ModuleType] = {"reference": reference, "xla_cpu": xla_cpu}
# the formulation "auto" picks on each backend; a backend not listed gets the reference
_AUTO = {"cpu": "xla_cpu"}


def resolve(impl: str = "auto", backend: str | None = None) -> str:
    """The implementation ``impl`` stands for: itself, or for ``"auto"`` the one measured fastest
    on ``backend`` (default: JAX's default backend now)."""
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r}; choose one of {IMPLS}")
    if impl != "auto":
        return impl
    return _AUTO.get(backend or jax.default_backend(), "reference")


def get(impl: str) -> ModuleType:
    """The module of operations for ``impl`` (``"auto"`` resolved now)."""
    return _MODULES[resolve(impl)]


__all__ = ["IMPLS", "get", "reference", "resolve", "ska", "xla_cpu"]
