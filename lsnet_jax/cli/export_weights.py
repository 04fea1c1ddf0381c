"""Weights out of a training run: ``lsnet-export-weights --workdir DIR --out W [--ema] [--best]``.

Writes the model (or its EMA) of the newest checkpoint in ``DIR/checkpoints`` (or of ``DIR/best``)
as a weights directory that ``create_model(name, pretrained=W)``, ``lsnet-convert --to-torch``
and a distillation teacher (``--config.distillation.teacher_checkpoint=W``) read.
"""

from __future__ import annotations

import argparse
import sys

from lsnet_jax.cli.args import nonnegative_int


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lsnet-export-weights", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ema", action="store_true", help="the EMA weights (and EMA BatchNorm statistics)")
    ap.add_argument("--best", action="store_true", help="the best checkpoint instead of the newest")
    ap.add_argument("--step", type=nonnegative_int, default=None)
    ap.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    args = ap.parse_args(argv)

    from lsnet_jax.checkpoints.run import export_weights, install_quiet_orbax_errors

    install_quiet_orbax_errors()  # a checkpoint that does not restore is one line, then the previous one
    try:
        out = export_weights(args.workdir, args.out, args.ema, args.best, args.step, args.overwrite)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


def run() -> None:
    """The console script."""
    sys.exit(main())


if __name__ == "__main__":
    run()
