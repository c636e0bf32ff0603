"""Swin window attention on GPUs as one Triton kernel that reads and writes the token map in place.

The eager CUDA path of :class:`birefnet.models.backbones.swin.SwinBlock` gathers the normalised tokens
into window order (padding slots zeroed), projects them to qkv, attends with
``F.scaled_dot_product_attention`` (two calls per sample in shifted blocks: windows with and without the
shift mask), copies the ``(windows, heads, N, d)`` output back to ``(windows, N, C)``, and scatters the
windows back to the map. At swin_v1_l's 1024² batch of 8 the attention calls and these layout copies were
~55 of the forward's ~139 ms of GPU time (docs/performance.md). Here one program attends one block of
query rows of one head of one window:

* ``qkv`` is the projection of the unpadded token map, ``(B, H·W, 3C)``, in token order; each window slot's
  q/k/v rows are read through ``slot_token`` (the token of each slot after shift and partition, -1 for a
  zero-padding slot). A padding slot is a zero vector after ``norm1``, so its k and v are the qkv bias
  (as in the official code, padding tokens take part in attention unmasked);
* the scores get the relative-position bias and, in windows ``>= num_unmasked``, the additive shift mask,
  and go through an online (flash-style) softmax in float32;
* each real query row is written straight to its token's row of the ``(B, H·W, C)`` output, heads side by
  side, so the merge, the reverse shift and the crop cost nothing. Padding slots' outputs are never
  written (the official code crops them).

It computes the function of the eager path (the same softmax of the same sums), with rounding in another
order: scores and softmax in float32 from half inputs, as SDPA's fused kernels do. On an H100 (2026-11-28,
swin_v1_l at 1024², bf16 weights, batch 8) the Swin blocks ran 1.82x faster than on the SDPA path, and
the whole forward went from 61.7 to 75.1 images/s with this kernel alone.

Inference only (no backward), CUDA tensors; :func:`usable` says when it applies. Under
``TRITON_INTERPRET=1`` the kernel also runs on CPU tensors (slowly): the tests use that.
"""

from __future__ import annotations

import torch

try:  # Triton ships with PyTorch's CUDA wheels; the CPU wheel has none, and then this path is off.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

__all__ = ["AVAILABLE", "layer_norm", "usable", "window_attention"]

AVAILABLE = triton is not None

_AUTO_DTYPES = (torch.float16, torch.bfloat16)


def usable(device: torch.device, dtype: torch.dtype, head_dim: int, needs_grad: bool) -> bool:
    """Whether a Swin block should attend with the kernel: Triton present, float16/bfloat16 q/k/v on a CUDA
    device, a head width that is a power of two in [16, 128] (``tl.dot``), no autograd, and not inside an
    ONNX export or TorchScript trace."""
    return (
        AVAILABLE
        and device.type == "cuda"
        and dtype in _AUTO_DTYPES
        and head_dim in (16, 32, 64, 128)
        and not needs_grad
        and not torch.onnx.is_in_onnx_export()
        and not torch.jit.is_tracing()
    )


if AVAILABLE:

    @triton.jit
    def _window_attention_kernel(
        qkv_ptr,  # (B, L, 3C) contiguous, token order; q | k | v, each heads × D
        qkv_bias_ptr,  # (3C,) the q | k | v of a zero token (padding slots)
        slot_ptr,  # (nW·N,) int32 token of each window slot, -1 for padding
        bias_ptr,  # (heads, N, N) relative-position bias, any float dtype
        mask_ptr,  # (nW - num_unmasked, N, N) additive 0 / -inf shift mask (unused without HAS_MASK)
        out_ptr,  # (B, L, C) contiguous
        L,
        C,
        NW,
        num_unmasked,
        HEADS,
        scale,
        size_class,  # log2 of B·nW: only a key of the autotuner (batch 1 and 8 may want other tiles)
        N: tl.constexpr,  # slots per window (ws²): the key loop's bound, unrolled at compile time
        HAS_MASK: tl.constexpr,
        D: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        q_blocks = tl.cdiv(N, BLOCK_M)
        pid = tl.program_id(0)  # query block and head vary fastest: one window's k / v stay in the cache
        head = (pid // q_blocks) % HEADS
        block_m = pid % q_blocks
        window_id = tl.program_id(1)  # b · nW + w
        batch = window_id // NW
        window = window_id % NW
        d = tl.arange(0, D)
        rows = block_m * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < N
        row_token = tl.load(slot_ptr + window * N + rows, mask=row_ok, other=-1)
        row_real = row_token >= 0
        stride_tok = 3 * C
        base = qkv_ptr + batch.to(tl.int64) * L * stride_tok + head * D
        q = tl.load(
            base + row_token.to(tl.int64)[:, None] * stride_tok + d[None, :],
            mask=row_real[:, None],
            other=0.0,
        )
        k_pad = tl.load(qkv_bias_ptr + C + head * D + d)
        v_pad = tl.load(qkv_bias_ptr + 2 * C + head * D + d)
        shifted = window >= num_unmasked
        mask_base = mask_ptr + (window - num_unmasked).to(tl.int64) * N * N
        bias_base = bias_ptr + head * N * N

        # running max (finite start: a row whose first key block is all masked gets exp2(-inf) = 0),
        # running sum and output, all float32
        m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
        log2e = 1.4426950408889634
        for start in range(0, N, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            col_ok = cols < N
            col_token = tl.load(slot_ptr + window * N + cols, mask=col_ok, other=-1)
            col_real = col_token >= 0
            offs = base + col_token.to(tl.int64)[:, None] * stride_tok + d[None, :]
            k = tl.load(offs + C, mask=col_real[:, None], other=0.0)
            v = tl.load(offs + 2 * C, mask=col_real[:, None], other=0.0)
            k = tl.where(col_real[:, None], k, k_pad[None, :].to(k.dtype))
            v = tl.where(col_real[:, None], v, v_pad[None, :].to(v.dtype))
            pair = rows[:, None] * N + cols[None, :]
            pair_ok = row_ok[:, None] & col_ok[None, :]
            s = tl.dot(q, tl.trans(k)) * scale
            s += tl.load(bias_base + pair, mask=pair_ok, other=0.0).to(tl.float32)
            if HAS_MASK:  # windows before num_unmasked load nothing (all lanes masked off)
                s += tl.load(mask_base + pair, mask=pair_ok & shifted, other=0.0).to(tl.float32)
            s = tl.where(col_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2((m_i - m_new) * log2e)
            p = tl.exp2((s - m_new[:, None]) * log2e)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        out = acc / l_i[:, None]
        target = (
            out_ptr + batch.to(tl.int64) * L * C + row_token.to(tl.int64)[:, None] * C + head * D + d[None, :]
        )
        tl.store(target, out.to(out_ptr.dtype.element_ty), mask=row_real[:, None])

    # Tile shapes timed on the first call per (window size, channels, mask, dtype, window-count class),
    # then kept for the process; few, because each is a compilation. For 12x12 windows (N = 144) 64 x 64
    # tiles waste 25 % of each axis, 16-row tiles none; the H100's choices are in docs/performance.md.
    _CONFIGS = [
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 16}, num_warps=4, num_stages=1),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 16}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=2),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=2),
        triton.Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=2, num_stages=3),
        triton.Config({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=2, num_stages=2),
        triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=3),
        # added after the H100 chose the one above for most shapes (not yet timed there)
        triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=4),
        triton.Config({"BLOCK_M": 32, "BLOCK_N": 16}, num_warps=1, num_stages=3),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 16}, num_warps=8, num_stages=2),
    ]
    _tuned_kernel = triton.autotune(configs=_CONFIGS, key=["N", "C", "HAS_MASK", "size_class"])(
        _window_attention_kernel
    )


if AVAILABLE:

    @triton.jit
    def _layer_norm_kernel(
        x_ptr,  # (M, C) contiguous
        w_ptr,  # (C,)
        b_ptr,  # (C,)
        y_ptr,  # (M, C): the normalised rows
        plus_ptr,  # (C,) added to x for the second output (unused without HAS_PLUS)
        x_plus_ptr,  # (M, C): x + plus; may be x itself (each element is read before it is written)
        M,
        C,
        eps,
        HAS_PLUS: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.arange(0, BLOCK_C)
        col_ok = cols < C
        ok = (rows < M)[:, None] & col_ok[None, :]
        offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
        x = tl.load(x_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        mean = tl.sum(x, 1) / C
        centred = tl.where(ok, x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, 1) / C + eps)
        w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        y = centred * rstd[:, None] * w[None, :] + b[None, :]
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=ok)
        if HAS_PLUS:
            plus = tl.load(plus_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
            tl.store(x_plus_ptr + offs, (x + plus[None, :]).to(x_plus_ptr.dtype.element_ty), mask=ok)


def layer_norm(
    x: torch.Tensor,
    norm: torch.nn.LayerNorm,
    plus: torch.Tensor | None = None,
    x_plus: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``norm(x)`` over the last dimension, and optionally ``x + plus`` from the same read of ``x``.

    The residual stream of a Swin block is ``x + proj(a) + b_proj``: with ``x + b_proj`` written here, the
    projection's product is accumulated into it in place (``addmm_``) instead of written and added in two
    more passes (see :meth:`birefnet.models.backbones.swin.SwinBlock._forward_kernel`). Statistics in
    float32, as ATen's kernel; several rows per program (ATen's CUDA kernel gives each 192-wide row of
    swin_v1_l's first stage one block of threads).

    Args:
        x: ``(..., C)`` contiguous, float16/bfloat16 (float32 for the interpreter tests).
        norm: the LayerNorm (its weight, bias and eps; both affine parameters required).
        plus: ``(C,)`` vector for the second output, or None for none.
        x_plus: where ``x + plus`` goes (may be ``x`` itself); a new tensor when None.

    Returns:
        ``(norm(x), x + plus or None)``, both shaped and typed like ``x``.
    """
    channels = x.shape[-1]
    x2d = x.reshape(-1, channels)
    rows = x2d.shape[0]
    y = torch.empty_like(x)
    if plus is not None and x_plus is None:
        x_plus = torch.empty_like(x)
    block_c = triton.next_power_of_2(channels)
    block_r = max(1, min(16, 4096 // block_c))  # ~4096 values per program
    _layer_norm_kernel[(triton.cdiv(rows, block_r),)](
        x2d,
        norm.weight,
        norm.bias,
        y,
        norm.weight if plus is None else plus,
        y if x_plus is None else x_plus,
        rows,
        channels,
        norm.eps,
        HAS_PLUS=plus is not None,
        BLOCK_R=block_r,
        BLOCK_C=block_c,
        num_warps=4 if block_c <= 1024 else 8,
    )
    return y, x_plus


def window_attention(
    qkv: torch.Tensor,
    qkv_bias: torch.Tensor | None,
    slot_token: torch.Tensor,
    bias: torch.Tensor,
    mask: torch.Tensor | None,
    num_unmasked: int,
    num_heads: int,
    *,
    tile: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Shifted-window attention of a token map, read from and written to token order.

    Args:
        qkv: ``(B, L, 3C)`` projection of the ``L = H·W`` unpadded tokens; float16 or bfloat16 (float32
            too, for the interpreter tests; its products are then TF32 on a GPU).
        qkv_bias: ``(3C,)`` the projection's bias (the q/k/v of a zero-padding slot), or None (zeros).
        slot_token: ``(nW·N,)`` int32 token index of each window slot, -1 for padding
            (:attr:`birefnet.models.backbones.swin.WindowLayout.slot_token`).
        bias: ``(heads, N, N)`` relative-position bias.
        mask: ``(nW - num_unmasked, N, N)`` additive shift mask of the last windows, or None.
        num_unmasked: windows ``[0, num_unmasked)`` get the bias only.
        num_heads: heads; ``C / num_heads`` is the head width.
        tile: ``(BLOCK_M, BLOCK_N)`` to bypass the autotuner (tests; the interpreter has no timer).

    Returns:
        ``(B, L, C)`` attention output before the output projection, in the dtype of ``qkv``.
    """
    batch, length, c3 = qkv.shape
    channels = c3 // 3
    head_dim = channels // num_heads
    n = bias.shape[-1]
    num_windows = slot_token.numel() // n
    qkv = qkv.contiguous()
    out = torch.empty((batch, length, channels), device=qkv.device, dtype=qkv.dtype)
    if qkv_bias is None:
        qkv_bias = qkv.new_zeros(c3)
    args = (
        qkv,
        qkv_bias.to(qkv.dtype).contiguous(),
        slot_token,
        bias.contiguous(),
        bias if mask is None else mask.contiguous(),  # a valid pointer; not read without a mask
        out,
        length,
        channels,
        num_windows,
        num_unmasked,
        num_heads,
        head_dim**-0.5,
        max(batch * num_windows, 1).bit_length(),
    )
    meta = {"N": n, "HAS_MASK": mask is not None, "D": head_dim}
    if tile is None:

        def grid(cfg: dict) -> tuple[int, int]:
            return (triton.cdiv(n, cfg["BLOCK_M"]) * num_heads, batch * num_windows)

        _tuned_kernel[grid](*args, **meta)
    else:
        block_m, block_n = tile
        grid_fixed = (triton.cdiv(n, block_m) * num_heads, batch * num_windows)
        _window_attention_kernel[grid_fixed](*args, **meta, BLOCK_M=block_m, BLOCK_N=block_n)
    return out
