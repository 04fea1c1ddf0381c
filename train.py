"""``python train.py --config configs/digits.py --workdir runs/digits``: the same as ``lsnet-train``
(``lsnet_jax.cli.train``), from a checkout."""

from lsnet_jax.cli.train import run

if __name__ == "__main__":
    run()
