"""Published weights in one line: ``create_model("lsnet_t", pretrained=True)``.

The official checkpoints are downloaded from the Hugging Face Hub through ``huggingface_hub`` (its
cache, ``HF_HOME``, revision pinning, ``HF_HUB_OFFLINE=1``), read without torch
(``lsnet_jax.checkpoints.pth``), converted once and kept as weights directories under
``LSNET_JAX_CACHE`` (default ``~/.cache/lsnet_jax``): a second call reads the converted weights
and needs neither the network nor torch.

Names: ``pretrained=True`` takes the model's published checkpoint (``PUBLISHED``);
``"hf-hub:OWNER/REPO[/FILE][@REVISION]"``, as the model name or as ``pretrained``, takes any
repository holding an official-layout checkpoint (``FILE``, else ``model.safetensors``,
``pytorch_model.bin`` or ``REPO.pth``); the variant is read from the checkpoint's keys and shapes.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

HF_REPO = "jameslahm/lsnet"  # the official README's Hugging Face repository
PUBLISHED: dict[str, tuple[str, str]] = {
    name: (HF_REPO, f"{name}.pth")
    for v in ("t", "s", "b")
    for name in (f"lsnet_{v}", f"lsnet_{v}_distill", f"lsnet_{v}_semfpn", f"lsnet_{v}_retinanet", f"lsnet_{v}_maskrcnn")
}
DEFAULT_FILES = ("model.safetensors", "pytorch_model.bin")
PREFIX = "hf-hub:"


class PretrainedUnavailable(FileNotFoundError, ValueError):
    """The checkpoint is neither converted nor in the Hugging Face cache, and cannot be downloaded
    (a ``ValueError`` too: the command-line tools answer it as bad input, in one line)."""


@dataclasses.dataclass(frozen=True)
class HubSpec:
    repo: str
    filename: str | None = None
    revision: str | None = None

    @classmethod
    def parse(cls, spec: str) -> HubSpec:
        """``hf-hub:OWNER/REPO[/FILE][@REVISION]``."""
        body = spec.removeprefix(PREFIX)
        body, _, revision = body.partition("@")
        parts = body.split("/")
        if len(parts) < 2 or not all(parts):
            raise ValueError(f"{spec!r}: expected hf-hub:OWNER/REPO[/FILE][@REVISION], e.g. "
                             f"hf-hub:{HF_REPO}/lsnet_t.pth")
        return cls("/".join(parts[:2]), "/".join(parts[2:]) or None, revision or None)

    def __str__(self) -> str:
        return f"{PREFIX}{self.repo}{'/' + self.filename if self.filename else ''}@{self.revision or 'main'}"


def published(name: str) -> HubSpec:
    """The official checkpoint of ``name``."""
    if name not in PUBLISHED:
        raise ValueError(f"no published weights for {name!r}; published: {sorted(PUBLISHED)}. Train it "
                         "(train.py) or pass pretrained=DIR with weights of your own")
    repo, filename = PUBLISHED[name]
    return HubSpec(repo, filename)


def cache_dir() -> Path:
    root = os.environ.get("LSNET_JAX_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lsnet_jax"
    return Path(root)


def _converted_dir(spec: HubSpec) -> Path:
    return (cache_dir() / "hub" / spec.repo.replace("/", "--") / (spec.revision or "main")
            / (spec.filename or "default").replace("/", "--"))


def _download(spec: HubSpec) -> tuple[str, str]:
    """(local path, file name) of the checkpoint in the Hugging Face cache, downloaded if needed."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                            RevisionNotFoundError)
    except ImportError as e:
        raise ImportError("pretrained weights are downloaded with huggingface_hub: pip install huggingface_hub") from e
    names = [spec.filename] if spec.filename else [*DEFAULT_FILES, f"{spec.repo.split('/')[1]}.pth"]
    offline = False
    for f in names:
        try:
            return hf_hub_download(spec.repo, f, revision=spec.revision), f
        except LocalEntryNotFoundError:  # not cached, and offline (HF_HUB_OFFLINE or no network)
            offline = True
        except EntryNotFoundError:  # the repository has no such file: try the next name
            continue
        except (RepositoryNotFoundError, RevisionNotFoundError) as e:
            raise ValueError(f"{spec}: {str(e).splitlines()[0]}") from None
    if offline:
        first = names[0]
        raise PretrainedUnavailable(
            f"{spec}: not in the Hugging Face cache ({os.environ.get('HF_HOME') or '~/.cache/huggingface'}) and "
            f"the hub cannot be reached (offline). On a machine with network run: huggingface-cli download "
            f"{spec.repo} {first}{' --revision ' + spec.revision if spec.revision else ''}, and copy its cache "
            f"here (HF_HOME); or convert a local copy: lsnet-convert {first} OUT, then pretrained=OUT")
    raise ValueError(f"{spec}: the repository holds none of {names}")


def resolve(weights, name: str | None = None):
    """Where weights named by the user are: ``True`` is ``name``'s published checkpoint, an
    ``hf-hub:`` string that repository's; both are fetched and converted (``weights_dir``).
    Anything else is returned as it is (a path)."""
    if weights is True:
        return weights_dir(published(name))
    if isinstance(weights, (str, os.PathLike)) and str(weights).startswith(PREFIX):
        return weights_dir(HubSpec.parse(str(weights)))
    return weights


def weights_dir(spec: HubSpec) -> Path:
    """The converted weights of ``spec``: from this package's cache, else downloaded (or taken from
    the Hugging Face cache), read without torch, converted and cached."""
    out = _converted_dir(spec)
    if (out / "config.json").is_file():
        return out
    from lsnet_jax.checkpoints.weights import save_weights
    from lsnet_jax.models.conversion import from_official

    path, filename = _download(spec)
    sd, classes = _read(path)
    flat, meta = from_official(sd, what=str(spec))
    meta["source"] = str(HubSpec(spec.repo, filename, spec.revision))
    if classes and len(classes) == meta["num_classes"]:
        meta["class_names"] = classes
    try:
        save_weights(out, flat, meta)
    except (ValueError, OSError):  # written meanwhile by another process: theirs is the same conversion
        if not (out / "config.json").is_file():
            raise
    return out


def _read(path: str) -> tuple[dict, list[str] | None]:
    """The state dict of a checkpoint (torch-free), and the class names an MMSegmentation or
    MMDetection checkpoint keeps in its ``meta`` (``CLASSES``), if any."""
    from lsnet_jax.checkpoints.pth import load_pth
    from lsnet_jax.checkpoints.torch_io import float32, read_checkpoint, unwrap_checkpoint

    if path.endswith(".safetensors"):
        return read_checkpoint(path), None
    obj = load_pth(path)
    meta = obj.get("meta") if isinstance(obj, dict) else None
    classes = meta.get("CLASSES") if isinstance(meta, dict) else None
    return float32(unwrap_checkpoint(obj)), [str(c) for c in classes] if classes else None
