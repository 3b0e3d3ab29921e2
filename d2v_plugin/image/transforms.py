"""Image augmentations on Pillow + numpy (no torchvision): what data2vec's vision pre-training uses.

Training: colour jitter -> horizontal flip -> random resized crop (bicubic) -> mean/std normalisation,
the order of fairseq's data2vec ``image_pretraining`` task. Evaluation: resize the shorter side to
``size / crop_ratio`` and take the centre ``size x size`` crop (the usual 224/256 protocol).

Every random draw comes from the ``numpy.random.Generator`` passed in, so a dataset that seeds it from
``(seed, epoch, index)`` gets the same augmentation for an item whatever the data-loader worker, and
a resumed run sees the images an uninterrupted one would have.
"""

import math
from typing import Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601 luma, as PIL's "L" mode


def random_resized_crop_box(width: int, height: int, scale: Tuple[float, float],
                            ratio: Tuple[float, float], rng: np.random.Generator) -> Tuple[int, int, int, int]:
    """A random ``(left, top, w, h)`` box covering ``scale`` of the area with aspect ``w/h`` in ``ratio``.

    Tries 10 random boxes; if none fits inside the image, falls back to the largest centred box
    whose aspect ratio is clamped into ``ratio``.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def color_jitter(x: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast and saturation, in random order, on ``(H, W, 3)`` floats in [0, 1].

    Each factor is drawn from ``[max(0, 1 - strength), 1 + strength]``. Brightness scales the image,
    contrast blends it with its mean grey level, saturation with its per-pixel grey image.
    """
    lo, hi = max(0.0, 1.0 - strength), 1.0 + strength
    for op in rng.permutation(3):
        f = rng.uniform(lo, hi)
        if op == 0:
            x = x * f
        elif op == 1:
            mean = float((x @ _GRAY).mean())
            x = mean + f * (x - mean)
        else:
            gray = (x @ _GRAY)[..., None]
            x = gray + f * (x - gray)
        x = np.clip(x, 0.0, 1.0)
    return x


def to_normalized_tensor(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(H, W, 3)`` floats in [0, 1] -> ``(3, H, W)`` float32 tensor ``(x - mean) / std``."""
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32))


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB for any image PIL opens, scaling 16-bit grey to 8 bits instead of clipping it.

    PIL opens a 16-bit greyscale PNG (or TIFF) as mode ``I;16*`` or ``I`` (values 0..65535), and its
    ``convert("RGB")`` clips every value above 255 to 255: a normal 16-bit photo comes out white. Those modes
    are mapped here by 255/65535 (``I`` is read as 16-bit, which is what PIL makes it from image files).
    Float images (mode ``F``) have no agreed range: refused. 16-bit RGB PNGs PIL already loads as 8-bit RGB.
    Always a new, loaded image (also for RGB input), so the file it came from may be closed.
    """
    if img.mode.startswith("I;16") or img.mode == "I":
        grey = np.asarray(img, dtype=np.float64) * (255.0 / 65535.0)
        img = Image.fromarray(np.clip(np.round(grey), 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "F":
        raise ValueError("a floating-point image (PIL mode F) has no agreed value range; save it as 8- or 16-bit")
    return img.convert("RGB")


def _as_float(img: Image.Image) -> np.ndarray:
    return np.asarray(to_rgb(img), dtype=np.float32) / 255.0


class TrainTransform:
    """Augment a PIL image into a normalised ``(3, size, size)`` tensor (see module docstring)."""

    def __init__(self, size: int, scale: Tuple[float, float] = (0.08, 1.0),
                 ratio: Tuple[float, float] = (3 / 4, 4 / 3), hflip_prob: float = 0.5,
                 color_jitter: float = 0.4, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD):
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"crop scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"crop ratio must satisfy 0 < min <= max, got {ratio}")
        self.size, self.scale, self.ratio = size, tuple(scale), tuple(ratio)
        self.hflip_prob, self.jitter = hflip_prob, color_jitter
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Tensor:
        img = to_rgb(img)
        if self.jitter > 0:
            # jitter on the full image (before the crop), in 8-bit like the source
            x = color_jitter(_as_float(img), self.jitter, rng)
            img = Image.fromarray(np.round(x * 255.0).astype(np.uint8))
        if rng.uniform() < self.hflip_prob:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        left, top, w, h = random_resized_crop_box(img.width, img.height, self.scale, self.ratio, rng)
        # resize(box=...) crops and resamples in one pass, without an intermediate image
        img = img.resize((self.size, self.size), Image.Resampling.BICUBIC, box=(left, top, left + w, top + h))
        return to_normalized_tensor(_as_float(img), self.mean, self.std)


class EvalTransform:
    """Resize the shorter side to ``size / crop_ratio``, centre-crop ``size x size``, normalise."""

    def __init__(self, size: int, crop_ratio: float = 0.875, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD):
        if not 0 < crop_ratio <= 1:
            raise ValueError(f"crop_ratio must be in (0, 1], got {crop_ratio}")
        self.size, self.crop_ratio = size, crop_ratio
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, img: Image.Image, rng: np.random.Generator = None) -> Tensor:
        img = to_rgb(img)
        short = max(self.size, int(round(self.size / self.crop_ratio)))
        scale = short / min(img.width, img.height)
        w, h = max(short, round(img.width * scale)), max(short, round(img.height * scale))
        img = img.resize((w, h), Image.Resampling.BICUBIC)
        left, top = (w - self.size) // 2, (h - self.size) // 2
        img = img.crop((left, top, left + self.size, top + self.size))
        return to_normalized_tensor(_as_float(img), self.mean, self.std)
