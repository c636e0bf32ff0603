"""Does training learn? BiRefNet from random initialisation on synthetic DIS-like data, on a CPU.

Writes a few hundred synthetic 256x256 images (thin curves, meshes, holes, several parts on
textured backgrounds) plus a held-out set with another seed, trains a PVTv2-b0 BiRefNet from
random initialisation with ``birefnet.train`` (the same code path as ``birefnet train``), validates
on the held-out set after every epoch with the official protocol (predictions upsampled to the
256x256 masks, ``birefnet.metrics``), and stops when the S-measure reaches the target or the time
budget is spent. The run is split into one ``train(..., resume="auto")`` call per epoch so that it
can stop early; exact resume makes that the same as one long run.

Outputs in ``--out``: ``result.json`` (settings, curve, time to target), ``curve.png`` (validation
S-measure / max F / MAE against minutes) and the run folder (log, loss curve, checkpoints).

    python benchmarks/train_learns.py                      # 30-minute budget, target S >= 0.85
    python benchmarks/train_learns.py --minutes 5 --n-train 64 --n-val 16   # a quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/train_learns", help="output folder")
    p.add_argument("--n-train", type=int, default=300, help="synthetic training images")
    p.add_argument("--n-val", type=int, default=50, help="held-out synthetic images")
    p.add_argument("--image-size", type=int, default=256, help="side of the synthetic images")
    p.add_argument("--train-size", type=int, default=256, help="model input side (multiple of 32)")
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget for training + validation")
    p.add_argument("--target", type=float, default=0.85, help="held-out S-measure to reach")
    p.add_argument("--backbone", default="pvt_v2_b0")
    p.add_argument(
        "--full-decoder",
        action="store_true",
        help="keep the official multi-scale input and deformable ASPP (about 4x slower per image on CPU)",
    )
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--workers", type=int, default=1, help="data loader processes")
    p.add_argument("--seed", type=int, default=7)
    return p.parse_args()


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("birefnet").setLevel(logging.INFO)

    from birefnet.data import write_synthetic_dataset
    from birefnet.train import TrainConfig, train

    out = Path(args.out)
    data = out / "data"
    size = (args.image_size, args.image_size)
    t0 = time.perf_counter()
    for name, n, seed in (("train", args.n_train, 0), ("val", args.n_val, 1000)):
        folder = data / name
        have = len(list((folder / "gt").glob("*.png"))) if (folder / "gt").is_dir() else 0
        if have != n:
            shutil.rmtree(folder, ignore_errors=True)
            write_synthetic_dataset(folder, n, size=size, seed=seed)
    data_seconds = time.perf_counter() - t0

    model = {"backbone": args.backbone}
    if not args.full_decoder:
        # Same BiRefNet (inward/outward reference, multi-scale supervision, squeeze block) minus
        # the two most expensive options on a CPU.
        model.update({"multi_scale_input": "", "decoder_attention": ""})
    config = TrainConfig.from_dict(
        {
            "out_dir": str(out / "run"),
            "model": model,
            "data": {
                "root": str(data),
                "train_sets": ["train"],
                "val_sets": ["val"],
                "size": [args.train_size, args.train_size],
                "num_workers": args.workers,
            },
            "loss": {"task": "DIS5K", "finetune_last_epochs": 0},
            "optim": {"lr": args.lr},
            "batch_size": args.batch_size,
            "epochs": 1,
            "seed": args.seed,
            "num_threads": args.threads,
            "checkpoint_every_epochs": 1,
            "keep_last": 2,
            "val_every_epochs": 1,
            "val_metrics": "S,MAE,F",
            "progress": False,
        }
    )

    curve: list[dict] = []
    reached = None
    start = time.perf_counter()
    epoch = 0
    shutil.rmtree(out / "run", ignore_errors=True)  # a fresh run; later calls resume it
    resume = None
    while True:
        left = args.minutes - (time.perf_counter() - start) / 60
        if left <= 0:
            break
        epoch += 1
        result = train(config.replace(epochs=epoch, max_minutes=left), resume=resume)
        resume = "auto"
        minutes = (time.perf_counter() - start) / 60
        if result.stopped:  # the budget ran out inside the epoch
            break
        v = result.validation
        point = {
            "epoch": epoch,
            "step": result.global_step,
            "minutes": round(minutes, 2),
            "Smeasure": v.get("val/Smeasure"),
            "maxFm": v.get("val/maxFm"),
            "MAE": v.get("val/MAE"),
        }
        curve.append(point)
        print(json.dumps(point), flush=True)
        if reached is None and point["Smeasure"] is not None and point["Smeasure"] >= args.target:
            reached = point
            break

    summary = {
        "settings": vars(args),
        "model": config.model.to_dict() if config.model else model,
        "data_generation_seconds": round(data_seconds, 1),
        "curve": curve,
        "reached_target": reached,
        "best_Smeasure": max((p["Smeasure"] for p in curve if p["Smeasure"] is not None), default=None),
        "total_minutes": round((time.perf_counter() - start) / 60, 2),
    }
    (out / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
    _plot(curve, args, out / "curve.png")
    if reached:
        print(
            f"S-measure {reached['Smeasure']:.4f} >= {args.target} after {reached['minutes']} min (epoch {reached['epoch']})"
        )
        return 0
    print(
        f"target S-measure {args.target} not reached in {args.minutes} min; best {summary['best_Smeasure']}"
    )
    return 1


def _plot(curve: list[dict], args: argparse.Namespace, path: Path) -> None:
    if not curve:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [p["minutes"] for p in curve]
    for key in ("Smeasure", "maxFm", "MAE"):
        ax.plot(xs, [p[key] for p in curve], marker="o", label=key)
    ax.axhline(args.target, color="grey", linestyle="--", linewidth=0.8, label=f"target S = {args.target}")
    ax.set_xlabel("minutes (training + validation)")
    ax.set_ylabel("held-out score")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{args.backbone} from scratch, {args.n_train} synthetic images, input {args.train_size}²")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
