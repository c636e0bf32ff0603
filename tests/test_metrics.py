"""birefnet.metrics: parity with the official evaluator (expected.json) and with the literal
re-implementation in birefnet.metrics._reference on random masks, including tie and edge cases."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from birefnet.metrics import Evaluator, GroundTruthInfo, MaskError, parse_metrics, prepare
from birefnet.metrics import _reference as R
from birefnet.metrics import functional as F
from birefnet.metrics import measures as M
from birefnet.metrics.evaluate import evaluate_folders
from birefnet.metrics.skeleton import skeletonize
from conftest import REFERENCE, requires_shared

METRIC_SETS = ["dis_like_a", "edge_cases"]


def _close(ours: float, ref: float, tol: float) -> bool:
    if isinstance(ref, float) and math.isnan(ref):
        return isinstance(ours, float) and math.isnan(ours)
    return abs(ours - ref) <= tol


def _tol(name: str) -> float:
    return 1e-9 if name == "HCE" else 1e-6


# ---------------------------------------------------------------------------------------------
# expected.json of the official evaluator
# ---------------------------------------------------------------------------------------------


@requires_shared
@pytest.mark.parametrize("name", METRIC_SETS)
def test_official_numbers(name):
    ref = json.loads((REFERENCE / "metrics" / name / "expected.json").read_text())
    folder = REFERENCE / "metrics" / name
    res = evaluate_folders([folder / "pred"], folder / "gt", workers=1, mba_empty="nan")["pred"]
    assert set(res["summary"]) == set(ref["summary"])
    for k, v in ref["summary"].items():
        assert _close(res["summary"][k], v, _tol(k)), (k, res["summary"][k], v)
    for k, v in ref["curves"].items():
        np.testing.assert_allclose(res["curves"][k], v, rtol=0, atol=1e-6, err_msg=k)
    assert [r["name"] for r in res["per_image"]] == [r["name"] for r in ref["per_image"]]
    for ours, theirs in zip(res["per_image"], ref["per_image"]):
        assert set(ours) == set(theirs)
        for k, v in theirs.items():
            if k != "name":
                assert _close(ours[k], v, _tol(k)), (theirs["name"], k, ours[k], v)


@requires_shared
def test_official_numbers_default_mba_policy():
    """Where the official mBA is NaN (empty / full GT) ours is a number in [0, 1]; elsewhere equal."""
    folder = REFERENCE / "metrics" / "edge_cases"
    ref = json.loads((folder / "expected.json").read_text())
    res = evaluate_folders([folder / "pred"], folder / "gt", workers=1)["pred"]
    values = []
    for ours, theirs in zip(res["per_image"], ref["per_image"]):
        if math.isnan(theirs["mBA"]):
            assert 0.0 <= ours["mBA"] <= 1.0
        else:
            assert abs(ours["mBA"] - theirs["mBA"]) < 1e-9
        values.append(ours["mBA"])
    assert abs(res["summary"]["mBA"] - np.mean(values)) < 1e-12
    assert res["resized"] == ["img_004.png"]  # the prediction of another size


# ---------------------------------------------------------------------------------------------
# fast implementation == literal implementation on random masks
# ---------------------------------------------------------------------------------------------


def _random_pairs(seed: int, n: int):
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = (int(v) for v in rng.integers(6, 90, 2))
        pred, gt = R.synthetic_pair(h, w, int(rng.integers(1 << 30)))
        kind = i % 9
        if kind == 1:  # binary prediction: adaptive-threshold ties
            pred = (pred > 100).astype(np.uint8) * 255
        elif kind == 2:
            gt = np.zeros_like(gt)
        elif kind == 3:  # constant prediction (no normalisation, constant S quadrants)
            pred = np.full_like(pred, int(rng.integers(256)))
        elif kind == 4:
            gt = np.full_like(gt, 255)
        elif kind == 5:  # one-pixel object in the last column: empty S quadrants
            gt = np.zeros_like(gt)
            gt[int(rng.integers(h)), w - 1] = 255
        elif kind == 6:  # soft GT and a prediction of another size
            gt = cv2.GaussianBlur(gt, (5, 5), 0)
            pred = cv2.resize(pred, (max(2, w // 2), max(2, h - 3)))
        elif kind == 7:  # sparse noise: many equidistant ties in the distance transform
            gt = ((rng.random((h, w)) < 0.03) * 255).astype(np.uint8)
        yield pred, gt


def _ours(pred, gt) -> dict:
    pair = prepare(pred, gt)
    precision, recall, fm = F.fmeasure_curves(pair)
    return {
        "Smeasure": F.smeasure(pair),
        "wFmeasure": F.weighted_fmeasure(pair),
        "MAE": F.mae(pair),
        "MSE": F.mse(pair),
        "HCE": F.hce(pair),
        "mBA": F.mba(pair, empty="nan"),
        "adpFm": F.fmeasure_adaptive(pair),
        "adpEm": F.emeasure_adaptive(pair),
        "Fm_curve": fm,
        "precision": precision,
        "recall": recall,
        "Em_curve": F.emeasure_curve(pair),
        "BIoU_curve": F.boundary_iou_curve(pair),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_implementation(seed):
    for pred, gt in _random_pairs(seed, 18):
        ours, ref = _ours(pred, gt), R.evaluate_pair(pred, gt)
        for k, v in ref.items():
            a, b = np.asarray(ours[k], dtype=float), np.asarray(v, dtype=float)
            np.testing.assert_allclose(
                a, b, rtol=0, atol=1e-9 if k != "HCE" else 0, equal_nan=True, err_msg=k
            )


def test_tiny_masks_match_reference_implementation():
    rng = np.random.default_rng(11)
    for i in range(60):
        h, w = (int(v) for v in rng.integers(1, 6, 2))
        pred = rng.integers(0, 256, (h, w)).astype(np.uint8)
        gt = ((rng.random((h, w)) < rng.random()) * 255).astype(np.uint8)
        if i % 3 == 0:
            pred = (pred > 128).astype(np.uint8) * 255
        ours, ref = _ours(pred, gt), R.evaluate_pair(pred, gt)
        for k, v in ref.items():
            np.testing.assert_allclose(
                np.asarray(ours[k], float), np.asarray(v, float), atol=1e-9, equal_nan=True, err_msg=k
            )


@pytest.mark.slow
def test_matches_reference_implementation_large():
    pred, gt = R.synthetic_pair(512, 640, 7)
    ours, ref = _ours(pred, gt), R.evaluate_pair(pred, gt)
    for k, v in ref.items():
        np.testing.assert_allclose(
            np.asarray(ours[k], float), np.asarray(v, float), rtol=0, atol=1e-9, err_msg=k
        )


def test_skeleton_identical_to_skimage():
    from skimage.morphology import skeletonize as sk_skeletonize

    rng = np.random.default_rng(0)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(1, 70, 2))
        noise = rng.random((max(1, h // 5), max(1, w // 5))).astype(np.float32)
        mask = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC) > rng.uniform(0.3, 0.7)
        mask |= rng.random((h, w)) < 0.05
        np.testing.assert_array_equal(skeletonize(mask), sk_skeletonize(mask))
    assert not skeletonize(np.zeros((5, 4), bool)).any()


def test_distance_transform_exact():
    from scipy import ndimage

    rng = np.random.default_rng(3)
    fg = rng.random((70, 90)) < 0.01
    fg[0, 0] = True
    d2 = F.gt_distance_sq(fg)
    ref = np.round(ndimage.distance_transform_edt(~fg) ** 2).astype(np.int64)
    np.testing.assert_array_equal(d2, np.minimum(ref, 266 * 266))


# ---------------------------------------------------------------------------------------------
# inputs, special cases, accumulators
# ---------------------------------------------------------------------------------------------


def test_input_forms_are_equivalent():
    pred, gt = R.synthetic_pair(40, 50, 1)
    prob = np.minimum((pred.astype(np.float64) + 0.5) / 255, 1.0)  # truncating p * 255 gives pred back
    a = Evaluator().step(pred, gt)
    b = Evaluator().step(prob, gt > 128)
    for k in ("Smeasure", "wFmeasure", "MAE", "HCE", "mBA", "adpFm", "adpEm"):
        assert a[k] == b[k], k
    with pytest.raises(MaskError, match="single-channel"):
        prepare(np.zeros((4, 4, 3), np.uint8), gt)
    with pytest.raises(MaskError, match=r"\[0, 1\]"):
        prepare(np.full((4, 4), 2.0), gt)
    with pytest.raises(MaskError, match=r"0\.\.255"):
        prepare(np.full((4, 4), 300, np.int32), gt)


def test_mba_policy_for_gt_without_boundary():
    empty = np.zeros((64, 64), np.uint8)
    full = np.full((64, 64), 255, np.uint8)
    blob = empty.copy()
    cv2.circle(blob, (32, 32), 10, 255, -1)
    assert F.mba(prepare(empty, empty)) == 1.0
    assert F.mba(prepare(full, full)) == 1.0
    assert F.mba(prepare(full, empty)) == 0.0
    spurious = F.mba(prepare(blob, empty))
    assert 0.0 <= spurious < 1.0
    assert math.isnan(F.mba(prepare(blob, empty), empty="nan"))


def test_accumulators_match_evaluator():
    pairs = list(_random_pairs(5, 6))
    ev = Evaluator()
    singles = {k: M.METRICS[k]() for k in M.METRICS}
    for i, (pred, gt) in enumerate(pairs):
        ev.step(pred, gt, name=f"im{i}")
        for m in singles.values():
            m.step(pred, gt)
    res = ev.results()
    for m in singles.values():
        for k, v in m.results().items():
            if k in res["summary"]:
                assert res["summary"][k] == v, k
    assert [r["name"] for r in res["per_image"]] == [f"im{i}" for i in range(6)]
    assert set(res["curves"]) >= {"Fm_curve", "Em_curve", "BIoU_curve", "precision", "recall"}
    assert all(len(v) == 256 for v in res["curves"].values())


def test_shared_ground_truth_info():
    pred, gt = R.synthetic_pair(48, 40, 2)
    info = GroundTruthInfo(gt)
    a = Evaluator().compute(prepare(pred, info))
    b = Evaluator().compute(prepare(pred[::-1].copy(), info))  # reuses skeleton / distances
    c = Evaluator().compute(pred, gt)
    assert a["HCE"] == c["HCE"] and a["wFmeasure"] == c["wFmeasure"]
    # the GT work (skeleton components, distances) is kept for the next prediction
    assert ("skeleton" in info.__dict__ or "_components" in info.__dict__) and "_weights" in info.__dict__
    assert b["HCE"] >= 0


def test_component_skeleton_is_exact_where_asked():
    """Thinning per 8-connected component (only those asked for) equals skimage on the whole mask."""
    from skimage.morphology import skeletonize as sk_skeletonize

    from birefnet.metrics.skeleton import ComponentSkeleton

    rng = np.random.default_rng(5)
    for _ in range(20):
        h, w = (int(v) for v in rng.integers(8, 60, 2))
        noise = rng.random((max(1, h // 4), max(1, w // 4))).astype(np.float32)
        mask = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC) > rng.uniform(0.5, 0.8)
        full = sk_skeletonize(mask)
        parts = ComponentSkeleton(mask.view(np.uint8))
        where = (rng.random((h, w)) < 0.01) & mask
        got = parts.ensure(where)
        _, labels = cv2.connectedComponents(mask.view(np.uint8), connectivity=8)
        asked = np.isin(labels, np.unique(labels[where])) & mask
        np.testing.assert_array_equal(got[asked], full[asked])
        assert not got[~asked].any() or parts.count == 1
        np.testing.assert_array_equal(parts.ensure(mask), full)
        assert parts.complete


def test_parse_metrics():
    assert parse_metrics(None) == list(M.METRICS)
    assert parse_metrics("all") == list(M.METRICS)
    assert parse_metrics("S+MAE,maxFm,wFmeasure,biou") == ["S", "MAE", "F", "WF", "BIoU"]
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        parse_metrics("S,nope")
    ev = Evaluator("S,HCE")
    ev.step(*R.synthetic_pair(20, 20, 0))
    res = ev.results()
    assert set(res["summary"]) == {"Smeasure", "HCE"}
    assert set(res["per_image"][0]) == {"name", "Smeasure", "HCE"}
    with pytest.raises(ValueError, match="no image"):
        Evaluator().results()


def test_plots(tmp_path):
    from birefnet.metrics.plots import plot_curves

    results = {}
    for model, seed in (("a", 0), ("b", 1), ("c", 2)):
        ev = Evaluator("F,E,S")
        for pred, gt in _random_pairs(seed, 3):
            ev.step(pred, gt)
        results[model] = ev.results()
    written = plot_curves(results, tmp_path / "plots")
    assert set(written) == {"pr_curve", "fmeasure_curve", "emeasure_curve"}
    for path, lines in written.values():
        assert lines == 3
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert cv2.imread(str(path)) is not None


def test_skeleton_cache_dir(tmp_path):
    for i in range(2):
        pred, gt = R.synthetic_pair(30, 36, i)
        for folder, image in (("gt", gt), ("pred", pred)):
            (tmp_path / folder).mkdir(exist_ok=True)
            cv2.imwrite(str(tmp_path / folder / f"{i}.png"), image)
    plain = evaluate_folders([tmp_path / "pred"], tmp_path / "gt", workers=1)["pred"]
    first = evaluate_folders([tmp_path / "pred"], tmp_path / "gt", workers=1, cache_dir=tmp_path / "cache")[
        "pred"
    ]
    cached = sorted((tmp_path / "cache").glob("*.npy"))
    assert len(cached) == 2
    second = evaluate_folders([tmp_path / "pred"], tmp_path / "gt", workers=1, cache_dir=tmp_path / "cache")[
        "pred"
    ]
    assert plain["summary"] == first["summary"] == second["summary"]
    assert sorted(p.name for p in (tmp_path / "gt").iterdir()) == ["0.png", "1.png"]  # nothing written there
    # an entry holds the skeleton's flat pixel indices
    gt0 = cv2.imread(str(tmp_path / "gt" / "0.png"), cv2.IMREAD_GRAYSCALE)
    entries = {p.name: np.load(p) for p in cached}
    assert any(np.array_equal(idx, np.flatnonzero(GroundTruthInfo(gt0).skeleton)) for idx in entries.values())
    # damaged entries (out-of-range indices, wrong type) are ignored, said, and rewritten
    np.save(cached[0], np.array([10**9], dtype=np.uint32))
    np.save(cached[1], np.array([0.5]))
    third = evaluate_folders([tmp_path / "pred"], tmp_path / "gt", workers=1, cache_dir=tmp_path / "cache")[
        "pred"
    ]
    assert third["summary"] == plain["summary"]
    assert all(np.array_equal(np.load(p), entries[p.name]) for p in cached)


def test_weighted_f_window_and_shared_distances_match_reference():
    """wF computes distances on a window holding the GT and the non-zero prediction; a shared GT
    grows that window for later predictions. Both must equal the literal implementation."""
    rng = np.random.default_rng(9)
    gt = np.zeros((60, 80), np.uint8)
    gt[20:35, 30:50] = 255
    info = GroundTruthInfo(gt)
    for _ in range(6):
        pred = np.zeros_like(gt)
        y, x = (int(v) for v in rng.integers(0, 50, 2))
        pred[y : y + 10, x : x + 25] = rng.integers(1, 256, (10, 25)[:2]).astype(np.uint8)[: 60 - y, : 80 - x]
        ref = R.evaluate_pair(pred, gt)["wFmeasure"]
        assert abs(F.weighted_fmeasure(prepare(pred, info)) - ref) < 1e-12
        assert abs(F.weighted_fmeasure(prepare(pred, gt)) - ref) < 1e-12
