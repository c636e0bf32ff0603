"""Modulated deformable convolution (DCNv2) in pure PyTorch.

BiRefNet's ``ASPPDeformable`` blocks use ``torchvision.ops.deform_conv2d``. torchvision cannot be a
dependency of this package (see docs/STYLE.md), so this module re-implements the same operator with the
same semantics, and ``DeformableConv2d`` with the official submodule names (they are state-dict keys).

How it is computed (eager mode):

1. The input is zero-padded by one pixel on the top/left and two on the bottom/right and laid out
   channels-last as a lookup table of ``(B·G·(H+3)·(W+3), C/G)`` rows: one row per pixel and offset group.
2. Every sample (output pixel × kernel point) has the integer position
   ``(ho·stride − pad + i·dil, wo·stride − pad + j·dil)`` plus its offset ``(dy, dx)``. The offset is clamped
   so that the position stays in ``[-1, H] × [-1, W]`` (beyond it every bilinear corner is outside the
   image and the sample is zero; clamped, it lands on the zero border with zero gradient, as torchvision's
   does), then split into integer and fractional parts: 4 corner row indices and 4 bilinear weights, the
   modulation mask folded into the weights. Corners outside the image are zero border rows. The fraction
   is taken from the offset, not from the absolute position, so it is exact in float32 wherever the
   position is (torchvision's float32 kernel rounds a position near 256 to 2^-16 pixel).
3. ``F.embedding_bag(mode="sum", per_sample_weights=...)`` gathers and blends the 4 corner rows of every
   sample in one fused pass over contiguous channel vectors: 3-6× faster on CPU than ``F.grid_sample``
   (whose NCHW kernel gathers each channel separately), index bookkeeping included.
4. One GEMM with the weight reshaped to ``(O, k·k·C)`` gives the output. k = 1 needs no special case: its
   columns are just the ``(L, C)`` sampled input, and the GEMM a pointwise convolution. Output rows are
   processed in chunks whose columns fit in ``COLUMN_BUDGET_BYTES``; with autograd on, each chunk's columns
   are recomputed in the backward pass instead of kept (torch.utils.checkpoint), so training memory
   stays at the size of the inputs, as with torchvision's kernel.

The offsets and mask are read in place when they are channels-last (the convolution of a channels-last
input gives them so), and the gather indices are int32 where the table allows.

For k = 7 the sampling and its bookkeeping are ~10 % of the time and the GEMM the rest: it has exactly the
FLOPs of the plain convolution. At inference (one offset group, no autograd) the product is
``columns @ weight^T`` written into a channels-last output, which MKL runs at the GEMM peak (on
AVX-512 CPUs oneDNN computes it faster, and each chunk is copied in; :mod:`birefnet.models.onednn`); the
transposed form used with autograd is ~12 % slower.
On one CPU thread the 20 deformable convolutions of a 1024x1024 BiRefNet forward cost 1.35x the plain
convolutions of the same shapes (benchmarks/deform_conv.py).

When the output is only an intermediate, :func:`deform_conv2d_rows` hands each chunk's product to a
callback instead of writing an output tensor: BiRefNet's ASPP blocks normalise, rectify and project
every deformable branch that way at CPU inference (:mod:`birefnet.models.blocks`).

On CUDA in float16/bfloat16 inference (Triton installed, one offset group, no autograd), one fused Triton
kernel (:mod:`birefnet.models._deform_triton`) samples and multiplies without a column tensor: 5.6x faster
than the path above for the 20 convolutions of a 1024² forward on an H100 (docs/performance.md).

During ``torch.onnx`` export a ``F.grid_sample`` formulation (ONNX ``GridSample``, opset 16+, no chunk
loop) is used instead; it computes the same function (tests check both against a float64 reference),
with ~1e-5 relative float32 rounding from the coordinate normalisation at 256-pixel maps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from birefnet.models import _deform_triton, cpu_kernels, fft_conv, onednn
from birefnet.models.tracing import is_tracing

__all__ = [
    "ACCELERATOR_COLUMN_BUDGET_BYTES",
    "COLUMN_BUDGET_BYTES",
    "USE_TRITON",
    "DeformableConv2d",
    "RowEpilogue",
    "deform_conv2d",
    "deform_conv2d_rows",
]

#: Upper bound, in bytes, on the largest per-chunk tensor (the sampled columns, or the GEMM result for
#: k=1); larger outputs are processed in chunks of output rows. The 7x7 deformable conv on a 64-channel
#: 256x256 map (BiRefNet at 1024x1024) would need 822 MB of columns unchunked. Chunks well below glibc's
#: 32 MB mmap threshold are recycled by the allocator instead of being page-faulted in afresh every time
#: (fresh memory fills at ~1.5 GB/s here against ~6.5 GB/s for reused memory), and they keep the transposed
#: GEMM as fast as the plain one; 16 MB costs nothing measurable against 64 MB or 256 MB chunks.
COLUMN_BUDGET_BYTES = 16 * 2**20

#: The same bound on GPUs and other accelerators, where page faults do not apply and every chunk costs a
#: few dozen kernel launches.
ACCELERATOR_COLUMN_BUDGET_BYTES = 256 * 2**20

#: On CUDA with Triton installed (PyTorch's CUDA wheels bring it), inference runs the fused Triton kernel
#: of :mod:`birefnet.models._deform_triton` instead of the gather-then-GEMM path below. A switch for
#: comparisons (``benchmarks/gpu.py`` mode ``bf16-gather``); both compute the same function.
USE_TRITON = True

#: At float32 CPU inference, sample with the C kernel of :mod:`birefnet.models.cpu_kernels` where it is
#: available (compiled on first use; AVX-512, Linux) instead of index arithmetic and ``F.embedding_bag``.
#: Read per call; ``benchmarks/ab_switch.py --switch c-sampling`` compares both.
C_SAMPLING = True

# Sampling-table sizes (rows) up to which the gather indices fit int32 and in-plane corner positions are
# exact float32 integers; beyond them int64 indices and float64 positions are used.
_INT32_INDEX_ROWS = 2**31 - 1
_FLOAT32_EXACT_ROWS = 2**24

#: ``epilogue(product, b, rows)`` of :func:`deform_conv2d_rows`: the ``(len(rows)·Wo, O)`` outputs of
#: sample ``b``'s output rows ``rows``.
RowEpilogue = Callable[[torch.Tensor, int, slice], None]


def _grid_sampling() -> bool:
    """Whether to sample with one GridSample over all output rows (during ONNX export) instead of the
    eager gather. A function of ours so that tests can force either path by patching it: patching
    ``torch.onnx.is_in_onnx_export`` itself let Dynamo's trace rules, built lazily during such a test,
    record the stand-in instead of the function, and later captures broke their graph at every
    deformable convolution."""
    return torch.onnx.is_in_onnx_export()


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return int(value[0]), int(value[1])


def deform_conv2d(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Modulated deformable 2-D convolution with ``torchvision.ops.deform_conv2d`` semantics.

    Each kernel point ``(i, j)`` of output pixel ``(ho, wo)`` samples the input bilinearly at
    ``(ho·sh − ph + i·dh + dy, wo·sw − pw + j·dw + dx)``; corners outside the image contribute zero (so a
    sample with ``h <= -1``, ``h >= H``, ``w <= -1`` or ``w >= W`` is zero). The sample is multiplied by
    the mask, then the samples are combined with ``weight`` as in an ordinary convolution.

    Args:
        x: Input ``(B, C, H, W)``, any floating dtype. Samples and the GEMM are computed in this dtype;
            sampling coordinates in at least float32 (a 256-pixel map in float16 would otherwise be
            addressed in 1/8-pixel steps).
        offset: ``(B, 2·G·kh·kw, Ho, Wo)`` sampling offsets in pixels, interleaved ``(dy, dx)`` per kernel
            point, kernel points row-major, offset groups outermost. ``G`` (the number of offset groups)
            is inferred from the channel count and must divide ``C``; group ``g`` moves input channels
            ``[g·C/G, (g+1)·C/G)``.
        weight: ``(O, C, kh, kw)`` convolution weight (grouped convolutions are not supported).
        bias: Optional ``(O,)`` bias.
        stride: Convolution stride, int or ``(sh, sw)``.
        padding: Zero padding, int or ``(ph, pw)``.
        dilation: Kernel dilation, int or ``(dh, dw)``.
        mask: Optional ``(B, G·kh·kw, Ho, Wo)`` modulation (DCNv2) multiplying each sample; ``None`` means 1.

    Returns:
        ``(B, O, Ho, Wo)`` in the dtype of ``x``, with ``Ho = (H + 2·ph − dh·(kh−1) − 1) // sh + 1`` and
        likewise ``Wo``.

    Raises:
        ValueError: If the shapes are inconsistent (the message says which tensor and what was expected).
    """
    (sh, sw), (ph, pw), (dh, dw), (out_h, out_w) = _geometry(
        x, offset, weight, bias, mask, stride, padding, dilation
    )
    batch, channels = x.shape[:2]
    out_channels, _, kh, kw = weight.shape
    n_points = kh * kw
    groups = offset.shape[1] // (2 * n_points)

    group_channels = channels // groups
    # With autograd on, chunks are recomputed in the backward pass (see _gather_and_multiply).
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, offset, mask)
    )
    if USE_TRITON and _deform_triton.usable(x, groups, needs_grad):
        # GPU inference: sampling fused with the product in one kernel; no column tensor in memory.
        out = _deform_triton.deform_conv2d_fused(x, offset, weight, mask, (sh, sw), (ph, pw), (dh, dw))
        return out if bias is None else out + bias.to(out.dtype).view(1, out_channels, 1, 1)
    weight = weight.to(x.dtype)
    offset, mask, base_y, base_x = _sampling_grid(
        x, offset, mask, (kh, kw), (sh, sw), (ph, pw), (dh, dw), (out_h, out_w)
    )

    if _grid_sampling():
        # One GridSample over all output rows: no Python loop in the graph; the runtime plans its memory.
        columns = _GridSampler(x, groups)(_positions(base_y, base_x), offset, mask)
        # (O, C, kh, kw) -> (G, O, Cg·K), matching the columns (B, G, Cg·K, L); summed over the groups.
        group_weight = weight.reshape(out_channels, groups, group_channels * n_points).transpose(0, 1)
        out = torch.matmul(group_weight, columns).sum(dim=1)
        out = out.view(batch, out_channels, out_h, out_w)
    else:
        out = _gather_and_multiply(x, weight, base_y, base_x, offset, mask, needs_grad)
    if bias is not None:
        out = out + bias.to(out.dtype).view(1, out_channels, 1, 1)
    return out


def _geometry(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mask: torch.Tensor | None,
    stride: int | tuple[int, int],
    padding: int | tuple[int, int],
    dilation: int | tuple[int, int],
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Stride, padding and dilation as pairs, and the output size ``(Ho, Wo)``, after checking the shapes."""
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    dh, dw = _pair(dilation, "dilation")
    _check_shapes(x, offset, weight, bias, mask, (sh, sw), (ph, pw), (dh, dw))
    height, width = x.shape[-2:]
    kh, kw = weight.shape[-2:]
    out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return (sh, sw), (ph, pw), (dh, dw), (out_h, out_w)


def _check_shapes(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mask: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> None:
    """Raise ValueError naming the tensor whose shape does not fit (skipped under the TorchScript tracer,
    where shapes are traced values and the traced example already fits)."""
    if torch.jit.is_tracing():
        return
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    if min(sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise ValueError(
            f"stride and dilation must be >= 1 and padding >= 0, got stride {stride}, padding {padding}, "
            f"dilation {dilation}"
        )
    if x.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"weight must be (O, C, kh, kw), got shape {tuple(weight.shape)}")
    batch, channels, height, width = x.shape
    out_channels, weight_channels, kh, kw = weight.shape
    if weight_channels != channels:
        raise ValueError(
            f"weight has {weight_channels} input channels but x has {channels}; grouped deformable "
            "convolutions are not supported (pass a full (O, C, kh, kw) weight)"
        )
    n_points = kh * kw
    out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if out_h <= 0 or out_w <= 0:
        raise ValueError(
            f"input {height}x{width} is too small for kernel {kh}x{kw} with padding {(ph, pw)} and "
            f"dilation {(dh, dw)}: the output would be {out_h}x{out_w}"
        )
    if offset.dim() != 4 or offset.shape[1] % (2 * n_points) != 0:
        raise ValueError(
            f"offset must be (B, 2*G*{kh}*{kw}, Ho, Wo) for some number of offset groups G, "
            f"got shape {tuple(offset.shape)}"
        )
    groups = offset.shape[1] // (2 * n_points)
    if groups == 0 or channels % groups != 0:
        raise ValueError(
            f"offset has {offset.shape[1]} channels = {groups} offset groups of 2*{n_points}, which does not "
            f"divide the {channels} input channels"
        )
    if tuple(offset.shape) != (batch, 2 * groups * n_points, out_h, out_w):
        raise ValueError(
            f"offset must have shape {(batch, 2 * groups * n_points, out_h, out_w)} for x {tuple(x.shape)} "
            f"and this kernel/stride/padding/dilation, got {tuple(offset.shape)}"
        )
    if mask is not None and tuple(mask.shape) != (batch, groups * n_points, out_h, out_w):
        raise ValueError(
            f"mask must have shape {(batch, groups * n_points, out_h, out_w)} (one value per offset group, "
            f"kernel point and output pixel), got {tuple(mask.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (out_channels,):
        raise ValueError(f"bias must have shape ({out_channels},), got {tuple(bias.shape)}")


def deform_conv2d_rows(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    epilogue: RowEpilogue,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: torch.Tensor | None = None,
) -> None:
    """:func:`deform_conv2d` (without bias) handed out chunk by chunk instead of as one output tensor.

    For inference on the CPU when the output is only an intermediate: BiRefNet's ASPP branches
    (256 channels, 67 MB at a 256x256 map) are normalised, rectified and projected to 64 channels
    right away, so the caller (:meth:`birefnet.models.blocks._ASPPHead._fuse`) applies all of that
    to each chunk while it is in the cache, and the full-size output is never written, read back or
    page-faulted in. Chunks and products are those of the channels-last inference path, so the
    values are the ones :func:`deform_conv2d` returns (before its bias).

    Args:
        x, offset, weight, stride, padding, dilation, mask: as :func:`deform_conv2d`; one offset group.
        epilogue: called as ``epilogue(product, b, rows)`` once per sample ``b`` and chunk of output
            rows ``rows`` (a slice of ``range(Ho)``, chunks in order, covering every row once), with
            ``product`` the ``(len(rows)·Wo, O)`` outputs of those rows, row-major (pixel
            ``(ho, wo)`` at ``(ho − rows.start)·Wo + wo``). ``product`` is a temporary the epilogue
            may modify in place.

    Raises:
        ValueError: for inconsistent shapes (see :func:`deform_conv2d`), more than one offset group,
            or inputs that need gradients (the chunks are not kept for a backward pass).
    """
    stride, padding, dilation, (out_h, out_w) = _geometry(
        x, offset, weight, None, mask, stride, padding, dilation
    )
    channels = x.shape[1]
    out_channels, _, kh, kw = weight.shape
    if offset.shape[1] != 2 * kh * kw:
        raise ValueError(f"deform_conv2d_rows takes one offset group, got {offset.shape[1] // (2 * kh * kw)}")
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, offset, mask)):
        raise ValueError("deform_conv2d_rows is for inference: run it under torch.inference_mode()")
    weight = weight.to(x.dtype)
    offset, mask, base_y, base_x = _sampling_grid(
        x, offset, mask, (kh, kw), stride, padding, dilation, (out_h, out_w)
    )
    rows_per_chunk = _rows_per_chunk(x, out_h, out_w, kh * kw * channels, out_channels)
    _gather_and_multiply_nhwc(
        _GatherSampler(x, 1), weight, base_y, base_x, offset, mask, rows_per_chunk, epilogue
    )


def _sampling_grid(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor | None,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    out_size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Offsets and mask in sampling order, and the kernel-point positions without offsets.

    Returns ``(B, G, Ho, Wo, K, 2)`` offsets and ``(B, G, Ho, Wo, K)`` mask (or None) with each pixel's
    values together in memory (the order the samples are produced in, so every tensor derived from
    them is contiguous): views of channels-last inputs, else reordered copies (3 values per kernel
    point, against C/G per kernel point for the samples), in float32 at least (sampling coordinates need more than float16's 11 significant bits; float64
    stays float64), and the integer positions of the kernel points as rows ``(Ho, 1, K)`` and
    columns ``(1, Wo, K)``.
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (out_h, out_w) = kernel, stride, padding, dilation, out_size
    batch = x.shape[0]
    n_points = kh * kw
    groups = offset.shape[1] // (2 * n_points)
    coord_dtype = torch.promote_types(x.dtype, torch.float32)
    offset = offset.to(coord_dtype).view(batch, groups, n_points, 2, out_h, out_w).permute(0, 1, 4, 5, 2, 3)
    # Channels-last offsets (from a convolution of a channels-last input) already hold each pixel's
    # (K, 2) values together: the per-chunk operations read them in place, with no reordering copy.
    if offset.stride()[-2:] != (2, 1):
        offset = offset.contiguous()
    if mask is not None:
        mask = mask.to(coord_dtype).view(batch, groups, n_points, out_h, out_w).permute(0, 1, 3, 4, 2)
        if mask.stride(-1) != 1:
            mask = mask.contiguous()
    kernel_i = torch.arange(kh, device=x.device, dtype=coord_dtype).repeat_interleave(kw) * dh
    kernel_j = torch.arange(kw, device=x.device, dtype=coord_dtype).repeat(kh) * dw
    rows = torch.arange(out_h, device=x.device, dtype=coord_dtype) * sh - ph
    cols = torch.arange(out_w, device=x.device, dtype=coord_dtype) * sw - pw
    base_y = (rows[:, None] + kernel_i[None, :])[:, None, :]
    base_x = (cols[:, None] + kernel_j[None, :])[None, :, :]
    return offset, mask, base_y, base_x


def _rows_per_chunk(
    x: torch.Tensor, out_h: int, out_w: int, columns_per_pixel: int, out_channels: int
) -> int:
    """Output rows per chunk: the largest per-chunk tensor (the columns, ``columns_per_pixel`` values per
    output pixel, or the product, ``out_channels``) within the device's budget, in equal chunks."""
    bytes_per_row = x.shape[0] * out_w * x.element_size() * max(columns_per_pixel, out_channels)
    budget = COLUMN_BUDGET_BYTES if x.device.type == "cpu" else ACCELERATOR_COLUMN_BUDGET_BYTES
    rows_per_chunk = max(1, budget // bytes_per_row)
    return math.ceil(out_h / math.ceil(out_h / rows_per_chunk))


def _positions(base_y: torch.Tensor, base_x: torch.Tensor) -> torch.Tensor:
    """(R, 1, K) row and (1, Wo, K) column positions -> (R, Wo, K, 2) (y, x) positions."""
    return torch.stack(torch.broadcast_tensors(base_y, base_x), dim=-1)


def _gather_and_multiply(
    x: torch.Tensor,
    weight: torch.Tensor,
    base_y: torch.Tensor,
    base_x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor | None,
    recompute: bool,
) -> torch.Tensor:
    """Eager path of deform_conv2d: (B, O, Ho·Wo), sampled and multiplied in chunks of output rows.

    With ``recompute`` (autograd on), each chunk's columns are recomputed in the backward pass.
    """
    batch, groups, out_h, out_w, n_points, _ = offset.shape
    out_channels, channels = weight.shape[:2]
    group_channels = channels // groups
    sampler = _GatherSampler(x, groups)
    rows_per_chunk = _rows_per_chunk(x, out_h, out_w, groups * n_points * group_channels, out_channels)

    # In training, keeping every chunk's columns for the backward pass would cost the whole column tensor
    # (822 MB for the 7x7 at 256x256) per call; recomputing them in the backward pass (as torchvision's
    # kernel does) keeps training memory at the size of the input, for one more (cheap) sampling pass.
    if groups == 1 and not recompute:
        return _gather_and_multiply_nhwc(sampler, weight, base_y, base_x, offset, mask, rows_per_chunk)
    # (O, C, kh, kw) -> (G, O, K·Cg), matching the columns (B, G, L, K·Cg).
    group_weight = (
        weight.reshape(out_channels, groups, group_channels, n_points)
        .permute(1, 0, 3, 2)
        .reshape(groups, out_channels, n_points * group_channels)
    )
    outputs = []
    for start in range(0, out_h, rows_per_chunk):
        rows = slice(start, min(start + rows_per_chunk, out_h))
        chunk = (base_y[rows], base_x, offset[:, :, rows], None if mask is None else mask[:, :, rows])
        if recompute:
            out = checkpoint(
                _sample_and_multiply,
                sampler,
                group_weight,
                *chunk,
                use_reentrant=False,
                preserve_rng_state=False,
            )
        else:
            out = _sample_and_multiply(sampler, group_weight, *chunk)
        outputs.append(out)
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
    return out.view(batch, out_channels, out_h, out_w)


def _gather_and_multiply_nhwc(
    sampler: _GatherSampler,
    weight: torch.Tensor,
    base_y: torch.Tensor,
    base_x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor | None,
    rows_per_chunk: int,
    epilogue: RowEpilogue | None = None,
) -> torch.Tensor | None:
    """Inference path for one offset group: ``columns @ weight^T`` straight into a channels-last output.

    ``(L, K·C) @ (K·C, O)`` runs at the GEMM peak here (67 GFLOP/s on 2 threads for the 7x7 block
    at 256x256), where the transposed ``(O, K·C) @ (K·C, L)`` form reaches ~59; each chunk's product
    is written in place into its rows of a ``(B, Ho, Wo, O)`` buffer, so there is no concatenation
    either. Returns ``(B, O, Ho, Wo)`` in channels-last memory format (values as the NCHW path).

    With ``epilogue``, no output is built: each chunk's ``(R·Wo, O)`` product (no bias) is handed to
    ``epilogue(product, b, rows)`` while it is still in the cache, and None is returned.
    """
    batch, _, out_h, out_w, n_points, _ = offset.shape
    out_channels, channels = weight.shape[:2]
    # (O, C, kh, kw) -> (K·C, O), matching the columns' (kernel point, channel) order
    weight_t = weight.reshape(out_channels, channels, n_points).permute(2, 1, 0).reshape(-1, out_channels)
    # On AVX-512 CPUs oneDNN runs this product 15-25 % faster than MKL's mm (7x7 at 256²: 685 -> 577 ms
    # with the copy into the output included); it needs the (O, K·C) layout and returns a fresh chunk.
    # The weight is packed into oneDNN's blocked layout once for all chunks, not reordered in each
    # product (same values bit for bit; the 7x7 at 256², 52 chunks of 1280 rows: 200 -> 211 GFLOP/s).
    weight_rows = onednn.packed_weight(weight_t.t()) if onednn.use_onednn(weight) else None
    out = None
    if epilogue is None:
        out = offset.new_empty((batch, out_h, out_w, out_channels), dtype=weight.dtype)
    for start in range(0, out_h, rows_per_chunk):
        rows = slice(start, min(start + rows_per_chunk, out_h))
        columns = sampler(
            base_y[rows], base_x, offset[:, :, rows], None if mask is None else mask[:, :, rows]
        )  # (B, 1, R·Wo, K·C)
        for b in range(batch):
            target = None if out is None else out[b, rows].view(-1, out_channels)
            if weight_rows is None:
                product = torch.mm(columns[b, 0], weight_t, out=target)
            else:
                product = onednn.linear(columns[b, 0], weight_rows, None)
                if target is not None:
                    target.copy_(product)
            if epilogue is not None:
                epilogue(product, b, rows)
    return None if out is None else out.permute(0, 3, 1, 2)


def _sample_and_multiply(
    sampler: _GatherSampler,
    group_weight: torch.Tensor,
    base_y: torch.Tensor,
    base_x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """One chunk of output rows: columns (B, G, L, K·Cg) times the (G, O, K·Cg) weight -> (B, O, L)."""
    batch, groups = offset.shape[:2]
    # (G, O, K·Cg) @ (B, G, K·Cg, L), the columns transposed in place -> (B, G, O, L): the output comes out
    # NCHW, and at chunks of a few thousand columns this GEMM is as fast as (L, K·Cg) @ (K·Cg, O), which
    # would need a transposing copy of the output.
    columns = sampler(base_y, base_x, offset, mask).transpose(-1, -2)
    if batch == 1 and groups == 1:
        return torch.mm(group_weight[0], columns[0, 0])[None]
    out = torch.matmul(group_weight, columns)
    return out.sum(dim=1) if groups > 1 else out.squeeze(1)


class _GatherSampler:
    """Bilinear sampling via ``F.embedding_bag`` over a zero-bordered channels-last table (eager path)."""

    def __init__(self, x: torch.Tensor, groups: int) -> None:
        batch, channels, height, width = x.shape
        # Table rows for pixels -1 .. H+1 by -1 .. W+1, the border ones zero: every corner of a position
        # clamped to [-1, H] x [-1, W] is a row, and each one outside the image contributes zero.
        self.padded_w = width + 3
        plane = (height + 3) * (width + 3)
        padded = F.pad(x, (1, 2, 1, 2))
        self.table = (
            padded.view(batch, groups, channels // groups, height + 3, width + 3)
            .permute(0, 1, 3, 4, 2)
            .reshape(batch * groups * plane, channels // groups)
            .contiguous()  # rows must be contiguous (for B = G = 1 the reshape is a column-major view)
        )
        self.height, self.width = height, width
        # Table rows of the four corners (top-left, top-right, bottom-left, bottom-right) of a sample whose
        # top-left corner is pixel (0, 0), for each (batch, group) plane: (B, G, 1, 1, 1, 4), broadcasting
        # against the samples (B, G, R, Wo, K) and their corners. The +1s move pixel (-1, -1) to row 0 of
        # its plane. Built on the device from arange (not torch.tensor of a list): no host-to-device
        # copy, so a CUDA graph can capture the forward.
        rows = batch * groups * plane
        # 4-byte indices where they reach every row: embedding_bag reads them as fast, and the index
        # bookkeeping writes half the bytes.
        self.index_dtype = torch.int32 if rows <= _INT32_INDEX_ROWS else torch.int64
        corner = torch.arange(4, device=x.device)
        plane_start = torch.arange(batch * groups, device=x.device) * plane + self.padded_w + 1
        self.corner_rows = (
            (plane_start[:, None] + (corner // 2) * self.padded_w + corner % 2)
            .to(self.index_dtype)
            .view(batch, groups, 1, 1, 1, 4)
        )
        # In-plane corner positions are integers below the plane size: exact in float32 up to 2^24
        # (maps up to ~4000 x 4000), in float64 beyond.
        coord_dtype = torch.promote_types(x.dtype, torch.float32)
        self.position_dtype = coord_dtype if plane <= _FLOAT32_EXACT_ROWS else torch.float64

    def __call__(
        self, base_y: torch.Tensor, base_x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Samples at ``(base_y, base_x) + offset`` -> columns ``(B, G, R·Wo, K·Cg)``.

        ``base_y`` (R, 1, K) and ``base_x`` (1, Wo, K) hold the integer kernel-point rows and columns,
        ``offset`` (B, G, R, Wo, K, 2) the (dy, dx) offsets, ``mask`` (B, G, R, Wo, K) or ``None``.
        """
        if C_SAMPLING and self.table.device.type == "cpu" and not is_tracing():
            columns = cpu_kernels.deform_columns(
                self.table, self.height, self.width, base_y, base_x, offset, mask
            )
            if columns is not None:  # the same samples, computed in one pass (csrc/deform_sampling.c)
                return columns
        batch, groups, n_rows, out_w, n_points, _ = offset.shape
        # Outside [-1, H] x [-1, W] every corner is outside the image: clamping puts such samples on the
        # zero border with zero gradient, as torchvision returns zero there. Each coordinate alone, so
        # the bounds broadcast from the small base tensors instead of being built at full size.
        dy = torch.clamp(offset[..., 0], -1 - base_y, self.height - base_y)
        dx = torch.clamp(offset[..., 1], -1 - base_x, self.width - base_x)
        with torch.no_grad():
            floor_y, floor_x = dy.floor(), dx.floor()
            # Top-left corner's row relative to pixel (0, 0) of its plane: (y0 * padded_w + x0), integers
            # computed exactly in floating point. A NaN offset reads a valid (border) row, pixel (-1, -1);
            # its NaN weights still make the output NaN.
            pw = self.padded_w
            start = torch.add(base_x.to(self.position_dtype), base_y.to(self.position_dtype), alpha=pw)
            top_left = torch.add(floor_x.to(self.position_dtype), floor_y.to(self.position_dtype), alpha=pw)
            top_left = top_left.add_(start).nan_to_num_(-1 - pw)
            index = top_left.to(self.index_dtype).unsqueeze(-1) + self.corner_rows
        # The fractional part of a float is exact; taking it from the offset rather than from the absolute
        # position avoids rounding the position to the precision of its magnitude (torchvision's float32
        # kernel rounds a position near 256 to 2^-16 pixel).
        frac_y, frac_x = dy - floor_y, dx - floor_x
        near_y, far_y = 1 - frac_y, frac_y
        if mask is not None:
            near_y, far_y = near_y * mask, far_y * mask
        near_x, far_x = 1 - frac_x, frac_x
        # Corners in corner_rows order. Four products of (..., K) tensors, stacked: a broadcast
        # (..., 2, 1) * (..., 1, 2) product runs its inner loop over 2 elements and cost 3x more.
        weights = torch.stack([near_y * near_x, near_y * far_x, far_y * near_x, far_y * far_x], dim=-1).to(
            self.table.dtype
        )
        columns = F.embedding_bag(
            index.view(-1, 4), self.table, per_sample_weights=weights.view(-1, 4), mode="sum"
        )
        return columns.view(batch, groups, n_rows * out_w, n_points * self.table.shape[1])


class _GridSampler:
    """Bilinear sampling via ``F.grid_sample`` (ONNX-exportable path; same function as _GatherSampler)."""

    def __init__(self, x: torch.Tensor, groups: int) -> None:
        batch, channels, height, width = x.shape
        self.dtype = x.dtype
        # Sampled in at least float32: grid coordinates in float16 would address a 256-pixel map in
        # 1/8-pixel steps.
        sample_dtype = torch.promote_types(x.dtype, torch.float32)
        self.input = x.reshape(batch * groups, channels // groups, height, width).to(sample_dtype)

    def __call__(self, base: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Samples at ``base + offset`` -> columns ``(B, G, Cg·K, R·Wo)`` (shapes as in _GatherSampler)."""
        batch, groups, n_rows, out_w, n_points, _ = offset.shape
        # align_corners=False maps pixel p to (2p + 1) / size - 1 and back, which is defined for 1-pixel
        # maps too (align_corners=True would divide by size - 1 = 0). Zeros padding drops each
        # out-of-image corner, as torchvision does. (Divided by Python ints from the input's shape: the
        # TorchScript tracer keeps those dynamic, where it would freeze a tensor built from them.)
        height, width = self.input.shape[-2:]
        pos_y, pos_x = (base + offset).unbind(dim=-1)
        grid = torch.stack([(pos_x * 2 + 1) / width - 1, (pos_y * 2 + 1) / height - 1], dim=-1)
        # (B*G, K, R*Wo, 2) with (x, y) last, so samples come out as (B*G, Cg, K, R*Wo).
        grid = grid.permute(0, 1, 4, 2, 3, 5)
        grid = grid.reshape(batch * groups, n_points, n_rows * out_w, 2).to(self.input.dtype)
        samples = F.grid_sample(self.input, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        samples = samples.view(batch, groups, -1, n_points, n_rows * out_w)
        if mask is not None:
            mask = mask.permute(0, 1, 4, 2, 3).reshape(batch, groups, 1, n_points, n_rows * out_w)
            samples = samples * mask.to(samples.dtype)
        return samples.reshape(batch, groups, -1, n_rows * out_w).to(self.dtype)


class DeformableConv2d(nn.Module):
    """Modulated deformable convolution block of BiRefNet (``ASPPDeformable``'s branches).

    Offsets and modulation are predicted from the input by two ordinary convolutions with the same kernel,
    stride and padding; both start at zero, so at initialisation the block equals ``regular_conv`` (zero
    offsets, mask ``2·sigmoid(0) = 1``). Submodule names are the official state-dict keys.

    Args:
        in_channels: Input channels ``C``.
        out_channels: Output channels ``O``.
        kernel_size: Square kernel size ``k`` (BiRefNet uses 1, 3 and 7).
        stride: Stride of all three convolutions.
        padding: Zero padding of all three convolutions (BiRefNet uses ``k // 2``).
        bias: Whether ``regular_conv`` has a bias (the offset and modulator convolutions always do).

    Shape:
        ``(B, C, H, W) -> (B, O, Ho, Wo)``, as ``nn.Conv2d(C, O, k, stride, padding)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.padding = padding
        n_points = kernel_size * kernel_size
        self.offset_conv = nn.Conv2d(in_channels, 2 * n_points, kernel_size, stride, padding, bias=True)
        self.modulator_conv = nn.Conv2d(in_channels, n_points, kernel_size, stride, padding, bias=True)
        self.regular_conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        self.reset_offsets()

    def reset_offsets(self) -> None:
        """Zero the offset and modulator convolutions (the block then equals ``regular_conv``)."""
        for conv in (self.offset_conv, self.modulator_conv):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def offsets_and_mask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 2·k², Ho, Wo)`` offsets and ``(B, k², Ho, Wo)`` modulation in (0, 2) predicted from ``x``."""
        # Offsets and modulation from one convolution with the two weights stacked: one pass over
        # the input, and a wider GEMM (the 7x7 pair at 256x256: 0.77 s instead of 0.93 s on 2 threads).
        n = self.offset_conv.out_channels
        weight = torch.cat([self.offset_conv.weight, self.modulator_conv.weight])
        bias = torch.cat([self.offset_conv.bias, self.modulator_conv.bias])
        stride, padding = self.offset_conv.stride, self.offset_conv.padding
        if fft_conv.applies(x, weight, stride, padding):
            # Large kernels (the 7x7 branch) at large maps at CPU inference: the same convolution by FFT
            # over tiles, 1.5-2x faster at 256x256 (:mod:`birefnet.models.fft_conv`).
            both = fft_conv.conv2d(x, weight, bias)
        else:
            both = F.conv2d(x, weight, bias, stride, padding)
        # Modulation in (0, 2), 1 at initialisation.
        return both[:, :n], 2 * torch.sigmoid(both[:, n:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset, mask = self.offsets_and_mask(x)
        return deform_conv2d(
            x,
            offset,
            self.regular_conv.weight,
            self.regular_conv.bias,
            stride=self.stride,
            padding=self.padding,
            mask=mask,
        )

    def fused_kernel_applies(self, x: torch.Tensor) -> bool:
        """Whether :meth:`forward` on ``x`` runs the fused Triton kernel (CUDA half-precision inference)."""
        return USE_TRITON and _deform_triton.usable(x, 1, torch.is_grad_enabled())

    def forward_affine_relu(
        self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor
    ) -> torch.Tensor | None:
        """``relu(self(x) * scale + shift)``, per output channel, in the fused Triton kernel at CUDA
        inference: the affine (an eval BatchNorm; ``regular_conv``'s bias folded in) and the ReLU act on
        its float32 sums, so the output is written once. None where that kernel does not apply (the
        caller then runs the plain operations).

        Args:
            x: ``(B, C, H, W)``.
            scale, shift: ``(O,)`` factor and offset.
        """
        if not self.fused_kernel_applies(x):
            return None
        offset, mask = self.offsets_and_mask(x)
        weight, bias = self.regular_conv.weight, self.regular_conv.bias
        pairs = _geometry(x, offset, weight, None, mask, self.stride, self.padding, 1)[:3]
        if bias is not None:  # (p + b) * s + t
            shift = shift + bias.to(shift.dtype) * scale
        return _deform_triton.deform_conv2d_fused(
            x, offset, weight, mask, *pairs, scale=scale, shift=shift, relu=True
        )

    def forward_rows(self, x: torch.Tensor, epilogue: RowEpilogue) -> None:
        """:meth:`forward` handed to ``epilogue`` chunk by chunk (:func:`deform_conv2d_rows`; inference).

        The products come without ``regular_conv``'s bias: the epilogue adds it if there is one.
        """
        offset, mask = self.offsets_and_mask(x)
        deform_conv2d_rows(
            x, offset, self.regular_conv.weight, epilogue, self.stride, self.padding, mask=mask
        )
