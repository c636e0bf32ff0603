"""BiRefNet latency, throughput and peak memory on a GPU (issue 6), ready for when one is lent.

For one variant at one size it reports, per mode: latency at batch 1 (median of CUDA-event-timed runs
after warm-up), throughput at batch 8 (images/s), peak GPU memory, and the output difference against
fp32 (max abs on probabilities and the fraction of pixels whose 0.5-threshold decision changes).
Modes: fp32, fp32 with TF32 matmuls, fp16 and bf16 autocast, and bf16 + ``torch.compile`` (compile
time reported separately).

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
import json
import statistics
import time

import torch

MODES = ("fp32", "tf32", "fp16", "bf16", "bf16-compile")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, runs: int, warmup: int) -> list[float]:
    """Seconds per call of fn(), after warm-up (CUDA events on GPUs, perf_counter elsewhere)."""
    for _ in range(warmup):
        fn()
    _sync(device)
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


def _autocast(mode: str, device: torch.device):
    if mode.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if mode == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def main() -> None:
    from birefnet import BiRefNet, BiRefNetConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="swin_v1_l")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--batch", type=int, default=8, help="batch size of the throughput measurement")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on a GPU machine, or pass --device cpu for a smoke run")
    torch.manual_seed(0)
    model = BiRefNet(BiRefNetConfig(backbone=args.variant)).eval().to(device)
    x1 = torch.rand(1, 3, args.size, args.size, device=device)
    xb = torch.rand(args.batch, 3, args.size, args.size, device=device)
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")

    with torch.inference_mode():
        reference = model(x1).logits.float().sigmoid()
    results = []
    for mode in args.modes:
        torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
        torch.backends.cudnn.allow_tf32 = mode == "tf32"
        net = model
        compile_s = None
        if mode.endswith("compile"):
            net = torch.compile(model)
            t0 = time.perf_counter()
            with torch.inference_mode(), _autocast(mode, device):
                net(x1)
            _sync(device)
            compile_s = time.perf_counter() - t0

        def run(x, net=net, mode=mode):
            with torch.inference_mode(), _autocast(mode, device):
                return net(x).logits

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        latency = statistics.median(_timed(lambda: run(x1), device, args.runs, args.warmup))
        batch_s = statistics.median(_timed(lambda: run(xb), device, max(1, args.runs // 2), 2))
        peak_gb = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
        with torch.inference_mode():
            prob = run(x1).float().sigmoid()
        row = {
            "mode": mode,
            "latency_ms_b1": latency * 1000,
            f"images_per_s_b{args.batch}": args.batch / batch_s,
            "peak_gpu_gb": peak_gb,
            "compile_s": compile_s,
            "max_abs_prob_diff": float((prob - reference).abs().max()),
            "decision_flip_fraction": float(((prob > 0.5) != (reference > 0.5)).float().mean()),
        }
        results.append(row)
        print(
            f"{mode:13s} b1 {row['latency_ms_b1']:8.1f} ms   b{args.batch} {args.batch / batch_s:7.1f} img/s   "
            f"peak {peak_gb if peak_gb is None else round(peak_gb, 2)} GB   "
            f"max|dp| {row['max_abs_prob_diff']:.2e}   flips {row['decision_flip_fraction']:.2e}"
            + (f"   compile {compile_s:.0f} s" if compile_s is not None else "")
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"variant": args.variant, "size": args.size, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
