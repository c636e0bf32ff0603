"""Does training learn? BiRefNet from random initialisation on synthetic DIS-like data, on a CPU.

Writes a few hundred synthetic 256x256 images (objects with thin curves, meshes, holes and several
parts on textured backgrounds) plus a held-out set with another seed, trains a PVTv2-b0 BiRefNet
from random initialisation with ``birefnet.train`` (the code path of ``birefnet train``), scores
the held-out set after every epoch with the official protocol (each image resized to the model's
input size, here its own 256x256, the predictions upsampled to the 256x256 masks,
``birefnet.metrics``), and reports when the S-measure first reached the target.

The recipe differs from the official one (made for pretrained backbones, 1024², hundreds of
GPU epochs) where a 30-minute CPU budget from scratch needs it, and says so in ``result.json``:
training input 128² (the images and masks stay 256², and the held-out images are scored at 256²
input: ``--val-size``), no multi-scale input and no deformable ASPP (4x cheaper per image), no
stochastic depth, flip as the only augmentation, AdamW at 1e-3 with a one-epoch linear warm-up and
a cosine decay over the planned epochs (42: what fits in 30 minutes here), channels-last
weights and batches, checkpoints every 5 epochs. The loss is the official DIS5K loss. ``result.json`` also records the CPU time the run got and the load average during
it, because the check is often run on a machine shared with other jobs.

Outputs in ``--out``: ``result.json`` (settings, curve, time to target), ``curve.png`` (held-out
S-measure / max F / MAE against minutes) and ``run/`` (log, loss curve, checkpoints, final model).

    python benchmarks/train_learns.py                          # 30-minute budget, target S >= 0.85
    python benchmarks/train_learns.py --minutes 5 --n-train 64 --n-val 16 --epochs 4   # a quick look
"""

from __future__ import annotations

import os

# Idle OpenMP threads must sleep, not spin: on a CPU shared with other processes, spinning made
# a 2-thread step 10x slower than a 1-thread one on the development machine. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import logging
import resource
import shutil
import threading
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/train_learns", help="output folder")
    p.add_argument("--n-train", type=int, default=300, help="synthetic training images")
    p.add_argument("--n-val", type=int, default=50, help="held-out synthetic images")
    p.add_argument("--image-size", type=int, default=256, help="side of the synthetic images and masks")
    p.add_argument(
        "--train-size", type=int, default=128, help="model input side in training (multiple of 32)"
    )
    p.add_argument(
        "--val-size",
        type=int,
        default=256,
        help="model input side when scoring the held-out set (default: the images' own 256)",
    )
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget (training + validation)")
    p.add_argument(
        "--epochs",
        type=int,
        default=42,
        help="planned epochs (the cosine schedule's length; 42 fill 30 min here)",
    )
    p.add_argument("--target", type=float, default=0.85, help="held-out S-measure to reach")
    p.add_argument("--backbone", default="pvt_v2_b0")
    p.add_argument(
        "--full-decoder",
        action="store_true",
        help="keep the official multi-scale input and deformable ASPP (about 4x slower per image on CPU)",
    )
    p.add_argument(
        "--augmentations",
        default="flip",
        help="comma-separated; the official set: flip,enhance,rotate,pepper",
    )
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="keep weights and batches NCHW (channels-last steps are ~5%% faster here)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=5,
        help="epochs between checkpoints (each also redraws loss_curve.png: ~1 s here)",
    )
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=75, help="linear warm-up before the cosine decay")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (per process)")
    p.add_argument(
        "--procs",
        type=int,
        default=1,
        help="training processes: >1 runs `birefnet train` under torchrun (DDP over gloo); "
        "--batch-size is then per process",
    )
    p.add_argument("--workers", type=int, default=1, help="data loader processes")
    p.add_argument("--seed", type=int, default=7)
    return p.parse_args()


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("birefnet").setLevel(logging.INFO)

    from birefnet.data import write_synthetic_dataset
    from birefnet.train import TrainConfig, train
    from birefnet.train.report import read_log

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

    model = {"backbone": args.backbone, "drop_path_rate": 0.0}
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
                "val_size": [args.val_size, args.val_size],
                "augmentations": [a for a in args.augmentations.split(",") if a],
                "num_workers": args.workers,
            },
            "loss": {"task": "DIS5K", "finetune_last_epochs": 0},
            "optim": {"lr": args.lr, "schedule": "cosine", "warmup_steps": args.warmup_steps},
            "batch_size": args.batch_size,
            "epochs": args.epochs,
            "max_minutes": args.minutes,
            "seed": args.seed,
            "num_threads": args.threads,
            "checkpoint_every_epochs": args.checkpoint_every,
            "channels_last": args.channels_last,
            "keep_last": 2,
            "val_every_epochs": 1,
            "val_metrics": "S,MAE,F",
            "progress": False,
        }
    )
    shutil.rmtree(out / "run", ignore_errors=True)
    load = _LoadSampler(period=20.0)
    load.start()
    cpu0 = _cpu_seconds()
    start = time.perf_counter()
    if args.procs > 1:
        steps, stopped = _train_with_torchrun(config, args.procs, out)
    else:
        result = train(config)
        steps, stopped = result.global_step, result.stopped
    total_minutes = (time.perf_counter() - start) / 60
    cpu_seconds = _cpu_seconds() - cpu0
    load.stop()

    curve = []
    for r in read_log(out / "run" / "train_log.jsonl"):
        if r.get("event") == "validation":
            curve.append(
                {
                    "epoch": r["epoch"],
                    "step": r["step"],
                    "minutes": round(r["time"] / 60, 2),
                    "Smeasure": r.get("val/Smeasure"),
                    "maxFm": r.get("val/maxFm"),
                    "MAE": r.get("val/MAE"),
                }
            )
            print(json.dumps(curve[-1]), flush=True)
    reached = next((p for p in curve if p["Smeasure"] is not None and p["Smeasure"] >= args.target), None)
    summary = {
        "settings": vars(args),
        "model": config.model.to_dict() if config.model else model,
        "recipe_notes": f"official DIS5K loss; training input {args.train_size}^2, held-out scored at "
        f"{args.val_size}^2 input, for {args.image_size}^2 images; "
        f"{'full decoder' if args.full_decoder else 'no multi-scale input / deformable ASPP'}; no drop-path; "
        f"augmentations {args.augmentations}; AdamW lr {args.lr:g}, {args.warmup_steps} warm-up steps, "
        f"cosine over {args.epochs} epochs (see the module docstring)",
        "torch_threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "data_generation_seconds": round(data_seconds, 1),
        "steps": steps,
        "stopped": stopped or "all epochs",
        "curve": curve,
        "reached_target": reached,
        "best_Smeasure": max((p["Smeasure"] for p in curve if p["Smeasure"] is not None), default=None),
        "final_Smeasure": curve[-1]["Smeasure"] if curve else None,
        "total_minutes": round(total_minutes, 2),
        # How much of the 2 cores the run got: CPU seconds of this process and its data-loader
        # workers, and the 1-minute load average sampled every 20 s (the machine may be shared).
        "cpu_minutes": round(cpu_seconds / 60, 2),
        "cpu_cores_used": round(cpu_seconds / 60 / max(total_minutes, 1e-9), 2),
        "cpu_count": os.cpu_count(),
        "loadavg_1min": load.summary(),
    }
    (out / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
    _plot(curve, args, out / "curve.png")
    if reached:
        print(f"held-out S-measure {reached['Smeasure']:.4f} >= {args.target} after {reached['minutes']} min "
              f"(epoch {reached['epoch']}, step {reached['step']}); run took {total_minutes:.1f} min")  # fmt: skip
        return 0
    print(
        f"target S-measure {args.target} not reached in {total_minutes:.1f} min; best {summary['best_Smeasure']}"
    )
    return 1


def _train_with_torchrun(config, procs: int, out: Path) -> tuple[int, str | None]:
    """``torchrun --nproc_per_node procs -m birefnet.cli train --config <resolved config>``; returns
    (optimizer steps, stop reason or None) from the run's log."""
    import subprocess
    import sys

    from birefnet.train.report import read_log

    config_path = out / "train_config.yaml"
    config_path.write_text(config.to_yaml())
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
               "-m", "birefnet.cli", "train", "--config", str(config_path)]  # fmt: skip
    subprocess.run(command, check=True)
    end = [r for r in read_log(Path(config.out_dir) / "train_log.jsonl") if r.get("event") == "end"]
    if not end:
        raise RuntimeError(f"torchrun training left no end record in {config.out_dir}/train_log.jsonl")
    return end[-1]["step"], end[-1].get("stopped")


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process plus its finished children (data-loader workers)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


class _LoadSampler:
    """Samples the 1-minute load average in a daemon thread, to say how busy the machine was."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(self.period):
                return

    def summary(self) -> dict:
        xs = sorted(self.samples)
        if not xs:
            return {}
        return {"n": len(xs), "min": xs[0], "median": xs[len(xs) // 2], "max": xs[-1],
                "mean": round(sum(xs) / len(xs), 2)}  # fmt: skip


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
    ax.set_xlabel("minutes of training (validation included)")
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
