import os
import shutil
import sys
import tempfile
from pathlib import Path

# XLA:CPU at LLVM's lowest optimisation level for the code it generates: what the tests check is
# what is computed, not how fast it runs (the benchmark scripts measure that, at the default), and
# it compiles a third faster (a training step: 18.7 s -> 12.8 s, its losses equal to 3e-7). Child
# processes get it too (data_utils.single_device_env).
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ.setdefault("LSNET_JAX_TEST_XLA_FLAGS", TEST_XLA_FLAGS)
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {TEST_XLA_FLAGS}")
# One persistent XLA compilation cache for the session, inherited by the training runs the tests
# start as subprocesses: a run and its resumption compile the same step once, not twice.
_CACHE = tempfile.mkdtemp(prefix="lsnet_jax_xla_cache_")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
# every program, however quick to compile: each process (a CLI run, a notebook kernel) compiles a
# few hundred small ones (eager ops, ~25 ms each) that the processes after it then read (~1 ms)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
sys.path.insert(0, str(Path(__file__).parent))


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_CACHE, ignore_errors=True)

