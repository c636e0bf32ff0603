"""BiRefNet losses: pure functions on logits (:mod:`.functional`) and the weighted training loss.

Example::

    from birefnet.losses import BiRefNetLoss
    criterion = BiRefNetLoss()                     # official DIS5K weights: bce 30, iou 0.5, ssim 10
    total, parts = criterion(model(images), masks) # parts: {"bce", "iou", "ssim", "gradient"}
"""

from __future__ import annotations

from birefnet.losses import functional
from birefnet.losses.birefnet_loss import (
    FINETUNE_LAST_EPOCHS,
    OFFICIAL_TERM_NAMES,
    PIXEL_TERMS,
    TASK_WEIGHTS,
    BiRefNetLoss,
    finetune_weights,
    task_weights,
)

__all__ = [
    "FINETUNE_LAST_EPOCHS",
    "OFFICIAL_TERM_NAMES",
    "PIXEL_TERMS",
    "TASK_WEIGHTS",
    "BiRefNetLoss",
    "finetune_weights",
    "functional",
    "task_weights",
]
