"""Large-kernel convolutions by FFT over overlapping tiles (overlap-save), for CPU inference.

Each deformable ASPP branch predicts its offsets and modulation with an ordinary convolution of the branch's
own kernel size. For the 7x7 branch that is a 64 -> 147 channel 7x7 convolution, 60 GFLOP at the 256x256
map of a 1024² input: ~0.29 s of a ~12.2 s swin_v1_l forward on 2 AVX-512 threads, the largest single
convolution of the model. By the convolution theorem the same output costs a fraction of the work:

* the zero-padded input is cut into ``N x N`` tiles that overlap by ``k - 1`` pixels (``N = 16``: 10 x 10
  outputs per tile for ``k = 7``), and each tile is Fourier transformed (``torch.fft.rfft2``);
* at every one of the ``N·(N/2 + 1)`` frequencies, the output spectrum is a ``(tiles, C) @ (C, O)`` complex
  product with the kernel's spectrum, made as one batched real GEMM of ``(tiles, 2C) @ (2C, 2O)``
  (~8 times fewer multiply-adds than the direct convolution for ``k = 7``);
* the inverse transform of each tile gives the circular correlation, whose first ``N - k + 1`` rows and
  columns are the plain (linear) correlation, i.e. what ``F.conv2d`` computes.

It is not an approximation: in float32 the result is closer to the float64 convolution than ``F.conv2d``'s
own (~2.2e-7 relative to the largest output, against 1.5e-6 to 2e-6 for the direct convolution on these
shapes; ``benchmarks/fft_conv.py`` prints both). Tiles are processed ~24 at a time so that a chunk's
spectra stay in the cache between the transforms and the products.

The kernel's spectrum (22 MB for 64 -> 147 channels at ``N = 16``) is made in every call (~10 ms) and not
kept: keeping the 82 MB spectra of ``N = 32`` for the decoder blocks raised swin_v1_l's peak RSS at 1024²
from 1.74 to 1.94 GB (the goal is 2.0) and was no faster.

Measured on the AVX-512 host, 2 threads, 64 -> 147 channels, 7x7, spectrum included
(``python benchmarks/fft_conv.py --runs 15``; the host is noisy, other runs in brackets): 256² 294 -> 181
ms (145), 128² 71 -> 61 ms (42), 64² 17.6 -> 19.1 ms. Hence maps from :data:`MIN_SIDE` = 96 only. In
swin_v1_l's forward at 1024² (8 alternating forwards): 12.22 -> 12.10-12.13 s. ``N = 32`` does fewer
products but needs a 4x larger spectrum: 256² 188 ms, 128² 91 ms with it made per call. A 3x3 kernel
gains nothing (384 -> 64 channels at 256²: 128 ms direct, 166-204 ms by FFT) and keeps ``F.conv2d``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from birefnet.models.onednn import autocast_enabled
from birefnet.models.tracing import is_tracing

#: Use the FFT form for large offset convolutions at CPU inference (read per call;
#: ``benchmarks/ab_switch.py --switch fft-offsets`` compares both).
ENABLED = True

#: Transform size ``N`` of the tiles: each tile gives ``N - k + 1`` outputs per side. With the spectrum made
#: per call, 16 measured as fast as 32 at 256² and faster at 128² (24 was slower at both).
FFT_SIZE = 16

#: Smallest kernel size that takes the FFT form (k = 3 does not gain).
MIN_KERNEL = 5

#: Smallest map side that takes the FFT form (below it the per-call kernel spectrum costs more than the
#: transforms save).
MIN_SIDE = 96

#: Tiles transformed and multiplied per chunk, so that a chunk's spectra stay in the cache from the product
#: to the inverse transform (for N = 16, 26 to 208 tiles measured at 128² and 256²: 24-26 was fastest).
TILES_PER_CHUNK = 24


def applies(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: int | Sequence[int],
    padding: int | str | Sequence[int],
) -> bool:
    """Whether :func:`conv2d` may replace ``F.conv2d(x, weight, bias, stride, padding)`` here, and gains.

    It may at float32 CPU inference (no autograd, autocast or export/compile tracing) for one group,
    stride 1 and an odd square kernel smaller than :data:`FFT_SIZE` / 2 with "same" padding. It gains for a
    kernel of at least :data:`MIN_KERNEL`, enough channels (``C·O ≥ 16·(C + O)``: BiRefNet's 64 -> 147) and
    a map of at least :data:`MIN_SIDE` per side.
    """
    if not ENABLED or x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if torch.is_grad_enabled() or is_tracing() or autocast_enabled("cpu"):
        return False  # under autocast the opt-in reduced precision keeps its own convolution
    if x.dim() != 4 or weight.dim() != 4 or isinstance(padding, str):
        return False
    out_channels, in_channels, kh, kw = weight.shape
    strides = (stride, stride) if isinstance(stride, int) else tuple(stride)
    pads = (padding, padding) if isinstance(padding, int) else tuple(padding)
    return (
        kh == kw
        and kh % 2 == 1
        and MIN_KERNEL <= kh < FFT_SIZE // 2
        and strides == (1, 1)
        and pads == (kh // 2, kh // 2)
        and in_channels == x.shape[1]
        # the transforms cost ~(C + O) per pixel, the products they save ~C·O·k²: few channels lose
        and in_channels * out_channels >= 16 * (in_channels + out_channels)
        and min(x.shape[-2:]) >= MIN_SIDE
    )


def kernel_spectrum(
    weight: torch.Tensor, n: int | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The real GEMM operand of :func:`conv2d` for ``weight``: ``(n·(n/2+1), 2C, 2O)`` in ``dtype``.

    Per frequency ``f = (u, v)`` the kernel's spectrum is the complex ``(C, O)`` matrix
    ``W[f] = Σ_ab weight[:, :, a, b]^T · exp(+2πi(ua + vb)/n) = R + iI`` (the conjugate of
    ``rfft2(weight, (n, n))``: ``F.conv2d`` is a correlation). A row of input spectra ``x = x_re + i·x_im``
    times it is ``x_re·(R + iI) + x_im·(-I + iR)``, so as a real matrix it is
    ``[[R, I], [-I, R]]`` with rows ``(p, c)`` (part ``p`` of input channel ``c``: all real parts first)
    and columns ``(o, q)`` (output channel ``o``, part ``q``: interleaved, a complex tensor's layout).

    Made by one GEMM of the sines and cosines of the ``k²`` tap phases with the weight (a block-diagonal
    copy of it, so that each output lands in place): no ``n x n`` zero-padded weight is transformed.

    Args:
        weight: ``(O, C, k, k)`` convolution weight, ``k < n``.
        n: transform size (:data:`FFT_SIZE` when None).
        dtype: dtype of the result and of its GEMM (that of the input to be convolved).
    """
    n = FFT_SIZE if n is None else n
    out_channels, in_channels, k, _ = weight.shape
    half = n // 2 + 1
    f64 = {"dtype": torch.float64, "device": weight.device}
    u = torch.arange(n, **f64).view(n, 1, 1, 1)
    v = torch.arange(half, **f64).view(1, half, 1, 1)
    a = torch.arange(k, **f64).view(1, 1, k, 1)
    b = torch.arange(k, **f64).view(1, 1, 1, k)
    theta = ((u * a + v * b) * (2 * math.pi / n)).reshape(n * half, k * k)  # phases in float64
    cos, sin = theta.cos(), theta.sin()
    # rows (f, p), columns (tap, q): output part q of input part p
    phases = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], 1)
    phases = phases.reshape(n * half * 2, k * k * 2).to(dtype)
    taps = weight.detach().to(dtype).permute(2, 3, 1, 0).reshape(k * k, in_channels * out_channels)
    block_diagonal = taps.new_zeros(k * k, 2, in_channels * out_channels, 2)
    block_diagonal[:, 0, :, 0] = taps
    block_diagonal[:, 1, :, 1] = taps
    spectrum = phases @ block_diagonal.view(k * k * 2, -1)  # (F·2, C·O·2): rows (f, p), columns (c, o, q)
    return spectrum.view(n * half, 2 * in_channels, 2 * out_channels)


def conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    n: int | None = None,
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride=1, padding=k // 2)`` by FFT over overlapping tiles.

    Args:
        x: ``(B, C, H, W)`` float32 (or float64, for tests), any memory layout.
        weight: ``(O, C, k, k)``, ``k`` odd and smaller than ``n``.
        bias: ``(O,)`` or None.
        n: transform size (a tile gives ``n - k + 1`` outputs per side; :data:`FFT_SIZE` when None).

    Returns:
        ``(B, O, H, W)`` of ``x``'s dtype in channels-last memory layout, as ``F.conv2d`` gives for a
        channels-last input.
    """
    n = FFT_SIZE if n is None else n
    batch, channels, height, width = x.shape
    out_channels, _, k, _ = weight.shape
    spectrum = kernel_spectrum(weight, n, x.dtype)  # per call: kept, it cost peak RSS (module docstring)
    pad, step, half = k // 2, n - k + 1, n // 2 + 1
    freqs = n * half
    tiles_y, tiles_x = math.ceil(height / step), math.ceil(width / step)
    padded = x.new_zeros(batch, tiles_y * step + k - 1, tiles_x * step + k - 1, channels)
    padded[:, pad : pad + height, pad : pad + width] = x.permute(0, 2, 3, 1)
    out = x.new_empty(batch, height, width, out_channels)
    rows = max(1, TILES_PER_CHUNK // tiles_x)  # tile rows per chunk
    for b in range(batch):
        for r0 in range(0, tiles_y, rows):
            ty = min(rows, tiles_y - r0)
            tiles = padded[b, r0 * step : (r0 + ty) * step + k - 1].unfold(0, n, step).unfold(1, n, step)
            spec = torch.fft.rfft2(tiles)  # (ty, tiles_x, C, n, half) complex
            # (F, tiles, 2C): per frequency, each tile's real parts then imaginary parts (one reordering copy)
            lhs = torch.view_as_real(spec).permute(0, 1, 3, 4, 5, 2)
            lhs = lhs.reshape(ty * tiles_x, freqs, 2 * channels).transpose(0, 1)
            prod = torch.bmm(lhs, spectrum)  # (F, tiles, 2O)
            if bias is not None:
                # a constant adds n² x bias to each tile's zero frequency (the inverse divides by n²)
                prod[0, :, 0::2] += bias.to(prod.dtype) * float(n * n)
            prod = torch.view_as_complex(prod.view(n, half, ty, tiles_x, out_channels, 2))
            prod = prod.permute(2, 3, 4, 0, 1)  # (ty, tiles_x, O, n, half)
            # the inverse in two passes: over rows, keeping the `step` valid ones, then over columns
            rows_done = torch.fft.ifft(prod, dim=3)[:, :, :, :step]
            block = torch.fft.irfft(rows_done, n=n, dim=4)[..., :step]  # (ty, tiles_x, O, step, step)
            top = r0 * step
            bottom = min(height, top + ty * step)
            block = block.permute(0, 3, 1, 4, 2).reshape(ty * step, tiles_x * step, out_channels)
            out[b, top:bottom] = block[: bottom - top, :width]
    return out.permute(0, 3, 1, 2)
