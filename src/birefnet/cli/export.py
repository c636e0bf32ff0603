"""``birefnet export onnx --model NAME_OR_PATH -o model.onnx``: ONNX export with a parity check.

Exit codes: 0 exported and checked, 1 the check failed (the file is kept as ``*.failed.onnx``),
2 usage error, model not loadable, or the exporter failed.
"""

from __future__ import annotations

import argparse
import sys

from birefnet.cli._common import add_model_flags, positive_int


def add_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="format", metavar="FORMAT", required=True)
    p = sub.add_parser(
        "onnx",
        help="ONNX (dynamic batch/height/width by default), checked against PyTorch with ONNX Runtime",
        description="Export a model to ONNX and check the file against PyTorch with ONNX Runtime.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "graph: input 'input' float32 (B, 3, H, W) normalised RGB ((x/255 - mean)/std, mean/std in the\n"
            "metadata; RGB in [0, 1] with --normalize-in-graph), output 'logits' (B, 1, H, W); sigmoid gives\n"
            "the mask. H and W must be multiples of 32.\n"
            "examples:\n"
            "  birefnet export onnx --model lite -o birefnet-lite.onnx\n"
            "  birefnet export onnx --model general -o general-1024.onnx --static 1024x1024 --half\n"
            "  birefnet export onnx --model lite --weights ./BiRefNet_lite/model.safetensors -o lite.onnx\n"
            "exit codes: 0 ok, 1 parity check failed, 2 usage error / model not loadable / export failed"
        ),
    )
    add_model_flags(p, "model", "weights")
    p.add_argument("-o", "--out", required=True, metavar="FILE", help="the .onnx file to write")
    p.add_argument(
        "--static",
        metavar="HxW",
        help="fix height and width (height x width, e.g. 1024x1024); the batch stays dynamic",
    )
    p.add_argument("--static-batch", action="store_true", default=None, help="fix the batch to 1 as well")
    p.add_argument(
        "--half", action="store_true", default=None, help="float16 weights and compute (float32 I/O)"
    )
    p.add_argument("--opset", type=positive_int, metavar="N", help="ONNX opset (default 18; >= 16)")
    p.add_argument(
        "--normalize-in-graph",
        action="store_true",
        default=None,
        help="put the mean/std normalisation into the graph (input RGB in [0, 1])",
    )
    add_model_flags(p, "patch_order")
    p.add_argument(
        "--no-check", action="store_true", default=None, help="skip the ONNX Runtime vs PyTorch check"
    )
    p.add_argument(
        "--check-size",
        metavar="HxW",
        action="append",
        help="size to check at (repeatable; default the export size and one more for dynamic graphs)",
    )
    p.add_argument(
        "--tolerance", type=float, metavar="R", help="relative-error bound (default 1e-4; 2e-2 --half)"
    )


def _fail(message: str) -> int:
    print(f"birefnet export: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    import time

    from birefnet.export import DEFAULT_OPSET, ExportCheckError, ExportError, _parse_hw, export_onnx

    out = args.out
    if not str(out).endswith(".onnx"):
        return _fail(f"-o {out}: the output file name must end in .onnx")
    try:
        static = _parse_hw(args.static)
        check_sizes = [_parse_hw(s) for s in args.check_size] if args.check_size else None
    except ValueError as e:
        return _fail(str(e))
    if args.static_batch and static is None:
        return _fail(
            "--static-batch needs --static HxW (a fixed batch with dynamic height/width is not offered)"
        )

    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return _fail('ONNX export needs the onnx extra: pip install "birefnet[onnx]"')
    from birefnet import registry
    from birefnet.inference import Predictor
    from birefnet.weights import CheckpointError

    t = time.perf_counter()
    try:
        # The Predictor's loader resolves --model/--weights exactly as `birefnet predict` does.
        predictor = Predictor(
            args.model, weights=args.weights, patch_order=args.patch_order, device="cpu", backend="torch"
        )
    except (CheckpointError, ValueError, KeyError, OSError) as e:
        return _fail(str(e).strip("'\""))
    spec = predictor.spec
    name = spec.name if spec is not None else None
    print(
        f"birefnet: loaded {predictor.name} ({getattr(predictor.model.config, 'backbone', '?')}) in "
        f"{time.perf_counter() - t:.1f} s; exporting...",
        file=sys.stderr,
    )
    if spec is not None and not spec.commercial:
        print(
            f"note: {spec.name} weights are licensed {spec.license} (not for commercial use)", file=sys.stderr
        )
    try:
        report = export_onnx(
            predictor.model,
            out,
            dynamic=not args.static_batch,
            static_size=static,
            half=bool(args.half),
            opset=args.opset or DEFAULT_OPSET,
            check=not args.no_check,
            normalize=bool(args.normalize_in_graph),
            name=name,
            mean=predictor.mean,
            std=predictor.std,
            tolerance=args.tolerance,
            check_sizes=check_sizes,
            metadata={"birefnet.source": str(args.weights or args.model or registry.DEFAULT_MODEL)},
        )
    except ExportCheckError as e:
        print(e.report.summary(), file=sys.stderr)
        print(f"birefnet export: error: {e}", file=sys.stderr)
        return 1
    except (ExportError, ValueError) as e:
        return _fail(str(e))
    print(report.summary())
    return 0
