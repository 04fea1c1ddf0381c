"""PyTorch's ``.pth`` files read without torch, and without running the code a pickle may carry.

``torch.save`` writes a zip archive: ``NAME/data.pkl`` (a pickle of the saved object, whose
tensors point at storages by key), ``NAME/data/KEY`` (each storage's raw bytes) and
``NAME/byteorder``. ``load_pth`` unpickles ``data.pkl`` with an unpickler that resolves only the
names a checkpoint of tensors and plain containers uses: tensor and parameter rebuilds, storage
types, ``OrderedDict``, ``torch.Size``, torch dtypes and devices, numpy arrays and scalars, and
``argparse.Namespace`` (read as a dict: training checkpoints keep their arguments). Each of those
names maps to a function of this module or to a builtin; nothing is imported by name from the
file. Any other name (a class, ``os.system``, a quantized or sparse tensor) is refused with a
``RefusedPickle`` that names it. Tensors come back as numpy arrays (bfloat16 as
``ml_dtypes.bfloat16``), views of one storage read from it once, each array its own contiguous copy.

A hostile file cannot make it allocate more than the file's own size plus its tensors' copies: an
archive entry must be stored (``torch.save`` never compresses; a compressed entry could inflate a
few hundred bytes to gigabytes) and no larger than the file; a tensor may not view more elements
than its storage holds (a stride-0 view would expand a few bytes to any size); the allowlisted
constructors take no size from the file (``bytearray(n)`` and numpy's ``_reconstruct`` shape are
refused or ignored); and the path must be a regular file (a FIFO or device would block or never end).
"""

from __future__ import annotations

import codecs
import collections
import io
import math
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

# torch.save's storage types (what a tensor's storage is pickled as) and their element types
STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype(np.float64), "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16), "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64), "IntStorage": np.dtype(np.int32), "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8), "ByteStorage": np.dtype(np.uint8), "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64), "ComplexDoubleStorage": np.dtype(np.complex128),
}
# torch dtypes pickled by name (an optimizer's or AMP scaler's state may hold them)
TORCH_DTYPES: dict[str, np.dtype] = {
    "float64": np.dtype(np.float64), "float32": np.dtype(np.float32), "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16), "int64": np.dtype(np.int64), "int32": np.dtype(np.int32),
    "int16": np.dtype(np.int16), "int8": np.dtype(np.int8), "uint8": np.dtype(np.uint8), "bool": np.dtype(np.bool_),
    "complex64": np.dtype(np.complex64), "complex128": np.dtype(np.complex128),
}


class PthError(ValueError):
    """The file is not a ``torch.save`` checkpoint this reader can read; the message says why."""


class RefusedPickle(PthError):
    """The checkpoint's pickle names something other than tensors and plain containers."""

    def __init__(self, path: str | os.PathLike, name: str, why: str = ""):
        super().__init__(
            f"{path}: its pickle calls {name}{why}, which a checkpoint of tensors does not need; it was not run. "
            "Only tensors and plain containers are read without torch. If you trust the file, read it with "
            "torch (convert_torch.py --trust-pickle) and save its state dict.")
        self.name = name


class _Storage:
    """A storage type named in a persistent id (``torch FloatStorage``): its element type."""

    def __init__(self, name: str):
        self.name, self.dtype = name, STORAGE_DTYPES[name]


class _Marker:
    """A torch class named as a rebuild's argument (``torch.Tensor``, ``Parameter``): not called."""

    def __init__(self, name: str):
        self.name = name


class Namespace(dict):
    """An ``argparse.Namespace`` in a training checkpoint, read as the dict of its attributes."""

    def __setstate__(self, state: dict) -> None:
        self.update(state)


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_: Any) -> np.ndarray:
    """``torch._utils._rebuild_tensor(_v2)``: the tensor's view of its storage, copied out."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in (*size, *stride)):
        raise PthError(f"a tensor of size {size}, stride {stride}, offset {offset} is malformed")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    numel = math.prod(size)
    if numel > storage.size:  # a stride-0 (expanded) view: a few bytes of storage copied out to any size
        raise PthError(f"a tensor of size {size} has {numel} elements, more than its storage's {storage.size}: "
                       f"an expanded view, not a checkpoint's weights")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise PthError(f"a tensor of size {size} reaches element {last} of a storage of {storage.size}: "
                       "the file is truncated or corrupt")
    view = np.lib.stride_tricks.as_strided(storage[offset:], size, tuple(s * storage.itemsize for s in stride),
                                           writeable=False)
    return np.array(view, order="C")  # its own contiguous copy


def _rebuild_parameter(data: np.ndarray, requires_grad: bool, hooks: Any, state: Any = None) -> np.ndarray:
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: tuple, state: Any) -> Any:
    """A tensor subclass (``Parameter`` in some torch versions): its plain tensor."""
    if func not in (_rebuild_tensor, _rebuild_parameter) or not isinstance(new_type, _Marker):
        raise PthError(f"a tensor of type {getattr(new_type, 'name', new_type)} is rebuilt by another function")
    return func(*args)


def _torch_size(dims: tuple = ()) -> tuple[int, ...]:
    return tuple(int(d) for d in dims)


def _torch_device(*args: Any) -> str:
    return ":".join(str(a) for a in args)


def _numpy_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's ``_reconstruct``: an empty array that ``__setstate__`` then fills with the pickle's
    own bytes (its shape and data). The shape given here is not allocated: numpy pickles pass
    ``(0,)``, and a hostile one could ask for any size."""
    if subtype is not np.ndarray:
        raise PthError(f"a numpy array of type {subtype} is not a plain array")
    return np.ndarray.__new__(np.ndarray, (0,), dtype)


def _bytearray(*args: Any) -> bytearray:
    """``bytearray`` of bytes (protocol 2 pickles a bytearray so); ``bytearray(n)`` would allocate n."""
    if args and isinstance(args[0], int):
        raise PthError(f"its pickle asks for a bytearray of {args[0]} zero bytes: not data a checkpoint holds")
    return bytearray(*args)


def _numpy_scalar(dtype: np.dtype, data: Any = None) -> Any:
    from numpy._core.multiarray import scalar

    return scalar(dtype, data) if data is not None else scalar(dtype)


_SAFE: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _Marker("torch.Tensor"),
    ("torch.nn.parameter", "Parameter"): _Marker("torch.nn.parameter.Parameter"),
    ("torch", "Size"): _torch_size,
    ("torch", "device"): _torch_device,
    ("argparse", "Namespace"): Namespace,
    ("_codecs", "encode"): codecs.encode,  # bytes, in pickle protocol 2
    **{(m, f.__name__): f for m in ("builtins", "__builtin__")  # protocol 2 names them __builtin__
       for f in (set, frozenset, complex)},
    **{(m, "bytearray"): _bytearray for m in ("builtins", "__builtin__")},
    ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
    **{(m, "_reconstruct"): _numpy_reconstruct for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "scalar"): _numpy_scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{("torch", name): _Storage(name) for name in STORAGE_DTYPES},
    **{("torch", name): dt for name, dt in TORCH_DTYPES.items()},
}
_UNSUPPORTED = {"_rebuild_qtensor": " (a quantized tensor)", "_rebuild_sparse_tensor": " (a sparse tensor)",
                "_rebuild_sparse_csr_tensor": " (a sparse tensor)", "_rebuild_nested_tensor": " (a nested tensor)",
                "_rebuild_wrapper_subclass": " (a tensor subclass)",
                "_rebuild_meta_tensor_no_storage": " (a tensor without data)"}


class _Unpickler(pickle._Unpickler):
    """Python's own unpickler, not the C one: the C unpickler sizes its memo by the largest index a
    pickle puts (a 5-byte ``LONG_BINPUT 2**32-1`` asks it for 32 GB); this one keeps a dict. A
    checkpoint's pickle is small (its tensors' bytes are outside it), so its speed does not matter."""

    def __init__(self, data: bytes, path: str, storage):
        super().__init__(io.BytesIO(data))
        self._path, self._storage = path, storage

    def find_class(self, module: str, name: str) -> Any:
        found = _SAFE.get((module, name))
        if found is None:
            raise RefusedPickle(self._path, f"{module}.{name}", _UNSUPPORTED.get(name, ""))
        return found

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Storage)):
            raise PthError(f"{self._path}: a persistent id {str(pid)[:80]} is not a torch storage")
        _, kind, key, _location, numel = pid
        return self._storage(str(key), kind.dtype, int(numel))


def _check_entries(z: zipfile.ZipFile, file_size: int, path: str) -> None:
    """Every entry stored (uncompressed) and no larger than the file: what is read is then bounded
    by the file's own size."""
    for info in z.infolist():
        if info.compress_type != zipfile.ZIP_STORED:
            raise PthError(f"{path}: entry {info.filename} is compressed ({info.compress_type}); torch.save never "
                           f"compresses, and inflating it is unbounded: not a checkpoint this reader reads")
        if info.file_size > file_size or info.compress_size > file_size:
            raise PthError(f"{path}: entry {info.filename} declares {info.file_size} bytes in a file of {file_size}: "
                           f"the file is truncated or corrupt")


def _archive_prefix(names: list[str], path: str) -> str:
    if any(n.endswith("constants.pkl") for n in names):
        raise PthError(f"{path} is a TorchScript archive (torch.jit.save), not a checkpoint: save the "
                       "model's state_dict() with torch.save")
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if not pkl:
        raise PthError(f"{path} is a zip archive without data.pkl: not a torch.save checkpoint")
    return pkl[0][: -len("data.pkl")]


def load_pth(path: str | os.PathLike) -> Any:
    """The object ``torch.save`` wrote to ``path``, tensors as numpy arrays (see the module)."""
    path = str(path)
    if not Path(path).exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if not Path(path).is_file():  # a FIFO or a device would block or never end
        raise PthError(f"{path} is not a regular file (a directory, FIFO or device): give the checkpoint file")
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"\x80\x02" or head[:1] == b"\x80":
        raise PthError(f"{path} was written by torch's legacy serialization (torch < 1.6, or "
                       "_use_new_zipfile_serialization=False), which this reader does not read: load it with torch "
                       "and save it again with torch.save")
    if head[:2] != b"PK":
        raise PthError(f"{path} is not a torch.save checkpoint (a zip archive): it starts with {head!r}")
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            prefix = _archive_prefix(names, path)
            _check_entries(z, Path(path).stat().st_size, path)
            order = z.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names else "little"
            storages: dict[str, np.ndarray] = {}

            def storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
                if key not in storages:
                    name = f"{prefix}data/{key}"
                    if name not in names:
                        raise PthError(f"{path}: storage {name} is missing: the file is truncated or corrupt")
                    raw = z.read(name)
                    if len(raw) < numel * dtype.itemsize:
                        raise PthError(f"{path}: storage {name} holds {len(raw)} bytes, its tensors need "
                                       f"{numel * dtype.itemsize}: the file is truncated or corrupt")
                    arr = np.frombuffer(raw, dtype.newbyteorder("<" if order == "little" else ">"), numel)
                    storages[key] = arr.astype(dtype) if arr.dtype != dtype else arr
                return storages[key]

            return _Unpickler(z.read(prefix + "data.pkl"), path, storage).load()
    except (PthError, MemoryError):  # a MemoryError here would be a bound missed: not a refusal
        raise
    except Exception as e:  # a damaged archive or pickle fails in many ways (IndexError, struct.error, ...)
        raise PthError(f"{path} is not a readable torch.save checkpoint (truncated or corrupt: "
                       f"{type(e).__name__}: {str(e)[:200]}); download it again") from None

