"""Predictor, image decoding, post-processing and remove_background.

Weights: a pvt_v2_b0 checkpoint made with the shared generator (small and fast) at 64x64 input;
logic-only tests (batching, tiling, precision fallback) use a tiny stand-in network.
"""

from __future__ import annotations

import itertools
import logging
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from birefnet.imageio import DEFAULT_MAX_PIXELS, ImageReadError, load_image, parse_color, save_image_atomic
from birefnet.inference import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Predictor,
    dynamic_size,
    parse_size,
    registry_row_for_path,
    remove_background,
    select_device,
    select_precision,
    tile_starts,
)
from birefnet.postprocess import (
    composite,
    cutout,
    estimate_foreground,
    final_alpha,
    fit_background,
    mask_to_uint8,
    render_outputs,
)
from conftest import official_state_dict, requires_shared


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny inputs: one thread is faster, and much faster when other test runs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def pvt_weights(tmp_path_factory) -> Path:
    """model.safetensors + config.json of a deterministic pvt_v2_b0 BiRefNet."""
    from birefnet.config import BiRefNetConfig
    from birefnet.models.birefnet import BiRefNet
    from birefnet.weights import save_pretrained

    state = official_state_dict("pvt_v2_b0", 0)
    model = BiRefNet(BiRefNetConfig(backbone="pvt_v2_b0"))
    model.load_state_dict(state)
    return save_pretrained(model, tmp_path_factory.mktemp("pvt_weights"))


@pytest.fixture(scope="session")
def pvt_predictor(pvt_weights) -> Predictor:
    return Predictor(pvt_weights, size=64, device="cpu")


class TinyNet(torch.nn.Module):
    """Stand-in network: logits = 4 * (mean over channels of the normalised image) + bias.

    Records the batch shapes it sees; optionally returns inf under autocast.
    """

    def __init__(self, inf_under_autocast: bool = False, inf_always: bool = False) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(()))
        self.calls: list[tuple[int, ...]] = []
        self.inf_under_autocast = inf_under_autocast
        self.inf_always = inf_always

    def forward(self, x: torch.Tensor) -> types.SimpleNamespace:
        self.calls.append(tuple(x.shape))
        logits = 4 * x.mean(dim=1, keepdim=True) + self.bias
        if self.inf_always or (self.inf_under_autocast and torch.is_autocast_enabled("cpu")):
            logits = logits + float("inf")
        return types.SimpleNamespace(logits=logits)


def rand_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def reference_mask(model: torch.nn.Module, rgb: np.ndarray, model_size: tuple[int, int]) -> np.ndarray:
    """The official pipeline written out: PIL bilinear resize, ToTensor, ImageNet Normalize,
    sigmoid of the logits, bilinear align_corners=True back to the image size."""
    h, w = rgb.shape[:2]
    resized = np.array(Image.fromarray(rgb).resize(model_size, Image.Resampling.BILINEAR))
    x = torch.from_numpy(resized).permute(2, 0, 1).float() / 255
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    x = ((x - mean) / std)[None]
    with torch.no_grad():
        prob = model(x).logits.sigmoid()
    return F.interpolate(prob, size=(h, w), mode="bilinear", align_corners=True)[0, 0].numpy()


# --------------------------------------------------------------------------------------------
# The mask is sigmoid(logits) resized back (real network)


@requires_shared
def test_fixed_policy_equals_official_pipeline(pvt_predictor):
    rgb = rand_rgb(50, 70)
    mask = pvt_predictor.predict(rgb)
    assert mask.shape == (50, 70) and mask.dtype == np.float32
    expected = reference_mask(pvt_predictor.model, rgb, (64, 64))
    np.testing.assert_allclose(mask, expected, atol=1e-6, rtol=0)


@requires_shared
def test_dynamic_policy_equals_official_pipeline(pvt_weights):
    predictor = Predictor(pvt_weights, size=128, resolution="dynamic", device="cpu")
    rgb = rand_rgb(40, 100, seed=1)
    assert predictor.model_input_size(100, 40) == (192, 64)  # aspect kept, area <= 128 * 128
    mask = predictor.predict(rgb)
    expected = reference_mask(predictor.model, rgb, (192, 64))
    np.testing.assert_allclose(mask, expected, atol=1e-6, rtol=0)


@requires_shared
def test_batching_matches_single_images(pvt_weights, pvt_predictor):
    images = [rand_rgb(40, 30, seed=s) for s in range(3)]
    batched = Predictor(pvt_weights, size=64, device="cpu", batch_size=3).predict(images)
    single = [pvt_predictor.predict(im) for im in images]
    for a, b in zip(batched, single):
        np.testing.assert_allclose(a, b, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Inputs


def test_inputs_path_pil_numpy_list_each_own_size(tmp_path):
    predictor = Predictor(TinyNet(), size=64, device="cpu")
    path = tmp_path / "a.png"
    Image.fromarray(rand_rgb(33, 47)).save(path)
    pil = Image.fromarray(rand_rgb(20, 10))
    arr = rand_rgb(64, 96)
    assert predictor.predict(path).shape == (33, 47)
    assert predictor.predict(str(path)).shape == (33, 47)
    assert predictor(pil).shape == (20, 10)
    masks = predictor.predict([path, pil, arr, arr[..., 0]])
    assert [m.shape for m in masks] == [(33, 47), (20, 10), (64, 96), (64, 96)]
    stack = predictor.predict(np.stack([arr, arr]))  # 4-D array = a list
    assert isinstance(stack, list) and len(stack) == 2
    for m in masks:
        assert m.dtype == np.float32 and m.min() >= 0 and m.max() <= 1


def test_modes_decode_to_rgb(tmp_path):
    rng = np.random.default_rng(0)
    gray = (rng.random((8, 6)) * 255).astype(np.uint8)
    cases = {
        "L": Image.fromarray(gray),
        "1": Image.fromarray(gray > 128),
        "LA": Image.merge("LA", [Image.fromarray(gray)] * 2),
        "RGBA": Image.fromarray(np.dstack([rand_rgb(8, 6), gray])),
        "CMYK": Image.new("CMYK", (6, 8), (0, 255, 255, 0)),
        "I;16": Image.fromarray(np.full((8, 6), 257 * 100, np.uint16)),
        "F": Image.fromarray(np.full((8, 6), 0.5, np.float32)),
        "YCbCr": Image.fromarray(rand_rgb(8, 6)).convert("YCbCr"),
    }
    for mode, image in cases.items():
        d = load_image(image)
        assert d.rgb.shape == (8, 6, 3) and d.rgb.dtype == np.uint8, mode
    assert load_image(cases["I;16"]).rgb[0, 0].tolist() == [100, 100, 100]
    assert load_image(cases["F"]).rgb[0, 0].tolist() == [128, 128, 128]
    assert load_image(cases["CMYK"]).rgb[0, 0].tolist() == [255, 0, 0]
    rgba = load_image(cases["RGBA"])
    assert rgba.alpha is not None and np.array_equal(rgba.alpha, gray)
    assert load_image(cases["L"]).alpha is None
    # palette with a transparent index keeps that transparency
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.save(tmp_path / "pal.png", transparency=0)
    d = load_image(tmp_path / "pal.png")
    assert d.alpha is not None and d.alpha[0, 0] == 0 and d.alpha[1, 1] == 255
    assert d.rgb[1, 1].tolist() == [255, 0, 0]


def test_numpy_inputs():
    assert load_image(np.full((4, 5), 65535, np.uint16)).rgb.max() == 255
    assert load_image(np.ones((4, 5, 3), np.float32)).rgb.min() == 255
    assert load_image(np.zeros((4, 5, 1), bool)).rgb.max() == 0
    d = load_image(np.zeros((4, 5, 4), np.uint8))
    assert d.alpha is not None and d.alpha.max() == 0
    with pytest.raises(ImageReadError, match="channels-first"):
        load_image(np.zeros((3, 10, 12), np.uint8))
    with pytest.raises(ImageReadError, match="unsupported array shape"):
        load_image(np.zeros((6, 5, 2), np.uint8))
    with pytest.raises(ImageReadError, match="no pixels"):
        load_image(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ImageReadError, match="unsupported input type"):
        load_image(12)


def test_exif_orientation_applied(tmp_path):
    image = Image.fromarray(rand_rgb(20, 40))  # 40 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "rot.jpg", exif=exif)
    d = load_image(tmp_path / "rot.jpg")
    assert d.size == (20, 40)
    predictor = Predictor(TinyNet(), size=64, device="cpu")
    assert predictor.predict(tmp_path / "rot.jpg").shape == (40, 20)


def test_read_errors_name_the_file_and_the_fix(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello world\n")
    Image.new("L", (200, 100)).save(tmp_path / "big.png")
    (tmp_path / "dir.png").mkdir()
    cases = {
        "empty.png": "empty file",
        "text.jpg": "text file",
        "big.png": "above the limit",
        "dir.png": "is a directory",
        "missing.png": "no such file",
    }
    for name, reason in cases.items():
        with pytest.raises(ImageReadError) as info:
            load_image(tmp_path / name, max_pixels=10_000)
        message = str(info.value)
        assert message.startswith(str(tmp_path / name)) and reason in message and "\n" not in message


def test_max_pixels_above_pillow_limit_is_honoured(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's own bomb limit, made tiny
    Image.new("L", (100, 100)).save(tmp_path / "a.png")  # 10,000 px: 5x over Pillow's error bound
    assert load_image(tmp_path / "a.png", max_pixels=DEFAULT_MAX_PIXELS).size == (100, 100)


# --------------------------------------------------------------------------------------------
# Policies, batching, precision


def test_dynamic_size_bounds():
    for w, h in [(2048, 1536), (1, 1), (4000, 50), (50, 4000), (100000, 3), (1024, 1024), (333, 777)]:
        dw, dh = dynamic_size(w, h, 1024 * 1024)
        assert dw % 32 == 0 and dh % 32 == 0 and dw >= 256 and dh >= 256
        assert dw * dh <= 1024 * 1024
    assert dynamic_size(1024, 1024, 1024 * 1024) == (1024, 1024)
    assert dynamic_size(2048, 1536, 1024 * 1024) == (1152, 864)
    assert dynamic_size(4000, 50, 1024 * 1024) == (4096, 256)
    assert dynamic_size(640, 480, 1024 * 1024) == (1152, 864)  # small images are scaled up
    assert dynamic_size(100, 40, 64 * 64, min_side=32) == (96, 32)
    assert parse_size("2048x1536") == (2048, 1536) and parse_size(512) == (512, 512)
    with pytest.raises(ValueError, match="multiples of 32"):
        Predictor(TinyNet(), size=100, device="cpu")


def test_tile_starts_cover_with_overlap():
    for length, tile, overlap in [(100, 64, 16), (1000, 256, 64), (64, 64, 16), (65, 64, 0)]:
        starts = tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile == max(length, tile)
        assert all(b - a <= tile - overlap for a, b in itertools.pairwise(starts))


def test_batches_group_images_of_equal_model_size():
    net = TinyNet()
    predictor = Predictor(net, size=64, device="cpu", batch_size=3)
    predictor.predict([rand_rgb(10 + i, 20) for i in range(5)])
    assert [c[0] for c in net.calls] == [3, 2]
    net.calls.clear()
    dynamic = Predictor(net, size=256, resolution="dynamic", device="cpu", batch_size=4)
    wide, tall = rand_rgb(32, 128), rand_rgb(128, 32)
    masks = dynamic.predict([wide, tall, wide, tall, wide])
    assert sorted((c[0], c[2], c[3]) for c in net.calls) == [(2, 512, 128), (3, 128, 512)]
    assert [m.shape for m in masks] == [(32, 128), (128, 32)] * 2 + [(32, 128)]


def test_tiled_equals_fixed_when_image_fits_one_tile():
    fixed = Predictor(TinyNet(), size=64, device="cpu")
    tiled = Predictor(fixed.model, size=64, resolution="tiled", device="cpu")
    for h, w in [(64, 64), (40, 60), (1, 1)]:
        rgb = rand_rgb(h, w)
        np.testing.assert_array_equal(tiled.predict(rgb), fixed.predict(rgb))


def test_tiled_refines_uncertain_band_only():
    net = TinyNet()
    coarse_predictor = Predictor(net, size=64, device="cpu")
    tiled = Predictor(net, size=64, resolution="tiled", device="cpu", batch_size=4)
    # 256x192 image: black/white halves (confident), a grey ramp band in the middle (uncertain)
    rgb = np.zeros((192, 256, 3), np.uint8)
    rgb[:, 128:] = 255
    rgb[:, 112:144] = np.linspace(60, 200, 32, dtype=np.uint8)[None, :, None]
    net.calls.clear()
    out = tiled.predict(rgb)
    coarse = coarse_predictor.predict(rgb)
    assert out.shape == (192, 256) and np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    tile_calls = net.calls[1:]
    assert tile_calls and all(c[2:] == (64, 64) for c in tile_calls)
    assert sum(c[0] for c in tile_calls) < 5 * 4  # tiles far from the band are skipped
    weight = Predictor._detail_weight(coarse, scale=4)
    assert weight is not None
    far = weight == 0
    np.testing.assert_allclose(out[far], coarse[far], atol=1e-6)
    # in the band the tiles (native-resolution crops) decide: TinyNet is per-pixel, so the exact
    # answer is the network applied at full resolution
    x = torch.from_numpy(rgb).permute(2, 0, 1).float()[None] / 255
    x = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    exact = net(x).logits.sigmoid()[0, 0].detach().numpy()
    core = weight == 1
    np.testing.assert_allclose(out[core], exact[core], atol=1e-5)


def test_precision_fallback_to_fp32_on_non_finite(caplog):
    net = TinyNet(inf_under_autocast=True)
    predictor = Predictor(net, size=64, device="cpu", precision="bf16")
    assert predictor.precision == "bf16"
    with caplog.at_level(logging.WARNING, logger="birefnet.inference"):
        mask = predictor.predict(rand_rgb(16, 16))
    assert np.isfinite(mask).all()
    assert predictor.precision == "fp32"
    assert any("non-finite" in r.message for r in caplog.records)
    broken = Predictor(TinyNet(inf_always=True), size=64, device="cpu")
    with pytest.raises(FloatingPointError, match="broken"):
        broken.predict(rand_rgb(8, 8))


def test_device_and_precision_selection(monkeypatch):
    assert select_precision("auto", torch.device("cpu")) == "fp32"
    assert select_precision("half", torch.device("cpu")) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert select_precision("auto", torch.device("cuda")) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert select_precision("auto", torch.device("cuda")) == "fp16"
    with pytest.raises(ValueError, match="precision"):
        select_precision("int8", torch.device("cpu"))
    if not torch.cuda.is_available():
        assert select_device("auto").type in ("cpu", "mps")
        with pytest.raises(ValueError, match="--device cpu"):
            select_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        select_device("gpu0")


# --------------------------------------------------------------------------------------------
# Loading from names and paths


@requires_shared
def test_registry_name_with_local_weights_uses_row_settings(pvt_weights, caplog):
    predictor = Predictor("lite", weights=pvt_weights, device="cpu")
    assert predictor.spec is not None and predictor.spec.name == "lite"
    assert predictor.model.config.patch_order == "legacy"  # the row's, over config.json's "current"
    assert predictor.size == (1024, 1024) and predictor.resolution == "fixed"
    assert predictor.weights_path == str(pvt_weights)
    override = Predictor("lite", weights=pvt_weights, device="cpu", patch_order="current", size="512x256")
    assert override.model.config.patch_order == "current" and override.size == (512, 256)
    with caplog.at_level(logging.WARNING, logger="birefnet.inference"):
        Predictor("RMBG-2.0", weights=pvt_weights, device="cpu")
    assert any("NOT be used commercially" in r.message for r in caplog.records)
    with pytest.raises(ValueError, match="not a registry name"):
        Predictor(str(pvt_weights), weights=pvt_weights, device="cpu")
    assert Predictor("ZhengPeng7/BiRefNet_lite", weights=pvt_weights, device="cpu").spec.name == "lite"


@requires_shared
def test_hub_id_and_registry_name_download_path(pvt_weights, monkeypatch, caplog):
    """Names and hub ids go through weights.download (stubbed: tests never download)."""
    import birefnet.weights

    asked = []

    def fake_download(repo_id, revision=None):
        asked.append(repo_id)
        return pvt_weights

    monkeypatch.setattr(birefnet.weights, "download", fake_download)
    with caplog.at_level(logging.INFO, logger="birefnet.inference"):
        hr = Predictor("ZhengPeng7/BiRefNet_HR", device="cpu")
    assert hr.spec.name == "HR" and hr.size == (2048, 2048) and hr.model.config.patch_order == "current"
    assert any("on cpu" in r.message for r in caplog.records)  # the device choice is logged
    dyn = Predictor("dynamic", device="cpu")
    assert dyn.resolution == "dynamic" and dyn.name == "dynamic"
    default = Predictor(device="cpu")
    assert default.name == "general" and default.model.config.patch_order == "legacy"
    assert asked == ["ZhengPeng7/BiRefNet_HR", "ZhengPeng7/BiRefNet_dynamic", "ZhengPeng7/BiRefNet"]


def test_registry_row_for_downloaded_paths(tmp_path):
    hub = tmp_path / "snapshot"
    hub.mkdir()
    (hub / "config.json").write_text(
        '{"_name_or_path": "ZhengPeng7/BiRefNet_lite", "architectures": ["BiRefNet"]}'
    )
    assert registry_row_for_path(hub / "model.safetensors").name == "lite"
    cache = tmp_path / "models--ZhengPeng7--BiRefNet_HR" / "snapshots" / "abc"
    cache.mkdir(parents=True)
    assert registry_row_for_path(cache).name == "HR"
    assert registry_row_for_path(tmp_path) is None


# --------------------------------------------------------------------------------------------
# Outputs


def test_mask_to_uint8_truncates_like_official():
    mask = np.array([[0.0, 0.999, 1.0, 0.5]], np.float32)
    assert mask_to_uint8(mask).tolist() == [[0, 254, 255, 127]]
    assert mask_to_uint8(mask, threshold=0.5).tolist() == [[0, 255, 255, 255]]


def test_foreground_estimation_removes_background_bleed():
    rng = np.random.default_rng(0)
    h, w = 64, 64
    fg = np.zeros((h, w, 3), np.float32)
    fg[..., 0] = 0.9  # red subject
    bg = np.zeros((h, w, 3), np.float32)
    bg[..., 2] = 0.9  # blue background
    alpha = np.clip(np.linspace(-0.5, 1.5, w, dtype=np.float32)[None, :].repeat(h, 0), 0, 1)
    alpha = np.clip(alpha + rng.normal(0, 0.01, alpha.shape).astype(np.float32), 0, 1)
    image = (alpha[..., None] * fg + (1 - alpha[..., None]) * bg) * 255
    rgb = np.rint(image).astype(np.uint8)
    est = estimate_foreground(rgb, alpha).astype(np.float32) / 255
    soft = (alpha > 0.2) & (alpha < 0.8)
    raw_err = np.abs(rgb.astype(np.float32) / 255 - fg)[soft].mean()
    est_err = np.abs(est - fg)[soft].mean()
    assert est_err < 0.25 * raw_err
    opaque = np.ones((h, w), np.float32)
    np.testing.assert_allclose(estimate_foreground(rgb, opaque), rgb, atol=1)
    assert estimate_foreground(rand_rgb(1, 1), np.ones((1, 1), np.float32)).shape == (1, 1, 3)


def test_cutout_composite_and_input_alpha():
    rgb = rand_rgb(6, 8)
    mask = np.full((6, 8), 0.5, np.float32)
    mask[:, :4] = 1.0
    cut = cutout(rgb, mask)
    assert cut.mode == "RGBA" and cut.size == (8, 6)
    assert np.asarray(cut)[0, 0, 3] == 255 and np.asarray(cut)[0, 7, 3] == 127
    comp = composite(rgb, mask, (0, 255, 0))
    assert comp.dtype == np.uint8 and comp.shape == (6, 8, 3)
    np.testing.assert_array_equal(comp[:, :4], rgb[:, :4])
    bg = rand_rgb(30, 10)
    assert fit_background(bg, (8, 6)).shape == (6, 8, 3)
    assert composite(rgb, mask, bg).shape == (6, 8, 3)
    input_alpha = np.full((6, 8), 255, np.uint8)
    input_alpha[0, 0] = 0
    alpha = final_alpha(mask, input_alpha=input_alpha)
    assert alpha[0, 0] == 0 and alpha[1, 1] == 1.0
    image = load_image(np.dstack([rgb, input_alpha]))
    outs = render_outputs(image, mask, ["mask", "rgba", "composite"], refine_foreground=True)
    assert [o.mode for o in outs.values()] == ["L", "RGBA", "RGB"]
    assert np.asarray(outs["rgba"])[0, 0, 3] == 0 and np.asarray(outs["mask"])[0, 0] == 255


def test_remove_background_and_colours(tmp_path):
    predictor = Predictor(TinyNet(), size=64, device="cpu")
    rgba_in = np.dstack([rand_rgb(12, 9), np.full((12, 9), 255, np.uint8)])
    rgba_in[0, 0, 3] = 0
    out = remove_background(rgba_in, model=predictor)
    assert out.mode == "RGBA" and out.size == (9, 12) and np.asarray(out)[0, 0, 3] == 0
    comp = remove_background(rgba_in[..., :3], model=predictor, background="white", refine_foreground=True)
    assert comp.mode == "RGB" and comp.size == (9, 12)
    bg_path = tmp_path / "bg.png"
    Image.fromarray(rand_rgb(5, 5)).save(bg_path)
    assert remove_background(rgba_in[..., :3], model=predictor, background=str(bg_path)).mode == "RGB"
    assert parse_color("white") == (255, 255, 255) and parse_color("#00ff00") == (0, 255, 0)
    assert parse_color("1, 2, 3") == (1, 2, 3)
    for bad in ["nocolour", "#00ff0080", "1,2"]:
        with pytest.raises(ValueError):
            parse_color(bad)


def test_atomic_save_leaves_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "x.png"
    save_image_atomic(Image.new("RGB", (4, 4)), target)
    before = target.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_image_atomic(Image.new("RGB", (4, 4), "red"), target)
    assert target.read_bytes() == before  # the old complete file survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]  # no temporary left
    with pytest.raises(ValueError, match="transparency"):
        save_image_atomic(Image.new("RGBA", (4, 4)), tmp_path / "y.jpg", fmt="jpg")
