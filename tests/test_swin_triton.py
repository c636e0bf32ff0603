"""The Triton kernels of the CUDA Swin path (:mod:`birefnet.models._swin_triton`): window attention read
and written in token order, and the LayerNorm that also writes the residual stream plus a bias; and the
decoder's channels-last bilinear resize (:mod:`birefnet.models._resize_triton`).

They run on GPUs; here Triton's CPU interpreter (``TRITON_INTERPRET=1``) runs their arithmetic, in a
subprocess (the interpreter is chosen when Triton is imported). bfloat16 products are not emulated by the
interpreter; float16 stands in for the half types. Skipped where Triton is not installed (the CPU wheel of
PyTorch has none: ``pip install triton`` to run them).
"""

from __future__ import annotations

import pytest
import torch

from birefnet.models import _resize_triton, _swin_triton
from birefnet.models.backbones import swin
from conftest import run_interpreted

needs_triton = pytest.mark.skipif(
    not (_swin_triton.AVAILABLE and _resize_triton.AVAILABLE),
    reason="Triton is not installed (pip install triton)",
)

# Each case: one Swin block on the kernel path against the same block's export path (pad, roll, reshape
# partition, explicit softmax; the original formulation) in float64. Window 7 (N = 49) and 12 (N = 144,
# several key blocks), with and without the shift, maps that need padding, both tile shapes that cut N.
_BLOCK_CHECK = r"""
import json, sys, torch
from birefnet.models import _resize_triton, _swin_triton
from birefnet.models.backbones import swin

torch.manual_seed(0)
results = []
cases = [(7, 3, (10, 13), (16, 16), True), (7, 0, (14, 14), (64, 64), True), (12, 6, (14, 17), (64, 64), True),
         (12, 6, (14, 17), (32, 16), False), (12, 0, (13, 12), (128, 32), True)]
plain = _swin_triton.window_attention
for ws, shift, (h, w), tile, fused in cases:
    block = swin.SwinBlock(64, 2, ws, shift).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(2, h, w, 64)
    swin.FUSED_RESIDUALS = fused
    swin._swin_triton.window_attention = lambda *a, tile=tile, **k: plain(*a, **k, tile=tile)
    with torch.no_grad():
        ref = block.double().forward_traceable(x.double())
        for dtype in (torch.float32, torch.float16):
            block = block.to(dtype)
            layout = swin.window_layout(h, w, ws, shift, device="cpu", dtype=dtype)
            got = block._forward_kernel(x.to(dtype), layout)
            err = float((got.double() - ref).abs().max() / ref.abs().max())
            results.append({"case": [ws, shift, h, w, fused], "dtype": str(dtype), "err": err,
                            "shape_ok": got.shape == ref.shape, "dtype_ok": got.dtype == dtype})

# under autocast (float32 weights and stream, half qkv): the unfused residuals, a float32 output
swin._swin_triton.window_attention = lambda *a, **k: plain(*a, **k, tile=(16, 16))
block = swin.SwinBlock(64, 2, 12, 6).eval()
with torch.no_grad():
    for p in block.parameters():
        p.normal_(0, 0.3)
x = torch.randn(2, 14, 17, 64)
with torch.no_grad():
    ref = block.double().forward_traceable(x.double())
    block = block.float()
    layout = swin.window_layout(14, 17, 12, 6, device="cpu", dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.float16):
        got = block._forward_kernel(x, layout)
err = float((got.double() - ref).abs().max() / ref.abs().max())
autocast = {"err": err, "dtype_ok": got.dtype == torch.float32}

# the LayerNorm kernel: norm and x + plus, into a new tensor and in place
norm = torch.nn.LayerNorm(96)
with torch.no_grad():
    norm.weight.normal_(1, 0.2)
    norm.bias.normal_(0, 0.2)
x = torch.randn(3, 5, 96) * 2 + 0.5
plus = torch.randn(96)
y, x_plus = _swin_triton.layer_norm(x, norm, plus=plus)
y_none, none = _swin_triton.layer_norm(x, norm)
inplace = x.clone()
y_in, same = _swin_triton.layer_norm(inplace, norm, plus=plus, x_plus=inplace)
with torch.no_grad():
    ref_y = norm(x)
results.append({
    "ln_err": float((y - ref_y).abs().max()), "plus_err": float((x_plus - (x + plus)).abs().max()),
    "none_ok": none is None and torch.equal(y_none, y),
    "inplace_ok": same is inplace and torch.equal(inplace, x_plus) and torch.equal(y_in, y),
})
results.append(autocast)
json.dump(results, sys.stdout)
"""


@needs_triton
def test_kernel_block_path_matches_the_original_formulation_under_the_interpreter():
    *blocks, ln, autocast = run_interpreted(_BLOCK_CHECK)
    assert len(blocks) == 10
    for r in blocks:
        assert r["shape_ok"] and r["dtype_ok"], r
        assert r["err"] < (3e-3 if r["dtype"] == "torch.float16" else 2e-6), r
    assert ln["ln_err"] < 1e-5 and ln["plus_err"] == 0.0 and ln["none_ok"] and ln["inplace_ok"], ln
    assert autocast["dtype_ok"] and autocast["err"] < 3e-3, autocast


def test_kernel_path_is_only_chosen_for_cuda_half_inference():
    block = swin.SwinBlock(64, 2, 7, 0).eval()
    x = torch.randn(1, 7, 7, 64)
    with torch.no_grad():
        assert not block._kernel_attends(x)  # a CPU tensor
        assert not block._kernel_attends(x.half())
    cuda = torch.device("cuda")
    assert not _swin_triton.usable(cuda, torch.float32, 32, needs_grad=False)  # exact mode keeps SDPA
    assert not _swin_triton.usable(cuda, torch.bfloat16, 24, needs_grad=False)  # head width not for tl.dot
    assert not _swin_triton.usable(cuda, torch.bfloat16, 32, needs_grad=True)  # no backward
    assert _swin_triton.usable(cuda, torch.bfloat16, 32, needs_grad=False) == _swin_triton.AVAILABLE


_RESIZE_CHECK = r"""
import json, sys, torch
import torch.nn.functional as F
from birefnet.models import _resize_triton

torch.manual_seed(0)
results = []
# up, down, one axis to a single row, channels not a power of two, a channels-last input
for (b, c, h, w), size, channels_last in [((2, 24, 7, 9), (16, 13), False), ((1, 40, 17, 12), (5, 8), True),
                                          ((1, 8, 6, 6), (1, 11), False)]:
    x = torch.randn(b, c, h, w)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ref = F.interpolate(x.double(), size=size, mode="bilinear", align_corners=True)
    for dtype in (torch.float32, torch.float16):
        got = _resize_triton.resize_channels_last(x.to(dtype), size)
        err = float((got.double() - ref).abs().max() / ref.abs().max())
        results.append({"dtype": str(dtype), "err": err, "shape_ok": got.shape == ref.shape,
                        "layout_ok": got.is_contiguous(memory_format=torch.channels_last), "dtype_ok": got.dtype == dtype})
json.dump(results, sys.stdout)
"""


@needs_triton
def test_resize_kernel_matches_interpolate_under_the_interpreter():
    results = run_interpreted(_RESIZE_CHECK)
    assert len(results) == 6
    for r in results:
        assert r["shape_ok"] and r["layout_ok"] and r["dtype_ok"], r
        assert r["err"] < (2e-3 if r["dtype"] == "torch.float16" else 1e-6), r


_WHOLE_MODEL_CHECK = r"""
import json, sys, torch
from birefnet import BiRefNet, BiRefNetConfig
from birefnet.models.backbones import swin

torch.manual_seed(0)
model = BiRefNet(BiRefNetConfig(backbone="swin_v1_t")).eval()
x = torch.rand(1, 3, 96, 64)
with torch.inference_mode():
    ref = model(x).logits
    plain = swin._swin_triton.window_attention
    swin._swin_triton.window_attention = lambda *a, **k: plain(*a, **k, tile=(16, 16))
    calls = []
    swin.SwinBlock._kernel_attends = lambda self, x: calls.append(1) or True  # as on CUDA
    swin.STREAM_WINDOWS = False  # the CPU's streamed and workspace paths never reach the kernel path
    swin._Workspace = lambda: None
    got = model(x).logits
json.dump({"err": float((got - ref).norm() / ref.norm()), "calls": len(calls)}, sys.stdout)
"""


@pytest.mark.slow  # ~35 s in the interpreter
@needs_triton
def test_whole_model_on_the_kernel_path_equals_the_default_path_under_the_interpreter():
    """Every Swin block of both backbone passes (stage maps from 24x16 down to 2x1, windows of 7, padded) on the
    kernel path with fused residuals, in float32: the logits of the default path."""
    r = run_interpreted(_WHOLE_MODEL_CHECK, timeout=900)
    assert r["calls"] == 24 and r["err"] < 1e-5, r
