"""Files we read may be hostile: a few hundred bytes of ``.pth``, a small image or a special file
made tools allocate 4-30 GB or block forever. Every allocation a file controls is bounded by what
a real file of its declared contents needs: the readers run here under a 2 GiB address-space limit
(an unbounded allocation is a MemoryError, which fails the test), on crafted files and on random
mutations of real ones (truncation, byte flips, length fields), and each file is either read or
refused with the reader's own one-line error. The peak memory is printed."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_utils import single_device_env

ROOT = Path(__file__).resolve().parents[1]

# Run in a child under RLIMIT_AS: reads every file given, prints one JSON line per file
# ({"file", "outcome": "read" | "refused" | "other", "error"}), then the peak RSS.
_READER = r"""
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, resource.RLIM_INFINITY))
kind, files = sys.argv[1], sys.argv[2:]
from lsnet_jax.checkpoints.pth import PthError, load_pth
from lsnet_jax.data import segmentation, transforms

def read(f):
    if kind == "pth":
        load_pth(f)
    else:
        data = transforms.read_image_file(f)
        transforms.EvalTransform(224, 0.875)(data)
        segmentation.decode_image(data)

def peak_mib():  # this process image's high-water mark (ru_maxrss would include the parent's, from fork)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

refusals = (PthError, FileNotFoundError) if kind == "pth" else (transforms.UnreadableImage,)
for f in files:
    try:
        read(f)
        out = {"outcome": "read"}
    except refusals as e:
        msg = str(e)
        out = {"outcome": "refused" if msg and "\n" not in msg and len(msg) < 600 else "other", "error": msg[:300]}
    except BaseException as e:  # MemoryError above all
        out = {"outcome": "other", "error": f"{type(e).__name__}: {str(e)[:300]}"}
    print(json.dumps({"file": f, **out, "peak_mib": peak_mib()}), flush=True)
print(json.dumps({"peak_rss_mib": peak_mib()}), flush=True)
"""


def _read_all(kind: str, files: list[Path], timeout: float = 300) -> tuple[dict[str, dict], float]:
    env = single_device_env() | {"PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", _READER, kind, *map(str, files)], capture_output=True, text=True,
                       timeout=timeout, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    peak = rows.pop()["peak_rss_mib"]
    return {Path(r["file"]).name: r for r in rows}, peak


def _check_outcomes(got: dict[str, dict], expected: dict[str, str]) -> int:
    """Each crafted file of ``expected`` refused with its words, no file failing otherwise; returns
    how many mutations were refused."""
    for f, what in expected.items():
        assert got[f]["outcome"] == "refused" and what in got[f]["error"], (f, got[f])
    other = {f: r for f, r in got.items() if r["outcome"] == "other"}
    assert not other, other
    return sum(r["outcome"] == "refused" for f, r in got.items() if f.startswith("m"))


def _mutations(data: bytes, n: int, seed: int) -> list[bytes]:
    """Truncations, byte flips and length fields overwritten with huge values, at random places."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        b = bytearray(data)
        kind = i % 3
        if kind == 0:
            b = b[: int(rng.integers(0, len(b)))]
        elif kind == 1:
            for pos in rng.integers(0, len(b), int(rng.integers(1, 9))):
                b[pos] ^= int(rng.integers(1, 256))
        else:
            pos = int(rng.integers(0, len(b) - 8))
            b[pos:pos + 4] = struct.pack("<I", int(rng.choice([0xFFFFFFFF, 0x7FFFFFFF, 0x10000000, 1 << 24])))
        out.append(bytes(b))
    return out


def _zip(entries: dict[str, bytes], compress: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compress) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_hostile_checkpoints_are_refused_in_bounded_memory(tmp_path):
    torch = pytest.importorskip("torch", reason="writes the real checkpoints that are mutated")
    files = []

    def add(name: str, data: bytes) -> None:
        (tmp_path / name).write_bytes(data)
        files.append(tmp_path / name)

    g = torch.Generator().manual_seed(0)
    sd = {"patch_embed.0.c.weight": torch.randn(16, 3, 3, 3, generator=g), "head.l.weight": torch.randn(10, 64, generator=g),
          "bn.num_batches_tracked": torch.tensor(7)}
    buf = io.BytesIO()
    torch.save({"model": sd, "epoch": 3}, buf)
    real = buf.getvalue()
    add("real.pth", real)
    # an expanded view: one float of storage, 10^10 elements once copied out (40 GB)
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(1).expand(100_000, 100_000)}, buf)
    add("expanded.pth", buf.getvalue())
    # a zip bomb: data.pkl deflated from 300 MB of zeros to ~300 KB
    with zipfile.ZipFile(io.BytesIO(real)) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in entries if n.endswith("data.pkl"))
    add("bomb.pth", _zip(entries | {pkl: entries[pkl] + b"\0" * 300_000_000}, zipfile.ZIP_DEFLATED))
    # pickles whose allowlisted constructors are asked for sizes: bytearray(10^12), and numpy's
    # _reconstruct with a shape of 10^12 bytes
    prefix = pkl[: -len("data.pkl")]
    add("bytearray.pth", _zip({f"{prefix}data.pkl": b"\x80\x02c__builtin__\nbytearray\n\x8a\x05\x00\x10\xa5\xd4\xe8\x85R.",
                               f"{prefix}byteorder": b"little"}))
    add("ndarray.pth", _zip({f"{prefix}data.pkl": b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
                                                  b"\x8a\x05\x00\x10\xa5\xd4\xe8\x85U\x01b\x87R.",
                             f"{prefix}byteorder": b"little"}))
    # a memo index of 2^32 - 1 (the C unpickler sizes its memo list by it: 32 GB)
    add("memo.pth", _zip({f"{prefix}data.pkl": b"\x80\x02Nr\xff\xff\xff\xff.", f"{prefix}byteorder": b"little"}))
    # a central directory that declares a storage of 2^40 bytes
    big = bytearray(real)
    name = next(n for n in entries if "/data/" in n).encode()
    at = big.rfind(name) - 46  # the central directory header of that entry
    assert big[at:at + 4] == b"PK\x01\x02"
    big[at + 24:at + 28] = struct.pack("<I", 0x7FFFFFFF)  # uncompressed size: 2 GiB
    add("declared.pth", bytes(big))
    for i, m in enumerate(_mutations(real, 240, seed=1)):
        add(f"m{i:03d}.pth", m)
    fifo = tmp_path / "fifo.pth"
    os.mkfifo(fifo)
    files += [fifo, Path("/dev/zero")]

    got, peak = _read_all("pth", files)
    assert got["real.pth"]["outcome"] == "read"
    expected = {"expanded.pth": "more than its storage", "bomb.pth": "is compressed",
                "bytearray.pth": "bytearray of", "fifo.pth": "not a regular file", "zero": "not a regular file",
                "declared.pth": "declares"}
    for f in ("ndarray.pth", "memo.pth"):  # nothing allocated for what they ask
        assert got[f]["outcome"] in ("read", "refused"), got[f]
    refused = _check_outcomes(got, expected)
    print(f"{len(files)} checkpoints: {refused} of 240 mutations refused in one line, the rest read; "
          f"peak RSS {peak:.0f} MiB")
    assert refused > 100 and peak < 512


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (its CRC fixed), with 1x1 of data."""
    data = bytearray(_png(np.zeros((1, 1, 3), np.uint8)))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    return bytes(data)


def test_hostile_images_are_refused_in_bounded_memory(tmp_path):
    import sklearn.datasets

    files = []

    def add(name: str, data: bytes) -> None:
        (tmp_path / name).write_bytes(data)
        files.append(tmp_path / name)

    jpeg = (Path(sklearn.datasets.__file__).parent / "images" / "china.jpg").read_bytes()  # a real photo
    add("china.jpg", jpeg)
    photo = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB").resize((160, 120)))
    add("photo.png", _png(photo))
    add("declared.png", _png_with_size(100_000, 100_000))  # 10^10 pixels declared in 70 bytes
    # small to decode (100 k pixels), 25.6 G pixels once its shorter side is resized to 256
    add("thin.png", _png(np.full((100_000, 1, 3), 128, np.uint8)))
    for i, m in enumerate(_mutations(jpeg, 90, seed=2) + _mutations(_png(photo), 90, seed=3)):
        add(f"m{i:03d}.{'jpg' if i < 90 else 'png'}", m)
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    files += [fifo, Path("/dev/zero")]

    got, peak = _read_all("image", files)
    assert got["china.jpg"]["outcome"] == got["photo.png"]["outcome"] == "read"
    refused = _check_outcomes(got, {"declared.png": "decompression bomb", "thin.png": "resizing its shorter side to "
                                    "256 makes it", "fifo.jpg": "not a regular file", "zero": "not a regular file"})
    print(f"{len(files)} images: {refused} of 180 mutations refused in one line, the rest read; "
          f"peak RSS {peak:.0f} MiB")
    assert refused > 30 and peak < 512
