"""The C kernels of ``birefnet.models.cpu_kernels`` against the PyTorch paths they replace, in one run.

- Window attention: one chunk of ``SwinBlock.forward_streamed`` per Swin stage of swin_v1_l (window 12,
  head width 32; 6, 12, 24 and 48 heads, the chunk sizes of a 1024² forward), PyTorch's ``_attend`` over
  ~2 MB of scores plus the scatter of the outputs against the kernel. GFLOP/s count the two products.
- Deformable sampling: the columns of a 7x7 deformable branch at 256x256 (decoder block 1 of a 1024²
  forward), in the chunks of the inference path, PyTorch's index arithmetic and ``F.embedding_bag``
  against the kernel.
- LayerNorm of gathered rows: for each Swin stage of swin_v1_l at 1024², one block's ``norm1`` over the
  window chunks of the streamed path (``index_select`` then LayerNorm against the kernel), and
  ``PatchMerging``'s 2x2 concatenation and LayerNorm (a permuting copy then LayerNorm against the kernel).

Both sides alternate in one process; the best and the median of ``--runs`` are printed, with each side's
largest error against float64 (attention) or the two sides' difference (sampling).

    python benchmarks/cpu_kernels.py --runs 10
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import torch

from birefnet.models import cpu_kernels, deform_conv
from birefnet.models.backbones import swin

N, D = 144, 32


def _timed(fn: Callable[[], object], runs: int) -> list[float]:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _pytorch_attention(qkv, heads, mask, out, out_rows) -> None:
    """SwinBlock.forward_streamed's PyTorch path for one chunk (all query rows)."""
    windows = qkv.shape[0]
    c = heads * D
    q, k, v = qkv.view(windows, N, 3, heads, D).permute(2, 0, 3, 1, 4).unbind(0)
    per = max(1, swin._SCORES_BYTES // (heads * N * N * qkv.element_size()))
    slots = out_rows.view(windows, -1)
    for a in range(0, windows, per):
        o = swin._attend(q[a : a + per], k[a : a + per], v[a : a + per], mask)
        out.index_copy_(0, slots[a : a + per].reshape(-1), o.transpose(1, 2).reshape(-1, c))


def attention(runs: int) -> None:
    print("window attention (one chunk of 4096 token slots: 28 windows x 144 tokens)")
    print(
        f"{'heads':>5} {'PyTorch ms':>11} {'C ms':>8} {'PyTorch GF/s':>13} {'C GF/s':>7} {'ratio':>6} "
        f"{'err PyTorch':>12} {'err C':>8}"
    )
    g = torch.Generator().manual_seed(0)
    windows = 28
    for heads in (6, 12, 24, 48):
        c = heads * D
        qkv = torch.randn(windows, N, 3 * c, generator=g)
        mask = torch.randn(1, heads, N, N, generator=g)
        out_rows = torch.randperm(windows * N, generator=g)
        ours, theirs = torch.zeros(windows * N, c), torch.zeros(windows * N, c)
        with torch.inference_mode():
            exact64 = torch.zeros(windows * N, c, dtype=torch.float64)
            _pytorch_attention(qkv.double(), heads, mask.double(), exact64, out_rows)
            t_c = _timed(
                functools.partial(cpu_kernels.window_attention, qkv, heads, None, mask, ours, out_rows), runs
            )
            t_p = _timed(functools.partial(_pytorch_attention, qkv, heads, mask, theirs, out_rows), runs)
        scale = exact64.abs().max().item()
        err_c = (ours.double() - exact64).abs().max().item() / scale
        err_p = (theirs.double() - exact64).abs().max().item() / scale
        gflop = windows * heads * N * N * D * 4 / 1e9
        p, k = min(t_p), min(t_c)
        print(
            f"{heads:>5} {p * 1e3:>11.2f} {k * 1e3:>8.2f} {gflop / p:>13.0f} {gflop / k:>7.0f} "
            f"{p / k:>6.2f} {err_p:>12.1e} {err_c:>8.1e}"
        )
        print(
            f"      medians: PyTorch {statistics.median(t_p) * 1e3:.2f} ms, C {statistics.median(t_c) * 1e3:.2f} ms"
        )


def sampling(runs: int) -> None:
    print("deformable sampling, 7x7 branch, 64 channels, 256x256, chunked as at inference")
    g = torch.Generator().manual_seed(0)
    size, k = 256, 7
    x = torch.randn(1, 64, size, size, generator=g).contiguous(memory_format=torch.channels_last)
    both = torch.randn(1, 3 * k * k, size, size, generator=g).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        offset, mask = both[:, : 2 * k * k] * 2, 2 * torch.sigmoid(both[:, 2 * k * k :])
        offset, mask, base_y, base_x = deform_conv._sampling_grid(
            x, offset, mask, (k, k), (1, 1), (k // 2, k // 2), (1, 1), (size, size)
        )
        sampler = deform_conv._GatherSampler(x, 1)
        rows = deform_conv._rows_per_chunk(x, size, size, k * k * 64, 256)

        def run(c_kernel: bool) -> list[torch.Tensor]:
            deform_conv.C_SAMPLING = c_kernel
            return [
                sampler(base_y[r : r + rows], base_x, offset[:, :, r : r + rows], mask[:, :, r : r + rows])
                for r in range(0, size, rows)
            ]

        try:
            diff = max((a - b).abs().max().item() for a, b in zip(run(False), run(True)))
            t_p = _timed(lambda: run(False), runs)
            t_c = _timed(lambda: run(True), runs)
        finally:
            deform_conv.C_SAMPLING = True
    p, c = min(t_p), min(t_c)
    print(
        f"PyTorch {p * 1e3:.1f} ms (median {statistics.median(t_p) * 1e3:.1f}), C {c * 1e3:.1f} ms "
        f"(median {statistics.median(t_c) * 1e3:.1f}), ratio {p / c:.2f}, max |difference| {diff:.1e}"
    )


def _layer_norm_stage(side: int, channels: int, g: torch.Generator, runs: int) -> tuple[float, ...]:
    """(norm1 PyTorch, norm1 C, merge PyTorch, merge C) best seconds and the largest difference, one stage."""
    x = torch.randn(side * side, channels, generator=g)
    norm, merge = torch.nn.LayerNorm(channels), swin.PatchMerging(channels)
    plan = swin._stream_plan(side, side, 12, 6, swin._STREAM_TOKENS)
    index = swin._merge_index(1, side, side)
    half = side // 2

    def norm1(c_kernel: bool) -> list[torch.Tensor]:
        if c_kernel:
            return [
                cpu_kernels.gather_layer_norm(x, i, 1, norm.weight, norm.bias, norm.eps) for *_, i in plan
            ]
        return [norm(x.index_select(0, i)) for *_, i in plan]

    def merged(c_kernel: bool) -> torch.Tensor:
        if c_kernel:
            return cpu_kernels.gather_layer_norm(
                x, index, 4, merge.norm.weight, merge.norm.bias, merge.norm.eps
            )
        grid = x.view(1, half, 2, half, 2, channels).permute(0, 1, 3, 4, 2, 5)
        return merge.norm(grid.reshape(-1, 4 * channels))

    with torch.inference_mode():
        diff = max((a - b).abs().max().item() for a, b in zip(norm1(False), norm1(True), strict=True))
        diff = max(diff, (merged(False) - merged(True)).abs().max().item())
        times = [
            min(_timed(functools.partial(f, c_kernel), runs))
            for f in (norm1, merged)
            for c_kernel in (False, True)
        ]
    return (*times, diff)


def layer_norm(runs: int) -> None:
    print(
        "LayerNorm of gathered rows (swin_v1_l at 1024²: one block's norm1 over its window chunks; patch merging)"
    )
    print(
        f"{'map':>5} {'C':>5}  {'norm1 PyTorch':>14} {'C':>9} {'ratio':>6}  {'merge PyTorch':>14} {'C':>9} {'ratio':>6}  max|diff|"
    )
    g = torch.Generator().manual_seed(0)
    for side, channels in ((256, 192), (128, 384), (64, 768), (32, 1536)):
        p, c, mp, mc, diff = _layer_norm_stage(side, channels, g, runs)
        print(
            f"{side:>4}² {channels:>5}  {p * 1e3:>11.2f} ms {c * 1e3:>6.2f} ms {p / c:>6.2f}"
            f"  {mp * 1e3:>11.2f} ms {mc * 1e3:>6.2f} ms {mp / mc:>6.2f}  {diff:.1e}"
        )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not cpu_kernels.available():
        why = cpu_kernels.unavailable_reason()
        print(f"the C kernels are not available here ({why}); nothing to compare")
        return
    attention(args.runs)
    sampling(args.runs)
    layer_norm(args.runs)


if __name__ == "__main__":
    main()
