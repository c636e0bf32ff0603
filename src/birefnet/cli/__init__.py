"""The ``birefnet`` command: one entry point, one module per subcommand.

Each subcommand module exposes ``add_parser(subparsers)`` (registers its flags, all defaulting
to None so the library owns defaults) and ``run(args) -> int`` (the exit code). Modules are only
imported when their subcommand runs, so ``birefnet --version`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys

from birefnet import __version__

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "predict": ("birefnet.cli.predict", "remove backgrounds / predict masks for images and folders"),
    "models": ("birefnet.cli.models", "list the released checkpoints known to the weights registry"),
    "convert": ("birefnet.cli.convert", "convert a checkpoint to model.safetensors + config.json"),
    "eval": ("birefnet.cli.evaluate", "evaluate predicted masks with the official DIS metrics"),
    "train": ("birefnet.cli.train", "train or fine-tune a model"),
    "make-synthetic": ("birefnet.cli.synthetic", "write a synthetic DIS-like dataset"),
    "export": ("birefnet.cli.export", "export a model to ONNX"),
    "serve": ("birefnet.cli.serve", "serve the HTTP API and web page"),
}


def _available() -> dict[str, tuple[str, str]]:
    found = {}
    for name, (module, help_) in SUBCOMMANDS.items():
        if importlib.util.find_spec(module) is not None:
            found[name] = (module, help_)
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="birefnet", description="BiRefNet: background removal and DIS.")
    parser.add_argument("--version", action="version", version=f"birefnet {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in _available().items():
        p = sub.add_parser(name, help=help_, description=help_)
        importlib.import_module(module).add_parser(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
