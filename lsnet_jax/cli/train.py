"""Train LSNet: ``lsnet-train --config configs/lsnet_t.py --workdir DIR [--config.key=value ...]``
(``python train.py ...`` at the repository's root is the same command).

Runs on every device of this host, or of every host when launched on several (SLURM or
``JAX_COORDINATOR_ADDRESS`` set, or ``--distributed``). Restart the same command to resume.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "a configs/*.py file (':arg' selects a variant)",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "where checkpoints, log.txt, curves.png and TensorBoard events go")
flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() (multi-host runs)")
flags.mark_flags_as_required(["config", "workdir"])


def _multi_host() -> bool:
    return (flags.FLAGS.distributed or int(os.environ.get("SLURM_NTASKS", "1")) > 1
            or "JAX_COORDINATOR_ADDRESS" in os.environ)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; overrides look like --config.key=value")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    for noisy in ("absl", "jax._src.xla_bridge", "orbax", "tensorflow_datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import jax

    if _multi_host():
        env = os.environ
        if "JAX_COORDINATOR_ADDRESS" in env and "JAX_PROCESS_ID" in env:  # launched by hand or a script
            jax.distributed.initialize(env["JAX_COORDINATOR_ADDRESS"], int(env["JAX_NUM_PROCESSES"]),
                                       int(env["JAX_PROCESS_ID"]))
        else:  # SLURM and other clusters JAX detects
            jax.distributed.initialize()
    from lsnet_jax.checkpoints.run import CheckpointSaveError, install_quiet_orbax_errors
    from lsnet_jax.checkpoints.state import CheckpointMismatchError, CheckpointValueError
    from lsnet_jax.data.source import DatasetNotFoundError
    from lsnet_jax.tasks import train_and_evaluate
    from lsnet_jax.train.checks import ConfigError

    install_quiet_orbax_errors()  # a failed save or restore is reported in one line, not Orbax's tracebacks
    try:
        train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    except (ConfigError, DatasetNotFoundError, CheckpointMismatchError, CheckpointValueError) as e:
        print(f"error: {e}", file=sys.stderr)  # a checkpoint's mismatch lists its keys below this line
        sys.exit(2)
    except FloatingPointError as e:  # non-finite loss: the message names the step
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    except CheckpointSaveError as e:  # disk full, permissions: the message names the step and the space
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # a second Ctrl-C between saves: at once, without a traceback
        print(f"error: stopped at once by a second Ctrl-C; the same command resumes from the newest checkpoint "
              f"in {Path(flags.FLAGS.workdir) / 'checkpoints'}", file=sys.stderr)
        sys.exit(130)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with a bad command line (an unknown config key, a missing or broken config
    file, a bad value) answered in one line and exit 2 instead of a traceback."""
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # flags.Error, and what a config file or ConfigDict raises while parsed
        msg = str(e).strip().splitlines()
        reason = " ".join(x.strip() for x in msg if x.strip())[:600] or type(e).__name__
        print(f"error: bad command line: {reason}. Usage: {Path(argv[0]).name} --config configs/X.py "
              f"--workdir DIR [--config.key=value ...]; an unknown key is not one of the config's", file=sys.stderr)
        sys.exit(2)


def run() -> None:
    """The console script: huge pages for XLA's buffers first (``lsnet_jax.runtime``), then absl."""
    from lsnet_jax.runtime import restart_with_huge_pages

    restart_with_huge_pages()
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
