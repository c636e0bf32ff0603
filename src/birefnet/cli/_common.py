"""Flags shared by the subcommands that load a model (``predict``, ``serve``, ``export``).

One definition per flag, so that ``--model``, ``--weights``, ``--device``, ``--precision``, ``--size``
and the rest mean and say the same in every command. Every flag defaults to None: the library
(:class:`birefnet.inference.Predictor`) owns the defaults. Nothing heavy is imported here (the CLI
imports every subcommand module to build ``--help``).
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["MODEL_FLAGS", "add_model_flags", "positive_float", "positive_int"]


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from e
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be >= 1")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from e
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be > 0")
    return value


# name -> (flag, add_argument keywords). The help texts are those users see in every command.
MODEL_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "model": (
        "--model",
        {"metavar": "NAME", "help": "registry name (birefnet models), checkpoint path or hub id"},
    ),
    "weights": (
        "--weights",
        {
            "metavar": "PATH",
            "help": "local checkpoint (file or folder); with --model NAME that model's settings apply",
        },
    ),
    "size": ("--size", {"metavar": "N|WxH", "help": "model input size (default: the model's training size)"}),
    "resolution": (
        "--resolution",
        {"choices": ("fixed", "dynamic", "tiled"), "help": "resolution policy (default: model's)"},
    ),
    "patch_order": (
        "--patch-order",
        {"choices": ("current", "legacy"), "help": "override the registry's patch order"},
    ),
    "backend": (
        "--backend",
        {
            "choices": ("torch", "onnx"),
            "help": "torch (default) or onnx: run an exported .onnx file with ONNX Runtime (automatic for *.onnx)",
        },
    ),
    "device": ("--device", {"metavar": "DEV", "help": "auto (default), cpu, cuda, cuda:N, mps"}),
    "precision": (
        "--precision",
        {"choices": ("auto", "fp32", "fp16", "bf16"), "help": "default auto (bf16/fp16 on GPU)"},
    ),
    "optimize": (
        "--optimize",
        {
            "metavar": "LIST",
            "help": "opt-in: comma-separated channels-last, compile, int8, half-weights, cuda-graph, fast-gelu "
            "(docs/performance.md)",
        },
    ),
    "threads": (
        "--threads",
        {"type": positive_int, "metavar": "N", "help": "CPU threads for the model (torch)"},
    ),
}


def add_model_flags(
    group: argparse.ArgumentParser | argparse._ArgumentGroup, *names: str, **overrides: dict[str, Any]
) -> None:
    """Add the named :data:`MODEL_FLAGS` to a parser or argument group, in the order given.

    Args:
        group: where the flags go (a parser or one of its argument groups).
        *names: keys of :data:`MODEL_FLAGS` (e.g. ``"model", "weights", "device"``).
        **overrides: per-name keyword changes, e.g. ``size={"help": "..."}`` or
            ``model={"action": "append", "metavar": "NAME[=PATH]", "help": "..."}``.

    Raises:
        KeyError: an unknown flag name (a programming error; the message lists the known ones).
    """
    for name in names:
        if name not in MODEL_FLAGS:
            raise KeyError(f"unknown model flag {name!r}; known: {', '.join(MODEL_FLAGS)}")
        flag, kwargs = MODEL_FLAGS[name]
        group.add_argument(flag, **{**kwargs, **overrides.get(name, {})})
