"""The backbone contract, shared pieces (stochastic depth), and loading of ImageNet weights.

Every backbone is an ``nn.Module`` that maps a normalised image ``(B, 3, H, W)`` to four NCHW
feature maps at strides 4, 8, 16 and 32, shallow to deep, and says its channel counts without a
forward pass. The decoder depends on nothing else, so any backbone can replace any other.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["Backbone", "DropPath", "PretrainedLoadReport", "drop_path", "load_pretrained_backbone"]


class Backbone(nn.Module, ABC):
    """Base class of the encoders: ``forward(x) -> [f4, f8, f16, f32]``.

    Subclasses set ``out_channels`` in ``__init__`` and implement ``forward``.

    Attributes:
        out_channels: channels of the four outputs, shallow -> deep.
        reductions: stride of each output relative to the input, ``(4, 8, 16, 32)``.
    """

    out_channels: tuple[int, int, int, int]
    reductions: tuple[int, int, int, int] = (4, 8, 16, 32)

    @abstractmethod
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encode a batch of images.

        Args:
            x: ``(B, 3, H, W)`` ImageNet-normalised image; H and W multiples of 32.

        Returns:
            Four tensors ``(B, out_channels[i], H / reductions[i], W / reductions[i])``.
        """

    # Keys of the model that ImageNet classification checkpoints never contain (e.g. Swin's
    # per-stage output norms). Missing them after a pretrained load is normal.
    expected_missing_pretrained: tuple[str, ...] = ()

    def remap_pretrained_key(self, key: str) -> str | None:
        """Map a key of an ImageNet release checkpoint to this module's key name.

        Args:
            key: a key of the checkpoint, after prefix stripping.

        Returns:
            The model key, or ``None`` to drop it (e.g. a classifier head).
        """
        return key


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability ``drop_prob``.

    Survivors are scaled by ``1 / (1 - drop_prob)`` so the expectation is unchanged. Identity when
    not training or when ``drop_prob == 0``.

    Args:
        x: ``(B, ...)`` residual branch output.
        drop_prob: probability in [0, 1) of dropping a sample.
        training: apply only in training mode.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = x.new_empty(shape).bernoulli_(keep)
    return x * mask.div_(keep)


class DropPath(nn.Module):
    """Module form of :func:`drop_path` (no parameters, so no state-dict keys)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


@dataclass
class PretrainedLoadReport:
    """What :func:`load_pretrained_backbone` did.

    Attributes:
        loaded: model keys that received a tensor from the file.
        missing: model keys not in the file (kept at their initialisation).
        expected_missing: the subset of ``missing`` that ImageNet files never contain.
        unexpected: file keys with no counterpart in the model (classifier heads, cached masks...).
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    expected_missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def unexpected_missing(self) -> list[str]:
        """Missing keys that an ImageNet file should have had."""
        expected = set(self.expected_missing)
        return [k for k in self.missing if k not in expected]


_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _unwrap_checkpoint(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The tensor dict inside a release file: plain, under "model"/"state_dict", or a lone sub-dict."""
    if not isinstance(obj, dict):
        raise TypeError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    for name in ("model", "state_dict"):
        if isinstance(obj.get(name), dict):
            obj = obj[name]
            break
    else:
        sub_dicts = [v for v in obj.values() if isinstance(v, dict)]
        if not any(isinstance(v, torch.Tensor) for v in obj.values()) and len(sub_dicts) == 1:
            obj = sub_dicts[0]
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{path}: no tensors found (top-level keys: {sorted(obj)[:10]})")
    return tensors


def _strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ``module.`` / ``_orig_mod.`` wrappers; keep only ``bb.*`` of a whole-BiRefNet file."""
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    if any(k.startswith("bb.") for k in sd):
        sd = {k[3:]: v for k, v in sd.items() if k.startswith("bb.")}
    return sd


def load_pretrained_backbone(bb: Backbone, path: str | Path) -> PretrainedLoadReport:
    """Initialise a backbone from an ImageNet release checkpoint (or a BiRefNet file's ``bb.*``).

    Accepts the original formats: Swin ``.pth`` with a top-level ``"model"`` dict, PVTv2 ``.pth``
    plain dicts, torchvision VGG/ResNet ``.pth`` files (keys renamed by the backbone's
    :meth:`Backbone.remap_pretrained_key`), and ``.safetensors``. Keys the model does not have
    (classifier heads, cached attention masks) are skipped; keys the file does not have keep their
    initialisation and are reported. Half-precision files are cast to the model's dtype.

    Unlike the official loader, a shape mismatch is an error: silently keeping random weights for
    a layer would train or evaluate a different network than the user asked for.

    Args:
        bb: the backbone to fill in place.
        path: the checkpoint file.

    Returns:
        A :class:`PretrainedLoadReport` (also logged: INFO summary, WARNING for unexpected gaps).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a tensor's shape differs from the model's, or nothing matched at all.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        raw: object = load_file(str(path))
    else:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    sd = _strip_prefixes(_unwrap_checkpoint(raw, path))

    own = bb.state_dict()
    report = PretrainedLoadReport()
    to_load: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        target = key if key in own else bb.remap_pretrained_key(key)
        if target is None or target not in own:
            report.unexpected.append(key)
            continue
        if tuple(tensor.shape) != tuple(own[target].shape):
            raise ValueError(
                f"{path}: shape mismatch for {key!r} -> {target!r}: file {tuple(tensor.shape)}, "
                f"model {tuple(own[target].shape)}. The file is for a different backbone variant "
                f"(e.g. another window size or width); pick the checkpoint matching "
                f"{type(bb).__name__} with out_channels={bb.out_channels}."
            )
        to_load[target] = tensor.to(dtype=own[target].dtype)
        report.loaded.append(target)
    if not to_load:
        raise ValueError(
            f"{path}: no key matches the backbone {type(bb).__name__} (file keys start with "
            f"{sorted(sd)[:3]}); is this the right file?"
        )
    report.missing = [k for k in own if k not in to_load]
    expected = tuple(bb.expected_missing_pretrained)
    report.expected_missing = [k for k in report.missing if k.startswith(expected)] if expected else []
    bb.load_state_dict(to_load, strict=False)

    logger.info(
        "loaded %d tensors from %s (%d missing, %d of them expected; %d unused file keys)",
        len(report.loaded),
        path,
        len(report.missing),
        len(report.expected_missing),
        len(report.unexpected),
    )
    if report.unexpected_missing:
        logger.warning(
            "%s: %d backbone tensors were not in the file and keep their initialisation: %s",
            path,
            len(report.unexpected_missing),
            report.unexpected_missing[:20],
        )
    if report.unexpected:
        logger.info("%s: unused keys: %s", path, report.unexpected[:20])
    return report


def init_transformer_weights(m: nn.Module) -> None:
    """Random init of the original transformer backbones (use with ``module.apply``): truncated normal
    0.02 for linear weights, zero biases, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
