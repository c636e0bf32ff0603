"""Opt-in inference optimisations, most of which trade exactness for speed.

The default forward is exact (PARITY.md tolerances, ~1e-6 relative). These options change the
numbers: by float rounding (``channels_last``, ``compile``), by quantisation (``int8``) or by running
the whole model in a half type (``half_weights``); ``cuda_graph`` replays the same kernels and changes
nothing. Each is measured, speed and output difference against fp32, by ``benchmarks/options.py``
(CPU, on the shared fixtures' inputs) and ``benchmarks/gpu.py`` (results in docs/performance.md).
Reduced precision itself is the Predictor's ``precision`` option (autocast unless ``half_weights``).

- ``channels_last``: convolution weights and the input in NHWC memory format, so oneDNN does not
  reorder NCHW tensors around every convolution. On CUDA a channels-last input also keeps the Swin
  stage outputs channels-last and the decoder with them (cuDNN reorders nothing, no NCHW copies): on an
  H100 (swin_v1_l, 1024², bf16 weights, CUDA graph) batch 8 went 82.4 -> 94.4 images/s and batch 1
  15.0 -> 13.3 ms.
- ``compile``: ``torch.compile`` (Inductor, static shapes). The first forward of each input shape
  compiles (minutes on a 2-core CPU; Inductor caches compiled graphs on disk, so later processes start
  faster). Needs a C++ compiler on CPU.
- ``int8``: dynamic int8 quantisation of every ``nn.Linear`` (weights int8, activations quantised
  per batch; CPU only): the Swin/PVT backbones' linear layers, which hold most of their FLOPs.
- ``half_weights``: with a reduced ``precision`` (fp16/bf16), the whole model is converted to that
  type instead of running under autocast: no casts between layers, LayerNorm and the residual stream
  in the half type. On an H100 (swin_v1_l, 1024², with ``cuda_graph``) batch 1 went 25.0 -> 20.3 ms;
  the output difference against fp32 was that of autocast in bf16 and 10x smaller in fp16.
- ``cuda_graph``: on CUDA, each input shape (and dtype, and autocast state) is captured into a CUDA
  graph on its second call and replayed from then on, so a forward is one launch instead of ~2000
  kernel launches from Python (batch 1 is launch-bound: 67 -> 20 ms above). Same kernels, same values.
  A captured shape keeps its own memory pool (~1.5 GB for swin_v1_l at 1024²); :data:`MAX_GRAPHS`
  (one) shape is captured and other shapes run eagerly, so it pays for inputs of one fixed size (the
  "fixed" resolution policy).
- ``fast_gelu``: with ``half_weights`` on CUDA, the Swin blocks' MLP GELU in its tanh form, computed in
  the first product's cuBLASLt epilogue instead of as its own pass over the 4C-wide hidden layer. A
  different function (|gelu_tanh - gelu| < 5e-4 everywhere, far below bf16's rounding at those values):
  on an H100 (swin_v1_l, 1024², bf16 weights, channels-last, CUDA graph) batch 8 went 108.2 -> 114.4
  images/s and batch 1 12.2 -> 11.7 ms, with the same max |Δp| against fp32 (4.2e-4).

On CUDA the fastest set measured that keeps the function (half-precision rounding aside) is
``half_weights,channels_last,cuda_graph``; adding ``fast_gelu`` is the fastest overall. docs/performance.md
has the table.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable

import torch
from torch import nn

__all__ = [
    "MAX_GRAPHS",
    "OPTIMIZATIONS",
    "CudaGraphs",
    "optimize_for_inference",
    "parse_optimizations",
    "set_fast_gelu",
]

logger = logging.getLogger(__name__)

OPTIMIZATIONS = ("channels_last", "compile", "int8", "half_weights", "cuda_graph", "fast_gelu")
#: Input shapes that :class:`CudaGraphs` captures; later ones run eagerly. One, for memory: each graph
#: keeps its own pool (~1.5-2 GB for swin_v1_l at 1024², more per batch), and a fixed-size stream of
#: batches needs no more (a folder's smaller last batch comes once, and a shape is captured on its
#: second call). More are safe: on an H100 (2026-11-27) the wrapper with two graphs replayed batch 1
#: exactly after a batch-8 capture and ``torch.cuda.empty_cache()`` (``benchmarks/gpu.py
#: --graph-replay cudagraphs-wrapper``). The "illegal memory access" first seen there was the benchmark
#: script's own bug: its graph read an input tensor it had let go.
MAX_GRAPHS = 1


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


def _capture_cuda_graph(run: Callable[[], object], device: torch.device) -> Callable[[], None]:
    """Capture ``run()`` into a CUDA graph after two warm-up calls on a side stream (cuDNN's algorithm
    search, Triton's autotuning and lazy allocations happen there, outside the capture); returns the
    graph's replay."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(2):
            run()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    # thread_local: CUDA calls of other threads (the CLI's decode and encode threads, a server's
    # requests) during the capture do not invalidate it.
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        run()
    return graph.replay


class CudaGraphs(nn.Module):
    """Replays ``model`` from CUDA graphs, one per input shape, dtype and autocast state.

    The first call of a key runs eagerly (a shape seen once, as under the "dynamic" resolution policy,
    is never captured); the second captures the forward if fewer than ``max_graphs`` keys are captured
    (else it stays eager: no graph is dropped, so alternating shapes never recapture), with autocast's weight-cast cache off (a cached
    cast would be freed after the capture while the graph still reads it), and every later call copies
    the input into the captured one and replays. The output's tensors are cloned before they are handed
    out, since the next replay overwrites them. Inference only: call it under ``torch.inference_mode``
    or ``torch.no_grad``.

    Args:
        model: module taking one (B, C, H, W) tensor; its output a tensor or a dataclass of tensors.
        max_graphs: how many keys are captured; later keys run eagerly.
    """

    def __init__(self, model: nn.Module, max_graphs: int = MAX_GRAPHS) -> None:
        super().__init__()
        self.model = model
        self.max_graphs = max_graphs
        self._seen: set[tuple] = set()
        # key -> (static input, static output, replay)
        self._graphs: dict[tuple, tuple[torch.Tensor, object, Callable[[], None]]] = {}

    def forward(self, x: torch.Tensor):
        device = x.device
        autocast = torch.is_autocast_enabled(device.type)
        amp_dtype = torch.get_autocast_dtype(device.type) if autocast else None
        key = (tuple(x.shape), x.dtype, str(device), amp_dtype)
        if key in self._graphs:
            static_x, static_out, replay = self._graphs[key]
            static_x.copy_(x)
            replay()
            return _cloned(static_out)
        if key not in self._seen or len(self._graphs) >= self.max_graphs:
            self._seen.add(key)
            return self.model(x)
        static_x = x.clone()
        holder: list = []

        def run() -> object:
            holder[:] = [self.model(static_x)]
            return holder[0]

        ctx = (
            torch.autocast(device.type, dtype=amp_dtype, cache_enabled=False)
            if autocast
            else torch.autocast(device.type, enabled=False, cache_enabled=False)
        )
        with ctx:
            replay = capture_cuda_graph(run, device)
        static_out = holder[0]
        self._graphs[key] = (static_x, static_out, replay)
        replay()
        return _cloned(static_out)


#: How :class:`CudaGraphs` captures (a module attribute so tests can run the wrapper without CUDA).
capture_cuda_graph = _capture_cuda_graph


def _cloned(out):
    """``out`` with its tensors cloned: a tensor, or a dataclass whose fields are tensors, lists of them
    or None."""
    if isinstance(out, torch.Tensor):
        return out.clone()
    if dataclasses.is_dataclass(out):
        fields = {}
        for f in dataclasses.fields(out):
            value = getattr(out, f.name)
            if isinstance(value, torch.Tensor):
                value = value.clone()
            elif isinstance(value, list):
                value = [v.clone() for v in value]
            fields[f.name] = value
        return dataclasses.replace(out, **fields)
    raise TypeError(f"cuda_graph: cannot copy a model output of type {type(out).__name__}")


def set_fast_gelu(model: nn.Module, enabled: bool = True) -> int:
    """Switch the ``fast_gelu`` option on (or off) in every Swin block of ``model``; returns how many.

    It sets :attr:`birefnet.models.backbones.swin.SwinBlock.gelu_tanh`, read only by the fused CUDA
    half-weights path; every other path keeps the exact GELU.
    """
    from birefnet.models.backbones.swin import SwinBlock

    blocks = [m for m in model.modules() if isinstance(m, SwinBlock)]
    for block in blocks:
        block.gelu_tanh = enabled
    return len(blocks)


def optimize_for_inference(
    model: nn.Module,
    options: str | Iterable[str] | None,
    device: torch.device | str = "cpu",
    half_dtype: torch.dtype | None = None,
) -> nn.Module:
    """Apply the named options to an eval-mode ``model``; returns the model to call (maybe a wrapper).

    The wrapper forwards ``model``'s attributes that the Predictor reads (``config``,
    ``default_size``...) only through the returned module's ``.model`` chain, so keep the original
    for those. ``int8`` modifies ``model`` in place (its Linear layers are replaced).

    ``half_weights`` converts ``model`` in place to ``half_dtype``; the caller then feeds it inputs of
    that dtype and runs it without autocast (the Predictor does both, and keeps the float32 weights for
    its fp32 fallback).

    Args:
        model: a BiRefNet (or any module taking (B, 3, H, W)), in eval mode, on ``device``.
        options: names from :data:`OPTIMIZATIONS` (see :func:`parse_optimizations`).
        device: where the model runs; ``int8`` needs the CPU, ``cuda_graph`` a CUDA device.
        half_dtype: torch.float16 or torch.bfloat16, the type ``half_weights`` converts to.

    Raises:
        ValueError: unknown names, ``int8`` on a non-CPU device or with ``half_weights``, ``cuda_graph``
            off CUDA or with ``compile``, ``half_weights`` without a half ``half_dtype``, ``fast_gelu``
            without ``half_weights`` on CUDA or on a model without Swin blocks.
    """
    names = parse_optimizations(options)
    device = torch.device(device)
    if "cuda_graph" in names and device.type != "cuda":
        raise ValueError("cuda-graph needs a CUDA device; drop it or use --device cuda")
    if "cuda_graph" in names and "compile" in names:
        raise ValueError("use cuda-graph or compile, not both (compile captures its own graphs)")
    if "half_weights" in names:
        if half_dtype not in (torch.float16, torch.bfloat16):
            raise ValueError("half-weights needs a reduced precision: add --precision fp16 or bf16")
        if "int8" in names:
            raise ValueError("half-weights and int8 do not combine (int8 keeps float32 activations)")
        model.to(half_dtype)
    if "fast_gelu" in names:
        if "half_weights" not in names or device.type != "cuda":
            raise ValueError(
                "fast-gelu acts on the CUDA half-weights path only: add half-weights and run on CUDA "
                "(--optimize half-weights,fast-gelu --precision bf16 --device cuda), or drop it"
            )
        if not set_fast_gelu(model):
            raise ValueError("fast-gelu: this model has no Swin blocks (it acts on the Swin backbones only)")
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
        # Static shapes: the Predictor feeds one size, and Dynamo's automatic dynamic shapes (after a
        # second size, or another model of the same classes in the process) made Inductor fail to lower
        # PVT's strided reduction convolution (a symbolic-shape evaluation error, torch 2.13).
        out = _TimedFirstCall(torch.compile(out, dynamic=False))
    if "cuda_graph" in names:
        out = CudaGraphs(out)
    return out
