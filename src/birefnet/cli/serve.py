"""``birefnet serve``: the HTTP API and web page (FastAPI + uvicorn).

Models are loaded once at start; requests pick one by name (``model`` field; the first is the
default). ``--model`` repeats; ``--model NAME=PATH`` serves a local file under NAME (with a
registry NAME, that model's settings apply, as with ``predict --model NAME --weights PATH``);
``*.onnx`` files run with ONNX Runtime.

Exit codes: 0 stopped normally, 2 usage error or a model could not be loaded.
"""

from __future__ import annotations

import argparse
import sys

from birefnet.cli._common import add_model_flags, positive_float, positive_int


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  birefnet serve                                   # 'general' on http://127.0.0.1:8000\n"
        "  birefnet serve --model lite --model HR --port 8080\n"
        "  birefnet serve --model lite=./BiRefNet_lite/model.safetensors   # offline weights\n"
        "  birefnet serve --model lite=./birefnet-lite.onnx                 # ONNX Runtime\n"
        "  curl -F file=@cat.jpg http://127.0.0.1:8000/v1/remove-background -o cat.png\n"
        "API docs at /docs; web page at /. Listens on 127.0.0.1 unless --host says otherwise."
    )
    m = parser.add_argument_group("models")
    add_model_flags(
        m,
        "model",
        "size",
        "resolution",
        "device",
        "precision",
        "optimize",
        "backend",
        "threads",
        model={
            "action": "append",
            "metavar": "NAME[=PATH]",
            "help": "registry name, checkpoint path, hub id or .onnx file; repeat to serve several "
            "(first = default)",
        },
        size={"help": "model input size (default: each model's training size)"},
    )
    s = parser.add_argument_group("server")
    s.add_argument(
        "--host", metavar="HOST", help="interface to listen on (default 127.0.0.1: this machine only)"
    )
    s.add_argument("--port", type=int, metavar="PORT", help="TCP port (default 8000; 0 = any free port)")
    s.add_argument(
        "--max-batch", type=positive_int, metavar="N", help="requests per forward pass (default 4)"
    )
    s.add_argument(
        "--batch-wait-ms", type=float, metavar="MS", help="wait for more requests to fill a batch (default 5)"
    )
    s.add_argument(
        "--queue-size", type=positive_int, metavar="N", help="requests in progress before 503 (default 16)"
    )
    s.add_argument("--max-upload-mb", type=positive_float, metavar="MB", help="largest upload (default 20)")
    s.add_argument(
        "--max-pixels", type=positive_int, metavar="N", help="largest image in pixels (default 40000000)"
    )
    s.add_argument(
        "--timeout", type=positive_float, metavar="S", help="request time-out in seconds (default 60)"
    )
    s.add_argument(
        "--cors-origin",
        action="append",
        metavar="URL",
        help="allow browser calls from this origin (repeatable)",
    )
    s.add_argument("--no-web", action="store_true", default=None, help="do not serve the web page at /")
    s.add_argument(
        "--log-level", choices=("critical", "error", "warning", "info", "debug"), help="default info"
    )


def _fail(message: str) -> int:
    print(f"birefnet serve: error: {message}", file=sys.stderr)
    return 2


def parse_models(values: list[str] | None) -> list[tuple[str | None, str | None, str]]:
    """``--model`` values -> (label, registry name or None, source).

    ``NAME`` -> (None, None, NAME); ``NAME=PATH`` -> (NAME, NAME, PATH).
    """
    from pathlib import Path

    parsed: list[tuple[str | None, str | None, str]] = []
    for value in values or []:
        if "=" in value and not Path(value).exists():
            label, source = value.split("=", 1)
            if not label or not source:
                raise ValueError(f"--model {value!r}: expected NAME or NAME=PATH")
            parsed.append((label, label, source))
        else:
            parsed.append((None, None, value))
    return parsed


def run(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        return _fail('serving needs the serve extra: pip install "birefnet[serve]"')
    try:
        models = parse_models(args.model)
    except ValueError as e:
        return _fail(str(e))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from birefnet import registry
    from birefnet.inference import Predictor
    from birefnet.serve import ServeSettings, create_app
    from birefnet.weights import CheckpointError

    if not models:
        models = [(None, None, registry.DEFAULT_MODEL)]
    try:
        settings = ServeSettings(
            max_upload_bytes=int((args.max_upload_mb or 20) * 1024 * 1024),
            max_pixels=args.max_pixels or 40_000_000,
            queue_size=args.queue_size or 16,
            max_batch=args.max_batch or 4,
            batch_wait_ms=args.batch_wait_ms if args.batch_wait_ms is not None else 5.0,
            request_timeout=args.timeout or 60.0,
            cors_origins=tuple(args.cors_origin or ()),
            web_page=not args.no_web,
        )
    except ValueError as e:
        return _fail(str(e))
    predictors: dict[str, Predictor] = {}
    for label, name, source in models:
        options = {
            "size": args.size,
            "resolution": args.resolution,
            "device": args.device or "auto",
            "precision": args.precision or "auto",
            "batch_size": settings.max_batch,
            "backend": args.backend,
            "optimize": args.optimize,
        }
        try:
            if name is not None and registry.get(name, None) is not None:
                predictor = Predictor(name, weights=source, **options)
            else:
                predictor = Predictor(source, **options)
        except (CheckpointError, ValueError, KeyError, OSError) as e:
            return _fail(f"{source}: {str(e).strip(chr(39) + chr(34))}")
        key = label or predictor.name
        if key in predictors:
            return _fail(f"two models are named {key!r}; name them with --model NAME=PATH")
        predictors[key] = predictor
        print(f"birefnet: {key}: {predictor.describe()}", file=sys.stderr)
    app = create_app(predictors, settings=settings)
    host = args.host or "127.0.0.1"
    port = 8000 if args.port is None else args.port
    shown = f"[{host}]" if ":" in host else host
    print(f"birefnet: serving on http://{shown}:{port}/ (API docs: /docs); Ctrl-C stops", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level=args.log_level or "info")
    return 0
