"""Evaluate prediction folders against a ground-truth folder: file pairing, reading, parallelism.

Files are paired by stem (``img_001.png`` <-> ``img_001.jpg``), read as the official evaluator
reads them (``cv2.imread(path, cv2.IMREAD_GRAYSCALE)``: colour files become grey with OpenCV's
weights, 16-bit files are scaled to 8 bits), and each ground truth is processed once for all
prediction folders, so the GT-only work (skeleton, distance transform, boundary bands) is shared by
all models. Several images are spread over worker processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from birefnet._cache import cache_root

from .functional import GroundTruthInfo, prepare
from .measures import Evaluator, parse_metrics

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Preference when one folder holds the same stem twice (the official evaluator probes .png first).
_SUFFIX_RANK = {s: i for i, s in enumerate(IMAGE_SUFFIXES)}
_GREY_MODES = {"L", "1", "I", "I;16", "I;16B", "I;16L", "F"}


class EvaluationError(Exception):
    """A problem with the user's files or folders; the message says what and how to fix it."""


@dataclass
class Pairing:
    """Result of matching prediction folders to a GT folder by file stem.

    Attributes:
        names: GT file names (sorted) present in every prediction folder.
        gt_paths: their paths.
        pred_paths: per prediction folder, the matching prediction paths (same order).
        missing: per prediction folder, GT names without a prediction.
        extra: per prediction folder, prediction names without a GT.
    """

    names: list[str]
    gt_paths: list[Path]
    pred_paths: list[list[Path]]
    missing: list[list[str]] = field(default_factory=list)
    extra: list[list[str]] = field(default_factory=list)


def list_masks(folder: str | os.PathLike) -> dict[str, Path]:
    """Image files of a folder by stem (non-recursive; hidden files skipped).

    Raises:
        EvaluationError: if the folder does not exist or holds no image file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"{folder} is not a folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        other = found.get(path.stem)
        if other is not None:
            keep = min((other, path), key=lambda p: _SUFFIX_RANK[p.suffix.lower()])
            logger.warning("%s: both %s and %s; using %s", folder, other.name, path.name, keep.name)
            path = keep
        found[path.stem] = path
    if not found:
        raise EvaluationError(
            f"{folder} holds no image file ({', '.join(IMAGE_SUFFIXES)}); is it the right folder?"
        )
    return found


def pair_folders(pred_dirs: Sequence[str | os.PathLike], gt_dir: str | os.PathLike) -> Pairing:
    """Match each prediction folder to the GT folder by file stem.

    Only GT files present in *every* prediction folder are evaluated, so models are compared on the
    same images; the others are reported in ``missing`` / ``extra``.

    Raises:
        EvaluationError: for a missing or empty folder, or when no file matches.
    """
    gts = list_masks(gt_dir)
    preds = [list_masks(d) for d in pred_dirs]
    common = sorted(set(gts).intersection(*[set(p) for p in preds]), key=lambda s: gts[s].name)
    if not common:
        example = next(iter(gts))
        raise EvaluationError(
            f"no prediction file matches a ground truth by name (e.g. GT {gts[example].name} in {gt_dir}); "
            f"predictions must be named like their GT (any image extension)"
        )
    return Pairing(
        names=[gts[s].name for s in common],
        gt_paths=[gts[s] for s in common],
        pred_paths=[[p[s] for s in common] for p in preds],
        missing=[sorted(gts[s].name for s in set(gts) - set(p)) for p in preds],
        extra=[sorted(p[s].name for s in set(p) - set(gts)) for p in preds],
    )


def read_mask(path: str | os.PathLike) -> tuple[np.ndarray, bool]:
    """Read a mask as the official evaluator does: ``cv2.IMREAD_GRAYSCALE`` (uint8, 0..255).

    Returns:
        (array (H, W) uint8, whether the file was colour and converted to grey).

    Raises:
        EvaluationError: if the file cannot be decoded.
    """
    import cv2

    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)  # works with non-ASCII paths, unlike cv2.imread
    except OSError as exc:
        raise EvaluationError(f"cannot read {path}: {exc.strerror or exc}") from None
    image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
    if image is None:
        raise EvaluationError(f"cannot decode {path} as an image (corrupt, empty or unsupported format)")
    return image, _is_colour(path)


def _is_colour(path: Path) -> bool:
    try:
        from PIL import Image

        with Image.open(path) as im:
            return im.mode not in _GREY_MODES
    except Exception:  # PIL cannot parse every format OpenCV reads; then we cannot tell
        return False


def default_cache_dir() -> Path:
    """Where ``birefnet eval`` keeps GT skeletons unless told otherwise: ``$BIREFNET_CACHE/skeletons``,
    else ``$XDG_CACHE_HOME/birefnet/skeletons``, else ``~/.cache/birefnet/skeletons``.

    (The official evaluator also keeps its skeletons, in a ``ske/`` folder beside the GT folder; we
    keep them out of the dataset. Entries are keyed by the GT's content, so a changed GT file never
    reuses a stale skeleton.)
    """
    return cache_root() / "skeletons"


def _skeleton_cache_path(cache_dir: Path, gt: np.ndarray) -> Path:
    digest = hashlib.sha1(gt.tobytes() + str(gt.shape).encode()).hexdigest()
    return cache_dir / f"{digest}.skel.npy"


def _gt_info(gt: np.ndarray, cache_dir: Path | None, need_skeleton: bool) -> GroundTruthInfo:
    """The GT's :class:`GroundTruthInfo`, with its skeleton read from / written to ``cache_dir``.

    A cache entry holds the flat indices of the skeleton pixels (a uint32 ``.npy``; uint64 past 2^32
    pixels): skeletons are sparse, so this is ~45 KB for the benchmark's 1024² DIS-like GTs, where a
    bitmap would be 128 KB, and it grows with the skeleton's length, not with the image's area.
    """
    if cache_dir is None or not need_skeleton:
        return GroundTruthInfo(gt)
    path = _skeleton_cache_path(cache_dir, gt)
    if path.is_file():
        try:
            index = np.load(path)
            bad_type = index.dtype not in (np.uint32, np.uint64) or index.ndim != 1
            if bad_type or (index.size and index.max() >= gt.size):
                raise ValueError("not a skeleton index of this GT")
            skeleton = np.zeros(gt.size, dtype=bool)
            skeleton[index] = True
            return GroundTruthInfo(gt, skeleton=skeleton.reshape(gt.shape))
        except (OSError, ValueError):
            logger.warning("ignoring unreadable skeleton cache file %s", path)
    info = GroundTruthInfo(gt)
    index = np.flatnonzero(info.skeleton).astype(np.uint32 if gt.size <= 2**32 else np.uint64)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.save(tmp, index)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only or full disk costs the cache, never the evaluation
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        logger.warning("cannot write the skeleton cache in %s (%s); continuing without it", cache_dir, exc)
    return info


@dataclass
class _Task:
    gt_path: Path
    pred_paths: list[Path]  # one per model (empty when the predictions are given as arrays)
    metrics: list[str]
    mba_empty: str
    cache_dir: Path | None
    preds: list[np.ndarray] | None = None


def _run_task(task: _Task) -> tuple[list[dict], list[str]]:
    """Records of one GT against every model's prediction, plus notes (colour files)."""
    import cv2

    cv2.setNumThreads(1)  # parallelism comes from the process pool
    notes: list[str] = []
    gt, colour = read_mask(task.gt_path)
    if colour:
        notes.append(f"colour:{task.gt_path}")
    info = _gt_info(gt, task.cache_dir, "HCE" in task.metrics)
    evaluator = Evaluator(task.metrics, mba_empty=task.mba_empty)
    records = []
    preds = task.preds if task.preds is not None else [None] * len(task.pred_paths)
    for i, pred in enumerate(preds):
        if pred is None:
            pred, colour = read_mask(task.pred_paths[i])
            if colour:
                notes.append(f"colour:{task.pred_paths[i]}")
        records.append(evaluator.compute(prepare(pred, info)))
    return records, notes


def default_workers() -> int:
    """Worker processes: the CPUs this process may use (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


# Below this many (prediction, GT) pairs the default is one process: starting the pool (its server
# loads numba and the kernels, ~1.5 s) costs more than the second core saves at ~150 ms per 1024²
# pair (measured: 8 pairs 241 ms/pair in-process vs 341 with 2 workers; 48 pairs 159 vs 83).
_MIN_PAIRS_FOR_WORKERS = 32


def _auto_workers(pairs: int) -> int:
    return default_workers() if pairs >= _MIN_PAIRS_FOR_WORKERS else 1


def _run_all(tasks: list[_Task], workers: int, progress: Callable[[int], None] | None) -> list:
    results = []
    if workers <= 1 or len(tasks) < 2:
        for task in tasks:
            results.append(_run_task(task))
            if progress:
                progress(1)
        return results
    import multiprocessing

    # Not fork: a child forked after this process used OpenCV's thread pool can deadlock in its first
    # cv2 call (the copied pool's condition variables; seen in CI as a hang in pthread_cond_destroy).
    # forkserver on Linux forks the workers from a fresh single-threaded server process; spawn
    # elsewhere (fork is unsafe on macOS anyway). Both start each worker by importing the caller's
    # main module, so a script that calls this with workers > 1 needs the ``if __name__ ==
    # "__main__":`` guard (docs/evaluation.md); the ``birefnet eval`` command has it.
    ctx = multiprocessing.get_context("forkserver" if sys.platform.startswith("linux") else "spawn")
    if ctx.get_start_method() == "forkserver":
        # load the numba kernels once in the server instead of once per worker (no-op once started)
        ctx.set_forkserver_preload(["birefnet.metrics._preload"])
    chunk = max(1, min(16, len(tasks) // (workers * 8)))
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    try:
        for res in pool.map(_run_task, tasks, chunksize=chunk):
            results.append(res)
            if progress:
                progress(1)
    except BrokenProcessPool as err:
        pool.shutdown(wait=False, cancel_futures=True)
        raise EvaluationError(
            "a metric worker process died before finishing (out of memory, or started from a script "
            'without the `if __name__ == "__main__":` guard: workers import the main module); put the '
            "call under that guard, or pass workers=1"
        ) from err
    except BaseException:
        # an unreadable file (or Ctrl-C): stop now instead of finishing the queued images first
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return results


def evaluate_folders(
    pred_dirs: Sequence[str | os.PathLike],
    gt_dir: str | os.PathLike,
    metrics: str | Sequence[str] | None = None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    mba_empty: str = "prediction-band",
    cache_dir: str | os.PathLike | None = None,
    pairing: Pairing | None = None,
) -> dict[str, dict]:
    """Evaluate one or more prediction folders against a GT folder.

    Args:
        pred_dirs: folders of predicted masks named like the GT files (any image extension).
        gt_dir: folder of ground-truth masks.
        metrics: subset (see :func:`birefnet.metrics.parse_metrics`); default all. HCE is the slow one.
        workers: processes; default: every CPU available from 32 (prediction, GT) pairs on, else 1
            (a pool's start costs more than it saves on fewer). 1 runs in this process.
        progress: called with 1 after each GT image (for progress bars).
        mba_empty: mBA policy for GTs without boundary ("prediction-band" or "nan").
        cache_dir: optional folder to cache GT skeletons in (keyed by the GT's content; never
            written next to the data).
        pairing: a precomputed :func:`pair_folders` result (to report unmatched files first).

    Returns:
        {model name: {"summary", "curves", "per_image", "resized", "colour"}}; the model name is the
        folder's name (its path when names collide). See :meth:`Evaluator.results`.
    """
    keys = parse_metrics(metrics)
    pairing = pairing or pair_folders(pred_dirs, gt_dir)
    names = model_names(pred_dirs)
    cache = Path(cache_dir) if cache_dir is not None else None
    tasks = [
        _Task(gt, [paths[i] for paths in pairing.pred_paths], keys, mba_empty, cache)
        for i, gt in enumerate(pairing.gt_paths)
    ]
    pairs = len(tasks) * max(1, len(names))
    outputs = _run_all(tasks, _auto_workers(pairs) if workers is None else workers, progress)
    return _collect(names, pairing.names, outputs, keys, mba_empty)


def evaluate_arrays(
    preds: Sequence[np.ndarray],
    gt_paths: Sequence[str | os.PathLike],
    model_name: str = "model",
    metrics: str | Sequence[str] | None = None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    mba_empty: str = "prediction-band",
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, dict]:
    """Like :func:`evaluate_folders` for predictions held in memory (one model).

    Args:
        preds: per GT file, the prediction as uint8 (H, W) or float [0, 1] (quantised by truncation).
        gt_paths: the GT files, same order.
        cache_dir: as for :func:`evaluate_folders`.
    """
    keys = parse_metrics(metrics)
    cache = Path(cache_dir) if cache_dir is not None else None
    tasks = [_Task(Path(g), [], keys, mba_empty, cache, preds=[p]) for p, g in zip(preds, gt_paths)]
    outputs = _run_all(tasks, _auto_workers(len(tasks)) if workers is None else workers, progress)
    return _collect([model_name], [Path(g).name for g in gt_paths], outputs, keys, mba_empty)


def model_names(pred_dirs: Sequence[str | os.PathLike]) -> list[str]:
    """Display names of prediction folders: the folder name, with as many parent folders as it
    takes to tell colliding names apart (``a/pred``, ``b/pred``)."""
    parts = [Path(d).resolve().parts for d in pred_dirs]
    depth = 1
    while True:
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names) or depth >= max(len(p) for p in parts):
            return names
        depth += 1


def _collect(models: list[str], names: list[str], outputs: list, keys: list[str], mba_empty: str) -> dict:
    results = {}
    notes = sorted({n for _, ns in outputs for n in ns})
    colour = [n.split(":", 1)[1] for n in notes if n.startswith("colour:")]
    if colour:
        logger.warning(
            "%d colour image(s) converted to grey with cv2.IMREAD_GRAYSCALE as the official evaluator does "
            "(e.g. %s)",
            len(colour),
            colour[0],
        )
    for m, model in enumerate(models):
        ev = Evaluator(keys, mba_empty=mba_empty)
        for name, (records, _) in zip(names, outputs):
            ev.add(records[m], name)
        res = ev.results()
        res["resized"] = list(ev.resized)
        res["colour"] = colour
        if ev.resized:
            logger.warning(
                "%s: %d prediction(s) differ in size from their GT and were resized to it (bilinear, as "
                "the official evaluator does), e.g. %s",
                model,
                len(ev.resized),
                ev.resized[0],
            )
        results[model] = res
    return results
