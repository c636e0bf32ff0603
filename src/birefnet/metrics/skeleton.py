"""Skeleton of a ground-truth mask for HCE: scikit-image's Zhang-Suen thinning.

The official evaluator computes HCE on ``skimage.morphology.skeletonize(gt > 128)``; any other
thinning changes HCE. We call scikit-image itself rather than carry a copy of its removal table
(a faster incremental thinning was written, but it needed that table verbatim, and this project
does not copy public code). The skeleton depends on the GT alone, so :mod:`birefnet.metrics`
computes it once per GT and can cache it (``Evaluator(cache_dir=...)``): evaluating several
models or epochs against the same GTs pays for it once.
"""

from __future__ import annotations

import numpy as np


def skeletonize(mask: np.ndarray) -> np.ndarray:
    """Zhang-Suen skeleton of a binary mask (``skimage.morphology.skeletonize``), cropped to the object.

    Args:
        mask: (H, W) array; non-zero is foreground.

    Returns:
        (H, W) bool skeleton.
    """
    from skimage.morphology import skeletonize as sk_skeletonize

    mask = np.asarray(mask) != 0
    out = np.zeros(mask.shape, dtype=bool)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return out
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    # Thinning is local and the image border counts as background, so working on the object's
    # bounding box plus one background pixel gives the same skeleton in less time.
    box = np.zeros((r1 - r0 + 2, c1 - c0 + 2), dtype=bool)
    box[1:-1, 1:-1] = mask[r0:r1, c0:c1]
    out[r0:r1, c0:c1] = sk_skeletonize(box)[1:-1, 1:-1]
    return out
