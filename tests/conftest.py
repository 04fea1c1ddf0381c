import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# One persistent XLA compilation cache for the session, inherited by the training runs the tests
# start as subprocesses: a run and its resumption compile the same step once, not twice.
_CACHE = tempfile.mkdtemp(prefix="lsnet_jax_xla_cache_")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "2")
sys.path.insert(0, str(Path(__file__).parent))


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_CACHE, ignore_errors=True)


# The longest test files (minutes each, mostly compiling) go first. `--dist loadfile` hands files to
# the two workers in collection order, alphabetical by default, which put test_train.py last: its
# ~6 minutes then ran on one worker while the other had nothing left (the suite's tail).
_FIRST = ("test_train.py", "test_notebooks.py", "test_segmentation_train.py", "test_model.py", "test_export.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: _FIRST.index(item.path.name) if item.path.name in _FIRST else len(_FIRST))
