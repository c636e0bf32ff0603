"""Deformable convolution on GPUs as one Triton kernel: bilinear sampling fused with the product.

The eager path of :func:`birefnet.models.deform_conv.deform_conv2d` writes every sample to a column
tensor (``B·Ho·Wo × k·k·C`` values: 3.3 GB in bf16 for the 7x7 branch of a batch of 8 at 1024²) and
reads it back for one GEMM. On a GPU that traffic, not the arithmetic, is the cost. Here each program
computes a tile of ``BLOCK_P`` output pixels × ``BLOCK_O`` output channels: for every kernel point it
gathers the four corner vectors of its pixels from the channels-last input, blends them in float32
(bilinear weights × modulation), rounds the ``(BLOCK_P, BLOCK_C)`` sample tile to the input's dtype and
multiplies it with the matching ``(BLOCK_C, BLOCK_O)`` slice of the weight on the tensor cores, the sum
kept in float32. The columns never leave the chip. It computes the function of the eager path (same
clamping, same corner rule, the fraction taken from the offset), with rounding in a different order.

Inference only (no backward), one offset group, CUDA tensors; :func:`usable` says when it applies.
Under ``TRITON_INTERPRET=1`` the kernel also runs on CPU tensors (slowly): the tests use that.
"""

from __future__ import annotations

import torch

try:  # Triton ships with PyTorch's CUDA wheels; the CPU wheel has none, and then this path is off.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

__all__ = ["AVAILABLE", "deform_conv2d_fused", "usable"]

AVAILABLE = triton is not None

# Half types only: in float32 the kernel's IEEE products run on the CUDA cores and the 20 convolutions of
# a 1024² forward took 2x the gather + cuBLAS path on an H100 (docs/performance.md); it stays callable in
# float32 (the tests run it so, under the interpreter).
_AUTO_DTYPES = (torch.float16, torch.bfloat16)


def usable(x: torch.Tensor, groups: int, needs_grad: bool) -> bool:
    """Whether deform_conv2d should use the fused kernel: Triton present, a float16/bfloat16 CUDA input,
    one offset group, no autograd, and not inside an ONNX export or TorchScript trace."""
    return (
        AVAILABLE
        and x.is_cuda
        and x.dtype in _AUTO_DTYPES
        and groups == 1
        and not needs_grad
        and not torch.onnx.is_in_onnx_export()
        and not torch.jit.is_tracing()
    )


if AVAILABLE:

    @triton.jit
    def _deform_kernel(
        x_ptr,  # (B, H, W, C) channels-last, channel stride 1
        off_ptr,  # (B, 2·KH·KW, Ho, Wo), any strides
        mask_ptr,  # (B, KH·KW, Ho, Wo), any strides (unused without HAS_MASK)
        w_ptr,  # (KH·KW·C, O) contiguous: row k·C + c
        out_ptr,  # (B·Ho·Wo, O) contiguous
        scale_ptr,  # (O,) float32 (unused without HAS_AFFINE)
        shift_ptr,  # (O,) float32 (unused without HAS_AFFINE)
        P,
        H,
        W,
        O,  # noqa: E741 - the output-channel count, as in the shapes above
        Ho,
        Wo,
        sxb,
        sxh,
        sxw,
        sob,
        soc,
        soh,
        sow,
        smb,
        smc,
        smh,
        smw,
        stride_h,
        stride_w,
        pad_h,
        pad_w,
        dil_h,
        dil_w,
        size_class,  # log2 of the pixel count: only a key of the autotuner (b1 and b8 may want other tiles)
        C: tl.constexpr,  # compile-time: BiRefNet has one channel count, and the loop below unrolls
        KH: tl.constexpr,
        KW: tl.constexpr,
        HAS_MASK: tl.constexpr,
        HAS_AFFINE: tl.constexpr,  # out * scale + shift per output channel (an eval BatchNorm, a bias)
        RELU: tl.constexpr,
        PRECISION: tl.constexpr,
        BLOCK_P: tl.constexpr,
        BLOCK_O: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        # A 1-D grid (a 2-D one would cap the pixel blocks at CUDA's 65535 on its second axis: a batch of
        # 16 at 2048²). Output-channel blocks vary fastest, so the programs that gather the same pixels
        # run side by side and share the gathered input through L2.
        n_o = tl.cdiv(O, BLOCK_O)
        pid = tl.program_id(0)
        pid_o = pid % n_o
        pid_p = pid // n_o
        p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        p_ok = p < P
        plane = Ho * Wo
        b = p // plane
        rem = p - b * plane
        ho = rem // Wo
        wo = rem - ho * Wo
        o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
        o_ok = o < O
        cs = tl.arange(0, BLOCK_C)
        x_batch = x_ptr + b.to(tl.int64) * sxb
        off_pix = off_ptr + b.to(tl.int64) * sob + ho * soh + wo * sow
        mask_pix = mask_ptr + b.to(tl.int64) * smb + ho * smh + wo * smw
        height = H * 1.0  # float32 (H may reach the compiler as a Python int under torch.compile)
        width = W * 1.0
        acc = tl.zeros((BLOCK_P, BLOCK_O), dtype=tl.float32)
        for k in range(KH * KW):
            base_y = (ho * stride_h - pad_h + (k // KW) * dil_h).to(tl.float32)
            base_x = (wo * stride_w - pad_w + (k % KW) * dil_w).to(tl.float32)
            dy_raw = tl.load(off_pix + (2 * k) * soc, mask=p_ok, other=0.0).to(tl.float32)
            dx_raw = tl.load(off_pix + (2 * k + 1) * soc, mask=p_ok, other=0.0).to(tl.float32)
            if HAS_MASK:
                m = tl.load(mask_pix + k * smc, mask=p_ok, other=0.0).to(tl.float32)
            else:
                m = tl.full((BLOCK_P,), 1.0, tl.float32)
            # A NaN offset makes the sample NaN (as the eager path's NaN weights do); its corners are
            # then read at a harmless position.
            bad = (dy_raw != dy_raw) | (dx_raw != dx_raw)
            m = tl.where(bad, dy_raw + dx_raw, m)
            # Beyond [-1, H] x [-1, W] every corner is outside the image: clamped there, the sample is 0.
            dy = tl.minimum(tl.maximum(tl.where(bad, 0.0, dy_raw), -1.0 - base_y), height - base_y)
            dx = tl.minimum(tl.maximum(tl.where(bad, 0.0, dx_raw), -1.0 - base_x), width - base_x)
            fy = tl.floor(dy)
            fx = tl.floor(dx)
            ly = dy - fy  # exact: the fraction of the offset, not of the absolute position
            lx = dx - fx
            y0 = (base_y + fy).to(tl.int32)
            x0 = (base_x + fx).to(tl.int32)
            y1 = y0 + 1
            x1 = x0 + 1
            wy0 = (1.0 - ly) * m
            wy1 = ly * m
            w00 = wy0 * (1.0 - lx)
            w01 = wy0 * lx
            w10 = wy1 * (1.0 - lx)
            w11 = wy1 * lx
            ok_y0 = p_ok & (y0 >= 0) & (y0 < H)
            ok_y1 = p_ok & (y1 < H)  # y1 >= 0 always (y0 >= -1)
            ok_x0 = (x0 >= 0) & (x0 < W)
            ok_x1 = x1 < W
            row0 = x_batch + y0 * sxh
            row1 = x_batch + y1 * sxh
            for c0 in range(0, C, BLOCK_C):
                c = c0 + cs
                c_ok = c[None, :] < C
                v = w00[:, None] * tl.load(
                    (row0 + x0 * sxw)[:, None] + c[None, :], mask=(ok_y0 & ok_x0)[:, None] & c_ok, other=0.0
                ).to(tl.float32)
                v += w01[:, None] * tl.load(
                    (row0 + x1 * sxw)[:, None] + c[None, :], mask=(ok_y0 & ok_x1)[:, None] & c_ok, other=0.0
                ).to(tl.float32)
                v += w10[:, None] * tl.load(
                    (row1 + x0 * sxw)[:, None] + c[None, :], mask=(ok_y1 & ok_x0)[:, None] & c_ok, other=0.0
                ).to(tl.float32)
                v += w11[:, None] * tl.load(
                    (row1 + x1 * sxw)[:, None] + c[None, :], mask=(ok_y1 & ok_x1)[:, None] & c_ok, other=0.0
                ).to(tl.float32)
                w_rows = k * C + c
                wt = tl.load(
                    w_ptr + w_rows[:, None].to(tl.int64) * O + o[None, :],
                    mask=(c[:, None] < C) & o_ok[None, :],
                    other=0.0,
                )
                acc = tl.dot(v.to(wt.dtype), wt, acc, input_precision=PRECISION)
        if HAS_AFFINE:
            acc = acc * tl.load(scale_ptr + o, mask=o_ok, other=0.0)[None, :]
            acc += tl.load(shift_ptr + o, mask=o_ok, other=0.0)[None, :]
        if RELU:
            acc = tl.maximum(acc, 0.0)
        out = out_ptr + p[:, None].to(tl.int64) * O + o[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=p_ok[:, None] & o_ok[None, :])

    # Tile shapes timed on the first call per (C, O, kernel size, dtype, pixel-count class), then kept for
    # the process; few, because each is a compilation. The H100's choices are in docs/performance.md.
    _CONFIGS = [
        triton.Config({"BLOCK_P": 128, "BLOCK_O": 128}, num_warps=8, num_stages=2),
        triton.Config({"BLOCK_P": 64, "BLOCK_O": 256}, num_warps=8, num_stages=2),
        triton.Config({"BLOCK_P": 128, "BLOCK_O": 64}, num_warps=4, num_stages=2),
        triton.Config({"BLOCK_P": 64, "BLOCK_O": 128}, num_warps=4, num_stages=3),
    ]
    _tuned_kernel = triton.autotune(configs=_CONFIGS, key=["C", "O", "KH", "KW", "PRECISION", "size_class"])(
        _deform_kernel
    )


def _channel_block(channels: int) -> int:
    """Channels per inner step: a power of two in [16, 64] (tl.dot needs at least 16)."""
    return max(16, min(64, triton.next_power_of_2(channels)))


def deform_conv2d_fused(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    *,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    relu: bool = False,
    tile: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Modulated deformable convolution without bias, one offset group (shapes checked by the caller).

    Optionally with an epilogue on the float32 sums before the one rounding to the output type:
    ``sum * scale + shift`` per output channel (a bias, an eval-mode BatchNorm, or both folded), then
    ReLU. Each is a pass over the output saved (for swin_v1_l's first decoder block at 1024², batch 8:
    268 MB per ASPP branch and pass).

    Args:
        x: ``(B, C, H, W)`` float16, bfloat16 or float32 (copied to channels-last unless it already is).
        offset: ``(B, 2·kh·kw, Ho, Wo)``, interleaved ``(dy, dx)``; read in place, any dtype.
        weight: ``(O, C, kh, kw)``; used in the dtype of ``x``.
        mask: ``(B, kh·kw, Ho, Wo)`` or ``None``; read in place.
        stride, padding, dilation: pairs, as in :func:`~birefnet.models.deform_conv.deform_conv2d`.
        scale, shift: ``(O,)`` per-channel factor and offset of the epilogue, or both None for none.
        relu: ReLU after the affine epilogue.
        tile: ``(BLOCK_P, BLOCK_O)`` to bypass the autotuner (tests; the interpreter has no timer).

    Returns:
        ``(B, O, Ho, Wo)`` in the dtype of ``x``, channels-last in memory. float32 inputs are multiplied
        in IEEE float32, or in TF32 where ``torch.backends.cuda.matmul.allow_tf32`` is set, as cuBLAS
        would; half inputs on the tensor cores with float32 sums.
    """
    batch, channels, height, width = x.shape
    out_channels, _, kh, kw = weight.shape
    out_h, out_w = offset.shape[-2:]
    x_nhwc = x.permute(0, 2, 3, 1).contiguous()  # free when x is already channels-last
    weight_t = weight.to(x.dtype).permute(2, 3, 1, 0).reshape(kh * kw * channels, out_channels).contiguous()
    n_pixels = batch * out_h * out_w
    out = torch.empty((n_pixels, out_channels), device=x.device, dtype=x.dtype)
    mask_t = offset if mask is None else mask  # a valid pointer; not read without a mask
    if (scale is None) != (shift is None):
        raise ValueError("scale and shift come together (use ones or zeros for the missing one)")
    affine = scale is not None
    if affine:
        scale = scale.to(device=x.device, dtype=torch.float32).contiguous()
        shift = shift.to(device=x.device, dtype=torch.float32).contiguous()
    else:
        scale = shift = out  # valid pointers; not read without HAS_AFFINE
    precision = "tf32" if x.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"
    args = (
        x_nhwc,
        offset,
        mask_t,
        weight_t,
        out,
        scale,
        shift,
        n_pixels,
        height,
        width,
        out_channels,
        out_h,
        out_w,
        *x_nhwc.stride()[:3],
        *offset.stride(),
        *mask_t.stride(),
        *stride,
        *padding,
        *dilation,
        max(n_pixels, 1).bit_length(),
    )
    meta = {
        "C": channels,
        "KH": kh,
        "KW": kw,
        "HAS_MASK": mask is not None,
        "HAS_AFFINE": affine,
        "RELU": relu,
        "PRECISION": precision,
    }
    block_c = _channel_block(channels)
    if tile is None:

        def grid(cfg: dict) -> tuple[int]:
            return (triton.cdiv(out_channels, cfg["BLOCK_O"]) * triton.cdiv(n_pixels, cfg["BLOCK_P"]),)

        _tuned_kernel[grid](*args, **meta, BLOCK_C=block_c)
    else:
        block_p, block_o = tile
        grid_fixed = (triton.cdiv(out_channels, block_o) * triton.cdiv(n_pixels, block_p),)
        _deform_kernel[grid_fixed](*args, **meta, BLOCK_P=block_p, BLOCK_O=block_o, BLOCK_C=block_c)
    return out.view(batch, out_h, out_w, out_channels).permute(0, 3, 1, 2)
