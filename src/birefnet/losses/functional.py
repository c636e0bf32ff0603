"""Pure loss functions of BiRefNet, on logits.

Every function here takes *logits* (before the sigmoid) and targets in ``[0, 1]`` and reproduces the
value of the matching criterion of the official ``loss.py`` applied to ``sigmoid(logits)``; where the
official code has a quirk (IoU summed over the batch, BCE on probabilities, a float32 SSIM window,
a patch IoU that only looks at one patch), the docstring says what we reproduce and what we do not.

Conventions shared by all functions:

* ``logits``: (B, C, H, W) real-valued, any float dtype. float16 / bfloat16 inputs are computed in
  float32 (and autocast is switched off inside), so the functions are safe under
  ``torch.autocast`` and return float32 there; float32 / float64 inputs keep their dtype.
* ``target``: same shape as ``logits``, values in ``[0, 1]`` (soft labels allowed: the official
  loader resizes masks with INTER_LINEAR, so edges are soft). The functions do not clamp; the
  :class:`~birefnet.losses.BiRefNetLoss` wrapper does, as the official training loop does.
* The result is a 0-dim tensor unless ``reduction="none"`` is available and chosen.

Gradients flow into both ``logits`` and ``target`` (the outward-reference loss needs the latter).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "bce",
    "classification_ce",
    "contour",
    "gaussian_window",
    "iou",
    "mae",
    "mse",
    "outward_reference",
    "patch_iou",
    "ssim",
    "structure",
    "threshold_regularization",
]

Reduction = Literal["mean", "sum", "none"]

# nn.BCELoss clamps each log-probability at -100 so that a saturated probability gives a finite loss.
_BCE_LOG_CLAMP = 100.0


# ----------------------------------------------------------------------------------------------------
# helpers


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64, float32 stays float32, every lower precision is computed in float32."""
    if x.dtype in (torch.float64, torch.float32):
        return x.dtype
    return torch.float32


def _prepare(logits: torch.Tensor, target: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a (logits, target) pair and cast both to the computation dtype."""
    if not torch.is_floating_point(logits):
        raise TypeError(f"{name}: logits must be a floating-point tensor, got {logits.dtype}")
    if logits.shape != target.shape:
        raise ValueError(
            f"{name}: logits {tuple(logits.shape)} and target {tuple(target.shape)} must have the same shape; "
            "upsample the logits to the target size first (BiRefNetLoss does this for side outputs)"
        )
    if logits.ndim != 4:
        raise ValueError(f"{name}: expected (B, C, H, W) tensors, got {logits.ndim} dimensions")
    dtype = _compute_dtype(logits)
    return logits.to(dtype), target.to(dtype)


def _no_autocast(x: torch.Tensor) -> torch.autocast:
    """A context that switches autocast off on ``x``'s device (convolutions would run in bf16 otherwise)."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def _reduce(values: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _one_minus_ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``1 - numerator / denominator``, defined as 0 where the denominator is exactly 0.

    A zero denominator only happens for IoU when prediction and target are both exactly empty, which is
    a perfect match; the official code returns NaN there. The ``where`` keeps the gradient finite.
    """
    nonzero = denominator != 0
    safe = torch.where(nonzero, denominator, torch.ones_like(denominator))
    return torch.where(nonzero, 1 - numerator / safe, torch.zeros_like(denominator))


# ----------------------------------------------------------------------------------------------------
# per-pixel terms


def bce(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    reduction: Reduction = "mean",
    clamp_log: bool = False,
) -> torch.Tensor:
    """Binary cross-entropy between ``sigmoid(logits)`` and ``target``.

    Official: ``nn.BCELoss()(sigmoid(pred), gt)``, the mean over every pixel. We compute it from
    logits (``log sigmoid(x) = -softplus(-x)``), which gives the same value wherever the official
    sigmoid does not saturate (float64: |x| < ~36; float32: |x| < ~16), stays exact beyond, keeps
    a gradient there (the official one vanishes once the sigmoid rounds to 0 or 1), and is
    autocast-safe (``BCELoss`` is not).

    ``nn.BCELoss`` clamps each log-probability at -100, so one saturated pixel costs at most 100.
    ``clamp_log=True`` applies the same clamp to the exact log-probabilities: it then equals the
    official float64 value for any logits (the float32 official value differs further because its
    sigmoid saturates early, e.g. x = 20, target 0 gives 100 there, 20 here). The default is off:
    the clamp only changes the loss where a pixel is confidently wrong by more than 100 nats, and
    there it removes the gradient that would correct it.

    Args:
        logits: (B, C, H, W) logits.
        target: (B, C, H, W) in [0, 1].
        reduction: "mean" (official), "sum" or "none" (per-pixel map).
        clamp_log: clamp each log-probability at -100 as ``nn.BCELoss`` does.

    Returns:
        The loss, >= 0 (exactly 0 only for a saturated correct prediction of a binary target).
    """
    logits, target = _prepare(logits, target, "bce")
    if not clamp_log:
        return F.binary_cross_entropy_with_logits(logits, target, reduction=reduction)
    neg_log_p = F.softplus(-logits).clamp(max=_BCE_LOG_CLAMP)  # -log sigmoid(x)
    neg_log_not_p = F.softplus(logits).clamp(max=_BCE_LOG_CLAMP)  # -log(1 - sigmoid(x))
    return _reduce(target * neg_log_p + (1 - target) * neg_log_not_p, reduction)


def mae(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error ``mean(|sigmoid(logits) - target|)`` (official ``nn.L1Loss``), in [0, 1].

    Args:
        logits: (B, C, H, W) logits.
        target: (B, C, H, W) in [0, 1].
    """
    logits, target = _prepare(logits, target, "mae")
    return (torch.sigmoid(logits) - target).abs().mean()


def mse(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error ``mean((sigmoid(logits) - target)^2)`` (official ``nn.MSELoss``), in [0, 1].

    Args:
        logits: (B, C, H, W) logits.
        target: (B, C, H, W) in [0, 1].
    """
    logits, target = _prepare(logits, target, "mse")
    return (torch.sigmoid(logits) - target).square().mean()


def threshold_regularization(logits: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Pushes probabilities towards 0 or 1: ``mean(1 - (p^2 + (p - 1)^2)) = mean(2 p (1 - p))``.

    Official ``ThrReg_loss`` (weight "reg", 0 in every official task). Range [0, 0.5]; the target is
    not used (accepted so every term has the same signature).

    Args:
        logits: (B, C, H, W) logits.
        target: ignored.
    """
    if target is None:
        target = logits
    logits, _ = _prepare(logits, target, "threshold_regularization")
    p = torch.sigmoid(logits)
    return (2 * p * (1 - p)).mean()


# ----------------------------------------------------------------------------------------------------
# region terms


def iou(logits: torch.Tensor, target: torch.Tensor, *, reduction: Reduction = "sum") -> torch.Tensor:
    """Soft IoU loss ``1 - sum(p g) / (sum(g) + sum(p) - sum(p g))`` per sample, ``p = sigmoid(logits)``.

    Official ``IoULoss``: the sums run over (C, H, W) of each sample, there is no smoothing epsilon,
    and the per-sample losses are **summed** over the batch (not averaged), so with the default
    ``reduction="sum"`` the value lies in [0, B] and the term's effective weight grows with the
    per-device batch size. We reproduce that for parity; ``reduction="mean"`` gives the average.
    Where prediction and target are both exactly empty (0/0, NaN in the official code) the sample's
    loss is 0.

    Args:
        logits: (B, C, H, W) logits.
        target: (B, C, H, W) in [0, 1].
        reduction: "sum" (official), "mean" or "none" (per-sample, shape (B,)).
    """
    logits, target = _prepare(logits, target, "iou")
    p = torch.sigmoid(logits)
    dims = (1, 2, 3)
    intersection = (p * target).sum(dims)
    union = target.sum(dims) + p.sum(dims) - intersection
    return _reduce(_one_minus_ratio(intersection, union), reduction)


def patch_iou(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    window: int = 64,
    smooth: float = 1.0,
    reduction: Reduction = "sum",
) -> torch.Tensor:
    """IoU loss on non-overlapping ``window x window`` tiles, averaged over the tiles of each sample.

    The official ``PatchIoULoss`` (weight "iou_patch", 0 in every official task) means to do this but
    iterates ``range(0, target.shape[0], 64)`` / ``range(0, target.shape[1], 64)``, i.e. over the
    batch and channel sizes, so it only ever scores the top-left 64x64 tile. We tile the whole map:
    the last row/column of tiles may be smaller (as the official slicing would make them). A tile
    without foreground in either map is common, and plain IoU is constant (1) there with no
    gradient; ``smooth`` (in pixels) makes every tile informative:
    ``1 - (inter + smooth) / (union + smooth)`` (0 for a perfect tile, rising with false positives).
    ``smooth=0`` gives the plain per-tile IoU of :func:`iou` (both-empty tiles count 0). Tiles are
    averaged so the scale does not depend on the image size; samples are reduced like :func:`iou`
    (summed by default, as the official ``PatchIoULoss`` summed ``IoULoss`` values).

    Args:
        logits: (B, C, H, W) logits.
        target: (B, C, H, W) in [0, 1].
        window: tile side in pixels.
        smooth: additive smoothing of numerator and denominator, >= 0.
        reduction: "sum" (like the official IoU), "mean" or "none" (per sample, shape (B,)).

    Returns:
        The loss, in [0, B] for "sum", in [0, 1] per sample.
    """
    logits, target = _prepare(logits, target, "patch_iou")
    if window < 1:
        raise ValueError(f"patch_iou: window must be >= 1, got {window}")
    if smooth < 0:
        raise ValueError(f"patch_iou: smooth must be >= 0, got {smooth}")
    p = torch.sigmoid(logits)
    b, c, h, w = p.shape
    rows, cols = math.ceil(h / window), math.ceil(w / window)
    # Zero padding adds nothing to any sum, so padded tiles equal the official partial slices.
    pad = (0, cols * window - w, 0, rows * window - h)
    p = F.pad(p, pad)
    g = F.pad(target, pad)

    def tile_sums(x: torch.Tensor) -> torch.Tensor:  # (B, C, rows*win, cols*win) -> (B, rows, cols)
        return x.reshape(b, c, rows, window, cols, window).sum(dim=(1, 3, 5))

    intersection = tile_sums(p * g)
    union = tile_sums(p) + tile_sums(g) - intersection
    per_tile = _one_minus_ratio(intersection + smooth, union + smooth)
    return _reduce(per_tile.mean(dim=(1, 2)), reduction)


def _gaussian_taps(size: int, sigma: float) -> torch.Tensor:
    """The normalised 1-D Gaussian of the official SSIM, in float32 as the official code builds it."""
    centre = size // 2
    taps = torch.tensor(
        [math.exp(-((i - centre) ** 2) / (2 * sigma**2)) for i in range(size)], dtype=torch.float32
    )
    return taps / taps.sum()


def gaussian_window(
    size: int = 11, sigma: float = 1.5, *, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The (size, size) normalised Gaussian window of the official SSIM, built in float32.

    The official code normalises the 1-D Gaussian and takes the outer product in float32, then casts
    the window to the input's dtype. We build it the same way: in float64 SSIM (the parity fixtures)
    the float32 rounding of the weights moves the loss by ~3e-6 relative, which is inside the
    tolerance but would hide real differences.

    Args:
        size: odd window side.
        sigma: standard deviation in pixels.
        dtype: dtype of the returned window.
    """
    taps = _gaussian_taps(size, sigma)
    return torch.outer(taps, taps).to(dtype)


def _gaussian_blur(maps: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Per-channel Gaussian filtering with zero padding (``F.conv2d(..., groups=C)``), same size out.

    float64 uses the official float32-rounded 2-D window, so parity checks see the official value to
    the last digit. Lower precisions filter separably (rows then columns, zero padding in each
    direction is the same as 2-D zero padding): ~6x less work, and the window differs from the
    official one only by the float32 rounding of the outer product, below float32 noise.
    """
    batch, channels, height, width = maps.shape
    pad = size // 2
    # Every map is filtered alone, so the batch folds into the channels: (1, B*C, H, W). With C = 1 the
    # convolution would otherwise be a dense single-channel one, for which the CPU backend has no good
    # kernel (forward + backward of (40, 1, 128, 128): 360 ms, against 23 ms as a depthwise one on one
    # thread); the values are the same.
    maps = maps.reshape(1, batch * channels, height, width)
    groups = batch * channels
    if maps.dtype == torch.float64:
        window = gaussian_window(size, sigma, dtype=maps.dtype).to(maps.device)
        out = F.conv2d(maps, window.expand(groups, 1, size, size), padding=pad, groups=groups)
        return out.view(batch, channels, height, width)
    taps = _gaussian_taps(size, sigma).to(device=maps.device, dtype=maps.dtype)
    maps = F.conv2d(
        maps, taps.view(1, 1, size, 1).expand(groups, 1, size, 1), padding=(pad, 0), groups=groups
    )
    maps = F.conv2d(
        maps, taps.view(1, 1, 1, size).expand(groups, 1, 1, size), padding=(0, pad), groups=groups
    )
    return maps.view(batch, channels, height, width)


def ssim(
    logits: torch.Tensor, target: torch.Tensor, *, window_size: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """SSIM loss ``(1 - mean(SSIM map)) / 2`` between ``sigmoid(logits)`` and ``target``.

    Official ``SSIMLoss`` (current code; the 2023 version returned ``1 - SSIM``): local statistics
    with a Gaussian window (11, sigma 1.5, see :func:`gaussian_window`), zero padding of
    ``window_size // 2`` (so border statistics see zeros), one window per channel
    (``groups=C``), C1 = 0.01^2, C2 = 0.03^2, the SSIM map averaged over every element.
    Computed in float32 or float64 with autocast off (the variance terms are differences of
    similar numbers and lose everything in bf16).

    Args:
        logits: (B, C, H, W) logits.
        target: (B, C, H, W) in [0, 1].
        window_size: odd window side.
        sigma: Gaussian standard deviation.

    Returns:
        The loss, in [0, 1] (0 for identical maps).
    """
    logits, target = _prepare(logits, target, "ssim")
    c1, c2 = 0.01**2, 0.03**2
    with _no_autocast(logits):
        p = torch.sigmoid(logits)
        # the five local means in one filtering pass
        stacked = torch.cat([p, target, p * p, target * target, p * target], dim=0)
        mu_p, mu_g, mean_pp, mean_gg, mean_pg = _gaussian_blur(stacked, window_size, sigma).chunk(5, dim=0)
        var_p = mean_pp - mu_p * mu_p
        var_g = mean_gg - mu_g * mu_g
        cov = mean_pg - mu_p * mu_g
        ssim_map = ((2 * mu_p * mu_g + c1) * (2 * cov + c2)) / (
            (mu_p * mu_p + mu_g * mu_g + c1) * (var_p + var_g + c2)
        )
        return (1 - ssim_map.mean()) / 2


def structure(logits: torch.Tensor, target: torch.Tensor, *, kernel_size: int = 31) -> torch.Tensor:
    """Boundary-weighted BCE + weighted IoU (the "structure loss" of F3Net / MVANet).

    Pixel weights ``1 + 5 |avgpool_31(g) - g|`` (zero padding counted in the average, as
    ``F.avg_pool2d``'s default) emphasise pixels near edges. Per sample and channel:
    ``wbce = sum(w * bce_with_logits) / sum(w)`` and
    ``wiou = 1 - (sum(w p g) + 1) / (sum(w (p + g)) - sum(w p g) + 1)``; the result is the mean of
    ``wbce + wiou``.

    The official ``StructureLoss`` is written for logits, but ``PixLoss`` hands it probabilities
    (outside fp16 mode), so the official term sees ``sigmoid(sigmoid(x))`` (a prediction squeezed
    into [0.5, 0.73]). It is off (weight 0) in every official task. We apply the sigmoid once, as
    the loss was designed; this does not reproduce the official double-sigmoid value.

    Args:
        logits: (B, C, H, W) logits.
        target: (B, C, H, W) in [0, 1].
        kernel_size: odd side of the averaging window for the edge weights.
    """
    logits, target = _prepare(logits, target, "structure")
    with _no_autocast(logits):
        local = F.avg_pool2d(target, kernel_size=kernel_size, stride=1, padding=kernel_size // 2)
    weight = 1 + 5 * (local - target).abs()
    dims = (2, 3)
    pixel_bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    weighted_bce = (weight * pixel_bce).sum(dims) / weight.sum(dims)
    p = torch.sigmoid(logits)
    intersection = (weight * p * target).sum(dims)
    union = (weight * (p + target)).sum(dims)
    weighted_iou = 1 - (intersection + 1) / (union - intersection + 1)
    return (weighted_bce + weighted_iou).mean()


def contour(logits: torch.Tensor, target: torch.Tensor, *, length_weight: float = 10.0) -> torch.Tensor:
    """Active-contour loss (length + region terms) on ``p = sigmoid(logits)``.

    Official ``ContourLoss`` (weight "cnt", 0 in every official task), reproduced as is:

    * length: ``mean(sqrt(dr^2 + dc^2 + 1e-8))`` over an (H-2, W-2) grid, where at grid position
      (i, j) ``dr = p[i+2, j] - p[i+1, j]`` and ``dc = p[i, j+2] - p[i, j+1]`` (the official index
      offsets, kept although the two differences belong to neighbouring pixels, not the same one);
    * region: ``mean(p (g - 1)^2) + mean((1 - p) g^2)`` (foreground predicted on background, and
      the converse);
    * loss = ``length_weight * length + region``. Not 0 for a perfect prediction: the length term
      is the (smoothed) perimeter of the mask, at least ``length_weight * 1e-4``.

    Args:
        logits: (B, C, H, W) logits, H and W >= 3.
        target: (B, C, H, W) in [0, 1].
        length_weight: weight of the length term (official 10).
    """
    logits, target = _prepare(logits, target, "contour")
    if logits.shape[-2] < 3 or logits.shape[-1] < 3:
        raise ValueError(f"contour: needs H, W >= 3, got {tuple(logits.shape[-2:])}")
    p = torch.sigmoid(logits)
    d_rows = p[..., 1:, :] - p[..., :-1, :]  # (H-1, W)
    d_cols = p[..., :, 1:] - p[..., :, :-1]  # (H, W-1)
    squared = d_rows[..., 1:, :-2].square() + d_cols[..., :-2, 1:].square()  # (H-2, W-2)
    length = torch.sqrt(squared + 1e-8).mean()
    region = (p * (target - 1).square()).mean() + ((1 - p) * target.square()).mean()
    return length_weight * length + region


# ----------------------------------------------------------------------------------------------------
# auxiliary terms


def classification_ce(class_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the auxiliary classification head (official ``ClsLoss`` before its x5 weight).

    Args:
        class_logits: (B, num_classes) logits.
        labels: (B,) integer class indices in [0, num_classes); -100 marks "no label" and is ignored.

    Returns:
        Mean cross-entropy over the labelled samples (NaN if none is labelled, as ``F.cross_entropy``).
    """
    if class_logits.ndim != 2:
        raise ValueError(
            f"classification_ce: class_logits must be (B, num_classes), got {tuple(class_logits.shape)}"
        )
    if labels.shape != class_logits.shape[:1]:
        raise ValueError(
            f"classification_ce: labels must be (B,) = ({class_logits.shape[0]},), got {tuple(labels.shape)}"
        )
    if torch.is_floating_point(labels):
        raise TypeError("classification_ce: labels must be integer class indices, e.g. labels.long()")
    return F.cross_entropy(class_logits.to(_compute_dtype(class_logits)), labels.long())


def outward_reference(
    gradient_logits: Sequence[torch.Tensor], gradient_targets: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Outward-reference (gradient) loss, summed over stages, before its weight.

    Official (``train.py``): for each stage ``BCELoss(sigmoid(up(pred)), sigmoid(label))``, where
    ``up`` resizes the prediction bilinearly (align_corners=True) to the label's size, summed over
    the stages. We take both as logits (:func:`F.binary_cross_entropy_with_logits` with the soft
    target ``sigmoid(label)``); same value, stable. The label is the Laplacian of the input times
    the upsampled side logits and is *not* detached, so the loss also back-propagates into the
    side outputs through the target, as in the official code.

    Args:
        gradient_logits: per stage (B, 1, h, w) predicted gradient logits (coarse resolution).
        gradient_targets: per stage (B, 1, H, W) gradient labels (real-valued, pre-sigmoid).

    Returns:
        Sum over stages of the mean BCE (each stage >= its target's entropy, not 0).
    """
    if len(gradient_logits) != len(gradient_targets):
        raise ValueError(
            f"outward_reference: {len(gradient_logits)} gradient predictions but {len(gradient_targets)} targets"
        )
    if len(gradient_logits) == 0:
        raise ValueError("outward_reference: no stages given")
    total = None
    for stage, (pred, label) in enumerate(zip(gradient_logits, gradient_targets)):
        dtype = _compute_dtype(pred)
        pred, label = pred.to(dtype), label.to(dtype)
        if pred.ndim != 4 or label.ndim != 4 or pred.shape[:2] != label.shape[:2]:
            raise ValueError(
                f"outward_reference: stage {stage} prediction {tuple(pred.shape)} and target {tuple(label.shape)} "
                "must be (B, C, h, w) and (B, C, H, W)"
            )
        if pred.shape[-2:] != label.shape[-2:]:
            with _no_autocast(pred):
                pred = F.interpolate(pred, size=label.shape[-2:], mode="bilinear", align_corners=True)
        value = F.binary_cross_entropy_with_logits(pred, torch.sigmoid(label))
        total = value if total is None else total + value
    return total
