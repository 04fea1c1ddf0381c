"""The huge-pages restart of the entry points (lsnet_jax.runtime)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lsnet_jax import runtime

ROOT = Path(__file__).resolve().parents[1]


def _thp(tmp_path: Path, mode: str) -> str:
    path = tmp_path / f"enabled_{mode}"
    path.write_text({"madvise": "always [madvise] never\n", "never": "always madvise [never]\n"}[mode])
    return str(path)


@pytest.mark.skipif(sys.platform != "linux" or runtime.platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_the_tunable_is_added_once_and_only_where_it_helps(tmp_path):
    madvise, never = _thp(tmp_path, "madvise"), _thp(tmp_path, "never")
    assert runtime.huge_pages_env({}, madvise)["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    kept = runtime.huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, madvise)
    assert kept["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert runtime.huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, madvise) is None  # the user's choice
    assert runtime.huge_pages_env({"LSNET_JAX_HUGE_PAGES": "0"}, madvise) is None
    assert runtime.huge_pages_env({}, never) is None  # nothing to gain
    assert runtime.huge_pages_env({}, str(tmp_path / "missing")) is None


def test_a_script_restarts_itself_with_its_arguments_and_flags(tmp_path):
    """The real restart: a script calling it first runs again (same interpreter flags and
    arguments) with the tunable set, exactly once, where huge_pages_env asks for it."""
    script = tmp_path / "entry.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        print("start", flush=True)
        from lsnet_jax.runtime import restart_with_huge_pages
        restart_with_huge_pages()
        print("args", sys.argv[1:], "nobytecode", sys.flags.dont_write_bytecode, "tunables", os.environ.get("GLIBC_TUNABLES"))
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "LSNET_JAX_HUGE_PAGES")}
    out = subprocess.run([sys.executable, "-B", str(script), "--a", "b c"], env=env, capture_output=True, text=True,
                         check=True)
    expected = runtime.huge_pages_env(env)
    lines = out.stdout.splitlines()
    assert lines[-1].startswith("args ['--a', 'b c'] nobytecode 1 tunables ")
    if expected is None:
        assert lines.count("start") == 1 and lines[-1].endswith("tunables None")
    else:
        assert lines.count("start") == 2 and "restarting with GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in out.stderr
        assert lines[-1].endswith("tunables glibc.malloc.hugetlb=1")
    off = subprocess.run([sys.executable, str(script)], env={**env, "LSNET_JAX_HUGE_PAGES": "0"},
                         capture_output=True, text=True, check=True)
    assert off.stdout.splitlines().count("start") == 1 and off.stdout.rstrip().endswith("tunables None")
