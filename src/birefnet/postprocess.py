"""From a probability mask to what users save: 8-bit masks, RGBA cut-outs, composites.

All functions work on numpy arrays at the image's own resolution:

* ``mask``: (H, W) float32 foreground probability in [0, 1] (what :class:`~birefnet.Predictor`
  returns; sigmoid of the logits, not min-max stretched).
* ``rgb``: (H, W, 3) uint8 RGB.

8-bit conversion follows the official code (``ToPILImage`` on the probability map): ``p * 255``
truncated, so 0.999 -> 254. Foreground colour refinement is the blur-fusion estimator of Forte &
Pitié ("Approximate fast foreground colour estimation", ICIP 2021) in the two-pass form the
official ``refine_foreground`` uses (box radius 90, then 6), written with OpenCV box filters.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import cv2
import numpy as np
from PIL import Image

from birefnet.imageio import DecodedImage

OutputKind = Literal["mask", "rgba", "composite"]
OUTPUT_KINDS: tuple[str, ...] = ("mask", "rgba", "composite")


def mask_to_uint8(mask: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """(H, W) probabilities in [0, 1] -> (H, W) uint8.

    Args:
        mask: probabilities.
        threshold: if given, binarise: 255 where ``mask >= threshold``, else 0.

    Returns:
        ``floor(mask * 255)`` (the official truncation) or the binary mask.
    """
    if threshold is not None:
        return np.where(mask >= threshold, np.uint8(255), np.uint8(0))
    return np.clip(mask * 255.0, 0, 255).astype(np.uint8)


def final_alpha(
    mask: np.ndarray, *, threshold: float | None = None, input_alpha: np.ndarray | None = None
) -> np.ndarray:
    """Opacity of the cut-out: the (optionally thresholded) mask times the input's own alpha.

    Returns:
        (H, W) float32 in [0, 1]. Where the input was already transparent the output stays so.
    """
    alpha = (
        (mask >= threshold).astype(np.float32)
        if threshold is not None
        else mask.astype(np.float32, copy=False)
    )
    if input_alpha is not None:
        alpha = alpha * (input_alpha.astype(np.float32) / 255.0)
    return alpha


def _blur_fusion(
    image: np.ndarray,
    fg: np.ndarray | None,
    bg: np.ndarray | None,
    alpha: np.ndarray,
    alpha3: np.ndarray,
    radius: int,
) -> tuple[np.ndarray, np.ndarray]:
    """One blur-fusion step: local means of F and B weighted by alpha, then a per-pixel correction.

    ``fg``/``bg`` None means "the image itself" (the first pass), which saves a box filter:
    blur(I (1 - a)) = blur(I) - blur(I a). Arrays are (H, W, 3) float32 except ``alpha`` (H, W);
    operations are in place on same-shape arrays (numpy broadcasting over a channel axis of 1
    is several times slower at these sizes).
    """
    ksize = (radius, radius)
    blurred_alpha = cv2.blur(alpha, ksize)
    ba3 = cv2.merge([blurred_alpha] * 3)
    weighted_fg = (image if fg is None else fg) * alpha3
    blurred_fg = cv2.blur(weighted_fg, ksize)
    if bg is None:
        blurred_bg = cv2.blur(image, ksize)
        blurred_bg -= blurred_fg
    else:
        blurred_bg = cv2.blur(bg * (1.0 - alpha3), ksize)
    blurred_fg /= ba3 + 1e-5
    ba3 *= -1.0
    ba3 += 1.0 + 1e-5
    blurred_bg /= ba3
    # image = a F + (1 - a) B; correct the local mean of F by the part of the image it misses:
    # F = bF + a (I - a bF - (1 - a) bB)
    out = image - alpha3 * blurred_fg
    out -= (1.0 - alpha3) * blurred_bg
    out *= alpha3
    out += blurred_fg
    np.clip(out, 0.0, 1.0, out=out)
    return out, blurred_bg


def estimate_foreground(rgb: np.ndarray, alpha: np.ndarray, radii: Iterable[int] = (90, 6)) -> np.ndarray:
    """Foreground colours at soft edges, so a cut-out of hair has no halo of the old background.

    Blur-fusion (two passes, large then small box radius), with OpenCV box filters; the result
    equals the official ``refine_foreground`` CPU path up to float rounding.

    Args:
        rgb: (H, W, 3) uint8 image.
        alpha: (H, W) opacity in [0, 1].
        radii: box filter sizes of the passes (official: 90 then 6).

    Returns:
        (H, W, 3) uint8 estimated foreground colour F, with ``rgb ~ alpha F + (1 - alpha) B``.
    """
    image = rgb.astype(np.float32)
    image *= 1.0 / 255.0
    a = np.clip(alpha.astype(np.float32, copy=False), 0.0, 1.0)
    a3 = cv2.merge([a] * 3)
    fg: np.ndarray | None = None
    bg: np.ndarray | None = None
    for radius in radii:
        fg, bg = _blur_fusion(image, fg, bg, a, a3, int(radius))
    assert fg is not None
    fg *= 255.0
    fg += 0.5
    return fg.astype(np.uint8)


def cutout(rgb: np.ndarray, alpha: np.ndarray) -> Image.Image:
    """RGBA cut-out: ``rgb`` (or refined foreground colours) with ``alpha`` as transparency.

    Args:
        rgb: (H, W, 3) uint8 colours.
        alpha: (H, W) float opacity in [0, 1] (converted with the official truncation), or uint8.
    """
    a8 = alpha if alpha.dtype == np.uint8 else mask_to_uint8(alpha)
    return Image.fromarray(np.dstack([rgb, a8]))


def fit_background(background: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Scale a background image to cover ``size`` (width, height), keeping its aspect, and centre-crop.

    Returns:
        (H, W, 3) uint8.
    """
    width, height = size
    bh, bw = background.shape[:2]
    if (bw, bh) == (width, height):
        return background
    scale = max(width / bw, height / bh)
    new_w, new_h = max(width, round(bw * scale)), max(height, round(bh * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(background, (new_w, new_h), interpolation=interp)
    x0, y0 = (new_w - width) // 2, (new_h - height) // 2
    return np.ascontiguousarray(resized[y0 : y0 + height, x0 : x0 + width])


def composite(
    rgb: np.ndarray, alpha: np.ndarray, background: tuple[int, int, int] | np.ndarray = (255, 255, 255)
) -> np.ndarray:
    """Blend the foreground over a colour or an image: ``alpha F + (1 - alpha) background``.

    Args:
        rgb: (H, W, 3) uint8 foreground colours (the image, or :func:`estimate_foreground`).
        alpha: (H, W) opacity in [0, 1].
        background: an RGB colour, or an (H', W', 3) uint8 image (fitted with :func:`fit_background`).

    Returns:
        (H, W, 3) uint8, fully opaque.
    """
    height, width = rgb.shape[:2]
    if isinstance(background, np.ndarray):
        bg = fit_background(background, (width, height)).astype(np.float32)
    else:
        bg = np.asarray(background, dtype=np.float32).reshape(1, 1, 3)
    a = alpha.astype(np.float32, copy=False)[..., None]
    out = rgb.astype(np.float32) * a + bg * (1.0 - a)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def render_outputs(
    image: DecodedImage,
    mask: np.ndarray,
    kinds: Iterable[str],
    *,
    threshold: float | None = None,
    refine_foreground: bool = False,
    background: tuple[int, int, int] | np.ndarray = (255, 255, 255),
) -> dict[str, Image.Image]:
    """Build the requested outputs for one image, sharing the work between them.

    Args:
        image: the decoded input.
        mask: (H, W) probabilities at the image's size.
        kinds: any of "mask" (8-bit L image of the model's mask), "rgba" (cut-out; the input's own
            transparency is kept) and "composite" (opaque RGB over ``background``).
        threshold: binarise the mask and the alpha at this probability.
        refine_foreground: estimate foreground colours at soft edges for rgba/composite.
        background: colour or image for "composite".

    Returns:
        {kind: PIL image}.
    """
    kinds = list(kinds)
    unknown = [k for k in kinds if k not in OUTPUT_KINDS]
    if unknown:
        raise ValueError(f"unknown output kind(s) {unknown}; choose from {', '.join(OUTPUT_KINDS)}")
    if mask.shape != (image.height, image.width):
        raise ValueError(f"mask shape {mask.shape} does not match the image ({image.height}, {image.width})")
    out: dict[str, Image.Image] = {}
    if "mask" in kinds:
        out["mask"] = Image.fromarray(mask_to_uint8(mask, threshold))
    if "rgba" in kinds or "composite" in kinds:
        alpha = final_alpha(mask, threshold=threshold, input_alpha=image.alpha)
        colours = estimate_foreground(image.rgb, alpha) if refine_foreground else image.rgb
        if "rgba" in kinds:
            out["rgba"] = cutout(colours, alpha)
        if "composite" in kinds:
            out["composite"] = Image.fromarray(composite(colours, alpha, background))
    return {k: out[k] for k in kinds}
