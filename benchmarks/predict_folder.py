#!/usr/bin/env python3
"""Throughput of ``birefnet predict`` on a folder: images/s, model busy fraction, peak RSS.

Generates N synthetic 2048x1536 JPEGs (a gradient background, a noisy elliptical subject, JPEG
quality 90), builds a BiRefNet (default swin_v1_t) with weights from the shared deterministic
generator (``../shared/reference/make_weights.py``; random initialisation if it is absent, which
times the same), and runs the same pipeline as the CLI (decode + resize on worker threads, model
on the main thread, mask resize + output encoding + atomic writes on worker threads).

    python benchmarks/predict_folder.py                      # 20 images, 1024x1024, rgba outputs
    python benchmarks/predict_folder.py --num-images 40 --batch-size 4 --device cuda
    python benchmarks/predict_folder.py --size 512 --outputs mask,rgba --json result.json

"Model busy" is the time the main thread spends in forward passes (incl. host/device copies)
divided by the wall time from the first decode to the last write; the goal is >= 0.95, i.e.
decoding and encoding are hidden behind the model. One warm-up forward pass runs before timing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BIREFNET_SHARED", ROOT.parent / "shared")).resolve()


def make_images(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """``n`` JPEGs of ``size`` (width, height) with a subject in the middle."""
    width, height = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    paths = []
    for i in range(n):
        base = rng.uniform(40, 200, 3).astype(np.float32)
        image = base + 40 * (xx / width)[..., None] - 30 * (yy / height)[..., None]
        cx, cy = width * rng.uniform(0.35, 0.65), height * rng.uniform(0.35, 0.65)
        rx, ry = width * rng.uniform(0.15, 0.3), height * rng.uniform(0.2, 0.35)
        inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
        image[inside] = rng.uniform(0, 255, 3)
        image += rng.normal(0, 12, image.shape).astype(np.float32)
        path = folder / f"img_{i:03d}.jpg"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def build_model(backbone: str, seed: int) -> tuple[torch.nn.Module, str]:
    from birefnet.config import BiRefNetConfig
    from birefnet.models.birefnet import BiRefNet

    model = BiRefNet(BiRefNetConfig(backbone=backbone))
    generator = SHARED / "reference" / "make_weights.py"
    if generator.is_file():
        sys.path.insert(0, str(generator.parent))
        import make_weights

        state = {k: torch.from_numpy(v) for k, v in make_weights.make_state_dict(backbone, seed).items()}
        model.load_state_dict(state)
        source = f"make_weights({backbone}, seed={seed})"
    else:
        source = "random initialisation (../shared/reference/make_weights.py not found)"
    return model.eval(), source


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-images", type=int, default=20)
    ap.add_argument("--image-size", default="2048x1536", help="generated image size WxH")
    ap.add_argument("--backbone", default="swin_v1_t")
    ap.add_argument("--size", default="1024", help="model input size N or WxH")
    ap.add_argument("--resolution", default="fixed", choices=("fixed", "dynamic", "tiled"))
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument(
        "--workers", type=int, default=None, help="decode/encode threads each (default: the CLI's)"
    )
    ap.add_argument("--outputs", default="rgba", help="output kinds, comma-separated")
    ap.add_argument("--refine-foreground", action="store_true")
    ap.add_argument("--folder", type=Path, help="reuse/keep images here instead of a temporary folder")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    from birefnet.cli.predict import Job, Options, assign_outputs, collect_inputs, run_jobs
    from birefnet.inference import Predictor, parse_size

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    image_size = parse_size(args.image_size)
    with tempfile.TemporaryDirectory(prefix="birefnet-bench-") as tmp:
        folder = args.folder or Path(tmp) / "in"
        folder.mkdir(parents=True, exist_ok=True)
        existing = sorted(folder.glob("img_*.jpg"))
        if len(existing) < args.num_images:
            t = time.perf_counter()
            make_images(folder, args.num_images, image_size)
            print(f"generated {args.num_images} {args.image_size} JPEGs in {time.perf_counter() - t:.1f} s")
        model, source = build_model(args.backbone, seed=0)
        predictor = Predictor(
            model,
            size=args.size,
            resolution=args.resolution,
            device=args.device,
            precision=args.precision,
            batch_size=args.batch_size,
        )
        kinds = [k.strip() for k in args.outputs.split(",") if k.strip()]
        options = Options(kinds=kinds, refine_foreground=args.refine_foreground)
        if args.workers:
            options.workers = args.workers
        else:
            options.workers = max(2, min(4, os.cpu_count() or 2))
        out = Path(tmp) / "out"
        files, errors, _ = collect_inputs([str(folder)], False, out)
        files = files[: args.num_images]
        assert not errors, errors
        jobs = [
            Job(i, p, o)
            for i, ((p, _), o) in enumerate(zip(files, assign_outputs(files, out, kinds, ".png")))
        ]

        # warm-up: one forward pass at the model size (first-call allocations, kernel selection)
        w, h = predictor.model_input_size(*image_size)
        t = time.perf_counter()
        predictor.forward(torch.zeros(args.batch_size, 3, h, w))
        warmup = time.perf_counter() - t

        failures: list[str] = []

        def done(job: Job, record: dict) -> None:
            if record["status"] != "ok":
                failures.append(f"{job.source}: {record['error']}")

        stats = run_jobs(jobs, predictor, options, on_done=done)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    result = {
        "predictor": predictor.describe(),
        "weights": source,
        "images": stats.images,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "outputs": kinds,
        "workers": options.workers,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "warmup_s": round(warmup, 3),
        "wall_s": round(stats.wall_seconds, 3),
        "model_s": round(stats.model_seconds, 3),
        "images_per_s": round(stats.images_per_second, 4),
        "model_busy": round(stats.model_busy, 4),
        "seconds_per_forward_image": round(stats.model_seconds / max(stats.images, 1), 4),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "load_avg_1min_before_after": [round(load_before, 2), round(load_after, 2)],
        "failures": failures,
    }
    print(json.dumps(result, indent=2))
    print(
        f"\n{stats.images} images in {stats.wall_seconds:.1f} s: {stats.images_per_second:.3f} img/s, "
        f"model busy {100 * stats.model_busy:.1f}% (goal >= 95%), peak RSS {peak_rss_mb:.0f} MB"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
