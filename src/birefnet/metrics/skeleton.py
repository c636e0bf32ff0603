"""Skeleton of a ground-truth mask for HCE: scikit-image's Zhang-Suen thinning.

The official evaluator computes HCE on ``skimage.morphology.skeletonize(gt > 128)``; any other
thinning changes HCE. We call scikit-image itself: its removal table cannot be derived from the
Zhang-Suen conditions (it differs from them on most 3x3 patterns, and its origin is undocumented),
so an exact re-implementation would have to carry a copy of that table, which this project does not
do. What we can do exactly is give it less work:

* thinning decides each pixel from its 3x3 neighbourhood, so 8-connected components never see each
  other and each can be thinned alone, on its own bounding box plus one pixel of background;
* HCE only uses skeleton pixels that the prediction misses, so only the components that contain a
  false negative need a skeleton at all (:func:`skeletonize_components`).

The skeleton depends on the GT alone: :mod:`birefnet.metrics` computes it once per GT and shares it
between models, and can cache it on disk (``cache_dir``).
"""

from __future__ import annotations

import numpy as np


def _thin_box(mask: np.ndarray) -> np.ndarray:
    """scikit-image's skeleton of a bool mask that fills its own bounding box (border = background)."""
    from skimage.morphology import skeletonize as sk_skeletonize

    box = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), dtype=bool)
    box[1:-1, 1:-1] = mask
    return sk_skeletonize(box)[1:-1, 1:-1]


def skeletonize(mask: np.ndarray) -> np.ndarray:
    """Zhang-Suen skeleton of a binary mask (``skimage.morphology.skeletonize``), cropped to the object.

    Args:
        mask: (H, W) array; non-zero is foreground.

    Returns:
        (H, W) bool skeleton, identical to scikit-image's.
    """
    mask = np.asarray(mask) != 0
    out = np.zeros(mask.shape, dtype=bool)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return out
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    # Thinning is local and the image border counts as background, so working on the object's
    # bounding box plus one background pixel gives the same skeleton in less time.
    out[r0:r1, c0:c1] = _thin_box(mask[r0:r1, c0:c1])
    return out


class ComponentSkeleton:
    """Skeleton of a mask computed per 8-connected component, only for the components asked for.

    Args:
        mask8: (H, W) uint8 0/1 mask (the GT foreground).

    The union of the component skeletons is exactly :func:`skeletonize` of the whole mask (components
    are thinned independently). Components already thinned are kept, so several predictions of the
    same GT share the work.
    """

    def __init__(self, mask8: np.ndarray) -> None:
        import cv2

        self.shape = mask8.shape
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask8, connectivity=8, ltype=cv2.CV_32S)
        self.count = n - 1
        self.labels = labels
        self.stats = stats
        self.skeleton = np.zeros(self.shape, dtype=bool)
        self._done = np.zeros(n, dtype=bool)
        self._done[0] = True  # background

    def ensure(self, where: np.ndarray) -> np.ndarray:
        """Thin every component that has a pixel in ``where`` ((H, W) bool/0-1); returns the skeleton
        so far ((H, W) bool, exact on those components)."""
        if self.count == 1:  # the usual case: no labelling look-up needed
            needed = [1] if not self._done[1] and np.any(where) else []
        else:
            hit = np.zeros(self.count + 1, dtype=bool)
            hit[self.labels[np.asarray(where, dtype=bool)]] = True
            needed = np.flatnonzero(hit & ~self._done)
        for label in needed:
            x, y, w, h = self.stats[label, :4]
            rows, cols = slice(y, y + h), slice(x, x + w)
            part = _thin_box(self.labels[rows, cols] == label)
            self.skeleton[rows, cols] |= part
            self._done[label] = True
        return self.skeleton

    @property
    def complete(self) -> bool:
        return bool(self._done.all())
