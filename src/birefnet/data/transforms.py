"""Paired image/mask augmentations of the official recipe, driven by an explicit random generator.

The official code draws from the global ``random`` / ``numpy.random`` state inside DataLoader
workers, so which sample gets which flip depends on the worker that loads it. Here every function
takes a :class:`numpy.random.Generator`; the dataset seeds one per sample from ``(seed, epoch,
index)``, so augmentations do not depend on workers, ranks or on resuming.

Arrays: images are ``(H, W, 3)`` uint8 RGB, masks ``(H, W)`` uint8 (0 background .. 255
foreground); every function returns new arrays of the same kinds. The image-only operations go
through Pillow's ``ImageEnhance`` and ``Image.rotate`` so their numerics are the official ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance

__all__ = [
    "AUGMENTATIONS",
    "DEFAULT_AUGMENTATIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "apply_augmentations",
    "color_enhance",
    "dynamic_batch_size",
    "random_background_color",
    "random_crop",
    "random_flip",
    "random_pepper",
    "random_rotate",
    "resize_batch",
    "to_tensors",
]

# ImageNet normalisation the backbones were trained with (RGB in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Every augmentation name, in the order the official ``preproc`` applies them.
AUGMENTATIONS: tuple[str, ...] = ("flip", "crop", "rotate", "enhance", "pepper")
#: The official default (``preproc_methods[:4]``: no crop).
DEFAULT_AUGMENTATIONS: tuple[str, ...] = ("flip", "enhance", "rotate", "pepper")

Pair = tuple[np.ndarray, np.ndarray]


def random_flip(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """Horizontal flip of image and mask with probability 0.5 (official ``cv_random_flip``)."""
    if rng.integers(0, 2) == 1:
        return np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(mask[:, ::-1])
    return image, mask


def random_crop(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Pair:
    """Random window that drops up to 10 % of the shorter side, resized back to the input size.

    The official ``random_crop`` returns the smaller window (batches then only stack with dynamic
    size); resizing back keeps every sample at the configured size. Off in the official recipe.
    """
    h, w = mask.shape
    border = int(min(h, w) * 0.1)
    if border < 1:
        return image, mask
    win_w = int(rng.integers(w - border, w + 1))
    win_h = int(rng.integers(h - border, h + 1))
    x0 = int(rng.integers(0, w - win_w + 1))
    y0 = int(rng.integers(0, h - win_h + 1))
    image = image[y0 : y0 + win_h, x0 : x0 + win_w]
    mask = mask[y0 : y0 + win_h, x0 : x0 + win_w]
    img = Image.fromarray(np.ascontiguousarray(image)).resize((w, h), Image.BILINEAR)
    msk = Image.fromarray(np.ascontiguousarray(mask)).resize((w, h), Image.BILINEAR)
    return np.asarray(img), np.asarray(msk)


def random_rotate(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *, max_angle: int = 15, p: float = 0.2
) -> Pair:
    """Rotation by an integer angle in [-max_angle, max_angle) with probability ``p`` (official 0.2).

    Image and mask use bicubic resampling without expansion, the corners filled with 0 (official
    ``random_rotate``).
    """
    if rng.random() > 1.0 - p:
        angle = int(rng.integers(-max_angle, max_angle))
        img = Image.fromarray(image).rotate(angle, Image.BICUBIC)
        msk = Image.fromarray(mask).rotate(angle, Image.BICUBIC)
        return np.asarray(img), np.asarray(msk)
    return image, mask


def color_enhance(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness and contrast x[0.5, 1.4], colour x[0, 1.9], sharpness x[0, 2.9] (official ``color_enhance``).

    Applied to every sample, image only, with Pillow's ``ImageEnhance`` in the official order.
    """
    img = Image.fromarray(image)
    img = ImageEnhance.Brightness(img).enhance(int(rng.integers(5, 15)) / 10.0)
    img = ImageEnhance.Contrast(img).enhance(int(rng.integers(5, 15)) / 10.0)
    img = ImageEnhance.Color(img).enhance(int(rng.integers(0, 20)) / 10.0)
    img = ImageEnhance.Sharpness(img).enhance(int(rng.integers(0, 30)) / 10.0)
    return np.asarray(img)


def random_pepper(image: np.ndarray, rng: np.random.Generator, *, fraction: float = 0.0015) -> np.ndarray:
    """Salt-and-pepper noise on ``int(fraction * H * W)`` pixels, all channels (official ``random_pepper``)."""
    h, w = image.shape[:2]
    n = int(fraction * h * w)
    if n == 0:
        return image
    out = image.copy()
    ys = rng.integers(0, h, size=n)
    xs = rng.integers(0, w, size=n)
    values = np.where(rng.integers(0, 2, size=n) == 0, 0, 255).astype(np.uint8)
    out[ys, xs] = values[:, None]
    return out


def random_background_color(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *, p: float = 0.5
) -> np.ndarray:
    """Replace the background by a flat colour, using the mask as alpha, with probability ``p``.

    The colour is, with equal chance, a grey level, a colour near the mean foreground colour (the
    hard case: object and background alike), or a uniformly random colour. This teaches the model
    to cut objects off plain studio backgrounds (official ``background_color_synthesis``; the
    official code does not fix the choice of colours, this is ours).

    Args:
        image: (H, W, 3) uint8.
        mask: (H, W) uint8 alpha.
        rng: the sample's generator.
        p: probability of replacing the background at all.
    """
    if rng.random() >= p:
        return image
    alpha = mask.astype(np.float32)[..., None] / 255.0
    kind = int(rng.integers(0, 3))
    if kind == 0:
        color = np.full(3, rng.integers(0, 256), dtype=np.float32)
    elif kind == 1:
        weight = alpha.sum()
        mean = (
            (image.astype(np.float32) * alpha).sum(axis=(0, 1)) / weight if weight > 0 else np.full(3, 127.0)
        )
        color = np.clip(mean + rng.normal(0.0, 20.0, size=3), 0, 255).astype(np.float32)
    else:
        color = rng.integers(0, 256, size=3).astype(np.float32)
    out = image.astype(np.float32) * alpha + color * (1.0 - alpha)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def apply_augmentations(
    image: np.ndarray, mask: np.ndarray, methods: Sequence[str], rng: np.random.Generator
) -> Pair:
    """The official ``preproc``: the chosen augmentations in the order flip, crop, rotate, enhance, pepper.

    Args:
        image: (H, W, 3) uint8 RGB.
        mask: (H, W) uint8.
        methods: names from :data:`AUGMENTATIONS`; their order here does not matter.
        rng: generator of this sample (see the module docstring).

    Returns:
        The augmented (image, mask), same shapes and dtypes.
    """
    unknown = sorted(set(methods) - set(AUGMENTATIONS))
    if unknown:
        raise ValueError(f"unknown augmentations {unknown}; choose from {', '.join(AUGMENTATIONS)}")
    if "flip" in methods:
        image, mask = random_flip(image, mask, rng)
    if "crop" in methods:
        image, mask = random_crop(image, mask, rng)
    if "rotate" in methods:
        image, mask = random_rotate(image, mask, rng)
    if "enhance" in methods:
        image = color_enhance(image, rng)
    if "pepper" in methods:
        image = random_pepper(image, rng)
    return image, mask


def to_tensors(image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 arrays -> ((3, H, W) ImageNet-normalised float32, (1, H, W) float32 mask in [0, 1])."""
    # np.array copies: Pillow hands out read-only arrays, which torch.from_numpy warns about
    x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1).div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    x = ((x - mean) / std).contiguous()
    y = torch.from_numpy(np.array(mask, dtype=np.float32)).div_(255.0).unsqueeze(0)
    return x, y


def dynamic_batch_size(
    seed: int, epoch: int, step: int, ranges: tuple[tuple[int, int], tuple[int, int]]
) -> tuple[int, int]:
    """(width, height) of one training batch under the official "dynamic size" option.

    Each side is drawn uniformly from its (low, high) range and floored to a multiple of 32
    (official ``custom_collate_fn``). The draw depends only on ``(seed, epoch, step)``, so every
    rank uses the same size for the same optimizer step and a resumed run draws the same sizes.

    Args:
        seed: run seed.
        epoch: 0-based epoch.
        step: optimizer step inside the epoch (micro-batches of one step share the size).
        ranges: ((min_w, max_w), (min_h, max_h)) in pixels.
    """
    rng = np.random.default_rng([seed, epoch, step, 0x5123])
    (lo_w, hi_w), (lo_h, hi_h) = ranges
    w = int(rng.integers(lo_w, hi_w + 1)) // 32 * 32
    h = int(rng.integers(lo_h, hi_h + 1)) // 32 * 32
    return max(w, 32), max(h, 32)


def resize_batch(
    images: torch.Tensor, masks: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize a batch (B, 3, H, W) and its masks (B, 1, H, W) to ``size`` = (width, height), bilinear."""
    w, h = size
    if images.shape[-2:] == (h, w):
        return images, masks
    antialias = h < images.shape[-2] or w < images.shape[-1]
    images = F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False, antialias=antialias)
    masks = F.interpolate(masks, size=(h, w), mode="bilinear", align_corners=False, antialias=antialias)
    return images, masks.clamp_(0, 1)
