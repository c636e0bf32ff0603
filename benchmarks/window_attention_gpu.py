"""swin_v1_l's Swin blocks on a GPU: the Triton window-attention kernel vs the gather / SDPA / scatter path.

For each stage of a BiRefNet forward at ``--size`` (the full-size pass and the half-size pass of the
multi-scale input) and each batch size, it builds one Swin block of that stage's width and heads
(random weights, converted to ``--dtype``), and times the block's forward on a plain and on a shifted
window layout with :data:`birefnet.models.backbones.swin.WINDOW_KERNEL` on (one Triton kernel reads q/k/v
in token order and writes each query's output to its token row) and off (gather, SDPA per sample and
mask group, copies, scatter). Each is captured in a CUDA graph and replayed, so launch costs do not count;
medians of CUDA-event-timed replays. It also reports each path's error against the same block in
float32 on the SDPA path (max |Δ| over max |reference|), and the tile the autotuner chose per shape.
Prints per-block times, each stage's total (blocks × depth, half of them shifted) and their ratio.

    python benchmarks/window_attention_gpu.py [--size 1024] [--batches 1 8] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

from birefnet.models import _swin_triton
from birefnet.models.backbones import swin

# swin_v1_l: (channels, heads, depth) per stage; window 12; stage s sees the input at stride 4 * 2**s.
STAGES = [(192, 6, 2), (384, 12, 2), (768, 24, 18), (1536, 48, 2)]
WINDOW = 12


def graph_median_ms(fn, runs: int = 20) -> float:
    """Median ms of replays of ``fn`` captured in a CUDA graph (after two warm-up calls on a side stream)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"))
    args = ap.parse_args()
    if not torch.cuda.is_available() or not _swin_triton.AVAILABLE:
        raise SystemExit("needs a CUDA device and Triton")
    dtype = getattr(torch, args.dtype)
    device = torch.device("cuda")
    torch.manual_seed(0)
    totals = {"kernel": 0.0, "sdpa": 0.0}
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  {args.dtype}  size {args.size}")
    print("batch pass  map  C     shift  kernel ms  sdpa ms  ratio   err kernel  err sdpa")
    for batch in args.batches:
        for scale, label in ((1, "full"), (2, "half")):
            for s, (c, heads, depth) in enumerate(STAGES):
                side = -(-args.size // scale // (4 * 2**s))
                reference = swin.SwinBlock(c, heads, WINDOW, 0).eval().to(device)
                with torch.no_grad():
                    for p in reference.parameters():
                        p.normal_(0, 0.02)
                block = copy.deepcopy(reference).to(dtype)
                x32 = torch.randn(batch, side, side, c, device=device)
                x = x32.to(dtype)
                stage_ms = {"kernel": 0.0, "sdpa": 0.0}
                for shift in (0, WINDOW // 2):
                    block.shift = reference.shift = shift
                    lay = swin.window_layout(side, side, WINDOW, shift, device=device, dtype=dtype)
                    lay32 = swin.window_layout(side, side, WINDOW, shift, device=device, dtype=torch.float32)
                    with torch.inference_mode():
                        swin.WINDOW_KERNEL = False
                        ref = reference(x32, lay32)
                        row = {}
                        for name, on in (("kernel", True), ("sdpa", False)):
                            swin.WINDOW_KERNEL = on
                            out = block(x, lay)
                            row[f"err_{name}"] = float((out.float() - ref).abs().max() / ref.abs().max())
                            row[name] = graph_median_ms(lambda blk=block, xx=x, lay=lay: blk(xx, lay))
                            swin.WINDOW_KERNEL = True
                    weight = depth // 2
                    for name in ("kernel", "sdpa"):
                        stage_ms[name] += weight * row[name]
                    print(
                        f"{batch:5d} {label:5s} {side:4d} {c:5d} {shift:5d}  {row['kernel']:9.3f}  {row['sdpa']:7.3f}"
                        f"  {row['sdpa'] / row['kernel']:5.2f}x  {row['err_kernel']:.2e}    {row['err_sdpa']:.2e}",
                        flush=True,
                    )
                for name in totals:
                    totals[name] += stage_ms[name]
    print(
        f"all stages, all batches: kernel {totals['kernel']:.2f} ms, sdpa {totals['sdpa']:.2f} ms, "
        f"{totals['sdpa'] / totals['kernel']:.2f}x"
    )
    cache = getattr(getattr(_swin_triton, "_tuned_kernel", None), "cache", {})
    for key, config in cache.items():
        print(f"autotuned {key}: {config}")


if __name__ == "__main__":
    main()
