"""Time the 20 deformable convolutions of a BiRefNet (swin_v1_l) forward at 1024x1024.

BiRefNet's ASPPDeformable blocks (one in the squeeze module at stride 32, one in each of the four decoder
blocks at strides 32, 16, 8, 4) each hold four ``DeformableConv2d``: ``aspp1`` (k=1) and
``aspp_deforms`` (k=1, 3, 7), padding k//2, 64 channels in and 256 out, batch 1. For each of them this
script times

* ``deform_conv2d`` alone (the sampling + GEMM that replaces torchvision's op),
* the whole ``DeformableConv2d`` module (plus its offset and modulator convolutions), and
* a plain ``F.conv2d`` with the same input, weight and padding,

and prints the totals, the per-size seconds, and the ratios against the plain convolution (the
overhead of deformable sampling).

Usage::

    python benchmarks/deform_conv.py [--size 1024] [--repeat 3] [--threads N] [--dtype float32] [--cpu-time]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from birefnet.models.deform_conv import DeformableConv2d, deform_conv2d

# (label, stride) of the five ASPPDeformable blocks, and the kernel sizes of each block's four branches.
BLOCKS = [("squeeze", 32), ("decoder4", 32), ("decoder3", 16), ("decoder2", 8), ("decoder1", 4)]
KERNELS = [1, 1, 3, 7]


CLOCK: Callable[[], float] = time.perf_counter


def best_time(fn: Callable[..., torch.Tensor], *args: object, repeat: int, **kwargs: object) -> float:
    """Shortest time of ``repeat`` calls after one warm-up call, in seconds.

    The minimum, not the median: on a shared machine other processes only ever add time.
    """
    fn(*args, **kwargs)
    times = []
    for _ in range(repeat):
        start = CLOCK()
        fn(*args, **kwargs)
        times.append(CLOCK() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="network input size (square)")
    parser.add_argument("--channels", type=int, default=64, help="input channels of the deformable convs")
    parser.add_argument("--out-channels", type=int, default=256, help="output channels")
    parser.add_argument(
        "--repeat", type=int, default=3, help="timed calls per convolution (the fastest counts)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])
    parser.add_argument("--offset-scale", type=float, default=2.0, help="std of the random offsets, pixels")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with the process CPU clock instead of the wall clock: steadier on a machine that others "
        "are using, meaningful with --threads 1",
    )
    args = parser.parse_args()
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    clock = "process CPU time" if args.cpu_time else "wall time"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}, input {args.size}², {clock}"
    )
    print(f"{'conv':<16}{'map':>9}{'op s':>9}{'module s':>10}{'conv2d s':>10}{'op/conv':>9}{'mod/conv':>9}")

    totals = {"op": 0.0, "module": 0.0, "conv": 0.0}
    per_size: dict[int, dict[str, float]] = {}
    with torch.inference_mode():
        for label, stride in BLOCKS:
            side = args.size // stride
            x = torch.randn(1, args.channels, side, side, dtype=dtype)
            for k in KERNELS:
                module = DeformableConv2d(args.channels, args.out_channels, k, padding=k // 2).to(dtype)
                # Trained-looking offsets for the module too (at initialisation they are all zero).
                torch.nn.init.normal_(module.offset_conv.bias, std=args.offset_scale)
                weight = module.regular_conv.weight
                offset = torch.randn(1, 2 * k * k, side, side, dtype=dtype) * args.offset_scale
                mask = torch.rand(1, k * k, side, side, dtype=dtype) * 2
                pad = k // 2
                t_op = best_time(deform_conv2d, x, offset, weight, padding=pad, mask=mask, repeat=args.repeat)
                t_module = best_time(module, x, repeat=args.repeat)
                t_conv = best_time(F.conv2d, x, weight, padding=pad, repeat=args.repeat)
                print(
                    f"{label + f' k={k}':<16}{f'{side}x{side}':>9}{t_op:>9.4f}{t_module:>10.4f}{t_conv:>10.4f}"
                    f"{t_op / t_conv:>9.2f}{t_module / t_conv:>9.2f}"
                )
                for key, value in (("op", t_op), ("module", t_module), ("conv", t_conv)):
                    totals[key] += value
                    per_size.setdefault(side, {"op": 0.0, "module": 0.0, "conv": 0.0})[key] += value

    print("\nper map size (all convs of that size):")
    print(f"{'map':>9}{'op s':>9}{'module s':>10}{'conv2d s':>10}{'op/conv':>9}{'mod/conv':>9}")
    for side, t in per_size.items():
        print(
            f"{f'{side}x{side}':>9}{t['op']:>9.4f}{t['module']:>10.4f}{t['conv']:>10.4f}"
            f"{t['op'] / t['conv']:>9.2f}{t['module'] / t['conv']:>9.2f}"
        )
    print(
        f"\ntotal of {len(BLOCKS) * len(KERNELS)} convs: deform_conv2d {totals['op']:.3f} s, "
        f"DeformableConv2d {totals['module']:.3f} s, plain conv2d {totals['conv']:.3f} s; "
        f"op/conv {totals['op'] / totals['conv']:.2f}, module/conv {totals['module'] / totals['conv']:.2f}"
    )


if __name__ == "__main__":
    main()
