"""One of our inference fast paths against the same forward without it, alternating in one process.

Each fast path has a module-level switch kept for exactly this comparison:

* ``onednn``: the Swin projections, patch merging and the deformable convolutions' products on oneDNN
  (``birefnet.models.onednn.USE_ONEDNN``; only AVX-512 CPUs take it, elsewhere both columns run MKL);
* ``fused-aspp``: each deformable ASPP branch normalised, rectified and projected chunk by chunk as its
  deformable convolution produces it, instead of as a full-size map
  (``birefnet.models.blocks.FUSE_DEFORMABLE_BRANCHES``);
* ``keep-heap``: freed heap pages kept mapped during CPU inference forwards (``birefnet.models.memory
  .KEEP_HEAP_PAGES``). The heap a process has built up with it would blur a switch within that process,
  so this switch runs two warm worker processes, one with it and one without, and alternates forwards
  between them (one at a time, each on ``--threads`` threads).
* ``streamed-windows``: each Swin stage run window chunk by window chunk on the oneDNN path
  (``birefnet.models.backbones.swin.STREAM_WINDOWS``). It changes how much memory the heap holds, so it
  runs as two worker processes too.
* ``packed-weights``: the Swin backbone's Linear weights held in oneDNN's blocked layout
  (``BiRefNet.pack_cpu_weights``, what the Predictor does for float32 CPU inference). Packing replaces
  the weights' memory, which moves the heap around, so it runs as two worker processes as well.
* ``two-scale``: the three finer encoder stages handed to the decoder as unfused (full-size pass,
  half-size pass) pairs, each lateral convolution applied to the two parts
  (``birefnet.models.birefnet.TWO_SCALE_LATERALS``). It changes which large maps are made, so it runs as
  two worker processes.

* ``fold-last-block``: at CPU inference, the last decoder block's 3x3 convolution and norm folded with the
  head's 1x1 projection into one convolution with one output channel
  (``birefnet.models.decoder.FOLD_LAST_BLOCK``).
* ``fft-offsets``: at CPU inference, the 7x7 offset convolutions of the deformable branches by FFT over
  overlapping tiles instead of the direct convolution (``birefnet.models.fft_conv.ENABLED``).

``--pack`` packs the Swin weights in both workers (what the Predictor does) for any other switch.

The script times full forwards of a random BiRefNet, switching the path off and on for each pair, and
prints the median over the pairs of (time off / time on): above 1 means the fast path is faster. It
also prints the largest difference of the two outputs (probabilities), which only float rounding
should cause. For the per-process switches, which are about memory as much as time, it also prints
each worker's peak RSS (model build included). Timing alternates because this project's machines
drift by 10-20 % within minutes.

    python benchmarks/ab_switch.py --switch fused-aspp --variant swin_v1_t --size 1024 --pairs 4
    python benchmarks/ab_switch.py --switch keep-heap --variant swin_v1_t --size 1024 --pairs 8
    python benchmarks/ab_switch.py --switch streamed-windows --variant swin_v1_l --size 1024 --pairs 6
    python benchmarks/ab_switch.py --switch packed-weights --variant swin_v1_l --size 1024 --pairs 6
    python benchmarks/ab_switch.py --switch two-scale --variant swin_v1_l --size 1024 --pairs 6 --pack
    python benchmarks/ab_switch.py --switch fold-last-block --variant swin_v1_l --size 1024 --pairs 6 --pack
    python benchmarks/ab_switch.py --switch c-attention --variant swin_v1_l --size 1024 --pairs 5 --pack
    python benchmarks/ab_switch.py --switch c-sampling --variant swin_v1_l --size 1024 --pairs 5 --pack
    python benchmarks/ab_switch.py --switch c-layer-norm --variant swin_v1_l --size 1024 --pairs 5 --pack
    python benchmarks/ab_switch.py --switch residual-post-op --variant swin_v1_l --size 1024 --pairs 5 --pack
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch

from birefnet import BiRefNet, BiRefNetConfig
from birefnet.models import birefnet as birefnet_module
from birefnet.models import blocks, cpu_kernels, deform_conv, fft_conv, memory, onednn
from birefnet.models import decoder as decoder_module
from birefnet.models.backbones import swin


def _set_onednn(on: bool) -> None:
    onednn.USE_ONEDNN = on


def _set_fused_aspp(on: bool) -> None:
    blocks.FUSE_DEFORMABLE_BRANCHES = on


def _set_keep_heap(on: bool) -> None:
    memory.KEEP_HEAP_PAGES = on


def _set_streamed_windows(on: bool) -> None:
    swin.STREAM_WINDOWS = on


def _set_two_scale(on: bool) -> None:
    birefnet_module.TWO_SCALE_LATERALS = on


def _set_fold_last_block(on: bool) -> None:
    decoder_module.FOLD_LAST_BLOCK = on


def _set_fft_offsets(on: bool) -> None:
    fft_conv.ENABLED = on


def _set_c_attention(on: bool) -> None:
    swin.C_ATTENTION = on


def _set_c_sampling(on: bool) -> None:
    deform_conv.C_SAMPLING = on


def _set_c_layer_norm(on: bool) -> None:
    swin.C_LAYER_NORM = on


def _set_residual_post_op(on: bool) -> None:
    swin.RESIDUAL_POST_OP = on


# Whether the worker's model is packed (BiRefNet.pack_cpu_weights), read by _model_and_input.
_PACK_WEIGHTS = False


def _set_packed_weights(on: bool) -> None:
    global _PACK_WEIGHTS
    _PACK_WEIGHTS = on


#: switch name -> (setter, label of the path when off, label when on)
SWITCHES: dict[str, tuple[Callable[[bool], None], str, str]] = {
    "onednn": (_set_onednn, "MKL", "oneDNN"),
    "fused-aspp": (_set_fused_aspp, "unfused", "fused"),
    "keep-heap": (_set_keep_heap, "trimmed heap", "kept heap"),
    "streamed-windows": (_set_streamed_windows, "map-sized", "streamed"),
    "packed-weights": (_set_packed_weights, "plain weights", "packed weights"),
    "two-scale": (_set_two_scale, "concatenated", "two-scale"),
    "fold-last-block": (_set_fold_last_block, "unfolded", "folded"),
    "fft-offsets": (_set_fft_offsets, "direct", "FFT tiles"),
    "c-attention": (_set_c_attention, "PyTorch attention", "C attention"),
    "c-sampling": (_set_c_sampling, "PyTorch sampling", "C sampling"),
    "c-layer-norm": (_set_c_layer_norm, "PyTorch gather+LayerNorm", "C gather+LayerNorm"),
    "residual-post-op": (_set_residual_post_op, "sum apart", "sum as post-op"),
}
#: switches whose setting holds for a whole process: compared across two worker processes
PER_PROCESS = {"keep-heap", "streamed-windows", "packed-weights", "two-scale"}


def _model_and_input(args: argparse.Namespace) -> tuple[BiRefNet, torch.Tensor]:
    """The random model of ``--variant`` and its ``--size`` input, seeded, on ``--threads`` threads."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = BiRefNet(BiRefNetConfig(backbone=args.variant)).eval()
    if _PACK_WEIGHTS or args.pack:
        model.pack_cpu_weights()
    return model, torch.randn(1, 3, args.size, args.size)


def _print_pair(i: int, off_label: str, on_label: str, off: float, on: float) -> None:
    print(f"pair {i + 1}: {off_label} {off:.2f} s, {on_label} {on:.2f} s", flush=True)


def _worker(args: argparse.Namespace) -> None:
    """One side of a per-process switch: set it, build the model, then on each line of stdin run one
    forward and print its time; at end of input save the probabilities and the worker's peak RSS
    (GB of 10^9 bytes, model build included) to ``--worker-output``."""
    setter, _, _ = SWITCHES[args.switch]
    setter(args.worker == "on")
    model, x = _model_and_input(args)
    with torch.inference_mode():
        out = model(x).logits  # warm-up
        print("ready", flush=True)
        for _ in sys.stdin:
            t0 = time.perf_counter()
            out = model(x).logits
            print(time.perf_counter() - t0, flush=True)
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # KiB on Linux
    torch.save({"prob": out.sigmoid(), "rss_gb": rss_gb}, args.worker_output)


def _two_processes(
    args: argparse.Namespace, off_label: str, on_label: str
) -> tuple[list[float], list[float], float]:
    """Forward times (off, on) alternating between two warm workers, and the largest output difference."""
    with tempfile.TemporaryDirectory() as tmp:
        workers = {}
        for side in ("off", "on"):
            cmd = [sys.executable, __file__, "--switch", args.switch, "--variant", args.variant]
            cmd += ["--size", str(args.size), "--threads", str(args.threads), "--worker", side]
            cmd += ["--worker-output", os.path.join(tmp, f"{side}.pt")] + (["--pack"] if args.pack else [])
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            workers[side] = proc
            # wait until this one is warm before starting the other: their warm-ups never overlap
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the {side} worker failed to start")

        def forward(side: str) -> float:
            proc = workers[side]
            proc.stdin.write("go\n")
            proc.stdin.flush()
            return float(proc.stdout.readline())

        off, on = [], []
        for i in range(args.pairs):
            off.append(forward("off"))
            on.append(forward("on"))
            _print_pair(i, off_label, on_label, off[-1], on[-1])
        for proc in workers.values():
            proc.stdin.close()
            proc.wait()
        ref = torch.load(os.path.join(tmp, "off.pt"))
        new = torch.load(os.path.join(tmp, "on.pt"))
    print(
        f"peak RSS (model build included): {off_label} {ref['rss_gb']:.2f} GB, {on_label} {new['rss_gb']:.2f} GB"
    )
    return off, on, (ref["prob"] - new["prob"]).abs().max().item()


def main(argv: list[str] | None = None, default_switch: str = "onednn") -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--switch", choices=sorted(SWITCHES), default=default_switch)
    ap.add_argument("--variant", default="swin_v1_l")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument(
        "--pack", action="store_true", help="pack the Swin weights in both workers, as the Predictor does"
    )
    ap.add_argument("--worker", choices=("off", "on"), help=argparse.SUPPRESS)
    ap.add_argument("--worker-output", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args)
        return

    setter, off_label, on_label = SWITCHES[args.switch]
    if args.switch in ("onednn", "streamed-windows", "packed-weights") and not onednn.available():
        print(f"this CPU has no AVX-512 (or torch no oneDNN): both sides of {args.switch} take the same path")
    if args.switch in ("c-attention", "c-sampling", "c-layer-norm") and not cpu_kernels.available():
        why = cpu_kernels.unavailable_reason()
        print(f"the C kernels are not available ({why}): both sides of {args.switch} take PyTorch's path")
    if args.switch in PER_PROCESS:
        off, on, diff = _two_processes(args, off_label, on_label)
        _report(args, off_label, on_label, off, on, diff)
        return
    model, x = _model_and_input(args)

    def forward(on: bool) -> tuple[float, torch.Tensor]:
        setter(on)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model(x).logits
        return time.perf_counter() - t0, out

    try:
        _, ref = forward(False)  # warm-up of both paths
        _, new = forward(True)
        diff = (ref.sigmoid() - new.sigmoid()).abs().max().item()
        off, on = [], []
        for i in range(args.pairs):
            off.append(forward(False)[0])
            on.append(forward(True)[0])
            _print_pair(i, off_label, on_label, off[-1], on[-1])
    finally:
        setter(True)
    _report(args, off_label, on_label, off, on, diff)


def _report(
    args: argparse.Namespace, off_label: str, on_label: str, off: list[float], on: list[float], diff: float
) -> None:
    ratio = statistics.median(a / b for a, b in zip(off, on))
    print(
        f"{args.variant} {args.size}²: {off_label} median {statistics.median(off):.2f} s, {on_label} median "
        f"{statistics.median(on):.2f} s, {off_label}/{on_label} {ratio:.3f} (median of pairs); "
        f"max |prob difference| {diff:.1e}"
    )


if __name__ == "__main__":
    main()
