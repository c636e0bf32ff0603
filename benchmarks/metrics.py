"""CPU seconds per (prediction, ground truth) pair for the DIS metrics, against the official figures.

    python benchmarks/metrics.py                 # 1024x1024 and 512x384, 3 pairs each
    python benchmarks/metrics.py --pairs 5 --reference

Synthetic DIS-like masks (``birefnet.metrics._reference.synthetic_pair``: one large object with
holes and 1-3 px structures; a blurred prediction that misses thin parts and adds false blobs).
Times are CPU seconds (``time.process_time``) in one process with OpenCV single-threaded:

* per metric, "cold": a fresh ground truth each time (skeleton, distance transform and boundary
  bands computed), i.e. the cost of evaluating a single model;
* the total for all metrics cold, and "warm GT" (ground-truth work cached, as for every model after
  the first when several are evaluated, or for repeated validation during training);
* optionally (``--reference``) the literal, official-style implementation on the same machine.

The speed-up is against the official evaluator's 0.43 s per 1024² pair (all metrics, one process,
measured on an AMD EPYC machine: HCE 0.20 s with its skeleton, wF 0.11 s, S 0.03 s, BIoU / E / F /
mBA about 0.02 s each).
"""

from __future__ import annotations

import argparse
import os
import time

import cv2
import numpy as np

from birefnet.metrics import Evaluator, GroundTruthInfo, prepare
from birefnet.metrics import _reference as R
from birefnet.metrics import functional as F
from birefnet.metrics import skeleton as S

OFFICIAL_1024 = {
    "total": 0.43,
    "HCE": 0.20,
    "WF": 0.11,
    "S": 0.03,
    "BIoU": 0.02,
    "E": 0.02,
    "F": 0.02,
    "MBA": 0.02,
}

# metric key -> function of a prepared pair
METRIC_FUNCS = {
    "S": F.smeasure,
    "MAE": F.mae,
    "MSE": F.mse,
    "E": lambda p: (F.emeasure_curve(p), F.emeasure_adaptive(p)),
    "F": lambda p: (F.fmeasure_curves(p), F.fmeasure_adaptive(p)),
    "WF": F.weighted_fmeasure,
    "HCE": F.hce,
    "MBA": F.mba,
    "BIoU": F.boundary_iou_curve,
}


def _cpu(fn, repeat: int) -> float:
    """Median CPU seconds of ``fn()`` over ``repeat`` runs (CPU time, not wall time, and the median:
    both are little disturbed by other processes sharing the cores)."""
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return float(np.median(times))


def _bench_pair(pred: np.ndarray, gt: np.ndarray, repeat: int, reference: bool) -> dict[str, float]:
    out = {"prepare": _cpu(lambda: prepare(pred, gt).hist_fg, repeat)}
    for key, fn in METRIC_FUNCS.items():
        # cold: a new GT each time, so GT-only work (skeleton, distances, bands) is included
        out[key] = _cpu(lambda fn=fn: fn(prepare(pred, gt)), repeat) - out["prepare"]
    out["total (cold GT)"] = _cpu(lambda: Evaluator().step(pred, gt), repeat)
    # The official evaluator caches each GT's skeleton on disk (a ``ske/`` folder) and so do we
    # (``cache_dir``): every other piece of GT work is still done.
    skeleton = GroundTruthInfo(gt).skeleton
    out["total (cold GT, skeleton cached)"] = _cpu(
        lambda: Evaluator().step(pred, GroundTruthInfo(gt, skeleton=skeleton)), repeat
    )
    info = GroundTruthInfo(gt)
    Evaluator().step(pred, info)  # fill the GT cache
    out["total (warm GT)"] = _cpu(lambda: Evaluator().step(pred, info), repeat)
    png_p = cv2.imencode(".png", pred)[1]
    png_g = cv2.imencode(".png", gt)[1]
    out["reading 2 PNGs"] = _cpu(
        lambda: (cv2.imdecode(png_p, cv2.IMREAD_GRAYSCALE), cv2.imdecode(png_g, cv2.IMREAD_GRAYSCALE)), repeat
    )
    if reference:
        out["reference (official-style)"] = _cpu(lambda: _reference_all(pred, gt), 1)
        out["reference, skeleton cached"] = _cpu(lambda: _reference_all(pred, gt, skeleton), 1)
    return out


def _pair(height: int, width: int, seed: int, zero_below: int) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = R.synthetic_pair(height, width, seed)
    if zero_below:  # a clean background, as most real predictions have (faint values set to 0)
        pred = np.where(pred < zero_below, 0, pred).astype(np.uint8)
    return pred, gt


def bench_size(
    width: int, height: int, pairs: int, repeat: int, reference: bool, zero_below: int = 0
) -> dict[str, float]:
    runs = [_bench_pair(*_pair(height, width, seed, zero_below), repeat, reference) for seed in range(pairs)]
    return {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}


def bench_workers(width: int, height: int, pairs: int) -> dict[int, float]:
    """Wall seconds per pair of ``evaluate_folders`` on PNG files with 1 and with all workers."""
    import tempfile
    from pathlib import Path

    from birefnet.metrics.evaluate import default_workers, evaluate_folders

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "gt").mkdir()
        (root / "pred").mkdir()
        for seed in range(pairs):
            pred, gt = R.synthetic_pair(height, width, 100 + seed)
            cv2.imwrite(str(root / "gt" / f"{seed:03d}.png"), gt)
            cv2.imwrite(str(root / "pred" / f"{seed:03d}.png"), pred)
        for workers in sorted({1, default_workers()}):
            t0 = time.perf_counter()
            evaluate_folders([root / "pred"], root / "gt", workers=workers)
            out[workers] = (time.perf_counter() - t0) / pairs
    return out


def _reference_all(pred: np.ndarray, gt: np.ndarray, skeleton: np.ndarray | None = None) -> None:
    # The official evaluator prepares the data once per metric (7 times) and computes the skeleton
    # unless its ``ske/`` cache holds it.
    for _ in range(6):
        R.prepare(pred, gt)
    R.evaluate_pair(pred, gt, skeleton)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3, help="synthetic pairs per size")
    parser.add_argument("--repeat", type=int, default=5, help="timing repeats (the median is kept)")
    parser.add_argument(
        "--reference", action="store_true", help="also time the official-style implementation"
    )
    parser.add_argument(
        "--workers-pairs",
        type=int,
        default=8,
        help="pairs for the 1-vs-all-workers wall-clock test (0: skip)",
    )
    parser.add_argument(
        "--zero-below",
        type=int,
        default=0,
        help="set prediction values below this to 0 (a clean background: wF's distance window shrinks)",
    )
    args = parser.parse_args()
    cv2.setNumThreads(1)
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs")
    t0 = time.perf_counter()
    S.skeletonize(np.ones((3, 3), bool))  # loads (or, the first time ever, compiles) the thinning kernel
    print(
        f"thinning kernel ready in {time.perf_counter() - t0:.2f} s (once per process; compiled with "
        f"numba on first use and cached on disk): {'numba' if S.compiled(S._thin_kernel) else 'scikit-image fallback'}"
    )
    for width, height in ((1024, 1024), (512, 384)):
        res = bench_size(width, height, args.pairs, args.repeat, args.reference, args.zero_below)
        print(
            f"\n{width}x{height}: CPU ms per pair (mean of {args.pairs} pairs, median of {args.repeat} runs)"
        )
        for key, value in res.items():
            official = OFFICIAL_1024.get(key) if width == 1024 else None
            extra = f"   official {official * 1000:6.0f} ms  ({official / value:5.1f}x)" if official else ""
            print(f"  {key:28s} {value * 1000:8.1f}{extra}")
        total = res["total (cold GT)"]
        if width == 1024:
            print(
                f"  speed-up vs official 0.43 s: {OFFICIAL_1024['total'] / total:.1f}x cold GT, "
                f"{OFFICIAL_1024['total'] / res['total (warm GT)']:.1f}x warm GT"
            )
        if "reference (official-style)" in res:
            ref = res["reference (official-style)"]
            ref_ske = res["reference, skeleton cached"]
            print(
                f"  speed-up vs official-style code, same run: {ref / total:.1f}x cold GT; "
                f"{ref_ske / res['total (cold GT, skeleton cached)']:.1f}x with the skeleton cached on "
                f"both sides; {ref_ske / res['total (warm GT)']:.1f}x warm GT"
            )
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if args.workers_pairs:
        walls = bench_workers(1024, 1024, args.workers_pairs)
        print(f"\n1024x1024 PNG folders, {args.workers_pairs} pairs: wall ms per pair (reading included)")
        for workers, wall in walls.items():
            print(f"  {workers} worker(s): {wall * 1000:7.1f}")


if __name__ == "__main__":
    main()
