"""BiRefNet latency, throughput and peak memory on a GPU (issue 6).

For one variant at one size it reports, per mode: latency at batch 1 (median of CUDA-event-timed runs
after warm-up), throughput at batch 8 (images/s), peak GPU memory at batch 1 and at batch 8, and the
output difference against eager fp32 (max abs on probabilities and the fraction of pixels whose
0.5-threshold decision changes). Modes:

* ``fp32``, ``tf32`` (fp32 with TF32 matmuls and convolutions), ``fp16``, ``bf16`` (autocast): eager;
* ``bf16-gather``: bf16 with the deformable convolutions on the gather + GEMM path (columns in memory)
  instead of the fused Triton kernel that every other mode uses where Triton is present;
* ``bf16-cl``: bf16 with the model and the input in channels-last memory format;
* ``bf16-tvdeform``: bf16 with torchvision's CUDA deformable-convolution kernel in place of ours (a
  comparison only; needs torchvision there);
* ``bf16-weights``, ``bf16-weights-graph``, ``fp16-weights``, ``fp16-weights-graph``,
  ``bf16-weights-compile``, ``bf16-weights-compile-graph``: the model's weights and input converted to
  bf16 (fp16), no autocast (no casts, LayerNorm and the residual stream in that type: less exact than
  autocast; measure before use);
* ``fp16-weights-optimize``: what ``Predictor(precision="fp16", optimize="half-weights,cuda-graph")`` runs:
  the fp16 model through :class:`birefnet.models.optimize.CudaGraphs` (captured on the second call of a
  size, one size kept);
* ``*-1stream``: the same mode with :data:`birefnet.models.streams.ENABLED` off, i.e. the whole forward on
  one CUDA stream (every other mode runs the half-size backbone pass and the decoder's image-only work
  on a second stream);
* ``*-nofuse``: the same mode with :data:`birefnet.models.backbones.swin.FUSED_RESIDUALS` off (the residual
  sums as separate adds, the LayerNorms ATen's); ``*-tanh``: with the
  ``fast_gelu`` option (each Swin block's ``gelu_tanh``: the MLP's GELU in its tanh form, in the first
  product's epilogue; a different function, reported by its own max|dp|);
* ``*-cl-*``: the model's convolution weights and the input channels-last (the ``channels-last`` option),
  so the Swin stage outputs stay channels-last and the decoder runs so; ``bf16-cl`` is the autocast mode so;
* ``*-noepi*``: with :data:`birefnet.models.blocks.FUSE_DEFORM_EPILOGUE` off (each deformable ASPP
  branch's BatchNorm and ReLU as separate passes instead of inside the fused deformable kernel);
  ``*-nors``: with :data:`birefnet.models.blocks.TRITON_RESIZE` off (the decoder's half-precision resizes
  by ATen's kernel instead of the Triton one); every other mode has both on where Triton is present;
* ``*-sdpa``: the same mode with :data:`birefnet.models.backbones.swin.WINDOW_KERNEL` off, i.e. the Swin
  blocks attend through the window gather, ``F.scaled_dot_product_attention`` and the scatter instead of
  the Triton window-attention kernel (:mod:`birefnet.models._swin_triton`) that every other half-precision
  mode uses where Triton is present;
* ``bf16-graph``: eager bf16 captured once per batch size into a CUDA graph and replayed (removes the
  per-kernel launch cost of the Python forward; static input size);
* ``bf16-compile``: ``torch.compile`` (default mode, static shapes), compile time reported per batch
  size; ``bf16-compile-graph``: the same with ``mode="reduce-overhead"`` (CUDA graphs).

``--graph-replay VARIANT...`` only checks that a batch-1 CUDA graph replays exactly after a batch-N graph
was captured (each variant in its own process): the graph against a back-to-back replay and against
its replay after the other capture; ``cudagraphs-wrapper`` runs the Predictor's wrapper with two
graphs and ``torch.cuda.empty_cache()`` in between. (On an H100 on 2026-11-27 such a replay hit an
illegal memory access: this script's graph helper had let its static input go while the graph read
it. Fixed; all variants replay bit-identically since.)

``--check-cpu`` also runs the fp32 model on the CPU on the same weights and input and reports the
GPU-vs-CPU relative logits error (the PARITY.md measure), so a run shows the CUDA path computes the
same function. Each mode runs in a ``try``: one that fails is reported with its error and the rest go
on. ``--json`` is rewritten after every mode, so a run stopped by a time limit keeps what it measured.

    python benchmarks/gpu.py --variant swin_v1_l --size 1024
    python benchmarks/gpu.py --variant swin_v1_t --size 256 --device cpu --modes fp32 bf16 --runs 1
        # a smoke run of the script itself where no GPU is present (CPU timings mean nothing here)

Goal (issue 6): swin_v1_l at 1024² in bf16 on an H100: <= 20 ms at batch 1 and >= 100 images/s at
batch 8. Official reference: A100 86.8 ms fp32 / 69.4 ms fp16, RTX 4090 57.7 ms fp16 (3.45 GB).
Weights are random (speed does not depend on values); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import time
from collections.abc import Callable

import torch

from birefnet.models import blocks, deform_conv, streams
from birefnet.models.backbones import swin
from birefnet.models.optimize import set_fast_gelu

_OUR_DEFORM_CONV2D = deform_conv.deform_conv2d

MODES = (
    "fp32",
    "tf32",
    "fp16",
    "bf16",
    "bf16-gather",
    "bf16-cl",
    "bf16-tvdeform",
    "bf16-graph",
    "bf16-compile",
    "bf16-compile-graph",
    "bf16-weights",
    "bf16-weights-graph",
    "fp16-weights",
    "fp16-weights-graph",
    "bf16-weights-compile",
    "bf16-weights-compile-graph",
    "fp16-weights-optimize",
    "bf16-weights-graph-1stream",
    "fp16-weights-graph-1stream",
    "bf16-weights-graph-sdpa",
    "fp16-weights-graph-sdpa",
    "bf16-graph-sdpa",
    "bf16-weights-graph-nofuse",
    "bf16-weights-graph-tanh",
    "fp16-weights-graph-tanh",
    "bf16-weights-cl-graph",
    "bf16-weights-cl-graph-tanh",
    "fp16-weights-cl-graph",
    "fp16-weights-cl-graph-tanh",
    "bf16-weights-cl-graph-noepi-nors",
    "bf16-weights-cl-graph-nors",
    "bf16-weights-cl-graph-noepi",
    "bf16-weights-graph-noepi-nors",
)


def _weights_dtype(mode: str) -> torch.dtype | None:
    """The dtype a ``*-weights*`` mode converts the model to, else None."""
    if "-weights" not in mode:
        return None
    return torch.float16 if mode.startswith("fp16") else torch.bfloat16


def _switches(mode: str) -> None:
    """Set the module switches a mode's suffixes name (see the module docstring); the rest to defaults."""
    streams.ENABLED = not mode.endswith("-1stream")
    swin.WINDOW_KERNEL = not mode.endswith("-sdpa")
    swin.FUSED_RESIDUALS = not mode.endswith("-nofuse")
    # torchvision's kernel (bf16-tvdeform) is swapped in for deform_conv2d, which the epilogue path bypasses
    blocks.FUSE_DEFORM_EPILOGUE = "-noepi" not in mode and mode != "bf16-tvdeform"
    blocks.TRITON_RESIZE = "-nors" not in mode


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device, runs: int, warmup: int) -> list[float]:
    """Seconds per call of fn(), after warm-up (CUDA events on GPUs, perf_counter elsewhere)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    if device.type == "cuda":  # peak memory of the timed runs, not of cuDNN's algorithm search
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def _autocast(mode: str, device: torch.device) -> contextlib.AbstractContextManager:
    # The autocast weight-cast cache must be off while a CUDA graph is captured (its casts would be
    # captured once and the cache cleared after), so graph modes cast inside the graph instead.
    cache = "graph" not in mode
    if _weights_dtype(mode) is not None:  # the model itself is bf16 / fp16: nothing to cast
        return contextlib.nullcontext()
    if mode.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache)
    if mode.startswith("fp16"):
        return torch.autocast(device.type, dtype=torch.float16, cache_enabled=cache)
    return contextlib.nullcontext()


def _set_tf32(enabled: bool) -> None:
    # cuDNN's flag is on by default in PyTorch: fp32 convolutions would silently run in TF32.
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _graphed(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Capture ``run(x)`` into a CUDA graph after a warm-up on a side stream; returns its replay."""
    static_x = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            run(static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = run(static_x)

    def replay() -> torch.Tensor:
        # static_x is named here so the closure keeps it: the graph reads the input from its memory,
        # which was allocated outside the graph's pool. Without this, it was freed when this function
        # returned, and a replay read whatever was allocated there next (garbage; or, after
        # torch.cuda.empty_cache(), unmapped memory: the "illegal memory access" of 2026-11-27).
        static_x.data_ptr()
        graph.replay()
        return static_out

    return replay


def _measure(mode: str, model: torch.nn.Module, x1: torch.Tensor, xb: torch.Tensor, args) -> dict:
    """One mode's timings, memory and compile time; the forward of each batch size as a callable."""
    device = x1.device
    _set_tf32(mode == "tf32")
    deform_conv.deform_conv2d = _OUR_DEFORM_CONV2D
    # Every mode but one runs the fused Triton deformable convolution where Triton is present.
    deform_conv.USE_TRITON = mode != "bf16-gather"
    _switches(mode)
    if mode == "bf16-tvdeform":  # comparison only: torchvision's CUDA kernel, the official code's
        from torchvision.ops import deform_conv2d as tv_deform_conv2d

        deform_conv.deform_conv2d = tv_deform_conv2d
    net: Callable[[torch.Tensor], object] = model
    if "-cl" in mode:
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        x1, xb = (t.contiguous(memory_format=torch.channels_last) for t in (x1, xb))
        net = model
    dtype = _weights_dtype(mode)
    if dtype is not None:
        model = copy.deepcopy(model).to(dtype)
        x1, xb = x1.to(dtype), xb.to(dtype)
        net = model
        if mode.endswith("-tanh"):  # the copy only
            set_fast_gelu(model)
    if "compile" in mode:
        net = torch.compile(model, dynamic=False, mode="reduce-overhead" if mode.endswith("graph") else None)
    graph = "graph" in mode and "compile" not in mode
    if mode.endswith("-optimize"):  # the package's CudaGraphs wrapper (the Predictor's cuda-graph option)
        from birefnet.models.optimize import CudaGraphs

        net, graph = CudaGraphs(model), False

    def run(x: torch.Tensor, net=net) -> torch.Tensor:
        with torch.inference_mode(), _autocast(mode, device):
            return net(x).logits

    row: dict = {"mode": mode}
    probs: dict[str, torch.Tensor] = {}
    sizes = [("b1", x1)] if not args.skip_b1 else []
    for name, x in [*sizes, (f"b{args.batch}", xb)]:
        _reset_peak(device)
        fn: Callable[[], torch.Tensor] = lambda x=x: run(x)  # noqa: E731
        if "compile" in mode:
            t0 = time.perf_counter()
            fn()
            _sync(device)
            row[f"compile_s_{name}"] = time.perf_counter() - t0
        elif graph:
            if device.type != "cuda":
                raise RuntimeError("CUDA graphs need a CUDA device")
            fn = _graphed(run, x)
        runs = args.runs if name == "b1" else max(1, args.runs // 2)
        seconds = statistics.median(_timed(fn, device, runs, args.warmup if name == "b1" else 2))
        row[f"peak_gpu_gb_{name}"] = _peak_gb(device)
        if name == "b1":
            row["latency_ms_b1"] = seconds * 1000
        else:
            row[f"images_per_s_{name}"] = args.batch / seconds
        # The batch's first image is the batch-1 input: each forward gives probabilities to compare,
        # taken right after this size's timing.
        with torch.inference_mode():
            probs[name] = fn()[:1].float().sigmoid().clone()
        _sync(device)
        done = {k: round(v, 3) for k, v in row.items() if k != "mode" and v is not None}
        print(f"  {mode} {name}: {done}", flush=True)  # partial results, in case a time limit stops the run
    row["_probs"] = probs
    return row


def _module_groups(model: torch.nn.Module) -> dict[str, list[torch.nn.Module]]:
    """Named groups of submodules whose forward time the profile reports (groups may overlap)."""
    groups: dict[str, list[torch.nn.Module]] = {"whole forward": [model]}
    bb = model.bb
    for name, child in bb.named_children():
        if name == "layers":
            for i, stage in enumerate(child):
                groups[f"backbone stage {i}"] = [stage]
        elif name == "patch_embed":
            groups["backbone patch_embed"] = [child]
    groups["squeeze_module"] = [model.squeeze_module]
    for name, child in model.decoder.named_children():
        if name.startswith("decoder_block") or name.startswith("ipt_blk"):
            groups[f"decoder.{name}"] = [child]
    by_class: dict[str, list[torch.nn.Module]] = {}
    for module in model.modules():
        by_class.setdefault(type(module).__name__, []).append(module)
    for cls in ("WindowAttention", "Mlp", "DeformableConv2d", "Conv2d", "BatchNorm2d", "LayerNorm"):
        if cls in by_class:
            groups[f"all {cls} ({len(by_class[cls])})"] = by_class[cls]
    return groups


def profile(model: torch.nn.Module, x: torch.Tensor, mode: str, out_dir: str | None) -> None:
    """Per-module-group CUDA time (events around each module's forward) and the top operators by self
    device time (torch.profiler) for one eager forward of ``x`` in ``mode``."""
    device = x.device
    _set_tf32(False)
    _switches(mode)
    if "-cl" in mode:
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = _weights_dtype(mode)
    if dtype is not None:  # the whole model in that type (see the *-weights modes)
        model, x = copy.deepcopy(model).to(dtype), x.to(dtype)
        if mode.endswith("-tanh"):
            set_fast_gelu(model)
    events: dict[str, list] = {}
    handles = []
    groups = _module_groups(model) if device.type == "cuda" else {}  # CUDA events need a CUDA device
    for name, modules in groups.items():
        for module in modules:

            def pre(_m, _a, name=name):
                start = torch.cuda.Event(enable_timing=True)
                start.record()
                events.setdefault(name, []).append([start, None])

            def post(_m, _a, _o, name=name):
                end = torch.cuda.Event(enable_timing=True)
                end.record()
                events[name][-1][1] = end

            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def run() -> None:
        with torch.inference_mode(), _autocast(mode, device):
            model(x)

    run()
    _sync(device)
    if device.type == "cuda":
        events.clear()
        run()
        torch.cuda.synchronize(device)
        print(f"per-module CUDA time, {mode}, batch {x.shape[0]} (ms; groups overlap):")
        for name, pairs in events.items():
            print(f"  {name:34s} {sum(a.elapsed_time(b) for a, b in pairs):9.2f}  ({len(pairs)} calls)")
    for handle in handles:
        handle.remove()
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities, record_shapes=True) as prof:
        run()
        _sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=60)
    print(table)
    if out_dir:
        with open(f"{out_dir}/profile_{mode}.txt", "w") as f:
            f.write(prof.key_averages().table(sort_by=key, row_limit=200, max_name_column_width=90))
            # the same operators split by input shapes: which copies, adds and norms cost what
            f.write(
                prof.key_averages(group_by_input_shape=True).table(
                    sort_by=key, row_limit=120, max_name_column_width=40, max_shapes_column_width=110
                )
            )
    _switches("")


#: Ways to run the graph-replay check (``--graph-replay``): as the bf16 autocast forward, and with one
#: suspect taken out each: the Triton deformable kernel, cuDNN's attention, or autocast (bf16 weights).
GRAPH_REPLAY_VARIANTS = ("bf16", "bf16-no-triton", "bf16-no-cudnn-sdpa", "bf16-weights", "cudagraphs-wrapper")


def graph_replay_check(variant: str, size: int, batch: int, how: str) -> None:
    """Capture the forward at batch 1, then at ``batch``, then replay the batch-1 graph again and compare
    it with its first replay. On an H100 (2026-11-27) this replay hit an illegal memory access; a CUDA
    error poisons the process, so :func:`graph_replay_checks` runs each variant in its own."""
    from birefnet import BiRefNet, BiRefNetConfig

    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = BiRefNet(BiRefNetConfig(backbone=variant)).eval().to(device)
    deform_conv.USE_TRITON = how != "bf16-no-triton"
    if how == "bf16-no-cudnn-sdpa":
        torch.backends.cuda.enable_cudnn_sdp(False)
    dtype = torch.float32
    if how in ("bf16-weights", "cudagraphs-wrapper"):
        model, dtype = model.to(torch.bfloat16), torch.bfloat16
    if how == "cudagraphs-wrapper":  # the Predictor's wrapper, allowed two graphs: b1, b8, then b1 again
        from birefnet.models.optimize import CudaGraphs

        wrapped = CudaGraphs(model, max_graphs=2)
        x1 = torch.rand(1, 3, size, size, device=device, dtype=dtype)
        xb = torch.rand(batch, 3, size, size, device=device, dtype=dtype)
        with torch.inference_mode():
            outs = [wrapped(x1).logits.float() for _ in range(3)]  # eager, captured, replayed
            eager_b1 = model(x1).logits.float()
            for _ in range(3):
                wrapped(xb)
            torch.cuda.empty_cache()  # would unmap memory that a graph still read
            again = wrapped(x1).logits.float()
            torch.cuda.synchronize(device)
        diffs = [float((o - eager_b1).abs().max()) for o in (*outs, again)]
        print(
            f"graph replay {how}: ok, max |diff| to eager (eager, capture, replay, after b{batch}): {diffs}",
            flush=True,
        )
        return
    mode = "bf16-weights-graph" if how == "bf16-weights" else "bf16-graph"

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), _autocast(mode, device):
            return model(x).logits

    x1 = torch.rand(1, 3, size, size, device=device, dtype=dtype)
    xb = torch.rand(batch, 3, size, size, device=device, dtype=dtype)
    replay1 = _graphed(run, x1)
    first = replay1().float().clone()
    second = replay1().float().clone()  # the same graph replayed again, before any other capture
    torch.cuda.synchronize(device)
    replay_b = _graphed(run, xb)
    replay_b()
    torch.cuda.synchronize(device)
    try:
        again = replay1().float()
        torch.cuda.synchronize(device)
    except Exception as exc:  # the finding is the error itself
        print(f"graph replay {how}: FAILED {type(exc).__name__}: {str(exc).splitlines()[0]}", flush=True)
        raise SystemExit(1) from None
    # Both differences are 0 where the graph reads only memory that it or this script keeps. A
    # back-to-back difference means the graph reads memory that changes between replays (as the
    # freed static input did); the largest logit puts either difference in proportion.
    print(
        f"graph replay {how}: ok, max |diff| after the batch-{batch} capture {float((again - first).abs().max()):.1e}"
        f", between back-to-back replays {float((second - first).abs().max()):.1e}"
        f" (largest |logit| {float(first.abs().max()):.1f})",
        flush=True,
    )


def graph_replay_checks(args) -> None:
    """:func:`graph_replay_check` for each of ``args.graph_replay`` in a subprocess."""
    import subprocess
    import sys

    for how in args.graph_replay:
        cmd = [sys.executable, __file__, "--variant", args.variant, "--size", str(args.size)]
        cmd += ["--batch", str(args.batch), "--graph-replay-one", how]
        code = subprocess.run(cmd, check=False).returncode
        if code:
            print(f"graph replay {how}: exit code {code}", flush=True)


def main() -> None:
    from birefnet import BiRefNet, BiRefNetConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="swin_v1_l")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--batch", type=int, default=8, help="batch size of the throughput measurement")
    ap.add_argument(
        "--skip-b1", action="store_true", help="measure only the throughput batch (halves compile time)"
    )
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--check-cpu", action="store_true", help="compare the fp32 GPU logits with the CPU's")
    ap.add_argument(
        "--profile",
        nargs="*",
        choices=MODES,
        help="after the modes, profile one eager forward at the throughput batch in these modes",
    )
    ap.add_argument("--json", help="also write the results to this file (rewritten after every mode)")
    ap.add_argument(
        "--graph-replay",
        nargs="+",
        choices=GRAPH_REPLAY_VARIANTS,
        help="only check replaying a batch-1 graph after a batch-N capture, each variant in a subprocess",
    )
    ap.add_argument("--graph-replay-one", choices=GRAPH_REPLAY_VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.graph_replay_one:
        return graph_replay_check(args.variant, args.size, args.batch, args.graph_replay_one)
    if args.graph_replay:
        return graph_replay_checks(args)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on a GPU machine, or pass --device cpu for a smoke run")
    torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest algorithms
    torch.manual_seed(0)
    cpu_model = BiRefNet(BiRefNetConfig(backbone=args.variant)).eval()
    model = copy.deepcopy(cpu_model).to(device) if device.type != "cpu" else cpu_model
    x1 = torch.rand(1, 3, args.size, args.size)
    xb = torch.rand(args.batch, 3, args.size, args.size, device=device)
    xb[0] = x1[0].to(device)
    header = {"variant": args.variant, "size": args.size, "batch": args.batch, "torch": torch.__version__}
    if device.type == "cuda":
        header["device"] = torch.cuda.get_device_name(device)
    print(" ".join(f"{k}={v}" for k, v in header.items()), flush=True)

    _set_tf32(False)
    with torch.inference_mode():
        reference = model(x1.to(device)).logits.float()
        if device.type == "cuda":  # the second stream runs the same kernels: the same logits
            streams.ENABLED = False
            one_stream = model(x1.to(device)).logits.float()
            streams.ENABLED = True
            header["two_vs_one_stream_max_abs_logit"] = float((reference - one_stream).abs().max())
            print(
                f"fp32, two streams vs one: max |d logits| {header['two_vs_one_stream_max_abs_logit']:.2e}",
                flush=True,
            )
    if args.check_cpu and device.type != "cpu":
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                cpu_logits = cpu_model(x1).logits
        except Exception as exc:  # report it and go on to the GPU modes
            cpu_logits = None
            print(f"CPU forward FAILED {type(exc).__name__}: {exc}"[:400], flush=True)
    if args.check_cpu and device.type != "cpu" and cpu_logits is not None:
        gpu_logits = reference.cpu()
        header["gpu_vs_cpu_rel_error"] = float((gpu_logits - cpu_logits).norm() / cpu_logits.norm())
        header["gpu_vs_cpu_max_abs_prob"] = float((gpu_logits.sigmoid() - cpu_logits.sigmoid()).abs().max())
        print(
            f"fp32 GPU vs CPU: logits rel. error {header['gpu_vs_cpu_rel_error']:.2e}, "
            f"max |dp| {header['gpu_vs_cpu_max_abs_prob']:.2e} (CPU forward {time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
    del cpu_model
    reference = reference.sigmoid()
    x1 = x1.to(device)

    results = []
    for mode in args.modes:
        try:
            row = _measure(mode, model, x1, xb, args)
        except Exception as exc:  # report it and go on with the other modes
            row = {"mode": mode, "error": f"{type(exc).__name__}: {exc}"[:400]}
            print(f"{mode:18s} FAILED {row['error']}", flush=True)
        else:
            probs = row.pop("_probs")
            for name, prob in probs.items():  # the batch-1 forward's under the plain keys, where it ran
                suffix = "" if name == next(iter(probs)) else f"_{name}"
                row[f"max_abs_prob_diff{suffix}"] = float((prob - reference).abs().max())
                flips = ((prob > 0.5) != (reference > 0.5)).float().mean()
                row[f"decision_flip_fraction{suffix}"] = float(flips)
            bkey = f"images_per_s_b{args.batch}"
            compile_s = [f"{row[k]:.0f}" for k in row if k.startswith("compile_s")]

            def gb(key: str, row: dict = row) -> str:
                return "-" if row.get(key) is None else f"{row[key]:.2f}"

            print(
                f"{mode:18s} b1 {row.get('latency_ms_b1', float('nan')):8.2f} ms   "
                f"b{args.batch} {row.get(bkey, float('nan')):7.1f} img/s   "
                f"peak b1 {gb('peak_gpu_gb_b1')} GB, b{args.batch} {gb(f'peak_gpu_gb_b{args.batch}')} GB   "
                f"max|dp| {row['max_abs_prob_diff']:.2e}   flips {row['decision_flip_fraction']:.2e}"
                + (
                    f" (b{args.batch}: {row[f'max_abs_prob_diff_b{args.batch}']:.2e}, "
                    f"{row[f'decision_flip_fraction_b{args.batch}']:.2e})"
                    if f"max_abs_prob_diff_b{args.batch}" in row
                    else ""
                )
                + (f"   compile {'/'.join(compile_s)} s" if compile_s else ""),
                flush=True,
            )
        results.append(row)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({**header, "results": results}, f, indent=1)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    deform_conv.deform_conv2d = _OUR_DEFORM_CONV2D
    deform_conv.USE_TRITON = True
    for mode in args.profile or ():
        import os

        profile(model, xb, mode, os.path.dirname(args.json) if args.json else None)


if __name__ == "__main__":
    main()
