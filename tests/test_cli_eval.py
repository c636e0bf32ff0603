"""``birefnet eval``: outputs (table, JSON, CSV, plots), pairing, errors, and the --model path."""

from __future__ import annotations

import csv
import json
import math
import sys
import types
from typing import ClassVar

import cv2
import numpy as np
import pytest

from birefnet.cli import main
from birefnet.metrics import SUMMARY_NAMES
from birefnet.metrics._reference import synthetic_pair
from conftest import REFERENCE, requires_shared


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


@pytest.fixture
def dataset(tmp_path):
    """gt/, two prediction folders a/ and b/ (b misses one file and has an extra one)."""
    for i in range(4):
        pred, gt = synthetic_pair(40, 48, i)
        _write(tmp_path / "gt" / f"img_{i}.png", gt)
        _write(tmp_path / "a" / f"img_{i}.png", pred)
        if i != 3:
            _write(tmp_path / "b" / f"img_{i}.jpg", cv2.GaussianBlur(pred, (5, 5), 0))
    _write(tmp_path / "b" / "other.png", pred)
    return tmp_path


def _run(capsys, *argv):
    rc = main(["eval", "--no-progress", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


@requires_shared
def test_json_matches_official_layout_and_numbers(tmp_path, capsys):
    folder = REFERENCE / "metrics" / "dis_like_a"
    ref = json.loads((folder / "expected.json").read_text())
    rc, out, _ = _run(
        capsys, folder / "pred", "--gt", folder / "gt", "--json", tmp_path / "r.json", "--workers", 1
    )
    assert rc == 0
    assert "maxFm" in out and "HCE" in out
    res = json.loads((tmp_path / "r.json").read_text())
    assert list(res) == ["summary", "curves", "per_image"]
    assert list(res["summary"]) == list(ref["summary"])
    assert set(res["curves"]) == set(ref["curves"])
    assert [set(r) for r in res["per_image"]] == [set(r) for r in ref["per_image"]]
    for k, v in ref["summary"].items():
        assert abs(res["summary"][k] - v) <= (1e-9 if k == "HCE" else 1e-6), k
    for k, v in ref["curves"].items():
        np.testing.assert_allclose(res["curves"][k], v, atol=1e-6)


def test_several_models(dataset, capsys):
    rc, out, err = _run(
        capsys,
        dataset / "a",
        dataset / "b",
        "--gt",
        dataset / "gt",
        "--json",
        dataset / "out" / "r.json",
        "--csv",
        dataset / "out" / "r.csv",
        "--plot",
        dataset / "plots",
        "--workers",
        2,
    )
    assert rc == 0, err
    # unmatched files are reported; only the GT files every folder has are evaluated
    assert "1 GT file(s) without prediction" in err and "img_3.png" in err
    assert "1 prediction(s) without GT" in err and "other.png" in err
    assert "3 images" in out
    res = json.loads((dataset / "out" / "r.json").read_text())
    assert list(res) == ["a", "b"]
    assert [r["name"] for r in res["a"]["per_image"]] == ["img_0.png", "img_1.png", "img_2.png"]
    assert list(res["a"]["summary"]) == list(SUMMARY_NAMES)
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in res["b"]["summary"].values())
    rows = list(csv.reader((dataset / "out" / "r.csv").open()))
    assert rows[0] == ["model", *SUMMARY_NAMES]
    assert [r[0] for r in rows[1:]] == ["a", "b"]
    assert float(rows[1][1]) == pytest.approx(res["a"]["summary"]["maxFm"], abs=1e-15)
    for name in ("pr_curve", "fmeasure_curve", "emeasure_curve"):
        assert (dataset / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    # one worker gives the same numbers as two
    for workers in (1, 2):
        rc, _, _ = _run(
            capsys,
            dataset / "a",
            "--gt",
            dataset / "gt",
            "--json",
            dataset / f"{workers}.json",
            "--workers",
            workers,
        )
        assert rc == 0
    assert (dataset / "1.json").read_text() == (dataset / "2.json").read_text()


def test_metric_subset_and_resized_warning(dataset, capsys, caplog):
    small = cv2.resize(cv2.imread(str(dataset / "a" / "img_0.png"), 0), (20, 17))
    _write(dataset / "a" / "img_0.png", small)
    rc, out, _ = _run(
        capsys, dataset / "a", "--gt", dataset / "gt", "--metrics", "S,MAE", "--json", dataset / "s.json"
    )
    assert rc == 0
    res = json.loads((dataset / "s.json").read_text())
    assert set(res["summary"]) == {"Smeasure", "MAE"} and res["curves"] == {}
    assert "HCE" not in out
    assert any("resized" in r.getMessage() and "img_0.png" in r.getMessage() for r in caplog.records)


def test_colour_ground_truth_is_converted_and_said(dataset, capsys, caplog):
    gt = cv2.imread(str(dataset / "gt" / "img_1.png"), 0)
    _write(dataset / "gt" / "img_1.png", cv2.cvtColor(gt, cv2.COLOR_GRAY2BGR))
    rc, _, _ = _run(capsys, dataset / "a", "--gt", dataset / "gt", "--metrics", "S")
    assert rc == 0
    assert any("colour" in r.getMessage() and "IMREAD_GRAYSCALE" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "case, message",
    [
        ("unreadable", "cannot decode"),
        ("empty", "holds no image file"),
        ("nomatch", "no prediction file matches"),
        ("nogt", "--gt GT_DIR is required"),
        ("missing", "is not a folder"),
        ("badmetric", "unknown metric"),
        ("both", "not both"),
    ],
)
def test_errors_are_one_line(dataset, capsys, case, message):
    args = [dataset / "a", "--gt", dataset / "gt"]
    if case == "unreadable":
        (dataset / "a" / "img_2.png").write_bytes(b"not a png at all")
    elif case == "empty":
        (dataset / "empty").mkdir()
        args = [dataset / "empty", "--gt", dataset / "gt"]
    elif case == "nomatch":
        _write(dataset / "c" / "zzz.png", np.zeros((4, 4), np.uint8))
        args = [dataset / "c", "--gt", dataset / "gt"]
    elif case == "nogt":
        args = [dataset / "a"]
    elif case == "missing":
        args = [dataset / "nope", "--gt", dataset / "gt"]
    elif case == "badmetric":
        args += ["--metrics", "S,XYZ"]
    elif case == "both":
        args += ["--model", "m", "--data", dataset]
    rc, _, err = _run(capsys, *args)
    assert rc != 0
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


class _FakePredictor:
    """Stands in for birefnet.inference.Predictor: mask = image brightness, as float in [0, 1]."""

    calls: ClassVar[list] = []

    def __init__(self, model, device=None):
        self.model = model
        _FakePredictor.calls.append(model)

    def predict(self, paths):
        out = []
        for p in paths:
            im = cv2.imread(str(p), cv2.IMREAD_COLOR)
            out.append(im.mean(axis=2).astype(np.float32) / 255)
        return out


def test_model_path_with_fake_predictor(tmp_path, capsys, monkeypatch):
    fake = types.ModuleType("birefnet.inference")
    fake.Predictor = _FakePredictor
    monkeypatch.setitem(sys.modules, "birefnet.inference", fake)
    data = tmp_path / "DIS-VD"

    for i in range(3):
        pred, gt = synthetic_pair(36, 44, 10 + i)
        _write(data / "gt" / f"img_{i}.png", gt)
        _write(data / "im" / f"img_{i}.jpg", cv2.cvtColor(pred, cv2.COLOR_GRAY2BGR))
    rc, out, err = _run(
        capsys,
        "--model",
        "my-model",
        "--data",
        data,
        "--save-preds",
        tmp_path / "preds",
        "--json",
        tmp_path / "m.json",
    )
    assert rc == 0, err
    assert _FakePredictor.calls[-1] == "my-model"
    assert "my-model" in out
    saved = sorted(p.name for p in (tmp_path / "preds").iterdir())
    assert saved == ["img_0.png", "img_1.png", "img_2.png"]
    # predictions are quantised by truncating p * 255, as the official inference saves them
    im = cv2.imread(str(data / "im" / "img_0.jpg"), cv2.IMREAD_COLOR)
    expected = (im.mean(axis=2).astype(np.float32) / 255 * 255).astype(np.uint8)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "preds" / "img_0.png"), 0), expected)
    # evaluating the saved predictions as a folder gives the same numbers
    res_model = json.loads((tmp_path / "m.json").read_text())
    rc, _, _ = _run(
        capsys, tmp_path / "preds", "--gt", data / "gt", "--json", tmp_path / "f.json", "--workers", 1
    )
    assert json.loads((tmp_path / "f.json").read_text())["summary"] == res_model["summary"]


def test_model_needs_data(capsys):
    rc, _, err = _run(capsys, "--model", "x")
    assert rc == 2 and "--model and --data go together" in err


def test_unguarded_script_with_workers_gets_a_clear_error(dataset, tmp_path):
    """Worker processes import the caller's main module: a script without the ``__main__`` guard
    gets an EvaluationError that says what to do, not only a BrokenProcessPool."""
    import subprocess

    script = tmp_path / "unguarded.py"
    script.write_text(
        "from birefnet.metrics.evaluate import EvaluationError, evaluate_folders\n"
        "try:\n"
        f"    evaluate_folders([{str(dataset / 'a')!r}], {str(dataset / 'gt')!r}, workers=2)\n"
        "except EvaluationError as err:\n"
        "    print('CLEAR:', err)\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert "CLEAR:" in proc.stdout, proc.stdout + proc.stderr
    assert '__name__ == "__main__"' in proc.stdout
    assert "workers=1" in proc.stdout


def test_skeleton_cache_is_on_by_default_and_can_be_turned_off(dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BIREFNET_CACHE", str(tmp_path / "cache"))
    args = (dataset / "a", "--gt", dataset / "gt", "--workers", 1)
    rc, _, _ = _run(capsys, *args, "--no-cache", "--json", tmp_path / "plain.json")
    assert rc == 0 and not (tmp_path / "cache").exists()
    rc, _, _ = _run(capsys, *args, "--metrics", "S,MAE")  # no HCE: no skeletons, no cache folder
    assert rc == 0 and not (tmp_path / "cache").exists()
    for name in ("first", "second"):  # the second run reads the skeletons the first one wrote
        rc, _, _ = _run(capsys, *args, "--json", tmp_path / f"{name}.json")
        assert rc == 0
    assert len(list((tmp_path / "cache" / "skeletons").glob("*.npy"))) == 4
    plain = json.loads((tmp_path / "plain.json").read_text())
    for name in ("first", "second"):
        assert json.loads((tmp_path / f"{name}.json").read_text()) == plain
    rc, _, err = _run(capsys, *args, "--no-cache", "--cache-dir", tmp_path / "c2")
    assert rc == 2 and "contradict" in err


def test_unwritable_skeleton_cache_does_not_stop_the_evaluation(dataset, tmp_path, capsys, caplog):
    from birefnet.metrics.evaluate import evaluate_folders

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    args = (dataset / "a", "--gt", dataset / "gt", "--workers", 1, "--cache-dir", blocker)
    rc, out, err = _run(capsys, *args)
    assert rc == 0 and "HCE" in out
    assert "warning: no skeleton cache" in err and err.count("warning") == 1
    # the API: the write fails per GT, is logged, and the numbers come anyway
    res = evaluate_folders([dataset / "a"], dataset / "gt", workers=1, cache_dir=blocker / "c")
    assert res["a"]["summary"]["HCE"] >= 0
    assert "cannot write the skeleton cache" in caplog.text
