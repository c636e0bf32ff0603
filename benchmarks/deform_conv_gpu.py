"""The 20 deformable convolutions of a 1024² BiRefNet forward on a GPU: fused Triton kernel vs gather + GEMM.

For each shape of the five ASPPDeformable blocks (64 channels in, 256 out, kernels 1, 1, 3, 7 at strides
32, 32, 16, 8, 4 of the input) and each batch size, it times ``deform_conv2d`` with
``deform_conv.USE_TRITON`` on (one fused kernel: sampling and product, no column tensor) and off (the
``embedding_bag`` gather, columns in memory, one GEMM), as medians of CUDA-event-timed runs, and checks
both against a float64 evaluation of the same inputs (relative error ‖out − ref‖ / ‖ref‖, on fresh random
inputs with offsets of a few pixels, some of them far outside the map). Prints per-shape times, totals and
their ratio, and the tile the autotuner chose.

    python benchmarks/deform_conv_gpu.py [--size 1024] [--batches 1 8] [--dtypes bfloat16 float32]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from birefnet.models import _deform_triton, deform_conv

BLOCKS = [("squeeze", 32), ("decoder4", 32), ("decoder3", 16), ("decoder2", 8), ("decoder1", 4)]
KERNELS = [1, 1, 3, 7]


def cuda_median_ms(fn, runs: int = 20, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def inputs(batch: int, side: int, k: int, channels: int, out_channels: int, dtype: torch.dtype):
    g = torch.Generator(device="cuda").manual_seed(batch * 1000 + side * 10 + k)
    x = torch.randn(batch, channels, side, side, device="cuda", generator=g)
    offset = torch.randn(batch, 2 * k * k, side, side, device="cuda", generator=g) * 2
    offset[:, :, ::17, ::13] *= 40  # some samples far outside the map (they must read zero)
    mask = 2 * torch.rand(batch, k * k, side, side, device="cuda", generator=g)
    weight = torch.randn(out_channels, channels, k, k, device="cuda", generator=g) / (channels * k * k) ** 0.5
    return [t.to(dtype) for t in (x, offset, weight)] + [mask.to(dtype)]


def run(x, offset, weight, mask, k: int, fused: bool) -> torch.Tensor:
    deform_conv.USE_TRITON = fused
    with torch.inference_mode():
        return deform_conv.deform_conv2d(x, offset, weight, None, padding=k // 2, mask=mask)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--out-channels", type=int, default=256)
    args = ap.parse_args()
    if not torch.cuda.is_available() or not _deform_triton.AVAILABLE:
        raise SystemExit("needs a CUDA device and Triton")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__}", flush=True)
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for batch in args.batches:
            total = {True: 0.0, False: 0.0}
            for label, stride in BLOCKS:
                side = args.size // stride
                for k in sorted(set(KERNELS)):
                    count = KERNELS.count(k)
                    tensors = inputs(batch, side, k, args.channels, args.out_channels, dtype)
                    ref = run(*(t.double() for t in tensors), k, fused=False)
                    row = []
                    for fused in (False, True):
                        try:
                            out = run(*tensors, k, fused)
                            err = float((out.double() - ref).norm() / ref.norm())
                            ms = cuda_median_ms(lambda t=tensors, k=k, fused=fused: run(*t, k, fused))
                        except Exception as exc:  # report and go on
                            row.append(
                                f"{'fused' if fused else 'gather'} FAILED {type(exc).__name__}: {exc}"[:300]
                            )
                            continue
                        total[fused] += ms * count
                        row.append(f"{'fused' if fused else 'gather'} {ms:7.3f} ms err {err:.1e}")
                    print(
                        f"{dtype_name} b{batch} {label:8s} {side:3d}² k{k} x{count}: " + " | ".join(row),
                        flush=True,
                    )
            ratio = total[False] / total[True] if total[True] else float("nan")
            print(
                f"== {dtype_name} b{batch}: 20 convs gather {total[False]:.2f} ms, fused {total[True]:.2f} ms, "
                f"{ratio:.2f}x",
                flush=True,
            )
    cache = getattr(getattr(_deform_triton, "_tuned_kernel", None), "cache", {})
    for key, config in cache.items():
        print(f"autotuned {key}: {config}")
    deform_conv.USE_TRITON = True


if __name__ == "__main__":
    main()
