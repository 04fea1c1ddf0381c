"""Saving and loading LSNet weights: an Orbax checkpoint directory plus safetensors for interchange.

A weights directory written by ``save_weights`` (and by ``lsnet-convert``) holds
``config.json`` (model name, classes, image size, where the weights came from), ``orbax/``
(the state as an Orbax PyTree checkpoint) and ``model.safetensors`` (the same arrays, keys are
the JAX paths joined by dots, e.g. ``stages.2.blocks.1.mixer.lkp.cv4.kernel``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lsnet_jax.checkpoints.state import JaxPath, path_str, str_path

CONFIG_FILE, ORBAX_DIR, SAFETENSORS_FILE = "config.json", "orbax", "model.safetensors"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class OutputError(ValueError):
    """An output path that cannot or must not be written: says why and what to do."""


def overlap(output: str | os.PathLike, input_: str | os.PathLike) -> str | None:
    """How writing ``output`` would touch ``input_`` ("is", "contains", "lies inside"), or None;
    symbolic links are followed, so another name of the same place is the same place."""
    o, i = Path(os.path.realpath(output)), Path(os.path.realpath(input_))
    if o == i:
        return "is"
    if o in i.parents:
        return "contains"
    if i in o.parents:
        return "lies inside"
    return None


def check_inputs_kept(path: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> None:
    """Refuse an output that is, contains or lies inside one of ``inputs``, with or without
    --overwrite: writing it would replace (or, as a directory, delete) what the command reads."""
    p = Path(path).absolute()
    for i in inputs:
        how = overlap(p, i)
        if how:
            raise OutputError(f"the output {p} {how} {Path(i).absolute()}, which this command reads: writing "
                              f"it would destroy its input. Choose an output outside {Path(i).absolute()}")


def check_output(path: str | os.PathLike, overwrite: bool, inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse to replace an existing file or non-empty directory unless ``overwrite``, an output
    that is, contains or lies inside one of ``inputs`` (always), and an output that cannot be
    written (below a file, in a read-only directory), before any work is done."""
    check_inputs_kept(path, inputs)
    p = Path(path).absolute()
    if not overwrite and (p.is_file() or (p.is_dir() and any(p.iterdir()))):
        raise OutputError(f"{p} already exists{' and is not empty' if p.is_dir() else ''}; choose another "
                          f"output, or pass --overwrite to replace it (what it holds is deleted)")
    _check_writable(p)


def check_report(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> None:
    """A report file (``--json``) that can be written where asked, checked before the work whose
    result it holds: not a directory, not below a file or in a read-only directory, not an input."""
    check_inputs_kept(path, inputs)
    p = Path(path).absolute()
    if p.is_dir():
        raise OutputError(f"{p} is a directory; give a file name for the report")
    _check_writable(p)


def _check_writable(p: Path) -> None:
    why = unwritable(p)
    if why:
        raise OutputError(f"cannot write {p}: {why}; choose another output")


def existing_ancestor(path: str | os.PathLike) -> Path:
    """``path`` itself if it exists, else its nearest existing parent."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def unwritable(path: str | os.PathLike) -> str | None:
    """Why ``path`` (a file or directory to be made) cannot be created, or None."""
    parent = existing_ancestor(Path(path).absolute().parent)
    if not parent.is_dir():
        return f"{parent} is a file, not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable"
    return None


def temporary(target: str | os.PathLike, kind: str = "tmp") -> Path:
    """The hidden name beside ``target`` that a writer fills before renaming it to ``target``: it
    names this host and process, so that a later write can tell a dead writer's leftovers."""
    t = Path(target).absolute()
    return t.with_name(f".{t.name}.{kind}-{socket.gethostname()}-{os.getpid()}")


def remove_dead_temporaries(target: str | os.PathLike) -> list[Path]:
    """Remove what killed writers of ``target`` left beside it (``temporary`` names of this host
    whose process is gone); returns them. Another host's, or a live process's, are left alone."""
    t = Path(target).absolute()
    if not t.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(t.name)}\.(tmp|old)-(.+)-(\d+)")
    removed = []
    for f in t.parent.iterdir():
        m = pattern.fullmatch(f.name)
        if not m or m.group(2) != socket.gethostname() or process_alive(m.group(3)):
            continue
        shutil.rmtree(f, ignore_errors=True) if f.is_dir() and not f.is_symlink() else f.unlink(missing_ok=True)
        removed.append(f)
    return removed


def process_alive(pid) -> bool:
    """Whether process ``pid`` of this host is running (another user's counts as running)."""
    try:
        if int(pid) <= 0:  # os.kill(0, ...) would signal this process group
            return False
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError, OverflowError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def publish(tmp: Path, target: Path) -> None:
    """Move the finished ``tmp`` (a file or a directory next to ``target``) to ``target``, replacing
    what is there only now; files get the modes a plain write would give (0644 under umask 022),
    where safetensors and Orbax leave some at 0600."""
    mode = 0o666 & ~_umask()
    for f in [tmp, *tmp.rglob("*")] if tmp.is_dir() else [tmp]:
        os.chmod(f, (mode | 0o111 & ~_umask()) if f.is_dir() else mode)
    if target.is_dir() and not target.is_symlink():
        old = temporary(target, "old")
        os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old)
    else:
        os.replace(tmp, target)


def save_weights(directory: str | os.PathLike, state: Mapping[JaxPath, Any], meta: Mapping[str, Any],
                 overwrite: bool = False, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Write a flat state (``flat_state(model)``) to ``directory`` (Orbax + safetensors + config.json).
    It is written as a temporary directory beside it and renamed when complete, so an interrupted
    write leaves nothing that looks like weights; an existing non-empty ``directory`` is refused
    unless ``overwrite``, and one that is, contains or lies inside one of ``inputs`` always."""
    import orbax.checkpoint as ocp
    from safetensors.numpy import save_file

    d = Path(directory).absolute()
    check_output(d, overwrite, inputs)
    d.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(d)
    tmp = temporary(d)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        flat = {path_str(p): np.ascontiguousarray(a) for p, a in state.items()}
        save_file(flat, str(tmp / SAFETENSORS_FILE))
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / ORBAX_DIR, flat)
        (tmp / CONFIG_FILE).write_text(json.dumps(dict(meta), indent=2, sort_keys=True) + "\n")
        publish(tmp, d)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return d


def read_meta(path: str | os.PathLike | None) -> dict[str, Any]:
    """The ``config.json`` of a weights directory (model, classes, image size, mean/std, crop_pct,
    class names); ``{}`` for a bare ``.safetensors`` file, ``None`` or a directory without one."""
    f = Path(path) / CONFIG_FILE if path is not None else None
    return json.loads(f.read_text()) if f is not None and f.is_file() else {}


def load_weights(path: str | os.PathLike) -> tuple[dict[JaxPath, np.ndarray], dict[str, Any]]:
    """Read a weights directory or a ``.safetensors`` file. A directory's ``model.safetensors`` is
    read (0.03 s for LSNet-B, where its Orbax copy takes 0.7 s), else its ``orbax/``."""
    p = Path(path).absolute()
    if not p.exists():
        raise FileNotFoundError(f"no weights at {p}: give a directory written by convert_torch.py or "
                                "save_weights, or a .safetensors file")
    meta = read_meta(p)
    if p.is_dir():
        if (p / SAFETENSORS_FILE).exists():
            p = p / SAFETENSORS_FILE
        elif (p / ORBAX_DIR).exists():
            import orbax.checkpoint as ocp

            with ocp.StandardCheckpointer() as ckptr:
                flat = ckptr.restore(p / ORBAX_DIR)
            return {str_path(k): np.asarray(v) for k, v in flat.items()}, meta
        else:
            raise FileNotFoundError(f"{p} holds neither {ORBAX_DIR}/ nor {SAFETENSORS_FILE}")
    if not p.is_file():  # a FIFO would block, a device never end
        raise ValueError(f"{p} is not a regular file (a FIFO or device): give a weights directory or .safetensors file")
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        flat = load_file(str(p))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"cannot read {p} as safetensors ({e}); is the file truncated or of another format?") from e
    return {str_path(k): v for k, v in flat.items()}, meta
