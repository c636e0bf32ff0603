"""Reading user images into one canonical form, and writing outputs without partial files.

Every input the Predictor and ``birefnet predict`` accept (a path, a PIL image, a numpy array) is
turned into a :class:`DecodedImage`: 8-bit RGB pixels plus the input's own transparency, upright
(EXIF orientation applied). That is where grayscale, palette, CMYK, 16-bit and RGBA inputs are
handled, so nothing downstream has to care about image modes.

Failures raise :class:`ImageReadError`, whose message names the input, says what is wrong and how
to fix it, in one line, because the CLI prints it as is.

Choices:

* The model sees the RGB channels only; an input's alpha channel is dropped for the model (as the
  official ``Image.convert("RGB")`` does) and kept in :attr:`DecodedImage.alpha`, so that cut-outs
  stay transparent where the input already was.
* 16-bit inputs are scaled to 8 bits (``v / 257``, rounded); float arrays are taken as [0, 1].
* Animated images (GIF, WebP, APNG) give their first frame.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageColor, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

# Extensions a folder walk picks up (case-insensitive).
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".jfif",
    ".png",
    ".webp",
    ".bmp",
    ".tif",
    ".tiff",
    ".gif",
    ".ppm",
    ".pgm",
    ".pnm",
    ".tga",
)

# Pillow refuses images above 2 x Image.MAX_IMAGE_PIXELS (~179 Mpx) as decompression bombs; use the
# same bound by default and let callers raise or lower it.
DEFAULT_MAX_PIXELS = 2 * 89_478_485

ImageInput = str | os.PathLike | Image.Image | np.ndarray


class ImageReadError(ValueError):
    """An input cannot be turned into an image; ``str(error)`` is one line: source, reason, fix."""

    def __init__(self, source: str, reason: str, fix: str | None = None) -> None:
        self.source = source
        self.reason = reason
        self.fix = fix
        super().__init__(f"{source}: {reason}" + (f"; {fix}" if fix else ""))


@dataclass
class DecodedImage:
    """An input image in canonical form.

    Attributes:
        rgb: (H, W, 3) uint8 RGB pixels, upright.
        alpha: (H, W) uint8 transparency of the input (255 = opaque), or None when fully opaque
            or the input has no alpha.
        source: where it came from (a path, or ``<PIL image>`` / ``<array>``), for messages.
        mode: the input's Pillow mode or numpy dtype/shape, for the manifest and debugging.
    """

    rgb: np.ndarray
    alpha: np.ndarray | None
    source: str
    mode: str

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.width, self.height


# --------------------------------------------------------------------------------------------
# Reading


def load_image(
    source: ImageInput | DecodedImage, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> DecodedImage:
    """Read a path, PIL image or numpy array into a :class:`DecodedImage`.

    Args:
        source: a file path; a PIL image (any mode); or a numpy array (H, W), (H, W, 1),
            (H, W, 3) RGB or (H, W, 4) RGBA, channels last, dtype uint8, uint16, bool or float
            in [0, 1]. A DecodedImage is returned unchanged.
        max_pixels: refuse images with more pixels than this (decompression bombs); None = no
            limit.

    Raises:
        ImageReadError: the input is missing, unreadable, not an image, truncated, too large, or
            an array of an unsupported shape or dtype.
    """
    if isinstance(source, DecodedImage):
        return source
    if isinstance(source, Image.Image):
        name = getattr(source, "filename", "") or "<PIL image>"
        _check_pixels(name, source.size, max_pixels)
        return _from_pil(source, name)
    if isinstance(source, np.ndarray):
        return _from_array(source, "<array>", max_pixels)
    if isinstance(source, (str, os.PathLike)):
        return _from_path(Path(source), max_pixels)
    raise ImageReadError(
        f"<{type(source).__name__}>",
        "unsupported input type",
        "pass a file path, a PIL.Image.Image or a numpy array (H, W, 3) RGB",
    )


def _check_pixels(name: str, size: tuple[int, int], max_pixels: int | None) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageReadError(name, f"image has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageReadError(
            name,
            f"{width}x{height} = {width * height:,} pixels is above the limit of {max_pixels:,} "
            "(possible decompression bomb)",
            "if you trust the file, raise the limit with --max-pixels / max_pixels=",
        )


def _lift_pillow_limit(max_pixels: int | None) -> None:
    """Let our own ``max_pixels`` check decide: Pillow warns above ``Image.MAX_IMAGE_PIXELS`` and
    refuses above twice that, process-wide, so a larger requested limit raises Pillow's (never lowers it)."""
    current = Image.MAX_IMAGE_PIXELS
    if current is None:
        return
    if max_pixels is None:
        Image.MAX_IMAGE_PIXELS = None
    elif max_pixels > current:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _from_path(path: Path, max_pixels: int | None) -> DecodedImage:
    name = str(path)
    _lift_pillow_limit(max_pixels)
    if not path.exists():
        if path.is_symlink():
            raise ImageReadError(name, "broken symbolic link", "point it at an existing file")
        raise ImageReadError(name, "no such file", "check the path")
    if path.is_dir():
        raise ImageReadError(
            name, "is a directory, not an image file", "pass --recursive to look inside folders"
        )
    if not path.is_file():
        raise ImageReadError(name, "not a regular file (device, pipe or socket)")
    try:
        size = path.stat().st_size
        handle = open(path, "rb")  # noqa: SIM115 - closed below, PIL reads lazily from it
    except PermissionError as e:
        raise ImageReadError(name, "permission denied", "make it readable, e.g. chmod u+r") from e
    except OSError as e:
        raise ImageReadError(name, f"cannot open: {e.strerror or e}") from e
    with handle:
        if size == 0:
            raise ImageReadError(name, "empty file (0 bytes)", "re-copy or re-download it")
        try:
            image = Image.open(handle)
        except Image.DecompressionBombError as e:
            raise ImageReadError(
                name,
                f"refused by Pillow as a decompression bomb ({e})",
                "if you trust the file, raise the limit with --max-pixels / max_pixels=",
            ) from e
        except UnidentifiedImageError as e:
            head = _peek(path)
            if head and _looks_like_text(head):
                what = f"not an image but a text file (starts with {head[:24].decode('utf-8')!r})"
            else:
                what = f"not a readable image: corrupt, or a format Pillow cannot read (starts with {head[:12]!r})"
            raise ImageReadError(
                name, what, "check that the file really is an image and is not mis-named"
            ) from e
        except Exception as e:  # truncated headers raise SyntaxError, struct.error, OSError ...
            raise ImageReadError(
                name, f"truncated or corrupt image header ({type(e).__name__}: {e})", "re-copy the file"
            ) from e
        _check_pixels(name, image.size, max_pixels)
        try:
            image.load()
        except Image.DecompressionBombError as e:
            raise ImageReadError(name, f"refused as a decompression bomb ({e})") from e
        except (OSError, SyntaxError, EOFError, ValueError, zlib.error, IndexError) as e:
            reason = str(e) or type(e).__name__
            if "truncated" in reason.lower() or isinstance(e, EOFError):
                raise ImageReadError(
                    name,
                    f"truncated or corrupt {image.format or 'image'} data ({reason})",
                    "re-copy the file",
                ) from e
            raise ImageReadError(
                name,
                f"corrupt {image.format or 'image'} data ({type(e).__name__}: {reason})",
                "re-copy the file",
            ) from e
        return _from_pil(image, name)


def _peek(path: Path, n: int = 64) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def _looks_like_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c >= 32 or c in b"\t\r\n" for c in head)


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (a no-op, without copying, when there is none)."""
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # malformed EXIF: ignore it rather than fail the image
        return image
    if orientation in (None, 1):
        return image
    try:
        return ImageOps.exif_transpose(image)
    except Exception as e:
        logger.warning("%s: ignoring malformed EXIF orientation (%s)", getattr(image, "filename", ""), e)
        return image


def _from_pil(image: Image.Image, name: str) -> DecodedImage:
    mode = image.mode
    try:
        image = _upright(image)  # animated files open on their first frame
        alpha: np.ndarray | None = None
        if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            rgb = _gray_high_depth(np.asarray(image))
        else:
            if mode == "P":
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            elif mode in ("LA", "La", "PA", "RGBa"):
                image = image.convert("RGBA")
            elif mode == "1":
                image = image.convert("L").convert("RGB")
            elif mode != "RGB" and mode != "RGBA":
                image = image.convert("RGB")  # L, CMYK, YCbCr, LAB, HSV, RGBX
            arr = np.asarray(image)
            if image.mode == "RGBA":
                rgb = np.ascontiguousarray(arr[..., :3])
                alpha = np.ascontiguousarray(arr[..., 3])
                if alpha.min() == 255:
                    alpha = None
            else:
                rgb = np.ascontiguousarray(arr)
    except ImageReadError:
        raise
    except Exception as e:
        raise ImageReadError(name, f"cannot convert {mode} image to RGB ({type(e).__name__}: {e})") from e
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageReadError(name, f"unexpected decoded layout {rgb.shape} {rgb.dtype} from mode {mode}")
    return DecodedImage(rgb=rgb, alpha=alpha, source=name, mode=mode)


def _gray_high_depth(arr: np.ndarray) -> np.ndarray:
    """(H, W) 16/32-bit integer or float gray -> (H, W, 3) uint8."""
    arr = np.asarray(arr)
    if arr.dtype.kind == "f":
        scaled = _float_to_unit(arr) * 255.0
    elif arr.max(initial=0) > 255 or arr.dtype.itemsize == 2:
        scaled = arr.astype(np.float64) / 257.0  # 16-bit range (65535 / 257 = 255)
    else:
        scaled = arr.astype(np.float64)
    gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def _float_to_unit(arr: np.ndarray) -> np.ndarray:
    arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(arr, 0.0, 1.0)


def _to_uint8(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype == np.uint16:
        return np.rint(arr / 257.0).astype(np.uint8)
    if arr.dtype.kind in "iu":
        if arr.min(initial=0) < 0:
            raise ImageReadError(
                name, f"negative pixel values in an {arr.dtype} array", "pass uint8 (0-255) pixels"
            )
        if arr.max(initial=0) > 255:
            return np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        return arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        return np.rint(_float_to_unit(arr) * 255.0).astype(np.uint8)
    raise ImageReadError(
        name, f"unsupported array dtype {arr.dtype}", "pass uint8, uint16, bool or float in [0, 1]"
    )


def _from_array(arr: np.ndarray, name: str, max_pixels: int | None) -> DecodedImage:
    mode = f"array {arr.dtype} {tuple(arr.shape)}"
    if arr.ndim == 3 and arr.shape[2] not in (1, 3, 4) and arr.shape[0] in (1, 3, 4):
        raise ImageReadError(
            name,
            f"array of shape {arr.shape} looks channels-first",
            "pass (H, W, 3) channels-last, e.g. arr.transpose(1, 2, 0)",
        )
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageReadError(
            name, f"unsupported array shape {arr.shape}", "pass (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA"
        )
    _check_pixels(name, (arr.shape[1], arr.shape[0]), max_pixels)
    arr = _to_uint8(arr, name)
    alpha = None
    if arr.ndim == 2:
        rgb = np.repeat(arr[..., None], 3, axis=2)
    else:
        rgb = np.ascontiguousarray(arr[..., :3])
        if arr.shape[2] == 4:
            alpha = np.ascontiguousarray(arr[..., 3])
            if alpha.min() == 255:
                alpha = None
    return DecodedImage(rgb=rgb, alpha=alpha, source=name, mode=mode)


# --------------------------------------------------------------------------------------------
# Writing

# Output format name -> (Pillow format, file extension, supports transparency)
FORMATS: dict[str, tuple[str, str, bool]] = {
    "png": ("PNG", ".png", True),
    "webp": ("WEBP", ".webp", True),
    "jpg": ("JPEG", ".jpg", False),
}


def save_image_atomic(
    image: Image.Image, path: str | os.PathLike, *, fmt: str = "png", quality: int = 95
) -> Path:
    """Write ``image`` to ``path`` via a temporary file in the same folder and an atomic rename.

    An interrupted or failed write leaves no partial file under ``path`` and removes its
    temporary file; an existing file at ``path`` is replaced only by a complete new one.

    Args:
        image: the image to write (mode L, RGB or RGBA).
        path: final file name.
        fmt: "png", "webp" or "jpg".
        quality: JPEG/WebP quality (1-100); ignored for PNG.
    """
    pil_format, _, transparent = FORMATS[fmt]
    if not transparent and image.mode in ("RGBA", "LA", "PA"):
        raise ValueError(f"{fmt} cannot store transparency; write {path} as png or webp")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    params: dict[str, Any] = {}
    if fmt == "png":
        params["compress_level"] = 3  # much faster than Pillow's default 6, files ~5-10 % larger
    elif fmt == "jpg":
        params.update(quality=quality, subsampling=0 if quality >= 90 else 2)
    elif fmt == "webp":
        params.update(quality=quality, method=4)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format=pil_format, **params)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def parse_color(text: str) -> tuple[int, int, int]:
    """An opaque RGB colour from a name (``white``), ``#RRGGBB``/``#RGB``, ``rgb(r, g, b)`` or ``r,g,b``.

    Raises:
        ValueError: unknown colour, or a colour with transparency (use an RGBA cut-out for that).
    """
    value = text.strip()
    if "," in value and not value.lower().startswith(("rgb", "hsl", "hsv")):
        parts = [p.strip() for p in value.split(",")]
        if len(parts) != 3 or not all(p.isdigit() and 0 <= int(p) <= 255 for p in parts):
            raise ValueError(f"colour {text!r}: expected three numbers 0-255 like '255,255,255'")
        return int(parts[0]), int(parts[1]), int(parts[2])
    try:
        rgba = ImageColor.getrgb(value)
    except ValueError as e:
        raise ValueError(f"colour {text!r}: use a name (white), #RRGGBB, rgb(r,g,b) or r,g,b") from e
    if len(rgba) == 4 and rgba[3] != 255:
        raise ValueError(f"colour {text!r} is not opaque; for a transparent background use the rgba output")
    return int(rgba[0]), int(rgba[1]), int(rgba[2])
