"""Building blocks of the BiRefNet decoder, with the official state-dict names.

Every attribute name here is an official state-dict key component (``conv_in``, ``bn_in``,
``dec_att``, ``aspp_deforms``, ``global_avg_pool.1`` ...), so official checkpoints load without a
key map. Registration order follows the official modules too, which keeps ``state_dict()`` in the
official key order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from birefnet.models import _resize_triton, onednn
from birefnet.models.deform_conv import DeformableConv2d
from birefnet.models.tracing import is_tracing

ASPP_PLANES = 256  # width of every ASPP branch (official ``in_channelster``)

#: At CPU inference, each deformable ASPP branch is normalised, rectified and projected chunk by chunk
#: as its deformable convolution produces it (:func:`_fused_deformable_branch`). A switch for
#: comparisons (``benchmarks/ab_switch.py --switch fused-aspp``); both paths compute the same function.
FUSE_DEFORMABLE_BRANCHES = True

#: At CUDA inference where the fused Triton deformable kernel runs, a deformable ASPP branch's eval-mode
#: BatchNorm and ReLU are applied inside that kernel, on its float32 sums, instead of as three passes over
#: the 256-channel output (:meth:`DeformableConv2d.forward_affine_relu`). Same function, one rounding
#: instead of three. On an H100 (swin_v1_l, 1024², bf16 weights, channels-last, CUDA graph) batch 8 went
#: 95.5 -> 102.1 images/s; ``benchmarks/gpu.py``'s ``-noepi`` modes turn it off.
FUSE_DEFORM_EPILOGUE = True

#: At CUDA inference with Triton, many-channel half-precision maps are resized by the Triton kernel of
#: :func:`birefnet.models._resize_triton.resize_channels_last` instead of ATen's channels-last kernel (same
#: formula). With :data:`FUSE_DEFORM_EPILOGUE`, batch 8 went 102.1 -> 108.2 images/s on the H100 above;
#: ``benchmarks/gpu.py``'s ``-nors`` modes turn it off.
TRITON_RESIZE = True


def make_norm(channels: int, norm: str) -> nn.Module:
    """BatchNorm2d for ``norm == "bn"`` (all released weights), identity for ``"none"``."""
    return nn.BatchNorm2d(channels) if norm == "bn" else nn.Identity()


def norm_inplace(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)``, in place for an eval-mode BatchNorm2d when no autograd graph is recorded.

    Saves one full-size temporary per normalised map at inference (67 MB per ASPP branch of
    swin_v1_l's first decoder block at 1024x1024); equal to ``F.batch_norm`` up to float rounding.
    """
    affine = frozen_affine(norm) if not torch.is_grad_enabled() else None
    if affine is None:
        return norm(x)
    scale, shift = affine
    return x.mul_(scale.view(1, -1, 1, 1)).add_(shift.view(1, -1, 1, 1))


def frozen_affine(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(scale, shift)`` (each ``(C,)``) with ``norm(x) == x * scale + shift`` per channel, for an
    eval-mode BatchNorm2d with running statistics; None for anything else (Identity included)."""
    if (
        not isinstance(norm, nn.BatchNorm2d)
        or norm.training
        or norm.running_var is None
        or norm.running_mean is None
    ):
        return None
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    return scale, shift


def conv_over_parts(conv: nn.Module, x: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``conv(torch.cat(x, dim=1))`` without building the concatenation, when ``x`` is a tuple.

    A convolution is linear in its input channels, so it is the sum of the convolutions of each part
    with its slice of the weight. At inference the decoder hands its blocks (feature map, encoded
    image patches) this way: for swin_v1_l at 1024² the concatenation at stride 4 is a fresh 110 MB
    map whose page-faulted copy took ~0.2 s, against ~5 ms for adding the small part's convolution.
    Equal to the concatenated form up to float rounding (the channel sum is split). Modules other
    than a plain zero-padded ``nn.Conv2d`` with one group get the concatenation.

    Args:
        conv: the convolution (its ``in_channels`` = the parts' channels together).
        x: (B, C, H, W) tensor, or a tuple of (B, C_i, H, W) parts.
    """
    if not isinstance(x, tuple):
        return conv(x)
    if type(conv) is not nn.Conv2d or conv.groups != 1 or conv.padding_mode != "zeros":
        return conv(torch.cat(x, dim=1))
    out = None
    start = 0
    for part in x:
        weight = conv.weight[:, start : start + part.shape[1]]
        start += part.shape[1]
        y = F.conv2d(
            part, weight, conv.bias if out is None else None, conv.stride, conv.padding, conv.dilation
        )
        out = y if out is None else out.add_(y)
    return out


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize with ``align_corners=True`` (the only resize inside the network).

    Returns ``x`` itself when the size already matches: the official code calls interpolate there
    too, which is an exact identity for align_corners=True, so skipping it changes no value.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.is_cuda and x.dim() == 4 and x.shape[1] > 4:
        # CUDA's NCHW bilinear kernel gives each thread one output pixel and loops over batch x
        # channels, so a many-channel map with few pixels runs on a few thousand threads (2 ms per
        # call for swin_v1_l's multi-scale and context resizes at batch 8 on an H200). The
        # channels-last kernel spreads every output value over the GPU; same formula, same values.
        if (
            TRITON_RESIZE
            and _resize_triton.AVAILABLE
            and x.dtype in (torch.float16, torch.bfloat16)
            and not torch.is_grad_enabled()
            and not is_tracing()
        ):
            out = _resize_triton.resize_channels_last(x, tuple(size))
        else:
            out = F.interpolate(
                x.contiguous(memory_format=torch.channels_last),
                size=tuple(size),
                mode="bilinear",
                align_corners=True,
            )
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            return out  # a channels-last model (the channels-last option) stays channels-last
        return out.contiguous()
    if x.device.type == "cpu" and x.dim() == 4 and x.shape[1] > 1 and x.is_contiguous() and not is_tracing():
        # ATen's CPU kernel copies a many-channel NCHW map to channels-last, resizes it there and
        # copies the result back. For swin_v1_l at 1024² the context resizes (e.g. 384 channels,
        # 256² -> 32²) spent ~0.2 s each in that copy of a 100 MB input for a 1.5 MB output. Each
        # channel resized alone (channels as batch) runs the plain NCHW kernel with no copies:
        # 0.6 s -> 0.2 s for the forward's resizes; the same formula, values within 1 ulp of the
        # channels-last kernel's.
        b, c, h, w = x.shape
        flat = F.interpolate(x.view(b * c, 1, h, w), size=tuple(size), mode="bilinear", align_corners=True)
        return flat.view(b, c, *flat.shape[-2:])
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


# Bytes of output map per resize where a map is resized a few channels at a time (:func:`channel_chunks`):
# no temporary of all the channels at full size is made, and each chunk is used while in the cache.
_RESIZE_CHUNK_BYTES = 8 * 2**20


def channel_chunks(channels: int, like: torch.Tensor, size: Sequence[int]) -> list[slice]:
    """Slices of ``channels`` such that a (B, chunk, *size) map of ``like``'s batch and dtype holds at most
    :data:`_RESIZE_CHUNK_BYTES` (at least one channel per slice)."""
    per_channel = like.shape[0] * size[0] * size[1] * like.element_size()
    step = max(1, _RESIZE_CHUNK_BYTES // per_channel)
    return [slice(i, i + step) for i in range(0, channels, step)]


@dataclass(frozen=True)
class TwoScaleFeature:
    """One encoder stage of the multi-scale input (``multi_scale_input="cat"``) before its fusion.

    Stands for ``torch.cat([full, resize(half, full size)], dim=1)``, the map the official code builds,
    without building it. At CPU inference BiRefNet hands the decoder its three finer stages this way:
    everything that reads them is linear in the concatenation (the 1x1 lateral convolutions and the
    bilinear context resizes), so it can be computed from the two parts
    (:meth:`birefnet.models.decoder.Decoder.forward`, :meth:`resized`). For swin_v1_l at 1024² the
    stride-4 concatenation alone is 100 MB, and its upsampled half another 50 MB, both page-faulted in
    on every forward.

    Attributes:
        full: (B, C_f, h, w) map of the full-size pass.
        half: (B, C_h, h', w') map of the half-size pass (h' = h / 2 for inputs of multiples of 32).
    """

    full: torch.Tensor
    half: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        """Shape of the concatenation it stands for: (B, C_f + C_h, h, w)."""
        b, c, h, w = self.full.shape
        return torch.Size((b, c + self.half.shape[1], h, w))

    def concatenated(self) -> torch.Tensor:
        """The concatenation itself (the official fusion), for consumers that are not linear."""
        return torch.cat([self.full, resize(self.half, self.full.shape[-2:])], dim=1)

    def resized(self, size: Sequence[int]) -> torch.Tensor:
        """``resize(self.concatenated(), size)``: the full part resized, and the half part resized to full
        size and then to ``size`` a few channels at a time, so that no full-size map of all its channels
        is made. The same operations on each channel as the official order (values within an ulp:
        the resize kernels vectorise over however many channels they are given)."""
        full_size = self.full.shape[-2:]
        parts = [resize(self.full, size)]
        for chunk in channel_chunks(self.half.shape[1], self.half, full_size):
            parts.append(resize(resize(self.half[:, chunk], full_size), size))
        return torch.cat(parts, dim=1)


class _ASPPBranch(nn.Module):
    """conv (dilated or deformable) -> norm -> ReLU; official ``_ASPPModule`` / ``_ASPPModuleDeformable``."""

    def __init__(self, conv: nn.Module, planes: int, norm: str) -> None:
        super().__init__()
        self.atrous_conv = conv
        self.bn = make_norm(planes, norm)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.atrous_conv
        if (
            FUSE_DEFORM_EPILOGUE
            and isinstance(conv, DeformableConv2d)
            and not torch.is_grad_enabled()
            and not is_tracing()
            and conv.fused_kernel_applies(x)
        ):
            affine = frozen_affine(self.bn)
            if affine is None and isinstance(self.bn, nn.Identity):
                ones = torch.ones(conv.regular_conv.out_channels, device=x.device)
                affine = (ones, torch.zeros_like(ones))
            if affine is not None:
                out = conv.forward_affine_relu(x, *affine)
                if out is not None:
                    return out
        return self.relu(norm_inplace(self.bn, conv(x)))


class _ASPPHead(nn.Module):
    """Shared tail of ASPP and ASPPDeformable: image pooling branch, 1x1 fusion, norm, ReLU, dropout."""

    def _init_head(
        self, in_channels: int, out_channels: int, n_branches: int, norm: str, dropout: float
    ) -> None:
        self.global_avg_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d((1, 1)),
            nn.Conv2d(in_channels, ASPP_PLANES, 1, stride=1, bias=False),
            make_norm(ASPP_PLANES, norm),
            nn.ReLU(inplace=True),
        )
        self.conv1 = nn.Conv2d(ASPP_PLANES * (n_branches + 1), out_channels, 1, bias=False)
        self.bn1 = make_norm(out_channels, norm)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)

    def _fuse(self, x: torch.Tensor, branches: Sequence[nn.Module]) -> torch.Tensor:
        """Run the branches on ``x``, add the image-pooling branch and fuse them with ``conv1``.

        Training follows the official form: concatenate the (B, 256, H, W) branch outputs and the
        broadcast pooled vector, then the 1x1 ``conv1``. Inference computes the same 1x1 product
        as a sum of per-branch products, each branch freed once used, and the pooled branch
        (constant over space) as a per-channel bias: the (B, 256 * n, H, W) concatenation
        (335 MB for swin_v1_l's first decoder block at 1024x1024) is never built. At CPU inference
        each deformable branch goes further: its output never exists at full size, only as
        cache-sized chunks normalised, rectified and projected as they are computed
        (:func:`_fused_deformable_branch`). Equal up to float summation order.
        """
        pooled = self.global_avg_pool(x)
        if self.training:
            outs = [b(x) for b in branches]
            # bilinear upsampling of a 1x1 map is a broadcast; expand keeps the official values
            outs.append(pooled.expand(-1, -1, *outs[0].shape[-2:]))
            fused = self.conv1(torch.cat(outs, dim=1))
            return self.dropout(self.relu(self.bn1(fused)))
        w = self.conv1.weight  # (O, 256 * (n + 1), 1, 1)
        n = len(branches)
        acc = None
        x_nhwc = None
        for i, branch in enumerate(branches):
            w_branch = w[:, i * ASPP_PLANES : (i + 1) * ASPP_PLANES]
            if _rows_fusable(branch, x):
                # Channels-last input, converted once for all branches: the offset convolutions run
                # faster on it (the 7x7 at 256x256: 355 -> 316 ms here), their channels-last offsets
                # need no reordering for the sampling, and the sampling table is built from it.
                if x_nhwc is None:
                    x_nhwc = x.contiguous(memory_format=torch.channels_last)
                acc = _fused_deformable_branch(branch, x_nhwc, w_branch, acc)
                continue
            part = F.conv2d(branch(x), w_branch)
            acc = part if acc is None else acc.add_(part)
        assert acc is not None
        acc = acc.add_(F.conv2d(pooled, w[:, n * ASPP_PLANES :]))
        return self.relu(norm_inplace(self.bn1, acc))  # dropout is the identity in eval mode


def _rows_fusable(branch: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`_fused_deformable_branch` may run ``branch`` on ``x``: a deformable ASPP branch with
    an eval-mode BatchNorm (or none), at CPU inference outside export/compile tracing and autocast
    (whose lower-precision products could not be accumulated in place into the output)."""
    return (
        FUSE_DEFORMABLE_BRANCHES
        and isinstance(branch, _ASPPBranch)
        and isinstance(branch.atrous_conv, DeformableConv2d)
        and (isinstance(branch.bn, nn.Identity) or frozen_affine(branch.bn) is not None)
        and x.device.type == "cpu"
        and not torch.is_grad_enabled()
        and not is_tracing()
        and not onednn.autocast_enabled(x.device.type)
    )


def _fused_deformable_branch(
    branch: _ASPPBranch, x: torch.Tensor, w_branch: torch.Tensor, acc: torch.Tensor | None
) -> torch.Tensor:
    """``acc + conv1x1(relu(bn(deform_conv(x))), w_branch)`` for one deformable ASPP branch, by chunks.

    The branch output (``(B, 256, H, W)``; 67 MB at swin_v1_l's and swin_v1_t's stride-4 map at
    1024²) exists only as cache-sized chunks: each chunk of the deformable convolution's product gets
    the convolution bias and the BatchNorm as one scale and shift, the ReLU, and its 1x1 projection
    accumulated into the channels-last ``acc`` (``(B, O, H, W)``, created when None). The elementwise
    steps are the ones the unfused path runs; the 1x1 projection is a GEMM instead of a convolution
    call (float summation order, ~1e-6 relative). Saves writing, page-faulting and re-reading the
    full-size branch output three times (norm, ReLU, projection).
    """
    conv = branch.atrous_conv
    regular = conv.regular_conv
    affine = frozen_affine(branch.bn)  # None: no norm (Identity)
    bias = None if regular.bias is None else regular.bias.to(x.dtype)
    scale = shift = None
    if affine is not None:
        scale, shift = (t.to(x.dtype) for t in affine)
        if bias is not None:  # (p + bias) * scale + shift
            shift, bias = shift + bias * scale, None
    out_channels = w_branch.shape[0]
    projection = w_branch.reshape(out_channels, regular.out_channels).t().to(x.dtype)  # (256, O)
    first = acc is None
    if acc is None:
        b, _, h, w = x.shape  # ASPP branches keep the size (stride 1, padding k // 2)
        out = x.new_empty(b, h, w, out_channels)
        acc = out.permute(0, 3, 1, 2)
    elif acc.permute(0, 2, 3, 1).is_contiguous():
        out = acc.permute(0, 2, 3, 1)
    else:  # an earlier branch left it NCHW: one copy to channels-last
        out = acc.permute(0, 2, 3, 1).contiguous()
        acc = out.permute(0, 3, 1, 2)

    def epilogue(product: torch.Tensor, i: int, rows: slice) -> None:
        if bias is not None:
            product.add_(bias)
        if scale is not None and shift is not None:
            product.mul_(scale).add_(shift)
        product.relu_()
        target = out[i, rows].view(-1, out_channels)
        if first:
            torch.mm(product, projection, out=target)
        else:
            target.addmm_(product, projection)

    conv.forward_rows(x, epilogue)
    return acc


class ASPP(_ASPPHead):
    """Atrous spatial pyramid pooling (dilations 1, 6, 12, 18 + image pooling), official ``ASPP``.

    (B, in_channels, H, W) -> (B, out_channels, H, W). Not used by released weights.
    """

    def __init__(
        self, in_channels: int, out_channels: int | None = None, *, norm: str = "bn", dropout: float = 0.5
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        dilations = (1, 6, 12, 18)
        for i, d in enumerate(dilations, start=1):
            k, pad = (1, 0) if d == 1 else (3, d)
            conv = nn.Conv2d(in_channels, ASPP_PLANES, k, stride=1, padding=pad, dilation=d, bias=False)
            setattr(self, f"aspp{i}", _ASPPBranch(conv, ASPP_PLANES, norm))
        self._init_head(in_channels, out_channels, len(dilations), norm, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fuse(x, [self.aspp1, self.aspp2, self.aspp3, self.aspp4])


class ASPPDeformable(_ASPPHead):
    """ASPP with deformable branches, official ``ASPPDeformable`` (default decoder attention).

    Branches: a 1x1 deformable conv (``aspp1``), deformable k x k convs for k in
    ``parallel_block_sizes`` (``aspp_deforms``; so two 1x1 branches by default) and image pooling;
    5 x 256 channels fused by a 1x1 conv. (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        parallel_block_sizes: Sequence[int] = (1, 3, 7),
        norm: str = "bn",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels

        def branch(k: int) -> _ASPPBranch:
            conv = DeformableConv2d(
                in_channels, ASPP_PLANES, kernel_size=k, stride=1, padding=k // 2, bias=False
            )
            return _ASPPBranch(conv, ASPP_PLANES, norm)

        self.aspp1 = branch(1)
        self.aspp_deforms = nn.ModuleList([branch(k) for k in parallel_block_sizes])
        self._init_head(in_channels, out_channels, 1 + len(parallel_block_sizes), norm, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fuse(x, [self.aspp1, *self.aspp_deforms])


def make_attention(kind: str, channels: int, norm: str, dropout: float) -> nn.Module | None:
    """The ``dec_att`` module of a decoder block: ASPP, ASPPDeformable or none ("")."""
    if kind == "ASPP":
        return ASPP(channels, norm=norm, dropout=dropout)
    if kind == "ASPPDeformable":
        return ASPPDeformable(channels, norm=norm, dropout=dropout)
    return None


class BasicDecBlk(nn.Module):
    """conv3x3 -> norm -> ReLU -> attention -> conv3x3 -> norm (no final activation), official ``BasicDecBlk``.

    (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        inter_channels: int = 64,
        attention: str = "ASPPDeformable",
        norm: str = "bn",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, inter_channels, 3, 1, padding=1)
        self.relu_in = nn.ReLU(inplace=True)
        att = make_attention(attention, inter_channels, norm, dropout)
        if att is not None:
            self.dec_att = att
        self.conv_out = nn.Conv2d(inter_channels, out_channels, 3, 1, padding=1)
        self.bn_in = make_norm(inter_channels, norm)
        self.bn_out = make_norm(out_channels, norm)

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
        """x: (B, in_channels, H, W), or a tuple of parts to be concatenated on channels
        (:func:`conv_over_parts`)."""
        return norm_inplace(self.bn_out, self.conv_out(self._body(x)))

    def _body(self, x: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Everything before ``conv_out``: (B, inter_channels, H, W)."""
        x = self.relu_in(norm_inplace(self.bn_in, conv_over_parts(self.conv_in, x)))
        if hasattr(self, "dec_att"):
            x = self.dec_att(x)
        return x

    def forward_projected(
        self, x: torch.Tensor | tuple[torch.Tensor, ...], projection: torch.Tensor
    ) -> torch.Tensor | None:
        """``F.conv2d(self(x), projection)`` at inference, ``conv_out``, ``bn_out`` and the 1x1
        ``projection`` folded into one convolution.

        With nothing between them, the 3x3 ``conv_out`` (weight W, bias b), an eval BatchNorm (per
        channel ``scale``, ``shift``) and a 1x1 projection P make one 3x3 convolution with P's few
        output channels: weight ``sum_o P[k, o] scale[o] W[o]``, bias ``P (scale b + shift)``. In
        BiRefNet the last decoder block feeds only the 1x1 head ``conv_out1`` at inference: for
        swin_v1_l at 1024² that is a 64 -> 1 convolution at 256x256 instead of 64 -> 192 (0.08
        instead of 14.5 GFLOP), and the 50 MB block output is never made. Equal to the unfolded
        order up to float rounding (the channel sums are reordered).

        Args:
            x: the block's input, as :meth:`forward` takes it.
            projection: ``(K, out_channels, 1, 1)`` weight of a 1x1 convolution without bias.

        Returns:
            ``(B, K, H, W)``; None where the fold does not apply (autograd recording, export or
            compile tracing, a norm other than an eval BatchNorm or none, a ``conv_out`` other than
            a plain zero-padded ``nn.Conv2d`` with one group): the caller then runs :meth:`forward`
            and the projection itself.
        """
        conv = self.conv_out
        if (
            torch.is_grad_enabled()
            or is_tracing()
            or type(conv) is not nn.Conv2d
            or conv.groups != 1
            or conv.padding_mode != "zeros"
        ):
            return None
        affine = frozen_affine(self.bn_out)
        if affine is None and not isinstance(self.bn_out, nn.Identity):
            return None
        body = self._body(x)
        p = projection.reshape(projection.shape[0], conv.out_channels)  # (K, O)
        bias = p.new_zeros(p.shape[0])
        if affine is not None:  # P (scale (conv + b) + shift) = (P scale) (conv + b) + P shift
            scale, shift = affine
            bias = p @ shift
            p = p * scale
        if conv.bias is not None:
            bias = bias + p @ conv.bias
        folded = torch.einsum("po,oikl->pikl", p, conv.weight)  # (K, C, kh, kw)
        return F.conv2d(
            body, folded.to(body.dtype), bias.to(body.dtype), conv.stride, conv.padding, conv.dilation
        )


class ResBlk(nn.Module):
    """BasicDecBlk plus a 1x1 residual projection (``conv_resi``), official ``ResBlk``.

    Not a subclass of BasicDecBlk on purpose: the official modules register their submodules in a
    different order, and that order is the state-dict key order we reproduce.

    (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        inter_channels: int = 64,
        attention: str = "ASPPDeformable",
        norm: str = "bn",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, inter_channels, 3, 1, padding=1)
        self.bn_in = make_norm(inter_channels, norm)
        self.relu_in = nn.ReLU(inplace=True)
        att = make_attention(attention, inter_channels, norm, dropout)
        if att is not None:
            self.dec_att = att
        self.conv_out = nn.Conv2d(inter_channels, out_channels, 3, 1, padding=1)
        self.bn_out = make_norm(out_channels, norm)
        self.conv_resi = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
        """x: (B, in_channels, H, W), or a tuple of parts (:func:`conv_over_parts`)."""
        residual = conv_over_parts(self.conv_resi, x)
        x = self.relu_in(norm_inplace(self.bn_in, conv_over_parts(self.conv_in, x)))
        if hasattr(self, "dec_att"):
            x = self.dec_att(x)
        return norm_inplace(self.bn_out, self.conv_out(x)) + residual


class BasicLatBlk(nn.Module):
    """Lateral connection: a 1x1 conv with bias, official ``BasicLatBlk``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class SimpleConvs(nn.Module):
    """Inward-reference patch encoder: conv3x3 -> conv3x3, no norm, no activation (official ``SimpleConvs``)."""

    def __init__(self, in_channels: int, out_channels: int, inter_channels: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, inter_channels, 3, 1, 1)
        self.conv_out = nn.Conv2d(inter_channels, out_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv1(x))


def image_to_patches(image: torch.Tensor, size: Sequence[int], order: str = "current") -> torch.Tensor:
    """Cut an image into a grid of patches of ``size`` and stack them on channels (inward reference).

    Args:
        image: (B, C, H, W); H and W must be multiples of the patch size.
        size: (h, w) patch size, i.e. the size of the decoder stage the patches feed.
        order: "current": channel index ``c*(hg*wg) + i_h*wg + i_w`` (einops
            ``'b c (hg h) (wg w) -> b (c hg wg) h w'``, official code since 2024-11-05);
            "legacy": ``(i_w*hg + i_h)*C + c`` (``'b (wg hg c) h w'``, the older
            ``get_patches_batch`` that pre-2024-11-05 weights were trained with).

    Returns:
        (B, C*hg*wg, h, w) with hg = H // h, wg = W // w; channels-last in memory at CPU inference.
    """
    b, c, height, width = image.shape
    h, w = size[0], size[1]  # no int(): keeps H and W symbolic in ONNX export
    hg, wg = height // h, width // w
    if hg * h != height or wg * w != width:
        raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {h}x{w}")
    if hg == 1 and wg == 1:
        return image
    if order not in ("current", "legacy"):
        raise ValueError(f"patch order must be 'current' or 'legacy', got {order!r}")
    x = image.reshape(b, c, hg, h, wg, w)
    if image.device.type == "cpu" and not torch.is_grad_enabled() and not is_tracing():
        # CPU inference: the stack is written channels-last (the same one copy), so the patch
        # encoder's first convolution reads it without a reorder (swin_v1_t's decoder 1.01x).
        x = x.permute(0, 3, 5, 1, 2, 4) if order == "current" else x.permute(0, 3, 5, 4, 2, 1)
        return x.reshape(b, h, w, c * hg * wg).permute(0, 3, 1, 2)
    if order == "current":
        x = x.permute(0, 1, 2, 4, 3, 5)  # b c hg wg h w
    else:
        x = x.permute(0, 4, 2, 1, 3, 5)  # b wg hg c h w
    return x.reshape(b, c * hg * wg, h, w)


def patches_to_image(patches: torch.Tensor, grid: Sequence[int], order: str = "current") -> torch.Tensor:
    """Inverse of :func:`image_to_patches`: (B, C*hg*wg, h, w) -> (B, C, hg*h, wg*w)."""
    hg, wg = int(grid[0]), int(grid[1])
    b, n, h, w = patches.shape
    c = n // (hg * wg)
    if order == "current":
        x = patches.reshape(b, c, hg, wg, h, w).permute(0, 1, 2, 4, 3, 5)
    elif order == "legacy":
        x = patches.reshape(b, wg, hg, c, h, w).permute(0, 3, 2, 4, 1, 5)
    else:
        raise ValueError(f"patch order must be 'current' or 'legacy', got {order!r}")
    return x.reshape(b, c, hg * h, wg * w)
