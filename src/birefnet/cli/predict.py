"""``birefnet predict INPUT... -o OUT``: cut-outs, masks and composites for files and folders.

Flow: the inputs are expanded and given output names up front (so that clashes are resolved
before anything is written); inputs whose outputs all exist are skipped unless ``--overwrite``;
then a pipeline keeps the model busy: worker threads decode and resize the next images while the
model runs, and other worker threads resize masks back, build the outputs and write them (to a
temporary name, then an atomic rename). A bad input costs one line on stderr and a manifest entry;
it never stops the run.

Output names (OUT is ``-o``):

* one output kind: ``OUT/<stem>.<ext>``; several: ``OUT/<stem>_<kind>.<ext>``;
* inputs of one run that share a stem in the same output folder keep their extension
  (``dup.jpg.png``, ``dup.png.png``); an output that would land on an input file does too; any
  remaining clash gets ``-2``, ``-3``... in input order;
* images found in a folder input keep their sub-folder under OUT (with ``--recursive``).

Exit codes: 0 every input succeeded (or was skipped as done), 1 some inputs failed, 2 usage
error or the model could not be loaded (nothing was processed), 130 interrupted.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from birefnet.cli._common import add_model_flags, positive_int

if TYPE_CHECKING:  # heavy modules are imported inside run()
    from birefnet.inference import Predictor

KINDS = ("mask", "rgba", "composite")
FORMAT_EXT = {"png": ".png", "webp": ".webp", "jpg": ".jpg"}


def _kinds(text: str) -> list[str]:
    kinds = [k.strip().lower() for k in text.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(
            f"{text!r}: choose from {', '.join(KINDS)} (comma-separated or repeated)"
        )
    return kinds


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from e
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: the threshold is a probability in (0, 1]")
    return value


def add_parser(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  birefnet predict photo.jpg -o out/                      # out/photo.png, transparent cut-out\n"
        "  birefnet predict photos/ -r -o out/ --output mask,rgba   # keeps sub-folders\n"
        "  birefnet predict '*.jpg' -o out/ --bg-color white --format jpg\n"
        "  birefnet predict in/ -o out/ --model lite --weights ./BiRefNet_lite/model.safetensors  # offline\n"
        "exit codes: 0 all done, 1 some inputs failed, 2 usage error / model not loadable"
    )
    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders and glob patterns")
    io.add_argument("-o", "--out", required=True, metavar="OUT", help="output folder (created if missing)")
    io.add_argument(
        "--output",
        action="append",
        type=_kinds,
        metavar="KIND",
        help="mask | rgba | composite; repeat or comma-separate for several (default: rgba, the cut-out)",
    )
    io.add_argument(
        "--format", choices=sorted(FORMAT_EXT), help="file format (default png; jpg for opaque kinds only)"
    )
    io.add_argument("--quality", type=positive_int, metavar="Q", help="jpg/webp quality 1-100 (default 95)")
    io.add_argument(
        "--bg-color", metavar="COLOR", help="composite background: name, #RRGGBB or r,g,b (default white)"
    )
    io.add_argument(
        "--bg-image", metavar="PATH", help="composite background image (scaled to cover, centre-cropped)"
    )
    io.add_argument(
        "--refine-foreground",
        action="store_true",
        default=None,
        help="estimate foreground colours at soft edges (no halo) for rgba/composite",
    )
    io.add_argument(
        "--threshold", type=_unit_float, metavar="P", help="binarise the mask/alpha at probability P"
    )
    io.add_argument("-r", "--recursive", action="store_true", default=None, help="look inside sub-folders")
    io.add_argument("--overwrite", action="store_true", default=None, help="redo inputs whose outputs exist")
    io.add_argument(
        "--manifest", metavar="FILE", help="write one JSON line per input (status, outputs, timing)"
    )
    io.add_argument(
        "--max-pixels",
        type=positive_int,
        metavar="N",
        help="refuse images with more pixels than N (decompression bombs; default 178956970)",
    )
    m = parser.add_argument_group("model")
    add_model_flags(m, "model", "weights", "size", "resolution", "patch_order", "backend")
    r = parser.add_argument_group("runtime")
    r.add_argument("--batch-size", type=positive_int, metavar="N", help="images per forward pass (default 1)")
    add_model_flags(r, "device", "precision", "optimize", "threads")
    r.add_argument(
        "--workers", type=positive_int, metavar="N", help="decode/encode threads each (default 2-4)"
    )
    r.add_argument("-q", "--quiet", action="store_true", default=None, help="no progress bar or summary")


# --------------------------------------------------------------------------------------------
# Planning: inputs -> jobs with output names


class UsageError(Exception):
    """Bad command line; exit code 2."""


@dataclass
class Job:
    """One input and its outputs.

    Attributes:
        index: position in the run (manifest order).
        source: input path.
        outputs: {kind: output path}.
        error: set when the input is already known to be unusable (missing, no match).
        status: "todo", "skipped", "ok" or "error".
    """

    index: int
    source: Path
    outputs: dict[str, Path] = field(default_factory=dict)
    error: str | None = None
    status: str = "todo"


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _walk(
    root: Path, recursive: bool, exclude: Path | None, extensions: tuple[str, ...]
) -> list[tuple[Path, Path]]:
    """(file, sub-folder relative to root) for image-named entries; raises OSError when unreadable."""
    found: list[tuple[Path, Path]] = []
    if not recursive:
        for entry in sorted(root.iterdir()):
            if not _is_hidden(entry.name) and entry.suffix.lower() in extensions:
                found.append((entry, Path()))  # a folder named x.png is reported as an error later
        return found
    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d for d in dirnames if not _is_hidden(d) and (exclude is None or (here / d).resolve() != exclude)
        )
        for name in sorted(filenames):
            if not _is_hidden(name) and Path(name).suffix.lower() in extensions:
                found.append((here / name, here.relative_to(root)))
    return found


def _raise(error: OSError) -> None:
    raise error


def collect_inputs(
    inputs: list[str], recursive: bool, out_dir: Path
) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]], list[str]]:
    """Expand files, folders and globs.

    Returns:
        (files as (path, output sub-folder), input errors as (path, message), warnings).

    Raises:
        UsageError: the output folder is one of the input folders.
    """
    from birefnet.imageio import IMAGE_EXTENSIONS

    out_resolved = out_dir.resolve()
    files: list[tuple[Path, Path]] = []
    errors: list[tuple[Path, str]] = []
    warnings: list[str] = []
    seen: set[Path] = set()

    def add(path: Path, rel: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            files.append((path, rel))

    def add_folder(folder: Path) -> None:
        if folder.resolve() == out_resolved:
            raise UsageError(
                f"the output folder {out_dir} is also an input folder; choose another -o so that inputs "
                "are never overwritten and outputs are not read back as inputs"
            )
        try:
            found = _walk(folder, recursive, out_resolved, IMAGE_EXTENSIONS)
        except OSError as e:
            errors.append((folder, f"cannot list folder: {e.strerror or e}"))
            return
        if not found:
            hint = "" if recursive else " (use --recursive for sub-folders)"
            warnings.append(f"{folder}: no images found{hint}")
        for path, rel in found:
            add(path, rel)

    for text in inputs:
        path = Path(text).expanduser()
        if path.is_dir():
            add_folder(path)
        elif path.exists() or path.is_symlink():
            add(path, Path())
        elif glob.has_magic(text):
            matches = sorted(glob.glob(os.path.expanduser(text), recursive=recursive))
            if not matches:
                errors.append((path, "no files match this pattern"))
            for match in matches:
                mpath = Path(match)
                if mpath.is_dir():
                    if recursive:
                        add_folder(mpath)
                elif not _is_hidden(mpath.name):
                    add(mpath, Path())
        else:
            errors.append((path, "no such file or folder"))
    return files, errors, warnings


def assign_outputs(
    files: list[tuple[Path, Path]], out_dir: Path, kinds: list[str], ext: str
) -> list[dict[str, Path]]:
    """Output paths per input, with the naming rules of the module docstring; no two inputs share
    an output and no output is an input file."""

    def paths(rel: Path, base: str) -> dict[str, Path]:
        if len(kinds) == 1:
            return {kinds[0]: out_dir / rel / f"{base}{ext}"}
        return {k: out_dir / rel / f"{base}_{k}{ext}" for k in kinds}

    def key(p: Path) -> str:  # case-insensitive: two names that differ in case clash on macOS/Windows
        return str(p.resolve()).casefold()

    stems = Counter((str(rel), path.stem.casefold()) for path, rel in files)
    taken = {key(path) for path, _ in files}
    result = []
    for path, rel in files:
        base = path.stem if stems[(str(rel), path.stem.casefold())] == 1 else path.name
        candidate, n = base, 1
        while any(key(p) in taken for p in paths(rel, candidate).values()):
            if candidate == path.stem:
                candidate = path.name
            else:
                n += 1
                candidate = f"{path.name}-{n}"
        chosen = paths(rel, candidate)
        taken.update(key(p) for p in chosen.values())
        result.append(chosen)
    return result


# --------------------------------------------------------------------------------------------
# The pipeline


@dataclass
class Options:
    """What to write, for each image."""

    kinds: list[str]
    fmt: str = "png"
    quality: int = 95
    threshold: float | None = None
    refine_foreground: bool = False
    background: Any = (255, 255, 255)  # RGB tuple or (H, W, 3) uint8 array
    max_pixels: int | None = None
    workers: int = 2


@dataclass
class RunStats:
    """Timing of one pipeline run.

    Attributes:
        images: inputs that went through the model.
        wall_seconds: from the first decode to the last write.
        model_seconds: time the model thread spent in forward passes (incl. transfers).
    """

    images: int = 0
    wall_seconds: float = 0.0
    model_seconds: float = 0.0

    @property
    def model_busy(self) -> float:
        """Fraction of wall time the model was running."""
        return self.model_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.wall_seconds if self.wall_seconds > 0 else 0.0


class _Background:
    """The composite background, fitted once per image size (shared by encode threads)."""

    def __init__(self, background: Any) -> None:
        self.background = background
        self._fitted: dict[tuple[int, int], Any] = {}
        self._lock = threading.Lock()

    def for_size(self, width: int, height: int) -> Any:
        import numpy as np

        if not isinstance(self.background, np.ndarray):
            return self.background
        from birefnet.postprocess import fit_background

        with self._lock:
            hit = self._fitted.get((width, height))
        if hit is None:
            hit = fit_background(self.background, (width, height))
            with self._lock:
                if len(self._fitted) > 8:
                    self._fitted.clear()
                self._fitted[(width, height)] = hit
        return hit


def run_jobs(
    jobs: list[Job],
    predictor: Predictor,
    options: Options,
    on_done: Any = None,
) -> RunStats:
    """Run the model on ``jobs`` (status "todo") and write their outputs.

    Decoding/resizing and mask resizing/encoding/writing run on ``options.workers`` threads each,
    overlapping with the model, which runs on the calling thread. Images with the same model
    input size are batched (``predictor.batch_size``).

    Args:
        jobs: the inputs to process.
        predictor: the model.
        options: outputs to write.
        on_done: called on the calling thread as ``on_done(job, record)`` for each job when it
            finishes, in completion order; ``record`` has the manifest fields.

    Returns:
        Timing statistics.
    """
    import numpy as np
    import torch

    from birefnet.imageio import ImageReadError, load_image, save_image_atomic
    from birefnet.postprocess import render_outputs

    stats = RunStats()
    background = _Background(options.background)
    bs = predictor.batch_size
    tiled = predictor.resolution == "tiled"
    prefetch = max(2 * bs, options.workers + 2)
    max_encodes = 2 * options.workers + bs
    decode_pool = _pool(options.workers, "birefnet-decode")
    encode_pool = _pool(options.workers, "birefnet-encode")

    def decode(job: Job) -> tuple[Any, Any, float]:
        t = time.perf_counter()
        image = load_image(job.source, max_pixels=options.max_pixels)
        prepared = None if tiled else predictor.prepare(image)
        return image, prepared, time.perf_counter() - t

    def encode(job: Job, image: Any, prob: Any) -> tuple[list[str], float]:
        t = time.perf_counter()
        mask = prob if isinstance(prob, np.ndarray) else predictor.restore(prob, image.size)
        outputs = render_outputs(
            image,
            mask,
            options.kinds,
            threshold=options.threshold,
            refine_foreground=options.refine_foreground,
            background=background.for_size(image.width, image.height),
        )
        written = []
        for kind, out in outputs.items():
            save_image_atomic(out, job.outputs[kind], fmt=options.fmt, quality=options.quality)
            written.append(str(job.outputs[kind]))
        return written, time.perf_counter() - t

    def finish(job: Job, image: Any, seconds: float, written: list[str] | None, error: str | None) -> None:
        job.status = "error" if error else "ok"
        job.error = error
        record = {
            "input": str(job.source),
            "outputs": written or [],
            "width": image.width if image is not None else None,
            "height": image.height if image is not None else None,
            "model": predictor.name,
            "seconds": round(seconds, 4),
            "status": job.status,
            "error": error,
        }
        record["model_size"] = None
        if image is not None:
            size = predictor.size if tiled else predictor.model_input_size(image.width, image.height)
            record["model_size"] = f"{size[0]}x{size[1]}"
        if on_done is not None:
            on_done(job, record)

    def describe_error(e: BaseException) -> str:
        if isinstance(e, ImageReadError):
            return str(e).split(": ", 1)[1] if str(e).startswith(e.source) else str(e)
        if isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower():
            return (
                f"out of memory ({type(e).__name__}); use --batch-size 1, a smaller --size, or "
                "--resolution tiled for very large images"
            )
        return f"{type(e).__name__}: {e}"

    decodes: deque[tuple[Job, Any]] = deque()
    encodes: deque[tuple[Job, Any, Any, float]] = deque()
    buckets: dict[tuple[int, int], list[tuple[Job, Any, Any, float]]] = {}
    todo = iter([j for j in jobs if j.status == "todo"])

    def fill() -> None:
        while len(decodes) < prefetch:
            job = next(todo, None)
            if job is None:
                return
            decodes.append((job, decode_pool.submit(decode, job)))

    def collect(block: bool) -> None:
        while encodes and (block or encodes[0][2].done()):
            job, image, future, seconds = encodes.popleft()
            try:
                written, dt = future.result()
                finish(job, image, seconds + dt, written, None)
            except Exception as e:
                finish(job, image, seconds, None, describe_error(e))
            if block and len(encodes) <= max_encodes:
                break

    def run_model(items: list[tuple[Job, Any, Any, float]]) -> None:
        t = time.perf_counter()
        try:
            if tiled:
                results = [predictor.predict_tiled(items[0][1])]
            else:
                results = list(predictor.forward(torch.stack([p.tensor for _, _, p, _ in items])))
        except Exception as e:
            stats.model_seconds += time.perf_counter() - t
            if len(items) > 1:  # e.g. out of memory: retry one by one
                for item in items:
                    run_model([item])
            else:
                job, image, _, seconds = items[0]
                finish(job, image, seconds, None, describe_error(e))
            return
        dt = time.perf_counter() - t
        stats.model_seconds += dt
        stats.images += len(items)
        for (job, image, _, seconds), prob in zip(items, results):
            future = encode_pool.submit(encode, job, image, prob)
            encodes.append((job, image, future, seconds + dt / len(items)))
        collect(block=False)
        if len(encodes) > max_encodes:
            collect(block=True)

    start = time.perf_counter()
    try:
        fill()
        while decodes or any(buckets.values()):
            if not decodes:  # inputs exhausted: flush partial batches
                size = max(buckets, key=lambda s: len(buckets[s]))
                run_model(buckets.pop(size))
                continue
            job, future = decodes.popleft()
            fill()
            try:
                image, prepared, seconds = future.result()
            except Exception as e:
                finish(job, None, 0.0, None, describe_error(e))
                collect(block=False)
                continue
            if tiled:
                run_model([(job, image, None, seconds)])
                continue
            bucket = buckets.setdefault(prepared.model_size, [])
            bucket.append((job, image, prepared, seconds))
            if len(bucket) >= bs:
                run_model(buckets.pop(prepared.model_size))
            elif sum(len(b) for b in buckets.values()) >= prefetch:  # many sizes: do not hoard
                size = max(buckets, key=lambda s: len(buckets[s]))
                run_model(buckets.pop(size))
        while encodes:
            collect(block=True)
    finally:
        # On an interrupt, drop queued work but let writes in flight finish (each is atomic) and
        # record the ones that did.
        decode_pool.shutdown(wait=True, cancel_futures=True)
        encode_pool.shutdown(wait=True, cancel_futures=True)
        stats.wall_seconds = time.perf_counter() - start
        while encodes:
            job, image, future, seconds = encodes.popleft()
            if future.done() and not future.cancelled() and future.exception() is None:
                written, dt = future.result()
                finish(job, image, seconds + dt, written, None)
    return stats


def _pool(workers: int, name: str) -> Any:
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)


class Manifest:
    """JSON lines in input order, written to a temporary file and renamed when closed."""

    def __init__(self, path: Path | None, total: int) -> None:
        self.path = path
        self.total = total
        self._pending: dict[int, dict[str, Any]] = {}
        self._next = 0
        self._file = None
        self._tmp: Path | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            self._file = open(self._tmp, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def add(self, index: int, record: dict[str, Any]) -> None:
        self._pending[index] = record
        while self._next in self._pending:
            rec = self._pending.pop(self._next)
            if self._file is not None:
                self._file.write(json.dumps(rec, ensure_ascii=False) + "\n")
                self._file.flush()
            self._next += 1

    def close(self) -> None:
        if self._file is None:
            return
        for index in sorted(self._pending):  # after an interrupt: what finished, in order
            self._file.write(json.dumps(self._pending.pop(index), ensure_ascii=False) + "\n")
        self._file.close()
        self._file = None
        assert self._tmp is not None and self.path is not None
        os.replace(self._tmp, self.path)


# --------------------------------------------------------------------------------------------
# run()


def _fail(message: str) -> int:
    print(f"birefnet predict: error: {message}", file=sys.stderr)
    return 2


def _options_from_args(args: argparse.Namespace) -> Options:
    """Validate the output flags (UsageError on conflicts)."""
    kinds: list[str] = []
    for group in args.output or []:
        kinds.extend(k for k in group if k not in kinds)
    wants_bg = args.bg_color is not None or args.bg_image is not None
    if not kinds:
        kinds = ["composite"] if wants_bg else ["rgba"]
    elif wants_bg and "composite" not in kinds:
        raise UsageError("--bg-color/--bg-image only apply to --output composite; add it to --output")
    if args.bg_color is not None and args.bg_image is not None:
        raise UsageError("give either --bg-color or --bg-image, not both")
    fmt = args.format or "png"
    if fmt == "jpg" and "rgba" in kinds:
        raise UsageError("jpg cannot store transparency: use --format png or webp for --output rgba")
    if args.quality is not None and not 1 <= args.quality <= 100:
        raise UsageError(f"--quality {args.quality}: must be 1-100")
    background: Any = (255, 255, 255)
    if args.bg_color is not None:
        from birefnet.imageio import parse_color

        try:
            background = parse_color(args.bg_color)
        except ValueError as e:
            raise UsageError(f"--bg-color: {e}") from e
    if args.bg_image is not None:
        from birefnet.imageio import ImageReadError, load_image

        try:
            background = load_image(args.bg_image, max_pixels=args.max_pixels or None).rgb
        except ImageReadError as e:
            raise UsageError(f"--bg-image: {e}") from e
    from birefnet.imageio import DEFAULT_MAX_PIXELS

    return Options(
        kinds=kinds,
        fmt=fmt,
        quality=args.quality or 95,
        threshold=args.threshold,
        refine_foreground=bool(args.refine_foreground),
        background=background,
        max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
        workers=args.workers or max(2, min(4, os.cpu_count() or 2)),
    )


def plan(args: argparse.Namespace, options: Options) -> tuple[list[Job], list[str]]:
    """Jobs for every input (planning errors included, outputs that exist marked skipped)."""
    out_dir = Path(args.out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"-o {out_dir}: exists and is not a folder")
    files, errors, warnings = collect_inputs(args.inputs, bool(args.recursive), out_dir)
    names = assign_outputs(files, out_dir, options.kinds, FORMAT_EXT[options.fmt])
    jobs = [Job(i, path, outputs) for i, ((path, _), outputs) in enumerate(zip(files, names))]
    for path, message in errors:
        jobs.append(Job(len(jobs), path, error=message, status="error"))
    for job in jobs:
        if job.status == "todo" and not args.overwrite and all(p.is_file() for p in job.outputs.values()):
            job.status = "skipped"
    return jobs, warnings


def run(args: argparse.Namespace) -> int:
    try:
        options = _options_from_args(args)
        jobs, warnings = plan(args, options)
    except UsageError as e:
        return _fail(str(e))
    quiet = bool(args.quiet)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    if not jobs:
        return _fail("no input images found")

    todo = [j for j in jobs if j.status == "todo"]
    predictor = None
    if todo:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        from birefnet.inference import Predictor
        from birefnet.weights import CheckpointError

        try:
            predictor = Predictor(
                args.model,
                weights=args.weights,
                resolution=args.resolution,
                size=args.size,
                device=args.device or "auto",
                precision=args.precision or "auto",
                batch_size=args.batch_size or 1,
                patch_order=args.patch_order,
                max_pixels=options.max_pixels,
                backend=args.backend,
                optimize=args.optimize,
            )
        except (CheckpointError, ValueError, KeyError, OSError) as e:
            message = str(e).strip("'\"")
            if args.weights is None and "could not download" in message:
                from birefnet.registry import DEFAULT_MODEL, get

                row = get(args.model or DEFAULT_MODEL, None)
                if row is not None:
                    message += (
                        f"\nOffline: download model.safetensors from https://huggingface.co/{row.repo_id} "
                        f"and run: birefnet predict ... --model {row.name} --weights path/to/model.safetensors"
                    )
            return _fail(message)
        if not quiet:
            print(f"birefnet: {predictor.describe()}", file=sys.stderr)
    model_label = predictor.name if predictor else (args.model or args.weights or "general")

    manifest = Manifest(Path(args.manifest).expanduser() if args.manifest else None, len(jobs))
    counts: Counter[str] = Counter()
    bar = None
    if todo and not quiet:
        from tqdm import tqdm

        bar = tqdm(
            total=len(todo),
            unit="img",
            file=sys.stderr,
            dynamic_ncols=True,
            desc="predict",
            # images/s even when slower than 1/s (tqdm would switch to s/img)
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}]",
        )

    def report(job: Job, record: dict[str, Any], counted: bool = True) -> None:
        counts[record["status"]] += 1
        if record["status"] == "error":
            line = f"error: {job.source}: {record['error']}"
            if bar is not None:
                bar.write(line, file=sys.stderr)
            else:
                print(line, file=sys.stderr)
        if bar is not None and counted:
            bar.update(1)
        manifest.add(job.index, record)

    def static_record(job: Job) -> dict[str, Any]:
        existing = [str(p) for p in job.outputs.values()] if job.status == "skipped" else []
        return {
            "input": str(job.source),
            "outputs": existing,
            "width": None,
            "height": None,
            "model": model_label,
            "seconds": 0.0,
            "status": job.status,
            "error": job.error,
            "model_size": None,
        }

    stats = None
    interrupted = False
    try:
        for job in jobs:  # planning errors and skipped inputs first (the manifest reorders)
            if job.status != "todo":
                report(job, static_record(job), counted=False)
        if predictor is not None:
            stats = run_jobs(jobs, predictor, options, on_done=report)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        if bar is not None:
            bar.close()
        manifest.close()
        failed = counts["error"]
        if interrupted:
            print(f"interrupted: {counts['ok']} done; finished outputs are complete files", file=sys.stderr)
        elif not quiet or failed:
            parts = [f"{counts['ok']} ok"]
            if counts["skipped"]:
                parts.append(f"{counts['skipped']} skipped (outputs exist; --overwrite to redo)")
            if failed:
                parts.append(f"{failed} failed")
            line = f"{', '.join(parts)} of {len(jobs)} input(s)"
            if stats is not None and stats.images:
                line += (
                    f"; {stats.images / stats.wall_seconds:.2f} img/s, model busy {100 * stats.model_busy:.0f}% "
                    f"of {stats.wall_seconds:.1f} s"
                )
            print(line, file=sys.stderr)
    return 1 if counts["error"] else 0
