"""Losses: the official train fixture, hand-computed values, perfect predictions, bf16, weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from birefnet.losses import (
    PIXEL_TERMS,
    TASK_WEIGHTS,
    BiRefNetLoss,
    finetune_weights,
    task_weights,
)
from birefnet.losses import functional as LF
from birefnet.models.output import BiRefNetOutput
from conftest import load_fixture, rel_error, requires_shared

LN2 = math.log(2.0)
FIXTURE = "swin_v1_t_train_256"


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def full(value: float, *shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.full(shape, value, dtype=dtype)


def random_output(
    batch: int = 2, size: int = 32, dtype: torch.dtype = torch.float32, requires_grad: bool = False
) -> tuple[BiRefNetOutput, torch.Tensor, list[torch.Tensor]]:
    """A training-mode-like output at (size, size) with side outputs at /8, /4, /2; and a soft gt."""
    g = torch.Generator().manual_seed(3)

    def leaf(*shape: int) -> torch.Tensor:
        return (2 * torch.randn(*shape, generator=g)).to(dtype).requires_grad_(requires_grad)

    sides = [leaf(batch, 1, size // s, size // s) for s in (8, 4, 2)]
    grads = [leaf(batch, 1, size // s, size // s) for s in (8, 4, 2)]
    targets = [leaf(batch, 1, size, size) for _ in range(3)]
    logits = leaf(batch, 1, size, size)
    gt = (torch.rand(batch, 1, size, size, generator=g) > 0.6).float()
    gt = F.avg_pool2d(gt, 3, 1, 1)  # soft edges, as INTER_LINEAR-resized labels
    out = BiRefNetOutput(logits=logits, side_logits=sides, gradient_logits=grads, gradient_targets=targets)
    return out, gt, [logits, *sides, *grads, *targets]


# ----------------------------------------------------------------------------------------------------
# the official train fixture (PARITY.md)


@pytest.fixture(scope="module")
def fixture_case():
    case, tensors = load_fixture(FIXTURE)
    out = BiRefNetOutput(
        logits=tensors["logits"],
        side_logits=[tensors[f"side.{i}"] for i in range(3)],
        gradient_logits=[tensors[f"gdt_pred.{i}"] for i in range(3)],
        gradient_targets=[tensors[f"gdt_label.{i}"] for i in range(3)],
    )
    return case["losses"], out, tensors["gt"]


@requires_shared
def test_fixture_total_and_parts(fixture_case):
    losses, out, gt = fixture_case
    total, parts = BiRefNetLoss()(out, gt)
    assert total.dtype == torch.float64
    assert set(parts) == {"bce", "iou", "ssim", "gradient"}
    assert rel_error(total, torch.tensor(losses["total"])) < 1e-4
    assert rel_error(parts["gradient"], torch.tensor(losses["gdt"])) < 1e-4
    pixel = parts["bce"] + parts["iou"] + parts["ssim"]
    assert rel_error(pixel, torch.tensor(losses["pix_total_default_lambdas"])) < 1e-4


@requires_shared
def test_fixture_per_level_raw(fixture_case):
    losses, out, gt = fixture_case
    expected = losses["per_level_raw"]
    terms = sorted(expected["0"])
    ours = BiRefNetLoss().per_level(out, gt, terms=terms)
    assert set(ours) == set(expected) == {"0", "1", "2", "3"}
    for level, values in expected.items():
        for name, value in values.items():
            err = rel_error(ours[level][name], torch.tensor(value))
            assert err < 1e-4, f"level {level} {name}: relative error {err:.2e}"


@requires_shared
def test_fixture_gradient_loss_and_default_weights(fixture_case):
    losses, out, _ = fixture_case
    gdt = LF.outward_reference(out.gradient_logits, out.gradient_targets)
    assert rel_error(gdt, torch.tensor(losses["gdt"])) < 1e-4
    assert BiRefNetLoss().weights == task_weights("DIS5K")
    official = {k: float(v) for k, v in losses["default_lambdas"].items()}
    # the official dict spelled with the official names gives the same weights
    assert BiRefNetLoss(official).weights == BiRefNetLoss().weights


# ----------------------------------------------------------------------------------------------------
# hand-computed values


def test_bce_hand_computed():
    x = torch.tensor([0.0, logit(0.75)], dtype=torch.float64).view(1, 1, 1, 2)
    g = torch.tensor([1.0, 0.0], dtype=torch.float64).view(1, 1, 1, 2)
    # -(log 0.5 + log 0.25) / 2
    assert LF.bce(x, g).item() == pytest.approx(1.5 * LN2, rel=1e-12)
    assert LF.bce(x, g, reduction="sum").item() == pytest.approx(3 * LN2, rel=1e-12)


def test_bce_matches_nn_bceloss_and_its_clamp():
    g = torch.Generator().manual_seed(0)
    x = 4 * torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.rand(2, 1, 8, 8, generator=g, dtype=torch.float64)
    official = nn.BCELoss()(x.sigmoid(), t)
    assert LF.bce(x, t).item() == pytest.approx(official.item(), rel=1e-12)
    # a saturated, confidently wrong pixel: nn.BCELoss caps -log at 100
    x = torch.tensor([200.0, -3.0], dtype=torch.float64).view(1, 1, 1, 2)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64).view(1, 1, 1, 2)
    official = nn.BCELoss()(x.sigmoid(), t)
    assert LF.bce(x, t, clamp_log=True).item() == pytest.approx(official.item(), rel=1e-12)
    assert LF.bce(x, t).item() == pytest.approx((200 + F.softplus(torch.tensor(3.0)).item()) / 2, rel=1e-6)


def test_iou_hand_computed_and_summed_over_batch():
    x = torch.zeros(2, 1, 2, 2, dtype=torch.float64)  # p = 0.5 everywhere
    g = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64).view(2, 1, 2, 2)
    # sample 0: inter 1, union 2 + 2 - 1 = 3 -> 2/3; sample 1: inter 2, union 4 + 2 - 2 = 4 -> 1/2
    assert LF.iou(x, g).item() == pytest.approx(2 / 3 + 1 / 2, rel=1e-12)
    assert LF.iou(x, g, reduction="mean").item() == pytest.approx((2 / 3 + 1 / 2) / 2, rel=1e-12)
    assert LF.iou(x, g, reduction="none").tolist() == pytest.approx([2 / 3, 1 / 2])
    # empty prediction and empty target: a perfect match, 0 (NaN in the official code)
    x = torch.full((1, 1, 2, 2), -1e4, dtype=torch.float64, requires_grad=True)
    value = LF.iou(x, torch.zeros(1, 1, 2, 2, dtype=torch.float64))
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(x.grad).all()


def test_mae_mse_threshold_hand_computed():
    x = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    g = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64).view(1, 1, 2, 2)
    assert LF.mae(x, g).item() == pytest.approx(0.5)
    assert LF.mse(x, g).item() == pytest.approx(0.25)
    assert LF.threshold_regularization(x).item() == pytest.approx(0.5)  # 1 - (0.25 + 0.25)
    x = torch.tensor([logit(0.9)], dtype=torch.float64).view(1, 1, 1, 1)
    g = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    assert LF.mae(x, g).item() == pytest.approx(0.9)
    assert LF.mse(x, g).item() == pytest.approx(0.81)
    assert LF.threshold_regularization(x, g).item() == pytest.approx(1 - (0.81 + 0.01))


def test_ssim_hand_computed_single_pixel():
    # One pixel with zero padding: every local statistic sees only the centre tap w0 of the window.
    taps = [math.exp(-((i - 5) ** 2) / (2 * 1.5**2)) for i in range(11)]
    w0 = (taps[5] / sum(taps)) ** 2
    p, t = 0.5, 1.0
    mu_p, mu_t = w0 * p, w0 * t
    var_p, var_t = w0 * p * p - mu_p**2, w0 * t * t - mu_t**2
    cov = w0 * p * t - mu_p * mu_t
    c1, c2 = 0.01**2, 0.03**2
    s = (2 * mu_p * mu_t + c1) * (2 * cov + c2) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    value = LF.ssim(full(0.0, 1, 1, 1, 1), full(t, 1, 1, 1, 1))
    assert value.item() == pytest.approx((1 - s) / 2, rel=1e-6)  # float32 window, as the official


def test_ssim_matches_a_direct_transcription_per_channel():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 20, 24, generator=g, dtype=torch.float64)
    t = torch.rand(2, 3, 20, 24, generator=g, dtype=torch.float64)
    # channels are independent: the mean over channels of single-channel losses equals the loss
    per_channel = torch.stack([LF.ssim(x[:, c : c + 1], t[:, c : c + 1]) for c in range(3)]).mean()
    assert LF.ssim(x, t).item() == pytest.approx(per_channel.item(), rel=1e-12)
    assert LF.ssim(x, x.sigmoid()).item() == pytest.approx(0.0, abs=1e-12)


def test_structure_hand_computed_single_pixel():
    p, t = 0.8, 1.0
    x = full(logit(p), 1, 1, 1, 1)
    w = 1 + 5 * abs(t / 31**2 - t)  # the 31x31 average with zero padding counted
    bce = -math.log(p)  # the weight cancels in the normalised BCE of a single pixel
    inter, union = w * p * t, w * (p + t)
    wiou = 1 - (inter + 1) / (union - inter + 1)
    assert LF.structure(x, full(t, 1, 1, 1, 1)).item() == pytest.approx(bce + wiou, rel=1e-12)


def test_contour_hand_computed():
    x = torch.zeros(1, 1, 4, 5, dtype=torch.float64)  # p = 0.5, flat: length term sqrt(1e-8) = 1e-4
    g = torch.ones(1, 1, 4, 5, dtype=torch.float64)
    # region: mean(p (g-1)^2) = 0, mean((1-p) g^2) = 0.5
    assert LF.contour(x, g).item() == pytest.approx(10 * 1e-4 + 0.5, rel=1e-9)
    # a vertical step edge p: 0 | 1 between columns 1 and 2 (H=3, W=4 -> one (1, 2) interior)
    p = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 3, dtype=torch.float64)
    x = torch.logit(p.clamp(1e-12, 1 - 1e-12)).view(1, 1, 3, 4)
    # the grid is row 0, columns 1..2 of the column differences [0, 1, 0]: [1, 0]; row differences are 0
    length = (math.sqrt(0 + 1e-8) + math.sqrt(1 + 1e-8)) / 2
    region = 0.0 + (1 - p).mean().item()  # g = 1: the half predicted as background
    assert LF.contour(x, torch.ones_like(x)).item() == pytest.approx(10 * length + region, rel=1e-6)


def test_patch_iou_tiles_the_whole_map():
    g = torch.Generator().manual_seed(2)
    x = 3 * torch.randn(2, 1, 100, 70, generator=g, dtype=torch.float64)
    t = (torch.rand(2, 1, 100, 70, generator=g) > 0.5).double()
    for smooth in (0.0, 1.0):
        expected = torch.zeros(2, dtype=torch.float64)
        for b in range(2):
            tiles = []
            for y in range(0, 100, 64):
                for xx in range(0, 70, 64):
                    p = x[b, :, y : y + 64, xx : xx + 64].sigmoid()
                    tt = t[b, :, y : y + 64, xx : xx + 64]
                    inter = (p * tt).sum()
                    tiles.append(1 - (inter + smooth) / (p.sum() + tt.sum() - inter + smooth))
            expected[b] = torch.stack(tiles).mean()
        ours = LF.patch_iou(x, t, smooth=smooth, reduction="none")
        assert torch.allclose(ours, expected, rtol=1e-12)
        assert LF.patch_iou(x, t, smooth=smooth).item() == pytest.approx(expected.sum().item(), rel=1e-12)
    # the bottom-right tile matters (the official loss only ever scores the top-left tile)
    worse = x.clone()
    worse[..., 64:, 64:] = -worse[..., 64:, 64:]
    assert LF.patch_iou(worse, t) != LF.patch_iou(x, t)
    # smoothing: a background tile predicted empty scores 0, with false positives > 0
    empty = torch.zeros(1, 1, 64, 64, dtype=torch.float64)
    assert LF.patch_iou(full(-40.0, 1, 1, 64, 64), empty).item() == pytest.approx(0.0, abs=1e-9)
    assert LF.patch_iou(full(0.0, 1, 1, 64, 64), empty).item() > 0.99


def test_classification_ce_and_outward_reference_hand_computed():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0])
    assert LF.classification_ce(logits, labels).item() == pytest.approx((LN2 + math.log(4 / 3)) / 2)
    with pytest.raises(TypeError, match="integer"):
        LF.classification_ce(logits, labels.double())
    # prediction 0 (p = 0.5) against label 0 (sigmoid = 0.5): BCE = ln 2 per stage, 3 stages
    preds = [torch.zeros(1, 1, s, s, dtype=torch.float64) for s in (2, 4, 8)]
    targets = [torch.zeros(1, 1, 16, 16, dtype=torch.float64) for _ in range(3)]
    assert LF.outward_reference(preds, targets).item() == pytest.approx(3 * LN2)


def test_outward_reference_backpropagates_into_the_targets():
    out, _, _ = random_output(requires_grad=True)
    value = LF.outward_reference(out.gradient_logits, out.gradient_targets)
    value.backward()
    for tensor in [*out.gradient_logits, *out.gradient_targets]:
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all() and tensor.grad.abs().sum() > 0


def test_shape_and_dtype_errors():
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="same shape"):
        LF.bce(x, torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        BiRefNetLoss()(x, torch.zeros(2, 1, 4, 4))
    with pytest.raises(TypeError, match="255"):
        BiRefNetLoss()(x, torch.zeros(1, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="unknown loss term"):
        BiRefNetLoss({"dice": 1.0})
    with pytest.raises(ValueError, match="triplet"):
        BiRefNetLoss({"triplet": 3.0})


# ----------------------------------------------------------------------------------------------------
# perfect prediction, precision


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_perfect_prediction_is_zero(dtype):
    g = torch.Generator().manual_seed(4)
    gt = (torch.rand(2, 1, 32, 32, generator=g) > 0.5).to(dtype)
    x = 40 * (2 * gt - 1)
    for name in ("bce", "iou", "ssim", "mae", "mse"):
        assert PIXEL_TERMS[name](x, gt).item() == pytest.approx(0.0, abs=1e-6), name
    # all levels perfect (side outputs at full size too), no auxiliaries
    out = BiRefNetOutput(logits=x, side_logits=[x, x])
    total, parts = BiRefNetLoss.preset("General")(out, gt)
    assert total.item() == pytest.approx(0.0, abs=1e-5)
    assert set(parts) == {"bce", "iou", "ssim", "mae"}


def test_bf16_tensors_give_finite_gradients():
    out, gt, leaves = random_output(dtype=torch.bfloat16, requires_grad=True)
    total, _ = BiRefNetLoss.preset("General")(out, gt.bfloat16())
    assert total.dtype == torch.float32 and torch.isfinite(total)
    total.backward()
    for leaf in leaves:
        assert leaf.grad is not None and torch.isfinite(leaf.grad.float()).all()


def test_autocast_bf16_gives_finite_gradients_close_to_float32():
    out, gt, leaves = random_output(requires_grad=True)
    everything = dict.fromkeys(PIXEL_TERMS, 1.0)
    criterion = BiRefNetLoss(everything)
    reference, _ = criterion(out, gt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # the side logits as the model would hand them under autocast (bf16)
        cast = BiRefNetOutput(
            logits=out.logits,
            side_logits=[s.bfloat16() for s in out.side_logits],
            gradient_logits=out.gradient_logits,
            gradient_targets=out.gradient_targets,
        )
        total, parts = criterion(cast, gt)
    assert total.dtype == torch.float32
    assert set(parts) == {*PIXEL_TERMS, "gradient"}
    assert total.item() == pytest.approx(reference.item(), rel=1e-2)
    total.backward()
    for leaf in leaves:
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


# ----------------------------------------------------------------------------------------------------
# combination, presets, re-weighting


def test_parts_sum_to_total_with_classification():
    out, gt, _ = random_output(batch=3)
    out.class_logits = torch.randn(3, 5)
    labels = torch.tensor([0, 4, 2])
    criterion = BiRefNetLoss.preset("General", gradient_weight=0.5)
    total, parts = criterion(out, gt, class_labels=labels)
    assert list(parts) == ["bce", "iou", "ssim", "mae", "gradient", "classification"]
    assert total.item() == pytest.approx(sum(v.item() for v in parts.values()), rel=1e-6)
    assert parts["classification"].item() == pytest.approx(
        5 * F.cross_entropy(out.class_logits, labels).item()
    )
    gradient = LF.outward_reference(out.gradient_logits, out.gradient_targets)
    assert parts["gradient"].item() == pytest.approx(0.5 * gradient.item(), rel=1e-6)
    # parts are the weighted per-level values summed over the four levels
    per_level = criterion.per_level(out, gt)
    assert list(per_level) == ["0", "1", "2", "3"]
    for name in ("bce", "iou", "ssim", "mae"):
        summed = sum(level[name].item() for level in per_level.values())
        assert parts[name].item() == pytest.approx(criterion.weights[name] * summed, rel=1e-6)
    # without labels (or with the weight at 0) there is no classification part
    assert "classification" not in criterion(out, gt)[1]
    assert "gradient" not in BiRefNetLoss(gradient_weight=0)(out, gt)[1]


def test_bare_logits_and_3d_gt_accepted():
    x = torch.randn(2, 1, 8, 8)
    gt = torch.rand(2, 8, 8)
    total, parts = BiRefNetLoss()(x, gt)
    assert set(parts) == {"bce", "iou", "ssim"}
    expected = 30 * LF.bce(x, gt[:, None]) + 0.5 * LF.iou(x, gt[:, None]) + 10 * LF.ssim(x, gt[:, None])
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    # gt outside [0, 1] is clamped, as the official loop does
    assert BiRefNetLoss()(x, 3 * gt - 1)[0].item() == pytest.approx(
        BiRefNetLoss()(x, (3 * gt - 1).clamp(0, 1))[0].item()
    )


def test_presets():
    assert BiRefNetLoss().weights == task_weights("DIS5K")
    enabled = {
        task: {k: v for k, v in BiRefNetLoss.preset(task).weights.items() if v} for task in TASK_WEIGHTS
    }
    assert enabled["DIS5K"] == enabled["COD"] == enabled["HRSOD"] == {"bce": 30, "iou": 0.5, "ssim": 10}
    assert enabled["General"] == enabled["General-2K"] == {"bce": 30, "iou": 0.5, "ssim": 10, "mae": 100}
    assert enabled["Matting"] == {"bce": 30, "ssim": 10, "mae": 100}
    assert BiRefNetLoss("matting").weights == BiRefNetLoss.preset("Matting").weights
    with pytest.raises(ValueError, match="unknown task"):
        BiRefNetLoss.preset("SOD")
    # weights given explicitly: the rest is off; official key names map to ours
    assert {
        k: v for k, v in BiRefNetLoss({"bce": 1, "reg": 2, "cnt": 3, "iou_patch": 4}).weights.items() if v
    } == {
        "bce": 1,
        "threshold": 2,
        "contour": 3,
        "patch_iou": 4,
    }


def test_finetune_reweighting_modes():
    base = task_weights("DIS5K")
    # DIS5K: 500 epochs, last 40 (official -40): epochs 461..500 are re-weighted
    assert finetune_weights("DIS5K", 460, 500) == base
    assert finetune_weights("DIS5K", 460, 500, mode="official") == base
    once = finetune_weights("DIS5K", 461, 500)
    assert (once["bce"], once["iou"], once["ssim"]) == (0.0, 0.25, 10.0)
    assert finetune_weights("DIS5K", 500, 500) == once  # not compounding
    official = finetune_weights("DIS5K", 463, 500, -40, mode="official")
    assert official["bce"] == 0.0 and official["ssim"] == 10.0
    assert official["iou"] == pytest.approx(0.5 * 0.5**3)
    # General: MAE x0.9 per epoch in official mode
    assert finetune_weights("General", 200, 200, mode="official")["mae"] == pytest.approx(100 * 0.9**20)
    assert finetune_weights("General", 200, 200)["mae"] == pytest.approx(90.0)
    # Matting: SSIM and MSE x0.9, BCE untouched
    matting = finetune_weights("Matting", 150, 150, mode="official")
    assert matting["ssim"] == pytest.approx(10 * 0.9**10) and matting["bce"] == 30 and matting["mae"] == 100
    assert finetune_weights("Matting", 141, 150)["ssim"] == pytest.approx(9.0)
    # custom base weights, the official negative sign, disabled with 0
    custom = finetune_weights("COD", 10, 10, -2, base_weights={"bce": 1, "iou": 1}, mode="official")
    assert (custom["bce"], custom["iou"]) == (0.0, 0.25)
    assert finetune_weights("COD", 10, 10, 2, base_weights={"bce": 1, "iou": 1}, mode="official") == custom
    assert finetune_weights("COD", 10, 10, 0) == task_weights("COD")
    with pytest.raises(ValueError, match="mode"):
        finetune_weights("COD", 10, 10, mode="compound")
    # the result plugs into the loss
    criterion = BiRefNetLoss()
    criterion.weights = once
    assert "bce" not in criterion(torch.randn(1, 1, 8, 8), torch.rand(1, 1, 8, 8))[1]
