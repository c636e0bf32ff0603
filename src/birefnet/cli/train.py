"""``birefnet train --config run.yaml [--set key=value ...] [--resume PATH|auto]``.

Works the same under ``torchrun --nproc_per_node N -m birefnet.cli train ...`` (DDP).
"""

from __future__ import annotations

import argparse
import sys


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", default=None, help="YAML file with the TrainConfig fields to change"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="override one field after the file, e.g. --set optim.lr=1e-5 --set data.size=[512,512] (repeatable)",
    )
    parser.add_argument(
        "--resume",
        default=None,
        metavar="PATH|auto",
        help="continue from a checkpoint folder or run folder; 'auto' = newest checkpoint in out_dir (or start)",
    )
    parser.add_argument("--out-dir", default=None, help="run folder (same as --set out_dir=...)")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config as YAML and exit"
    )


def run(args: argparse.Namespace) -> int:
    import logging
    import os

    from birefnet.data import EmptyDatasetError
    from birefnet.train import ConfigError, load_config, train
    from birefnet.train import checkpoint as ckpt

    if not getattr(args, "verbose", 0):
        # a training run reports its milestones (data found, checkpoints, validation) by default
        logging.getLogger("birefnet").setLevel(logging.INFO)
    overrides = list(args.overrides or [])
    if args.out_dir is not None:
        overrides.append(f"out_dir={args.out_dir}")
    try:
        base = None
        if args.resume is not None and args.config is None and args.resume != "auto":
            base = ckpt.load_training_state(ckpt.find_checkpoint(args.resume))["config"]
        if args.config is None and base is None and not overrides:
            print(
                "error: give --config run.yaml (see configs/), --set overrides, or --resume PATH",
                file=sys.stderr,
            )
            return 2
        config = load_config(args.config, overrides, base=base)
        if args.print_config:
            print(config.to_yaml(), end="")
            return 0
        result = train(config, resume=args.resume)
    except (ConfigError, EmptyDatasetError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return 0
    if result.stopped:
        how = "--resume auto --set max_steps=null" if result.stopped == "max_steps" else "--resume auto"
        print(
            f"stopped ({result.stopped}) at step {result.global_step}, checkpoint {result.last_checkpoint}; "
            f"continue with the same command plus {how}"
        )
    else:
        print(
            f"done: {result.global_step} steps, {result.epochs_completed} epochs; model in {result.final_dir}"
        )
    if result.validation:
        shown = {k: round(v, 4) for k, v in result.validation.items() if k.count("/") == 1}
        print(f"last validation: {shown}")
    return 0
