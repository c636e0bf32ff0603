"""Running an exported BiRefNet with ONNX Runtime, in place of the PyTorch network.

:class:`OnnxModel` wraps an ``onnxruntime.InferenceSession`` of a file written by
:func:`birefnet.export.export_onnx` and behaves like the network for the
:class:`~birefnet.inference.Predictor`: it takes the same normalised (B, 3, H, W) tensor and returns
a :class:`~birefnet.models.output.BiRefNetOutput` whose ``logits`` are (B, 1, H, W). So the
Predictor's pre- and post-processing (resize, normalisation, sigmoid, resize back, cut-outs) are
shared by both backends and give the same outputs. It is a ``torch.nn.Module`` without parameters
only so that code written for the network (``.eval()``, ``.to()``) keeps working; no autograd
passes through it.

The file's metadata (see :mod:`birefnet.export`) says how the input is normalised, the registry
name and training size, and whether height and width are fixed; files from other exporters work
too when they follow the same convention (one input, first output = logits, ImageNet
normalisation), e.g. rembg's BiRefNet files.

Providers: ``device="auto"`` uses CUDA (or TensorRT, CoreML, DirectML) when the installed
onnxruntime build has it, else the CPU; the chosen providers are logged.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from birefnet.models.output import BiRefNetOutput

logger = logging.getLogger(__name__)

# Tried in this order for device="auto" (the first available wins; CPU is always last).
_AUTO_PROVIDERS = (
    "CUDAExecutionProvider",
    "ROCMExecutionProvider",
    "CoreMLExecutionProvider",
    "DmlExecutionProvider",
)


def select_providers(device: str | None = "auto") -> list[str]:
    """ONNX Runtime execution providers for a device name ("auto", "cpu", "cuda", "cuda:N", ...).

    Raises:
        ValueError: the requested device has no provider in the installed onnxruntime build
            (e.g. CUDA with the CPU-only ``onnxruntime`` package).
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    name = (device or "auto").lower()
    if name == "cpu":
        return ["CPUExecutionProvider"]
    if name == "auto":
        return [*[p for p in _AUTO_PROVIDERS if p in available][:1], "CPUExecutionProvider"]
    if name.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise ValueError(
                "CUDA was requested but this onnxruntime build has no CUDAExecutionProvider "
                f"(available: {', '.join(available)}); install onnxruntime-gpu, or use --device cpu"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if name == "mps":
        if "CoreMLExecutionProvider" not in available:
            raise ValueError("no CoreMLExecutionProvider in this onnxruntime build; use --device cpu")
        return ["CoreMLExecutionProvider", "CPUExecutionProvider"]
    raise ValueError(f"unknown device {device!r} for ONNX Runtime; use auto, cpu, cuda or cuda:N")


def _provider_options(providers: Sequence[str], device: str | None) -> list[dict[str, Any]]:
    options: list[dict[str, Any]] = []
    for p in providers:
        opts: dict[str, Any] = {}
        if p == "CUDAExecutionProvider" and device and ":" in device:
            opts["device_id"] = int(device.split(":", 1)[1])
        options.append(opts)
    return options


class OnnxModel(torch.nn.Module):
    """An exported BiRefNet run by ONNX Runtime; called like the PyTorch network.

    Example::

        net = OnnxModel("birefnet-lite.onnx")
        logits = net(x).logits               # x: (B, 3, H, W) normalised float32
        predictor = Predictor("birefnet-lite.onnx", backend="onnx")   # the usual route

    Args:
        path: the .onnx file.
        device: "auto", "cpu", "cuda" or "cuda:N" (see :func:`select_providers`).
        threads: intra-op threads of the session (default: ONNX Runtime's choice, all cores).
        providers: explicit provider list (overrides ``device``).

    Attributes:
        metadata: the file's metadata_props.
        name: registry name from the metadata, or the file stem for other weights.
        input_mean, input_std: the normalisation the graph expects its input to have been given
            (ImageNet for files without metadata).
        normalize_in_graph: the graph normalises itself (its input is RGB in [0, 1]);
            :meth:`forward` still takes normalised tensors and undoes it.
        static_size: (H, W) when the graph's height and width are fixed, else None.
        providers: the providers the session actually uses.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        device: str | None = "auto",
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover
            raise ImportError('the ONNX backend needs onnxruntime: pip install "birefnet[onnx]"') from e
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(
                f"{self.path}: no such ONNX file (export one with `birefnet export onnx`)"
            )
        chosen = list(providers) if providers else select_providers(device)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(
                str(self.path),
                sess_options=options,
                providers=chosen,
                provider_options=_provider_options(chosen, device) if not providers else None,
            )
        except Exception as e:
            raise ValueError(
                f"{self.path}: ONNX Runtime cannot load this file ({type(e).__name__}: {e})"
            ) from e
        self.providers = self.session.get_providers()
        meta = self.session.get_modelmeta()
        self.metadata: dict[str, str] = dict(meta.custom_metadata_map or {})
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{self.path}: expected one input (B, 3, H, W), the graph has {len(inputs)}")
        self.input_name = inputs[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.input_dtype = np.float16 if "float16" in inputs[0].type else np.float32
        shape = inputs[0].shape
        self.static_size: tuple[int, int] | None = (
            (int(shape[2]), int(shape[3]))
            if len(shape) == 4 and all(isinstance(s, int) for s in shape[2:])
            else None
        )
        self.static_batch: int | None = int(shape[0]) if shape and isinstance(shape[0], int) else None
        recorded = self.metadata.get("birefnet.name")
        self.name = recorded if recorded and recorded != "custom" else self.path.stem
        self.input_mean = tuple(json.loads(self.metadata.get("birefnet.mean", "[0.485, 0.456, 0.406]")))
        self.input_std = tuple(json.loads(self.metadata.get("birefnet.std", "[0.229, 0.224, 0.225]")))
        self.normalize_in_graph = self.metadata.get("birefnet.input") == "rgb01"
        self.dtype_name = self.metadata.get("birefnet.dtype", "float32")
        self.config = _config_from_metadata(self.metadata)
        self._mean = torch.tensor(self.input_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(self.input_std, dtype=torch.float32).view(1, 3, 1, 1)
        logger.info("ONNX Runtime %s on %s (%s)", self.path.name, ", ".join(self.providers), self.dtype_name)

    # ---- what the Predictor needs ------------------------------------------------------------

    @property
    def registry_spec(self) -> Any:
        """The registry row named in the metadata, or None."""
        from birefnet import registry

        name = self.metadata.get("birefnet.name")
        return registry.get(name, None) if name else None

    @property
    def training_size(self) -> tuple[int, int] | None:
        """(width, height) the weights were trained at, from the metadata."""
        text = self.metadata.get("birefnet.size")
        if not text:
            return None
        w, h = (int(v) for v in text.split("x"))
        return w, h

    @property
    def default_size(self) -> tuple[int, int] | None:
        """(width, height) the Predictor should use by default: the static size, else the training size."""
        if self.static_size is not None:
            return self.static_size[1], self.static_size[0]
        return self.training_size

    def describe(self) -> str:
        return f"onnxruntime {', '.join(p.replace('ExecutionProvider', '') for p in self.providers)}, {self.dtype_name}"

    def to(self, *args: Any, **kwargs: Any) -> OnnxModel:  # the session decides the device
        return self

    def run(self, x: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) graph input (as the graph expects it) -> (B, 1, H, W) float32 logits."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"input must be (B, 3, H, W), got {x.shape}")
        if self.static_size is not None and tuple(x.shape[2:]) != self.static_size:
            h, w = self.static_size
            raise ValueError(
                f"{self.path.name} was exported for {h}x{w} (HxW) inputs, got {x.shape[2]}x{x.shape[3]}; "
                f"use size {w}x{h} with the fixed resolution policy, or export with dynamic shapes"
            )
        if self.static_batch is not None and x.shape[0] != self.static_batch:
            return np.concatenate([self.run(x[i : i + 1]) for i in range(x.shape[0])])
        out = self.session.run(
            [self.output_name], {self.input_name: np.ascontiguousarray(x, dtype=self.input_dtype)}
        )[0]
        return out.astype(np.float32, copy=False)

    def forward(self, x: torch.Tensor) -> BiRefNetOutput:
        """(B, 3, H, W) normalised float tensor -> BiRefNetOutput with (B, 1, H, W) float32 logits."""
        x = x.detach().to("cpu", torch.float32)
        if self.normalize_in_graph:
            x = x * self._std + self._mean
        return BiRefNetOutput(logits=torch.from_numpy(self.run(x.numpy())))


def _config_from_metadata(metadata: dict[str, str]) -> Any:
    """The BiRefNetConfig recorded in the metadata (for display), or None."""
    text = metadata.get("birefnet.config")
    if not text:
        return None
    try:
        from birefnet.config import BiRefNetConfig

        return BiRefNetConfig.from_dict(json.loads(text))
    except Exception:  # a file from a newer version: the config is informative only
        return None


def load_onnx(
    model: Any, weights: str | os.PathLike | None, device: Any = "auto", patch_order: str | None = None
) -> tuple[OnnxModel, Any, str, str | None]:
    """The Predictor's loader for ``backend="onnx"``: (OnnxModel, registry row or None, name, path).

    ``model`` is the .onnx path (or a ready :class:`OnnxModel`), or a registry name when
    ``weights`` is the .onnx path (that row's settings apply, as for checkpoints).
    """
    from birefnet import registry

    if patch_order is not None:
        raise ValueError(
            "the patch order is fixed inside an exported ONNX graph; re-export with "
            "`birefnet export onnx --patch-order ...` instead"
        )
    if isinstance(model, OnnxModel):
        return model, model.registry_spec, model.name, str(model.path)
    spec = None
    if weights is not None:
        if model is not None:
            spec = registry.get(str(model), None)
            if spec is None:
                raise ValueError(
                    f"model={model!r} is not a registry name (see `birefnet models`); with weights= give the "
                    "name of the released model the ONNX file was exported from (or leave model out)"
                )
        path = weights
    elif model is None:
        raise ValueError(
            "backend='onnx' needs the .onnx file: Predictor('model.onnx') or weights='model.onnx'"
        )
    else:
        path = model
    if not str(path).lower().endswith(".onnx"):
        raise ValueError(
            f"{path}: backend 'onnx' needs an .onnx file (export one with `birefnet export onnx`)"
        )
    dev = None if device is None else str(device)
    try:
        net = OnnxModel(path, device=dev)
    except ImportError as e:
        raise ValueError(str(e)) from e
    spec = spec or net.registry_spec
    return net, spec, spec.name if spec is not None else net.name, str(path)
