"""``birefnet make-synthetic OUT --n N``: a synthetic DIS-like dataset in the official layout."""

from __future__ import annotations

import argparse


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or WxH, got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 16:
        raise argparse.ArgumentTypeError(f"size must be N or WxH with sides >= 16, got {text!r}")
    return values[0], values[1]


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="dataset folder to write (OUT/im/*.jpg, OUT/gt/*.png)")
    parser.add_argument("--n", type=int, default=None, help="number of samples (default 100)")
    parser.add_argument("--size", type=_size, default=None, help="N or WxH in pixels (default 256)")
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of the set (default 0); use another for a test set"
    )
    parser.add_argument(
        "--format", choices=["jpg", "png"], default=None, help="image file format (default jpg)"
    )


def run(args: argparse.Namespace) -> int:
    import time

    from birefnet.data.synthetic import write_synthetic_dataset

    kwargs = {}
    if args.size is not None:
        kwargs["size"] = args.size
    if args.seed is not None:
        kwargs["seed"] = args.seed
    if args.format is not None:
        kwargs["image_format"] = args.format
    n = args.n if args.n is not None else 100
    t = time.perf_counter()
    out = write_synthetic_dataset(args.out, n, **kwargs)
    print(f"wrote {n} image/mask pairs to {out}/im and {out}/gt in {time.perf_counter() - t:.1f} s")
    return 0
