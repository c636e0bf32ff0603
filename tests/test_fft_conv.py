"""The FFT form of the large offset convolutions (issue 6) computes ``F.conv2d``, and is taken only where
it applies."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from birefnet.models import fft_conv
from birefnet.models.deform_conv import DeformableConv2d
from conftest import rel_error


def _case(batch, channels, out_channels, k, height, width, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height, width, generator=g, dtype=dtype)
    w = torch.randn(out_channels, channels, k, k, generator=g, dtype=dtype) * 0.05
    b = torch.randn(out_channels, generator=g, dtype=dtype)
    return x, w, b


@pytest.mark.parametrize(
    "shape",
    [
        (1, 64, 147, 7, 60, 60),  # BiRefNet's 7x7 offsets, 3 x 3 tiles with a cropped edge
        (2, 16, 40, 5, 37, 70),  # batch 2, non-square, a 5x5 kernel
        (1, 8, 3, 7, 26, 26),  # exactly one tile
    ],
)
def test_fft_conv_equals_conv2d_in_float64(shape):
    x, w, b = _case(*shape, dtype=torch.float64)
    ref = F.conv2d(x, w, b, padding=shape[3] // 2)
    out = fft_conv.conv2d(x, w, b)
    assert out.shape == ref.shape
    assert rel_error(out, ref) < 1e-12


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_fft_conv_float32_is_as_close_to_float64_as_the_direct_conv(layout):
    x, w, b = _case(1, 64, 147, 7, 70, 53, seed=1)
    x = x.contiguous(memory_format=layout)
    ref = F.conv2d(x.double(), w.double(), b.double(), padding=3)
    direct = F.conv2d(x, w, b, padding=3)
    out = fft_conv.conv2d(x, w, None).add_(b.view(1, -1, 1, 1))
    with_bias = fft_conv.conv2d(x, w, b)
    assert out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)  # as F.conv2d gives a channels-last input
    assert rel_error(out, ref) < 1e-6
    assert rel_error(with_bias, ref) < 1e-6
    assert rel_error(with_bias, ref) <= 2 * rel_error(direct, ref) + 1e-7


def test_kernel_spectrum_is_the_conjugate_rfft2_as_a_real_block_matrix():
    _, w, _ = _case(1, 4, 3, 5, 8, 8, dtype=torch.float64)
    n = 16
    block = fft_conv.kernel_spectrum(w, n, torch.float64)  # (F, 2C, 2O)
    spectrum = torch.fft.rfft2(w, s=(n, n)).conj().permute(2, 3, 1, 0).reshape(-1, 4, 3)  # (F, C, O)
    real, imag = spectrum.real, spectrum.imag
    top, bottom = block[:, :4].view(-1, 4, 3, 2), block[:, 4:].view(-1, 4, 3, 2)
    torch.testing.assert_close(top[..., 0], real)
    torch.testing.assert_close(top[..., 1], imag)
    torch.testing.assert_close(bottom[..., 0], -imag)
    torch.testing.assert_close(bottom[..., 1], real)


def test_applies_only_to_large_kernels_at_float32_cpu_inference(monkeypatch):
    x = torch.zeros(1, 64, 128, 128)
    w = torch.zeros(147, 64, 7, 7)
    with torch.inference_mode():
        assert fft_conv.applies(x, w, 1, 3)
        assert fft_conv.applies(x, w, (1, 1), (3, 3))
        assert not fft_conv.applies(x, w, 2, 3)  # stride
        assert not fft_conv.applies(x, w, 1, 2)  # not "same" padding
        assert not fft_conv.applies(x, w, 1, "same")
        assert not fft_conv.applies(x, torch.zeros(27, 64, 3, 3), 1, 1)  # 3x3 does not gain
        assert not fft_conv.applies(x[..., :64, :64], w, 1, 3)  # small map
        few = torch.zeros(1, 4, 128, 128), torch.zeros(5, 4, 7, 7)
        assert not fft_conv.applies(*few, 1, 3)  # few channels
        assert not fft_conv.applies(x.double(), w.double(), 1, 3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not fft_conv.applies(x, w, 1, 3)  # the opt-in bf16 keeps its own convolution
        monkeypatch.setattr(fft_conv, "ENABLED", False)
        assert not fft_conv.applies(x, w, 1, 3)
    monkeypatch.setattr(fft_conv, "ENABLED", True)
    assert not fft_conv.applies(x, w.requires_grad_(), 1, 3)  # autograd keeps the direct convolution


def test_deformable_offsets_by_fft_equal_the_direct_convolution(monkeypatch):
    conv = DeformableConv2d(64, 32, kernel_size=7, padding=3).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in conv.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    x = torch.randn(1, 64, 40, 33, generator=g).contiguous(memory_format=torch.channels_last)
    calls = []
    original = fft_conv.conv2d
    monkeypatch.setattr(fft_conv, "conv2d", lambda *a, **k: calls.append(1) or original(*a, **k))
    monkeypatch.setattr(fft_conv, "MIN_SIDE", 8)
    with torch.inference_mode():
        offset, mask = conv.offsets_and_mask(x)
        out = conv(x)
        assert len(calls) == 2
        monkeypatch.setattr(fft_conv, "ENABLED", False)
        ref_offset, ref_mask = conv.offsets_and_mask(x)
        ref = conv(x)
    assert len(calls) == 2
    assert rel_error(offset, ref_offset) < 1e-5
    assert rel_error(mask, ref_mask) < 1e-5
    assert rel_error(out, ref) < 1e-5
