"""A synthetic DIS-like dataset: thin, meshed, holed, multi-part objects on textured backgrounds.

Real DIS5K cannot be shipped with tests or demos, so this generator draws objects with the
structures that make dichotomous segmentation hard (wires and branches one or two pixels wide,
nets and fences, rings and holes, several disconnected parts) over textured backgrounds, and writes
the exact alpha used for compositing as the ground truth. Shapes are drawn at twice the output
resolution and area-downsampled, so edges are soft and the mask is still exact.

Output is the official layout ``OUT/im/*.jpg`` + ``OUT/gt/*.png`` with DIS-style file names
(``<i>#Synthetic#<group>#<Kind>#<i>``: the fourth ``#`` field is the class), so
``birefnet train`` reads it as is. Everything is a function of the seed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["KINDS", "make_sample", "write_synthetic_dataset"]

#: Structure kinds; one names the class of each sample (its largest part).
KINDS: tuple[str, ...] = ("Blob", "Ring", "Curves", "Mesh", "Tree")

_SS = 2  # supersampling factor of the drawing canvas
# How often each kind is an object's body: mostly solid bodies with thin attachments, some purely
# thin objects (wires, twigs), as in DIS5K where most objects have a body and fine parts.
_KIND_P = (0.4, 0.2, 0.1, 0.2, 0.1)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int, channels: int = 1) -> np.ndarray:
    """Value noise in [0, 1]: a (cells x cells) random grid upsampled bicubically, (h, w, channels)."""
    grid = rng.random((cells + 1, cells + 1, channels)).astype(np.float32)
    up = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(up.reshape(h, w, channels), 0.0, 1.0)


def _texture(rng: np.random.Generator, h: int, w: int, base: np.ndarray, strength: float) -> np.ndarray:
    """Colour texture around ``base`` (3,) in [0, 255]: multi-scale noise, a gradient, maybe stripes."""
    tex = np.zeros((h, w, 3), np.float32)
    for cells, amp in ((2, 0.5), (6, 0.3), (24, 0.15)):
        tex += amp * (_smooth_noise(rng, h, w, cells, 3) - 0.5)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy) / max(h, w)
    tex += rng.uniform(-0.4, 0.4) * (ramp - ramp.mean())[..., None]
    if rng.random() < 0.35:  # stripes / fabric-like pattern
        period = rng.uniform(6, 30)
        a2 = rng.uniform(0, np.pi)
        stripes = np.sin((np.cos(a2) * xx + np.sin(a2) * yy) * 2 * np.pi / period)
        tex += rng.uniform(0.1, 0.3) * stripes[..., None]
    fine = rng.normal(0, 0.04, (h, w, 1)).astype(np.float32)
    out = base[None, None, :] + 255.0 * strength * (tex + fine)
    return np.clip(out, 0, 255)


def _random_color(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(20, 235, size=3).astype(np.float32)


def _star_polygon(rng: np.random.Generator, cx: float, cy: float, radius: float) -> np.ndarray:
    """A smooth random star-shaped polygon (blob outline), int32 (N, 2)."""
    n = 48
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    harmonics = np.zeros(n)
    for k in range(1, 5):
        harmonics += rng.uniform(0, 0.35 / k) * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
    r = radius * (1 + harmonics)
    sx, sy = rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.4)
    pts = np.stack([cx + sx * r * np.cos(angles), cy + sy * r * np.sin(angles)], axis=1)
    return np.round(pts).astype(np.int32)


def _bezier(rng: np.random.Generator, p0: np.ndarray, p3: np.ndarray, bend: float) -> np.ndarray:
    d = p3 - p0
    normal = np.array([-d[1], d[0]]) / (np.linalg.norm(d) + 1e-6)
    p1 = p0 + d / 3 + normal * rng.uniform(-bend, bend)
    p2 = p0 + 2 * d / 3 + normal * rng.uniform(-bend, bend)
    t = np.linspace(0, 1, 40)[:, None]
    pts = (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3
    return np.round(pts).astype(np.int32)


def _draw_blob(rng, canvas, cx, cy, radius, holes: bool) -> None:
    cv2.fillPoly(canvas, [_star_polygon(rng, cx, cy, radius)], 255, lineType=cv2.LINE_8)
    if holes:
        for _ in range(int(rng.integers(1, 4))):
            hx = cx + rng.uniform(-0.4, 0.4) * radius
            hy = cy + rng.uniform(-0.4, 0.4) * radius
            axes = (int(radius * rng.uniform(0.08, 0.25)), int(radius * rng.uniform(0.08, 0.25)))
            cv2.ellipse(canvas, (int(hx), int(hy)), axes, rng.uniform(0, 180), 0, 360, 0, -1)


def _draw_ring(rng, canvas, cx, cy, radius) -> None:
    axes = (int(radius * rng.uniform(0.7, 1.2)), int(radius * rng.uniform(0.7, 1.2)))
    thickness = max(2 * _SS, int(radius * rng.uniform(0.08, 0.3)))
    cv2.ellipse(canvas, (int(cx), int(cy)), axes, rng.uniform(0, 180), 0, 360, 255, thickness)


def _draw_curves(rng, canvas, cx, cy, radius) -> None:
    for _ in range(int(rng.integers(2, 7))):
        a = rng.uniform(0, 2 * np.pi)
        p0 = np.array([cx, cy]) + rng.uniform(0, 0.3) * radius * np.array([np.cos(a), np.sin(a)])
        b = a + rng.uniform(-1.0, 1.0)
        p3 = np.array([cx, cy]) + rng.uniform(0.8, 1.6) * radius * np.array([np.cos(b), np.sin(b)])
        thickness = int(rng.integers(1, 4)) * _SS
        cv2.polylines(canvas, [_bezier(rng, p0, p3, radius * 0.6)], False, 255, thickness)


def _draw_mesh(rng, canvas, cx, cy, radius) -> None:
    """A net: a framed region filled with a rotated grid of thin lines (a fence, a basket)."""
    h, w = canvas.shape
    region = np.zeros_like(canvas)
    cv2.fillPoly(region, [_star_polygon(rng, cx, cy, radius)], 255)
    grid = np.zeros_like(canvas)
    spacing = rng.uniform(5, 14) * _SS
    thickness = int(rng.integers(1, 3)) * _SS
    angle = rng.uniform(0, np.pi / 2)
    diag = int(np.hypot(h, w))
    for sign in (0.0, np.pi / 2):
        direction = np.array([np.cos(angle + sign), np.sin(angle + sign)])
        normal = np.array([-direction[1], direction[0]])
        for off in np.arange(-diag, diag, spacing):
            c = np.array([cx, cy]) + normal * off
            p0, p1 = c - direction * diag, c + direction * diag
            cv2.line(grid, tuple(int(v) for v in p0), tuple(int(v) for v in p1), 255, thickness)
    canvas |= grid & region
    outline = np.zeros_like(canvas)
    cv2.polylines(outline, [_star_polygon(rng, cx, cy, radius)], True, 255, int(rng.integers(1, 4)) * _SS)
    canvas |= outline & cv2.dilate(region, np.ones((5, 5), np.uint8))


def _draw_tree(rng, canvas, x, y, angle, length, depth) -> None:
    """Recursive branches getting thinner: twigs, antennae, hair-like structures."""
    if depth == 0 or length < 4 * _SS:
        return
    x2 = x + length * np.cos(angle)
    y2 = y + length * np.sin(angle)
    thickness = max(1, int(depth * 0.8)) * _SS
    cv2.line(canvas, (int(x), int(y)), (int(x2), int(y2)), 255, thickness)
    for _ in range(int(rng.integers(1, 4))):
        _draw_tree(
            rng, canvas, x2, y2, angle + rng.uniform(-0.8, 0.8), length * rng.uniform(0.5, 0.8), depth - 1
        )


def make_sample(
    rng: np.random.Generator, width: int = 256, height: int = 256
) -> tuple[np.ndarray, np.ndarray, str]:
    """One synthetic image and its exact mask.

    Args:
        rng: the sample's generator (everything drawn comes from it).
        width, height: output size in pixels.

    Returns:
        (image (H, W, 3) uint8 RGB, mask (H, W) uint8 alpha 0..255, class name from :data:`KINDS`).
    """
    H, W = height * _SS, width * _SS
    canvas = np.zeros((H, W), np.uint8)
    n_objects = int(rng.choice([1, 1, 1, 2, 2, 3]))
    scale = min(H, W)
    areas: dict[str, int] = {}
    for _ in range(n_objects):
        # An object is a body (the class) with thin attachments, like a chair, a bicycle or a plant.
        kind = str(rng.choice(KINDS, p=_KIND_P))
        radius = scale * rng.uniform(0.12, 0.28) / (1 + 0.3 * (n_objects - 1))
        cx = rng.uniform(0.3, 0.7) * W
        cy = rng.uniform(0.3, 0.7) * H
        part = np.zeros_like(canvas)
        if kind == "Blob":
            _draw_blob(rng, part, cx, cy, radius, holes=rng.random() < 0.6)
        elif kind == "Ring":
            _draw_ring(rng, part, cx, cy, radius)
        elif kind == "Curves":
            _draw_curves(rng, part, cx, cy, radius)
        elif kind == "Mesh":
            _draw_mesh(rng, part, cx, cy, radius)
        else:
            _draw_tree(
                rng,
                part,
                cx,
                cy + radius,
                -np.pi / 2 + rng.uniform(-0.4, 0.4),
                radius * 0.8,
                int(rng.integers(4, 7)),
            )
        areas[kind] = areas.get(kind, 0) + int(np.count_nonzero(part))
        for _ in range(int(rng.integers(0, 3)) if kind in ("Blob", "Ring", "Mesh") else 0):
            a = rng.uniform(0, 2 * np.pi)  # attachment on the body's rim, pointing outwards
            ax, ay = cx + 0.8 * radius * np.cos(a), cy + 0.8 * radius * np.sin(a)
            if rng.random() < 0.5:
                _draw_tree(
                    rng,
                    part,
                    ax,
                    ay,
                    a + rng.uniform(-0.3, 0.3),
                    radius * rng.uniform(0.4, 0.7),
                    int(rng.integers(3, 5)),
                )
            else:
                _draw_curves(rng, part, ax, ay, radius * rng.uniform(0.4, 0.8))
        canvas |= part
    if not canvas.any():  # degenerate draw (everything off the canvas): fall back to a blob
        _draw_blob(rng, canvas, W / 2, H / 2, scale * 0.25, holes=False)
        areas = {"Blob": 1}
    kind = max(areas, key=lambda k: areas[k])

    alpha = cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    bg_color = _random_color(rng)
    fg_color = _random_color(rng)
    for _ in range(20):  # keep object and background apart in colour most of the time
        if np.linalg.norm(fg_color - bg_color) > 120:
            break
        fg_color = _random_color(rng)
    background = _texture(rng, height, width, bg_color, strength=rng.uniform(0.1, 0.35))
    foreground = _texture(rng, height, width, fg_color, strength=rng.uniform(0.05, 0.25))
    # background clutter: a few shapes in background-like colours that are NOT part of the mask
    for _ in range(int(rng.integers(0, 4))):
        clutter = np.zeros((height, width), np.uint8)
        c = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
        if rng.random() < 0.5:
            cv2.circle(clutter, c, int(rng.uniform(3, 0.15 * min(width, height))), 255, -1)
        else:
            end = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
            cv2.line(clutter, c, end, 255, int(rng.integers(1, 4)))
        clutter_alpha = cv2.GaussianBlur(clutter, (3, 3), 0).astype(np.float32)[..., None] / 255.0 * 0.6
        shade = np.clip(bg_color + rng.normal(0, 40, 3), 0, 255)
        background = background * (1 - clutter_alpha) + shade * clutter_alpha
    a = alpha[..., None]
    image = foreground * a + background * (1 - a)
    image += rng.normal(0, rng.uniform(1, 6), image.shape)  # sensor noise
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    mask = np.clip(np.rint(alpha * 255), 0, 255).astype(np.uint8)
    return image, mask, kind


def write_synthetic_dataset(
    out: str | os.PathLike,
    n: int,
    *,
    size: tuple[int, int] = (256, 256),
    seed: int = 0,
    image_format: str = "jpg",
) -> Path:
    """Write ``n`` samples to ``out/im`` and ``out/gt`` (official layout).

    Args:
        out: dataset folder (created; existing files with the same names are overwritten).
        n: number of samples.
        size: (width, height) of every sample.
        seed: seed of the whole set; sample ``i`` depends only on ``(seed, i)``, so a larger
            ``n`` extends a smaller set.
        image_format: "jpg" (quality 95, as DIS5K ships JPEG images) or "png".

    Returns:
        The dataset folder.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    out = Path(out)
    (out / "im").mkdir(parents=True, exist_ok=True)
    (out / "gt").mkdir(parents=True, exist_ok=True)
    width, height = size
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        image, mask, kind = make_sample(rng, width, height)
        stem = f"{i + 1}#Synthetic#{KINDS.index(kind) + 1}#{kind}#{seed}_{i:06d}"
        params = [cv2.IMWRITE_JPEG_QUALITY, 95] if image_format == "jpg" else []
        if not cv2.imwrite(str(out / "im" / f"{stem}.{image_format}"), image[..., ::-1], params):
            raise OSError(f"could not write {out / 'im' / stem}.{image_format}")
        if not cv2.imwrite(str(out / "gt" / f"{stem}.png"), mask):
            raise OSError(f"could not write {out / 'gt' / stem}.png")
    logger.info("wrote %d synthetic samples of %dx%d to %s", n, width, height, out)
    return out
