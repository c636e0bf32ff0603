"""The compiled metric kernels (GT skeleton, distance transform) must equal their exact references."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy import ndimage
from skimage.morphology import skeletonize as sk_skeletonize

from birefnet.metrics import _jit
from birefnet.metrics import skeleton as S

pytest.importorskip("numba", reason="numba is a dependency; without it scikit-image itself is used")


def _random_masks(rng: np.random.Generator, count: int):
    """Dense noise (every neighbourhood code occurs), opened/closed noise and smooth blobs with holes."""
    for i in range(count):
        h, w = (int(v) for v in rng.integers(1, 48, 2))
        kind = i % 4
        if kind == 0:
            mask = rng.random((h, w)) < rng.uniform(0.2, 0.95)
        elif kind == 1:
            mask = ndimage.binary_closing(rng.random((h, w)) < rng.uniform(0.3, 0.8))
        elif kind == 2:
            mask = ndimage.binary_opening(rng.random((h, w)) < rng.uniform(0.5, 0.9))
        else:
            noise = rng.random((max(1, h // 5), max(1, w // 5))).astype(np.float32)
            mask = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC) > rng.uniform(0.3, 0.7)
            mask &= rng.random((h, w)) > 0.03
        yield mask


def test_kernel_equals_skimage_on_random_masks():
    assert S.compiled(S._thin_kernel) is not None
    rng = np.random.default_rng(0)
    for mask in _random_masks(rng, 1500):
        np.testing.assert_array_equal(S.skeletonize(mask), sk_skeletonize(mask))


def test_kernel_equals_skimage_on_dis_like_masks_and_edges():
    from birefnet.metrics._reference import synthetic_pair

    for seed, (h, w) in enumerate([(256, 256), (384, 512), (130, 90)]):
        gt = synthetic_pair(h, w, seed)[1] > 128
        np.testing.assert_array_equal(S.skeletonize(gt), sk_skeletonize(gt))
    cases = [
        np.zeros((5, 4), bool),
        np.ones((1, 1), bool),
        np.ones((1, 9), bool),
        np.ones((9, 1), bool),
        np.ones((7, 7), bool),  # touches the border on every side
        np.ones((40, 3), bool),
        np.eye(12, dtype=bool),
        np.pad(np.ones((20, 20), bool), 3),
    ]
    for mask in cases:
        np.testing.assert_array_equal(S.skeletonize(mask), sk_skeletonize(mask))


def test_a_wrong_table_entry_is_caught(monkeypatch):
    """The random-mask comparison is sharp enough to notice one changed entry (1 <-> 3 included)."""
    rng = np.random.default_rng(1)
    masks = list(_random_masks(rng, 400))
    expected = [sk_skeletonize(m) for m in masks]
    for code in (7, 120, 243):  # a removable entry, and two that only matter in sub-iteration 2
        table = S._TABLE.copy()
        table[code] = {0: 1, 1: 3, 2: 0, 3: 1}[int(table[code])]
        monkeypatch.setattr(S, "_TABLE", table)
        assert any(not np.array_equal(S.skeletonize(m), e) for m, e in zip(masks, expected)), code
    monkeypatch.undo()


def test_without_numba_scikit_image_is_used(monkeypatch):
    calls = []
    import skimage.morphology

    real = skimage.morphology.skeletonize
    monkeypatch.setattr(skimage.morphology, "skeletonize", lambda m: calls.append(m.shape) or real(m))
    monkeypatch.setattr(_jit, "ENABLED", False)
    mask = np.ones((6, 9), bool)
    np.testing.assert_array_equal(S.skeletonize(mask), real(mask))
    assert calls == [(8, 11)]  # the bounding box plus its background border


def test_distance_kernel_equals_scipy_and_the_opencv_fallback(monkeypatch):
    """The integer transform gives the exact squared distances (scipy's exact EDT), clamped, with a
    frame of padding or without, and the same numbers as the OpenCV fallback used without numba; so
    do the wF importance weights computed from them."""
    from birefnet.metrics import functional as F

    assert _jit.compiled(F._edt_sq_kernel) is not None
    rng = np.random.default_rng(2)
    cases = [rng.random(rng.integers(1, 60, 2)) < rng.uniform(0.001, 0.5) for _ in range(200)]
    far = np.zeros((700, 300), bool)
    far[0, 0] = True  # distances past the clamp (266^2)
    cases += [far, np.ones((3, 5), bool), np.eye(40, dtype=bool)[:, ::-1]]
    for i, fg in enumerate(cases):
        if not fg.any():
            fg[0, -1] = True
        pad = i % 3
        got = F.gt_distance_sq(fg, pad=pad)
        exact = ndimage.distance_transform_edt(np.pad(~fg, pad, constant_values=True)) ** 2
        np.testing.assert_array_equal(got, np.minimum(np.rint(exact), F._FAR).astype(np.int32))
        importance = F.gt_importance(F.gt_distance_sq(fg), fg)
        monkeypatch.setattr(_jit, "ENABLED", False)
        np.testing.assert_array_equal(F.gt_distance_sq(fg, pad=pad), got)
        np.testing.assert_array_equal(F.gt_importance(F.gt_distance_sq(fg), fg), importance)
        monkeypatch.setattr(_jit, "ENABLED", True)


def test_nearest_gt_kernel_equals_the_numpy_search(monkeypatch):
    """wF's ring (background within 3 px of the GT) and its nearest GT pixels, with and without numba."""
    from birefnet.metrics import functional as F

    rng = np.random.default_rng(3)
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(2, 50, 2))
        fg = rng.random((h, w)) < rng.uniform(0.01, 0.6)
        if not fg.any():
            fg[h // 2, w // 2] = True
        fg8 = fg.view(np.uint8)
        dist = F.gt_distance_sq(fg)
        got = F._wf_neighbourhood(fg8, dist)
        monkeypatch.setattr(_jit, "ENABLED", False)
        ref = F._wf_neighbourhood(fg8, dist)
        monkeypatch.setattr(_jit, "ENABLED", True)
        np.testing.assert_array_equal(got.ring, ref.ring)
        np.testing.assert_array_equal(got.nearest, ref.nearest)
