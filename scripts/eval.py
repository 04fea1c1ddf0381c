"""Top-1 / top-5 on ImageNet, its robustness sets or any TFDS split: ``lsnet_jax.evaluate``.

    python scripts/eval.py --weights weights/lsnet_t --sets imagenet,imagenet_a,imagenet_r,imagenet_sketch
    python scripts/eval.py --weights weights/lsnet_t --sets imagenet_c --json imagenet_c.json
    python scripts/eval.py --weights W --data lsnet_digits --split test --data_dir data/tfds --deploy

See ``python -m lsnet_jax.evaluate --help``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lsnet_jax.evaluate import main  # noqa: E402
from lsnet_jax.runtime import restart_with_huge_pages  # noqa: E402

if __name__ == "__main__":
    restart_with_huge_pages()
    sys.exit(main())
