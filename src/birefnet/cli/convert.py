"""``birefnet convert SRC DST``: any supported checkpoint -> DST/model.safetensors + DST/config.json."""

from __future__ import annotations

import argparse
import sys


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src", help="checkpoint file (.pth/.pt/.bin/.safetensors), folder, registry name or hub id"
    )
    parser.add_argument("dst", help="output folder (created); receives model.safetensors and config.json")
    parser.add_argument(
        "--patch-order",
        choices=["current", "legacy"],
        default=None,
        help="inward-reference patch order of the weights (not visible in the tensors; default: registry or current)",
    )
    parser.add_argument("--half", action="store_true", help="store float16 weights (half the size)")


def run(args: argparse.Namespace) -> int:
    import torch

    from birefnet.weights import CheckpointError, load_model, save_pretrained

    overrides = {"patch_order": args.patch_order} if args.patch_order else {}
    try:
        model = load_model(args.src, **overrides)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.half:
        model = model.to(torch.float16)
    out = save_pretrained(model, args.dst, metadata={"converted_from": str(args.src)})
    report = model.load_report
    print(f"{args.src} -> {out}/model.safetensors + config.json")
    print(f"  architecture ({report.config_source}): {model.config.to_dict()}")
    if report.stripped_prefixes:
        print(f"  stripped prefixes: {', '.join(report.stripped_prefixes)}")
    if report.cast_from:
        print(f"  cast from {', '.join(report.cast_from)}")
    return 0
