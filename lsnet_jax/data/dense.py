"""Image decoding, resizing and colour conversion for the dense-prediction pipelines (segmentation,
and detection, whose MMDetection pipeline makes the same calls), with OpenCV's own functions as
mmcv 1.7 calls them for mmseg 0.30 and mmdet 2.28:

- decoding: ``cv2.imdecode(IMREAD_COLOR)`` (mmcv ``imfrombytes(flag='color', backend='cv2')``):
  EXIF orientation applied, grey and palette images expanded to three channels, alpha dropped,
  16-bit samples reduced to 8; BGR, turned to RGB here (mmcv's Normalize ``to_rgb`` does the same
  swap later, which changes no value);
- sizes: mmcv's ``rescale_size`` (one factor fitting both bounds, sides rounded half up);
- resizes: ``cv2.resize`` INTER_LINEAR on uint8 (fixed point) for images, INTER_NEAREST for labels
  and masks (source index ``floor(i * (1 / (dst / src)))`` in double);
- colour: ``cv2.cvtColor`` between RGB and OpenCV's uint8 HSV (H in [0, 180)). The RGB codes give
  exactly mmcv's BGR results with the channels swapped (the same kernel with the blue index moved).

What still depends on OpenCV: the results are those of the pinned build (opencv-python-headless
4.10.0.84, ``pyproject.toml``). Its uint8 HSV->RGB has a vectorised path (rows of 32 pixels or
more on x86 SSE/AVX and ARM NEON) that truncates where the scalar path rounds: mmseg runs the same
code, so the two agree on the same machine, but a CPU without those instructions (or another
OpenCV release that changes the kernels) gives other values (the scalar path against the
vectorised one: 52 of 64 random pixels one level apart). JPEG decoding is libjpeg-turbo's, as
built into that wheel.

Every image is bounded before OpenCV allocates it: the header's size is read first (PIL, lazily)
and refused beyond ``transforms.MAX_PIXELS``; OpenCV's own bound is set to the same figure where
this module imports it first.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from lsnet_jax.data.transforms import MAX_PIXELS, UnreadableImage, check_pixels

# OpenCV reads its decoder bound once, when it loads; a process that imported cv2 before keeps its
# own (the header check below applies either way)
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))
import cv2  # noqa: E402


def image_size(data: bytes) -> tuple[int, int]:
    """(H, W) stored in an encoded image's header (before any EXIF rotation), or
    ``UnreadableImage``; refuses more than ``MAX_PIXELS``."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Exception as e:  # UnidentifiedImageError, SyntaxError, DecompressionBombError, ...
        raise UnreadableImage(f"{type(e).__name__}: {e}") from e
    check_pixels(w, h)
    return h, w


def decode_color(data: bytes) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` decoded as mmcv decodes for mmseg and mmdet
    (``cv2.imdecode(IMREAD_COLOR)``, EXIF orientation applied), or ``UnreadableImage``."""
    image_size(data)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise UnreadableImage("OpenCV cannot decode these bytes (corrupt data or a format it does not read)")
    return np.ascontiguousarray(img[..., ::-1])


def rescale_size(h: int, w: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv's ``rescale_size`` for a (long, short) bound pair: the largest factor with the long side
    <= max(scale) and the short side <= min(scale), sides ``int(side * factor + 0.5)``, and at least
    1 (a 5000x1 image would otherwise become 2048x0, which nothing can resize). Returns (H, W)."""
    f = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return max(1, int(h * f + 0.5)), max(1, int(w * f + 0.5))


def resize_linear(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(INTER_LINEAR)`` to ``size`` (H, W): mmcv's ``imresize(interpolation='bilinear')``."""
    return cv2.resize(np.ascontiguousarray(img), (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)


def resize_nearest(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(INTER_NEAREST)`` to ``size`` (H, W): mmcv's ``imresize(interpolation='nearest')``,
    for label maps and masks."""
    return cv2.resize(np.ascontiguousarray(label), (int(size[1]), int(size[0])), interpolation=cv2.INTER_NEAREST)


def rgb_to_hsv(img: np.ndarray) -> np.ndarray:
    """uint8 RGB -> OpenCV's uint8 HSV (``cv2.cvtColor``; mmcv ``bgr2hsv`` on the BGR image)."""
    return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2HSV)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """OpenCV's uint8 HSV -> uint8 RGB (``cv2.cvtColor``; mmcv ``hsv2bgr`` with the channels swapped)."""
    return cv2.cvtColor(np.ascontiguousarray(hsv), cv2.COLOR_HSV2RGB)
