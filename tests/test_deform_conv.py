"""Deformable convolution: against F.conv2d at zero offsets and a slow float64 reference at random offsets."""

from __future__ import annotations

import contextlib
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from birefnet.models import deform_conv as dc
from birefnet.models.deform_conv import DeformableConv2d, deform_conv2d
from conftest import rel_error, run_interpreted


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: on a loaded 2-core machine a second BLAS/OpenMP thread only adds waiting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference_deform_conv2d(x, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None):
    """Obviously-correct float64 loop version of torchvision's deform_conv2d (numpy arrays in and out)."""
    x = np.asarray(x, np.float64)
    offset = np.asarray(offset, np.float64)
    weight = np.asarray(weight, np.float64)
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    batch, channels, height, width = x.shape
    out_channels, _, kh, kw = weight.shape
    out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    groups = offset.shape[1] // (2 * kh * kw)
    group_channels = channels // groups

    def pixel(b, g, y, xx):
        # One corner: zero outside the image.
        if 0 <= y < height and 0 <= xx < width:
            return x[b, g * group_channels : (g + 1) * group_channels, y, xx]
        return np.zeros(group_channels)

    def bilinear(b, g, h, w):
        if h <= -1 or h >= height or w <= -1 or w >= width:
            return np.zeros(group_channels)
        y0, x0 = int(np.floor(h)), int(np.floor(w))
        ly, lx = h - y0, w - x0
        return (
            (1 - ly) * (1 - lx) * pixel(b, g, y0, x0)
            + (1 - ly) * lx * pixel(b, g, y0, x0 + 1)
            + ly * (1 - lx) * pixel(b, g, y0 + 1, x0)
            + ly * lx * pixel(b, g, y0 + 1, x0 + 1)
        )

    out = np.zeros((batch, out_channels, out_h, out_w))
    for b in range(batch):
        for ho in range(out_h):
            for wo in range(out_w):
                column = np.zeros((channels, kh, kw))
                for g in range(groups):
                    for i in range(kh):
                        for j in range(kw):
                            k = i * kw + j
                            dy = offset[b, g * 2 * kh * kw + 2 * k, ho, wo]
                            dx = offset[b, g * 2 * kh * kw + 2 * k + 1, ho, wo]
                            h = ho * sh - ph + i * dh + dy
                            w = wo * sw - pw + j * dw + dx
                            value = bilinear(b, g, h, w)
                            if mask is not None:
                                value = value * float(mask[b, g * kh * kw + k, ho, wo])
                            column[g * group_channels : (g + 1) * group_channels, i, j] = value
                out[b, :, ho, wo] = np.einsum("ocij,cij->o", weight, column)
    if bias is not None:
        out += np.asarray(bias, np.float64)[None, :, None, None]
    return out


def output_size(size, k, stride, padding, dilation):
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def random_case(batch, channels, out_channels, height, width, k, stride, padding, dilation, groups, scale):
    out_h = output_size(height, k, stride, padding, dilation)
    out_w = output_size(width, k, stride, padding, dilation)
    x = torch.randn(batch, channels, height, width, dtype=torch.float64)
    offset = torch.randn(batch, 2 * groups * k * k, out_h, out_w, dtype=torch.float64) * scale
    mask = torch.rand(batch, groups * k * k, out_h, out_w, dtype=torch.float64) * 2
    weight = torch.randn(out_channels, channels, k, k, dtype=torch.float64)
    bias = torch.randn(out_channels, dtype=torch.float64)
    return x, offset, weight, bias, mask


@contextlib.contextmanager
def sampler(name):
    """Force the eager (gather) or the ONNX-export (grid_sample) sampling path."""
    with mock.patch.object(dc, "_grid_sampling", return_value=name == "grid"):
        yield


SAMPLERS = ["gather", "grid"]


@pytest.mark.parametrize("path", SAMPLERS)
@pytest.mark.parametrize(
    ("k", "stride", "padding", "dilation", "with_bias"),
    [(1, 1, 0, 1, False), (1, 2, 0, 1, True), (3, 1, 1, 1, True), (3, 2, 1, 1, False), (3, 1, 2, 2, True),
     (7, 1, 3, 1, False), (7, 2, 3, 1, True)],
)  # fmt: skip
def test_zero_offsets_unit_mask_equal_conv2d(path, k, stride, padding, dilation, with_bias):
    x = torch.randn(2, 5, 13, 10)
    weight = torch.randn(4, 5, k, k)
    bias = torch.randn(4) if with_bias else None
    out_h = output_size(13, k, stride, padding, dilation)
    out_w = output_size(10, k, stride, padding, dilation)
    offset = torch.zeros(2, 2 * k * k, out_h, out_w)
    mask = torch.ones(2, k * k, out_h, out_w)
    expected = F.conv2d(x, weight, bias, stride, padding, dilation)
    with sampler(path):
        for m in (None, mask):
            ours = deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask=m)
            assert ours.shape == expected.shape
            assert rel_error(ours, expected) < 1e-6


@pytest.mark.parametrize("path", SAMPLERS)
@pytest.mark.parametrize(
    ("batch", "channels", "height", "width", "k", "stride", "padding", "dilation", "groups"),
    [
        (2, 3, 6, 9, 3, 1, 1, 1, 1),  # non-square, batch 2
        (2, 4, 7, 5, 3, 2, 1, 1, 2),  # stride 2, two offset groups
        (1, 4, 5, 6, 3, 1, 2, 2, 2),  # dilation
        (1, 3, 6, 6, 1, 1, 0, 1, 1),  # 1x1
        (2, 2, 9, 8, 7, 1, 3, 1, 1),  # 7x7
        (1, 3, 6, 1, 3, 1, 1, 1, 1),  # 1-pixel-wide map
        (1, 3, 1, 5, 3, 1, 1, 1, 1),  # 1-pixel-high map
        (2, 2, 1, 1, 7, 1, 3, 1, 1),  # 1x1 map (deepest stage of a tiny input)
        (1, 2, 1, 1, 1, 1, 0, 1, 1),  # 1x1 map, 1x1 kernel
    ],
)
def test_matches_float64_reference(
    path, batch, channels, height, width, k, stride, padding, dilation, groups
):
    # Offsets of several pixels push many samples partly or wholly outside the image.
    x, offset, weight, bias, mask = random_case(
        batch, channels, 3, height, width, k, stride, padding, dilation, groups, scale=3.0
    )
    expected = reference_deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask)
    with sampler(path):
        ours64 = deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask)
        x32, offset32, weight32, bias32, mask32 = (t.float() for t in (x, offset, weight, bias, mask))
        ours32 = deform_conv2d(x32, offset32, weight32, bias32, stride, padding, dilation, mask32)
        no_mask = deform_conv2d(x, offset, weight, None, stride, padding, dilation)
    assert ours64.dtype == torch.float64
    assert ours32.dtype == torch.float32
    expected = torch.from_numpy(expected)
    assert rel_error(ours64, expected) < 1e-12
    assert rel_error(ours32, expected) < 1e-6
    expected_no_mask = reference_deform_conv2d(x, offset, weight, None, stride, padding, dilation)
    assert rel_error(no_mask, torch.from_numpy(expected_no_mask)) < 1e-12


@pytest.mark.parametrize(("path", "tolerance"), [("gather", 1e-6), ("grid", 5e-5)])
def test_float32_precision_far_from_the_origin(path, tolerance):
    """Positions near 250 px: float32 rounds them to 2^-16 px, so the gather path takes fractions from the
    offsets; grid_sample's normalisation round trip costs about that much (the export path)."""
    x, offset, weight, bias, mask = random_case(1, 4, 3, 3, 256, 3, 1, 1, 1, 1, scale=3.0)
    expected = torch.from_numpy(reference_deform_conv2d(x, offset, weight, bias, 1, 1, 1, mask))
    with sampler(path):
        ours = deform_conv2d(x.float(), offset.float(), weight.float(), bias.float(), 1, 1, 1, mask.float())
    assert rel_error(ours, expected) < tolerance


@pytest.mark.parametrize("path", SAMPLERS)
def test_samples_on_and_beyond_the_border(path):
    """Positions exactly on pixel centres, on -1 / H, and far outside the image."""
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64)
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    values = torch.tensor([-100.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.25, 1.0, 3.5, 4.0, 5.0, 100.0])
    offset = values[torch.randint(len(values), (1, 18, 4, 5))].double()
    expected = reference_deform_conv2d(x, offset, weight, padding=1)
    with sampler(path):
        ours = deform_conv2d(x, offset, weight, padding=1)
    assert rel_error(ours, torch.from_numpy(expected)) < 1e-12


@pytest.mark.parametrize("groups", [1, 2])
def test_chunked_equals_unchunked(groups, monkeypatch):
    x, offset, weight, bias, mask = random_case(2, 4, 5, 11, 9, 3, 1, 1, 1, groups, scale=2.0)
    whole = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    monkeypatch.setattr(dc, "COLUMN_BUDGET_BYTES", 1)  # one output row per chunk
    chunked = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    assert rel_error(chunked, whole) < 1e-14
    monkeypatch.setattr(dc, "COLUMN_BUDGET_BYTES", 4 * 9 * 5 * 8 * 4)  # ~4 rows per chunk: 3 chunks
    assert rel_error(deform_conv2d(x, offset, weight, bias, padding=1, mask=mask), whole) < 1e-14


@pytest.mark.parametrize("path", SAMPLERS)
@pytest.mark.parametrize("groups", [1, 2])
def test_gradcheck(path, groups):
    # Offsets stay away from integers (where bilinear interpolation has kinks) but go outside the image.
    x, offset, weight, bias, mask = random_case(1, 2, 2, 4, 3, 3, 1, 1, 1, groups, scale=1.5)
    offset = offset.round() + 0.1 + 0.8 * torch.rand_like(offset)
    inputs = tuple(t.requires_grad_() for t in (x, offset, weight, bias, mask))
    with sampler(path):
        # fast_mode checks random projections of every input's Jacobian (seconds instead of minutes).
        assert torch.autograd.gradcheck(
            lambda *a: deform_conv2d(a[0], a[1], a[2], a[3], padding=1, mask=a[4]), inputs, fast_mode=True
        )


def test_gradcheck_full_jacobian():
    """Every Jacobian entry of the eager path, on a case small enough for the slow mode."""
    x, offset, weight, bias, mask = random_case(1, 2, 2, 3, 2, 3, 1, 1, 1, 1, scale=1.5)
    offset = offset.round() + 0.1 + 0.8 * torch.rand_like(offset)
    inputs = tuple(t.requires_grad_() for t in (x, offset, weight, bias, mask))
    assert torch.autograd.gradcheck(
        lambda *a: deform_conv2d(a[0], a[1], a[2], a[3], padding=1, mask=a[4]), inputs
    )


def test_nan_offsets_propagate():
    x = torch.randn(1, 2, 5, 5)
    offset = torch.zeros(1, 18, 5, 5)
    offset[0, 0, 2, 3] = float("nan")
    offset[0, 3, 1, 1] = float("inf")
    out = deform_conv2d(x, offset, torch.randn(3, 2, 3, 3), padding=1)
    assert out[0, :, 2, 3].isnan().all()
    assert out.isnan().sum() == 3 and torch.isfinite(out[0, :, 1, 1]).all()


def test_gradcheck_across_chunks(monkeypatch):
    """Chunks recompute their columns in the backward pass; gradients must not notice."""
    monkeypatch.setattr(dc, "COLUMN_BUDGET_BYTES", 1)  # one output row per chunk
    x, offset, weight, bias, mask = random_case(2, 2, 2, 4, 3, 3, 1, 1, 1, 2, scale=1.5)
    offset = offset.round() + 0.1 + 0.8 * torch.rand_like(offset)
    inputs = tuple(t.requires_grad_() for t in (x, offset, weight, bias, mask))
    assert torch.autograd.gradcheck(
        lambda *a: deform_conv2d(a[0], a[1], a[2], a[3], padding=1, mask=a[4]), inputs, fast_mode=True
    )


def test_training_does_not_keep_the_columns():
    """Memory saved for backward stays near the input size, not the (B, C·k·k, Ho·Wo) column tensor."""
    m = DeformableConv2d(32, 8, kernel_size=3, padding=1)
    x = torch.randn(1, 32, 20, 20, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = m(x)
    n_columns = 32 * 9 * 20 * 20
    assert sum(saved) < n_columns / 2
    out.sum().backward()
    assert x.grad is not None and m.offset_conv.weight.grad.abs().sum() > 0


@pytest.mark.slow  # ~15 s: the torch.export-based exporter
def test_onnx_export_matches_eager(tmp_path):
    """The export path (GridSample) runs in onnxruntime like the eager module, at other sizes than the
    example too (dynamic H and W)."""
    pytest.importorskip("onnxscript", reason="torch.onnx.export(dynamo=True) needs onnxscript")
    m = DeformableConv2d(4, 3, kernel_size=3, padding=1).eval()
    with torch.no_grad():
        m.offset_conv.weight.normal_(0, 0.3)
        m.modulator_conv.weight.normal_(0, 0.3)
    path = tmp_path / "deform.onnx"
    height, width = torch.export.Dim("height", min=1, max=64), torch.export.Dim("width", min=1, max=64)
    torch.onnx.export(
        m, (torch.randn(1, 4, 9, 7),), str(path), dynamo=True, dynamic_shapes={"x": {2: height, 3: width}}
    )
    onnx = pytest.importorskip("onnx")
    assert "GridSample" in {node.op_type for node in onnx.load(str(path)).graph.node}
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path))
    for shape in [(1, 4, 9, 7), (1, 4, 5, 12), (1, 4, 1, 6)]:
        x = torch.randn(shape)
        (ours,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        assert rel_error(torch.from_numpy(ours), m(x)) < 1e-5, shape


def test_gradients_flow_through_module():
    m = DeformableConv2d(3, 4, kernel_size=3, padding=1, bias=True)
    x = torch.randn(2, 3, 6, 7, requires_grad=True)
    m(x).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("path", SAMPLERS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_inputs(path, dtype):
    x, offset, weight, bias, mask = random_case(1, 4, 3, 8, 8, 3, 1, 1, 1, 1, scale=2.0)
    expected = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    with sampler(path):
        low = [t.to(dtype) for t in (x, offset, weight, bias, mask)]
        ours = deform_conv2d(low[0], low[1], low[2], low[3], padding=1, mask=low[4])
    assert ours.dtype == dtype
    # Inputs rounded to 8 (bf16) or 11 (fp16) bits and products summed in that precision.
    assert rel_error(ours, expected) < (3e-2 if dtype == torch.bfloat16 else 5e-3)


@pytest.mark.parametrize("k", [1, 3, 7])
@pytest.mark.parametrize("with_bias", [False, True])
def test_module_at_init_equals_regular_conv(k, with_bias):
    m = DeformableConv2d(6, 5, kernel_size=k, padding=k // 2, bias=with_bias)
    x = torch.randn(2, 6, 9, 12)
    assert rel_error(m(x), m.regular_conv(x)) < 1e-6
    expected_keys = {
        "offset_conv.weight",
        "offset_conv.bias",
        "modulator_conv.weight",
        "modulator_conv.bias",
        "regular_conv.weight",
    } | ({"regular_conv.bias"} if with_bias else set())
    assert set(m.state_dict()) == expected_keys
    assert m.offset_conv.weight.shape == (2 * k * k, 6, k, k)
    assert m.modulator_conv.weight.shape == (k * k, 6, k, k)
    assert m.regular_conv.weight.shape == (5, 6, k, k)
    assert not m.offset_conv.weight.any() and not m.offset_conv.bias.any()
    assert not m.modulator_conv.weight.any() and not m.modulator_conv.bias.any()


def test_module_stride_and_trained_offsets_match_reference():
    m = DeformableConv2d(3, 4, kernel_size=3, stride=2, padding=1).double()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
    x = torch.randn(1, 3, 7, 8, dtype=torch.float64)
    offset = m.offset_conv(x)
    mask = 2 * torch.sigmoid(m.modulator_conv(x))
    weight = m.regular_conv.weight.detach()
    expected = reference_deform_conv2d(x, offset.detach(), weight, None, 2, 1, 1, mask.detach())
    out = m(x)
    assert out.shape == (1, 4, 4, 4)
    assert rel_error(out, torch.from_numpy(expected)) < 1e-12


def test_shape_errors_are_explained():
    x = torch.randn(1, 4, 6, 6)
    weight = torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="offset must have shape"):
        deform_conv2d(x, torch.zeros(1, 18, 5, 5), weight, padding=1)
    with pytest.raises(ValueError, match="offset groups"):
        deform_conv2d(x, torch.zeros(1, 54, 6, 6), weight, padding=1)
    with pytest.raises(ValueError, match="mask must have shape"):
        deform_conv2d(x, torch.zeros(1, 18, 6, 6), weight, padding=1, mask=torch.ones(1, 18, 6, 6))
    with pytest.raises(ValueError, match="input channels"):
        deform_conv2d(x, torch.zeros(1, 18, 6, 6), torch.randn(2, 3, 3, 3), padding=1)


_FUSED_CHECK = r"""
import json, sys, torch
from birefnet.models import _deform_triton as dt
from birefnet.models.deform_conv import deform_conv2d

torch.manual_seed(0)
results = []
# (batch, channels, size, out channels, kernel, stride, padding, dilation, mask, dtype)
cases = [
    (2, 24, (9, 11), 20, 3, 1, 1, 1, True, torch.float32),
    (1, 16, (7, 6), 33, 1, 1, 0, 1, False, torch.float32),
    (1, 20, (10, 9), 16, 3, 2, 2, 2, True, torch.float32),
    (1, 32, (8, 8), 17, 3, 1, 1, 1, True, torch.float16),
]
for i, (batch, channels, (h, w), out_channels, k, stride, pad, dil, with_mask, dtype) in enumerate(cases):
    x = torch.randn(batch, channels, h, w, dtype=torch.float64)
    out_h = (h + 2 * pad - dil * (k - 1) - 1) // stride + 1
    out_w = (w + 2 * pad - dil * (k - 1) - 1) // stride + 1
    # The first case as the module feeds it: offsets a channel slice of the offset+mask conv output
    # (not contiguous), and a channels-last input; the others contiguous.
    offset = torch.randn(batch, 3 * k * k, out_h, out_w, dtype=torch.float64)[:, : 2 * k * k] * 3
    if i == 0:
        x = x.contiguous(memory_format=torch.channels_last)
    else:
        offset = offset.contiguous()
    offset[0, 0, 0, 0] = 100.0  # far outside the map: zero
    offset[0, 1, 1, 1] = -50.0
    offset[0, -1, -1, -1] = float("inf")  # clamped, finite
    offset[-1, -2, 2, 1] = float("nan")  # that output pixel is NaN
    mask = torch.rand(batch, k * k, out_h, out_w, dtype=torch.float64) * 2 if with_mask else None
    weight = torch.randn(out_channels, channels, k, k, dtype=torch.float64)
    ref = deform_conv2d(x, offset, weight, None, stride, pad, dil, mask)
    # .to keeps the memory layout (a strided copy when the dtype changes)
    low = [None if t is None else t.to(dtype) for t in (x, offset, weight, mask)]
    if i == 0:
        low[1] = torch.randn(batch, 3 * k * k, out_h, out_w, dtype=dtype)[:, : 2 * k * k]
        low[1].copy_(offset)
        assert not low[1].is_contiguous() and low[0].is_contiguous(memory_format=torch.channels_last)
    got = dt.deform_conv2d_fused(
        low[0], low[1], low[2], low[3], (stride,) * 2, (pad,) * 2, (dil,) * 2, tile=(16, 16)
    )
    nan_ok = bool((got.isnan() == ref.isnan()).all())
    finite = ~ref.isnan()
    err = float((got.double()[finite] - ref[finite]).abs().max() / ref[finite].abs().max())
    results.append({"dtype": str(dtype), "k": k, "stride": stride, "err": err, "nan_ok": nan_ok,
                    "shape_ok": got.shape == ref.shape,
                    "channels_last": got.is_contiguous(memory_format=torch.channels_last)})
json.dump(results, sys.stdout)
"""


@pytest.mark.skipif(not dc._deform_triton.AVAILABLE, reason="Triton is not installed (pip install triton)")
def test_fused_triton_kernel_matches_eager_under_the_interpreter():
    """The GPU kernel's arithmetic, run by Triton's CPU interpreter (bfloat16 products are not emulated
    there; float16 stands in for the half types)."""
    results = run_interpreted(_FUSED_CHECK)
    assert len(results) == 4
    for r in results:
        assert r["shape_ok"] and r["nan_ok"] and r["channels_last"], r
        assert r["err"] < (2e-3 if r["dtype"] == "torch.float16" else 1e-6), r


def test_fused_kernel_is_only_chosen_for_cuda_half_inference():
    x = torch.randn(1, 4, 5, 5)
    assert not dc._deform_triton.usable(x, 1, needs_grad=False)  # a CPU tensor
    assert not dc._deform_triton.usable(x.half(), 1, needs_grad=False)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")
def test_onednn_product_equals_mkl_product(monkeypatch):
    """On AVX-512 CPUs the float32 inference product goes through oneDNN (birefnet.models.onednn), chunk
    by chunk copied into the output; forced on and off here whatever the CPU, the values agree."""
    x, offset, weight, bias, mask = random_case(2, 4, 5, 11, 9, 3, 1, 1, 1, 1, scale=2.0)
    x, offset, weight, bias, mask = (t.float() for t in (x, offset, weight, bias, mask))
    monkeypatch.setattr(dc, "COLUMN_BUDGET_BYTES", 4 * 9 * 5 * 8 * 4)  # several chunks
    results = {}
    for fast in (False, True):
        monkeypatch.setattr(dc.onednn, "available", lambda fast=fast: fast)
        with torch.inference_mode(), mock.patch.object(dc.onednn, "linear", wraps=dc.onednn.linear) as spy:
            results[fast] = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
        assert spy.called == fast
    assert rel_error(results[True], results[False]) < 1e-6
    # the comparison switch turns it off even where the CPU qualifies
    monkeypatch.setattr(dc.onednn, "USE_ONEDNN", False)
    with torch.inference_mode(), mock.patch.object(dc.onednn, "linear", wraps=dc.onednn.linear) as spy:
        deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    assert not spy.called


@pytest.mark.parametrize("channels_last", [False, True])
def test_rows_hand_out_the_output_chunk_by_chunk(channels_last, monkeypatch):
    """deform_conv2d_rows gives every output row once, in order, as (rows x Wo, O) products equal to
    deform_conv2d's output without bias; channels-last inputs and offsets (read in place) too."""
    x, offset, weight, _, mask = random_case(2, 4, 5, 11, 9, 3, 2, 1, 2, 1, scale=2.0)
    expected = deform_conv2d(x, offset, weight, stride=2, padding=1, dilation=2, mask=mask)
    if channels_last:
        x, offset, mask = (t.contiguous(memory_format=torch.channels_last) for t in (x, offset, mask))
    monkeypatch.setattr(dc, "COLUMN_BUDGET_BYTES", 2 * 4 * 9 * 4 * 8 * 2)  # 2 output rows per chunk
    got = torch.full_like(expected, float("nan"))
    seen = []

    def epilogue(product, b, rows):
        seen.append((b, rows.start, rows.stop))
        got[b, :, rows] = product.t().reshape(5, rows.stop - rows.start, -1)

    with torch.inference_mode():
        dc.deform_conv2d_rows(x, offset, weight, epilogue, stride=2, padding=1, dilation=2, mask=mask)
    out_h = expected.shape[2]
    assert [s for s in seen if s[0] == 0] == [(0, r, min(r + 2, out_h)) for r in range(0, out_h, 2)]
    assert rel_error(got, expected) < 1e-14


def test_rows_refuse_groups_and_gradients():
    x, offset, weight, _, mask = random_case(1, 4, 5, 6, 6, 3, 1, 1, 1, 2, scale=1.0)
    with pytest.raises(ValueError, match="one offset group"):
        dc.deform_conv2d_rows(x, offset, weight, lambda *a: None, padding=1, mask=mask[:, :18])
    x, offset, weight, _, mask = random_case(1, 4, 5, 6, 6, 3, 1, 1, 1, 1, scale=1.0)
    with pytest.raises(ValueError, match="inference"):
        dc.deform_conv2d_rows(x, offset, weight.requires_grad_(), lambda *a: None, padding=1, mask=mask)


def test_wide_index_and_position_types_give_the_same_samples(monkeypatch):
    """Past 2^31 table rows the gather indices are int64, past 2^24 rows per plane the corner positions
    are computed in float64 (maps of ~4000² and more, too large for a test): forced here on a small
    map, the samples are the same."""
    x, offset, weight, bias, mask = random_case(2, 4, 5, 11, 9, 3, 1, 1, 1, 1, scale=3.0)
    x, offset, weight, bias, mask = (t.float() for t in (x, offset, weight, bias, mask))
    with torch.inference_mode():
        narrow = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
        monkeypatch.setattr(dc, "_INT32_INDEX_ROWS", 10)
        monkeypatch.setattr(dc, "_FLOAT32_EXACT_ROWS", 10)
        sampler = dc._GatherSampler(x, 1)
        assert (sampler.index_dtype, sampler.position_dtype) == (torch.int64, torch.float64)
        wide = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    assert torch.equal(narrow, wide)


_EPILOGUE_CHECK = r"""
import json, sys, torch
from birefnet.models import _deform_triton as dt
from birefnet.models.deform_conv import deform_conv2d

torch.manual_seed(0)
results = []
for dtype in (torch.float32, torch.float16):
    x = torch.randn(2, 24, 9, 10, dtype=torch.float64)
    offset = torch.randn(2, 18, 9, 10, dtype=torch.float64) * 2
    mask = torch.rand(2, 9, 9, 10, dtype=torch.float64) * 2
    weight = torch.randn(20, 24, 3, 3, dtype=torch.float64)
    scale, shift = torch.rand(20, dtype=torch.float64) + 0.5, torch.randn(20, dtype=torch.float64)
    ref = torch.relu(deform_conv2d(x, offset, weight, None, 1, 1, 1, mask) * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1))
    low = [t.to(dtype) for t in (x, offset, weight, mask)]
    got = dt.deform_conv2d_fused(*low, (1, 1), (1, 1), (1, 1), scale=scale, shift=shift, relu=True, tile=(16, 16))
    err = float((got.double() - ref).abs().max() / ref.abs().max())
    results.append({"dtype": str(dtype), "err": err, "dtype_ok": got.dtype == dtype, "relu_ok": bool((got >= 0).all())})
json.dump(results, sys.stdout)
"""


@pytest.mark.skipif(not dc._deform_triton.AVAILABLE, reason="Triton is not installed (pip install triton)")
def test_fused_kernel_affine_relu_epilogue_under_the_interpreter():
    for r in run_interpreted(_EPILOGUE_CHECK):
        assert r["dtype_ok"] and r["relu_ok"], r
        assert r["err"] < (2e-3 if r["dtype"] == "torch.float16" else 1e-6), r


@pytest.mark.parametrize("conv_bias", [False, True])
@pytest.mark.parametrize("norm", ["bn", ""])
def test_aspp_branch_hands_its_norm_and_relu_to_the_fused_kernel(monkeypatch, conv_bias, norm):
    """FUSE_DEFORM_EPILOGUE: the branch passes the eval BatchNorm (or none) and the conv bias folded into
    one scale and shift; stood in for by the eager ops here (the kernel's own arithmetic is the interpreter
    test above), the branch output equals the unfused one."""
    from birefnet.models import blocks

    conv = dc.DeformableConv2d(6, 5, kernel_size=3, padding=1, bias=conv_bias)
    branch = blocks._ASPPBranch(conv, 5, norm).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in branch.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        if norm:
            branch.bn.running_mean.copy_(torch.randn(5, generator=g) * 0.1)
            branch.bn.running_var.copy_(torch.rand(5, generator=g) + 0.5)
    x = torch.randn(2, 6, 7, 8, generator=g)
    with torch.no_grad():
        expected = branch(x)
    calls = []

    def fake_fused(x, offset, weight, mask, stride, padding, dilation, *, scale=None, shift=None, relu=False):
        calls.append(relu)
        with monkeypatch.context() as m:  # the eager path itself, not this stand-in again
            m.setattr(dc, "USE_TRITON", False)
            out = dc.deform_conv2d(x, offset, weight, None, stride, padding, dilation, mask)
        if scale is not None:
            out = out * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
        return out.relu() if relu else out

    monkeypatch.setattr(blocks, "FUSE_DEFORM_EPILOGUE", True)
    monkeypatch.setattr(dc._deform_triton, "usable", lambda *a: True)
    monkeypatch.setattr(dc._deform_triton, "deform_conv2d_fused", fake_fused)
    with torch.no_grad():
        got = branch(x)
    assert calls == [True]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    with torch.enable_grad():  # with autograd the plain operations run (the kernel without an epilogue)
        branch(x)
    assert calls == [True, False]


@pytest.mark.skipif(
    not dc.onednn.available(), reason="the packed oneDNN product is taken on AVX-512 CPUs with oneDNN only"
)
def test_packed_product_weight_gives_the_same_values(monkeypatch):
    """The inference product's weight is packed once for all chunks (onednn.packed_weight); the values
    are the plain weight's bit for bit."""
    x, offset, weight, bias, mask = random_case(1, 16, 32, 40, 40, 3, 1, 1, 1, 1, scale=2.0)
    x, offset, weight, bias, mask = (t.float() for t in (x, offset, weight, bias, mask))
    monkeypatch.setattr(dc, "COLUMN_BUDGET_BYTES", 16 * 9 * 40 * 4 * 8)  # several chunks of 320 rows
    with (
        torch.inference_mode(),
        mock.patch.object(dc.onednn, "packed_weight", wraps=dc.onednn.packed_weight) as spy,
    ):
        packed = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    assert spy.call_count == 1  # once per call, not per chunk
    monkeypatch.setattr(dc.onednn, "packed_weight", lambda w: w.contiguous())
    with torch.inference_mode():
        plain = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    assert torch.equal(packed, plain)
