"""The C kernels compiled on first use (birefnet.models.cpu_kernels): window attention, deformable sampling,
LayerNorm of gathered rows."""

from __future__ import annotations

import logging

import pytest
import torch

from birefnet.models import cpu_kernels
from birefnet.models.backbones import swin

N, D = 144, 32


needs_kernel = pytest.mark.skipif(
    not cpu_kernels.available(), reason=f"C kernels unavailable: {cpu_kernels.unavailable_reason()}"
)


def _reference(qkv, heads, rows, mask, out, out_rows) -> None:
    """PyTorch's path of SwinBlock.forward_streamed for one chunk, in float64."""
    windows = qkv.shape[0]
    c = heads * D
    q, k, v = qkv.double().view(windows, N, 3, heads, D).permute(2, 0, 3, 1, 4).unbind(0)
    mask = mask.double()
    if rows is not None:
        q, mask = q.index_select(2, rows), mask.index_select(2, rows)
    o = swin._attend(q, k, v, mask)  # (windows, heads, nq, d)
    out.index_copy_(0, out_rows, o.transpose(1, 2).reshape(-1, c).to(out.dtype))


def _case(heads: int, windows: int, rows: torch.Tensor | None, per_window_mask: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    c = heads * D
    qkv = torch.randn(windows, N, 3 * c, generator=g)
    mask = torch.randn(1, heads, N, N, generator=g)
    if per_window_mask:  # a shift mask: tokens of two regions, each query sees its own region only
        region = torch.randint(0, 2, (windows, 1, N), generator=g)
        region[:, :, :2] = torch.tensor([0, 1])  # both regions present in every window
        masked = (region[..., :, None] != region[..., None, :]).float() * float("-inf")
        mask = (mask + masked.nan_to_num(0.0, neginf=float("-inf"))).contiguous()
    nq = N if rows is None else rows.numel()
    out_rows = torch.randperm(windows * nq + 50, generator=g)[: windows * nq]
    return qkv, mask, out_rows


@needs_kernel
@pytest.mark.parametrize(
    ("heads", "windows", "query_rows", "per_window_mask"),
    [
        (1, 1, None, False),
        (3, 5, None, True),
        (6, 4, "padded", False),
        (2, 7, "padded", True),
        (4, 3, "few", False),
    ],
)
def test_window_attention_equals_pytorch_path(heads, windows, query_rows, per_window_mask) -> None:
    """All query rows or a subset (the real slots of padded windows; a count that is no multiple of the
    kernel's row blocks), one mask for all windows or one per window with -inf entries, outputs scattered
    to permuted rows: the float64 PyTorch path's values to float32 rounding, other rows untouched."""
    rows = {None: None, "padded": torch.arange(0, N, 2), "few": torch.tensor([5, 77, 143])}[query_rows]
    qkv, mask, out_rows = _case(heads, windows, rows, per_window_mask)
    c = heads * D
    ours = torch.full((windows * (N if rows is None else rows.numel()) + 50, c), 7.0)
    ref = ours.clone()
    assert cpu_kernels.window_attention(qkv, heads, rows, mask, ours, out_rows)
    _reference(qkv, heads, rows, mask, ref, out_rows)
    assert torch.isfinite(ours).all()
    assert (ours - ref).abs().max() <= 2e-6 * ref.abs().max()
    untouched = torch.ones(ours.shape[0], dtype=torch.bool)
    untouched[out_rows] = False
    assert (ours[untouched] == 7.0).all()


@needs_kernel
def test_window_attention_declines_or_refuses_what_it_does_not_handle() -> None:
    """Other window sizes, head widths, dtypes or layouts: False and nothing written (the caller runs
    PyTorch's path). Out-of-range indices: IndexError before anything is written. Switched off: False."""
    qkv, mask, out_rows = _case(2, 2, None, False)
    out = torch.zeros(2 * N, 2 * D)
    assert not cpu_kernels.window_attention(qkv[:, :100].contiguous(), 2, None, mask, out, out_rows[:200])
    assert not cpu_kernels.window_attention(qkv.double(), 2, None, mask, out, out_rows)
    assert not cpu_kernels.window_attention(qkv, 3, None, mask, out, out_rows)  # head width 64 / 3
    assert not cpu_kernels.window_attention(qkv, 2, None, mask.transpose(-1, -2), out, out_rows)
    assert not cpu_kernels.window_attention(qkv, 2, None, mask, out.t().contiguous().t(), out_rows)
    assert not cpu_kernels.window_attention(qkv, 2, None, mask, out, out_rows.int())
    assert (out == 0).all()
    with pytest.raises(IndexError):
        cpu_kernels.window_attention(qkv, 2, None, mask, out[:-1], out_rows)
    with pytest.raises(IndexError):
        cpu_kernels.window_attention(qkv, 2, torch.tensor([0, 144]), mask, out, out_rows[:4])
    assert (out == 0).all()
    cpu_kernels.ENABLED = False
    try:
        assert not cpu_kernels.window_attention(qkv, 2, None, mask, out, out_rows)
    finally:
        cpu_kernels.ENABLED = True
    assert (out == 0).all()


@needs_kernel
@pytest.mark.parametrize(("side", "tokens"), [(64, 1000), (30, 4096)])
def test_swin_stage_with_the_c_kernel_equals_pytorch_attention(monkeypatch, side, tokens) -> None:
    """A Swin stage on the streamed path (window 12, head width 32: the kernel's shapes), with padded and
    shifted windows, two samples: the C kernel against PyTorch's attention, to float rounding."""
    monkeypatch.setattr(swin, "_STREAM_TOKENS", tokens)
    calls = []
    real = cpu_kernels.window_attention
    monkeypatch.setattr(cpu_kernels, "window_attention", lambda *a: calls.append(real(*a)) or calls[-1])
    torch.manual_seed(0)
    stage = swin.SwinStage(64, 2, 2, 12, 4.0, [0.0, 0.0], downsample=False).eval()
    with torch.no_grad():
        for block in stage.blocks:
            block.attn.relative_position_bias_table.normal_()
    x = torch.randn(2, side, side, 64)
    with torch.inference_mode():
        if not all(swin._onednn_linear_ok(x, *swin._linears(block)) for block in stage.blocks):
            pytest.skip("the streamed path needs PyTorch's oneDNN on an AVX-512 CPU")
        ours, _ = stage(x)
        assert calls and all(calls)  # every chunk attended by the kernel
        monkeypatch.setattr(swin, "C_ATTENTION", False)
        ref, _ = stage(x)
    assert (ours - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_build_failure_falls_back_with_one_warning(monkeypatch, tmp_path, caplog) -> None:
    """A compiler that fails: not available, the reason kept and logged once, nothing left in the cache."""
    monkeypatch.setenv("CC", "false")
    monkeypatch.setenv("BIREFNET_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_kernels, "cpu_has_avx512", lambda: True)
    monkeypatch.setattr(cpu_kernels, "_build_error", None)
    cpu_kernels._library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="birefnet.models.cpu_kernels"):
            assert not cpu_kernels.available()
            assert not cpu_kernels.available()
        assert "false failed" in cpu_kernels.build_error()
        assert "could not be built" in cpu_kernels.unavailable_reason()
        assert len([r for r in caplog.records if "not used" in r.getMessage()]) == 1
        assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    finally:
        cpu_kernels._library.cache_clear()


def test_switched_off_by_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("BIREFNET_C_KERNELS", "0")
    assert not cpu_kernels.available()
    assert "switched off" in cpu_kernels.unavailable_reason()


@needs_kernel
def test_library_is_cached_on_disk_by_source_and_flags(monkeypatch, tmp_path) -> None:
    """Built once into the cache directory (a name per source, flags and compiler), loaded from there
    afterwards."""
    monkeypatch.setenv("BIREFNET_CACHE", str(tmp_path))
    cpu_kernels._library.cache_clear()
    try:
        assert cpu_kernels.available()
        built = list((tmp_path / "kernels").iterdir())
        assert len(built) == 1 and built[0].suffix == ".so"
        cpu_kernels._library.cache_clear()
        assert cpu_kernels.available()
        assert list((tmp_path / "kernels").iterdir()) == built
    finally:
        cpu_kernels._library.cache_clear()


@needs_kernel
@pytest.mark.parametrize(
    ("batch", "channels", "kernel", "with_mask", "channels_last"),
    [(1, 64, 7, True, True), (2, 20, 3, True, False), (1, 16, 1, False, True), (2, 35, 3, False, False)],
)
def test_deform_columns_equal_the_pytorch_sampler(batch, channels, kernel, with_mask, channels_last) -> None:
    """The C sampler against deform_conv's PyTorch sampler: offsets that reach past every border (and so
    onto the zero border), one NaN offset, with and without the mask, channel counts that are no multiple of
    16, channels-last (strided) and contiguous offsets, one and two samples; float32 rounding apart."""
    from birefnet.models import deform_conv

    g = torch.Generator().manual_seed(kernel)
    h, w, pad = 11, 13, kernel // 2
    x = torch.randn(batch, channels, h, w, generator=g)
    offset = torch.randn(batch, 2 * kernel * kernel, h, w, generator=g) * 4
    offset[0, 0, 2, 3] = float("nan")
    mask = torch.rand(batch, kernel * kernel, h, w, generator=g) * 2 if with_mask else None
    if channels_last:
        x, offset = (t.contiguous(memory_format=torch.channels_last) for t in (x, offset))
    with torch.inference_mode():
        off, msk, base_y, base_x = deform_conv._sampling_grid(
            x, offset, mask, (kernel, kernel), (1, 1), (pad, pad), (1, 1), (h, w)
        )
        sampler = deform_conv._GatherSampler(x, 1)
        rows = slice(2, 9)
        args = (base_y[rows], base_x, off[:, :, rows], None if msk is None else msk[:, :, rows])
        ours = cpu_kernels.deform_columns(sampler.table, h, w, *args)
        deform_conv.C_SAMPLING = False
        try:
            ref = sampler(*args)
        finally:
            deform_conv.C_SAMPLING = True
    assert ours is not None and ours.shape == ref.shape
    nan = torch.isnan(ref)
    assert torch.equal(nan, torch.isnan(ours)) and nan.any() == (rows.start <= 2 < rows.stop)
    assert (ours[~nan] - ref[~nan]).abs().max() <= 1e-6 * ref[~nan].abs().max()


@needs_kernel
def test_deform_columns_decline_what_they_do_not_handle() -> None:
    """Autograd recording, float64, two offset groups: None (deform_conv then samples with PyTorch)."""
    from birefnet.models import deform_conv

    x = torch.randn(1, 8, 6, 6)
    offset, mask = torch.randn(1, 18, 6, 6), torch.rand(1, 9, 6, 6)
    off, msk, base_y, base_x = deform_conv._sampling_grid(
        x, offset, mask, (3, 3), (1, 1), (1, 1), (1, 1), (6, 6)
    )
    table = deform_conv._GatherSampler(x, 1).table
    assert cpu_kernels.deform_columns(table, 6, 6, base_y, base_x, off.requires_grad_(), msk) is None
    off = off.detach()
    assert cpu_kernels.deform_columns(table.double(), 6, 6, base_y, base_x, off, msk) is None
    off2, msk2, *_ = deform_conv._sampling_grid(
        torch.randn(1, 8, 6, 6),
        torch.randn(1, 36, 6, 6),
        torch.rand(1, 18, 6, 6),
        (3, 3),
        (1, 1),
        (1, 1),
        (1, 1),
        (6, 6),
    )
    assert cpu_kernels.deform_columns(table, 6, 6, base_y, base_x, off2, msk2) is None
    assert cpu_kernels.deform_columns(table, 6, 6, base_y, base_x, off, msk) is not None


@needs_kernel
@pytest.mark.parametrize(
    ("channels", "pieces", "indexed"), [(16, 1, True), (192, 1, True), (48, 4, True), (96, 1, False)]
)
def test_gather_layer_norm_equals_layer_norm_of_the_gathered_rows(channels, pieces, indexed) -> None:
    """Rows gathered (repeats and any order), concatenated ``pieces`` at a time and normalised: as PyTorch's
    gather and LayerNorm, against float64; rows with a large mean and a small spread included."""
    torch.manual_seed(0)
    src = torch.randn(300, channels)
    src[:50] = src[:50] * 0.01 + 100.0
    index = torch.randint(0, 300, (120 * pieces,)) if indexed else None
    weight, bias = torch.randn(pieces * channels), torch.randn(pieces * channels)
    rows = src if index is None else src[index]
    rows = rows.reshape(-1, pieces * channels)
    ref = torch.nn.functional.layer_norm(
        rows.double(), (pieces * channels,), weight.double(), bias.double(), 1e-5
    )
    torch_err = (
        (torch.nn.functional.layer_norm(rows, (pieces * channels,), weight, bias, 1e-5) - ref).abs().max()
    )
    ours = cpu_kernels.gather_layer_norm(src, index, pieces, weight, bias, 1e-5)
    assert ours is not None and ours.shape == ref.shape
    assert (ours - ref).abs().max() <= max(2 * torch_err, 1e-6 * ref.abs().max())


@needs_kernel
def test_gather_layer_norm_declines_or_refuses_what_it_does_not_handle() -> None:
    """Channels not a multiple of 16, float64, autograd recording: None; an index out of range: IndexError."""
    weight, bias = torch.ones(32), torch.zeros(32)
    index = torch.tensor([0, 1, 2])
    assert (
        cpu_kernels.gather_layer_norm(torch.randn(4, 24), index, 1, torch.ones(24), torch.zeros(24), 1e-5)
        is None
    )
    assert cpu_kernels.gather_layer_norm(torch.randn(4, 32).double(), index, 1, weight, bias, 1e-5) is None
    assert (
        cpu_kernels.gather_layer_norm(torch.randn(4, 32), index, 1, weight.requires_grad_(), bias, 1e-5)
        is None
    )
    weight = weight.detach()
    assert cpu_kernels.gather_layer_norm(torch.randn(4, 32), index, 2, weight, bias, 1e-5) is None  # 3 % 2
    with pytest.raises(IndexError):
        cpu_kernels.gather_layer_norm(torch.randn(4, 32), torch.tensor([0, 4]), 1, weight, bias, 1e-5)
    with pytest.raises(IndexError):
        cpu_kernels.gather_layer_norm(torch.randn(4, 32), torch.tensor([-1]), 1, weight, bias, 1e-5)


@needs_kernel
@pytest.mark.parametrize(("batch", "height", "width"), [(1, 8, 6), (2, 7, 5)])
def test_patch_merging_with_the_c_kernel_equals_pytorch(monkeypatch, batch, height, width) -> None:
    """PatchMerging's 2x2 concatenation and LayerNorm in one pass, odd sizes padded, two samples: as the
    permute-and-LayerNorm path, to float rounding."""
    torch.manual_seed(0)
    merge = swin.PatchMerging(32).eval()
    with torch.no_grad():
        merge.norm.weight.normal_()
        merge.norm.bias.normal_()
    x = torch.randn(batch, height, width, 32)
    calls = []
    real = cpu_kernels.gather_layer_norm
    monkeypatch.setattr(cpu_kernels, "gather_layer_norm", lambda *a: calls.append(real(*a)) or calls[-1])
    with torch.inference_mode():
        ours = merge(x)
        assert calls and calls[-1] is not None
        monkeypatch.setattr(swin, "C_LAYER_NORM", False)
        ref = merge(x)
    assert ours.shape == ref.shape == (batch, (height + 1) // 2, (width + 1) // 2, 64)
    assert (ours - ref).abs().max() <= 1e-5 * ref.abs().max()


@needs_kernel
def test_swin_stage_with_the_c_layer_norm_equals_pytorch(monkeypatch) -> None:
    """A streamed Swin stage (padded and shifted windows, patch merging) with its LayerNorms in C, against
    PyTorch's gathers and LayerNorms."""
    torch.manual_seed(0)
    stage = swin.SwinStage(64, 2, 2, 12, 4.0, [0.0, 0.0], downsample=True).eval()
    with torch.no_grad():
        for norm in (m for m in stage.modules() if isinstance(m, torch.nn.LayerNorm)):
            norm.weight.normal_()
            norm.bias.normal_()
    x = torch.randn(2, 30, 30, 64)
    with torch.inference_mode():
        if not all(swin._onednn_linear_ok(x, *swin._linears(block)) for block in stage.blocks):
            pytest.skip("the streamed path needs PyTorch's oneDNN on an AVX-512 CPU")
        ours = stage(x)
        monkeypatch.setattr(swin, "C_LAYER_NORM", False)
        ref = stage(x)
    for a, b in zip(ours, ref, strict=True):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()
