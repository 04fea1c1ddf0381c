"""Serving export: the serialized StableHLO reproduces the JAX logits, for any batch size."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from lsnet_jax import create_model, fold
from lsnet_jax.export import export_model, load_exported, save_exported
from lsnet_jax.testing import diverse_images


def test_exported_stablehlo_reproduces_the_logits(tmp_path):
    model = create_model("lsnet_t", num_classes=10, img_size=64, seed=3)
    model.train()  # BatchNorm statistics off their initial values, so the folding has work to do
    model(jnp.asarray(diverse_images(8, 64, seed=1).transpose(0, 2, 3, 1)))
    model.eval()
    for m in (fold(model),):  # the serving form; the unfolded model exports through the same path
        path = save_exported(export_model(m, 64), tmp_path / "m.jaxexport")
        exported = load_exported(path)
        for n in (1, 5):
            x = jnp.asarray(diverse_images(n, 64, seed=n + 10).transpose(0, 2, 3, 1))
            ref = np.asarray(m(x))
            got = np.asarray(exported.call(x))
            assert got.shape == (n, 10) and got.dtype == np.float32
            assert np.abs(got - ref).max() <= 1e-4 * max(float(np.abs(ref).max()), 1.0)
