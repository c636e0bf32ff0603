"""Encoders of BiRefNet: Swin v1, PVTv2, VGG16(-BN) and ResNet-50, with the official key names.

Every backbone maps a normalised ``(B, 3, H, W)`` image (H, W multiples of 32) to four NCHW feature
maps at strides 4, 8, 16, 32 and exposes ``out_channels`` / ``reductions`` without a forward pass::

    from birefnet.models.backbones import build_backbone
    bb = build_backbone("swin_v1_t")      # official drop-path default (Swin 0.2, PVT 0.1)
    bb.out_channels                       # (96, 192, 384, 768)
    feats = bb(x)                         # [(B, 96, H/4, W/4), ..., (B, 768, H/32, W/32)]

``bb.state_dict()`` keys equal the official ``bb.*`` keys without the ``bb.`` prefix.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from birefnet.models.backbones.base import Backbone, PretrainedLoadReport, load_pretrained_backbone
from birefnet.models.backbones.cnn import resnet50, vgg16, vgg16bn
from birefnet.models.backbones.pvt_v2 import PVT_V2_CONFIGS, pvt_v2
from birefnet.models.backbones.swin import SWIN_CONFIGS, swin_v1

__all__ = [
    "BACKBONE_NAMES",
    "Backbone",
    "PretrainedLoadReport",
    "build_backbone",
    "load_pretrained_backbone",
]

logger = logging.getLogger(__name__)


def _cnn(builder: Callable[[], Backbone], name: str) -> Callable[[float | None], Backbone]:
    def build(drop_path_rate: float | None) -> Backbone:
        if drop_path_rate:
            logger.warning("%s has no stochastic depth; drop_path_rate=%s is ignored", name, drop_path_rate)
        return builder()

    return build


_BUILDERS: dict[str, Callable[[float | None], Backbone]] = {
    **{name: (lambda rate, name=name: swin_v1(name, rate)) for name in SWIN_CONFIGS},
    **{name: (lambda rate, name=name: pvt_v2(name, rate)) for name in PVT_V2_CONFIGS},
    "vgg16": _cnn(vgg16, "vgg16"),
    "vgg16bn": _cnn(vgg16bn, "vgg16bn"),
    "resnet50": _cnn(resnet50, "resnet50"),
}

#: Names accepted by :func:`build_backbone` (the official ``Config.bb`` names).
BACKBONE_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def build_backbone(name: str, drop_path_rate: float | None = None) -> Backbone:
    """Build a randomly initialised backbone by its official name.

    Args:
        name: one of :data:`BACKBONE_NAMES`.
        drop_path_rate: stochastic depth of the deepest block (rates grow linearly from 0; active
            in training only). None = the backbone's official default (Swin 0.2, PVTv2 0.1);
            CNN backbones have none.

    Returns:
        The backbone (training mode, like any new module).

    Raises:
        ValueError: unknown name.
    """
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONE_NAMES)}") from None
    return builder(drop_path_rate)
