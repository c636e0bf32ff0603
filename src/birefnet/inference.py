"""Images in, masks out: the :class:`Predictor` and :func:`remove_background`.

The model (:class:`~birefnet.models.birefnet.BiRefNet`) only maps normalised tensors to logits;
everything a user's image needs around it lives here (SAM's ``SamPredictor`` split):

1. decode (:func:`birefnet.imageio.load_image`: EXIF orientation, any mode, 16-bit);
2. resize to the model's input size (the resolution policy decides which size);
3. RGB in [0, 1], normalised with the weights' mean/std (ImageNet unless the registry row says
   otherwise);
4. forward under ``torch.inference_mode()`` on the chosen device, in the chosen precision;
5. ``sigmoid`` on the logits (in float32), and a bilinear resize (``align_corners=True``) of that
   probability map back to the input's own size.

Resizes. Input: Pillow bilinear by default, what the official tutorial and Hugging Face usage do
(``transforms.Resize`` on a PIL image); it is antialiased when shrinking, which matters for photos
far above the model size. ``input_resize="cv2"`` uses OpenCV INTER_LINEAR like the official
evaluation loader (no antialiasing). Output: ``F.interpolate(..., "bilinear", align_corners=True)``
of the float probabilities, as the official ``inference.py`` does before saving (the tutorial's
route via an 8-bit PIL image loses precision first).

Resolution policies:

* ``fixed``: every image is resized to the model's training size (``size``; default), aspect
  ratio not kept, as in the official code.
* ``dynamic``: keep the aspect ratio; width and height are multiples of 32 and their product is
  at most ``size[0] * size[1]`` pixels (images are scaled up or down to that budget; each side at
  least 256, see :func:`dynamic_size`). For the dynamic and high-resolution models.
* ``tiled``: a global pass at ``size`` (the fixed policy) locates the object; where its mask is
  uncertain (0.02 < p < 0.98, dilated), overlapping tiles of ``size`` pixels taken from the image
  at its native resolution are predicted and blended in (feathered tile weights, then a distance
  ramp against the global map). Confident areas keep the global answer, so tiles cannot invent
  objects in the background, and memory stays bounded by the tile batch. An image that fits in
  one tile gets exactly the fixed-policy result.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from birefnet import registry
from birefnet._sizes import two_numbers
from birefnet.imageio import DEFAULT_MAX_PIXELS, DecodedImage, ImageInput, load_image, parse_color
from birefnet.postprocess import render_outputs

logger = logging.getLogger(__name__)

Resolution = Literal["fixed", "dynamic", "tiled"]
RESOLUTIONS: tuple[str, ...] = ("fixed", "dynamic", "tiled")
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_PRECISION_ALIASES = {
    "float32": "fp32",
    "full": "fp32",
    "float16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
}
DEFAULT_SIZE: tuple[int, int] = (1024, 1024)  # for checkpoints the registry does not know
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MULTIPLE = 32  # the network needs input sides divisible by 32

ModelSource = str | os.PathLike | torch.nn.Module | None


# --------------------------------------------------------------------------------------------
# Device, precision and sizes


def select_device(device: str | torch.device | None = "auto") -> torch.device:
    """The device to run on: "auto" picks CUDA, then Apple MPS, then the CPU.

    Raises:
        ValueError: an explicitly requested device is not available (the message says why).
    """
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                "CUDA was requested but is not available (no NVIDIA GPU, or a CPU-only torch build: "
                f"torch {torch.__version__}); use --device cpu or install a CUDA build of torch"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{dev} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError("Apple MPS was requested but is not available on this machine; use --device cpu")
    return dev


def describe_device(device: torch.device) -> str:
    """ "cuda:0 (NVIDIA H100)", "mps", "cpu (8 threads)"."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if device.type == "cpu":
        n = torch.get_num_threads()
        return f"cpu ({n} thread{'s' if n != 1 else ''})"
    return str(device)


def select_precision(precision: str | None, device: torch.device) -> str:
    """ "fp32", "fp16" or "bf16". "auto": bf16 on CUDA GPUs that support it, else fp16 on CUDA;
    fp32 on CPU and on Apple MPS (half precision there is slower on CPUs and fragile on MPS)."""
    name = (precision or "auto").lower()
    name = _PRECISION_ALIASES.get(name, name)
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use auto, fp32, fp16 or bf16")
    return name


def parse_size(size: int | str | Sequence[int] | None) -> tuple[int, int] | None:
    """``1024`` / ``"1024"`` / ``"2048x1536"`` / ``(2048, 1536)`` -> (width, height)."""
    if size is None:
        return None
    return two_numbers(size, "size", "N or WxH, e.g. 1024 or 2048x1536")


def check_multiple(size: tuple[int, int], what: str = "size") -> tuple[int, int]:
    """Raise a ValueError suggesting the nearest valid size unless both sides are multiples of 32."""
    w, h = size
    if w % MULTIPLE or h % MULTIPLE or w < MULTIPLE or h < MULTIPLE:
        near = tuple(max(MULTIPLE, round(v / MULTIPLE) * MULTIPLE) for v in size)
        raise ValueError(f"{what} {w}x{h}: both sides must be multiples of 32; try {near[0]}x{near[1]}")
    return size


def dynamic_size(
    width: int, height: int, max_pixels: int, multiple: int = MULTIPLE, min_side: int | None = None
) -> tuple[int, int]:
    """Model input size for the dynamic policy: the image's aspect ratio, sides multiples of 32,
    area at most ``max_pixels`` (scaled up or down to it).

    Each side is at least ``min_side``: default 256 (the smallest size the dynamic models were
    trained at), or half the side of the square budget for small budgets but never below 64 (PVT
    backbones need 64); very elongated images are therefore squeezed along their long side rather
    than shrunk to a sliver.

    Example: 2048x1536 with a 1024x1024 budget -> 1152x864; 4000x50 -> 4096x256.
    """
    if min_side is None:
        min_side = min(256, max(2 * multiple, math.isqrt(max_pixels) // 2 // multiple * multiple))
    scale = math.sqrt(max_pixels / (width * height))
    w = max(min_side, int(width * scale + 1e-6) // multiple * multiple)
    h = max(min_side, int(height * scale + 1e-6) // multiple * multiple)
    if w * h > max_pixels:  # very elongated: the short side was clamped up to `min_side`
        if w >= h:
            w = max(min_side, max_pixels // h // multiple * multiple)
        else:
            h = max(min_side, max_pixels // w // multiple * multiple)
    return w, h


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Evenly spread tile offsets covering [0, length) with at least ``overlap`` pixels of overlap."""
    if length <= tile:
        return [0]
    stride = max(1, tile - overlap)
    n = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def _tile_window(width: int, height: int, overlap: int) -> np.ndarray:
    """(height, width) feathering weights: linear ramps over ``overlap`` pixels at the tile borders."""

    def ramp(n: int) -> np.ndarray:
        i = np.arange(n, dtype=np.float32)
        r = np.minimum(i + 0.5, n - i - 0.5) / max(overlap, 1)
        return np.clip(r, 1e-3, 1.0)  # > 0 so a pixel covered by one tile keeps that tile's value

    return np.outer(ramp(height), ramp(width)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Finding the registry row of a checkpoint


def _looks_like_repo_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not Path(text).exists()


def registry_row_for_path(path: str | os.PathLike) -> registry.WeightsSpec | None:
    """The released model a local checkpoint was downloaded as, when that can be told.

    Looks at the official hub ``config.json`` beside the weights (``_name_or_path``) and at a
    Hugging Face cache path (``models--ZhengPeng7--BiRefNet_lite/...``).
    """
    p = Path(path).expanduser()
    folder = p if p.is_dir() else p.parent
    cfg = folder / "config.json"
    if cfg.is_file():
        try:
            data = json.loads(cfg.read_text())
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict) and isinstance(data.get("_name_or_path"), str):
            row = registry.find_by_repo(data["_name_or_path"])
            if row is not None:
                return row
    for part in p.resolve().parts:
        if part.startswith("models--"):
            repo = part[len("models--") :].replace("--", "/", 1)
            return registry.find_by_repo(repo)
    return None


# --------------------------------------------------------------------------------------------
# The Predictor


@dataclass
class PreparedImage:
    """One image ready for the network.

    Attributes:
        tensor: (3, h, w) float32, normalised, h and w multiples of 32 (CPU).
        image_size: (width, height) of the original image, the size the mask is resized back to.
    """

    tensor: torch.Tensor
    image_size: tuple[int, int]

    @property
    def model_size(self) -> tuple[int, int]:
        return int(self.tensor.shape[-1]), int(self.tensor.shape[-2])


class Predictor:
    """Foreground masks for images, with a BiRefNet model.

    Example::

        predictor = Predictor("general")               # registry name (downloads once)
        mask = predictor.predict("cat.jpg")            # (H, W) float32 in [0, 1]
        masks = predictor.predict([img1, img2, arr3])  # a list, each at its own input's size

    Args:
        model: registry name (``birefnet models``; default "general"), a local checkpoint file or
            folder, a Hugging Face repo id, or a ready :class:`torch.nn.Module` whose output has
            ``.logits`` (B, 1, H, W).
        weights: local checkpoint to use instead of downloading; with a registry name in
            ``model``, that row's settings (size, patch order, resolution policy, mean/std) apply.
        resolution: "fixed", "dynamic" or "tiled"; default the registry row's policy, else fixed.
        size: model input size (width, height), ``N`` or ``"WxH"``; default the registry row's
            training size, else 1024x1024. For "dynamic" it is the pixel budget; for "tiled" the
            tile size.
        device: "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", "cuda:N", "mps".
        precision: "auto" (bf16 or fp16 on CUDA, fp32 elsewhere), "fp32", "fp16", "bf16". Reduced
            precision runs under autocast; a batch with non-finite outputs is recomputed in fp32
            and the Predictor stays in fp32 from then on (with a warning).
        batch_size: images per forward pass when several share a model input size.
        patch_order: override the checkpoint's inward-reference patch order ("current"/"legacy").
        mean, std: normalisation; default the registry row's, else ImageNet.
        tile_overlap: overlap of neighbouring tiles as a fraction of the tile size ("tiled").
        input_resize: "pil" (Pillow bilinear, antialiased; the tutorial's) or "cv2" (OpenCV
            INTER_LINEAR; the official evaluation loader's).
        max_pixels: refuse decoding images larger than this (decompression bombs).
        backend: "torch" (default) or "onnx": run a file written by ``birefnet export onnx`` with
            ONNX Runtime (``model`` or ``weights`` is the .onnx path; chosen automatically for
            files ending in .onnx). Pre- and post-processing are the same; ``precision`` and
            ``patch_order`` are fixed in the file; ``device`` picks the ONNX Runtime provider.
        optimize: opt-in inference optimisations, a comma-separated string or names from
            ``channels_last``, ``compile``, ``int8`` (not exact), ``half_weights`` (with fp16/bf16
            ``precision``: the model converted to that type instead of autocast) and ``cuda_graph``
            (CUDA: each input shape replayed from a captured graph; exact). See
            :mod:`birefnet.models.optimize`; speed and output differences in docs/performance.md.
            Torch backend only.

    Not thread-safe: use one Predictor per thread, or call it from one thread.
    """

    def __init__(
        self,
        model: ModelSource = None,
        *,
        weights: str | os.PathLike | None = None,
        resolution: Resolution | None = None,
        size: int | str | Sequence[int] | None = None,
        device: str | torch.device | None = "auto",
        precision: str | None = "auto",
        batch_size: int = 1,
        patch_order: Literal["current", "legacy"] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        tile_overlap: float = 0.25,
        input_resize: Literal["pil", "cv2"] = "pil",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        backend: Literal["torch", "onnx"] | None = None,
        optimize: str | Sequence[str] | None = None,
    ) -> None:
        self.backend = _backend(backend, model, weights)
        if self.backend == "onnx":
            from birefnet.onnx_runtime import load_onnx

            # ONNX Runtime picks its own device; tensors are handed over on the CPU, in the file's dtype.
            self.model, self.spec, self.name, self.weights_path = load_onnx(
                model, weights, device, patch_order
            )
            self.device, self.precision = torch.device("cpu"), "fp32"
        else:
            self.device = select_device(device)
            self.precision = select_precision(precision, self.device)
            self.model, self.spec, self.name, self.weights_path = _load(model, weights, patch_order)
        self.model.eval().to(self.device)
        from birefnet.models.optimize import optimize_for_inference, parse_optimizations

        self.optimizations = parse_optimizations(optimize)
        if self.optimizations and self.backend == "onnx":
            raise ValueError("optimize applies to the torch backend; an ONNX file is run as exported")
        # half_weights converts the model in place: keep the float32 weights (on the CPU) for the fp32
        # fallback on non-finite outputs.
        self._fp32_weights: dict[str, torch.Tensor] | None = None
        if "half_weights" in self.optimizations and self.precision != "fp32":
            self._fp32_weights = {
                k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
            }
        if (
            self.backend == "torch"
            and not self.optimizations
            and self.device.type == "cpu"
            and self.precision == "fp32"
            and hasattr(self.model, "pack_cpu_weights")
        ):
            # same products, same memory, ~1-2 % faster forwards for the Swin backbones on AVX-512 CPUs
            # (a no-op elsewhere); state_dict() still gives the plain weights
            self.model.pack_cpu_weights()
        # what forward passes call; self.model stays the plain module (its attributes are read below)
        self._forward = optimize_for_inference(
            self.model, self.optimizations, self.device, half_dtype=PRECISIONS.get(self.precision)
        )
        if self.spec is not None and not self.spec.commercial:
            logger.warning(
                "%s: the weights are licensed %s and may NOT be used commercially (%s)",
                self.spec.name,
                self.spec.license,
                self.spec.repo_id,
            )

        policy = resolution or (self.spec.resolution if self.spec else "fixed")
        if policy not in RESOLUTIONS:
            raise ValueError(f"unknown resolution policy {policy!r}; use {', '.join(RESOLUTIONS)}")
        self.resolution: str = policy
        default_size = getattr(self.model, "default_size", None)  # an ONNX file's static or training size
        self.size: tuple[int, int] = (
            parse_size(size) or default_size or (self.spec.size if self.spec else DEFAULT_SIZE)
        )
        if policy != "dynamic":
            check_multiple(self.size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        if not 0 <= tile_overlap < 1:
            raise ValueError(f"tile_overlap is a fraction of the tile size in [0, 1), got {tile_overlap}")
        self.tile_overlap = float(tile_overlap)
        if input_resize not in ("pil", "cv2"):
            raise ValueError(f"input_resize must be 'pil' or 'cv2', got {input_resize!r}")
        self.input_resize = input_resize
        self.max_pixels = max_pixels
        self.mean = tuple(
            mean
            or getattr(self.model, "input_mean", None)
            or (self.spec.mean if self.spec else IMAGENET_MEAN)
        )
        self.std = tuple(
            std or getattr(self.model, "input_std", None) or (self.spec.std if self.spec else IMAGENET_STD)
        )
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        logger.info("%s", self.describe())

    # ---- description -------------------------------------------------------------------------

    def describe(self) -> str:
        """One line: model, backbone, device, precision, resolution policy and size."""
        cfg = getattr(self.model, "config", None)
        backbone = f" ({cfg.backbone})" if cfg is not None and hasattr(cfg, "backbone") else ""
        w, h = self.size
        what = {
            "fixed": f"{w}x{h} fixed",
            "dynamic": f"dynamic <= {w * h:,} px",
            "tiled": f"tiled {w}x{h} tiles",
        }
        where = (
            self.model.describe()
            if self.backend == "onnx"
            else f"{describe_device(self.device)}, {self.precision}"
            + "".join(f", {o.replace('_', '-')}" for o in self.optimizations)
        )
        return f"model {self.name}{backbone} on {where}, {what[self.resolution]}"

    def __repr__(self) -> str:
        return f"Predictor({self.describe()})"

    # ---- stages (the CLI runs them on different threads) -----------------------------------

    def model_input_size(self, width: int, height: int) -> tuple[int, int]:
        """(w, h) the network sees for an image of (width, height) under the resolution policy."""
        if self.resolution == "dynamic":
            return dynamic_size(width, height, self.size[0] * self.size[1])
        return self.size

    def prepare(self, image: DecodedImage, model_size: tuple[int, int] | None = None) -> PreparedImage:
        """Resize and normalise one image (CPU work; safe to run on worker threads).

        Args:
            image: the decoded input.
            model_size: (w, h) to resize to; default :meth:`model_input_size`.
        """
        w, h = model_size or self.model_input_size(image.width, image.height)
        rgb = image.rgb
        if (w, h) != image.size:
            if self.input_resize == "pil":
                rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.BILINEAR))
            else:
                import cv2

                rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
        if not rgb.flags.writeable or not rgb.flags.c_contiguous:
            rgb = np.array(rgb)  # torch warns on read-only arrays (Pillow's are)
        # as torchvision ToTensor + Normalize: uint8 -> float32 / 255, then (x - mean) / std
        x = torch.from_numpy(rgb).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
        x.sub_(self._mean).div_(self._std)
        return PreparedImage(tensor=x, image_size=image.size)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Probabilities at the model's resolution for a batch (run on one thread only).

        Args:
            batch: (B, 3, h, w) normalised float32 (from :meth:`prepare`).

        Returns:
            (B, h, w) float32 probabilities on the CPU.

        Raises:
            FloatingPointError: the model gives non-finite outputs even in float32.
        """
        x = batch.to(self.device, non_blocking=True)
        with torch.inference_mode():
            logits = self._logits(x, self.precision)
            if self.precision != "fp32" and not bool(torch.isfinite(logits).all()):
                logger.warning(
                    "non-finite outputs in %s on %s; recomputing in fp32 and staying in fp32 from now on "
                    "(pass precision='fp32' / --precision fp32 to skip the attempt)",
                    self.precision,
                    self.device,
                )
                self._to_fp32()
                logits = self._logits(x, "fp32")
            if not bool(torch.isfinite(logits).all()):
                raise FloatingPointError(
                    "the model produced NaN/inf outputs in fp32; the checkpoint is probably broken "
                    "(check it with `birefnet convert` or re-download it)"
                )
            probs = logits.float().sigmoid()[:, 0]
        return probs.cpu()

    def _to_fp32(self) -> None:
        """Run in fp32 from now on: with ``half_weights``, the model gets its float32 weights back."""
        self.precision = "fp32"
        if self._fp32_weights is not None:
            from birefnet.models.optimize import optimize_for_inference

            self.model.float().load_state_dict(self._fp32_weights)
            self._fp32_weights = None
            self.optimizations = tuple(o for o in self.optimizations if o != "half_weights")
            self._forward = optimize_for_inference(self.model, self.optimizations, self.device)

    def _logits(self, x: torch.Tensor, precision: str) -> torch.Tensor:
        if precision == "fp32":
            return self._forward(x).logits
        if self._fp32_weights is not None:  # half_weights: the model is in the half type, no autocast
            return self._forward(x.to(PRECISIONS[precision])).logits
        with torch.autocast(device_type=self.device.type, dtype=PRECISIONS[precision]):
            return self._forward(x).logits

    @staticmethod
    def restore(prob: torch.Tensor, image_size: tuple[int, int]) -> np.ndarray:
        """(h, w) probabilities -> (H, W) float32 numpy at ``image_size`` = (W, H): bilinear,
        ``align_corners=True`` (the official inference resize)."""
        width, height = image_size
        if tuple(prob.shape) != (height, width):
            prob = F.interpolate(prob[None, None], size=(height, width), mode="bilinear", align_corners=True)[
                0, 0
            ]
        return prob.numpy()

    # ---- the user-facing calls -------------------------------------------------------------

    def predict(
        self, images: ImageInput | Sequence[ImageInput], *, batch_size: int | None = None
    ) -> np.ndarray | list[np.ndarray]:
        """Foreground probability masks.

        Args:
            images: one image (path, PIL image, numpy array (H, W[, C]) RGB/RGBA) or a list of them;
                a 4-D array (N, H, W, C) counts as a list.
            batch_size: override the Predictor's batch size.

        Returns:
            For one image, an (H, W) float32 array in [0, 1] at that image's size; for a list, a
            list of those.

        Raises:
            ImageReadError: an input cannot be read (the message names it and says why).
        """
        single = not isinstance(images, (list, tuple)) and not (
            isinstance(images, np.ndarray) and images.ndim == 4
        )
        items = [images] if single else list(images)
        masks: list[np.ndarray] = []
        window = max(8 * (batch_size or self.batch_size), 16)  # decode a window at a time, not all
        for start in range(0, len(items), window):
            decoded = [load_image(x, max_pixels=self.max_pixels) for x in items[start : start + window]]
            masks.extend(self.predict_decoded(decoded, batch_size=batch_size))
        return masks[0] if single else masks

    __call__ = predict

    def predict_decoded(
        self, images: Sequence[DecodedImage], *, batch_size: int | None = None
    ) -> list[np.ndarray]:
        """Masks for already decoded images; images with the same model input size share batches."""
        bs = batch_size or self.batch_size
        if self.resolution == "tiled":
            return [self.predict_tiled(image, batch_size=bs) for image in images]
        results: list[np.ndarray | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, image in enumerate(images):
            groups[self.model_input_size(image.width, image.height)].append(i)
        for model_size, indices in groups.items():
            for chunk in _chunks(indices, bs):
                prepared = [self.prepare(images[i], model_size) for i in chunk]
                probs = self.forward(torch.stack([p.tensor for p in prepared]))
                for i, prob in zip(chunk, probs):
                    results[i] = self.restore(prob, images[i].size)
        return results  # type: ignore[return-value]

    def predict_tiled(self, image: DecodedImage, *, batch_size: int | None = None) -> np.ndarray:
        """Mask of one image with the tiled policy (see the module docstring)."""
        bs = batch_size or self.batch_size
        width, height = image.size
        tile_w, tile_h = self.size
        coarse = self.restore(self.forward(self.prepare(image, self.size).tensor[None])[0], image.size)
        if width <= tile_w and height <= tile_h:
            return coarse
        weight = self._detail_weight(coarse, scale=max(width / tile_w, height / tile_h))
        if weight is None:
            return coarse
        crop_w, crop_h = min(tile_w, width), min(tile_h, height)
        overlap_x, overlap_y = round(self.tile_overlap * crop_w), round(self.tile_overlap * crop_h)
        boxes = [
            (x, y)
            for y in tile_starts(height, crop_h, overlap_y)
            for x in tile_starts(width, crop_w, overlap_x)
            if weight[y : y + crop_h, x : x + crop_w].max() > 0
        ]
        window = _tile_window(crop_w, crop_h, max(overlap_x, overlap_y))
        acc = np.zeros((height, width), np.float32)
        wsum = np.zeros((height, width), np.float32)
        for chunk in _chunks(boxes, bs):
            tiles = [
                DecodedImage(image.rgb[y : y + crop_h, x : x + crop_w], None, image.source, image.mode)
                for x, y in chunk
            ]
            probs = self.forward(torch.stack([self.prepare(t, self.size).tensor for t in tiles]))
            for (x, y), prob in zip(chunk, probs):
                acc[y : y + crop_h, x : x + crop_w] += self.restore(prob, (crop_w, crop_h)) * window
                wsum[y : y + crop_h, x : x + crop_w] += window
        fine = np.divide(acc, wsum, out=coarse.copy(), where=wsum > 0)
        return (weight * fine + (1.0 - weight) * coarse).astype(np.float32)

    @staticmethod
    def _detail_weight(coarse: np.ndarray, scale: float) -> np.ndarray | None:
        """Where tiles take over: 1 on the uncertain band of the global mask, a linear ramp to 0
        over ``r = 2 * scale + 8`` pixels around it (scale = image size / tile size); None if the
        global mask is confident everywhere."""
        import cv2

        band = (coarse > 0.02) & (coarse < 0.98)
        if not band.any():
            return None
        radius = 2.0 * scale + 8.0
        dist = cv2.distanceTransform((~band).astype(np.uint8), cv2.DIST_L2, 3)
        return np.clip(1.0 - dist / radius, 0.0, 1.0).astype(np.float32)


def _chunks(items: Sequence[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), n):
        yield list(items[i : i + n])


def _backend(backend: str | None, model: ModelSource, weights: str | os.PathLike | None) -> str:
    """ "torch" or "onnx": as given, else "onnx" for a model/weights path ending in .onnx."""
    if backend is None:
        source = weights if weights is not None else model
        is_onnx = isinstance(source, (str, os.PathLike)) and str(source).lower().endswith(".onnx")
        return "onnx" if is_onnx else "torch"
    if backend not in ("torch", "onnx"):
        raise ValueError(f"unknown backend {backend!r}; use torch or onnx")
    return backend


def _load(
    model: ModelSource, weights: str | os.PathLike | None, patch_order: str | None
) -> tuple[torch.nn.Module, registry.WeightsSpec | None, str, str | None]:
    """(network, registry row or None, display name, local weights path or None)."""
    if isinstance(model, torch.nn.Module):
        if weights is not None:
            raise ValueError(
                "weights= cannot be combined with a ready model; load the weights into it yourself"
            )
        return model, None, type(model).__name__, None
    from birefnet.weights import load_model

    overrides: dict[str, Any] = {"patch_order": patch_order} if patch_order else {}
    text = None if model is None else str(model)
    spec = None
    is_local = text is not None and Path(text).expanduser().exists()  # as load_model: a path wins
    if text is not None and not is_local:
        spec = registry.get(text, None)
        if spec is None and _looks_like_repo_id(text):
            spec = registry.find_by_repo(text)
    if weights is not None:
        if text is not None and spec is None:
            raise ValueError(  # a path or unknown name in model= plus weights=: which one is meant?
                f"model={text!r} is not a registry name (see `birefnet models`); with weights= give the "
                "name of the released model those weights are (or leave model out)"
            )
        if spec is None:
            spec = registry_row_for_path(weights)
        if spec is not None:
            overrides = {"patch_order": spec.patch_order, **overrides}
        net = load_model(weights, **overrides)
        name = spec.name if spec is not None else str(weights)
        return net, spec, name, str(weights)
    if text is None:
        text = registry.DEFAULT_MODEL
        spec = registry.get(text)
    if is_local:
        spec = registry_row_for_path(text)
        if spec is not None:
            overrides = {"patch_order": spec.patch_order, **overrides}
        net = load_model(text, **overrides)
        return net, spec, spec.name if spec is not None else text, text
    net = load_model(text, **overrides)  # registry name or hub id (the registry row's settings apply)
    return net, spec, spec.name if spec is not None else text, None


# --------------------------------------------------------------------------------------------
# One-call convenience


@functools.lru_cache(maxsize=2)
def _cached_predictor(model: str, options: tuple[tuple[str, Any], ...]) -> Predictor:
    return Predictor(model, **dict(options))


def remove_background(
    image: ImageInput,
    model: str | os.PathLike | Predictor | None = None,
    *,
    refine_foreground: bool = False,
    threshold: float | None = None,
    background: str | tuple[int, int, int] | ImageInput | None = None,
    **predictor_options: Any,
) -> Image.Image:
    """Cut the foreground out of one image.

    Example::

        import birefnet
        birefnet.remove_background("cat.jpg").save("cat.png")
        birefnet.remove_background("cat.jpg", model="lite", refine_foreground=True)

    Args:
        image: path, PIL image or numpy array (H, W, 3) RGB.
        model: registry name (default "general"), checkpoint path, hub id, or a :class:`Predictor`
            (reuse one for many images). Predictors built from names are cached (the last two).
        refine_foreground: estimate the foreground colours at soft edges (no halo around hair).
        threshold: binarise the alpha at this probability.
        background: None for a transparent cut-out; a colour ("white", "#00ff00", (0, 255, 0)) or
            an image (path, PIL, array; scaled to cover) for an opaque composite.
        **predictor_options: passed to :class:`Predictor` (device, precision, resolution, size,
            weights, ...).

    Returns:
        An RGBA image (or RGB when ``background`` is given) at the input's size.
    """
    if isinstance(model, Predictor):
        if predictor_options:
            raise ValueError("predictor options cannot be combined with a ready Predictor")
        predictor = model
    else:
        key = str(model) if model is not None else registry.DEFAULT_MODEL
        options = tuple(
            sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in predictor_options.items())
        )
        try:
            predictor = _cached_predictor(key, options)
        except TypeError:  # an unhashable option: build without caching
            predictor = Predictor(key, **predictor_options)
    decoded = load_image(image, max_pixels=predictor.max_pixels)
    mask = predictor.predict_decoded([decoded])[0]
    if background is None:
        kind, bg = "rgba", (255, 255, 255)
    else:
        kind = "composite"
        if isinstance(background, str) and not Path(background).exists():
            bg = parse_color(background)
        elif isinstance(background, tuple) and len(background) == 3:
            bg = tuple(int(c) for c in background)
        else:
            bg = load_image(background, max_pixels=predictor.max_pixels).rgb
    return render_outputs(
        decoded, mask, [kind], threshold=threshold, refine_foreground=refine_foreground, background=bg
    )[kind]
