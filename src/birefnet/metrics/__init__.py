"""The official DIS / SOD evaluation metrics, with the official numbers, computed fast.

S-measure, E-measure (max / mean / adaptive), F-measure (max / mean / adaptive, beta^2 = 0.3),
weighted F-measure, MAE, MSE, HCE, mBA and boundary IoU (max / mean), equal to BiRefNet's
``evaluation/metrics.py`` (PySODMetrics + IS-Net HCE) to floating-point rounding.

* :mod:`.functional`: pure maths on one prepared (pred, gt) pair.
* :mod:`.measures`: accumulators (``step(pred, gt)`` / ``results()``) and :class:`Evaluator`.
* :mod:`.evaluate`: folders of mask files (pairing, reading, process pool).
* :mod:`.plots`: PR / F / E curve plots.

Example:
    >>> from birefnet.metrics import Evaluator
    >>> ev = Evaluator()                      # all metrics; Evaluator("S,MAE,F") for a subset
    >>> ev.step(pred_uint8, gt_uint8, name="img_000.png")
    >>> ev.results()["summary"]
"""

from .functional import GroundTruthInfo, MaskError, PreparedPair, prepare
from .measures import (
    HCE,
    MAE,
    MBA,
    METRICS,
    MSE,
    PER_IMAGE_NAMES,
    SUMMARY_NAMES,
    BoundaryIoU,
    EMeasure,
    Evaluator,
    FMeasure,
    Metric,
    SMeasure,
    WeightedFMeasure,
    parse_metrics,
)

__all__ = [
    "HCE",
    "MAE",
    "MBA",
    "METRICS",
    "MSE",
    "PER_IMAGE_NAMES",
    "SUMMARY_NAMES",
    "BoundaryIoU",
    "EMeasure",
    "Evaluator",
    "FMeasure",
    "GroundTruthInfo",
    "MaskError",
    "Metric",
    "PreparedPair",
    "SMeasure",
    "WeightedFMeasure",
    "parse_metrics",
    "prepare",
]
