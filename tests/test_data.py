"""Datasets in the official layout, bad-data reporting, augmentations, sampler, synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from birefnet.data import (
    AUGMENTATIONS,
    EmptyDatasetError,
    GlobalBatchSampler,
    SegmentationDataset,
    apply_augmentations,
    class_name_from_stem,
    dynamic_batch_size,
    find_pairs,
    make_sample,
    read_image,
    read_mask,
    resize_batch,
    write_synthetic_dataset,
)
from birefnet.data.transforms import random_background_color


def _write_pair(root: Path, stem: str, size=(48, 32), image_ext=".jpg", mask_size=None, seed=0) -> None:
    rng = np.random.default_rng(seed)
    w, h = size
    (root / "im").mkdir(parents=True, exist_ok=True)
    (root / "gt").mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "im" / f"{stem}{image_ext}"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    mw, mh = mask_size or size
    mask = np.zeros((mh, mw), np.uint8)
    mask[mh // 4 : 3 * mh // 4, mw // 4 : 3 * mw // 4] = 255
    cv2.imwrite(str(root / "gt" / f"{stem}.png"), mask)


@pytest.fixture
def bad_dataset(tmp_path: Path) -> Path:
    """DS-A: 3 good pairs (one DIS-named), a missing mask, an orphan mask, a corrupt image,
    a truncated mask, a size mismatch, a duplicate stem; DS-B: 2 good pairs (upper-case ext)."""
    a = tmp_path / "DS-A"
    for i in range(2):
        _write_pair(a, f"good{i}", seed=i)
    _write_pair(a, "1#Accessories#1#Bag#123_o", seed=5)
    _write_pair(a, "nomask")
    (a / "gt" / "nomask.png").unlink()
    _write_pair(a, "orphan")
    (a / "im" / "orphan.jpg").unlink()
    _write_pair(a, "corrupt")
    (a / "im" / "corrupt.jpg").write_bytes(b"this is not an image")
    _write_pair(a, "truncated")
    data = (a / "gt" / "truncated.png").read_bytes()
    (a / "gt" / "truncated.png").write_bytes(data[: len(data) // 2])
    _write_pair(a, "mismatch", mask_size=(40, 40))
    _write_pair(a, "dup")
    _write_pair(a, "dup", image_ext=".png")
    b = tmp_path / "DS-B"
    _write_pair(b, "x0", image_ext=".JPG")
    _write_pair(b, "x1", image_ext=".JPEG")
    return tmp_path


def test_find_pairs_reports_every_problem(bad_dataset: Path, caplog) -> None:
    pairs, report = find_pairs(bad_dataset, "DS-A+DS-B")
    names = sorted(p.name for p in pairs)
    # the truncated mask passes the header check (it is caught when loading, see below)
    assert names == sorted(["good0", "good1", "1#Accessories#1#Bag#123_o", "truncated", "dup", "x0", "x1"])
    counts = report.counts()
    assert counts["missing mask"] == 1
    assert counts["mask without image"] == 1
    assert counts["unreadable"] == 1
    assert counts["size mismatch"] == 1
    assert counts["duplicate image stem"] == 1
    assert report.datasets == {"DS-A": 5, "DS-B": 2}
    bad = {(b.name, b.reason) for b in report.bad}
    assert ("corrupt", "unreadable") in bad and ("mismatch", "size mismatch") in bad
    assert "missing mask" in caplog.text and "nomask" in caplog.text
    assert "48x32" in report.summary() and "40x40" in report.summary()
    json.dumps(report.to_dict())  # serialisable for data_report.json

    # full verification also finds the truncated pixel data
    pairs_full, report_full = find_pairs(bad_dataset, ["DS-A", "DS-B"], verify="full")
    assert "truncated" not in {p.name for p in pairs_full}
    assert report_full.counts()["unreadable"] == 2


def test_class_names_from_dis_file_names(bad_dataset: Path) -> None:
    assert class_name_from_stem("1#Accessories#1#Bag#2339506821_83cf9f1d22_o") == "Bag"
    assert class_name_from_stem("plain_name") is None
    pairs, _ = find_pairs(bad_dataset, "DS-A")
    ds = SegmentationDataset(pairs, size=(64, 64), augmentations=())
    assert ds.class_names == ("Bag",)
    labels = {
        ds.pairs[i].name: int(ds[i]["class_label"]) for i in range(len(ds)) if ds.pairs[i].name != "truncated"
    }
    assert labels["1#Accessories#1#Bag#123_o"] == 0
    assert labels["good0"] == -100  # no class: ignored by the cross-entropy


def test_unreadable_file_at_load_time_is_skipped(bad_dataset: Path, caplog) -> None:
    pairs, _ = find_pairs(bad_dataset, "DS-A")
    ds = SegmentationDataset(pairs, size=(64, 64), augmentations=())
    i = next(k for k, p in enumerate(pairs) if p.name == "truncated")
    item = ds[i]
    assert item["name"] != "truncated" and item["image"].shape == (3, 64, 64)
    assert ds.load_failures == 1 and "truncated" in caplog.text


def test_dataset_discovery_and_errors(bad_dataset: Path, tmp_path: Path) -> None:
    # no names: every dataset folder under root except the excluded (validation) ones
    pairs, report = find_pairs(bad_dataset, None, exclude=["DS-B"])
    assert set(report.datasets) == {"DS-A"}
    # a dataset folder given directly as root
    pairs, report = find_pairs(bad_dataset / "DS-B")
    assert len(pairs) == 2
    with pytest.raises(FileNotFoundError, match=r"DS-C.*DS-A"):
        find_pairs(bad_dataset, "DS-C")
    (tmp_path / "empty" / "im").mkdir(parents=True)
    (tmp_path / "empty" / "gt").mkdir(parents=True)
    with pytest.raises(EmptyDatasetError, match="no usable"):
        find_pairs(tmp_path / "empty")
    (tmp_path / "half" / "im").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="lacks gt"):
        find_pairs(tmp_path, "half")


def test_read_mask_variants(tmp_path: Path) -> None:
    alpha = np.zeros((8, 8), np.uint8)
    alpha[2:6, 2:6] = 200
    rgba = np.dstack([np.full((8, 8, 3), 30, np.uint8), alpha])
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    assert np.array_equal(read_mask(tmp_path / "rgba.png"), alpha)  # cut-out saved as RGBA: alpha
    cv2.imwrite(str(tmp_path / "m16.png"), alpha.astype(np.uint16) * 257)
    assert np.array_equal(read_mask(tmp_path / "m16.png"), alpha)
    cv2.imwrite(str(tmp_path / "grey.png"), alpha)
    img = read_image(tmp_path / "grey.png")
    assert img.shape == (8, 8, 3) and np.array_equal(img[..., 0], alpha)


def _aligned_pair(seed: int = 0, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """An image whose every channel equals its mask, to check geometric alignment."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, (20, 30), 12, 255, -1)
    cv2.rectangle(mask, (40, 5), (60, 20), 180, -1)
    mask = cv2.GaussianBlur(mask, (5, 5), 0) | (rng.random((size, size)) > 0.98).astype(np.uint8)
    return np.repeat(mask[..., None], 3, axis=2), mask


@pytest.mark.parametrize("method", ["flip", "crop", "rotate"])
def test_geometric_augmentations_keep_image_and_mask_aligned(method: str) -> None:
    image, mask = _aligned_pair()
    changed = 0
    for seed in range(12):
        out_img, out_mask = apply_augmentations(image, mask, [method], np.random.default_rng(seed))
        assert out_img.shape == image.shape and out_mask.shape == mask.shape
        assert out_img.dtype == np.uint8 and out_mask.dtype == np.uint8
        np.testing.assert_array_equal(out_img[..., 0], out_mask)
        changed += not np.array_equal(out_mask, mask)
    assert changed > 0  # the augmentation fired for some seeds


def test_photometric_augmentations_leave_the_mask_alone() -> None:
    image, mask = _aligned_pair()
    out_img, out_mask = apply_augmentations(image, mask, ["enhance", "pepper"], np.random.default_rng(1))
    assert np.array_equal(out_mask, mask) and not np.array_equal(out_img, image)
    with pytest.raises(ValueError, match="unknown augmentations"):
        apply_augmentations(image, mask, ["flip", "mixup"], np.random.default_rng(0))


def test_background_color_synthesis_keeps_the_foreground() -> None:
    image = np.full((16, 16, 3), 100, np.uint8)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    out = random_background_color(image, mask, np.random.default_rng(0), p=1.0)
    assert np.array_equal(out[4:12, 4:12], image[4:12, 4:12])
    assert len({tuple(out[0, 0]), tuple(out[15, 15])}) == 1  # one flat colour


def test_augmentations_reproducible_from_the_seed(tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path / "syn", 4, size=(64, 64), seed=3)
    pairs, _ = find_pairs(tmp_path / "syn")
    ds = SegmentationDataset(
        pairs, size=(64, 64), augmentations=AUGMENTATIONS, background_color_synthesis=0.5, seed=11
    )
    ds_again = SegmentationDataset(
        pairs, size=(64, 64), augmentations=AUGMENTATIONS, background_color_synthesis=0.5, seed=11
    )
    for key in [(0, 1), (5, 2)]:
        a, b = ds[key], ds_again[key]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(ds[(0, 1)]["image"], ds[(1, 1)]["image"])  # a new draw every epoch
    other = SegmentationDataset(pairs, size=(64, 64), augmentations=AUGMENTATIONS, seed=12)
    assert not torch.equal(ds[(0, 1)]["image"], other[(0, 1)]["image"])

    # the same batches whichever process loads them
    from torch.utils.data import DataLoader

    sampler = GlobalBatchSampler(len(ds), 2, seed=0)
    serial = [b["image"] for b in DataLoader(ds, batch_sampler=sampler, num_workers=0)]
    parallel = [b["image"] for b in DataLoader(ds, batch_sampler=sampler, num_workers=2)]
    assert all(torch.equal(x, y) for x, y in zip(serial, parallel))


def test_item_format(tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path / "syn", 2, size=(96, 64), seed=0)
    pairs, _ = find_pairs(tmp_path / "syn")
    item = SegmentationDataset(pairs, size=(64, 32), augmentations=())[0]
    assert item["image"].shape == (3, 32, 64) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, 32, 64) and item["mask"].min() >= 0 and item["mask"].max() <= 1
    assert abs(float(item["image"].mean())) < 3  # normalised
    native = SegmentationDataset(pairs, size=None, augmentations=())[0]
    assert native["image"].shape == (3, 64, 96)


def test_global_batch_sampler_layout() -> None:
    n, seed = 23, 5
    single = GlobalBatchSampler(n, 4, world_size=1, grad_accum_steps=1, seed=seed)
    assert single.steps_per_epoch == 5
    single.set_epoch(2)
    global_batches = [sorted(i for _, i in b) for b in single]
    # 2 ranks x batch 2, or 1 rank x batch 2 x 2 accumulation steps: the same global batches
    for world, accum in [(2, 1), (1, 2), (4, 1)]:
        b = 4 // (world * accum)
        samplers = [
            GlobalBatchSampler(n, b, world_size=world, rank=r, grad_accum_steps=accum, seed=seed)
            for r in range(world)
        ]
        per_rank = []
        for s in samplers:
            s.set_epoch(2)
            per_rank.append(list(s))
        steps = []
        for step in range(single.steps_per_epoch):
            idx = []
            for r in range(world):
                for m in range(accum):
                    idx += [i for e, i in per_rank[r][step * accum + m] if e == 2]
            steps.append(sorted(idx))
        assert steps == global_batches
    # every sample at most once per epoch; a new order next epoch; resume mid-epoch
    flat = [i for b in global_batches for i in b]
    assert len(set(flat)) == len(flat) == 20
    single.set_epoch(3)
    assert sorted(i for b in single for _, i in b) != flat
    single.set_epoch(2, start_step=3)
    assert [sorted(i for _, i in b) for b in single] == global_batches[3:]
    with pytest.raises(ValueError, match="fewer than one global batch"):
        GlobalBatchSampler(3, 2, world_size=2)


def test_dynamic_size_and_resize() -> None:
    ranges = ((256, 2304), (256, 2304))
    sizes = {dynamic_batch_size(7, 0, s, ranges) for s in range(20)}
    assert len(sizes) > 5
    assert all(w % 32 == 0 and h % 32 == 0 and 256 <= w <= 2304 and 256 <= h <= 2304 for w, h in sizes)
    assert dynamic_batch_size(7, 0, 3, ranges) == dynamic_batch_size(7, 0, 3, ranges)
    x, y = resize_batch(torch.randn(2, 3, 64, 64), torch.rand(2, 1, 64, 64), (96, 32))
    assert x.shape == (2, 3, 32, 96) and y.shape == (2, 1, 32, 96) and y.min() >= 0 and y.max() <= 1


def test_synthetic_dataset(tmp_path: Path) -> None:
    out = write_synthetic_dataset(tmp_path / "s", 6, size=(80, 64), seed=2)
    images = sorted((out / "im").glob("*.jpg"))
    masks = sorted((out / "gt").glob("*.png"))
    assert len(images) == len(masks) == 6
    pairs, report = find_pairs(out, verify="full")
    assert len(pairs) == 6 and not report.bad
    assert all(p.class_name in ("Blob", "Ring", "Curves", "Mesh", "Tree") for p in pairs)
    for m in masks:
        mask = read_mask(m)
        assert mask.shape == (64, 80) and 0 < (mask > 128).mean() < 0.9
    # deterministic, and sample i does not depend on n
    _image, mask, kind = make_sample(np.random.default_rng([2, 3]), 80, 64)
    again = write_synthetic_dataset(tmp_path / "t", 4, size=(80, 64), seed=2)
    stem = sorted((again / "gt").glob("4#*.png"))[0]
    assert np.array_equal(read_mask(stem), mask) and f"#{kind}#" in stem.name
