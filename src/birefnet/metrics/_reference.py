"""Straightforward per-image implementation of the official evaluator's definitions.

This module is the *specification in code* that the fast implementation in :mod:`.functional` is
tested against (random masks of any size, tie cases included), and that ``benchmarks/metrics.py``
times as the "official-style" baseline on the same machine. It follows the official
``evaluation/metrics.py`` step by step (float64 arrays, per-point loops where the official code
loops), so it is slow on purpose. The package itself only uses :func:`hce` from here, for masks of
at most 4 pixels (which OpenCV mistakes for scalars in the fast path).

All functions take the arrays the official evaluator works on: ``pred`` uint8 (H, W) already
resized to the GT size, ``gt`` uint8 (H, W) (foreground is ``> 128``).
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np
from scipy import ndimage

EPS = float(np.spacing(1))


def prepare(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pred in [0, 1] float64 with per-image min-max normalisation, gt bool)."""
    g = gt > 128
    p = pred / 255
    if p.max() != p.min():
        p = (p - p.min()) / (p.max() - p.min())
    return p, g


def adaptive_threshold(p: np.ndarray) -> float:
    return min(2 * p.mean(), 1)


def f_curve(p: np.ndarray, g: np.ndarray, beta2: float = 0.3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, F) over the 256 thresholds 255..0 (index i <-> pred >= 255 - i)."""
    q = (p * 255).astype(np.uint8)
    edges = np.linspace(0, 256, 257)
    fg = np.cumsum(np.flip(np.histogram(q[g], bins=edges)[0]))
    bg = np.cumsum(np.flip(np.histogram(q[~g], bins=edges)[0]))
    tp = fg
    ps = fg + bg
    ps[ps == 0] = 1
    t = max(np.count_nonzero(g), 1)
    precision = tp / ps
    recall = tp / t
    num = (1 + beta2) * precision * recall
    den = np.where(num == 0, 1, beta2 * precision + recall)
    return precision, recall, num / den


def f_adaptive(p: np.ndarray, g: np.ndarray, beta2: float = 0.3) -> float:
    b = p >= adaptive_threshold(p)
    inter = b[g].sum()
    if inter == 0:
        return 0.0
    pre = inter / np.count_nonzero(b)
    rec = inter / np.count_nonzero(g)
    return float((1 + beta2) * pre * rec / (beta2 * pre + rec))


def _enhanced_sum(fg_fg, fg_bg, n_fg_gt, size):
    pred_fg = fg_fg + fg_bg
    pred_bg = size - pred_fg
    if n_fg_gt == 0:
        return pred_bg
    if n_fg_gt == size:
        return pred_fg
    bg_fg = n_fg_gt - fg_fg
    bg_bg = pred_bg - bg_fg
    mp = pred_fg / size
    mg = n_fg_gt / size
    parts = [(fg_fg, 1 - mp, 1 - mg), (fg_bg, 1 - mp, -mg), (bg_fg, -mp, 1 - mg), (bg_bg, -mp, -mg)]
    total = 0
    for n, a, b in parts:
        align = 2 * (a * b) / (a**2 + b**2 + EPS)
        total = total + (align + 1) ** 2 / 4 * n
    return total


def e_curve(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    q = (p * 255).astype(np.uint8)
    edges = np.linspace(0, 256, 257)
    fg_fg = np.cumsum(np.flip(np.histogram(q[g], bins=edges)[0]))
    fg_bg = np.cumsum(np.flip(np.histogram(q[~g], bins=edges)[0]))
    size = g.size
    return _enhanced_sum(fg_fg, fg_bg, np.count_nonzero(g), size) / (size - 1 + EPS)


def e_adaptive(p: np.ndarray, g: np.ndarray) -> float:
    b = p >= adaptive_threshold(p)
    size = g.size
    s = _enhanced_sum(np.count_nonzero(b & g), np.count_nonzero(b & ~g), np.count_nonzero(g), size)
    return float(s / (size - 1 + EPS))


def s_measure(p: np.ndarray, g: np.ndarray, alpha: float = 0.5) -> float:
    y = np.mean(g)
    if y == 0:
        return float(1 - np.mean(p))
    if y == 1:
        return float(np.mean(p))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        gf = g.astype(np.float64)

        def s_obj(x, mask):
            vals = x[mask]
            m = np.mean(vals)
            s = np.std(vals, ddof=1)
            return 2 * m / (m**2 + 1 + s + EPS)

        obj = y * s_obj(p * gf, g) + (1 - y) * s_obj((1 - p) * (1 - gf), ~g)
        h, w = g.shape
        if np.count_nonzero(g) == 0:
            cx, cy = np.round(w / 2), np.round(h / 2)
        else:
            cy, cx = np.argwhere(g).mean(axis=0).round()
        cx, cy = int(cx) + 1, int(cy) + 1
        area = h * w
        w1 = cx * cy / area
        w2 = cy * (w - cx) / area
        w3 = (h - cy) * cx / area
        w4 = 1 - w1 - w2 - w3

        def ssim(a, b):
            n = a.size
            mx, my = np.mean(a), np.mean(b)
            sx = np.sum((a - mx) ** 2) / (n - 1)
            sy = np.sum((b - my) ** 2) / (n - 1)
            sxy = np.sum((a - mx) * (b - my)) / (n - 1)
            al = 4 * mx * my * sxy
            be = (mx**2 + my**2) * (sx + sy)
            if al != 0:
                return al / (be + EPS)
            if al == 0 and be == 0:
                return 1
            return 0

        reg = (
            w1 * ssim(p[:cy, :cx], g[:cy, :cx])
            + w2 * ssim(p[:cy, cx:], g[:cy, cx:])
            + w3 * ssim(p[cy:, :cx], g[cy:, :cx])
            + w4 * ssim(p[cy:, cx:], g[cy:, cx:])
        )
        sm = alpha * obj + (1 - alpha) * reg
    return float(max(0, sm))


def gauss_kernel(size: int = 7, sigma: float = 5.0) -> np.ndarray:
    r = (size - 1) / 2
    yy, xx = np.ogrid[-r : r + 1, -r : r + 1]
    k = np.exp(-(xx * xx + yy * yy) / (2 * sigma * sigma))
    k[k < np.finfo(k.dtype).eps * k.max()] = 0
    s = k.sum()
    if s != 0:
        k /= s
    return k


def weighted_f(p: np.ndarray, g: np.ndarray, beta: float = 1.0) -> float:
    if not g.any():
        return 0.0
    dst, idx = ndimage.distance_transform_edt(~g, return_indices=True)
    e = np.abs(p - g)
    et = e.copy()
    bgm = ~g
    et[bgm] = et[idx[0][bgm], idx[1][bgm]]
    ea = ndimage.convolve(et, weights=gauss_kernel(), mode="constant", cval=0)
    min_e_ea = np.where(g & (ea < e), ea, e)
    b = np.where(bgm, 2 - np.exp(np.log(0.5) / 5 * dst), np.ones_like(g))
    ew = min_e_ea * b
    tpw = np.sum(g) - np.sum(ew[g])
    fpw = np.sum(ew[bgm])
    r = 1 - np.mean(ew[g])
    pr = tpw / (tpw + fpw + EPS)
    return float((1 + beta) * r * pr / (r + beta * pr + EPS))


def mae(p: np.ndarray, g: np.ndarray) -> float:
    return float(np.mean(np.abs(p - g)))


def mse(p: np.ndarray, g: np.ndarray) -> float:
    return float(np.mean((p - g) ** 2))


def _disk1() -> np.ndarray:
    return np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)


def _boundary_pieces(contours, mask, cond):
    cond = cv2.dilate(cond.astype(np.uint8), _disk1())
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    independent = np.ones(n)
    independent[0] = 0
    visited = np.zeros(mask.shape, bool)
    pieces = []
    for contour in contours:
        runs, run = [], []
        for j in range(contour.shape[0]):
            c, r = int(contour[j, 0, 0]), int(contour[j, 0, 1])
            if cond[r, c] == 0 or visited[r, c]:
                if run:
                    runs.append(run)
                    run = []
                continue
            run.append([c, r])
            visited[r, c] = True
            independent[labels[r, c]] = 0
        if run:
            runs.append(run)
        if len(runs) > 1:
            fx, fy = runs[0][0]
            lx, ly = runs[-1][-1]
            if max(abs(fx - lx), abs(fy - ly)) == 1:
                runs[-1].extend(runs[0][::-1])
                del runs[0]
        pieces.extend(np.array(r_)[:, None, :] for r_ in runs)
    return pieces, int(independent.sum())


def hce(
    pred: np.ndarray, gt: np.ndarray, skeleton: np.ndarray | None = None, relax: int = 5, epsilon: float = 2.0
) -> int:
    """Human correction effort on raw uint8 masks (official: binarise at > 128, no normalisation)."""
    from skimage.morphology import skeletonize

    g = (gt > 128).astype(np.uint8)
    p = (pred > 128).astype(np.uint8)
    ske = skeletonize(g > 0) if skeleton is None else skeleton
    union = np.logical_or(g, p)
    tp = np.logical_and(g, p)
    fp = p - tp
    fn = g - tp
    union_erode = cv2.erode(union.astype(np.uint8), _disk1(), iterations=relax)
    fp_ = np.logical_and(fp, union_erode)
    for _ in range(relax):
        fp_ = cv2.dilate(fp_.astype(np.uint8), _disk1())
        fp_ = np.logical_and(fp_, 1 - np.logical_or(tp, fn))
    fp_ = np.logical_and(fp, fp_)
    fn_ = np.logical_and(fn, union_erode)
    for _ in range(relax):
        fn_ = cv2.dilate(fn_.astype(np.uint8), _disk1())
        fn_ = np.logical_and(fn_, 1 - np.logical_or(tp, fp))
    fn_ = np.logical_and(fn, fn_)
    fn_ = np.logical_or(fn_, np.logical_xor(ske, np.logical_and(tp, ske)))
    c_fp, _ = cv2.findContours(fp_.astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE)
    b_fp, i_fp = _boundary_pieces(c_fp, fp_, np.logical_or(tp, fn_))
    c_fn, _ = cv2.findContours(fn_.astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_NONE)
    b_fn, i_fn = _boundary_pieces(c_fn, fn_, 1 - np.logical_or(np.logical_or(tp, fp_), fn_))
    n_fp = sum(len(cv2.approxPolyDP(b, epsilon, False)) for b in b_fp)
    n_fn = sum(len(cv2.approxPolyDP(b, epsilon, False)) for b in b_fn)
    return int(n_fp + i_fp + n_fn + i_fn)


def mba(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean boundary accuracy (NaN when the GT has no boundary, as the official code)."""
    g = (gt > 128).astype(np.uint8)
    p = (pred > 128).astype(np.uint8)
    h, w = g.shape
    max_r = (w + h) / 300
    accs = []
    with np.errstate(all="ignore"):
        for i in range(5):
            r = 1 + int((max_r - 1) / 5 * i)
            k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
            band = cv2.morphologyEx(g, cv2.MORPH_GRADIENT, k) > 0
            gb, pb = g[band], p[band]
            good = (gb * pb + (1 - gb) * (1 - pb)).sum()
            accs.append(np.float64(good) / np.float64(band.sum()))
    return float(sum(accs) / 5)


def _mask_boundary(mask: np.ndarray, ratio: float = 0.02) -> np.ndarray:
    h, w = mask.shape
    d = max(1, round(ratio * np.sqrt(h**2 + w**2)))
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=d)[1 : h + 1, 1 : w + 1]
    return mask - eroded


def biou_curve(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    q = _mask_boundary((p * 255).astype(np.uint8))
    gb = _mask_boundary((g * 255).astype(np.uint8)) > 128
    edges = np.linspace(0, 256, 257)
    fg = np.cumsum(np.flip(np.histogram(q[gb], bins=edges)[0]))
    bg = np.cumsum(np.flip(np.histogram(q[~gb], bins=edges)[0]))
    t = max(np.count_nonzero(gb), 1)
    return fg / (t + bg)


def evaluate_pair(pred: np.ndarray, gt: np.ndarray, skeleton: np.ndarray | None = None) -> dict:
    """Every per-image quantity of the official evaluator for one (uint8 pred, uint8 gt) pair."""
    if pred.shape != gt.shape:
        pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]))
    p, g = prepare(pred, gt)
    pr, rc, fc = f_curve(p, g)
    return {
        "Smeasure": s_measure(p, g),
        "wFmeasure": weighted_f(p, g),
        "MAE": mae(p, g),
        "MSE": mse(p, g),
        "HCE": hce(pred, gt, skeleton),
        "mBA": mba(pred, gt),
        "adpFm": f_adaptive(p, g),
        "adpEm": e_adaptive(p, g),
        "Fm_curve": fc,
        "precision": pr,
        "recall": rc,
        "Em_curve": e_curve(p, g),
        "BIoU_curve": biou_curve(p, g),
    }


def synthetic_pair(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A DIS-like (pred, gt) uint8 pair for tests and benchmarks.

    The GT is one large smooth object with holes plus thin structures (1-3 px lines, like wires,
    legs or frames); the prediction blurs it, misses some thin parts, adds false blobs and low-level
    noise, and is quantised by truncation as saved network outputs are.
    """
    rng = np.random.default_rng(seed)
    scale = min(height, width)
    coarse = rng.random((max(2, height // 128), max(2, width // 128))).astype(np.float32)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    blob = ((yy - height / 2) / (0.35 * height)) ** 2 + ((xx - width / 2) / (0.3 * width)) ** 2
    gt = ((field - 0.8 * blob) > 0.05).astype(np.uint8) * 255
    holes = cv2.resize(rng.random((height // 32 + 1, width // 32 + 1)).astype(np.float32), (width, height))
    gt[holes > 0.85] = 0
    for _ in range(24):
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        p2 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.line(gt, p1, p2, 255, int(rng.integers(1, 4)))
    soft = cv2.GaussianBlur(gt.astype(np.float32) / 255, (0, 0), max(1.0, scale / 512))
    missed = gt.copy()
    for _ in range(6):  # thin parts the model misses
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        p2 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.line(missed, p1, p2, 0, 5)
    soft = np.where(missed < gt, soft * 0.2, soft)
    for _ in range(5):  # false positive blobs
        c = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(soft, c, int(rng.integers(3, max(4, scale // 40))), 0.9, -1)
    soft = np.clip(soft + rng.normal(0, 0.01, soft.shape).astype(np.float32), 0, 1)
    pred = (soft * 255).astype(np.uint8)
    return pred, gt
