"""The one output type of :class:`~birefnet.models.birefnet.BiRefNet`, in train and eval."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BiRefNetOutput:
    """What a BiRefNet forward returns. Fields not computed in the current mode are ``None``.

    Attributes:
        logits: (B, 1, H, W) final logits at the input size; ``sigmoid`` gives the mask in [0, 1].
        side_logits: multi-scale supervision outputs, coarse -> fine: decoder stages 4, 3, 2 at
            strides 32, 16, 8 of the input, each (B, 1, h, w). Training with
            ``multi_scale_supervision`` only.
        gradient_logits: outward-reference gradient predictions, stages 4, 3, 2, at the stage's
            own resolution (B, 1, h, w). Training with ``outward_reference`` only.
        gradient_targets: outward-reference labels, stages 4, 3, 2, each (B, 1, H, W): the
            Laplacian of the channel-mean of the normalised input times the upsampled side logits
            (not detached, as in the official code). Training with ``outward_reference`` only.
        class_logits: (B, num_classes) auxiliary classification logits, training with
            ``auxiliary_classification`` only.
    """

    logits: torch.Tensor
    side_logits: list[torch.Tensor] | None = None
    gradient_logits: list[torch.Tensor] | None = None
    gradient_targets: list[torch.Tensor] | None = None
    class_logits: torch.Tensor | None = None
