"""PyTorch checkpoints as numpy: reading ``.pth`` / ``.safetensors`` files, writing official-layout
state dicts, and the layout changes between PyTorch (OIHW kernels, ``(out, in)`` linears) and JAX
(HWIO, ``(in, out)``). No model knowledge here: the name mapping of each model family is beside
the model (``lsnet_jax.models.lsnet_official``). Reading a ``.pth`` does not need torch
(``lsnet_jax.checkpoints.pth``, which admits tensors and plain containers only); ``trust_pickle``
reads any pickle with ``torch.load`` (the ``[torch]`` extra). Writing a ``.pth`` needs torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lsnet_jax.checkpoints.state import JaxPath, is_float_dtype


def to_torch_layout(path: JaxPath, a: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel" and a.ndim == 4:
        return np.ascontiguousarray(a.transpose(3, 2, 0, 1))  # HWIO -> OIHW
    if path[-1] == "kernel" and a.ndim == 2:
        return np.ascontiguousarray(a.T)  # (in, out) -> (out, in)
    return a


def to_jax_layout(path: JaxPath, a: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel" and a.ndim == 4:
        return np.ascontiguousarray(a.transpose(2, 3, 1, 0))  # OIHW -> HWIO
    if path[-1] == "kernel" and a.ndim == 2:
        return np.ascontiguousarray(a.T)
    return a


def torch_shape(path: JaxPath, shape: tuple[int, ...]) -> tuple[int, ...]:
    return to_torch_layout(path, np.empty(shape, np.uint8)).shape


def unwrap_checkpoint(obj: object, use_ema: bool = False) -> dict[str, np.ndarray]:
    """The state dict inside an official checkpoint: ``{'model': sd}``, ``{'model_ema': sd}``,
    ``{'state_dict': sd}`` or a bare state dict. ``module.`` prefixes (DDP) are stripped."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"expected a checkpoint dict, got {type(obj).__name__}")
    if use_ema:
        if "model_ema" not in obj:
            raise ValueError(f"--ema: the checkpoint has no 'model_ema' entry (top-level keys: {sorted(obj)[:10]})")
        sd = obj["model_ema"]
    elif "model" in obj and isinstance(obj["model"], Mapping):
        sd = obj["model"]
    elif "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        sd = obj["state_dict"]
    elif "model_ema" in obj and isinstance(obj["model_ema"], Mapping):
        sd = obj["model_ema"]
    else:
        sd = obj
    out = {}
    for k, v in sd.items():
        if not hasattr(v, "shape"):
            raise ValueError(f"checkpoint entry {k!r} is a {type(v).__name__}, not a tensor: this is not "
                             "a model state dict (is it an optimizer or a whole training checkpoint?)")
        out[k.removeprefix("module.")] = v
    return out


def read_checkpoint(path: str | Path, use_ema: bool = False, trust_pickle: bool = False) -> dict[str, np.ndarray]:
    """The model state dict of a .pth / .pt / .safetensors checkpoint, as numpy arrays."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a directory; give the checkpoint file (.pth, .pt or .safetensors)")
    if not path.is_file():  # a FIFO would block, a device never end
        raise ValueError(f"{path} is not a regular file (a FIFO or device); give the checkpoint file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes); download it again")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return unwrap_checkpoint(load_file(str(path)), use_ema)
        except SafetensorError as e:
            raise ValueError(f"{path} is not a readable safetensors file ({e})") from e
    if not trust_pickle:  # torch's zip format read here: no torch, and no code from the pickle run
        from lsnet_jax.checkpoints.pth import load_pth

        return float32(unwrap_checkpoint(load_pth(path), use_ema))
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: torch.load could not unpickle it ({str(e).splitlines()[0]})") from e
    except Exception as e:  # torch's readers fail in many ways on what is not a whole checkpoint
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"{path} is not a readable PyTorch checkpoint (truncated, corrupt or not a checkpoint: "
                         f"{type(e).__name__}: {first}); download it again") from e
    sd = unwrap_checkpoint(obj, use_ema)
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}


def float32(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Floating-point entries (float16, bfloat16, float64) as float32; integer buffers as they are."""
    return {k: np.asarray(v, np.float32) if is_float_dtype(np.asarray(v).dtype) else np.asarray(v) for k, v in sd.items()}




def write_state_dict(state_dict: Mapping[str, np.ndarray], path: str | Path, wrap: str = "model",
                     meta: Mapping | None = None, overwrite: bool = False, inputs: tuple = ()) -> Path:
    """An official-layout state dict as ``{wrap: sd}`` (``'model'`` for the classifiers,
    ``'state_dict'`` with ``meta`` for MMSegmentation) in a ``.pth`` (torch), or a ``.safetensors`` file;
    never over one of ``inputs`` (``check_output``)."""
    from lsnet_jax.checkpoints.weights import check_output, publish, remove_dead_temporaries, temporary

    path = Path(path).absolute()
    check_output(path, overwrite, inputs)
    remove_dead_temporaries(path)
    tmp = temporary(path)  # renamed when complete
    try:
        if path.suffix == ".safetensors":
            from safetensors.numpy import save_file

            save_file(dict(state_dict), str(tmp))
        else:
            import torch

            obj = {wrap: {k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()}}
            if meta is not None:
                obj["meta"] = dict(meta)
            torch.save(obj, tmp)
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
