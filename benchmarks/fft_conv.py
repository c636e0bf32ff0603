"""The offset convolution of a 7x7 deformable branch: direct (``F.conv2d``) against FFT tiles.

For each map size, alternating the two forms: median times, their ratio, and each one's largest difference
from the float64 convolution relative to the largest output. The FFT time includes making the kernel's
spectrum, as the forward does in every call (``birefnet.models.fft_conv``).

    python benchmarks/fft_conv.py                      # 64 -> 147 channels, 7x7, maps 32² to 256²
    python benchmarks/fft_conv.py --sizes 256 --runs 9
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from birefnet.models import fft_conv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    ap.add_argument("--in-channels", type=int, default=64)
    ap.add_argument("--out-channels", type=int, default=147, help="2·49 offsets + 49 modulation channels")
    ap.add_argument("--kernel", type=int, default=7)
    ap.add_argument("--fft-size", type=int, default=fft_conv.FFT_SIZE, help="transform size N of the tiles")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    k, pad = args.kernel, args.kernel // 2
    w = torch.randn(args.out_channels, args.in_channels, k, k, generator=g) * 0.02
    b = torch.randn(args.out_channels, generator=g)
    n = args.fft_size
    print(f"{args.in_channels} -> {args.out_channels} channels, {k}x{k}, {args.threads} threads, N = {n}")
    print(f"{'map':>5} {'direct ms':>10} {'FFT ms':>8} {'direct/FFT':>10} {'err direct':>11} {'err FFT':>9}")
    for size in args.sizes:
        x = torch.randn(1, args.in_channels, size, size, generator=g).contiguous(
            memory_format=torch.channels_last
        )
        with torch.inference_mode():
            ref = F.conv2d(x.double(), w.double(), b.double(), padding=pad)
            direct, fft = F.conv2d(x, w, b, padding=pad), fft_conv.conv2d(x, w, b, n=n)
            errors = [((y - ref).abs().max() / ref.abs().max()).item() for y in (direct, fft)]
            times: dict[str, list[float]] = {"direct": [], "fft": []}
            for _ in range(args.runs):
                t = time.perf_counter()
                F.conv2d(x, w, b, padding=pad)
                times["direct"].append(time.perf_counter() - t)
                t = time.perf_counter()
                fft_conv.conv2d(x, w, b, n=n)
                times["fft"].append(time.perf_counter() - t)
        td, tf = (statistics.median(times[key]) for key in ("direct", "fft"))
        print(
            f"{size:>4}² {td * 1e3:>10.1f} {tf * 1e3:>8.1f} {td / tf:>9.2f}x {errors[0]:>11.1e} {errors[1]:>9.1e}"
        )


if __name__ == "__main__":
    main()
