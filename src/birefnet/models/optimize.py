"""Opt-in inference optimisations that trade exactness for speed.

The default forward is exact (PARITY.md tolerances, ~1e-6 relative). These options change the
numbers: by float rounding (``channels_last``, ``compile``) or by quantisation (``int8``). Each is
measured, speed and output difference against fp32 on the shared fixtures' inputs, by
``benchmarks/options.py`` (results in docs/performance.md). Reduced precision (bf16/fp16) is the
Predictor's ``precision`` option (autocast), not listed here.

- ``channels_last``: convolution weights and the input in NHWC memory format, so oneDNN does not
  reorder NCHW tensors around every convolution.
- ``compile``: ``torch.compile`` (Inductor). The first forward of each input shape compiles (minutes
  on a 2-core CPU; Inductor caches compiled graphs on disk, so later processes start faster).
  Needs a C++ compiler on CPU.
- ``int8``: dynamic int8 quantisation of every ``nn.Linear`` (weights int8, activations quantised
  per batch; CPU only): the Swin/PVT backbones' linear layers, which hold most of their FLOPs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["OPTIMIZATIONS", "optimize_for_inference", "parse_optimizations"]

logger = logging.getLogger(__name__)

OPTIMIZATIONS = ("channels_last", "compile", "int8")


def parse_optimizations(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"channels-last,int8"`` or an iterable of names -> validated, de-duplicated names in order.

    ``-`` and ``_`` are interchangeable; ``""``/``None``/``"none"`` mean no optimisation.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        name = item.strip().lower().replace("-", "_")
        if name in ("", "none"):
            continue
        if name not in OPTIMIZATIONS:
            raise ValueError(
                f"unknown optimisation {item!r}; use a comma-separated subset of "
                f"{', '.join(o.replace('_', '-') for o in OPTIMIZATIONS)}"
            )
        if name not in out:
            out.append(name)
    return tuple(out)


class _ChannelsLastInput(nn.Module):
    """Calls ``model`` with its input in channels-last memory format (same values)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return self.model(x.contiguous(memory_format=torch.channels_last))


class _TimedFirstCall(nn.Module):
    """Logs how long each new input shape's first call takes (``torch.compile`` compiles then)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._seen: set[tuple[int, ...]] = set()
        self.compile_seconds: dict[tuple[int, ...], float] = {}

    def forward(self, x: torch.Tensor):
        shape = tuple(x.shape)
        if shape in self._seen:
            return self.model(x)
        t0 = time.perf_counter()
        out = self.model(x)
        self._seen.add(shape)
        self.compile_seconds[shape] = time.perf_counter() - t0
        logger.info("torch.compile: first forward at %s took %.1f s", shape, self.compile_seconds[shape])
        return out


def optimize_for_inference(
    model: nn.Module, options: str | Iterable[str] | None, device: torch.device | str = "cpu"
) -> nn.Module:
    """Apply the named options to an eval-mode ``model``; returns the model to call (maybe a wrapper).

    The wrapper forwards ``model``'s attributes that the Predictor reads (``config``,
    ``default_size``...) only through the returned module's ``.model`` chain, so keep the original
    for those. ``int8`` modifies ``model`` in place (its Linear layers are replaced).

    Args:
        model: a BiRefNet (or any module taking (B, 3, H, W)), in eval mode, on ``device``.
        options: names from :data:`OPTIMIZATIONS` (see :func:`parse_optimizations`).
        device: where the model runs; ``int8`` needs the CPU.

    Raises:
        ValueError: unknown names, or ``int8`` on a non-CPU device.
    """
    names = parse_optimizations(options)
    device = torch.device(device)
    if "int8" in names:
        if device.type != "cpu":
            raise ValueError("int8 dynamic quantisation runs on the CPU only; drop it or use --device cpu")
        from torch.ao.quantization import quantize_dynamic

        quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
    out: nn.Module = model
    if "channels_last" in names:
        model.to(memory_format=torch.channels_last)
        out = _ChannelsLastInput(model)
    if "compile" in names:
        out = _TimedFirstCall(torch.compile(out))
    return out
