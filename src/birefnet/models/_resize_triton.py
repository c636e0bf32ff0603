"""Bilinear resize (``align_corners=True``) of channels-last maps on GPUs as one Triton kernel.

BiRefNet's decoder resizes many-channel maps (the multi-scale features, the context of each block) with
bilinear ``align_corners=True`` interpolation. On an H100 (2026-11-28, swin_v1_l at 1024², bf16, batch 8)
ATen's channels-last CUDA kernel took 5.2 ms for the forward's ten resizes, e.g. 1.9 ms to bring an
(8, 384, 128²) map to 256²: ~0.5 GB moved, a tenth of the card's bandwidth. Here each program blends the
four corner vectors of a block of output pixels, a block of channels at a time, in float32: ATen's formula
(source = scale · target with scale = (in − 1) / (out − 1), the lower corner truncated, the upper clamped).

With the deformable kernel's epilogue (:data:`birefnet.models.blocks.FUSE_DEFORM_EPILOGUE`) on, batch 8
went 102.1 -> 108.2 images/s on that H100 with this kernel.

Inference only, CUDA tensors (and CPU tensors under ``TRITON_INTERPRET=1``, for the tests); used by
:func:`birefnet.models.blocks.resize` where :data:`birefnet.models.blocks.TRITON_RESIZE` is on (the
default).
"""

from __future__ import annotations

import torch

try:  # Triton ships with PyTorch's CUDA wheels; the CPU wheel has none, and then this path is off.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

__all__ = ["AVAILABLE", "resize_channels_last"]

AVAILABLE = triton is not None


if AVAILABLE:

    @triton.jit
    def _resize_kernel(
        x_ptr,  # (B, H, W, C) channels-last, contiguous
        out_ptr,  # (B, Ho, Wo, C) contiguous
        P,  # B·Ho·Wo
        H,
        W,
        Ho,
        Wo,
        C,
        scale_h,  # (H - 1) / (Ho - 1), 0 when Ho == 1 (align_corners=True)
        scale_w,
        BLOCK_P: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        p_ok = p < P
        ok = p_ok[:, None] & (c < C)[None, :]
        plane = Ho * Wo
        b = p // plane
        rem = p - b * plane
        ho = rem // Wo
        wo = rem - ho * Wo
        # ATen's align_corners=True rule: source = scale · target, the lower corner truncated, the upper
        # one clamped to the last row / column, weights from the fraction (float32)
        sy = ho.to(tl.float32) * scale_h
        sx = wo.to(tl.float32) * scale_w
        y0 = sy.to(tl.int32)
        x0 = sx.to(tl.int32)
        ly = sy - y0.to(tl.float32)
        lx = sx - x0.to(tl.float32)
        y1 = tl.where(y0 < H - 1, y0 + 1, y0)
        x1 = tl.where(x0 < W - 1, x0 + 1, x0)
        base = x_ptr + b.to(tl.int64) * H * W * C
        row0 = base + y0.to(tl.int64) * W * C
        row1 = base + y1.to(tl.int64) * W * C
        v00 = tl.load((row0 + x0 * C)[:, None] + c[None, :], mask=ok, other=0.0).to(tl.float32)
        v01 = tl.load((row0 + x1 * C)[:, None] + c[None, :], mask=ok, other=0.0).to(tl.float32)
        v10 = tl.load((row1 + x0 * C)[:, None] + c[None, :], mask=ok, other=0.0).to(tl.float32)
        v11 = tl.load((row1 + x1 * C)[:, None] + c[None, :], mask=ok, other=0.0).to(tl.float32)
        wy1 = ly[:, None]
        wx1 = lx[:, None]
        top = (1.0 - wx1) * v00 + wx1 * v01
        bottom = (1.0 - wx1) * v10 + wx1 * v11
        out = (1.0 - wy1) * top + wy1 * bottom
        target = out_ptr + p.to(tl.int64)[:, None] * C + c[None, :]
        tl.store(target, out.to(out_ptr.dtype.element_ty), mask=ok)


def resize_channels_last(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize with ``align_corners=True`` of a ``(B, C, H, W)`` map, output channels-last in memory.

    One program per block of output pixels × channels: each reads its four corner vectors (contiguous
    channels) and blends them in float32, ATen's formula. For half-precision maps ATen's channels-last CUDA
    kernel ran at a tenth of the memory bandwidth on an H100 (an (8, 384, 128²) bf16 map to 256²: 1.9 ms;
    docs/performance.md).

    Args:
        x: ``(B, C, H, W)`` float tensor (copied to channels-last unless it already is).
        size: ``(Ho, Wo)``.

    Returns:
        ``(B, C, Ho, Wo)`` in the dtype of ``x``, channels-last in memory.
    """
    batch, channels, height, width = x.shape
    out_h, out_w = size
    x_nhwc = x.permute(0, 2, 3, 1).contiguous()  # a view for a channels-last x
    out = torch.empty((batch, out_h, out_w, channels), device=x.device, dtype=x.dtype)
    scale_h = (height - 1) / (out_h - 1) if out_h > 1 else 0.0
    scale_w = (width - 1) / (out_w - 1) if out_w > 1 else 0.0
    pixels = batch * out_h * out_w
    block_c = min(128, triton.next_power_of_2(channels))
    block_p = max(1, 4096 // block_c)
    grid = (triton.cdiv(pixels, block_p), triton.cdiv(channels, block_c))
    _resize_kernel[grid](
        x_nhwc,
        out,
        pixels,
        height,
        width,
        out_h,
        out_w,
        channels,
        scale_h,
        scale_w,
        BLOCK_P=block_p,
        BLOCK_C=block_c,
    )
    return out.permute(0, 3, 1, 2)
