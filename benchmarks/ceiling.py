"""How fast the forward could be with the kernels it calls: each compute kernel timed alone, at its best.

``benchmarks/speed.py`` says how far the forward is from the machine's GEMM peak. This script asks
whether the gap is ours (glue between kernels, layouts, memory traffic) or the kernels' own: it records
every compute call of one forward (matrix products, convolutions, attention, the deformable sampling)
with a ``TorchDispatchMode``, with its time inside the forward, then replays each distinct call alone
on fresh tensors of the same shapes and strides (warmed up, best of ``--repeats``). The isolated best is
what that kernel does on this machine at that shape with its operands hot in the cache; the sum of
those bests over the forward is a floor for a forward built on these kernels.

It prints, per kernel group: calls, time inside the forward, isolated best, and the rate of the
isolated best (counting every FLOP the kernel executes, the deformable products included); then the
forward time, the GEMM probe (as speed.py measures it) and two fractions of it, by the model's
counted FLOPs (speed.py's count):

* ``forward``: the measured forward, as in speed.py;
* ``kernels only``: if the forward were nothing but these kernels, each at its isolated best; the
  highest fraction of peak the forward can reach without faster kernels.

    python benchmarks/ceiling.py --variant swin_v1_l --size 1024
    python benchmarks/ceiling.py --variant swin_v1_t --size 1024 --calls 12   # + the slowest calls

Weights are random (speed does not depend on them; nothing is downloaded).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from speed import count_flops, gemm_gflops  # a sibling script, not a package

# Compute kernels by overload packet name -> group. Everything else (copies, gathers, elementwise work,
# norms, resizes) is the glue this script measures as "forward minus kernels".
GROUPS = {
    "mkldnn._linear_pointwise": "GEMM (linear, deformable products)",
    "aten.addmm": "GEMM (linear, deformable products)",
    "aten.addmm_": "GEMM (linear, deformable products)",
    "aten.mm": "GEMM (linear, deformable products)",
    "aten.bmm": "GEMM (linear, deformable products)",
    "aten.baddbmm": "GEMM (linear, deformable products)",
    "aten.conv2d": "convolution",
    "aten.convolution": "convolution",
    "aten.scaled_dot_product_attention": "attention (SDPA or matmul)",
    # the streamed Swin's attention products (swin._attend); under inference_mode a dispatch mode sees
    # matmul itself, not the bmm it becomes
    "aten.matmul": "attention (SDPA or matmul)",
    "aten.embedding_bag": "deformable sampling (embedding_bag)",
}


@dataclass(frozen=True)
class TensorSpec:
    """Shape, strides and dtype of a tensor argument; integer tensors keep their values (indices)."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    values: torch.Tensor | None = field(default=None, compare=False, hash=False)
    packed: bool = False  # a Linear weight in oneDNN's blocked layout (onednn.packed_weight)


def _spec(value, keep_values: bool = False):
    """``value`` with its tensors replaced by :class:`TensorSpec` (integer values copied if ``keep_values``)."""
    if isinstance(value, torch.Tensor):
        if value.is_mkldnn:  # opaque blocked layout: no strides to replay, packed again instead
            return TensorSpec(tuple(value.shape), (), value.dtype, packed=True)
        keep = value.clone() if keep_values and not value.is_floating_point() else None
        return TensorSpec(tuple(value.shape), tuple(value.stride()), value.dtype, keep)
    if isinstance(value, (list, tuple)):
        return type(value)(_spec(v, keep_values) for v in value)
    return value


def _key(value):
    """A hashable key of a spec (integer tensors by shape only: same cost, different values)."""
    if isinstance(value, TensorSpec):
        return ("T", value.shape, value.stride, value.dtype, value.packed)
    if isinstance(value, (list, tuple)):
        return tuple(_key(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _key(v)) for k, v in value.items()))
    return value


def _make(value):
    """Fresh operands for a spec: random floats with the recorded strides, recorded integer values."""
    if isinstance(value, TensorSpec):
        if value.packed:
            from birefnet.models.onednn import packed_weight

            return packed_weight(torch.randn(value.shape).to(value.dtype))
        if value.values is not None:
            return value.values.clone()
        extent = 1 + sum((n - 1) * s for n, s in zip(value.shape, value.stride) if n > 0)
        base = torch.randn(max(extent, 1)).to(value.dtype)
        return base.as_strided(value.shape, value.stride)
    if isinstance(value, (list, tuple)):
        return type(value)(_make(v) for v in value)
    return value


def _flops(func, args, out) -> float:
    """FLOPs one call executes (a multiply-add counts 2)."""
    name = func._schema.name.replace("::", ".")
    if name == "mkldnn._linear_pointwise":  # (x, weight, ...) or .binary (x, other, weight, ...)
        weight = args[2] if func._overloadname == "binary" else args[1]
        return 2.0 * args[0].shape[0] * args[0].shape[1] * weight.shape[0]
    if name in ("aten.mm", "aten.addmm", "aten.addmm_"):
        a, b = (args[0], args[1]) if name == "aten.mm" else (args[1], args[2])
        return 2.0 * a.shape[0] * a.shape[1] * b.shape[1]
    if name in ("aten.bmm", "aten.baddbmm"):
        a, b = (args[0], args[1]) if name == "aten.bmm" else (args[1], args[2])
        return 2.0 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
    if name in ("aten.conv2d", "aten.convolution"):  # weight (O, C / groups, kh, kw)
        w = args[1].shape
        return 2.0 * out.numel() * w[1] * w[2] * w[3]
    if name == "aten.matmul":  # (..., M, K) @ (..., K, N)
        return 2.0 * out.numel() * args[0].shape[-1]
    if name == "aten.scaled_dot_product_attention":
        q, k = args[0].shape, args[1].shape  # (B, H, L, E), (B, H, S, E)
        return 4.0 * q[0] * q[1] * q[2] * k[2] * q[3]
    return 0.0


class Recorder(TorchDispatchMode):
    """Times every compute call of the forward and keeps its operand specs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict = defaultdict(lambda: {"n": 0, "in_forward": 0.0, "flops": 0.0})
        self.specs: dict = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.replace("::", ".")
        if name not in GROUPS:
            return func(*args, **kwargs)
        t0 = time.perf_counter()
        out = func(*args, **kwargs)
        dt = time.perf_counter() - t0
        args_s, kwargs_s = _spec(args), {k: _spec(v) for k, v in kwargs.items()}
        key = (str(func), _key(args_s), _key(kwargs_s))
        call = self.calls[key]
        call["n"] += 1
        call["in_forward"] += dt
        if key not in self.specs:  # first call of this signature: keep what the replay needs
            first = out[0] if isinstance(out, (tuple, list)) else out
            call["flops"] = _flops(func, args_s, first)
            call["group"] = GROUPS[name]
            call["label"] = f"{name} {[tuple(a.shape) for a in args_s if isinstance(a, TensorSpec)]}"
            kept = _spec(args, keep_values=True), {k: _spec(v, keep_values=True) for k, v in kwargs.items()}
            self.specs[key] = (func, *kept)
        return out


def isolated_best(func, args_s, kwargs_s, repeats: int) -> float:
    """Best time of one call on fresh operands with the recorded shapes (warmed up once)."""
    args, kwargs = _make(args_s), {k: _make(v) for k, v in kwargs_s.items()}
    func(*args, **kwargs)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        func(*args, **kwargs)
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="swin_v1_l")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3, help="isolated runs per distinct call (best counts)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--calls", type=int, default=0, help="also list the N calls with the most time lost")
    args = ap.parse_args(argv)

    from birefnet import BiRefNet, BiRefNetConfig

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = BiRefNet(BiRefNetConfig(backbone=args.variant)).eval()
    x = torch.randn(1, 3, args.size, args.size)
    with torch.inference_mode():
        model(x)  # warm-up
        probe_before = gemm_gflops(args.threads, repeats=3)
        forwards = []
        for _ in range(2):
            t0 = time.perf_counter()
            model(x)
            forwards.append(time.perf_counter() - t0)
        recorder = Recorder()
        t0 = time.perf_counter()
        with recorder:
            model(x)
        recorded_forward = time.perf_counter() - t0
        best: dict = {}
        for key, (func, args_s, kwargs_s) in recorder.specs.items():
            best[key] = isolated_best(func, args_s, kwargs_s, args.repeats)
        probe_after = gemm_gflops(args.threads, repeats=3)
    counted = count_flops(model, x) / 1e9
    forward = statistics.median(forwards)
    peak = max(probe_before, probe_after)

    groups: dict = defaultdict(lambda: {"n": 0, "in_forward": 0.0, "best": 0.0, "flops": 0.0})
    for key, call in recorder.calls.items():
        g = groups[call["group"]]
        g["n"] += call["n"]
        g["in_forward"] += call["in_forward"]
        g["best"] += best[key] * call["n"]
        g["flops"] += call["flops"] * call["n"]
    kernels_best = sum(g["best"] for g in groups.values())
    kernels_in_forward = sum(g["in_forward"] for g in groups.values())

    print(f"{args.variant} at {args.size}², fp32, batch 1, {args.threads} threads")
    print(
        f"{'kernel group':38} {'calls':>6} {'in forward s':>12} {'alone s':>8} {'GFLOP':>7} {'alone GF/s':>10}"
    )
    for name, g in sorted(groups.items(), key=lambda kv: -kv[1]["best"]):
        rate = f"{g['flops'] / 1e9 / g['best']:10.1f}" if g["flops"] else f"{'-':>10}"
        gflop = f"{g['flops'] / 1e9:7.1f}" if g["flops"] else f"{'-':>7}"
        print(f"{name:38} {g['n']:6d} {g['in_forward']:12.3f} {g['best']:8.3f} {gflop} {rate}")
    print(f"{'all kernels':38} {'':6} {kernels_in_forward:12.3f} {kernels_best:8.3f}")
    print(
        f"forward {forward:.2f} s (median of 2), of which outside the kernels ~{forward - kernels_in_forward:.2f} s "
        f"(the recorded forward took {recorded_forward:.2f} s: recording costs time between calls)"
    )
    print(f"GEMM probe {peak:.1f} GFLOP/s (best of before/after: {probe_before:.1f}, {probe_after:.1f})")
    print(f"counted FLOPs {counted:.0f} GFLOP (speed.py's count)")
    print(f"fraction of peak, forward:       {counted / forward / peak:6.1%}")
    print(f"fraction of peak, kernels only:  {counted / kernels_best / peak:6.1%}")
    if args.calls:
        print(f"calls losing the most time in the forward against their isolated best (top {args.calls}):")
        lost = sorted(
            recorder.calls.items(), key=lambda kv: -(kv[1]["in_forward"] - best[kv[0]] * kv[1]["n"])
        )
        for key, call in lost[: args.calls]:
            print(
                f"  {call['n']:4d}x {call['in_forward']:7.3f} s in forward, {best[key] * call['n']:7.3f} s alone"
                f"  {call['label']}"
            )


if __name__ == "__main__":
    main()
