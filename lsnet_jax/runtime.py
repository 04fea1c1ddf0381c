"""Process setup for fast CPU runs: transparent huge pages for malloc's large buffers.

XLA:CPU allocates the temporaries of each execution as one buffer (667 MB for the LSNet-T
training step at batch 32), with malloc, which maps it fresh from the kernel and unmaps it when
the execution ends. Every 4 KB page of it is faulted in again on first touch, every step: about
170,000 page faults a step, a fifth of its time on a 2-core CPU (docs/performance.md). glibc's
``glibc.malloc.hugetlb=1`` tunable makes malloc ask for transparent huge pages
(``madvise(MADV_HUGEPAGE)``) for what it maps: 2 MB a page, about 540 faults a step.

Tunables are read when a process starts, so the entry points (``train.py``, the benchmark and
evaluation scripts) call :func:`restart_with_huge_pages` first, which re-executes the process once
with the tunable added to ``GLIBC_TUNABLES``. ``LSNET_JAX_HUGE_PAGES=0`` turns that off; setting
``GLIBC_TUNABLES`` yourself does the same for any other program, a notebook's kernel included.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
SWITCH = "LSNET_JAX_HUGE_PAGES"  # "0": never restart
THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def _thp_available(path: str = THP_MODE) -> bool:
    """Whether the kernel grants transparent huge pages to a region that asks (``madvise`` or
    ``always`` mode)."""
    try:
        with open(path) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def huge_pages_env(environ: dict[str, str] | None = None, thp_path: str = THP_MODE) -> dict[str, str] | None:
    """The environment to restart with, or None where a restart would change nothing: not Linux
    with glibc, no transparent huge pages, switched off, or the tunable already chosen."""
    env = dict(os.environ if environ is None else environ)
    if env.get(SWITCH) == "0" or sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    current = env.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in current or not _thp_available(thp_path):
        return None
    env["GLIBC_TUNABLES"] = f"{current}:{TUNABLE}" if current else TUNABLE
    return env


def restart_with_huge_pages() -> None:
    """Re-execute this process (same interpreter, flags and arguments) with huge pages for
    malloc, unless :func:`huge_pages_env` says it would change nothing. Call it first thing in a
    script's ``__main__`` block, before anything is allocated that a restart would waste."""
    env = huge_pages_env()
    if env is None:
        return
    print(f"lsnet_jax: restarting with GLIBC_TUNABLES={env['GLIBC_TUNABLES']} (huge pages for XLA's "
          f"buffers; {SWITCH}=0 turns this off)", file=sys.stderr, flush=True)
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
