"""Tiny image datasets built on the fly: an ImageNet-style folder tree of real JPEG files (made here,
plus the photos scikit-learn ships) turned into a TFDS ``imagenet_folder`` dataset."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

def single_device_env(**extra: str) -> dict[str, str]:
    """The environment of a child JAX process on one CPU device, as a user's (no forced device
    count), with the tests' XLA flags (conftest)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return env | {"XLA_FLAGS": os.environ.get("LSNET_JAX_TEST_XLA_FLAGS", "")} | extra


# one colour per class: a readable label, even after cropping and resizing
CLASS_COLOURS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], np.float32)


def sample_photos() -> list[Path]:
    """The JPEG photos that scikit-learn ships (china.jpg, flower.jpg; 427x640)."""
    import sklearn.datasets

    return sorted((Path(sklearn.datasets.__file__).parent / "images").glob("*.jpg"))


def class_jpeg(label: int, seed: int, size: tuple[int, int]) -> bytes:
    """A JPEG of ``size`` (w, h) in its class colour with texture, so crops keep the colour."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = CLASS_COLOURS[label]
    coarse = rng.normal(0, 25, (h // 16 + 1, w // 16 + 1, 3))
    tex = np.repeat(np.repeat(coarse, 16, 0), 16, 1)[:h, :w]
    img = np.clip(base + tex + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_folder_tree(root: Path, n_train: int = 8, n_val: int = 4, corrupt: bool = True) -> Path:
    """``root/{train,val}/<class>/*.JPEG`` with 3 classes of sizes like ImageNet's; the train split
    also gets the sklearn photos (as class 'c0') and, with ``corrupt``, a truncated JPEG and a text
    file named .JPEG in class 'c1'."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for label in range(3):
            d = root / split / f"c{label}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                size = (int(rng.integers(120, 500)), int(rng.integers(120, 400)))
                (d / f"img_{i}.JPEG").write_bytes(class_jpeg(label, 1000 * label + i + (0 if split == "train" else 99),
                                                             size))
    if corrupt:
        good = (root / "train" / "c1" / "img_0.JPEG").read_bytes()
        (root / "train" / "c1" / "zz_truncated.JPEG").write_bytes(good[: len(good) // 3])
        (root / "train" / "c1" / "zz_not_an_image.JPEG").write_bytes(b"this is not a JPEG file\n" * 10)
    for p in sample_photos():
        (root / "train" / "c0" / p.name).write_bytes(p.read_bytes())
    return root


def build_folder_dataset(tree: Path, data_dir: Path) -> None:
    from lsnet_jax.data.builders import ImagenetFolder

    # unchecked: the corrupt files stay in, for the pipeline's skipping to be tested
    ImagenetFolder(train_dir=str(tree / "train"), val_dir=str(tree / "val"), data_dir=str(data_dir), check=False,
                   file_format="array_record").download_and_prepare()


def pil_eval_transform(data: bytes, size: int, crop_pct: float = 0.875) -> np.ndarray:
    """The eval transform written out with PIL and numpy: shorter side to int(size / crop_pct)
    (bicubic), centre crop (torchvision's rounding), normalised float32 HWC."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    short = int(size / crop_pct)
    w, h = img.size
    nw, nh = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    top, left = int(round((nh - size) / 2)), int(round((nw - size) / 2))
    x = np.asarray(img.crop((left, top, left + size, top + size)), np.float32) / 255
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return ((x - mean) / std).astype(np.float32)


def preempted_run(config, workdir: Path, devices) -> tuple[dict, int]:
    """``train_and_evaluate`` sent SIGTERM (a preemption notice) as soon as its first step is logged:
    it finishes that step, saves it and returns. A no-op SIGTERM handler stands behind the loop's,
    so that a notice arriving after the run ended cannot end the test process."""
    import signal
    import threading
    import time

    from lsnet_jax.tasks import train_and_evaluate
    from lsnet_jax.train.reporting import read_jsonl

    previous = signal.signal(signal.SIGTERM, lambda *a: None)
    done = threading.Event()

    def notify():
        while not done.is_set() and not (workdir / "steps.jsonl").exists():
            time.sleep(0.01)
        if not done.is_set():
            os.kill(os.getpid(), signal.SIGTERM)

    watcher = threading.Thread(target=notify, daemon=True)
    watcher.start()
    try:
        out = train_and_evaluate(config, workdir, devices)
    finally:
        done.set()
        watcher.join()
        signal.signal(signal.SIGTERM, previous)
    return out, max(r["step"] for r in read_jsonl(workdir / "steps.jsonl"))
