"""Per-image transforms of the published recipe, on PIL images and numpy arrays (host side).

What is hand-written here and why: timm holds the reference implementations (RandomResizedCrop,
RandAugment ``rand-m9-mstd0.5-inc1``, RandomErasing), but timm depends on torch, which the core
package must not. So these follow timm's semantics (timm 0.5.4, the version of the published
recipe) on PIL and numpy: the same ops, magnitudes, probabilities and fallbacks. Pixel operations
themselves are PIL's (``ImageOps``, ``ImageEnhance``, affine ``transform``), as in timm, except
the shears and translations: Pillow runs those through its generic per-pixel bicubic path, so
``shift_lines`` computes the same sampling in numpy, 1.7-2.5x faster (within one level of Pillow).
Normalisation (``lsnet_jax.data.normalize``), the erasing noise and Mixup/CutMix
(``lsnet_jax.train.augment``) run on the device: the host ships uint8 images.

Randomness comes from a ``numpy.random.Generator`` passed in, seeded per record by the pipeline
from (seed, global position), so every epoch is reproducible.

Decoding is cheap where the crop allows it: a JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's
DCT scaling, ``Image.draft``) when the region that will be resized to the output is still at least
the output size after that reduction (``fast_decode``, off in the published recipe). Crops are
torchvision's: ``crop`` then ``resize`` of the crop alone (a resize straight from a box reads the
pixels outside it: up to 13 levels on the 3-pixel border).
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import stat
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

BICUBIC = Image.Resampling.BICUBIC
_LEVEL_DENOM = 10.0


# ----------------------------------------------------------------------------- decoding


class UnreadableImage(ValueError):
    """The bytes are not an image PIL can decode: not an image, truncated, corrupt, or bigger than
    any photo (``MAX_PIXELS``). The pipeline skips and counts such records; any other error in a
    transform is a bug and propagates."""


# what a file may make the decoders allocate: PIL's decompression-bomb bound (89.5 M pixels, a
# 9459x9459 image; PIL itself refuses only twice that, and warns between), for the decoded image
# and for what it is resized to (a 1x100000 image is small to decode and 25.6 G pixels at a
# shorter side of 256); and the bytes of a file read as an image
MAX_PIXELS = 89_478_485
MAX_FILE_BYTES = 1 << 30


def check_pixels(width: int, height: int, what: str = "it decodes to") -> None:
    if width * height > MAX_PIXELS:
        raise UnreadableImage(f"{what} {width}x{height} = {width * height / 1e6:.0f} M pixels, more than the "
                              f"{MAX_PIXELS / 1e6:.1f} M of the largest photo read (PIL's decompression-bomb bound)")


def read_image_file(path: str | os.PathLike) -> bytes:
    """A file's bytes for decoding: a regular file of at most ``MAX_FILE_BYTES`` (a FIFO would block,
    a device such as /dev/zero never end); ``UnreadableImage`` otherwise. A missing file raises
    ``FileNotFoundError``."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise UnreadableImage(f"{path} is not a regular file (a directory, FIFO or device)")
    if st.st_size > MAX_FILE_BYTES:
        raise UnreadableImage(f"{path} holds {st.st_size / 2**30:.1f} GiB, more than any image read "
                              f"({MAX_FILE_BYTES / 2**30:.0f} GiB)")
    with open(path, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)  # bounded even if the file grew since
    if len(data) > MAX_FILE_BYTES:
        raise UnreadableImage(f"{path} grew past {MAX_FILE_BYTES / 2**30:.0f} GiB while read")
    return data


def open_image(data: bytes) -> Image.Image:
    """A lazily decoded PIL image (only the header is read). Raises ``UnreadableImage`` on
    non-image bytes, and on an image of more than ``MAX_PIXELS``."""
    try:
        img = Image.open(io.BytesIO(data))
    except Exception as e:  # UnidentifiedImageError, SyntaxError, DecompressionBombError, ...
        raise UnreadableImage(f"{type(e).__name__}: {e}") from e
    check_pixels(*img.size)
    return img


def decode_rgb(img: Image.Image, need: tuple[int, int] | None = None) -> tuple[Image.Image, float, float]:
    """Decode to RGB. With ``need=(w, h)`` a JPEG may be decoded at a reduced scale whose size is
    still at least ``need``; returns the image and the x and y scale factors applied (1, 1/2, ...).
    Raises ``UnreadableImage`` when the data cannot be decoded."""
    w0, h0 = img.size
    try:
        if need is not None and img.format == "JPEG":
            img.draft("RGB", need)
        img.load()  # the (possibly reduced) decode; raises on truncated data
        if img.mode != "RGB":
            img = img.convert("RGB")  # only when needed: convert() of an RGB image is a copy
    except Exception as e:  # OSError on truncated data, SyntaxError, ValueError ... on corrupt files
        raise UnreadableImage(f"{type(e).__name__}: {e}") from e
    return img, img.size[0] / w0, img.size[1] / h0


# ----------------------------------------------------------------------------- crops


def rrc_params(rng: np.random.Generator, width: int, height: int, scale: Sequence[float] = (0.08, 1.0),
               ratio: Sequence[float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """RandomResizedCrop box ``(top, left, h, w)`` as torchvision/timm draw it: ten tries at a
    random area and log-uniform aspect ratio, then a centre crop clamped to the ratio range."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = rng.uniform(scale[0], scale[1]) * area
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(img: Image.Image, rng: np.random.Generator, size: int,
                        scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                        fast_decode: bool = False) -> Image.Image:
    """Decode ``img`` (lazy PIL image) and return the bicubic RandomResizedCrop at ``size``."""
    width, height = img.size
    top, left, h, w = rrc_params(rng, width, height, scale, ratio)
    need = None
    if fast_decode:  # the crop must keep >= size pixels after the DCT reduction
        factor = min(w / size, h / size)
        need = (max(1, math.ceil(width / factor)), max(1, math.ceil(height / factor))) if factor > 1 else None
    img, sx, sy = decode_rgb(img, need)
    if sx == sy == 1:  # torchvision's resized_crop: crop, then resize the crop alone
        return img.crop((left, top, left + w, top + h)).resize((size, size), BICUBIC)
    # a reduced decode: resize straight from the (fractional) box, which also reads the pixels
    # around it (its border differs from a crop-then-resize by a few levels)
    box = (left * sx, top * sy, min((left + w) * sx, img.size[0]), min((top + h) * sy, img.size[1]))
    return img.resize((size, size), BICUBIC, box=box)


def eval_resize_crop(img: Image.Image, size: int, crop_pct: float, fast_decode: bool = False) -> Image.Image:
    """timm's eval transform: resize the shorter side to ``int(size / crop_pct)`` (bicubic), then
    centre-crop ``size`` (torchvision's rounding of the sides and of the crop offset). With
    ``fast_decode`` a JPEG is decoded at a reduced scale no smaller than the resize target, which
    changes pixels slightly; evaluation leaves it off."""
    width, height = img.size
    short = int(math.floor(size / crop_pct))
    if width <= height:
        new_w, new_h = short, int(short * height / width)
    else:
        new_w, new_h = int(short * width / height), short
    check_pixels(new_w, new_h, f"resizing its shorter side to {short} makes it")  # an extreme aspect ratio
    need = (new_w, new_h) if fast_decode else None
    img = decode_rgb(img, need)[0]
    img = img.resize((new_w, new_h), BICUBIC)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


# ----------------------------------------------------------------------------- RandAugment


def _randomly_negate(rng: np.random.Generator, v: float) -> float:
    return -v if rng.random() > 0.5 else v


def _affine(img: Image.Image, matrix: tuple, fill: tuple[int, ...]) -> Image.Image:
    """Pillow's bicubic affine ``transform`` (as timm calls it); an RGB shear or translation, which
    moves pixels along one axis only, goes to ``shift_lines`` instead."""
    a0, a1, a2, a3, a4, a5 = matrix
    if img.mode == "RGB" and a0 == 1 and a4 == 1:
        if a3 == 0 and a5 == 0 and (a1 == 0 or a2 == 0):  # ShearX, TranslateX
            return shift_lines(img, a1 * (np.arange(img.size[1]) + 0.5) + a2, 1, fill)
        if a1 == 0 and a2 == 0 and (a3 == 0 or a5 == 0):  # ShearY, TranslateY
            return shift_lines(img, a3 * (np.arange(img.size[0]) + 0.5) + a5, 0, fill)
    return img.transform(img.size, Image.Transform.AFFINE, matrix, resample=BICUBIC, fillcolor=fill)


def shift_lines(img: Image.Image, shift: np.ndarray | float, axis: int, fill: tuple[int, ...]) -> Image.Image:
    """Pillow's bicubic affine ``transform`` for the affines that move pixels along one axis only:
    ShearX/TranslateX (``axis=1``: row ``y`` is sampled at ``x + shift[y]``) and ShearY/TranslateY
    (``axis=0``: column ``x`` at ``y + shift[x]``), 1.7-2.5x faster than Pillow's generic per-pixel
    path (docs/performance.md).

    Same sampling as Pillow's ``Geometry.c``: the a = -1 cubic on four taps clamped to the image,
    pixels whose source centre lies outside the image take ``fill``, the result clipped to 0..255
    and truncated. Along the other axis Pillow's cubic weight is exactly (0, 1, 0, 0), so one pass
    is the whole transform. Pillow computes in float64 and this in float32 (flat regions stay
    exact), so a pixel whose value lies within about 1e-4 of an integer may truncate one level
    apart. ``shift`` must be computed as Pillow computes it (``a * (y + 0.5)`` for a shear, the
    offset for a translation). RGB only; ``_affine`` sends other modes to Pillow."""
    if img.mode != "RGB":
        raise ValueError(f"shift_lines takes RGB images, got mode {img.mode!r}")
    arr = np.asarray(img)
    h, w, c = arr.shape
    lines, length = (h, w) if axis == 1 else (w, h)
    shift = np.broadcast_to(np.asarray(shift, np.float64), (lines,))
    base = np.floor(shift)
    d = (shift - base)[:, None]
    d2, d3 = d * d, d * d * d
    # a = -1 cubic weights of taps at -1, +1, +2 (relative to floor); the centre tap takes the rest
    w1, w3, w4 = (x.astype(np.float32) for x in (2 * d2 - d - d3, d + d2 - d3, d3 - d2))
    src = base.astype(np.intp)[:, None] + np.arange(-1, length + 2)  # each line's taps, clamped
    np.clip(src, 0, length - 1, out=src)
    line = np.arange(lines)[:, None]
    flat = line * w + src if axis == 1 else (src * w + line).T
    pixel = np.dtype((np.void, c))  # gather whole pixels, not bytes
    taps = np.take(np.ascontiguousarray(arr).view(pixel).reshape(h * w), flat)
    taps = taps.view(np.uint8).reshape(flat.shape + (c,)).astype(np.int16)
    if axis == 1:
        v1, v2, v3, v4 = (taps[:, k:k + w] for k in range(4))
        w1, w3, w4 = (x[:, :, None] for x in (w1, w3, w4))
    else:
        v1, v2, v3, v4 = (taps[k:k + h] for k in range(4))
        w1, w3, w4 = (np.repeat(x[None], c, axis=2) for x in (w1, w3, w4))  # (1, w, c): no stride-0 inner loop
    out = (v1 - v2) * w1
    out += (v3 - v2) * w3
    out += (v4 - v2) * w4
    out += v2
    np.clip(out, 0, 255, out=out)
    out = out.astype(np.uint8)
    pos = np.arange(length) + 0.5 + shift[:, None]  # Pillow's source centres, in float64
    outside = (pos < 0) | (pos >= length)
    out.view(pixel).reshape(h, w)[outside if axis == 1 else outside.T] = np.array(fill, np.uint8).view(pixel)[0]
    return Image.fromarray(out)


def _solarize_add(img: Image.Image, add: int, thresh: int = 128) -> Image.Image:
    lut = [min(255, i + add) if i < thresh else i for i in range(256)]
    return img.point(lut * len(img.getbands()))


def _posterize(img: Image.Image, bits: int) -> Image.Image:
    """Keep the top ``bits`` bits. At magnitude 10 timm's PosterizeIncreasing asks for 0 bits (a
    black image, as older Pillow gave); Pillow 13's ``ImageOps.posterize`` refuses 0, so the
    look-up table is built here."""
    if bits >= 8:
        return img
    mask = ~(2 ** (8 - bits) - 1) & 0xFF
    return img.point([i & mask for i in range(256)] * len(img.getbands()))


def _enhance(kind):
    return lambda img, f, fill: kind(img).enhance(f)


# name -> (op(img, arg, fill), level -> arg). The '*Increasing' variants ('inc1') grow stronger
# with the magnitude; arguments as timm's ``_LEVEL_TO_ARG``.
def _enhance_increasing(rng: np.random.Generator, level: float, hparams: dict) -> float:
    return max(0.1, 1.0 + _randomly_negate(rng, level / _LEVEL_DENOM * 0.9))  # timm keeps it >= 0.1


_OPS = {
    "AutoContrast": (lambda img, a, fill: ImageOps.autocontrast(img), lambda rng, lv, hp: None),
    "Equalize": (lambda img, a, fill: ImageOps.equalize(img), lambda rng, lv, hp: None),
    "Invert": (lambda img, a, fill: ImageOps.invert(img), lambda rng, lv, hp: None),
    "Rotate": (lambda img, a, fill: img.rotate(a, resample=BICUBIC, fillcolor=fill),
               lambda rng, lv, hp: _randomly_negate(rng, lv / _LEVEL_DENOM * 30.0)),
    "PosterizeIncreasing": (lambda img, a, fill: _posterize(img, a),
                            lambda rng, lv, hp: 4 - int(lv / _LEVEL_DENOM * 4)),
    "SolarizeIncreasing": (lambda img, a, fill: ImageOps.solarize(img, a),
                           lambda rng, lv, hp: 256 - int(lv / _LEVEL_DENOM * 256)),
    "SolarizeAdd": (lambda img, a, fill: _solarize_add(img, a),
                    lambda rng, lv, hp: int(lv / _LEVEL_DENOM * 110)),
    "ColorIncreasing": (_enhance(ImageEnhance.Color), _enhance_increasing),
    "ContrastIncreasing": (_enhance(ImageEnhance.Contrast), _enhance_increasing),
    "BrightnessIncreasing": (_enhance(ImageEnhance.Brightness), _enhance_increasing),
    "SharpnessIncreasing": (_enhance(ImageEnhance.Sharpness), _enhance_increasing),
    "ShearX": (lambda img, a, fill: _affine(img, (1, a, 0, 0, 1, 0), fill),
               lambda rng, lv, hp: _randomly_negate(rng, lv / _LEVEL_DENOM * 0.3)),
    "ShearY": (lambda img, a, fill: _affine(img, (1, 0, 0, a, 1, 0), fill),
               lambda rng, lv, hp: _randomly_negate(rng, lv / _LEVEL_DENOM * 0.3)),
    "TranslateXRel": (lambda img, a, fill: _affine(img, (1, 0, a * img.size[0], 0, 1, 0), fill),
                      lambda rng, lv, hp: _randomly_negate(rng, lv / _LEVEL_DENOM * hp["translate_pct"])),
    "TranslateYRel": (lambda img, a, fill: _affine(img, (1, 0, 0, 0, 1, a * img.size[1]), fill),
                      lambda rng, lv, hp: _randomly_negate(rng, lv / _LEVEL_DENOM * hp["translate_pct"])),
}
RAND_INCREASING_TRANSFORMS = tuple(_OPS)  # timm's _RAND_INCREASING_TRANSFORMS, same order


class RandAugment:
    """timm's ``rand_augment_transform`` for configs like ``rand-m9-mstd0.5-inc1``.

    Each call picks ``n`` ops uniformly with replacement; each is applied with probability 0.5 at a
    magnitude drawn from N(m, mstd) clipped to [0, 10]. Only the increasing op set (``inc1``) is
    provided, the one the recipe uses. Geometric ops fill with the mean pixel.
    """

    def __init__(self, config: str = "rand-m9-mstd0.5-inc1", fill: Sequence[int] = (124, 116, 104),
                 translate_pct: float = 0.45):
        parts = config.split("-")
        if parts[0] != "rand":
            raise ValueError(f"RandAugment config must start with 'rand', got {config!r}")
        self.n, self.m, self.mstd, inc = 2, 10.0, 0.0, False
        for p in parts[1:]:
            if p.startswith("mstd"):
                self.mstd = float(p[4:])
            elif p.startswith("inc"):
                inc = bool(int(p[3:]))
            elif p[:1] == "m":
                self.m = float(p[1:])
            elif p[:1] == "n":
                self.n = int(p[1:])
            else:
                raise ValueError(f"unknown RandAugment option {p!r} in {config!r}")
        if not inc:
            raise ValueError(f"only the increasing op set ('inc1') is implemented, got {config!r}")
        self.fill = tuple(int(v) for v in fill)
        self.hparams = dict(translate_pct=translate_pct)

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        names = rng.choice(len(RAND_INCREASING_TRANSFORMS), self.n, replace=True)
        for i in names:
            if rng.random() > 0.5:  # each op applied with probability 0.5
                continue
            level = rng.normal(self.m, self.mstd) if self.mstd > 0 else self.m
            level = min(_LEVEL_DENOM, max(0.0, level))
            op, to_arg = _OPS[RAND_INCREASING_TRANSFORMS[i]]
            img = op(img, to_arg(rng, level, self.hparams), self.fill)
        return img


# ----------------------------------------------------------------------------- tensors


def erasing_box(rng: np.random.Generator, height: int, width: int, prob: float = 0.25,
                area: Sequence[float] = (0.02, 1 / 3), min_aspect: float = 0.3) -> np.ndarray:
    """timm's RandomErasing (mode 'pixel', one box) drawn on the host: ``(top, left, h, w)``, all
    zero when nothing is erased. With probability ``prob``, ten tries at a box of random area and
    log-uniform aspect that fits. The box is filled with N(0, 1) noise in normalised space on the
    device (``lsnet_jax.train.augment.erase``), so the host ships uint8 images."""
    box = np.zeros(4, np.int32)
    if rng.random() > prob:
        return box
    log_ratio = (math.log(min_aspect), math.log(1 / min_aspect))
    for _ in range(10):
        target_area = rng.uniform(*area) * height * width
        aspect = math.exp(rng.uniform(*log_ratio))
        h = int(round(math.sqrt(target_area * aspect)))
        w = int(round(math.sqrt(target_area / aspect)))
        if w < width and h < height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            box[:] = (top, left, h, w)
            break
    return box


# ----------------------------------------------------------------------------- per-record transforms


@dataclasses.dataclass
class TrainTransform:
    """JPEG bytes -> ``{'image': uint8 HWC, 'erase': (top, left, h, w)}``: RandomResizedCrop, flip,
    RandAugment, and RandomErasing's box. The step normalises with ``mean``/``std`` and fills the
    box with noise on the device (``lsnet_jax.train.augment``)."""

    size: int
    mean: Sequence[float]
    std: Sequence[float]
    scale: Sequence[float] = (0.08, 1.0)
    ratio: Sequence[float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    randaugment: str | None = "rand-m9-mstd0.5-inc1"
    reprob: float = 0.25
    fast_decode: bool = False
    translate_pct: float = 0.45
    erase_area: Sequence[float] = (0.02, 1 / 3)
    erase_min_aspect: float = 0.3

    def __post_init__(self):
        fill = tuple(int(round(255 * m)) for m in self.mean)
        self._ra = RandAugment(self.randaugment, fill, self.translate_pct) if self.randaugment else None

    @classmethod
    def from_config(cls, aug, size: int) -> TrainTransform:
        """From a run config's ``aug`` section (``lsnet_jax.train.config``) at ``size`` pixels."""
        return cls(size, tuple(aug.mean), tuple(aug.std), tuple(aug.scale), tuple(aug.ratio), aug.hflip,
                   aug.randaugment or None, aug.reprob, aug.fast_decode, aug.translate_pct, tuple(aug.erase_area),
                   aug.erase_min_aspect)

    def __call__(self, data: bytes, rng: np.random.Generator) -> np.ndarray:
        img = random_resized_crop(open_image(data), rng, self.size, self.scale, self.ratio,
                                    self.fast_decode)
        if self.hflip > 0 and rng.random() < self.hflip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self._ra is not None:
            img = self._ra(img, rng)
        return {"image": np.asarray(img, np.uint8), "erase": erasing_box(rng, self.size, self.size, self.reprob,
                                                                 self.erase_area, self.erase_min_aspect)}


@dataclasses.dataclass
class EvalTransform:
    """JPEG bytes -> ``{'image': uint8 HWC}``: resize the shorter side to size/crop_pct (bicubic),
    centre crop. The step normalises on the device."""

    size: int
    crop_pct: float = 0.875
    fast_decode: bool = False

    def __call__(self, data: bytes, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        img = eval_resize_crop(open_image(data), self.size, self.crop_pct, self.fast_decode)
        return {"image": np.asarray(img, np.uint8)}

    @classmethod
    def from_config(cls, aug, size: int) -> EvalTransform:
        return cls(size, aug.crop_pct)
