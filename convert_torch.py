"""``python convert_torch.py CKPT OUT [--check]``: the same as ``lsnet-convert``
(``lsnet_jax.cli.convert``), from a checkout."""

import sys

from lsnet_jax.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
