"""``birefnet models``: list the released checkpoints of the weights registry."""

from __future__ import annotations

import argparse


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    import json

    from birefnet.registry import DEFAULT_MODEL, list_models

    rows = list_models()
    if args.json:
        print(json.dumps([{**r.__dict__, "extra": None} for r in rows], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"BiRefNet checkpoints (default: {DEFAULT_MODEL})")
    for col in (
        "name",
        "hub repo",
        "backbone",
        "size (WxH)",
        "resolution",
        "patch order",
        "licence",
        "description",
    ):
        table.add_column(col, overflow="fold")
    for r in rows:
        order = r.patch_order + ("" if r.order_certain else " (?)")
        lic = r.license if r.commercial else f"[red]{r.license}[/red]"
        table.add_row(
            r.name, r.repo_id, r.backbone, f"{r.size[0]}x{r.size[1]}", r.resolution, order, lic, r.description
        )
    Console().print(table)
    print("(?) patch order inferred from the upload date; see birefnet/registry.py")
    return 0
