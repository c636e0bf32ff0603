"""The BiRefNet training loss: weighted pixel terms over the multi-scale outputs, plus auxiliaries.

``BiRefNetLoss()(out, gt) -> (total, parts)`` is the contract of ``docs/PARITY.md``: with no
arguments it is the official DIS5K loss. Also here: the official per-task weights
(:data:`TASK_WEIGHTS`) and the official "fine-tune the last N epochs" re-weighting
(:func:`finetune_weights`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from birefnet.losses import functional as LF
from birefnet.models.output import BiRefNetOutput

__all__ = [
    "FINETUNE_LAST_EPOCHS",
    "OFFICIAL_TERM_NAMES",
    "PIXEL_TERMS",
    "TASK_WEIGHTS",
    "BiRefNetLoss",
    "finetune_weights",
    "task_weights",
]

#: The pixel terms, in the order ``parts`` lists them, and the function computing each (raw value).
PIXEL_TERMS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "bce": LF.bce,
    "iou": LF.iou,
    "ssim": LF.ssim,
    "mae": LF.mae,
    "mse": LF.mse,
    "structure": LF.structure,
    "contour": LF.contour,
    "threshold": LF.threshold_regularization,
    "patch_iou": LF.patch_iou,
}

#: Official ``lambdas_pix_last`` keys that we name differently. "triplet" has no implementation in
#: the official code either; it is accepted with weight 0 only.
OFFICIAL_TERM_NAMES = {"iou_patch": "patch_iou", "reg": "threshold", "cnt": "contour"}

# fmt: off
#: Official ``lambdas_pix_last`` per task (OFFICIAL_SPEC 1.3); terms not listed are 0.
TASK_WEIGHTS: dict[str, dict[str, float]] = {
    "DIS5K":      {"bce": 30.0, "iou": 0.5, "ssim": 10.0},
    "COD":        {"bce": 30.0, "iou": 0.5, "ssim": 10.0},
    "HRSOD":      {"bce": 30.0, "iou": 0.5, "ssim": 10.0},
    "General":    {"bce": 30.0, "iou": 0.5, "ssim": 10.0, "mae": 100.0},
    "General-2K": {"bce": 30.0, "iou": 0.5, "ssim": 10.0, "mae": 100.0},
    "Matting":    {"bce": 30.0, "ssim": 10.0, "mae": 100.0},
}

#: Official ``finetune_last_epochs`` per task (written negative in the official config).
FINETUNE_LAST_EPOCHS: dict[str, int] = {
    "DIS5K": 40, "COD": 20, "HRSOD": 20, "General": 20, "General-2K": 20, "Matting": 10,
}

# Per-epoch multipliers of the official re-weighting (train.py, Trainer.train_epoch).
_FINETUNE_MULTIPLIERS: dict[str, dict[str, float]] = {
    "Matting": {"mae": 1.0, "mse": 0.9, "ssim": 0.9},
    "default": {"bce": 0.0, "ssim": 1.0, "iou": 0.5, "mae": 0.9},
}
# fmt: on

DEFAULT_TASK = "DIS5K"
DEFAULT_CLASSIFICATION_WEIGHT = 5.0  # official lambdas_cls = {"ce": 5.0}


def _canonical_task(task: str) -> str:
    for name in TASK_WEIGHTS:
        if name.lower() == task.lower():
            return name
    raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASK_WEIGHTS)}")


def task_weights(task: str) -> dict[str, float]:
    """The official pixel-loss weights of ``task`` (case-insensitive), every term listed (0 = off).

    Args:
        task: one of "DIS5K", "COD", "HRSOD", "General", "General-2K", "Matting".
    """
    return _normalise_weights(TASK_WEIGHTS[_canonical_task(task)])


def _normalise_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """All pixel terms with float weights; official key names translated; unknown names rejected."""
    result = dict.fromkeys(PIXEL_TERMS, 0.0)
    for name, value in weights.items():
        key = OFFICIAL_TERM_NAMES.get(name, name)
        if key == "triplet":
            if value:
                raise ValueError("the 'triplet' loss is not implemented (the official code has none either)")
            continue
        if key not in result:
            valid = ", ".join([*PIXEL_TERMS, *OFFICIAL_TERM_NAMES])
            raise ValueError(f"unknown loss term {name!r}; valid names: {valid}")
        value = float(value)
        if value < 0 or value != value:
            raise ValueError(f"loss weight {name!r} must be a non-negative number, got {value}")
        result[key] = value
    return result


def finetune_weights(
    task: str,
    epoch: int,
    epochs: int,
    finetune_last_epochs: int | None = None,
    *,
    base_weights: Mapping[str, float] | None = None,
    mode: Literal["once", "official"] = "once",
) -> dict[str, float]:
    """Pixel-loss weights for ``epoch`` under the official "fine-tune the last N epochs" re-weighting.

    The official training loop, at the start of every epoch with ``epoch > epochs +
    finetune_last_epochs`` (epochs count from 1, ``finetune_last_epochs`` is written as -N), multiplies
    the weights **in place**: for Matting ``mae *= 1, mse *= 0.9, ssim *= 0.9``, for every other task
    ``bce *= 0, ssim *= 1, iou *= 0.5, mae *= 0.9``. Two modes:

    * ``"official"``: the multipliers compound, once per fine-tuning epoch: the k-th such epoch
      (k = 1 .. N) uses ``base * multiplier**k`` (DIS5K: BCE off, IoU 0.5 * 0.5**k, so 0.5 ->
      ~4.5e-13 over 40 epochs; Matting: SSIM 10 * 0.9**k). This is what an uninterrupted official
      run does (the official code restarts from the config values after a resume; we do not
      reproduce that, so resumed runs stay identical to uninterrupted ones). The compounding looks
      unintended: earlier official versions set the fine-tuning values once.
    * ``"once"`` (default): the multipliers are applied a single time for all N fine-tuning epochs
      (DIS5K: BCE off, IoU 0.25, SSIM 10; General: also MAE 90; Matting: SSIM 9, MSE 0).

    Args:
        task: official task name; selects the multipliers (Matting vs the rest), the default
            ``base_weights`` and the default ``finetune_last_epochs``.
        epoch: current epoch, 1-based as in the official loop.
        epochs: total number of epochs of the run.
        finetune_last_epochs: N, the number of final epochs re-weighted; the official negative form
            (-N) is accepted too; 0 disables; ``None`` takes the task's official value
            (:data:`FINETUNE_LAST_EPOCHS`).
        base_weights: the weights before fine-tuning (default: the task's official weights).
        mode: "once" or "official", see above.

    Returns:
        Every pixel term's weight for this epoch (a new dict; the input is not modified).
    """
    if mode not in ("once", "official"):
        raise ValueError(f"mode must be 'once' or 'official', got {mode!r}")
    canonical = _canonical_task(task)
    weights = _normalise_weights(TASK_WEIGHTS[canonical] if base_weights is None else base_weights)
    n = abs(FINETUNE_LAST_EPOCHS[canonical] if finetune_last_epochs is None else int(finetune_last_epochs))
    applications = epoch - (epochs - n) if n > 0 else 0
    if applications <= 0:
        return weights
    times = applications if mode == "official" else 1
    multipliers = _FINETUNE_MULTIPLIERS["Matting" if canonical == "Matting" else "default"]
    for name, factor in multipliers.items():
        weights[name] *= factor**times
    return weights


class BiRefNetLoss(nn.Module):
    """Weighted pixel losses over the side outputs and the final logits, plus the auxiliary losses.

    For every level (the side outputs coarse -> fine, then the final logits; equal weights, as
    the official ``PixLoss``) the logits are upsampled bilinearly (align_corners=True) to the
    ground truth's size and each enabled term of :mod:`birefnet.losses.functional` is applied
    against ``gt.clamp(0, 1)``. Added to that:

    * "gradient": the outward-reference loss (:func:`~birefnet.losses.functional.outward_reference`)
      times ``gradient_weight``, when the output has gradient predictions;
    * "classification": cross-entropy times ``classification_weight`` (official 5), when the output
      has class logits and ``class_labels`` are passed.

    Calling it returns ``(total, parts)``: ``parts[name]`` is the weighted value of term ``name``
    summed over levels (only terms with a non-zero weight appear), and ``total`` is the sum of the
    parts. Tensors are computed in float32 under reduced precision (autocast or bf16/fp16 logits),
    in the logits' dtype otherwise.

    Args:
        weights: pixel-term weights, e.g. ``{"bce": 30, "iou": 0.5, "ssim": 10}``; terms not given
            are off. Official key names ("iou_patch", "reg", "cnt") are accepted. A task name
            (see :meth:`preset`) selects that task's weights. ``None``: the official DIS5K weights.
        gradient_weight: weight of the outward-reference loss (official 1).
        classification_weight: weight of the classification cross-entropy (official 5).

    Example:
        >>> criterion = BiRefNetLoss.preset("General")
        >>> total, parts = criterion(model(images), masks)   # parts: bce, iou, ssim, mae, gradient
    """

    def __init__(
        self,
        weights: Mapping[str, float] | str | None = None,
        *,
        gradient_weight: float = 1.0,
        classification_weight: float = DEFAULT_CLASSIFICATION_WEIGHT,
    ) -> None:
        super().__init__()
        if weights is None:
            weights = DEFAULT_TASK
        self.weights = task_weights(weights) if isinstance(weights, str) else weights
        self.gradient_weight = float(gradient_weight)
        self.classification_weight = float(classification_weight)

    @classmethod
    def preset(cls, task: str, **kwargs: float) -> BiRefNetLoss:
        """The loss with the official weights of ``task``.

        Args:
            task: "DIS5K", "COD", "HRSOD", "General", "General-2K" or "Matting" (case-insensitive).
            **kwargs: ``gradient_weight`` / ``classification_weight``.
        """
        return cls(task_weights(task), **kwargs)

    @property
    def weights(self) -> dict[str, float]:
        """Every pixel term's weight (a copy; assign a new mapping to change them, e.g. per epoch)."""
        return dict(self._weights)

    @weights.setter
    def weights(self, value: Mapping[str, float]) -> None:
        self._weights = _normalise_weights(value)

    def extra_repr(self) -> str:
        enabled = {k: v for k, v in self._weights.items() if v}
        return (
            f"weights={enabled}, gradient_weight={self.gradient_weight}, "
            f"classification_weight={self.classification_weight}"
        )

    # ------------------------------------------------------------------------------------------------

    @staticmethod
    def _prepare_gt(gt: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        if gt.dtype == torch.bool:
            gt = gt.float()
        if not torch.is_floating_point(gt):
            raise TypeError(
                f"gt must be a float mask in [0, 1], got dtype {gt.dtype}; convert it, e.g. gt.float() / 255"
            )
        if gt.ndim == 3:
            gt = gt.unsqueeze(1)
        if gt.ndim != 4 or gt.shape[0] != reference.shape[0] or gt.shape[1] != reference.shape[1]:
            raise ValueError(
                f"gt must be (B, {reference.shape[1]}, H, W) (or (B, H, W)) with B = {reference.shape[0]}, "
                f"got {tuple(gt.shape)}"
            )
        return gt.to(LF._compute_dtype(reference)).clamp(0, 1)

    @staticmethod
    def _levels(out: BiRefNetOutput | torch.Tensor) -> list[torch.Tensor]:
        if isinstance(out, torch.Tensor):
            return [out]
        if out.logits is None:
            raise ValueError("the model output has no logits")
        return [*(out.side_logits or []), out.logits]

    def _level_values(
        self, levels: list[torch.Tensor], gt: torch.Tensor, terms: Iterable[str]
    ) -> list[dict[str, torch.Tensor]]:
        terms = list(terms)
        values = []
        for logits in levels:
            logits = logits.to(gt.dtype)
            if logits.shape[-2:] != gt.shape[-2:]:
                logits = F.interpolate(logits, size=gt.shape[-2:], mode="bilinear", align_corners=True)
            values.append({name: PIXEL_TERMS[name](logits, gt) for name in terms})
        return values

    def per_level(
        self,
        out: BiRefNetOutput | torch.Tensor,
        gt: torch.Tensor,
        terms: Iterable[str] | None = None,
    ) -> dict[str, dict[str, torch.Tensor]]:
        """Unweighted value of each term at each level, as the fixtures' ``per_level_raw``.

        Args:
            out: the model output (or bare final logits (B, 1, H, W)).
            gt: (B, 1, H, W) or (B, H, W) mask in [0, 1].
            terms: names of the terms to compute (default: the enabled ones).

        Returns:
            ``{"0": {"bce": ..., ...}, "1": ..., ...}``: keys "0".."n-2" are the side outputs coarse
            -> fine, the last key the final logits.
        """
        levels = self._levels(out)
        gt = self._prepare_gt(gt, levels[-1])
        if terms is None:
            terms = [name for name, weight in self._weights.items() if weight]
        terms = [OFFICIAL_TERM_NAMES.get(name, name) for name in terms]
        unknown = [name for name in terms if name not in PIXEL_TERMS]
        if unknown:
            raise ValueError(f"unknown loss terms {unknown}; valid names: {', '.join(PIXEL_TERMS)}")
        with torch.autocast(device_type=gt.device.type, enabled=False):
            values = self._level_values(levels, gt, terms)
        return {str(i): level for i, level in enumerate(values)}

    def forward(
        self,
        out: BiRefNetOutput | torch.Tensor,
        gt: torch.Tensor,
        class_labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and its named parts.

        Args:
            out: the model output in training mode (or bare final logits (B, 1, H, W)).
            gt: (B, 1, H, W) or (B, H, W) mask in [0, 1] at the input resolution (values outside
                are clamped, as the official loop does).
            class_labels: (B,) integer class indices for the classification head, or None.

        Returns:
            ``(total, parts)``: a 0-dim tensor, and a dict of 0-dim tensors that add up to it
            (pixel terms in :data:`PIXEL_TERMS` order, then "gradient", then "classification").
        """
        levels = self._levels(out)
        gt = self._prepare_gt(gt, levels[-1])
        enabled = [name for name, weight in self._weights.items() if weight]
        parts: dict[str, torch.Tensor] = {}
        with torch.autocast(device_type=gt.device.type, enabled=False):
            for level in self._level_values(levels, gt, enabled):
                for name, value in level.items():
                    weighted = value * self._weights[name]
                    parts[name] = weighted if name not in parts else parts[name] + weighted

            if isinstance(out, BiRefNetOutput):
                if self.gradient_weight and out.gradient_logits:
                    if out.gradient_targets is None:
                        raise ValueError("the output has gradient_logits but no gradient_targets")
                    parts["gradient"] = self.gradient_weight * LF.outward_reference(
                        out.gradient_logits, out.gradient_targets
                    )
                if self.classification_weight and out.class_logits is not None and class_labels is not None:
                    parts["classification"] = self.classification_weight * LF.classification_ce(
                        out.class_logits, class_labels
                    )

        if parts:
            total = torch.stack([value.to(gt.dtype) for value in parts.values()]).sum()
        else:  # every weight is 0: a zero that still belongs to the graph
            total = levels[-1].sum().to(gt.dtype) * 0
        return total, parts
