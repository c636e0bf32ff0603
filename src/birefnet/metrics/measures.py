"""Metric accumulators: ``step(pred, gt)`` per image, ``results()`` for the dataset.

Each class wraps the pure functions of :mod:`.functional` and aggregates them the way the official
evaluator does (PySODMetrics style): scalar metrics are the mean of the per-image values; curves
are averaged over images first, and ``max*`` / ``mean*`` are the max / mean of that mean curve,
while ``adp*`` is the mean of the per-image adaptive values.

:class:`Evaluator` runs any subset of them on one prepared pair (shared preprocessing and shared
ground-truth work) and also accepts per-image records computed elsewhere (worker processes).

Example:
    >>> ev = Evaluator(["S", "F", "MAE"])
    >>> for pred, gt in pairs:          # uint8 (H, W) masks, or float [0, 1] predictions
    ...     ev.step(pred, gt)
    >>> ev.results()["summary"]["Smeasure"]
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence

import numpy as np

from . import functional as F
from .functional import GroundTruthInfo, PreparedPair

# Summary metric names, in the order of issue 5 / expected.json.
SUMMARY_NAMES = (
    "maxFm",
    "meanFm",
    "adpFm",
    "maxEm",
    "meanEm",
    "adpEm",
    "Smeasure",
    "wFmeasure",
    "MAE",
    "MSE",
    "HCE",
    "mBA",
    "maxBIoU",
    "meanBIoU",
)
# Per-image fields of the official evaluator's output (expected.json), in its order.
PER_IMAGE_NAMES = ("Smeasure", "wFmeasure", "MAE", "HCE", "mBA", "adpFm", "adpEm", "maxFm", "meanEm")
CURVE_NAMES = ("Fm_curve", "Em_curve", "BIoU_curve")


class Metric(ABC):
    """Base class: ``compute`` one image into a record, ``add`` records, ``results`` at the end."""

    key = ""  # the official evaluator's metric switch ("S", "E", ...)
    summary_names: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.records: list[dict] = []

    def reset(self) -> None:
        self.records = []

    @abstractmethod
    def compute(self, pair: PreparedPair) -> dict:
        """This image's values from a prepared (prediction, ground truth) pair."""

    def add(self, record: dict) -> None:
        self.records.append(record)

    def step(self, pred: np.ndarray, gt: np.ndarray | GroundTruthInfo) -> dict:
        """Evaluate one image and accumulate it.

        Args:
            pred: (h, w) uint8 0..255, bool, or float probabilities in [0, 1] (quantised by
                truncating ``p * 255``); resized to the GT size if needed.
            gt: (H, W) uint8 (foreground ``> 128``) or bool, or a :class:`GroundTruthInfo`.

        Returns:
            This image's values (scalars and, for curve metrics, (256,) curves).
        """
        pair = pred if isinstance(pred, PreparedPair) else F.prepare(pred, gt)
        record = self.compute(pair)
        self.add(record)
        return record

    def _mean(self, name: str) -> float:
        return float(np.mean(np.array([r[name] for r in self.records], dtype=np.float64)))

    def _mean_curve(self, name: str) -> np.ndarray:
        return np.mean(np.array([r[name] for r in self.records], dtype=np.float64), axis=0)

    @abstractmethod
    def results(self) -> dict:
        """Dataset values: {summary name: float, curve name: (256,) array}."""


class SMeasure(Metric):
    """Structure measure S_alpha (Fan et al., ICCV 2017), alpha = 0.5."""

    key = "S"
    summary_names = ("Smeasure",)

    def compute(self, pair: PreparedPair) -> dict:
        return {"Smeasure": F.smeasure(pair)}

    def results(self) -> dict:
        return {"Smeasure": self._mean("Smeasure")}


class EMeasure(Metric):
    """Enhanced-alignment measure E_phi (Fan et al., IJCAI 2018): max / mean over thresholds, adaptive."""

    key = "E"
    summary_names = ("maxEm", "meanEm", "adpEm")

    def compute(self, pair: PreparedPair) -> dict:
        curve = F.emeasure_curve(pair)
        return {"Em_curve": curve, "adpEm": F.emeasure_adaptive(pair), "meanEm": float(curve.mean())}

    def results(self) -> dict:
        curve = self._mean_curve("Em_curve")
        return {
            "maxEm": float(curve.max()),
            "meanEm": float(curve.mean()),
            "adpEm": self._mean("adpEm"),
            "Em_curve": curve,
        }


class FMeasure(Metric):
    """F-measure with beta^2 = 0.3: max / mean over thresholds, adaptive; precision-recall curve."""

    key = "F"
    summary_names = ("maxFm", "meanFm", "adpFm")

    def compute(self, pair: PreparedPair) -> dict:
        precision, recall, curve = F.fmeasure_curves(pair)
        return {
            "Fm_curve": curve,
            "precision": precision,
            "recall": recall,
            "adpFm": F.fmeasure_adaptive(pair),
            "maxFm": float(curve.max()),
        }

    def results(self) -> dict:
        curve = self._mean_curve("Fm_curve")
        return {
            "maxFm": float(curve.max()),
            "meanFm": float(curve.mean()),
            "adpFm": self._mean("adpFm"),
            "Fm_curve": curve,
            "precision": self._mean_curve("precision"),
            "recall": self._mean_curve("recall"),
        }


class WeightedFMeasure(Metric):
    """Weighted F-measure (Margolin et al., CVPR 2014), beta = 1 as the official evaluator."""

    key = "WF"
    summary_names = ("wFmeasure",)

    def compute(self, pair: PreparedPair) -> dict:
        return {"wFmeasure": F.weighted_fmeasure(pair)}

    def results(self) -> dict:
        return {"wFmeasure": self._mean("wFmeasure")}


class MAE(Metric):
    """Mean absolute error of the min-max normalised prediction."""

    key = "MAE"
    summary_names = ("MAE",)

    def compute(self, pair: PreparedPair) -> dict:
        return {"MAE": F.mae(pair)}

    def results(self) -> dict:
        return {"MAE": self._mean("MAE")}


class MSE(Metric):
    """Mean squared error of the min-max normalised prediction."""

    key = "MSE"
    summary_names = ("MSE",)

    def compute(self, pair: PreparedPair) -> dict:
        return {"MSE": F.mse(pair)}

    def results(self) -> dict:
        return {"MSE": self._mean("MSE")}


class HCE(Metric):
    """Human correction efforts (Qin et al., ECCV 2022, DIS5K); lower is better."""

    key = "HCE"
    summary_names = ("HCE",)

    def compute(self, pair: PreparedPair) -> dict:
        return {"HCE": float(F.hce(pair))}

    def results(self) -> dict:
        return {"HCE": self._mean("HCE")}


class MBA(Metric):
    """Mean boundary accuracy (CascadePSP, Cheng et al., CVPR 2020).

    Args:
        empty: policy for a GT without boundary (empty or full), where the official value is NaN;
            see :func:`birefnet.metrics.functional.mba`. Default ``"prediction-band"`` (a number
            in [0, 1]); ``"nan"`` reproduces the official NaN.
    """

    key = "MBA"
    summary_names = ("mBA",)

    def __init__(self, empty: str = "prediction-band") -> None:
        super().__init__()
        if empty not in ("prediction-band", "nan"):
            raise ValueError(f"empty must be 'prediction-band' or 'nan', got {empty!r}")
        self.empty = empty

    def compute(self, pair: PreparedPair) -> dict:
        return {"mBA": F.mba(pair, empty=self.empty)}

    def results(self) -> dict:
        return {"mBA": self._mean("mBA")}


class BoundaryIoU(Metric):
    """Boundary IoU (Cheng et al., CVPR 2021) over thresholds: max and mean of the mean curve."""

    key = "BIoU"
    summary_names = ("maxBIoU", "meanBIoU")

    def compute(self, pair: PreparedPair) -> dict:
        return {"BIoU_curve": F.boundary_iou_curve(pair)}

    def results(self) -> dict:
        curve = self._mean_curve("BIoU_curve")
        return {"maxBIoU": float(curve.max()), "meanBIoU": float(curve.mean()), "BIoU_curve": curve}


METRICS: dict[str, type[Metric]] = {
    cls.key: cls for cls in (SMeasure, MAE, EMeasure, FMeasure, WeightedFMeasure, MBA, BoundaryIoU, MSE, HCE)
}
# Also accepted in metric lists: summary names map to the metric computing them.
_ALIASES = {name.lower(): cls.key for cls in METRICS.values() for name in cls.summary_names}
_ALIASES.update({key.lower(): key for key in METRICS})
_ALIASES.update({"wf": "WF", "wfm": "WF", "biou": "BIoU", "mba": "MBA", "sm": "S", "em": "E", "fm": "F"})


def parse_metrics(spec: str | Iterable[str] | None) -> list[str]:
    """Metric keys from "all", "S,MAE,E", "S+HCE" or a list; accepts summary names too ("maxFm").

    Raises:
        ValueError: for an unknown name (the message lists the valid ones).
    """
    if spec is None:
        return list(METRICS)
    items = spec.replace("+", ",").split(",") if isinstance(spec, str) else list(spec)
    keys: list[str] = []
    for item in (s.strip() for s in items):
        if not item:
            continue
        if item.lower() == "all":
            return list(METRICS)
        key = _ALIASES.get(item.lower())
        if key is None:
            raise ValueError(
                f"unknown metric {item!r}; choose from {', '.join(METRICS)} (or 'all', or summary names "
                f"such as maxFm, wFmeasure)"
            )
        if key not in keys:
            keys.append(key)
    if not keys:
        raise ValueError("no metric selected; choose from " + ", ".join(METRICS))
    return keys


class Evaluator:
    """All selected metrics over a dataset, sharing preprocessing per image.

    Args:
        metrics: keys or names (see :func:`parse_metrics`); default all.
        mba_empty: mBA policy for GTs without boundary (see :class:`MBA`).
    """

    def __init__(
        self, metrics: str | Sequence[str] | None = None, mba_empty: str = "prediction-band"
    ) -> None:
        self.keys = parse_metrics(metrics)
        self.metrics = {k: (MBA(mba_empty) if k == "MBA" else METRICS[k]()) for k in self.keys}
        self.names: list[str] = []
        self.resized: list[str] = []

    def __len__(self) -> int:
        return len(self.names)

    def reset(self) -> None:
        for m in self.metrics.values():
            m.reset()
        self.names = []
        self.resized = []

    def compute(
        self, pred: np.ndarray | PreparedPair, gt: np.ndarray | GroundTruthInfo | None = None
    ) -> dict:
        """One image's record (all selected metrics) without accumulating it."""
        pair = pred if isinstance(pred, PreparedPair) else F.prepare(pred, gt)
        record: dict = {"resized": pair.resized}
        for m in self.metrics.values():
            record.update(m.compute(pair))
        return record

    def add(self, record: dict, name: str | None = None) -> None:
        """Accumulate a record from :meth:`compute` (possibly computed in another process)."""
        for m in self.metrics.values():
            m.add(record)
        name = name if name is not None else f"#{len(self.names)}"
        self.names.append(name)
        if record.get("resized"):
            self.resized.append(name)

    def step(self, pred: np.ndarray, gt: np.ndarray | GroundTruthInfo, name: str | None = None) -> dict:
        """Evaluate one (pred, gt) pair and accumulate it; returns its record."""
        record = self.compute(pred, gt)
        self.add(record, name)
        return record

    def results(self) -> dict:
        """``{"summary": {...}, "curves": {...}, "per_image": [...]}`` (expected.json's layout).

        Summary keys follow :data:`SUMMARY_NAMES` (only the selected metrics); curves are (256,)
        arrays in the official threshold order (index i <-> threshold 255 - i), plus the mean
        ``precision`` and ``recall`` curves when F is selected; per-image entries have ``name`` and
        the official per-image fields of the selected metrics.
        """
        if not self.names:
            raise ValueError("no image was evaluated")
        merged: dict = {}
        for m in self.metrics.values():
            merged.update(m.results())
        summary = {k: merged[k] for k in SUMMARY_NAMES if k in merged}
        curves = {k: merged[k] for k in (*CURVE_NAMES, "precision", "recall") if k in merged}
        per_image = []
        records = [{} for _ in self.names]
        for m in self.metrics.values():
            for rec, r in zip(records, m.records):
                rec.update(r)
        columns = [k for k in PER_IMAGE_NAMES if k in records[0]]
        for name, rec in zip(self.names, records):
            per_image.append({"name": name, **{k: float(rec[k]) for k in columns}})
        return {"summary": summary, "curves": curves, "per_image": per_image}
