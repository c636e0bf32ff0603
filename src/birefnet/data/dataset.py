"""Image/mask datasets in the official layout ``<root>/<dataset>/{im,gt}``.

``find_pairs`` walks the folders once, matches images and masks by file stem, checks that every
file can be opened and that image and mask sizes agree, and returns the good pairs plus a
:class:`DataReport` listing every bad one (missing mask, mask without image, duplicate stem,
unreadable file, size mismatch). :class:`SegmentationDataset` then reads one pair per item,
never holding the dataset in memory, resizes it to the training size, applies the official
augmentations and returns normalised tensors.

DIS5K file names carry the class: ``1#Accessories#1#Bag#2339506821_83cf9f1d22_o.jpg`` has class
``Bag`` (the fourth ``#`` field, as the official ``dataset.py``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from birefnet.data.transforms import (
    DEFAULT_AUGMENTATIONS,
    apply_augmentations,
    random_background_color,
    to_tensors,
)

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "BadPair",
    "DataReport",
    "EmptyDatasetError",
    "Pair",
    "SegmentationDataset",
    "class_name_from_stem",
    "find_pairs",
    "read_image",
    "read_mask",
    "resolve_dataset_dirs",
]

#: File extensions read as images or masks (compared case-insensitively).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
IGNORE_INDEX = -100  # class label of a sample without a class (ignored by the cross-entropy)

Verify = Literal["header", "full", "none"]


class EmptyDatasetError(ValueError):
    """No usable image/mask pair was found; the message says what was found instead."""


@dataclass(frozen=True)
class Pair:
    """One training sample on disk.

    Attributes:
        image: path of the RGB image.
        mask: path of the ground-truth mask (same stem).
        dataset: name of the dataset folder it came from.
        class_name: DIS class parsed from the file name, or None.
    """

    image: Path
    mask: Path
    dataset: str
    class_name: str | None = None

    @property
    def name(self) -> str:
        return self.image.stem


@dataclass(frozen=True)
class BadPair:
    """A sample that was left out, and why (``reason`` is one of the DataReport categories)."""

    dataset: str
    name: str
    reason: str
    detail: str = ""


@dataclass
class DataReport:
    """What :func:`find_pairs` found: counts per dataset and every left-out sample."""

    datasets: dict[str, int] = field(default_factory=dict)  # dataset -> usable pairs
    bad: list[BadPair] = field(default_factory=list)

    @property
    def num_pairs(self) -> int:
        return sum(self.datasets.values())

    def counts(self) -> dict[str, int]:
        """Number of left-out samples per reason."""
        out: dict[str, int] = {}
        for b in self.bad:
            out[b.reason] = out.get(b.reason, 0) + 1
        return out

    def summary(self, limit: int = 10) -> str:
        """Human-readable report: usable pairs, then each problem with up to ``limit`` names."""
        lines = [f"{self.num_pairs} usable pairs: " + ", ".join(f"{k} {v}" for k, v in self.datasets.items())]
        for reason, count in self.counts().items():
            items = [b for b in self.bad if b.reason == reason]
            shown = ", ".join(
                f"{b.dataset}/{b.name}" + (f" ({b.detail})" if b.detail else "") for b in items[:limit]
            )
            more = f" ... (+{count - limit} more)" if count > limit else ""
            lines.append(f"  left out, {reason} ({count}): {shown}{more}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"datasets": self.datasets, "counts": self.counts(), "bad": [asdict(b) for b in self.bad]}

    def write_json(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def class_name_from_stem(stem: str) -> str | None:
    """DIS5K class of a file stem (the fourth ``#`` field), or None when the name has no such field."""
    parts = stem.split("#")
    return parts[3] if len(parts) > 3 and parts[3] else None


def _split_names(datasets: str | Sequence[str] | None) -> list[str]:
    if datasets is None:
        return []
    if isinstance(datasets, str):
        datasets = [datasets]
    names: list[str] = []
    for entry in datasets:
        names.extend(part.strip() for part in str(entry).split("+") if part.strip())
    return names


def _is_dataset_dir(path: Path) -> bool:
    return (path / "im").is_dir() and (path / "gt").is_dir()


def resolve_dataset_dirs(
    root: str | os.PathLike | None, datasets: str | Sequence[str] | None, exclude: Iterable[str] = ()
) -> list[tuple[str, Path]]:
    """(name, folder) of each dataset to read.

    Args:
        root: folder holding the datasets (the official ``<data_root>/<task>``), or one dataset
            folder with ``im/`` and ``gt/`` itself.
        datasets: dataset names (folders under ``root``, or paths), as a list or joined with
            "+" (official ``DIS-TR+DIS-TE1``). Empty: ``root`` itself if it is a dataset folder,
            else every sub-folder of ``root`` with ``im/`` and ``gt/`` (the official rule for the
            General task), except ``exclude``.
        exclude: names skipped when datasets are discovered (e.g. the validation sets).

    Raises:
        FileNotFoundError: a named dataset or the root does not exist / lacks im or gt; the
            message lists what is there.
        EmptyDatasetError: nothing to read.
    """
    base = Path(root).expanduser() if root else None
    names = _split_names(datasets)
    if not names:
        if base is None:
            raise EmptyDatasetError("no data root and no dataset given: set data.root (and data.train_sets)")
        if not base.is_dir():
            raise FileNotFoundError(f"data root {base} does not exist")
        if _is_dataset_dir(base):
            return [(base.name, base)]
        excluded = set(_split_names(list(exclude)))
        found = [(p.name, p) for p in sorted(base.iterdir()) if _is_dataset_dir(p) and p.name not in excluded]
        if not found:
            raise EmptyDatasetError(
                f"{base} has no dataset folders (sub-folders with im/ and gt/); layout: {base}/<dataset>/im, "
                f"{base}/<dataset>/gt. Found: {sorted(p.name for p in base.iterdir())[:20]}"
            )
        return found
    out = []
    for name in names:
        candidates = [base / name] if base is not None else []
        candidates.append(Path(name).expanduser())
        folder = next((c for c in candidates if c.is_dir()), None)
        if folder is None:
            where = f"under {base}" if base is not None else "(no data.root set)"
            listing = (
                sorted(p.name for p in base.iterdir() if p.is_dir())[:30] if base and base.is_dir() else []
            )
            raise FileNotFoundError(f"dataset {name!r} not found {where}; folders there: {listing}")
        missing = [sub for sub in ("im", "gt") if not (folder / sub).is_dir()]
        if missing:
            raise FileNotFoundError(
                f"dataset folder {folder} lacks {' and '.join(missing)}/: expected {folder}/im (images) and "
                f"{folder}/gt (masks with the same file stems)"
            )
        out.append((name, folder))
    return out


def _list_images(folder: Path) -> dict[str, list[Path]]:
    by_stem: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."):
            by_stem.setdefault(p.stem, []).append(p)
    return by_stem


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header; raises OSError-like errors for unreadable files."""
    with Image.open(path) as img:
        return img.size


def _check_pair(pair: Pair, verify: Verify) -> str | None:
    """None if the pair is usable, else the reason ("unreadable" / "size mismatch") with detail."""
    try:
        if verify == "full":
            image = read_image(pair.image)
            mask = read_mask(pair.mask)
            isize, msize = image.shape[1::-1], mask.shape[::-1]
        else:
            isize, msize = _header_size(pair.image), _header_size(pair.mask)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, cv2.error) as e:
        return f"unreadable: {type(e).__name__}: {e}"
    if tuple(isize) != tuple(msize):
        return f"size mismatch: image {isize[0]}x{isize[1]}, mask {msize[0]}x{msize[1]}"
    return None


def find_pairs(
    root: str | os.PathLike | None,
    datasets: str | Sequence[str] | None = None,
    *,
    exclude: Iterable[str] = (),
    verify: Verify = "header",
    num_threads: int = 4,
) -> tuple[list[Pair], DataReport]:
    """Match images and masks by stem in each dataset's ``im/`` and ``gt/`` folders.

    Args:
        root, datasets, exclude: which datasets, see :func:`resolve_dataset_dirs`.
        verify: "header" opens every file's header (fast; finds non-images, truncated headers and
            size mismatches), "full" decodes every file (also finds truncated pixel data; slow on
            large sets), "none" trusts the file names.
        num_threads: threads for the checks (file reads release the GIL).

    Returns:
        (usable pairs sorted by dataset then stem, report of what was left out). Problems are
        also logged as one warning with the first names.

    Raises:
        EmptyDatasetError: when no usable pair is left; the message says what was found.
    """
    if verify not in ("header", "full", "none"):
        raise ValueError(f"verify must be 'header', 'full' or 'none', got {verify!r}")
    report = DataReport()
    candidates: list[Pair] = []
    for name, folder in resolve_dataset_dirs(root, datasets, exclude):
        images = _list_images(folder / "im")
        masks = _list_images(folder / "gt")
        for stem, paths in images.items():
            if len(paths) > 1:
                report.bad.append(
                    BadPair(name, stem, "duplicate image stem", ", ".join(p.name for p in paths))
                )
            if stem not in masks:
                report.bad.append(BadPair(name, stem, "missing mask", paths[0].name))
                continue
            if len(masks[stem]) > 1:
                report.bad.append(
                    BadPair(name, stem, "duplicate mask stem", ", ".join(p.name for p in masks[stem]))
                )
            candidates.append(Pair(paths[0], masks[stem][0], name, class_name_from_stem(stem)))
        for stem, paths in masks.items():
            if stem not in images:
                report.bad.append(BadPair(name, stem, "mask without image", paths[0].name))
        report.datasets.setdefault(name, 0)
        if not images and not masks:
            logger.warning("dataset %s: %s/im and %s/gt hold no image files", name, folder, folder)

    if verify == "none":
        problems: list[str | None] = [None] * len(candidates)
    else:
        with ThreadPoolExecutor(max(1, num_threads)) as pool:
            problems = list(pool.map(lambda p: _check_pair(p, verify), candidates))
    pairs = []
    for pair, problem in zip(candidates, problems):
        if problem is None:
            pairs.append(pair)
            report.datasets[pair.dataset] += 1
        else:
            reason, _, detail = problem.partition(": ")
            report.bad.append(BadPair(pair.dataset, pair.name, reason, detail))
    # duplicates are informational (the first file was used); everything else was left out
    if report.bad:
        logger.warning("data problems:\n%s", report.summary())
    if not pairs:
        raise EmptyDatasetError(f"no usable image/mask pairs.\n{report.summary()}")
    return pairs, report


# ----------------------------------------------------------------------------------------------
# reading files


def _read_8bit(path: str | os.PathLike, what: str) -> np.ndarray:
    """A file decoded as stored (channels in OpenCV's BGR(A) order), with 16-bit and float data
    brought to uint8 (16 bit divided by 257, float clipped to [0, 255]).

    Raises:
        OSError: the file cannot be read or decoded.
    """
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise OSError(f"cannot decode {what} {path}")
    if data.dtype == np.uint16:
        return (data // 257).astype(np.uint8)
    if data.dtype != np.uint8:
        return np.clip(data, 0, 255).astype(np.uint8)
    return data


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB (grey is repeated, alpha dropped, 16 bit scaled).

    Raises:
        OSError: the file cannot be read or decoded.
    """
    data = _read_8bit(path, "image")
    if data.ndim == 2:
        return cv2.cvtColor(data, cv2.COLOR_GRAY2RGB)
    if data.shape[2] == 4:
        return cv2.cvtColor(data, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(data, cv2.COLOR_BGR2RGB)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask file as (H, W) uint8 (0 background, 255 foreground; soft values kept).

    Colour masks are converted to grey (as the official ``cv2.IMREAD_GRAYSCALE``); a 4-channel
    mask whose alpha is not constant is read from its alpha (a cut-out saved as RGBA); 16-bit
    masks are scaled to 8 bit.
    """
    data = _read_8bit(path, "mask")
    if data.ndim == 3:
        if data.shape[2] == 4 and data[..., 3].min() != data[..., 3].max():
            return np.ascontiguousarray(data[..., 3])
        data = cv2.cvtColor(data[..., :3], cv2.COLOR_BGR2GRAY)
    return data


# ----------------------------------------------------------------------------------------------
# dataset


class SegmentationDataset(Dataset):
    """Image/mask pairs for training or validation, read from disk one item at a time.

    Each item: the pair is read, both are resized to ``size`` with bilinear interpolation
    (official: non-aspect-preserving resize at load time, before augmentation), optionally the
    background is recoloured, the augmentations run with a generator seeded from
    ``(seed, epoch, index)``, and the result is normalised.

    An index can be an ``int`` (epoch 0) or an ``(epoch, index)`` tuple; the training sampler
    yields tuples so that every epoch draws new augmentations that do not depend on which worker
    loads the item.

    Args:
        pairs: from :func:`find_pairs`.
        size: (width, height) of the returned tensors; None keeps each file's own size (for
            validation at the original resolution with batch size 1).
        augmentations: names from :data:`~birefnet.data.transforms.AUGMENTATIONS`; empty for
            validation.
        background_color_synthesis: probability of replacing the background by a flat colour
            (0 = off, the official default).
        seed: base seed of the augmentations.
        class_names: class list for the ``class_label`` field (index in this list; -100 when a
            name is not in it or has no class). None: sorted names found in ``pairs``.

    Items are dicts: ``image`` (3, H, W) float32 normalised, ``mask`` (1, H, W) float32 in [0, 1],
    ``class_label`` int64, ``index`` int64, ``name`` str.
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        *,
        size: tuple[int, int] | None = (1024, 1024),
        augmentations: Sequence[str] = DEFAULT_AUGMENTATIONS,
        background_color_synthesis: float = 0.0,
        seed: int = 0,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if not pairs:
            raise EmptyDatasetError("SegmentationDataset needs at least one pair")
        self.pairs = list(pairs)
        self.size = tuple(size) if size is not None else None
        self.augmentations = tuple(augmentations)
        apply_augmentations(
            np.zeros((4, 4, 3), np.uint8),
            np.zeros((4, 4), np.uint8),
            self.augmentations,
            np.random.default_rng(0),
        )  # fail early on unknown names
        self.background_color_synthesis = float(background_color_synthesis)
        self.seed = int(seed)
        if class_names is None:
            class_names = sorted({p.class_name for p in self.pairs if p.class_name})
        self.class_names = tuple(class_names)
        self._class_index = {n: i for i, n in enumerate(self.class_names)}
        self.load_failures = 0  # per process; see __getitem__

    def __len__(self) -> int:
        return len(self.pairs)

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image (H, W, 3) uint8, mask (H, W) uint8) of pair ``index``, resized to ``size``."""
        pair = self.pairs[index]
        image = read_image(pair.image)
        mask = read_mask(pair.mask)
        if self.size is not None:
            if image.shape[1::-1] != self.size:
                image = cv2.resize(image, self.size, interpolation=cv2.INTER_LINEAR)
            if mask.shape[::-1] != self.size:
                mask = cv2.resize(mask, self.size, interpolation=cv2.INTER_LINEAR)
        elif image.shape[:2] != mask.shape:
            mask = cv2.resize(mask, image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
        return image, mask

    def sample_rng(self, epoch: int, index: int) -> np.random.Generator:
        """The generator of one sample's augmentations (depends only on seed, epoch and index)."""
        return np.random.default_rng([self.seed, epoch, index])

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = (0, int(key)) if not isinstance(key, (tuple, list)) else (int(key[0]), int(key[1]))
        # A file that passed the header check can still fail to decode (truncated pixel data).
        # Substitute the next pair rather than crash hours into a run; the substitute is a pure
        # function of the index, so runs stay reproducible.
        for attempt in range(len(self.pairs)):
            i = (index + attempt) % len(self.pairs)
            try:
                image, mask = self.load_pair(i)
                break
            except (OSError, ValueError, cv2.error) as e:
                self.load_failures += 1
                logger.warning("skipping unreadable pair %s (%s); using the next one", self.pairs[i].image, e)
        else:
            raise OSError("no pair of the dataset could be read")
        rng = self.sample_rng(epoch, index)
        if self.background_color_synthesis > 0:
            image = random_background_color(image, mask, rng, p=self.background_color_synthesis)
        if self.augmentations:
            image, mask = apply_augmentations(image, mask, self.augmentations, rng)
        x, y = to_tensors(image, mask)
        pair = self.pairs[i]
        label = self._class_index.get(pair.class_name, IGNORE_INDEX) if pair.class_name else IGNORE_INDEX
        return {
            "image": x,
            "mask": y,
            "class_label": torch.tensor(label, dtype=torch.long),
            "index": torch.tensor(i, dtype=torch.long),
            "name": pair.name,
        }
