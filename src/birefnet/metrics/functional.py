"""The official DIS / SOD metrics as pure functions, computed the fast way with the same numbers.

Conventions (the official evaluator's, ``evaluation/metrics.py`` of the BiRefNet repository, which
derives from PySODMetrics and the IS-Net HCE code):

* ``pred`` and ``gt`` are (H, W) uint8 masks in 0..255, as ``cv2.imread(path, cv2.IMREAD_GRAYSCALE)``
  gives them. :func:`prepare` accepts bool and float [0, 1] arrays too (floats are quantised by
  truncating ``p * 255``, which is how the official inference script saves predictions).
* A prediction of another size is resized to the GT size with ``cv2.resize`` (bilinear), as the
  official evaluator does.
* Foreground of the GT is ``gt > 128``. For S, E, F, wF, MAE, MSE and BIoU the prediction is divided
  by 255 and min-max normalised per image (unless constant); HCE and mBA threshold the raw
  prediction at ``> 128``.
* Curves have 256 entries in the official order: index ``i`` is the threshold ``255 - i`` (on the
  normalised prediction quantised back to uint8), so index 0 is the strictest threshold.

Everything that only depends on the pixel values is computed from histograms of the 256 grey
levels (exact integer counts), so S, E, F, MAE and MSE cost one pass over the image; wF, HCE, mBA
and BIoU use OpenCV morphology and a few vectorised look-ups. The results equal the official
evaluator's to floating-point rounding (~1e-15), including its tie-breaking and special cases;
``_reference.py`` holds a literal implementation that the tests compare against.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from functools import cached_property

import cv2
import numpy as np

from ._jit import compiled
from .skeleton import ComponentSkeleton, skeletonize

logger = logging.getLogger(__name__)

EPS = float(np.spacing(1))  # the official evaluator's _EPS (MATLAB's eps)
BETA2 = 0.3  # beta^2 of the F-measure
_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=np.uint8)  # skimage disk(1)
_LEVELS = np.arange(256, dtype=np.float64)
_CALCHIST_LIMIT = 1 << 24  # cv2.calcHist counts in float32: exact below 2**24 pixels
_PAD = 4  # zero frame for the wF nearest-GT look-ups (the nearest GT pixel is <= 4 px away)


class MaskError(ValueError):
    """An array that cannot be read as a mask (wrong shape, dtype or range)."""


def as_uint8_mask(array: np.ndarray, name: str = "mask") -> np.ndarray:
    """Convert a mask to the (H, W) uint8 0..255 form the official evaluator reads.

    Args:
        array: (H, W) uint8 (returned as is), bool (0/255), float in [0, 1] (``trunc(p * 255)``,
            the official way of saving predictions) or integer in [0, 255].
        name: used in error messages ("pred", "gt").

    Raises:
        MaskError: for other shapes, NaNs, or values out of range.
    """
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim != 2:
        raise MaskError(
            f"{name} must be a single-channel (H, W) mask, got shape {a.shape}; convert colour images "
            f"to grey first (cv2.imread(path, cv2.IMREAD_GRAYSCALE) as the official evaluator does)"
        )
    if a.size == 0:
        raise MaskError(f"{name} is empty (shape {a.shape})")
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(a.dtype, np.floating):
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        if np.isnan(a).any() or lo < 0 or hi > 1:
            raise MaskError(
                f"{name} is float with values in [{lo}, {hi}]{' and NaNs' if np.isnan(a).any() else ''}; "
                f"float masks must be probabilities in [0, 1] (or pass uint8 0..255)"
            )
        return (a * 255).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            raise MaskError(f"{name} has integer values in [{lo}, {hi}]; expected 0..255 (8-bit masks)")
        return a.astype(np.uint8)
    raise MaskError(f"{name} has unsupported dtype {a.dtype}; pass uint8, bool or float in [0, 1]")


def _hist(values: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Counts of the 256 grey levels of a uint8 (view of an) image, optionally under a 0/1 mask."""
    if values.size == 0:
        return np.zeros(256, dtype=np.int64)
    if values.size < _CALCHIST_LIMIT:
        h = cv2.calcHist([values], [0], mask, [256], [0, 256])
        return h.ravel().astype(np.int64)
    v = values if mask is None else values[mask.astype(bool)]
    return np.bincount(v.ravel(), minlength=256).astype(np.int64)


class GroundTruthInfo:
    """Everything derived from a ground truth alone, computed lazily and reusable across predictions.

    Evaluating several models (or epochs) against the same GT computes the skeleton, distance
    transform, wF neighbourhood and mBA bands once. ``birefnet.metrics.evaluate`` does this per GT
    file; pass the same object to :func:`prepare` to share it yourself.

    Args:
        gt: (H, W) uint8 ground truth (foreground ``> 128``).
        skeleton: optional precomputed (H, W) bool skeleton of ``gt > 128`` (e.g. from a cache).
    """

    def __init__(self, gt: np.ndarray, skeleton: np.ndarray | None = None) -> None:
        self.gt = gt
        if skeleton is not None:
            if skeleton.shape != gt.shape:
                raise MaskError(f"skeleton shape {skeleton.shape} differs from the GT's {gt.shape}")
            self.__dict__["skeleton"] = np.asarray(skeleton, dtype=bool)
        self._bands: dict[int, tuple[slice, slice, np.ndarray]] = {}

    @cached_property
    def fg(self) -> np.ndarray:
        """(H, W) bool GT foreground, ``gt > 128``."""
        return self.gt > 128

    @cached_property
    def fg8(self) -> np.ndarray:
        """(H, W) uint8 0/1 GT foreground (OpenCV masks and morphology)."""
        return self.fg.view(np.uint8)

    @cached_property
    def n_fg(self) -> int:
        return int(cv2.countNonZero(self.fg8))

    @cached_property
    def skeleton(self) -> np.ndarray:
        """(H, W) bool Zhang-Suen skeleton of the GT (identical to scikit-image's)."""
        parts = self.__dict__.get("_components")
        if parts is not None:
            return parts.ensure(self.fg)
        return skeletonize(self.fg)

    def skeleton_where(self, where: np.ndarray) -> np.ndarray:
        """(H, W) bool skeleton, exact on every GT component (8-connected) that meets ``where``.

        HCE only looks at skeleton pixels the prediction misses, so only the components holding a
        false negative are thinned (each on its own box); the rest may be left out. Uses the full
        skeleton when it is already known (given, cached or computed).
        """
        if "skeleton" in self.__dict__:
            return self.__dict__["skeleton"]
        if "_components" not in self.__dict__:
            self.__dict__["_components"] = ComponentSkeleton(self.fg8)
        return self.__dict__["_components"].ensure(where)

    @cached_property
    def box(self) -> tuple[int, int, int, int] | None:
        """(y0, y1, x0, x1) bounding box of the GT foreground; None when it is empty."""
        x, y, w, h = cv2.boundingRect(self.fg8)
        return None if w == 0 else (y, y + h, x, x + w)

    def grown_box(self, margin: int) -> tuple[slice, slice]:
        """The GT's bounding box grown by ``margin`` pixels, clipped to the image, as slices."""
        y0, y1, x0, x1 = self.box
        height, width = self.gt.shape
        return (
            slice(max(0, y0 - margin), min(height, y1 + margin)),
            slice(max(0, x0 - margin), min(width, x1 + margin)),
        )

    def _weights_in(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        """(squared distances, wF importance) on a window that holds the whole GT.

        The nearest GT pixel of every pixel of such a window lies inside it, so the distance
        transform of the window alone is exact there. The last window is kept; a request outside it
        computes the union of both (so several predictions of one GT end up sharing one transform).
        """
        cached = self.__dict__.get("_weights")
        if cached is None or not _contains(cached[0], (rows, cols)):
            window = (rows, cols) if cached is None else _union(cached[0], (rows, cols))
            fg = self.fg[window]
            dist = gt_distance_sq(fg)
            cached = (window, dist, gt_importance(dist, fg))
            self.__dict__["_weights"] = cached
        (r, c), dist, imp = cached
        sub = (
            slice(rows.start - r.start, rows.stop - r.start),
            slice(cols.start - c.start, cols.stop - c.start),
        )
        return dist[sub], imp[sub]

    @property
    def distance_sq(self) -> np.ndarray:
        """(H, W) int32 exact squared distance to the GT, clamped (see :func:`gt_distance_sq`)."""
        if self.box is None:
            return gt_distance_sq(self.fg)
        return self._weights_in(slice(0, self.gt.shape[0]), slice(0, self.gt.shape[1]))[0]

    @property
    def importance(self) -> np.ndarray:
        """(H, W) wF background importance weights (see :func:`gt_importance`)."""
        if self.box is None:
            return gt_importance(gt_distance_sq(self.fg), self.fg)
        return self._weights_in(slice(0, self.gt.shape[0]), slice(0, self.gt.shape[1]))[1]

    @cached_property
    def wf_neighbourhood(self) -> _WfNeighbourhood:
        """GT box, ring pixels and their nearest GT pixel (see :func:`_wf_neighbourhood`).

        Everything lies within 3 px of the GT, so it is computed on the GT's box grown by 3 px.
        """
        rows, cols = self.grown_box(3)
        fg8 = np.ascontiguousarray(self.fg8[rows, cols])
        nb = _wf_neighbourhood(fg8, self._weights_in(rows, cols)[0])
        nb.rows = slice(nb.rows.start + rows.start, nb.rows.stop + rows.start)
        nb.cols = slice(nb.cols.start + cols.start, nb.cols.stop + cols.start)
        return nb

    def band(self, radius: int) -> tuple[slice, slice, np.ndarray]:
        """mBA band: morphological gradient of the GT with an elliptical kernel.

        Returns:
            (rows, cols, band): the band is uint8, zero outside the window ``[rows, cols]`` (the GT's
            box grown by ``radius + 1``; the window is empty for an empty GT).
        """
        if radius not in self._bands:
            if self.box is None:
                self._bands[radius] = (slice(0, 0), slice(0, 0), np.zeros((0, 0), np.uint8))
            else:
                rows, cols = self.grown_box(radius + 1)
                kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
                fg8 = np.ascontiguousarray(self.fg8[rows, cols])
                self._bands[radius] = (rows, cols, cv2.morphologyEx(fg8, cv2.MORPH_GRADIENT, kernel))
        return self._bands[radius]

    @cached_property
    def biou_boundary(self) -> np.ndarray:
        """(H, W) uint8 0/1 GT boundary of the boundary IoU."""
        h, w = self.gt.shape
        return (_mask_boundary(self.fg8 * np.uint8(255), biou_dilation(h, w)) > 128).view(np.uint8)


def _contains(outer: tuple[slice, slice], inner: tuple[slice, slice]) -> bool:
    return all(o.start <= i.start and i.stop <= o.stop for o, i in zip(outer, inner))


def _union(a: tuple[slice, slice], b: tuple[slice, slice]) -> tuple[slice, slice]:
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


@dataclass
class PreparedPair:
    """One (pred, gt) pair with what every metric shares, computed once.

    Attributes:
        pred: (H, W) uint8 raw prediction, already at the GT size.
        info: the ground truth and what derives from it (:class:`GroundTruthInfo`).
        resized: whether ``pred`` had to be resized to the GT size.
    """

    pred: np.ndarray
    info: GroundTruthInfo
    resized: bool = False
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def gt(self) -> np.ndarray:
        return self.info.gt

    @property
    def fg(self) -> np.ndarray:
        return self.info.fg

    @property
    def fg8(self) -> np.ndarray:
        return self.info.fg8

    @property
    def n_fg(self) -> int:
        return self.info.n_fg

    @property
    def size(self) -> int:
        return self.info.gt.size

    @cached_property
    def hist_all(self) -> np.ndarray:
        """(256,) int64 counts of each raw prediction level over the image."""
        return _hist(self.pred)

    @cached_property
    def hist_fg(self) -> np.ndarray:
        """(256,) int64 counts of each raw prediction level inside the GT foreground."""
        if self.n_fg == 0:
            return np.zeros(256, dtype=np.int64)
        if self.n_fg == self.size:
            return self.hist_all
        return _hist(self.pred, self.fg8)

    @cached_property
    def hist_bg(self) -> np.ndarray:
        return self.hist_all - self.hist_fg

    @cached_property
    def lut(self) -> np.ndarray:
        """(256,) float64: the official normalised prediction value of each raw level.

        ``pred / 255`` then ``(pred - min) / (max - min)`` unless the prediction is constant,
        evaluated on the 256 levels with the same float operations as on the image, so the values
        are bit-identical.
        """
        present = np.flatnonzero(self.hist_all)
        scaled = _LEVELS / 255
        lo, hi = scaled[present[0]], scaled[present[-1]]
        if hi != lo:
            return (scaled - lo) / (hi - lo)
        return scaled

    @cached_property
    def quantised(self) -> np.ndarray:
        """(256,) uint8: ``(normalised * 255).astype(uint8)`` of each raw level (the curves' bins)."""
        return (self.lut * 255).astype(np.uint8)

    @cached_property
    def normalised(self) -> np.ndarray:
        """(H, W) float64 normalised prediction (only built where exact float sums are needed)."""
        return self.lut[self.pred]

    @cached_property
    def mean(self) -> float:
        """Mean of the normalised prediction (numpy's summation order when it could matter)."""
        return float(self.normalised.mean())

    def adaptive_selection(self) -> np.ndarray:
        """(256,) bool: raw levels whose normalised value is >= the official adaptive threshold.

        The threshold is ``min(2 * mean, 1)``. The mean is first taken from the histogram; only when
        a grey level lies within 1e-9 of the threshold (where the last bit of the sum could flip a
        comparison) is numpy's own mean of the full image used, as the official code computes it.
        """
        if "adaptive" in self._cache:
            return self._cache["adaptive"]
        present = self.hist_all > 0
        twice = 2 * math.fsum(self.hist_all[present] * self.lut[present]) / self.size
        if twice > 1 + 1e-9:
            thr = 1.0  # capped, however the sum is rounded
        elif np.any(np.abs(self.lut[present] - twice) < 1e-9):
            thr = min(2 * self.mean, 1)
        else:
            thr = min(twice, 1)
        sel = self.lut >= thr
        self._cache["adaptive"] = sel
        return sel

    def quantised_hists(self) -> tuple[np.ndarray, np.ndarray]:
        """(fg, bg) int64 counts of the quantised normalised prediction (256 bins)."""
        if "qh" not in self._cache:
            q = self.quantised
            fg = np.bincount(q, weights=self.hist_fg, minlength=256).astype(np.int64)
            bg = np.bincount(q, weights=self.hist_bg, minlength=256).astype(np.int64)
            self._cache["qh"] = (fg, bg)
        return self._cache["qh"]


def prepare(pred: np.ndarray, gt: np.ndarray | GroundTruthInfo) -> PreparedPair:
    """Validate a (pred, gt) pair and resize the prediction to the GT size if needed.

    Args:
        pred: (h, w) prediction; see :func:`as_uint8_mask` for the accepted forms.
        gt: (H, W) ground truth, same forms, or a :class:`GroundTruthInfo` to reuse what was
            derived from it. RGB arrays are rejected here; the file reader in :mod:`.evaluate`
            converts colour files to grey as the official evaluator does.

    Returns:
        The :class:`PreparedPair`; ``resized`` tells whether the prediction was resized (bilinear,
        ``cv2.resize`` as the official evaluator, which does it silently).
    """
    info = (
        gt
        if isinstance(gt, GroundTruthInfo)
        else GroundTruthInfo(np.ascontiguousarray(as_uint8_mask(gt, "gt")))
    )
    p = as_uint8_mask(pred, "pred")
    g = info.gt
    resized = p.shape != g.shape
    if resized:
        p = cv2.resize(p, (g.shape[1], g.shape[0]), interpolation=cv2.INTER_LINEAR)
    return PreparedPair(np.ascontiguousarray(p), info, resized)


# ----------------------------------------------------------------------------------------------
# F-measure, E-measure, MAE, MSE (histogram based)
# ----------------------------------------------------------------------------------------------


def _cumulative(hist: np.ndarray) -> np.ndarray:
    """Counts of values >= 255 - i for i = 0..255 (the official flip + cumsum)."""
    return np.cumsum(hist[::-1])


def fmeasure_curves(pair: PreparedPair, beta2: float = BETA2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F-measure curves of one image.

    Returns:
        Three (256,) float64 arrays; index ``i`` is the threshold ``pred_quantised >= 255 - i``.
    """
    fg, bg = pair.quantised_hists()
    tp = _cumulative(fg)
    ps = tp + _cumulative(bg)
    ps[ps == 0] = 1
    t = max(pair.n_fg, 1)
    precision = tp / ps
    recall = tp / t
    num = (1 + beta2) * precision * recall
    den = np.where(num == 0, 1, beta2 * precision + recall)
    return precision, recall, num / den


def fmeasure_adaptive(pair: PreparedPair, beta2: float = BETA2) -> float:
    """F-measure at the adaptive threshold ``min(2 * mean(pred), 1)``."""
    sel = pair.adaptive_selection()
    inter = int(pair.hist_fg[sel].sum())
    if inter == 0:
        return 0.0
    pre = inter / int(pair.hist_all[sel].sum())
    rec = inter / pair.n_fg
    return float((1 + beta2) * pre * rec / (beta2 * pre + rec))


def _enhanced_alignment_sum(fg_fg, fg_bg, n_fg: int, size: int):
    """Sum of the enhanced-alignment matrix from the four confusion counts (scalars or arrays)."""
    pred_fg = fg_fg + fg_bg
    pred_bg = size - pred_fg
    if n_fg == 0:
        return pred_bg
    if n_fg == size:
        return pred_fg
    bg_fg = n_fg - fg_fg
    bg_bg = pred_bg - bg_fg
    mean_pred = pred_fg / size
    mean_gt = n_fg / size
    total = 0
    for count, a, b in (
        (fg_fg, 1 - mean_pred, 1 - mean_gt),
        (fg_bg, 1 - mean_pred, 0 - mean_gt),
        (bg_fg, 0 - mean_pred, 1 - mean_gt),
        (bg_bg, 0 - mean_pred, 0 - mean_gt),
    ):
        align = 2 * (a * b) / (a**2 + b**2 + EPS)
        total = total + (align + 1) ** 2 / 4 * count
    return total


def emeasure_curve(pair: PreparedPair) -> np.ndarray:
    """(256,) E-measure curve (enhanced alignment, Fan et al. 2018), official threshold order."""
    fg, bg = pair.quantised_hists()
    s = _enhanced_alignment_sum(_cumulative(fg), _cumulative(bg), pair.n_fg, pair.size)
    return np.asarray(s, dtype=np.float64) / (pair.size - 1 + EPS)


def emeasure_adaptive(pair: PreparedPair) -> float:
    """E-measure at the adaptive threshold."""
    sel = pair.adaptive_selection()
    fg_fg = int(pair.hist_fg[sel].sum())
    fg_bg = int(pair.hist_bg[sel].sum())
    return float(_enhanced_alignment_sum(fg_fg, fg_bg, pair.n_fg, pair.size) / (pair.size - 1 + EPS))


def mae(pair: PreparedPair) -> float:
    """Mean absolute error between the normalised prediction and the binary GT."""
    err = np.dot(pair.hist_fg, np.abs(pair.lut - 1)) + np.dot(pair.hist_bg, pair.lut)
    return float(err / pair.size)


def mse(pair: PreparedPair) -> float:
    """Mean squared error between the normalised prediction and the binary GT."""
    err = np.dot(pair.hist_fg, (pair.lut - 1) ** 2) + np.dot(pair.hist_bg, pair.lut**2)
    return float(err / pair.size)


# ----------------------------------------------------------------------------------------------
# S-measure
# ----------------------------------------------------------------------------------------------


def _object_score(hist: np.ndarray, values: np.ndarray) -> np.float64:
    """2x / (x^2 + 1 + std + eps) of the values under a region (std with ddof=1)."""
    n = hist.sum()
    present = hist > 0
    h, v = hist[present], values[present]
    with np.errstate(all="ignore"):
        mean = np.float64(math.fsum(h * v)) / n
        std = np.sqrt(np.float64(math.fsum(h * (v - mean) ** 2)) / np.float64(n - 1))
        return 2 * mean / (mean**2 + 1 + std + EPS)


def _region_mean(pair: PreparedPair, rows: slice, cols: slice, hist: np.ndarray, n: int) -> np.float64:
    """Mean of the normalised prediction over a quadrant, rounded as numpy rounds it.

    Only matters for a constant quadrant, where the official SSIM tests the variance for exact 0:
    there the same numpy reduction is run on an array of the same shape and strides.
    """
    present = np.flatnonzero(hist)
    if present.size == 1:
        value = pair.lut[present[0]]
        full = np.full((rows.stop - rows.start, pair.gt.shape[1]), value)
        return np.float64(full[:, cols].mean())
    return np.float64(math.fsum(hist[present] * pair.lut[present])) / n


def _quadrant_hists(pair: PreparedPair, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
    pv = pair.pred[rows, cols]
    return _hist(pv), _hist(pv, pair.fg8[rows, cols])


def _ssim(pair: PreparedPair, rows: slice, cols: slice, hists: tuple[np.ndarray, np.ndarray]) -> np.float64:
    """The official SSIM-like score of one quadrant, from its (all, fg) histograms."""
    h = rows.stop - rows.start
    w = cols.stop - cols.start
    n = h * w
    with np.errstate(all="ignore"):
        if n == 0:  # official: mean of an empty slice is NaN, which makes the S-measure 0
            return np.float64(np.nan)
        hist_all, hist_fg = hists
        hist_bg = hist_all - hist_fg
        n_fg = int(hist_fg.sum())
        x = _region_mean(pair, rows, cols, hist_all, n)
        y = np.float64(n_fg) / n
        dx = pair.lut - x
        present = hist_all > 0
        sx = np.float64(math.fsum(hist_all[present] * dx[present] ** 2)) / np.float64(n - 1)
        sy = np.float64(n_fg * (1 - y) ** 2 + (n - n_fg) * y**2) / np.float64(n - 1)
        sxy = np.float64(math.fsum(hist_fg * dx * (1 - y)) + math.fsum(hist_bg * dx * (0 - y))) / np.float64(
            n - 1
        )
        alpha = 4 * x * y * sxy
        beta = (x**2 + y**2) * (sx + sy)
        if alpha != 0:
            return alpha / (beta + EPS)
        if beta == 0:
            return np.float64(1.0)
        return np.float64(0.0)


def smeasure(pair: PreparedPair, alpha: float = 0.5) -> float:
    """Structure measure (Fan et al. 2017): object- and region-aware similarity, in [0, 1]."""
    size, n_fg = pair.size, pair.n_fg
    if n_fg == 0:
        return float(1 - pair.mean)
    if n_fg == size:
        return float(pair.mean)
    u = n_fg / size
    obj = u * _object_score(pair.hist_fg, pair.lut) + (1 - u) * _object_score(pair.hist_bg, 1 - pair.lut)
    # Region term: split at the GT centroid (rounded half to even, +1, as the official code).
    height, width = pair.gt.shape
    row_counts = cv2.reduce(pair.fg8, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel().astype(np.int64)
    col_counts = cv2.reduce(pair.fg8, 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel().astype(np.int64)
    # exact integer sums divided once: the same float as numpy's mean of the coordinates
    cy = int(np.round(np.dot(row_counts, np.arange(height)) / n_fg)) + 1
    cx = int(np.round(np.dot(col_counts, np.arange(width)) / n_fg)) + 1
    area = height * width
    w1 = cx * cy / area
    w2 = cy * (width - cx) / area
    w3 = (height - cy) * cx / area
    w4 = 1 - w1 - w2 - w3
    top, bottom = slice(0, cy), slice(cy, height)
    left, right = slice(0, cx), slice(cx, width)
    # three quadrants' histograms; the fourth is what remains of the whole image's
    h_tl = _quadrant_hists(pair, top, left)
    h_tr = _quadrant_hists(pair, top, right)
    h_bl = _quadrant_hists(pair, bottom, left)
    h_br = tuple(whole - a - b - c for whole, a, b, c in zip((pair.hist_all, pair.hist_fg), h_tl, h_tr, h_bl))
    with np.errstate(all="ignore"):
        region = (
            w1 * _ssim(pair, top, left, h_tl)
            + w2 * _ssim(pair, top, right, h_tr)
            + w3 * _ssim(pair, bottom, left, h_bl)
            + w4 * _ssim(pair, bottom, right, h_br)
        )
        sm = alpha * obj + (1 - alpha) * region
    # max(0, nan) is 0 in Python: the official value for the degenerate cases (a one-pixel object,
    # an empty quadrant) that make the formula NaN.
    return float(max(0, sm))


# ----------------------------------------------------------------------------------------------
# Weighted F-measure
# ----------------------------------------------------------------------------------------------


def _gaussian_1d(size: int = 7, sigma: float = 5.0) -> np.ndarray:
    """1-D factor of MATLAB's fspecial('gaussian', [size size], sigma) (the official kernel).

    The official 2-D kernel exp(-(x^2 + y^2) / (2 sigma^2)) / sum is the outer product of this
    normalised 1-D kernel with itself up to rounding (1e-16), and no entry is small enough for
    MATLAB's eps cut-off at this size, so the separable filter gives the same EA.
    """
    r = (size - 1) / 2
    x = np.arange(-r, r + 1)
    k = np.exp(-(x * x) / (2 * sigma * sigma))
    return (k / k.sum()).reshape(-1, 1)


_GAUSS_1D = _gaussian_1d()


def _offsets_by_distance(max_sq: int = 18) -> dict[int, np.ndarray]:
    """(dy, dx) offsets grouped by squared length <= max_sq, each group in the order scipy's exact
    feature transform prefers among equally near pixels: smallest column, then smallest row."""
    span = range(-5, 6)
    groups: dict[int, list[tuple[int, int]]] = {}
    for dy in span:
        for dx in span:
            d2 = dy * dy + dx * dx
            if 0 < d2 <= max_sq:
                groups.setdefault(d2, []).append((dy, dx))
    return {d2: np.array(sorted(offs, key=lambda o: (o[1], o[0]))) for d2, offs in groups.items()}


# The nearest GT pixel of a background pixel within chessboard distance 3 of the GT is at squared
# distance <= 18 (a GT pixel in its 7x7 window is at most (3, 3) away).
_OFFSETS_BY_DISTANCE = _offsets_by_distance(18)


_LOG_HALF_FIFTH = np.log(0.5) / 5
# Background importance 2 - 0.5^(d/5) by squared distance d^2 = 0, 1, 2, ...; from d = 266 on it is
# 2.0 exactly in float64, so the table stops there and larger d^2 are clamped to its last entry.
_FAR = 266 * 266


@functools.lru_cache(maxsize=1)
def _importance_table() -> np.ndarray:
    d = np.sqrt(np.arange(_FAR + 1, dtype=np.float64))
    table = 2 - np.exp(_LOG_HALF_FIFTH * d)
    assert table[-1] == 2.0
    return table


def _edt_sq_kernel(fg: np.ndarray, far: int) -> np.ndarray:
    """(H, W) int32 exact squared Euclidean distance to the nearest non-zero pixel of ``fg``, clamped
    at ``far``. Plain Python, compiled by numba (:func:`._jit.compiled`).

    Meijster et al.'s separable algorithm in integers: per column, the distance to the nearest GT
    pixel in that column (two scans); per row, the lower envelope of the parabolas
    ``(x - j)^2 + g_j^2`` over the columns ``j``. Columns without a GT pixel get ``g = H + W``,
    whose square exceeds every real distance, so they never win while the GT is not empty.
    """
    height, width = fg.shape
    none = height + width
    g = np.empty((height, width), dtype=np.int32)
    for j in range(width):
        g[0, j] = 0 if fg[0, j] else none
    for i in range(1, height):
        for j in range(width):
            g[i, j] = 0 if fg[i, j] else g[i - 1, j] + 1
    for i in range(height - 2, -1, -1):
        for j in range(width):
            if g[i + 1, j] + 1 < g[i, j]:
                g[i, j] = g[i + 1, j] + 1
    out = np.empty((height, width), dtype=np.int32)
    site = np.empty(width, dtype=np.int64)  # columns whose parabola is on the envelope
    start = np.empty(width, dtype=np.int64)  # first x where each of them is the lowest
    g2 = np.empty(width, dtype=np.int64)
    for i in range(height):
        for j in range(width):
            gj = np.int64(g[i, j])
            g2[j] = gj * gj
        q = 0
        site[0] = 0
        start[0] = 0
        for u in range(1, width):
            while q >= 0:
                s = site[q]
                t = start[q]
                if (t - s) * (t - s) + g2[s] <= (t - u) * (t - u) + g2[u]:
                    break
                q -= 1
            if q < 0:
                q = 0
                site[0] = u
            else:
                s = site[q]
                # first x where u's parabola is strictly lower than s's
                x = (u * u - s * s + g2[u] - g2[s]) // (2 * (u - s)) + 1
                if x < width:
                    q += 1
                    site[q] = u
                    start[q] = x
        for x in range(width - 1, -1, -1):
            s = site[q]
            d = (x - s) * (x - s) + g2[s]
            out[i, x] = far if d > far else d
            if x == start[q]:
                q -= 1
    return out


def gt_distance_sq(fg: np.ndarray, pad: int = 0) -> np.ndarray:
    """(H + 2 pad, W + 2 pad) int32 exact squared Euclidean distance to the GT, clamped at 266^2.

    0 on the GT. ``pad`` adds a frame of background around the image, which does not change the
    distances inside (background pixels are not sources). With numba, an exact integer transform
    (:func:`_edt_sq_kernel`, ~4x faster than OpenCV's); without, OpenCV's exact (Felzenszwalb)
    transform, whose float32 distances are squared and rounded: squared distances are integers and
    the float32 error is far below 0.5 up to the clamp, so both give the same numbers.
    """
    kernel = compiled(_edt_sq_kernel)
    if kernel is not None and fg.any():
        fg8 = np.ascontiguousarray(fg).view(np.uint8)
        if pad:
            fg8 = cv2.copyMakeBorder(fg8, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        return kernel(fg8, _FAR)
    bg = np.logical_not(fg).view(np.uint8)
    if pad:
        bg = cv2.copyMakeBorder(bg, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=1)
    dist = cv2.distanceTransform(bg, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    np.multiply(dist, dist, out=dist)
    np.minimum(dist, _FAR, out=dist)
    return np.rint(dist).astype(np.int32)


@dataclass
class _WfNeighbourhood:
    """What wF needs around the GT: the GT's bounding box grown by 3 px (clipped to the image), the
    background pixels within chessboard distance 3 of the GT (the "ring", which the 7x7 Gaussian
    reaches from the GT) and the nearest GT pixel of each, as flat indices into the box."""

    rows: slice
    cols: slice
    fg: np.ndarray  # (h, w) bool GT inside the box
    ring: np.ndarray
    nearest: np.ndarray


def _wf_neighbourhood(fg8: np.ndarray, dist_sq: np.ndarray) -> _WfNeighbourhood:
    """Ring pixels and their nearest GT pixel (Euclidean; ties broken as scipy's exact feature
    transform breaks them: smallest column, then smallest row).

    Args:
        fg8: (H, W) uint8 0/1 GT (not empty).
        dist_sq: (H, W) exact squared distances to the GT (:func:`gt_distance_sq`).
    """
    pad = _PAD
    height, width = fg8.shape
    fgp = cv2.copyMakeBorder(fg8, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    ring = cv2.subtract(cv2.dilate(fgp, np.ones((7, 7), np.uint8)), fgp)[pad:-pad, pad:-pad]
    idx = np.flatnonzero(ring)
    r, c = np.divmod(idx, width)
    d2 = dist_sq.ravel()[idx]
    pwidth = width + 2 * pad
    at_p = (r + pad) * pwidth + (c + pad)  # ring pixels in the padded frame
    fg_flat = fgp.ravel()
    kernel = compiled(_nearest_kernel)
    if kernel is not None:
        starts, offs = _offsets_table()
        flat_offs = offs[:, 0] * pwidth + offs[:, 1]
        src_p = kernel(fg_flat, at_p, d2.astype(np.int64), starts, flat_offs)
    else:
        src_p = _nearest_numpy(fg_flat, at_p, d2, pwidth)
    sr, sc = np.divmod(src_p, pwidth)
    sr -= pad
    sc -= pad
    x, y, w, h = cv2.boundingRect(fg8)
    y0, y1 = max(0, y - 3), min(height, y + h + 3)
    x0, x1 = max(0, x - 3), min(width, x + w + 3)
    bw = x1 - x0
    return _WfNeighbourhood(
        rows=slice(y0, y1),
        cols=slice(x0, x1),
        fg=fg8[y0:y1, x0:x1].astype(bool),
        ring=(r - y0) * bw + (c - x0),
        nearest=(sr - y0) * bw + (sc - x0),
    )


def _nearest_numpy(fg_flat: np.ndarray, at_p: np.ndarray, d2: np.ndarray, pwidth: int) -> np.ndarray:
    """:func:`_nearest_kernel` in numpy (used without numba): one vectorised search per distance."""
    src_p = np.empty_like(at_p)
    for sq, offs in _OFFSETS_BY_DISTANCE.items():
        sel = np.flatnonzero(d2 == sq)
        if sel.size == 0:
            continue
        flat_offs = offs[:, 0] * pwidth + offs[:, 1]
        at = at_p[sel]
        # the first GT hit in preference order (argmax returns the first maximum)
        hits = fg_flat[at[:, None] + flat_offs[None, :]]
        src_p[sel] = at + flat_offs[hits.argmax(axis=1)]
    return src_p


def _nearest_kernel(
    fg_flat: np.ndarray, at: np.ndarray, d2: np.ndarray, starts: np.ndarray, flat_offs: np.ndarray
) -> np.ndarray:
    """Nearest GT pixel of each ring pixel: the first GT hit among the offsets of its exact squared
    distance, in scipy's tie order (``flat_offs[starts[d2]:starts[d2 + 1]]``; see
    :func:`_offsets_table`). Flat indices into the padded frame. Compiled by numba."""
    out = np.empty_like(at)
    for k in range(at.size):
        a = at[k]
        lo, hi = starts[d2[k]], starts[d2[k] + 1]
        out[k] = a + flat_offs[min(lo, flat_offs.size - 1)]  # as argmax without a hit (never: d2 is exact)
        for m in range(lo, hi):
            if fg_flat[a + flat_offs[m]]:
                out[k] = a + flat_offs[m]
                break
    return out


@functools.lru_cache(maxsize=1)
def _offsets_table() -> tuple[np.ndarray, np.ndarray]:
    """:data:`_OFFSETS_BY_DISTANCE` flattened: ``starts`` (20,) int64 where the offsets of squared
    length d begin (empty groups for lengths that are no sum of two squares), ``offsets`` (n, 2)."""
    starts = np.zeros(20, dtype=np.int64)
    rows = []
    for sq in range(1, 19):
        starts[sq] = len(rows)
        rows += [tuple(o) for o in _OFFSETS_BY_DISTANCE.get(sq, [])]
    starts[19] = len(rows)
    return starts, np.array(rows, dtype=np.int64)


def gt_importance(dist_sq: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """(H, W) float64 wF background importance ``2 - 0.5^(d / 5)`` from squared distances; 0 on the GT."""
    kernel = compiled(_importance_kernel)
    if kernel is not None:
        return kernel(np.ascontiguousarray(dist_sq), _importance_table())
    weights = _importance_table()[dist_sq]
    weights[fg] = 0
    return weights


def _importance_kernel(dist_sq: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``table[dist_sq]`` (the GT, at distance 0, gets 0): one pass instead of numpy's index
    conversion, gather and masked store. Compiled by numba."""
    out = np.empty(dist_sq.shape, dtype=np.float64)
    flat_in, flat_out = dist_sq.ravel(), out.ravel()
    for i in range(flat_in.size):
        d = flat_in[i]
        flat_out[i] = table[d] if d else 0.0
    return out


def _weight_window(pair: PreparedPair) -> tuple[slice, slice]:
    """Window holding the GT grown by 3 px and every pixel whose normalised prediction is not 0."""
    height, width = pair.gt.shape
    present = np.flatnonzero(pair.hist_all)
    if pair.lut[present[0]] != 0:  # a constant non-zero prediction: the whole image counts
        return slice(0, height), slice(0, width)
    x, y, w, h = cv2.boundingRect(cv2.compare(pair.pred, int(present[0]), cv2.CMP_NE))
    rows, cols = pair.info.grown_box(3)  # the wF neighbourhood's window, to share one transform
    y0, y1, x0, x1 = rows.start, rows.stop, cols.start, cols.stop
    if w:
        y0, y1, x0, x1 = min(y0, y), max(y1, y + h), min(x0, x), max(x1, x + w)
    return slice(y0, y1), slice(x0, x1)


def weighted_fmeasure(pair: PreparedPair, beta: float = 1.0) -> float:
    """Weighted F-measure (Margolin et al. 2014) with the official settings (beta = 1).

    Exact re-statement of the official computation, restricted to where it matters: the error is
    propagated from the nearest GT pixel only to the background pixels the 7x7 Gaussian reaches
    from the GT, and the background importance weights come from the exact distance to the GT
    through a table. Both only depend on the GT (cached in ``pair.info``).
    """
    if pair.n_fg == 0:
        return 0.0
    info = pair.info
    # FPw = sum over the background of E * importance, with E = p there: only pixels with p > 0
    # count, so the distance transform is only needed on a window holding them and the GT.
    rows, cols = _weight_window(pair)
    _, importance = info._weights_in(rows, cols)
    p = cv2.LUT(pair.pred[rows, cols], pair.lut)
    # (einsum, not np.dot: a BLAS call would wake idle BLAS threads that spin and double the CPU time)
    fpw = float(np.einsum("ij,ij->", importance, p))
    # On the GT, E = |p - 1| == fl(1 - p) exactly. Et is E propagated from the nearest GT pixel to
    # the ring; farther out it never reaches a GT pixel through the 7x7 kernel, so Et, EA and
    # min(EA, E) are only computed on the GT's box grown by 3 px. Outside the box the convolution
    # sees zeros: the official zero padding at the image border, "don't care" elsewhere.
    nb = info.wf_neighbourhood
    et = cv2.LUT(pair.pred[nb.rows, nb.cols], 1 - pair.lut)
    et_flat = et.ravel()
    et_flat[nb.ring] = et_flat[nb.nearest]
    ea = cv2.sepFilter2D(et, cv2.CV_64F, _GAUSS_1D, _GAUSS_1D, borderType=cv2.BORDER_CONSTANT)
    ew = np.minimum(ea[nb.fg], et[nb.fg])
    tpw = pair.n_fg - np.sum(ew)
    r = 1 - np.mean(ew)
    precision = tpw / (tpw + fpw + EPS)
    return float((1 + beta) * r * precision / (r + beta * precision + EPS))


# ----------------------------------------------------------------------------------------------
# HCE (human correction efforts, IS-Net / DIS5K)
# ----------------------------------------------------------------------------------------------


def _runs(contours, cond_flat: np.ndarray, width: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The official boundary filter, vectorised.

    Walks every contour point in order, keeps those on ``cond`` not kept before, splits each contour
    into maximal runs of kept points, and joins the last run to the reversed first one when their
    ends touch (8-neighbours). Returns the runs (int64 (n, 1, 2) x/y arrays, as the official code
    builds them) and the indices of the contours with at least one kept point.
    """
    if not contours:
        return [], np.empty(0, dtype=np.intp)
    lengths = np.fromiter((len(c) for c in contours), dtype=np.intp, count=len(contours))
    pts = np.concatenate(contours).reshape(-1, 2)
    lin = pts[:, 1].astype(np.intp) * width + pts[:, 0]
    on = cond_flat[lin] != 0
    first = np.zeros(lin.size, dtype=bool)
    _, first_idx = np.unique(lin, return_index=True)
    first[first_idx] = True
    kept = on & first
    runs: list[np.ndarray] = []
    starts = np.concatenate([[0], np.cumsum(lengths)])
    # Run boundaries: a kept point starts a run if it opens its contour or follows a dropped point.
    prev = np.concatenate([[False], kept[:-1]])
    prev[starts[:-1]] = False
    run_start = np.flatnonzero(kept & ~prev)
    nxt = np.concatenate([kept[1:], [False]])
    nxt[starts[1:] - 1] = False
    run_end = np.flatnonzero(kept & ~nxt) + 1
    contour_of = np.searchsorted(starts, run_start, side="right") - 1
    pts64 = pts.astype(np.int64)
    i = 0
    n = run_start.size
    while i < n:
        j = i
        while j + 1 < n and contour_of[j + 1] == contour_of[i]:
            j += 1
        pieces = [pts64[run_start[k] : run_end[k]] for k in range(i, j + 1)]
        if len(pieces) > 1:
            fx, fy = pieces[0][0]
            lx, ly = pieces[-1][-1]
            if max(abs(fx - lx), abs(fy - ly)) == 1:
                pieces[-1] = np.concatenate([pieces[-1], pieces[0][::-1]])
                pieces = pieces[1:]
        runs.extend(p[:, None, :] for p in pieces)
        i = j + 1
    contour_of_point = np.repeat(np.arange(len(contours)), lengths)
    return runs, np.unique(contour_of_point[kept])


def _polygon_points(runs: list[np.ndarray], epsilon: float) -> int:
    total = 0
    for r in runs:
        total += len(r) if len(r) <= 2 else len(cv2.approxPolyDP(r, epsilon, False))
    return total


def _independent_regions(contours, hierarchy, kept_contours: np.ndarray) -> int:
    """Connected regions (8-connectivity) of a mask none of whose border points was kept.

    OpenCV traces exactly one outer border per 8-connected region, and each hole border's parent is
    the outer border of its region, so regions and their borders come from the contour hierarchy
    without labelling the image.
    """
    if not contours:
        return 0
    parent = hierarchy.reshape(-1, 4)[:, 3].astype(np.intp)
    depth = np.zeros(len(contours), dtype=np.intp)
    up = parent.copy()
    while np.any(up >= 0):  # walk up the tree; as many steps as the deepest nesting
        has = up >= 0
        depth += has
        up[has] = parent[up[has]]
    outer = depth % 2 == 0
    region = np.where(outer, np.arange(len(contours)), parent)
    touched = np.zeros(len(contours), dtype=bool)
    touched[region[kept_contours]] = True
    return int(np.count_nonzero(outer & ~touched))


def hce(pair: PreparedPair, skeleton: np.ndarray | None = None, relax: int = 5, epsilon: float = 2.0) -> int:
    """Human correction efforts (IS-Net, Qin et al. 2022): mouse clicks to fix the prediction.

    Polygon control points (Ramer-Douglas-Peucker, ``epsilon``) along the false-positive and
    false-negative boundaries that need correcting, plus the independent regions to add or remove,
    after relaxing ``relax`` pixels of boundary tolerance; thin GT structures (the skeleton) that
    the prediction misses always count. Binarises the raw masks at ``> 128``.

    Args:
        pair: the prepared pair.
        skeleton: (H, W) bool skeleton of ``gt > 128`` to use instead of ``pair.info.skeleton``.
    """
    if pair.size <= 4:
        # OpenCV takes (n, 1) arrays with n <= 4 for scalars: use the literal version for such masks
        from ._reference import hce as literal_hce

        return literal_hce(pair.pred, pair.gt, skeleton, relax=relax, epsilon=epsilon)
    g = pair.fg8
    p = (pair.pred > 128).view(np.uint8)
    tp = cv2.bitwise_and(g, p)
    fp = cv2.subtract(p, tp)
    fn = cv2.subtract(g, tp)
    union = cv2.bitwise_or(g, p)
    union_erode = cv2.erode(union, _CROSS, iterations=relax)
    not_tp_fn = cv2.bitwise_xor(cv2.bitwise_or(tp, fn), 1)
    not_tp_fp = cv2.bitwise_xor(cv2.bitwise_or(tp, fp), 1)

    fp_ = cv2.bitwise_and(fp, union_erode)
    for _ in range(relax):
        fp_ = cv2.bitwise_and(cv2.dilate(fp_, _CROSS), not_tp_fn)
    fp_ = cv2.bitwise_and(fp, fp_)

    fn_ = cv2.bitwise_and(fn, union_erode)
    for _ in range(relax):
        fn_ = cv2.bitwise_and(cv2.dilate(fn_, _CROSS), not_tp_fp)
    fn_ = cv2.bitwise_and(fn, fn_)
    if cv2.countNonZero(fn):
        ske = pair.info.skeleton_where(fn) if skeleton is None else np.asarray(skeleton, dtype=bool)
        # skeleton pixels the prediction misses (official: xor(ske, ske & tp))
        fn_ = cv2.bitwise_or(fn_, cv2.bitwise_and(ske.view(np.uint8), cv2.bitwise_xor(tp, 1)))

    width = g.shape[1]
    ctr_fp, hier_fp = cv2.findContours(fp_, cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE)
    cond_fp = cv2.dilate(cv2.bitwise_or(tp, fn_), _CROSS)
    runs_fp, kept_fp = _runs(ctr_fp, cond_fp.ravel(), width)
    ctr_fn, hier_fn = cv2.findContours(fn_, cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE)
    cond_fn = cv2.dilate(cv2.bitwise_xor(cv2.bitwise_or(cv2.bitwise_or(tp, fp_), fn_), 1), _CROSS)
    runs_fn, kept_fn = _runs(ctr_fn, cond_fn.ravel(), width)
    return (
        _polygon_points(runs_fp, epsilon)
        + _independent_regions(ctr_fp, hier_fp, kept_fp)
        + _polygon_points(runs_fn, epsilon)
        + _independent_regions(ctr_fn, hier_fn, kept_fn)
    )


# ----------------------------------------------------------------------------------------------
# mBA and boundary IoU
# ----------------------------------------------------------------------------------------------


def mba_radii(height: int, width: int) -> list[int]:
    """The five band radii of the mean boundary accuracy for an image size."""
    max_radius = (width + height) / 300
    return [1 + int((max_radius - 1) / 5 * i) for i in range(5)]


def mba(pair: PreparedPair, empty: str = "prediction-band") -> float:
    """Mean boundary accuracy (CascadePSP): pixel accuracy in bands around the GT boundary.

    Five bands (morphological gradient of the GT with elliptical kernels, radii from
    :func:`mba_radii`), accuracy of ``pred > 128`` against ``gt > 128`` inside each, averaged.

    Args:
        empty: what to do when the GT has no boundary (empty or all foreground), where the official
            formula is 0/0 = NaN. ``"prediction-band"`` (default): use the bands around the
            *prediction's* boundary instead, i.e. the fraction of the prediction's boundary region
            that is correct (0 for a spurious object, 1 for none); if the prediction has no boundary
            either, 1.0 when it equals the GT (both empty or both full) and 0.0 otherwise. ``"nan"``:
            the official NaN.
    """
    g = pair.fg8
    p = (pair.pred > 128).view(np.uint8)
    wrong = cv2.bitwise_xor(g, p)
    height, width = g.shape
    accs: dict[int, float] = {}
    total = 0.0
    for r in mba_radii(height, width):
        if r not in accs:
            rows, cols, band = pair.info.band(r)
            n = cv2.countNonZero(band) if band.size else 0
            if n == 0:
                if empty == "nan":
                    return float("nan")
                kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
                band = cv2.morphologyEx(p, cv2.MORPH_GRADIENT, kernel)
                rows, cols = slice(0, height), slice(0, width)
                n = cv2.countNonZero(band)
                if n == 0:
                    accs[r] = 1.0 if cv2.countNonZero(wrong) == 0 else 0.0
                    total += accs[r]
                    continue
            bad = cv2.countNonZero(cv2.bitwise_and(band, wrong[rows, cols]))
            accs[r] = np.float64(n - bad) / np.float64(n)
        total += accs[r]
    return float(total / 5)


def _mask_boundary(mask: np.ndarray, dilation: int) -> np.ndarray:
    """mask - erode(mask) with a 3x3 square ``dilation`` times (image border counts as outside)."""
    h, w = mask.shape
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=dilation)[1 : h + 1, 1 : w + 1]
    return cv2.subtract(mask, eroded)


def biou_dilation(height: int, width: int, ratio: float = 0.02) -> int:
    """Boundary width of the boundary IoU: ``ratio`` of the image diagonal, at least 1 px."""
    return max(1, round(ratio * np.sqrt(height**2 + width**2)))


def boundary_iou_curve(pair: PreparedPair) -> np.ndarray:
    """(256,) boundary IoU (Cheng et al. 2021) over thresholds, official order.

    As the official code, the prediction's "boundary" is the grey-level difference between the
    quantised normalised prediction and its erosion, thresholded at each level.
    """
    height, width = pair.gt.shape
    d = biou_dilation(height, width)
    q = cv2.LUT(pair.pred, pair.quantised)
    pb = _mask_boundary(q, d)
    gb = pair.info.biou_boundary
    hist_all = _hist(pb)
    hist_in = _hist(pb, gb)
    tp = _cumulative(hist_in)
    fp = _cumulative(hist_all - hist_in)
    t = max(int(hist_in.sum()), 1)
    return tp / (t + fp)
