"""ONNX export: dynamic shapes, parity with PyTorch under ONNX Runtime, metadata, the runner and the
Predictor's ONNX backend, the CLIs.

PyTorch's exporter traces the network symbolically three times, which costs minutes of CPU for a
whole BiRefNet (pvt_v2_b0: about 1 min static, 5-15 min with dynamic H/W on 2 shared cores). The
default run therefore exports a small network with the export-relevant parts of BiRefNet (deformable
conv, inward-reference patch split, resize) once per session (~15 s), and checks the Swin backbone's
traceable (export) path against its eager path in eager mode; the Swin exports with symbolic sizes
(a tiny Swin and swin_v1_t, about 10 s of tracing per Swin block), the real pvt_v2_b0 exports,
float16 and normalise-in-graph are marked slow.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from birefnet.config import BiRefNetConfig
from birefnet.export import (
    DYNAMIC_EXAMPLE_SIZE,
    ExportCheckError,
    ExportReport,
    _parse_hw,
    build_metadata,
    compare_with_torch,
    export_onnx,
    read_metadata,
    verify_onnx,
)
from birefnet.models import blocks
from birefnet.models.backbones import swin
from birefnet.models.backbones.swin import SwinTransformer
from birefnet.models.birefnet import BiRefNet
from birefnet.models.deform_conv import DeformableConv2d
from birefnet.models.output import BiRefNetOutput
from conftest import official_state_dict, rel_error, requires_shared

H, W = DYNAMIC_EXAMPLE_SIZE  # what dynamic exports trace with


class TinyNet(nn.Module):
    """The parts of BiRefNet that matter for export, small: a strided conv, a deformable conv with
    non-zero offsets (GridSample in the graph), the inward-reference patch split of the image, and
    an align_corners resize back to the input size."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.deform = DeformableConv2d(8, 8, 3, padding=1)
        nn.init.normal_(self.deform.offset_conv.weight, std=0.5)
        nn.init.normal_(self.deform.modulator_conv.weight, std=0.5)
        self.ipt = nn.Conv2d(3 * 16, 8, 1)
        self.head = nn.Conv2d(16, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> BiRefNetOutput:
        f = self.deform(F.relu(self.stem(x)))
        patches = blocks.image_to_patches(x, f.shape[-2:])
        f = torch.cat([f, self.ipt(patches)], dim=1)
        return BiRefNetOutput(
            logits=F.interpolate(self.head(f), size=x.shape[-2:], mode="bilinear", align_corners=True)
        )


class TinySwinNet(nn.Module):
    """A small Swin (window 7, shifted blocks in every stage, window padding) with a 1x1 head per stage,
    run like BiRefNet's multi-scale input on the image and on its half-size copy (whose stride-32 maps
    are odd for some sizes, e.g. 224x320: patch merging pads them); heads summed after an
    align_corners resize to the input size."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = SwinTransformer(
            embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=7
        )
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1) for c in self.backbone.out_channels)
        for module in self.modules():  # a strong relative-position bias, so that a wrong mask or bias shows
            if isinstance(module, swin.WindowAttention):
                nn.init.normal_(module.relative_position_bias_table, std=1.0)

    def forward(self, x: torch.Tensor) -> BiRefNetOutput:
        h, w = x.shape[-2:]
        half = F.interpolate(x, size=(h // 2, w // 2), mode="bilinear", align_corners=True)
        features = [*self.backbone(x), *self.backbone(half)]
        logits = sum(
            F.interpolate(head(f), size=x.shape[-2:], mode="bilinear", align_corners=True)
            for head, f in zip([*self.heads, *self.heads], features, strict=True)
        )
        return BiRefNetOutput(logits=logits)


def _model(backbone: str, seed: int = 0) -> BiRefNet:
    model = BiRefNet(BiRefNetConfig(backbone=backbone))
    model.load_state_dict(official_state_dict(backbone, seed))
    return model.eval()


def _inputs(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) for s in shapes]


@pytest.fixture(scope="session")
def tiny_model() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_model) -> ExportReport:
    """TinyNet exported with dynamic batch/height/width (example 2x3x192x256); checked by the tests."""
    start = time.perf_counter()
    report = export_onnx(tiny_model, tmp_path_factory.mktemp("onnx") / "tiny.onnx", check=False)
    print(f"TinyNet dynamic export: {time.perf_counter() - start:.1f} s")
    return report


# --------------------------------------------------------------------------------------------
# Default run: a small network with BiRefNet's export-relevant parts


def test_export_writes_dynamic_graph_with_metadata(tiny_export):
    import onnx

    proto = onnx.load(str(tiny_export.path))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims][1] == 3
    assert all(d.dim_param for i, d in enumerate(dims) if i != 1), dims  # batch, height, width symbolic
    assert [o.name for o in proto.graph.output] == ["logits"] and proto.graph.input[0].name == "input"
    assert any(n.op_type == "GridSample" for n in proto.graph.node)  # the deformable conv, no custom op
    meta = read_metadata(tiny_export.path)
    assert meta == tiny_export.metadata
    assert meta["birefnet.format"] == "1" and meta["birefnet.name"] == "custom"
    assert meta["birefnet.input"] == "normalized" and meta["birefnet.output"] == "logits"
    assert json.loads(meta["birefnet.mean"]) == pytest.approx([0.485, 0.456, 0.406])
    assert json.loads(meta["birefnet.std"]) == pytest.approx([0.229, 0.224, 0.225])
    assert meta["birefnet.dynamic"] == "batch,height,width" and meta["birefnet.static_size"] == ""
    assert meta["birefnet.dtype"] == "float32" and meta["birefnet.license"].startswith("unknown")
    assert "B, 3, H, W" in tiny_export.summary()


def test_export_size_matches_torch(tiny_export, tiny_model):
    for c in compare_with_torch(tiny_export.path, tiny_model, _inputs([(2, 3, H, W), (1, 3, H, W)])):
        assert c.rel_error <= 1e-4, c


def test_dynamic_sizes_match_torch(tiny_export, tiny_model, tmp_path):
    copy = Path(shutil.copy(tiny_export.path, tmp_path / "tiny.onnx"))  # a failed check renames the file
    report = ExportReport(**{**tiny_export.__dict__, "path": copy, "checks": []})
    checks = verify_onnx(
        report, tiny_model, sizes=[(H, W), (H + 32, W + 64)], batch=2
    )  # what export_onnx runs
    checks += compare_with_torch(tiny_export.path, tiny_model, _inputs([(2, 3, 96, 160), (1, 3, 64, 32)]))
    for c in checks:
        assert c.rel_error <= 1e-4, c


def test_onnx_runner_equals_torch_logits(tiny_export, tiny_model):
    from birefnet.onnx_runtime import OnnxModel

    net = OnnxModel(tiny_export.path, device="cpu")
    assert net.static_size is None and net.default_size is None
    assert net.providers == ["CPUExecutionProvider"] and not net.normalize_in_graph
    (x,) = _inputs([(2, 3, H, W)], seed=1)
    with torch.inference_mode():
        ref = tiny_model(x).logits
        out = net(x).logits
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert rel_error(out, ref) <= 1e-4
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        net.run(np.zeros((3, H, W), np.float32))


def test_predictor_onnx_backend_same_outputs(tiny_export, tiny_model):
    from birefnet.inference import Predictor

    path = str(tiny_export.path)
    torch_predictor = Predictor(tiny_model, size=(W, H), device="cpu", batch_size=2)
    onnx_predictor = Predictor(path, size=(W, H), batch_size=2)  # *.onnx selects the ONNX backend
    assert onnx_predictor.backend == "onnx" and "onnxruntime CPU" in onnx_predictor.describe()
    rng = np.random.default_rng(0)
    images = [
        (rng.random((50, 70, 3)) * 255).astype(np.uint8),
        (rng.random((80, 40, 3)) * 255).astype(np.uint8),
    ]
    for a, b in zip(torch_predictor.predict(images), onnx_predictor.predict(images)):
        assert a.shape == b.shape and a.dtype == b.dtype == np.float32
        assert np.abs(a - b).max() < 1e-5
    with pytest.raises(ValueError, match="patch order is fixed"):
        Predictor(path, patch_order="legacy")
    with pytest.raises(ValueError, match="not a registry name"):
        Predictor("nope", weights=path)


def test_predictor_onnx_backend_dynamic_policy(tiny_export, tiny_model):
    from birefnet.inference import Predictor

    rng = np.random.default_rng(1)
    images = [
        (rng.random((50, 70, 3)) * 255).astype(np.uint8),
        (rng.random((80, 40, 3)) * 255).astype(np.uint8),
    ]
    a = Predictor(tiny_model, resolution="dynamic", size=96, device="cpu").predict(images)
    b = Predictor(str(tiny_export.path), backend="onnx", resolution="dynamic", size=96).predict(images)
    for x, y in zip(a, b):
        assert np.abs(x - y).max() < 1e-5


def test_predict_cli_with_onnx_model(tiny_export, tmp_path):
    from PIL import Image

    from birefnet.cli import main

    src = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(2).random((40, 60, 3)) * 255).astype(np.uint8)).save(src)
    args = ["predict", str(src), "-o", str(tmp_path / "out"), "--model", str(tiny_export.path), "-q"]
    assert main([*args, "--size", f"{W}x{H}"]) == 0
    out = Image.open(tmp_path / "out" / "in.png")
    assert out.mode == "RGBA" and out.size == (60, 40)


def test_failed_check_sets_file_aside_and_raises(tiny_export, tiny_model, tmp_path):
    copy = tmp_path / "copy.onnx"
    shutil.copy(tiny_export.path, copy)
    torch.manual_seed(1)
    other = TinyNet().eval()  # other weights: the file no longer matches
    report = ExportReport(**{**tiny_export.__dict__, "path": copy, "checks": []})
    with pytest.raises(ExportCheckError, match="relative error") as info:
        verify_onnx(report, other, sizes=[(H, W)])
    assert not copy.exists() and (tmp_path / "copy.failed.onnx").exists()
    assert info.value.report.path == tmp_path / "copy.failed.onnx" and not info.value.report.passed
    report.path = tmp_path / "copy.failed.onnx"
    assert verify_onnx(report, tiny_model, sizes=[(H, W)])[0].rel_error <= 1e-4


def test_export_cli_usage_errors(tmp_path, capsys):
    from birefnet.cli import main

    assert main(["export", "onnx", "--model", "x", "-o", str(tmp_path / "x.txt")]) == 2
    assert "must end in .onnx" in capsys.readouterr().err
    assert (
        main(["export", "onnx", "--model", "x", "-o", str(tmp_path / "x.onnx"), "--static", "100x100"]) == 2
    )
    assert "multiples of 32" in capsys.readouterr().err
    assert main(["export", "onnx", "--model", str(tmp_path / "missing"), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("window", "depths", "shape"),
    [
        (7, (2, 2, 2, 2), (2, 3, 192, 256)),
        (3, (2, 2, 3, 2), (2, 3, 70, 50)),
        (7, (1, 1, 1, 1), (1, 3, 64, 96)),
    ],
)
def test_swin_traceable_path_equals_eager_path(monkeypatch, window, depths, shape):
    """The export path (pad / roll / reshape windows, arange mask, batched attention) computes what the
    eager path (cached gathers, per-sample attention) does: padding, odd sizes, shifts, batch 2."""
    torch.manual_seed(0)
    backbone = SwinTransformer(embed_dim=16, depths=depths, num_heads=(1, 2, 2, 4), window_size=window).eval()
    for module in backbone.modules():
        if isinstance(module, swin.WindowAttention):
            nn.init.normal_(module.relative_position_bias_table, std=1.0)
    (x,) = _inputs([shape])
    with torch.inference_mode():
        eager = backbone(x)
        monkeypatch.setattr(swin, "is_tracing", lambda: True)
        traced = backbone(x)
    for a, b in zip(eager, traced, strict=True):
        assert a.shape == b.shape and rel_error(b, a) <= 1e-5


def test_swin_takes_traceable_path_under_export():
    seen = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(swin.is_tracing())
            return x + 1

    torch.export.export(Probe(), (torch.ones(2),), strict=False)
    assert seen == [True] and not swin.is_tracing()


def test_swin_shift_mask_matches_eager_layout():
    # nh x nw windows of 7 over a 13 x 20 map (padded to 14 x 21), shift 3: the boundary windows'
    # masks of the cached layout are the traceable mask's rows of those windows (the layout orders
    # its windows: unmasked first, then by padding pattern; window_order maps them back).
    layout = swin.window_layout(13, 20, 7, 3, device=torch.device("cpu"), dtype=torch.float32)
    mask = swin.shifted_window_mask(2, 3, 7, 3, device=torch.device("cpu"), dtype=torch.float32)
    assert mask.shape == (6, 49, 49)
    boundary = [i for i in range(6) if i // 3 == 1 or i % 3 == 2]  # last window row or column
    assert sorted(layout.window_order[layout.num_unmasked :].tolist()) == boundary
    assert torch.equal(mask[layout.window_order[layout.num_unmasked :]], layout.boundary_mask)
    assert not mask[[i for i in range(6) if i not in boundary]].any()


def test_model_flags_shared_by_predict_serve_export(capsys):
    from birefnet.cli import build_parser
    from birefnet.cli._common import add_model_flags

    parser = build_parser()
    args = parser.parse_args(
        ["predict", "a.jpg", "-o", "out", "--device", "cpu", "--threads", "2", "--size", "64"]
    )
    assert (args.device, args.threads, args.size, args.precision, args.model) == ("cpu", 2, "64", None, None)
    args = parser.parse_args(["serve", "--model", "lite", "--model", "x=y.onnx", "--precision", "fp32"])
    assert args.model == ["lite", "x=y.onnx"] and args.precision == "fp32" and args.backend is None
    args = parser.parse_args(
        ["export", "onnx", "--model", "m", "--weights", "w", "-o", "x.onnx", "--patch-order", "legacy"]
    )
    assert (args.model, args.weights, args.patch_order) == ("m", "w", "legacy")
    for argv in (["serve", "--threads", "0"], ["predict", "a", "-o", "b", "--precision", "fp8"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    assert "must be >= 1" in capsys.readouterr().err
    with pytest.raises(KeyError, match="known: model"):
        add_model_flags(parser, "nope")


def test_parse_hw_and_metadata_of_registry_model():
    from birefnet import registry

    assert _parse_hw("1024x768") == (1024, 768) and _parse_hw(512) == (512, 512) and _parse_hw(None) is None
    with pytest.raises(ValueError, match="try 96x96"):
        _parse_hw("100x90")
    spec = registry.get("RMBG-2.0")
    meta = build_metadata(
        BiRefNet(BiRefNetConfig(backbone="pvt_v2_b0", patch_order="legacy")),
        spec=spec,
        mean=spec.mean,
        std=spec.std,
        normalize=True,
        half=True,
        dynamic_axes=["batch"],
        static_size=(1024, 1024),
        extra={"note": {"a": 1}},
    )
    assert meta["birefnet.name"] == "RMBG-2.0" and meta["birefnet.repo_id"] == "briaai/RMBG-2.0"
    assert meta["birefnet.license"] == "CC BY-NC 4.0" and meta["birefnet.commercial"] == "false"
    assert meta["birefnet.size"] == "1024x1024" and meta["birefnet.patch_order"] == "legacy"
    assert meta["birefnet.input"] == "rgb01" and meta["birefnet.dtype"] == "float16"
    assert meta["birefnet.static_size"] == "1024x1024" and meta["note"] == '{"a": 1}'


# --------------------------------------------------------------------------------------------
# Slow: whole BiRefNets (pvt_v2_b0, swin_v1_t) with make_weights weights


@pytest.fixture(scope="module")
def pvt_model() -> BiRefNet:
    return _model("pvt_v2_b0")


@pytest.mark.slow
@requires_shared
def test_pvt_dynamic_export_via_cli_matches_torch(tmp_path, pvt_model, capsys):
    from birefnet.cli import main
    from birefnet.weights import save_pretrained

    folder = save_pretrained(pvt_model, tmp_path / "pvt")
    out = tmp_path / "pvt.onnx"
    start = time.perf_counter()
    code = main(["export", "onnx", "--model", str(folder), "-o", str(out)])
    printed = capsys.readouterr()
    print(f"pvt_v2_b0 dynamic export + check (CLI): {time.perf_counter() - start:.1f} s")
    assert code == 0, printed.err
    assert (
        printed.out.count(" ok") == 2 and "dynamic: batch, height, width" in printed.out
    )  # 2 sizes, batch 2
    assert read_metadata(out)["birefnet.backbone"] == "pvt_v2_b0"
    shapes = [(2, 3, 128, 64), (2, 3, 96, 160), (1, 3, 64, 64)]
    for c in compare_with_torch(out, pvt_model, _inputs(shapes)):
        assert c.rel_error <= 1e-4, c


@pytest.mark.slow
def test_tiny_swin_dynamic_export_matches_torch(tmp_path):
    torch.manual_seed(0)
    model = TinySwinNet().eval()
    start = time.perf_counter()
    report = export_onnx(model, tmp_path / "tiny_swin.onnx")
    print(f"tiny Swin dynamic export + check: {time.perf_counter() - start:.1f} s")
    assert report.dynamic_axes == ["batch", "height", "width"]
    assert report.passed and len(report.checks) == 2 and all(c.shape[0] == 2 for c in report.checks)
    shapes = [(2, 3, 96, 160), (1, 3, 224, 96), (3, 3, 64, 64)]
    for c in compare_with_torch(report.path, model, _inputs(shapes)):
        assert c.rel_error <= 1e-4, c


@pytest.mark.slow
@requires_shared
def test_swin_t_dynamic_export_matches_torch(tmp_path):
    model = _model("swin_v1_t")
    start = time.perf_counter()
    report = export_onnx(model, tmp_path / "swin_t.onnx")
    print(f"swin_v1_t dynamic export + check: {time.perf_counter() - start:.1f} s")
    assert report.dynamic_axes == ["batch", "height", "width"]
    assert report.passed and len(report.checks) == 2 and all(c.shape[0] == 2 for c in report.checks)
    for c in report.checks:
        print(f"  {c.shape}: relative error {c.rel_error:.2e}")
    for c in compare_with_torch(report.path, model, _inputs([(2, 3, 96, 160), (1, 3, 224, 96)])):
        print(f"  {c.shape}: relative error {c.rel_error:.2e}")
        assert c.rel_error <= 1e-4, c


@pytest.mark.slow
@requires_shared
def test_swin_t_static_export_matches_torch(tmp_path):
    # Fully static (batch 1 too): the route some runtimes prefer; the runner splits larger batches.
    model = _model("swin_v1_t")
    start = time.perf_counter()
    report = export_onnx(model, tmp_path / "swin_t.onnx", static_size="64x96", dynamic=False)
    print(f"swin_v1_t static 1x3x64x96 export + check: {time.perf_counter() - start:.1f} s")
    assert report.dynamic_axes == [] and report.passed
    for c in compare_with_torch(report.path, model, _inputs([(1, 3, 64, 96)], seed=4)):
        assert c.rel_error <= 1e-4, c
    # the runner splits a batch for a batch-1 graph
    from birefnet.onnx_runtime import OnnxModel

    (x,) = _inputs([(2, 3, 64, 96)], seed=5)
    with torch.inference_mode():
        assert rel_error(OnnxModel(report.path, device="cpu")(x).logits, model(x).logits) <= 1e-4


@pytest.mark.slow
@requires_shared
def test_pvt_static_normalize_in_graph_and_half(tmp_path, pvt_model):
    from birefnet.onnx_runtime import OnnxModel

    report = export_onnx(pvt_model, tmp_path / "static.onnx", static_size="64x96", normalize=True)
    assert report.static_size == (64, 96) and report.dynamic_axes == ["batch"] and report.passed
    meta = read_metadata(report.path)
    assert meta["birefnet.input"] == "rgb01" and meta["birefnet.static_size"] == "64x96"
    net = OnnxModel(report.path, device="cpu")
    assert net.static_size == (64, 96) and net.default_size == (96, 64) and net.normalize_in_graph
    (x,) = _inputs([(2, 3, 64, 96)], seed=3)
    with torch.inference_mode():
        assert rel_error(net(x).logits, pvt_model(x).logits) <= 1e-4  # the runner undoes the normalisation
    with pytest.raises(ValueError, match="exported for 64x96"):
        net(torch.zeros(1, 3, 64, 64))

    half = export_onnx(pvt_model, tmp_path / "half.onnx", static_size="64x96", half=True)
    assert half.passed and half.tolerance == 2e-2
    assert read_metadata(half.path)["birefnet.dtype"] == "float16"
    print(f"float16 relative error vs float32 torch: {half.max_rel_error:.2e}")
    assert Path(half.path).stat().st_size < 0.6 * Path(report.path).stat().st_size
