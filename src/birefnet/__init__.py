"""BiRefNet: bilateral reference for high-resolution dichotomous image segmentation.

Public API::

    import birefnet
    model = birefnet.load_model("path/or/hub-id")        # BiRefNet, eval mode
    out = model(x)                                        # BiRefNetOutput; out.logits (B, 1, H, W)
    predictor = birefnet.Predictor("general")            # images in, masks out
    cutout = birefnet.remove_background("cat.jpg")       # PIL RGBA

Heavy submodules are imported lazily so that ``birefnet --version`` and the CLI start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "BiRefNetConfig": "birefnet.config",
    "BiRefNet": "birefnet.models.birefnet",
    "BiRefNetOutput": "birefnet.models.output",
    "load_model": "birefnet.weights",
    "LoadReport": "birefnet.weights",
    "Predictor": "birefnet.inference",
    "remove_background": "birefnet.inference",
}

__all__ = [
    "BiRefNet",
    "BiRefNetConfig",
    "BiRefNetOutput",
    "LoadReport",
    "Predictor",
    "__version__",
    "load_model",
    "remove_background",
]

if TYPE_CHECKING:  # pragma: no cover
    from birefnet.config import BiRefNetConfig
    from birefnet.inference import Predictor, remove_background
    from birefnet.models.birefnet import BiRefNet
    from birefnet.models.output import BiRefNetOutput
    from birefnet.weights import LoadReport, load_model


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'birefnet' has no attribute {name!r}")
