"""``birefnet eval``: the official DIS metrics for prediction folders (or a model on a dataset).

    birefnet eval PRED_DIR [PRED_DIR ...] --gt GT_DIR [--json F] [--csv F] [--plot DIR]
                  [--metrics LIST] [--workers N]
    birefnet eval --model NAME_OR_PATH --data DIR [--save-preds DIR] [same output flags]

Several prediction folders are compared side by side (one row / line per folder). ``--data`` is a
dataset in the official layout (``DIR/im`` images, ``DIR/gt`` masks).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

# Display order of the table and CSV columns (issue 5 / expected.json order).
_LOWER_IS_BETTER = {"MAE", "MSE", "HCE"}


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "pred_dirs",
        nargs="*",
        metavar="PRED_DIR",
        help="folders of predicted masks (named like the GT files)",
    )
    parser.add_argument("--gt", metavar="GT_DIR", default=None, help="folder of ground-truth masks")
    parser.add_argument(
        "--model", metavar="NAME_OR_PATH", default=None, help="predict with this model first (needs --data)"
    )
    parser.add_argument(
        "--data", metavar="DIR", default=None, help="dataset in the official layout: DIR/im and DIR/gt"
    )
    parser.add_argument(
        "--save-preds", metavar="DIR", default=None, help="with --model: keep the predicted masks here (PNG)"
    )
    parser.add_argument(
        "--device", default=None, help="with --model: torch device (default: the Predictor's choice)"
    )
    parser.add_argument(
        "--json", metavar="FILE", default=None, help="write summary, curves and per-image values as JSON"
    )
    parser.add_argument(
        "--csv", metavar="FILE", default=None, help="write one row per model, one column per metric"
    )
    parser.add_argument(
        "--plot", metavar="DIR", default=None, help="write PR, F- and E-measure curve PNGs into DIR"
    )
    parser.add_argument(
        "--metrics",
        default=None,
        help="comma-separated subset of S,MAE,E,F,WF,MBA,BIoU,MSE,HCE (default: all; HCE is the slowest)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: all CPUs from 32 image pairs on, else 1)",
    )
    parser.add_argument(
        "--mba-empty",
        choices=("prediction-band", "nan"),
        default=None,
        help="mBA for GTs without boundary: band around the prediction (default) or the official NaN",
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="keep GT skeletons (HCE's slowest part) here between runs, keyed by content (default: "
        "$BIREFNET_CACHE/skeletons, else ~/.cache/birefnet/skeletons)",
    )
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the skeleton cache")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


class _UsageError(Exception):
    pass


def run(args: argparse.Namespace) -> int:
    from birefnet.metrics.evaluate import EvaluationError

    try:
        return _run(args)
    except (_UsageError, EvaluationError, ValueError, OSError) as exc:
        print(f"birefnet eval: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, _UsageError) else 1


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from birefnet.metrics.measures import parse_metrics

    err = Console(stderr=True)
    keys = parse_metrics(args.metrics)  # fail fast on a typo
    if args.workers is not None and args.workers < 1:
        raise _UsageError("--workers must be at least 1")
    if args.no_cache and args.cache_dir is not None:
        raise _UsageError("--cache-dir and --no-cache contradict each other; give one")
    # only HCE uses skeletons: without it, no cache folder is made or read
    cache_dir = _cache_dir(args) if "HCE" in keys else None
    options = {"metrics": keys, "workers": args.workers, "cache_dir": cache_dir}
    if args.mba_empty is not None:
        options["mba_empty"] = args.mba_empty
    if args.model is not None or args.data is not None:
        if args.pred_dirs or args.gt:
            raise _UsageError("give either PRED_DIR... --gt GT_DIR, or --model NAME --data DIR, not both")
        if args.model is None or args.data is None:
            raise _UsageError("--model and --data go together (--data DIR with DIR/im and DIR/gt)")
        results = _evaluate_model(args, options, err)
    else:
        if args.save_preds:
            raise _UsageError("--save-preds only applies with --model")
        if not args.pred_dirs:
            raise _UsageError("give at least one PRED_DIR (or --model NAME --data DIR)")
        if not args.gt:
            raise _UsageError("--gt GT_DIR is required with PRED_DIR")
        results = _evaluate_dirs(args, options, err)
    _report(results, args, err)
    return 0


def _cache_dir(args: argparse.Namespace) -> Path | None:
    from birefnet.metrics.evaluate import default_cache_dir

    if args.no_cache:
        return None
    path = Path(args.cache_dir).expanduser() if args.cache_dir is not None else default_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # said once here, instead of once per GT file in the workers
        print(f"birefnet eval: warning: no skeleton cache ({exc}); use --cache-dir DIR", file=sys.stderr)
        return None
    return path


def _progress(total: int, enabled: bool, label: str):
    """A rich progress bar on stderr; returns (context manager, advance callback)."""
    import contextlib

    if not enabled:
        return contextlib.nullcontext(), None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=__import__("rich.console", fromlist=["Console"]).Console(stderr=True),
        transient=True,
    )
    task = bar.add_task(label, total=total)
    return bar, lambda n: bar.advance(task, n)


def _evaluate_dirs(args: argparse.Namespace, options: dict, err) -> dict:
    from birefnet.metrics.evaluate import evaluate_folders, model_names, pair_folders

    for d in [*args.pred_dirs, args.gt]:
        if not Path(d).is_dir():
            raise _UsageError(f"{d} is not a folder")
    pairing = pair_folders(args.pred_dirs, args.gt)
    for name, missing, extra in zip(model_names(args.pred_dirs), pairing.missing, pairing.extra):
        if missing:
            err.print(
                f"[yellow]{name}: {len(missing)} GT file(s) without prediction, skipped (e.g. {missing[0]})[/]"
            )
        if extra:
            err.print(f"[yellow]{name}: {len(extra)} prediction(s) without GT, ignored (e.g. {extra[0]})[/]")
    bar, advance = _progress(len(pairing.names), not args.no_progress and sys.stderr.isatty(), "evaluating")
    with bar:
        return evaluate_folders(args.pred_dirs, args.gt, pairing=pairing, progress=advance, **options)


def _evaluate_model(args: argparse.Namespace, options: dict, err) -> dict:
    import numpy as np

    from birefnet.metrics.evaluate import EvaluationError, evaluate_arrays, list_masks

    data = Path(args.data)
    im_dir, gt_dir = data / "im", data / "gt"
    if not im_dir.is_dir() or not gt_dir.is_dir():
        raise _UsageError(f"--data {data} must contain im/ (images) and gt/ (masks), the official layout")
    images, gts = list_masks(im_dir), list_masks(gt_dir)
    stems = sorted(set(images) & set(gts), key=lambda s: gts[s].name)
    if not stems:
        raise EvaluationError(f"no image in {im_dir} has a mask with the same name in {gt_dir}")
    if len(stems) < len(gts):
        err.print(f"[yellow]{len(gts) - len(stems)} GT file(s) without image, skipped[/]")
    try:
        from birefnet.inference import Predictor
    except ImportError as exc:
        raise EvaluationError(
            f"--model needs birefnet.inference.Predictor, which is not available ({exc})"
        ) from None
    predictor = Predictor(args.model) if args.device is None else Predictor(args.model, device=args.device)
    save = Path(args.save_preds) if args.save_preds else None
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)
    preds = []
    bar, advance = _progress(len(stems), not args.no_progress and sys.stderr.isatty(), "predicting")
    with bar:
        for start in range(0, len(stems), 8):
            chunk = stems[start : start + 8]
            masks = predictor.predict([str(images[s]) for s in chunk])
            for stem, mask in zip(chunk, masks):
                # the official inference saves probabilities as uint8 by truncating p * 255
                q = (np.clip(np.asarray(mask, dtype=np.float32), 0, 1) * 255).astype(np.uint8)
                preds.append(q)
                if save is not None:
                    _write_png(save / f"{stem}.png", q)
            if advance:
                advance(len(chunk))
    name = Path(str(args.model).rstrip("/")).name or str(args.model)
    bar, advance = _progress(len(stems), not args.no_progress and sys.stderr.isatty(), "evaluating")
    with bar:
        return evaluate_arrays(preds, [gts[s] for s in stems], model_name=name, progress=advance, **options)


def _write_png(path: Path, mask) -> None:
    import cv2

    ok, buf = cv2.imencode(".png", mask)
    if not ok:  # pragma: no cover
        raise OSError(f"cannot encode {path}")
    buf.tofile(path)


def _format(name: str, value: float) -> str:
    if value != value:  # NaN
        return "nan"
    if name == "HCE":
        return f"{value:.1f}"
    return f"{value:.4f}" if name in ("MAE", "MSE") else f"{value:.3f}"


def _report(results: dict, args: argparse.Namespace, err) -> None:
    from rich.console import Console
    from rich.table import Table

    from birefnet.metrics.measures import SUMMARY_NAMES

    names = [k for k in SUMMARY_NAMES if any(k in r["summary"] for r in results.values())]
    n_images = len(next(iter(results.values()))["per_image"])
    # One row per metric, one column per model: stays readable for any number of metrics.
    table = Table(title=f"{n_images} image{'s' if n_images != 1 else ''}", title_justify="left")
    table.add_column("metric")
    for model in results:
        table.add_column(model, justify="right")
    for k in names:
        label = k + (" (lower is better)" if k in _LOWER_IS_BETTER else "")
        table.add_row(
            label, *[_format(k, r["summary"][k]) if k in r["summary"] else "-" for r in results.values()]
        )
    Console().print(table)
    if args.json:
        _write_json(results, Path(args.json))
        err.print(f"wrote {args.json}")
    if args.csv:
        _write_csv(results, names, Path(args.csv))
        err.print(f"wrote {args.csv}")
    if args.plot:
        from birefnet.metrics.plots import plot_curves

        written = plot_curves(results, args.plot)
        if written:
            err.print(f"wrote {', '.join(str(p) for p, _ in written.values())}")
        else:
            err.print("[yellow]--plot: no curve to plot (select F and/or E in --metrics)[/]")


def _jsonable(value):
    import math

    import numpy as np

    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_jsonable(float(v)) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _one_json(res: dict) -> dict:
    curves = {k: v for k, v in res["curves"].items() if k in ("Fm_curve", "Em_curve", "BIoU_curve")}
    return {"summary": res["summary"], "curves": curves, "per_image": res["per_image"]}


def _write_json(results: dict, path: Path) -> None:
    import json

    if len(results) == 1:
        payload = _one_json(next(iter(results.values())))
    else:
        payload = {model: _one_json(res) for model, res in results.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(payload), indent=1) + "\n")


def _write_csv(results: dict, names: list[str], path: Path) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", *names])
        for model, res in results.items():
            w.writerow(
                [model, *[repr(float(res["summary"][k])) if k in res["summary"] else "" for k in names]]
            )
