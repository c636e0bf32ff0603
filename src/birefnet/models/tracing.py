"""Whether the model is being captured (export, compile, TorchScript tracing) instead of run eagerly."""

from __future__ import annotations

import torch

__all__ = ["is_tracing"]


def is_tracing() -> bool:
    """True while ``torch.export`` (the ONNX exporter's capture), ``torch.compile`` or the TorchScript
    tracer runs the model.

    Under these the model takes its traceable paths: the Swin stages keep batch, height and width
    symbolic (:meth:`birefnet.models.backbones.swin.SwinBlock.forward_traceable`), and the eager-only
    fast paths that cannot be captured step aside (per-size caches, loops over symbolic sizes, oneDNN's
    fused kernels, which Inductor cannot lower). Eager calls take the fast paths. (Under
    ``torch.compile`` the cached path's per-size layouts broke the graph and recompiled each block per
    stage and size, past Dynamo's recompile limit.)
    """
    return (
        torch.compiler.is_exporting()
        or torch.compiler.is_compiling()
        or torch.onnx.is_in_onnx_export()
        or torch.jit.is_tracing()
    )
