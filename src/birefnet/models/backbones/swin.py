"""Swin Transformer v1 encoder in the detection layout that BiRefNet uses.

Our own implementation of "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows"
(Liu et al., 2021) with the stage layout of the Microsoft detection code, which the official
BiRefNet copies: any input size is accepted, every block zero-pads its normalised tokens to a
multiple of the window size (padded tokens then take part in attention *unmasked*, as in the
original), patch merging pads odd sizes, and each of the four stage outputs goes through its own
LayerNorm ``norm{i}``. Parameter and buffer names equal the official ones (``bb.`` prefix removed),
so official checkpoints load strictly with no remapping.

Differences from the official code that do not change the numbers (float32 outputs agree to
about 1e-6 relative):

* tokens stay in a ``(B, H, W, C)`` layout through a stage instead of ``(B, H*W, C)``;
* padding, cyclic shift and window partition are one precomputed gather per block, and window
  merge, reverse shift and crop another (:func:`window_layout`), instead of pad/roll/permute
  copies;
* attention runs through ``F.scaled_dot_product_attention`` with the relative-position bias as a
  float ``attn_mask``; in shifted blocks only the last window row and column get the shift mask,
  as a second call, so no full ``(windows, heads, N, N)`` mask is built (see
  :class:`WindowAttention`);
* the output projection is applied after the windows are merged and the padding is cropped (it is
  a per-token linear map, so only the wasted work on padded tokens changes);
* at float32 CPU inference on AVX-512 machines the projections run through oneDNN's fused linear
  kernels (:mod:`birefnet.models.onednn`): bias, GELU and residual sums inside the product, the MLP
  in chunks of tokens (same values up to float rounding); and each stage runs window chunk by window
  chunk (:meth:`SwinBlock.forward_streamed`), with attention written out as two batched products
  over a few windows at a time instead of SDPA (same values up to float rounding, ~1e-6).

Under ``torch.export`` / ONNX export (and TorchScript tracing) the blocks take a second, traceable
path (:meth:`SwinBlock.forward_traceable`): the cached gathers above are built per Python-int size
with data-dependent indexing, which cannot follow symbolic batch/height/width. That path pads with
``F.pad``, shifts with ``torch.roll``, partitions with reshape/permute, builds the shift mask from
``arange`` comparisons and attends over all windows of the whole batch at once, in the formulation
of the original code. Both paths give the same numbers (about 1e-6 relative in float32); eager
inference always takes the faster first one.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from birefnet.models import _swin_triton, cpu_kernels, onednn
from birefnet.models.backbones.base import Backbone, DropPath, init_transformer_weights
from birefnet.models.tracing import is_tracing

__all__ = [
    "SWIN_CONFIGS",
    "SwinTransformer",
    "WindowLayout",
    "shifted_window_mask",
    "swin_v1",
    "window_layout",
]

# name -> (embed_dim, depths, num_heads, window_size); see OFFICIAL_SPEC section 2.1.
SWIN_CONFIGS: dict[str, tuple[int, tuple[int, ...], tuple[int, ...], int]] = {
    "swin_v1_t": (96, (2, 2, 6, 2), (3, 6, 12, 24), 7),
    "swin_v1_s": (96, (2, 2, 18, 2), (3, 6, 12, 24), 7),
    "swin_v1_b": (128, (2, 2, 18, 2), (4, 8, 16, 32), 12),
    "swin_v1_l": (192, (2, 2, 18, 2), (6, 12, 24, 48), 12),
}

# Value of masked attention logits. The official code uses -inf since 2025-09 (-100.0 before);
# every query always sees at least its own region, so no softmax row is fully masked.
_MASKED = float("-inf")


def relative_position_index(window_size: int) -> torch.Tensor:
    """Index into the bias table of every (query, key) pair of a window.

    Tokens are numbered row-major inside the window. The table row for a pair is
    ``(dy + ws - 1) * (2 ws - 1) + (dx + ws - 1)`` with ``(dy, dx)`` = query - key position.

    Returns:
        ``(ws*ws, ws*ws)`` int64 tensor with values in ``[0, (2 ws - 1)^2)``.
    """
    pos = torch.arange(window_size)
    yy, xx = torch.meshgrid(pos, pos, indexing="ij")
    yy, xx = yy.flatten(), xx.flatten()
    dy = yy[:, None] - yy[None, :] + window_size - 1
    dx = xx[:, None] - xx[None, :] + window_size - 1
    return dy * (2 * window_size - 1) + dx


@dataclass(frozen=True)
class WindowLayout:
    """Where each token of an ``h x w`` map goes in the (shifted) window partition.

    The zero padding to window multiples, the cyclic shift by ``-shift`` and the partition into
    ``ws x ws`` windows are folded into one gather (``gather_index``, then ``pad_slots`` zeroed),
    and their inverse, including the crop back to ``h x w``, into another (``scatter_index``).
    Windows are ordered so that those that need no shift mask (all but the last window row and
    column) come first; only the others get a mask, so no ``(windows, heads, N, N)`` mask is
    ever materialised. Within each of the two groups, windows whose slots are all real tokens come
    first, then those with padding, grouped by which slots are padding (``query_groups``).

    Attributes:
        padded: ``(Hp, Wp)``, the size rounded up to window multiples.
        num_windows: ``nW = Hp * Wp / ws^2``.
        num_unmasked: windows ``[0, num_unmasked)`` attend with the relative-position bias only.
        gather_index: ``(nW * ws^2,)`` row-major position in the unpadded map of each window token
            (window-major, row-major inside a window); 0 for padding slots.
        pad_slots: ``(P,)`` window-token slots that are zero padding, or None if there are none.
        scatter_index: ``(h * w,)`` window-token slot of each position of the unpadded map.
        boundary_mask: ``(nW - num_unmasked, N, N)`` additive mask (0 / -inf) of the remaining
            windows, or None when ``shift == 0``.
        window_order: ``(nW,)`` row-major index (in the padded, shifted grid) of each window.
        query_groups: consecutive window ranges ``(start, stop, rows)`` covering ``[0, nW)``, none
            straddling ``num_unmasked``: the windows of a range share which of their ``N`` slots
            hold real tokens, ``rows`` (a ``(n,)`` index), or None when all do. The outputs of
            padding slots are cropped away, so at inference attention is computed for the real
            query rows only (padding tokens still take part as keys and values).
        slot_token: ``(nW * ws^2,)`` int32: ``gather_index`` with -1 in the padding slots (the
            window-attention kernel's table, :mod:`birefnet.models._swin_triton`).
    """

    padded: tuple[int, int]
    num_windows: int
    num_unmasked: int
    gather_index: torch.Tensor
    pad_slots: torch.Tensor | None
    scatter_index: torch.Tensor
    boundary_mask: torch.Tensor | None
    window_order: torch.Tensor
    query_groups: tuple[tuple[int, int, torch.Tensor | None], ...]
    slot_token: torch.Tensor


def window_layout(
    height: int, width: int, window_size: int, shift: int, *, device: torch.device, dtype: torch.dtype
) -> WindowLayout:
    """Build the :class:`WindowLayout` of an unpadded ``height x width`` token map.

    After the cyclic shift, a window on the last row or column holds tokens from up to four image
    regions that were not neighbours; tokens may only attend within their region. Regions are the
    3 x 3 grid cut at ``size - ws`` and ``size - shift`` of the shifted map along each axis (the
    original "slice labelling"); padded tokens belong to the region they sit in and are not masked.

    The index work is done on the CPU and cached per size (no device synchronisation on GPUs); the
    device copies and the additive mask are cached per size, device and dtype.

    Args:
        height: unpadded rows of the token map.
        width: unpadded columns.
        window_size: window side ws.
        shift: cyclic shift (0 = plain windows).
        device: device of the index tensors and mask.
        dtype: dtype of the mask.
    """
    device = torch.device(device)
    if device.type == "cpu":  # the float mask is made per call: a cache of them would grow with sizes
        return _with_float_mask(_window_layout_cpu(height, width, window_size, shift), dtype)
    # Accelerators: cached per device too, so a forward makes no host-to-device copies (a CUDA graph
    # cannot capture a copy from pageable host memory, and each one is a stall otherwise).
    return _window_layout_on(height, width, window_size, shift, device, dtype)


def _with_float_mask(layout: WindowLayout, dtype: torch.dtype) -> WindowLayout:
    """``layout`` with its bool "masked" boundary mask turned into the additive (0 / -inf) one."""
    if layout.boundary_mask is None:
        return layout
    different = layout.boundary_mask
    mask = torch.zeros(different.shape, device=different.device, dtype=dtype).masked_fill_(different, _MASKED)
    return replace(layout, boundary_mask=mask)


@functools.lru_cache(maxsize=32)
def _window_layout_on(
    height: int, width: int, ws: int, shift: int, device: torch.device, dtype: torch.dtype
) -> WindowLayout:
    """:func:`window_layout` with its tensors on ``device`` and the mask in ``dtype`` (cached)."""
    cpu = _window_layout_cpu(height, width, ws, shift)
    # Plain tensors even when first built under inference_mode (see _window_layout_cpu).
    with torch.inference_mode(False), torch.no_grad():
        on_device = replace(
            cpu,
            gather_index=cpu.gather_index.to(device),
            pad_slots=None if cpu.pad_slots is None else cpu.pad_slots.to(device),
            scatter_index=cpu.scatter_index.to(device),
            boundary_mask=None if cpu.boundary_mask is None else cpu.boundary_mask.to(device),
            window_order=cpu.window_order.to(device),
            query_groups=tuple(
                (lo, hi, None if rows is None else rows.to(device)) for lo, hi, rows in cpu.query_groups
            ),
            slot_token=cpu.slot_token.to(device),
        )
        layout = _with_float_mask(on_device, dtype)
    if device.type == "cuda":
        # Complete before any stream reads it: the half-size backbone pass on a second stream
        # (birefnet.models.streams) shares map sizes with the full-size pass (its 128x128 stage 0 is
        # the full pass's stage 1), and would otherwise race the other stream's first copy.
        torch.cuda.current_stream(device).synchronize()
    return layout


@functools.lru_cache(maxsize=64)
def _window_layout_cpu(height: int, width: int, ws: int, shift: int) -> WindowLayout:
    """:func:`window_layout` on the CPU, with ``boundary_mask`` as a bool "masked" tensor."""
    hp, wp = height + (-height) % ws, width + (-width) % ws
    nh, nw = hp // ws, wp // ws
    # Plain tensors even when first built under inference_mode: the cache outlives the call, and
    # index_select saves its index for backward.
    with torch.inference_mode(False), torch.no_grad():
        grid = torch.arange(nh * nw)
        win_row, win_col = grid // nw, grid % nw
        offset = torch.arange(ws)
        # which rows / columns of each window row / column hold real tokens after the shift
        row_real = ((win_row[::nw, None] * ws + offset + shift) % hp) < height  # (nh, ws)
        col_real = ((win_col[:nw, None] * ws + offset + shift) % wp) < width  # (nw, ws)
        _, row_kind = torch.unique(row_real, dim=0, return_inverse=True)
        _, col_kind = torch.unique(col_real, dim=0, return_inverse=True)
        full_row, full_col = row_real.all(1), col_real.all(1)
        # padding pattern of each window: 0 when all its slots are real tokens
        full = full_row[win_row] & full_col[win_col]
        pattern = torch.where(full, 0, 1 + row_kind[win_row] * (nw + 1) + col_kind[win_col])
        needs_mask = ((win_row == nh - 1) | (win_col == nw - 1)) if shift else torch.zeros_like(full)
        num_unmasked = int((~needs_mask).sum())
        # unmasked windows first, then by padding pattern (all-real first), row-major within each
        key = needs_mask.long() * (nh * nw * (nw + 2) + 1) + pattern
        order = torch.argsort(key, stable=True)
        win_row, win_col, key = win_row[order], win_col[order], key[order]
        groups = []
        starts = [0, *(torch.nonzero(key[1:] != key[:-1]).flatten() + 1).tolist(), nh * nw]
        for lo, hi in itertools.pairwise(starts):
            r, c = int(win_row[lo]), int(win_col[lo])
            real = (row_real[r][:, None] & col_real[c][None, :]).flatten()
            groups.append((lo, hi, None if bool(real.all()) else torch.nonzero(real).flatten()))
        rows = win_row[:, None] * ws + offset  # (nW, ws) rows of the shifted, padded map
        cols = win_col[:, None] * ws + offset
        # roll(x, -shift)[p] = x[(p + shift) % size]; positions >= the unpadded size are padding
        src_row = ((rows + shift) % hp)[:, :, None].expand(-1, -1, ws).reshape(-1)
        src_col = ((cols + shift) % wp)[:, None, :].expand(-1, ws, -1).reshape(-1)
        valid = (src_row < height) & (src_col < width)
        gather_index = torch.where(valid, src_row * width + src_col, 0)
        pad_slots = None if bool(valid.all()) else torch.nonzero(~valid).flatten()
        scatter_index = torch.empty(height * width, dtype=torch.long)
        scatter_index[gather_index[valid]] = torch.nonzero(valid).flatten()

        masked = None
        if shift:

            def region(coord: torch.Tensor, size: int) -> torch.Tensor:
                return (coord >= size - ws).long() + (coord >= size - shift).long()

            label = region(rows, hp)[:, :, None] * 3 + region(cols, wp)[:, None, :]  # (nW, ws, ws)
            label = label[num_unmasked:].reshape(-1, ws * ws)
            masked = label[:, None, :] != label[:, :, None]
    return WindowLayout(
        (hp, wp),
        nh * nw,
        num_unmasked,
        gather_index,
        pad_slots,
        scatter_index,
        masked,
        order,
        tuple(groups),
        torch.where(valid, gather_index, -1).to(torch.int32),
    )


def _window_grid(height: int | torch.SymInt, width: int | torch.SymInt, ws: int) -> tuple:
    """(window rows, window columns) of a map padded to window multiples (sizes may be symbolic)."""
    return (height + ws - 1) // ws, (width + ws - 1) // ws


def shifted_window_mask(
    num_rows: int | torch.SymInt,
    num_cols: int | torch.SymInt,
    window_size: int,
    shift: int,
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Additive shift mask of every window of a padded, cyclically shifted ``num_rows x num_cols``-window map.

    Built from ``arange`` comparisons only (no Python loop over regions or windows), so the sizes may be
    symbolic. A token's region along an axis of the shifted, padded map of size ``S`` is 0, 1 or 2 as its
    coordinate is below ``S - ws``, below ``S - shift``, or above (the original slice labelling);
    two tokens of a window may attend to each other only when both their regions agree.

    Args:
        num_rows: window rows nh (the padded map has ``nh * ws`` rows).
        num_cols: window columns nw.
        window_size: window side ws.
        shift: cyclic shift (> 0).
        device: device of the mask.
        dtype: dtype of the mask.

    Returns:
        ``(nh * nw, ws*ws, ws*ws)`` mask: 0 where attention is allowed, ``-inf`` where not; windows in
        row-major order, tokens row-major inside a window.
    """
    ws = window_size

    def region(size: int | torch.SymInt) -> torch.Tensor:
        coord = torch.arange(size, device=device)
        return (coord >= size - ws).long() + (coord >= size - shift).long()

    label = region(num_rows * ws)[:, None] * 3 + region(num_cols * ws)[None, :]  # (Hp, Wp)
    label = label.view(num_rows, ws, num_cols, ws).permute(0, 2, 1, 3).reshape(-1, ws * ws)
    different = label[:, :, None] != label[:, None, :]
    return torch.zeros(different.shape, device=device, dtype=dtype).masked_fill(different, _MASKED)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative-position bias.

    Computed with ``F.scaled_dot_product_attention`` (default scale ``head_dim ** -0.5``) and the
    bias, plus the shift mask for the windows that need one, as a float ``attn_mask``. Compared
    with the explicit ``softmax(q k^T + bias + mask)`` path this never writes the
    ``(windows, heads, N, N)`` scores or a full-size mask, and in training it does not keep the
    attention probabilities for backward; on CPU (torch 2.13, AVX2) the whole backbone is a few
    percent faster. It is numerically equivalent (about 1e-6 relative in float32).

    Args:
        dim: token channels C.
        window_size: window side ws (N = ws * ws tokens per window).
        num_heads: attention heads; must divide ``dim``.
        qkv_bias: bias in the fused qkv projection (True in every released Swin).
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        # Persistent: the official checkpoints contain it, and strict loading expects it.
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=True)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> torch.Tensor:
        """``(heads, N, N)`` bias gathered from the table."""
        n = self.window_size * self.window_size
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1).contiguous()

    def forward(
        self,
        qkv: torch.Tensor,
        num_unmasked: int,
        boundary_mask: torch.Tensor | None = None,
        query_groups: Sequence[tuple[int, int, torch.Tensor | None]] | None = None,
    ) -> torch.Tensor:
        """Attend within each window; the qkv projection is the caller's (see SwinBlock), the
        output projection too.

        Args:
            qkv: ``(B, nW, N, 3C)`` :attr:`qkv` projection of the tokens of each window.
            num_unmasked: windows ``[0, num_unmasked)`` use the bias only.
            boundary_mask: ``(nW - num_unmasked, N, N)`` additive mask of the other windows, or
                None when no window is masked.
            query_groups: :attr:`WindowLayout.query_groups`. When given, only the query rows of
                real tokens are computed (at swin_v1_l's 64² stage, padded to 72², 21 % fewer);
                the output rows of padding slots are then left unset, so the caller must crop
                them (SwinBlock does).

        Returns:
            ``(B, nW, N, C)`` attention output before :attr:`proj`.
        """
        b, nw, n, c3 = qkv.shape
        c = c3 // 3
        heads = self.num_heads
        qkv = qkv.view(b, nw, n, 3, heads, c // heads)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # each (B, nW, heads, N, d), a view
        bias = self.relative_position_bias().to(q.dtype).unsqueeze(0)  # broadcast over windows
        m = num_unmasked
        if query_groups is None or all(rows is None for _, _, rows in query_groups):
            if boundary_mask is None:  # one batched call over every window of every sample
                out = F.scaled_dot_product_attention(
                    q.reshape(b * nw, heads, n, -1),
                    k.reshape(b * nw, heads, n, -1),
                    v.reshape(b * nw, heads, n, -1),
                    attn_mask=bias,
                )
                return out.view(b, nw, heads, n, -1).transpose(2, 3).reshape(b, nw, n, c)
            query_groups = [(lo, hi, None) for lo, hi in ((0, m), (m, nw)) if lo < hi]
        masked_bias = None
        if boundary_mask is not None:
            masked_bias = boundary_mask.to(q.dtype).unsqueeze(1) + bias  # (nW - m, heads, N, N)
        # The fused CPU kernel only takes 4-D inputs (5-D falls back to a slow path), and slicing
        # windows breaks the B * nW view, so go per sample (B is small) on window-slice views; the
        # pieces land in (B, nW, N, heads, d), i.e. (B, nW, N, C), in one copy each.
        out = q.new_empty(b, nw, n, heads, c // heads)
        for i in range(b):
            for lo, hi, rows in query_groups:
                mask = bias if lo < m else masked_bias[lo - m : hi - m]
                qi = q[i, lo:hi]
                if rows is not None:
                    qi = qi.index_select(2, rows)
                    mask = mask.index_select(2, rows)
                o = F.scaled_dot_product_attention(qi, k[i, lo:hi], v[i, lo:hi], attn_mask=mask)
                if rows is None:
                    out[i, lo:hi] = o.transpose(1, 2)
                else:
                    out[i, lo:hi].index_copy_(1, rows, o.transpose(1, 2))
        return out.view(b, nw, n, c)

    def forward_traceable(self, windows: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`forward` for export: all windows of all samples in one batched product, sizes symbolic.

        ``softmax(q k^T / sqrt(d) + bias + mask) v`` written out (as in the original), so the graph holds
        plain MatMul/Softmax nodes.

        Args:
            windows: ``(B, nW, N, C)`` tokens of each window.
            mask: ``(nW, N, N)`` additive shift mask of every window (:func:`shifted_window_mask`), or None.

        Returns:
            ``(B, nW, N, C)`` attention output before :attr:`proj`.
        """
        b, nw, n, c = windows.shape
        heads = self.num_heads
        head_dim = c // heads
        qkv = self.qkv(windows).reshape(b, nw, n, 3, heads, head_dim)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # each (B, nW, heads, N, d)
        bias = self.relative_position_bias().to(q.dtype)  # (heads, N, N)
        if mask is not None:
            bias = bias + mask.to(q.dtype).unsqueeze(1)  # (nW, heads, N, N)
        scores = torch.matmul(q * head_dim**-0.5, k.transpose(-2, -1)) + bias
        out = torch.matmul(scores.softmax(dim=-1), v)  # (B, nW, heads, N, d)
        return out.transpose(2, 3).reshape(b, nw, n, c)


class Mlp(nn.Module):
    """Linear -> GELU -> Linear (no dropout: BiRefNet trains its Swin with dropout 0)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc1(x)
        if torch.is_grad_enabled():
            hidden = self.act(hidden)
        else:  # inference: the 4C-wide hidden tensor is the largest temporary, so work in place
            torch.ops.aten.gelu_(hidden)
        return self.fc2(hidden)


class _Workspace:
    """One reusable CPU buffer that the blocks of a stage carve their largest temporaries from.

    At inference on the CPU, a Swin block's largest temporaries (the window gather, the qkv
    projection, the MLP's 4C-wide hidden layer; 50-200 MB each at swin_v1_l's first stages at 1024²)
    are above glibc's mmap threshold: each fresh one is mapped, page-faulted in and unmapped again,
    and a page-faulted fill runs at ~1.5 GB/s here against ~6.5 GB/s for memory already mapped. Writing
    them into one buffer kept for the whole stage removes those faults (docs/performance.md). The
    attention phase (gather + qkv) and the MLP phase (hidden) never hold their buffers at the same
    time, so both take their views from the buffer's start: the stage holds max(gather + qkv, hidden),
    which is what a block held at its peak before.
    """

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None

    def views(self, like: torch.Tensor, *shapes: tuple[int, ...]) -> list[torch.Tensor]:
        """Consecutive, non-overlapping views of ``shapes`` from the buffer's start (dtype and device of
        ``like``); earlier views of the buffer must be dead."""
        sizes = [int(torch.Size(shape).numel()) for shape in shapes]
        total = sum(sizes)
        buf = self.buffer
        if buf is None or buf.numel() < total or buf.dtype != like.dtype or buf.device != like.device:
            buf = self.buffer = None  # drop the old one first: never hold both
            buf = self.buffer = torch.empty(total, dtype=like.dtype, device=like.device)
        out, start = [], 0
        for shape, size in zip(shapes, sizes):
            out.append(buf[start : start + size].view(shape))
            start += size
        return out


def _plain_linear(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``module(x)`` is a plain float ``x @ W^T + b`` that can be written into a given buffer
    (not a quantised or otherwise replaced layer, same dtype, no autocast)."""
    return (
        type(module) is nn.Linear
        and x.dtype == module.weight.dtype
        and not onednn.autocast_enabled(x.device.type)
    )


def _linear(module: nn.Module, x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """``module(x)``, written into ``out`` when one is given."""
    return module(x) if out is None else _linear_into(module, x, out)


def _linear_into(module: nn.Linear, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``module(x)`` written into ``out`` (same values: F.linear is this addmm)."""
    x2d = x.reshape(-1, x.shape[-1])
    out2d = out.view(-1, module.out_features)
    if module.bias is None:
        torch.mm(x2d, module.weight.t(), out=out2d)
    else:
        torch.addmm(module.bias, x2d, module.weight.t(), out=out2d)
    return out


def _linear_plus(module: nn.Module, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``module(x) + residual`` (inference), as ``(residual + bias) + x @ W^T`` for a plain Linear.

    ``addmm`` first fills its output with the bias and the residual sum is then another pass over
    the output; starting from ``residual + bias`` and accumulating the product into it
    (``addmm_``) makes one pass fewer over each block's two (tokens, C) outputs: swin_v1_l's stage-2
    MLP output 307 -> 296 ms. The same three terms summed in another order (float rounding,
    ~1e-6 relative).

    Args:
        module: the projection (``attn.proj`` or ``mlp.fc2``).
        x: ``(..., in_features)`` input.
        residual: ``(..., out_features)`` tensor added to the output; not modified.

    Returns:
        A new tensor shaped like ``residual``.
    """
    if not _plain_linear(module, x) or module.bias is None:
        return module(x).view(residual.shape).add_(residual)
    out = torch.add(residual, module.bias)
    out.view(-1, module.out_features).addmm_(x.reshape(-1, x.shape[-1]), module.weight.t())
    return out


#: On CUDA with Triton installed, half-precision inference (half weights or autocast) attends with the kernel
#: of :mod:`birefnet.models._swin_triton` (:meth:`SwinBlock._forward_kernel`) instead of the gather / SDPA /
#: scatter path. Read per block call; ``benchmarks/gpu.py``'s ``*-sdpa`` modes turn it off to compare.
WINDOW_KERNEL = True

#: With :data:`WINDOW_KERNEL`, when the model itself is float16/bfloat16 (no autocast): each block's two
#: residual sums are accumulated into the stream in place, their biases added by the Triton LayerNorm that
#: reads the stream anyway (:meth:`SwinBlock._forward_kernel`). Same sums, another rounding order.
FUSED_RESIDUALS = True


# Tokens per oneDNN call where outputs are chunked: the fused MLP (:func:`_onednn_mlp_residual`), whose
# 4C-wide hidden chunk (6-25 MB in swin_v1_l) stays in the cache between fc1 and fc2 and comes from the
# heap, not a fresh mapping, and a large qkv projection copied into the workspace.
_ONEDNN_CHUNK = 2048

# Above this output size oneDNN's qkv projection is copied chunk by chunk into the stage workspace
# instead of coming out as one fresh tensor: one that large (stride-4 stage at 1024², 77-153 MB) is
# page-faulted in, which ate the gain over MKL writing into the workspace.
_ONEDNN_QKV_MAX_BYTES = 64 * 2**20

#: At float32 CPU inference on AVX-512 (the oneDNN path), run each stage's blocks window chunk by window
#: chunk (:meth:`SwinBlock.forward_streamed`) instead of over whole-map temporaries. Read per stage call;
#: ``benchmarks/ab_switch.py --switch streamed-windows`` compares both.
STREAM_WINDOWS = True

# Tokens (window slots) per chunk of the streamed path (the qkv projection's rows). 1024 to 16384 measured
# the same (docs/performance.md): what the path gains is that no temporary is map-sized.
_STREAM_TOKENS = 4096


#: At float32 CPU inference, gather and LayerNorm rows in one pass with the C kernel of
#: :mod:`birefnet.models.cpu_kernels` where it is available: the window chunks' tokens before ``norm1``
#: and the chunks of ``norm2`` in :meth:`SwinBlock.forward_streamed`, and the 2x2 neighbourhoods of
#: :class:`PatchMerging`. Read per call;
#: ``benchmarks/ab_switch.py --switch c-layer-norm`` compares both.
C_LAYER_NORM = True


def _gathered_norm(
    norm: nn.Module, src: torch.Tensor, index: torch.Tensor | None, pieces: int = 1
) -> torch.Tensor | None:
    """``norm`` (a LayerNorm over ``pieces * C``) of the rows ``src[index]`` of ``(M, C)`` ``src`` (all
    rows when ``index`` is None), each ``pieces`` consecutive ones concatenated, by the C kernel; None
    where it does not apply."""
    if not (
        C_LAYER_NORM and type(norm) is nn.LayerNorm and norm.weight is not None and norm.bias is not None
    ):
        return None
    return cpu_kernels.gather_layer_norm(src, index, pieces, norm.weight, norm.bias, norm.eps)


#: In :meth:`SwinBlock.forward_streamed`, add the two residuals inside oneDNN's products (its binary post-op)
#: instead of as a separate pass over each product's chunk. False since the eighteenth session: the post-op
#: slows the products that have few output channels (the attention projection, 192 -> 192: 144-156 against
#: 164-176 GFLOP/s with the sum done apart) and the MLP's output then had to be copied into place, where
#: ``torch.add(..., out=)`` writes it there directly. The same sums, bit for bit. A switch for
#: ``benchmarks/ab_switch.py --switch residual-post-op``.
RESIDUAL_POST_OP = False


#: In :meth:`SwinBlock.forward_streamed`, attend with the C kernel of :mod:`birefnet.models.cpu_kernels`
#: where it is available (compiled on first use; AVX-512, Linux) instead of :func:`_attend` and a scatter.
#: Read per chunk; ``benchmarks/ab_switch.py --switch c-attention`` compares both.
C_ATTENTION = True


# Bytes of attention scores per call of the streamed path's attention (:func:`_attend`): windows x heads x
# query rows x N floats. Around 2 MB the scores stay in the cache from the product through the softmax to
# the second product, and the two batched products run at 90-106 GFLOP/s on the AVX-512 host, against
# 65-75 for the fused SDPA kernel on 144-token windows (which splits queries into blocks of 32) and
# 32-64 for these same products over larger batches (docs/performance.md).
_SCORES_BYTES = 2 * 2**20


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + mask) v`` for ``(w, heads, rows, d)`` queries, ``(w, heads, N, d)`` keys and
    values and a mask broadcastable to ``(w, heads, rows, N)``: the original Swin's formulation, the
    scores made and normalised in place. Every row has an unmasked key, so no row is all ``-inf``."""
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1)).add_(mask)
    return torch.matmul(torch.softmax(scores, -1, out=scores), v)


@functools.lru_cache(maxsize=64)
def _stream_plan(
    height: int, width: int, ws: int, shift: int, tokens: int
) -> tuple[tuple[int, int, torch.Tensor | None, torch.Tensor], ...]:
    """Window chunks of :meth:`SwinBlock.forward_streamed` for an ``height x width`` map (cached per size).

    Returns ``(start, stop, rows, index)`` per chunk: windows ``[start, stop)`` of the
    :func:`window_layout` order (never straddling a query group, hence never ``num_unmasked``), the
    group's real slots ``rows`` (None when all ``ws * ws`` are real), and ``index``, the map position of
    each real slot of the chunk, window-major: the tokens to gather, and where their outputs go.
    """
    layout = _window_layout_cpu(height, width, ws, shift)
    n = ws * ws
    per = max(1, tokens // n)
    gather = layout.gather_index.view(-1, n)
    chunks = []
    with torch.inference_mode(False), torch.no_grad():  # cached beyond the call, as the layout is
        for lo, hi, rows in layout.query_groups:
            for start in range(lo, hi, per):
                stop = min(start + per, hi)
                index = gather[start:stop] if rows is None else gather[start:stop, rows]
                chunks.append((start, stop, rows, index.reshape(-1).contiguous()))
    return tuple(chunks)


def _onednn_linear_ok(x: torch.Tensor, *modules: nn.Module) -> bool:
    """Whether ``modules`` may run on ``x`` through oneDNN's fused kernels (:mod:`birefnet.models.onednn`:
    float32 CPU inference on AVX-512) as plain float Linears, or as Linears whose weights are packed
    for oneDNN (:func:`birefnet.models.onednn.pack_linear_weights`; only that path takes them)."""
    return onednn.use_onednn(x) and all(
        (_plain_linear(m, x) or type(m) is onednn.PackedLinear) for m in modules
    )


def _linears(block: SwinBlock) -> tuple[nn.Module, ...]:
    """The four projections of a Swin block: qkv, attention output, MLP fc1 and fc2."""
    return block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2


def _onednn_linear(module: nn.Linear, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """``module(x)`` (then exact GELU if ``gelu``) for a 2-D contiguous ``x``, in one oneDNN call."""
    return onednn.linear(x, module.weight, module.bias, gelu)


def _onednn_linear_add(module: nn.Linear, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """``module(x) + residual`` for 2-D contiguous ``x`` and ``residual``, the sum fused into the product."""
    return onednn.linear_add(x, residual, module.weight, module.bias)


def _onednn_mlp_residual(mlp: Mlp, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x + mlp(norm(x))`` for ``(tokens, C)`` ``x``, in chunks of :data:`_ONEDNN_CHUNK` tokens.

    LayerNorm and the MLP act on each token alone, so chunking changes no value; each chunk is one
    fc1+GELU call and one fc2+residual call. Returns a new ``(tokens, C)`` tensor.
    """
    out = torch.empty_like(x)
    for i in range(0, x.shape[0], _ONEDNN_CHUNK):
        part = x[i : i + _ONEDNN_CHUNK]
        hidden = _onednn_linear(mlp.fc1, norm(part), gelu=True)
        out[i : i + _ONEDNN_CHUNK] = _onednn_linear_add(mlp.fc2, hidden, part)
    return out


class SwinBlock(nn.Module):
    """(Shifted-)window attention block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

    Args:
        dim: channels C.
        num_heads: attention heads.
        window_size: window side ws.
        shift: cyclic shift (0, or ws // 2 on every second block).
        mlp_ratio: MLP hidden width relative to ``dim``.
        drop_path: stochastic-depth probability of both residual branches (training only).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        if not 0 <= shift < window_size:
            raise ValueError(f"shift must be in [0, window_size), got {shift} for window {window_size}")
        self.window_size = window_size
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        #: On the fused CUDA half-weights path (:meth:`_forward_kernel`), the MLP's GELU in its tanh form
        #: inside the first product's cuBLASLt epilogue instead of the exact (erf) GELU as its own pass: a
        #: different function (|gelu_tanh - gelu| < 5e-4 everywhere), set only by the ``fast_gelu``
        #: option (:func:`birefnet.models.optimize.optimize_for_inference`). Not a parameter or buffer.
        self.gelu_tanh = False

    def forward(
        self, x: torch.Tensor, layout: WindowLayout, workspace: _Workspace | None = None
    ) -> torch.Tensor:
        """Args: x ``(B, H, W, C)``; layout: :func:`window_layout` of (H, W) for this block's shift;
        workspace: at CPU inference, the stage's reusable buffer (:class:`_Workspace`), else None. With
        it, the large temporaries are written into it (same operations, same values, without
        page-faulting new memory for each), and each output projection is accumulated into
        ``residual + bias`` (:func:`_linear_plus`): the same sums in another order, ~1e-6 relative.

        Returns ``(B, H, W, C)``.
        """
        if workspace is None and self._kernel_attends(x):
            return self._forward_kernel(x, layout)
        if workspace is not None and not (_plain_linear(self.attn.qkv, x) and _plain_linear(self.mlp.fc1, x)):
            workspace = None  # a replaced (e.g. quantised) layer cannot write into a given buffer
        b, h, w, c = x.shape
        fused = workspace is not None and _onednn_linear_ok(x, *_linears(self))
        n_win = layout.num_windows * self.window_size * self.window_size
        # Right/bottom zero padding to window multiples comes *after* norm1: padded tokens are zero
        # vectors that take part in attention unmasked and are cropped afterwards (Swin-det
        # behaviour). Their qkv projection is therefore exactly the qkv bias, so the projection runs
        # on the h*w real tokens only and the padding slots get the bias: at 1024x1024, swin_v1_l's
        # 64x64 stage-3 map pads to 72x72 windows of 12, and this skips 27 % of that stage's qkv FLOPs.
        # Then shift + window partition in one gather of the projected rows.
        # With little padding (under 1/8 of the slots, e.g. 256x256 -> 264x264) the projection runs
        # after the gather instead: projecting first holds the unpadded and the gathered 3C-wide
        # tensors at once (+100 MB at swin_v1_l's first stage), for a saving of a few percent.
        tokens = self.norm1(x).reshape(b, h * w, c)
        if type(self.attn.qkv) is nn.Linear and torch.is_autocast_enabled(x.device.type):
            # Autocast runs LayerNorm in float32 and the qkv Linear would cast its input to the autocast
            # dtype anyway: cast before the gather and the padding, so they move half the bytes.
            tokens = tokens.to(torch.get_autocast_dtype(x.device.type))
        n_pad = 0 if layout.pad_slots is None else layout.pad_slots.numel()
        gather_first = n_pad * 8 < h * w
        # With oneDNN (fused), qkv comes out fresh where that output is moderate, else it is copied in
        # chunks into the workspace (_ONEDNN_QKV_MAX_BYTES); without, MKL writes into the workspace.
        rows = b * (n_win if gather_first else h * w)
        qkv_fresh = fused and rows * 3 * c * x.element_size() <= _ONEDNN_QKV_MAX_BYTES
        windows = qkv = None
        if gather_first:
            if workspace is not None:
                shapes = [(b, n_win, c)] if qkv_fresh else [(b, n_win, c), (b, n_win, 3 * c)]
                windows, qkv = [*workspace.views(x, *shapes), None][:2]
            windows = torch.index_select(tokens, 1, layout.gather_index, out=windows)
            if layout.pad_slots is not None:
                windows.index_fill_(1, layout.pad_slots, 0.0)
            windows = self._project_qkv(windows, qkv, fused)
        else:
            if workspace is not None:
                shapes = [(b, n_win, 3 * c)] if qkv_fresh else [(b, n_win, 3 * c), (b, h * w, 3 * c)]
                windows, qkv = [*workspace.views(x, *shapes), None][:2]
            projected = self._project_qkv(tokens, qkv, fused)
            windows = torch.index_select(projected, 1, layout.gather_index, out=windows)
            del projected
            bias = self.attn.qkv.bias
            if callable(bias):  # dynamically quantised Linear (int8 option): bias() is a method
                bias = bias()
            if bias is None:
                windows.index_fill_(1, layout.pad_slots, 0.0)
            else:
                windows[:, layout.pad_slots] = bias.to(windows.dtype)
        del tokens, qkv
        n = self.window_size * self.window_size
        # At CPU inference, padding slots get no query rows (their outputs are cropped below).
        groups = layout.query_groups if x.device.type == "cpu" and not torch.is_grad_enabled() else None
        y = self.attn(
            windows.view(b, layout.num_windows, n, 3 * c), layout.num_unmasked, layout.boundary_mask, groups
        )
        del windows  # the workspace is free again
        # merge + reverse shift + crop in one gather
        y = y.view(b, -1, c).index_select(1, layout.scatter_index)
        if workspace is None:
            x = x + self.drop_path(self.attn.proj(y).view(b, h, w, c))
            return x + self.drop_path(self.mlp(self.norm2(x)))
        # inference (no drop path)
        if fused:
            x = _onednn_linear_add(self.attn.proj, y.view(-1, c), x.reshape(-1, c))
            del y
            return _onednn_mlp_residual(self.mlp, self.norm2, x).view(b, h, w, c)
        x = _linear_plus(self.attn.proj, y, x)
        del y
        (hidden,) = workspace.views(x, (b, h, w, self.mlp.fc1.out_features))
        _linear_into(self.mlp.fc1, self.norm2(x), hidden)
        torch.ops.aten.gelu_(hidden)
        return _linear_plus(self.mlp.fc2, hidden, x)

    def _kernel_attends(self, x: torch.Tensor) -> bool:
        """Whether :meth:`forward` attends with the Triton kernel (:data:`WINDOW_KERNEL`): CUDA inference
        whose qkv comes out in float16/bfloat16 (half weights, or autocast), plain Linear projections."""
        if not WINDOW_KERNEL or not _swin_triton.AVAILABLE or not x.is_cuda:
            return False
        autocast = torch.is_autocast_enabled(x.device.type)
        dtype = torch.get_autocast_dtype(x.device.type) if autocast else x.dtype
        return type(self.attn.qkv) is nn.Linear and _swin_triton.usable(
            x.device, dtype, self.attn.dim // self.attn.num_heads, torch.is_grad_enabled()
        )

    def _forward_kernel(self, x: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
        """:meth:`forward` at CUDA half-precision inference: ``norm1``, the qkv projection of the unpadded
        token map, then one Triton kernel (:func:`birefnet.models._swin_triton.window_attention`) that
        reads each window's rows through ``layout.slot_token`` (padding slots: the qkv bias, i.e. a zero
        token) and writes each real query's output to its own token row, so no gather, padding, scatter
        or layout copy runs. Same function as the SDPA path, rounded in another order.

        With the model itself in half precision (no autocast; :data:`FUSED_RESIDUALS`), the residual
        stream is fused too: ``norm1`` also writes ``x + b_proj`` and the output projection's product is
        accumulated into it in place (``addmm_``, float32 sums rounded once), and likewise ``norm2``
        with ``b_fc2`` and the MLP's second product: two elementwise passes and two launches fewer per
        block. :attr:`gelu_tanh` (off by default) takes the MLP's GELU into the first product's epilogue,
        in its tanh form.
        """
        b, h, w, c = x.shape
        attn, mlp = self.attn, self.mlp
        fuse = (
            FUSED_RESIDUALS
            and not torch.is_autocast_enabled(x.device.type)
            and x.is_contiguous()
            and all(type(m) is nn.Linear and m.bias is not None for m in (attn.proj, mlp.fc1, mlp.fc2))
            and all(n.weight is not None and n.bias is not None for n in (self.norm1, self.norm2))
            and x.dtype == attn.proj.weight.dtype
        )
        if fuse:
            normed, x = _swin_triton.layer_norm(x, self.norm1, plus=attn.proj.bias)  # x: a new x + b_proj
        else:
            normed = self.norm1(x)
        qkv = attn.qkv(normed.reshape(b, h * w, c))  # (B, L, 3C); autocast casts to its dtype
        y = _swin_triton.window_attention(
            qkv,
            attn.qkv.bias,
            layout.slot_token,
            attn.relative_position_bias(),
            layout.boundary_mask,
            layout.num_unmasked,
            attn.num_heads,
        )
        del qkv
        if not fuse:
            x = x + self.drop_path(attn.proj(y).view(b, h, w, c))
            return x + self.drop_path(self.mlp(self.norm2(x)))
        flat = x.view(-1, c)
        flat.addmm_(y.view(-1, c), attn.proj.weight.t())
        del y
        normed, _ = _swin_triton.layer_norm(x, self.norm2, plus=mlp.fc2.bias, x_plus=x)  # x += b_fc2
        normed = normed.view(-1, c)
        if self.gelu_tanh:  # cuBLASLt's GELU epilogue is the tanh form
            hidden = torch._addmm_activation(mlp.fc1.bias, normed, mlp.fc1.weight.t(), use_gelu=True)
        else:
            hidden = torch.ops.aten.gelu_(mlp.fc1(normed))
        del normed
        flat.addmm_(hidden, mlp.fc2.weight.t())
        return x

    def forward_streamed(
        self,
        x: torch.Tensor,
        layout: WindowLayout,
        plan: tuple[tuple[int, int, torch.Tensor | None, torch.Tensor], ...],
        attended: torch.Tensor,
        out: torch.Tensor,
    ) -> None:
        """:meth:`forward` at float32 CPU inference on the oneDNN path, chunk by chunk, into ``out``.

        Attention runs per chunk of windows (:func:`_stream_plan`): gather the chunk's real tokens,
        LayerNorm, qkv projection (padding slots get the qkv bias, as zero tokens would), attention, and
        the output rows copied to their map positions in ``attended``. Then the output projection, the
        residual and the MLP run per chunk of tokens into ``out``. Per token and per window these are the
        operations of :meth:`forward` (float32 outputs agree to ~1e-6 relative), but no temporary is
        larger than a chunk: at swin_v1_l's first stage at 1024² a block allocated and page-faulted ~300
        MB of map-sized temporaries (the LayerNorm output, the attention output and SDPA's own, the merged
        output, two residual sums) besides the 204 MB qkv workspace; and at that stage a chunk's qkv
        (9 MB) can stay in the cache between its projection and its attention. Attention is
        :func:`_attend` over ~2 MB of scores at a time (faster than SDPA at these shapes, see
        :data:`_SCORES_BYTES`).

        Args:
            x: ``(B, H*W, C)`` block input, contiguous.
            layout: :func:`window_layout` of the map for this block's shift.
            plan: :func:`_stream_plan` of the same map and shift.
            attended: ``(B, H*W, C)`` buffer for the attention output (overwritten).
            out: ``(B, H*W, C)`` buffer for the block output; may be ``x`` itself (each token's rows are
                read before they are written).
        """
        b, _, c = x.shape
        attn = self.attn
        heads = attn.num_heads
        n = self.window_size * self.window_size
        bias = attn.relative_position_bias().unsqueeze(0)  # (1, heads, N, N), broadcast over windows
        m = layout.num_unmasked
        masked_bias = None
        if layout.boundary_mask is not None:
            masked_bias = layout.boundary_mask.unsqueeze(1) + bias  # (nW - m, heads, N, N)
        qkv_bias = attn.qkv.bias if attn.qkv.bias is not None else x.new_zeros(3 * c)
        for i in range(b):
            tokens, target = x[i], attended[i]
            for start, stop, rows, index in plan:
                windows = stop - start
                normed = _gathered_norm(self.norm1, tokens, index)  # C kernel: one pass, else PyTorch
                if normed is None:
                    normed = self.norm1(tokens.index_select(0, index))
                projected = _onednn_linear(attn.qkv, normed)
                if rows is None:
                    qkv = projected.view(windows, n, 3 * c)
                else:  # padding slots: zero tokens after norm1, so their qkv is the bias
                    qkv = qkv_bias.expand(windows, n, 3 * c).contiguous()
                    qkv.index_copy_(1, rows, projected.view(windows, -1, 3 * c))
                mask = bias if start < m else masked_bias[start - m : stop - m]
                # The C kernel (AVX-512, built on first use): all of the chunk's windows and heads in one
                # call, each output row written to its token (cpu_kernels); else PyTorch's path below.
                if C_ATTENTION and cpu_kernels.window_attention(qkv, heads, rows, mask, target, index):
                    continue
                q, k, v = qkv.view(windows, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
                if rows is not None:  # query rows of real tokens only (padding outputs are cropped)
                    q, mask = q.index_select(2, rows), mask.index_select(2, rows)
                # the scores of `per` windows at a time: ~_SCORES_BYTES, in the cache through softmax
                per = max(1, _SCORES_BYTES // (heads * q.shape[2] * n * x.element_size()))
                slots = index.view(windows, -1)
                for a in range(0, windows, per):
                    sub = mask if mask.shape[0] == 1 else mask[a : a + per]
                    o = _attend(q[a : a + per], k[a : a + per], v[a : a + per], sub)  # (w, heads, rows, d)
                    target.index_copy_(0, slots[a : a + per].reshape(-1), o.transpose(1, 2).reshape(-1, c))
        flat, flat_attended, flat_out = x.view(-1, c), attended.view(-1, c), out.view(-1, c)
        for j in range(0, flat.shape[0], _ONEDNN_CHUNK):
            rows = slice(j, j + _ONEDNN_CHUNK)
            if RESIDUAL_POST_OP:
                part = _onednn_linear_add(attn.proj, flat_attended[rows], flat[rows])
            else:  # the sum as its own pass over the chunk, in the cache (see RESIDUAL_POST_OP)
                part = _onednn_linear(attn.proj, flat_attended[rows]).add_(flat[rows])
            normed = _gathered_norm(self.norm2, part, None)
            if normed is None:
                normed = self.norm2(part)
            hidden = _onednn_linear(self.mlp.fc1, normed, gelu=True)
            if RESIDUAL_POST_OP:
                flat_out[rows] = _onednn_linear_add(self.mlp.fc2, hidden, part)
            else:  # written straight into the output rows, no copy
                torch.add(_onednn_linear(self.mlp.fc2, hidden), part, out=flat_out[rows])

    def _project_qkv(self, tokens: torch.Tensor, out: torch.Tensor | None, fused: bool) -> torch.Tensor:
        """``attn.qkv(tokens)`` for ``(B, M, C)`` tokens -> ``(B, M, 3C)``: into ``out`` when given (with
        oneDNN when ``fused``, chunk by chunk copied in; else MKL writes it), else a fresh tensor (oneDNN
        when ``fused``)."""
        b, m, c = tokens.shape
        if not fused:
            return _linear(self.attn.qkv, tokens, out)
        flat = tokens.view(-1, c)
        if out is None:
            return _onednn_linear(self.attn.qkv, flat).view(b, m, 3 * c)
        target = out.view(-1, 3 * c)
        for i in range(0, flat.shape[0], _ONEDNN_CHUNK):
            target[i : i + _ONEDNN_CHUNK] = _onednn_linear(self.attn.qkv, flat[i : i + _ONEDNN_CHUNK])
        return out

    def forward_traceable(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`forward` with symbolic sizes (export): pad, roll, reshape partition, batched attention.

        The same computation as the original Swin-det block: zero-pad the normalised tokens at the
        bottom/right to window multiples, shift the padded map by ``-shift``, cut ``ws x ws`` windows,
        attend (shift mask from :func:`shifted_window_mask`), merge, shift back, crop.

        Args:
            x: ``(B, H, W, C)``.
            mask: the shift mask of this size (shared by the stage's shifted blocks); built here when
                None and the block is shifted; ignored when it is not.

        Returns:
            ``(B, H, W, C)``.
        """
        b, h, w, c = x.shape
        ws, shift = self.window_size, self.shift
        nh, nw = _window_grid(h, w, ws)
        y = F.pad(self.norm1(x), (0, 0, 0, nw * ws - w, 0, nh * ws - h))
        if shift:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
        windows = y.reshape(b, nh, ws, nw, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, nh * nw, ws * ws, c)
        if not shift:
            mask = None
        elif mask is None:
            mask = shifted_window_mask(nh, nw, ws, shift, device=x.device, dtype=x.dtype)
        y = self.attn.forward_traceable(windows, mask)
        y = y.reshape(b, nh, nw, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, nh * ws, nw * ws, c)
        if shift:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        x = x + self.drop_path(self.attn.proj(y[:, :h, :w]))
        return x + self.drop_path(self.mlp(self.norm2(x)))


@functools.lru_cache(maxsize=16)
def _merge_index(batch: int, height: int, width: int) -> torch.Tensor:
    """Rows of a ``(batch, height, width)`` token map (even sizes) that :class:`PatchMerging` concatenates,
    4 per output token in its order (row, column offsets (0, 0), (1, 0), (0, 1), (1, 1)): ``(B * H/2 *
    W/2 * 4,)`` int64, cached per size like the window layouts."""
    with torch.inference_mode(False), torch.no_grad():  # cached beyond the call
        piece = torch.arange(4)
        dy, dx = piece % 2, piece // 2
        i = torch.arange(height // 2)[:, None, None]
        j = torch.arange(width // 2)[None, :, None]
        plane = ((2 * i + dy) * width + 2 * j + dx).reshape(-1)
        return (torch.arange(batch)[:, None] * (height * width) + plane).reshape(-1)


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> one token: concat (4C), LayerNorm, Linear 4C -> 2C without bias.

    Concatenation order is (0,0), (1,0), (0,1), (1,1) as (row, column) offsets, as in the
    original; odd sizes are zero-padded at the bottom/right first.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B, ceil(H/2), ceil(W/2), 2C)``."""
        b, h, w, c = x.shape
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
            h, w = h + h % 2, w + w % 2
        normed = None
        if x.device.type == "cpu" and not is_tracing():  # the C kernel: gathered and normalised in one pass
            normed = _gathered_norm(self.norm, x.reshape(-1, c), _merge_index(b, h, w), pieces=4)
        if normed is not None:
            x = normed.view(b, h // 2, w // 2, 4 * c)
        else:
            # (B, H/2, dy, W/2, dx, C) -> (B, H/2, W/2, dx, dy, C): dx-major gives the original order.
            x = x.view(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).reshape(b, h // 2, w // 2, 4 * c)
            x = self.norm(x)
        if _onednn_linear_ok(x, self.reduction):  # AVX-512 CPU inference (birefnet.models.onednn)
            return _onednn_linear(self.reduction, x.view(-1, 4 * c)).view(b, h // 2, w // 2, 2 * c)
        return self.reduction(x)

    def forward_traceable(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` for symbolic sizes: always pads (by ``H % 2``, ``W % 2``, possibly 0), so the
        graph does not depend on the parity of the export example's size (BiRefNet's half-size input
        gives odd maps at stride 32 for some sizes)."""
        b, h, w, c = x.shape
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        h2, w2 = (h + 1) // 2, (w + 1) // 2
        x = x.reshape(b, h2, 2, w2, 2, c).permute(0, 1, 3, 4, 2, 5).reshape(b, h2, w2, 4 * c)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """Blocks with alternating shift 0 / ws // 2, then optional patch merging.

    The window layouts (gather indices and shift mask) depend only on the map size, so they are
    built once per forward and shared by the stage's blocks.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        drop_path: Sequence[float],
        downsample: bool,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift = window_size // 2
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim,
                num_heads,
                window_size,
                shift=0 if i % 2 == 0 else self.shift,
                mlp_ratio=mlp_ratio,
                drop_path=drop_path[i],
                qkv_bias=qkv_bias,
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, H, W, C)`` -> (stage output ``(B, H, W, C)``, input of the next stage)."""
        if is_tracing():  # symbolic sizes: no per-size cache, no Python loop over the batch
            _, h, w, _ = x.shape
            nh, nw = _window_grid(h, w, self.window_size)
            mask = None
            if any(block.shift for block in self.blocks):
                mask = shifted_window_mask(
                    nh, nw, self.window_size, self.shift, device=x.device, dtype=x.dtype
                )
            for block in self.blocks:
                x = block.forward_traceable(x, mask)
            return x, (self.downsample.forward_traceable(x) if self.downsample is not None else x)
        _, h, w, _ = x.shape
        layouts = {
            shift: window_layout(h, w, self.window_size, shift, device=x.device, dtype=x.dtype)
            for shift in {block.shift for block in self.blocks}
        }
        # CPU inference: the blocks share one buffer for their largest temporaries (see _Workspace).
        inference = not self.training and not torch.is_grad_enabled() and x.device.type == "cpu"
        if (
            inference
            and STREAM_WINDOWS
            and all(_onednn_linear_ok(x, *_linears(block)) for block in self.blocks)
        ):
            # oneDNN path: window chunk by window chunk, the block output written in place from the
            # second block on (SwinBlock.forward_streamed)
            b, h, w, c = x.shape
            tokens = x.reshape(b, h * w, c)
            attended, out = torch.empty_like(tokens), torch.empty_like(tokens)
            for block in self.blocks:
                plan = _stream_plan(h, w, self.window_size, block.shift, _STREAM_TOKENS)
                block.forward_streamed(tokens, layouts[block.shift], plan, attended, out)
                tokens = out
            del attended
            x = out.view(b, h, w, c)
            return x, (self.downsample(x) if self.downsample is not None else x)
        workspace = _Workspace() if inference else None
        for block in self.blocks:
            x = block(x, layouts[block.shift], workspace)
        del workspace
        return x, (self.downsample(x) if self.downsample is not None else x)


class PatchEmbed(nn.Module):
    """Non-overlapping patch x patch convolution, then LayerNorm over channels.

    The input is zero-padded right/bottom to a multiple of the patch size first.
    """

    def __init__(self, patch_size: int, in_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, ceil(H/p), ceil(W/p), C)`` (channels last)."""
        p = self.patch_size
        pad_b, pad_r = (-x.shape[2]) % p, (-x.shape[3]) % p
        tracing = is_tracing()
        # Traced: pad unconditionally, so no Python branch reads a symbolic size (padding by 0 is free).
        if tracing or pad_b or pad_r:
            x = F.pad(x, (0, pad_r, 0, pad_b))
        if x.device.type == "cpu" and not tracing:
            # A channels-last input makes oneDNN write the embedding channels-last, so the (B, H, W, C)
            # permute below is a contiguous view and LayerNorm reads it without first copying the
            # whole map (swin_v1_l at 1024²: 163 -> 54 ms; same values up to float rounding).
            x = x.contiguous(memory_format=torch.channels_last)
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class SwinTransformer(Backbone):
    """Swin v1 backbone returning the four normalised stage outputs (strides 4, 8, 16, 32).

    Args:
        embed_dim: channels of stage 1 (doubling per stage).
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window_size: window side (7 for T/S, 12 for B/L).
        mlp_ratio: MLP hidden width relative to the stage width.
        patch_size: side of the patch embedding (4).
        in_channels: image channels.
        drop_path_rate: stochastic depth of the last block; rates grow linearly from 0 over all
            blocks (training only).
        qkv_bias: bias in the qkv projections.
    """

    expected_missing_pretrained = ("norm0.", "norm1.", "norm2.", "norm3.")

    def __init__(
        self,
        *,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        patch_size: int = 4,
        in_channels: int = 3,
        drop_path_rate: float = 0.2,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(f"Swin needs 4 stages, got depths={depths}, num_heads={num_heads}")
        if patch_size != 4:
            raise ValueError(f"patch_size must be 4 so the outputs have strides 4..32, got {patch_size}")
        self.out_channels = tuple(embed_dim * 2**i for i in range(4))  # type: ignore[assignment]
        self.window_size = window_size
        self.patch_embed = PatchEmbed(patch_size, in_channels, embed_dim)
        total = sum(depths)
        rates = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
        self.layers = nn.ModuleList()
        start = 0
        for i, (depth, heads) in enumerate(zip(depths, num_heads, strict=True)):
            self.layers.append(
                SwinStage(
                    self.out_channels[i],
                    depth,
                    heads,
                    window_size,
                    mlp_ratio,
                    drop_path=rates[start : start + depth],
                    downsample=i < 3,
                    qkv_bias=qkv_bias,
                )
            )
            start += depth
        # One LayerNorm per output (not part of ImageNet checkpoints).
        for i, channels in enumerate(self.out_channels):
            self.add_module(f"norm{i}", nn.LayerNorm(channels))
        self.apply(init_transformer_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Args: x ``(B, 3, H, W)`` normalised image (any size; BiRefNet uses multiples of 32).

        Returns: four ``(B, C_i, ceil(H / 2^(i+2)), ceil(W / 2^(i+2)))`` tensors (channels-last in memory
        at CPU inference, else contiguous).
        """
        # At CPU inference the outputs stay channels-last in memory (a permuted view, no copy): the
        # multi-scale concatenations, the resizes and the decoder's 1x1 lateral convolutions all take
        # that layout without reordering (lateral_block2 of swin_v1_t at 1024²: 97 -> 37 ms).
        # Elsewhere they are made NCHW-contiguous.
        # A channels-last input (the channels-last option) keeps them channels-last on other devices too:
        # no NCHW copy of each, and a channels-last decoder after them (on an H100, swin_v1_l at 1024² in
        # bf16, batch 8: 82.4 -> 94.4 images/s with the model's convolutions channels-last as well).
        wants = x.device.type == "cpu" or (
            x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        )
        channels_last = wants and not torch.is_grad_enabled() and not is_tracing()
        x = self.patch_embed(x)
        outs = []
        for i, layer in enumerate(self.layers):
            out, x = layer(x)
            norm: nn.LayerNorm = getattr(self, f"norm{i}")
            out = norm(out).permute(0, 3, 1, 2)
            outs.append(out if channels_last else out.contiguous())
        return outs


def swin_v1(name: str, drop_path_rate: float | None = None) -> SwinTransformer:
    """Build a named Swin v1 variant (``swin_v1_t``, ``_s``, ``_b``, ``_l``).

    Args:
        name: key of :data:`SWIN_CONFIGS`.
        drop_path_rate: stochastic depth of the last block; None = official 0.2.
    """
    embed_dim, depths, heads, window = SWIN_CONFIGS[name]
    return SwinTransformer(
        embed_dim=embed_dim,
        depths=depths,
        num_heads=heads,
        window_size=window,
        drop_path_rate=0.2 if drop_path_rate is None else drop_path_rate,
    )
