"""Opt-in inference options: speed against the exact fp32 forward, and how much the outputs change.

For each option (``--options``; default: channels-last, int8, channels-last+int8, bf16, fp16,
compile) it prints, measured in one run on this machine:

- speed: median forward time of a random-weight model of ``--variant`` at ``--size`` (after
  warm-up), and its ratio to the plain fp32 forward timed in the same run; for ``compile`` also the
  first call (compilation) time;
- output difference on the shared fixtures' inputs (``../shared/reference/fixtures``, models
  built from the deterministic official-format weights): max |p_option - p_fp32| over the
  probabilities, and the fraction of pixels whose 0.5-threshold decision changes.

    python benchmarks/options.py                                  # swin_v1_t at 512x512
    python benchmarks/options.py --variant swin_v1_l --size 1024 --options channels-last int8

bf16/fp16 run under CPU autocast (the Predictor's ``precision``); bf16-weights/fp16-weights convert the
whole model instead (the Predictor's ``half-weights``). On CPUs without native bf16/fp16 arithmetic
(AVX2 only) they are emulated and slow, which the table then shows.
Set BIREFNET_SHARED to the reference folder when it is not ../shared beside the checkout.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

from birefnet import BiRefNet, BiRefNetConfig
from birefnet.models.optimize import optimize_for_inference

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("BIREFNET_SHARED", ROOT.parent / "shared")).resolve() / "reference"
FIXTURES = ("swin_v1_t_eval_256", "swin_v1_t_opts_eval_256", "pvt_v2_b0_eval_320x256", "vgg16_eval_256")
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def runner(model: torch.nn.Module, option: str):
    """A callable x -> logits for ``option`` ("fp32", "bf16", "fp16" or optimisation names joined by '+')."""
    if option.endswith("_weights") and option[:4] in AUTOCAST:  # the whole model in bf16/fp16 (half-weights)
        dtype = AUTOCAST[option[:4]]
        model.to(dtype)
        return lambda x: model(x.to(dtype)).logits.float()
    if option in AUTOCAST:
        dtype = AUTOCAST[option]

        def run(x):
            with torch.autocast("cpu", dtype=dtype):
                return model(x).logits.float()

        return run
    forward = optimize_for_inference(model, () if option == "fp32" else option.split("+"))
    return lambda x: forward(x).logits


def time_option(variant: str, size: int, option: str, runs: int, warmup: int) -> tuple[float, float]:
    """(median forward seconds, first-call seconds) of a random-weight model."""
    torch.manual_seed(0)
    model = BiRefNet(BiRefNetConfig(backbone=variant)).eval()
    run = runner(model, option)
    x = torch.randn(1, 3, size, size)
    times = []
    with torch.inference_mode():
        t0 = time.perf_counter()
        run(x)
        first = time.perf_counter() - t0
        for i in range(max(0, warmup - 1) + runs):
            t0 = time.perf_counter()
            run(x)
            if i >= max(0, warmup - 1):
                times.append(time.perf_counter() - t0)
    return statistics.median(times), first


def fixture_models():
    """(name, model, input) for each shared eval fixture, or [] when the reference is absent."""
    if not (REFERENCE / "make_weights.py").is_file():
        return []
    import json

    from safetensors.torch import load_file

    sys.path.insert(0, str(REFERENCE))
    import make_weights

    out = []
    for name in FIXTURES:
        case = json.loads((REFERENCE / "fixtures" / f"{name}.json").read_text())
        tensors = load_file(str(REFERENCE / "fixtures" / f"{name}.safetensors"))
        cfg = BiRefNetConfig.from_official(
            {"bb": case["variant"], **case.get("cfg", {})},
            patch_order=case.get("patch_order", "current"),
            drop_path_rate=0.0,
            dropout=0.0,
        )
        state = make_weights.make_state_dict(case.get("keys", case["variant"]), case["weights_seed"])
        model = BiRefNet(cfg)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
        out.append((name, model.eval(), tensors["input"]))
    return out


def output_difference(option: str, fixtures) -> tuple[float, float]:
    """(max |dp|, fraction of 0.5-decision flips) over all fixtures, against fp32."""
    import copy

    max_abs, flips, pixels = 0.0, 0, 0
    with torch.inference_mode():
        for _, model, x in fixtures:
            ref = model(x).logits.sigmoid()
            p = runner(copy.deepcopy(model), option)(x).float().sigmoid()
            max_abs = max(max_abs, float((p - ref).abs().max()))
            flips += int(((p > 0.5) != (ref > 0.5)).sum())
            pixels += ref.numel()
    return max_abs, flips / max(pixels, 1)


def _error_summary(error: Exception) -> str:
    """A one-line summary of ``error``: its first line, plus the first later line that names an error
    (Inductor's messages start with "backend='inductor' raised:" and name the cause further down)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return ""
    cause = next((line for line in lines[1:] if "Error" in line or "Exception" in line), "")
    return (lines[0] + (" " + cause if cause else ""))[:240]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="swin_v1_t")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument(
        "--options",
        nargs="+",
        default=["channels_last", "int8", "channels_last+int8", "bf16", "fp16", "compile"],
        help="option names; combine optimisations with '+'",
    )
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    options = [o.replace("-", "_") for o in args.options]

    fixtures = fixture_models()
    if not fixtures:
        print(f"(no reference at {REFERENCE}: output differences are skipped)")
    base, _ = time_option(args.variant, args.size, "fp32", args.runs, args.warmup)
    print(f"{args.variant} at {args.size}x{args.size}, {args.threads} threads, fp32 forward {base:.2f} s")
    print(f"{'option':22} {'forward s':>9} {'speed-up':>8} {'first call s':>12} {'max |dp|':>9} {'flips':>9}")
    for option in options:
        try:
            med, first = time_option(args.variant, args.size, option, args.runs, args.warmup)
            diff = output_difference(option, fixtures) if fixtures else (float("nan"), float("nan"))
        except Exception as e:
            traceback.print_exc()  # the whole story on stderr; one line in the table
            print(f"{option:22} failed: {type(e).__name__}: {_error_summary(e)}")
            continue
        print(f"{option:22} {med:9.2f} {base / med:7.2f}x {first:12.1f} {diff[0]:9.2e} {diff[1]:9.2e}")


if __name__ == "__main__":
    main()
