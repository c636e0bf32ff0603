"""PVTv2 encoder (b0-b5), with the official state-dict names.

Our own implementation of "PVT v2: Improved Baselines with Pyramid Vision Transformer" (Wang et
al., 2022) as used by BiRefNet: overlapping patch embeddings (7x7 stride 4, then 3x3 stride 2),
spatial-reduction attention (keys/values from a strided convolution of the tokens, ratios 8, 4, 2,
1), and an MLP with a 3x3 depthwise convolution between its two linear layers. Block and stage
LayerNorms use eps 1e-6; the patch-embedding LayerNorms keep PyTorch's 1e-5, as in the original.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from birefnet.models.backbones.base import Backbone, DropPath, init_transformer_weights

__all__ = ["PVT_V2_CONFIGS", "PyramidVisionTransformerV2", "pvt_v2"]

# name -> (embed_dims, depths, mlp_ratios); heads (1, 2, 5, 8) and sr ratios (8, 4, 2, 1) for all.
PVT_V2_CONFIGS: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[float, ...]]] = {
    "pvt_v2_b0": ((32, 64, 160, 256), (2, 2, 2, 2), (8, 8, 4, 4)),
    "pvt_v2_b1": ((64, 128, 320, 512), (2, 2, 2, 2), (8, 8, 4, 4)),
    "pvt_v2_b2": ((64, 128, 320, 512), (3, 4, 6, 3), (8, 8, 4, 4)),
    "pvt_v2_b3": ((64, 128, 320, 512), (3, 4, 18, 3), (8, 8, 4, 4)),
    "pvt_v2_b4": ((64, 128, 320, 512), (3, 8, 27, 3), (8, 8, 4, 4)),
    "pvt_v2_b5": ((64, 128, 320, 512), (3, 6, 40, 3), (4, 4, 4, 4)),
}
_HEADS = (1, 2, 5, 8)
_SR_RATIOS = (8, 4, 2, 1)
_EPS = 1e-6


class OverlapPatchEmbed(nn.Module):
    """Strided convolution with ``kernel // 2`` padding, then LayerNorm (eps 1e-5) over channels."""

    def __init__(self, in_channels: int, embed_dim: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size, stride, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """``(B, C_in, H, W)`` -> (``(B, H' * W', C)`` tokens, H', W')."""
        x = self.proj(x)
        _, _, h, w = x.shape
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class SpatialReductionAttention(nn.Module):
    """Multi-head attention whose keys/values come from a ``sr x sr`` strided conv of the tokens.

    Args:
        dim: token channels.
        num_heads: attention heads.
        sr_ratio: spatial reduction of keys/values (1 = plain attention, no ``sr``/``norm``).
        qkv_bias: bias in ``q`` and ``kv`` (True in every released PVTv2).
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=_EPS)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """``(B, N, C)`` tokens of an ``h x w`` map -> ``(B, N, C)``."""
        b, n, c = x.shape
        heads = self.num_heads
        q = self.q(x).view(b, n, heads, c // heads).transpose(1, 2)
        if self.sr_ratio > 1:
            reduced = self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
            x = self.norm(reduced)
        k, v = self.kv(x).view(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d); scale d ** -0.5
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class DWConv(nn.Module):
    """3x3 depthwise convolution on tokens (the attribute name ``dwconv`` is the official key)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, _, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, h, w))
        return x.flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    """Linear -> depthwise 3x3 conv -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))


class PVTBlock(nn.Module):
    """``x + attn(norm1(x))``, then ``x + mlp(norm2(x))`` with stochastic depth on both branches."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, sr_ratio: int, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_EPS)
        self.attn = SpatialReductionAttention(dim, num_heads, sr_ratio)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class PyramidVisionTransformerV2(Backbone):
    """PVTv2 backbone returning the four normalised stage outputs (strides 4, 8, 16, 32).

    Output sizes follow the convolutions: ``floor((H + 2*3 - 7) / 4) + 1`` for stage 1, then
    ``floor((s - 1) / 2) + 1`` per stage, i.e. exactly ``H / 4 ... H / 32`` for multiples of 32.

    Args:
        embed_dims: channels per stage.
        depths: blocks per stage.
        mlp_ratios: MLP hidden width per stage, relative to the stage width.
        num_heads: attention heads per stage.
        sr_ratios: key/value spatial reduction per stage.
        in_channels: image channels.
        drop_path_rate: stochastic depth of the last block; linear from 0 over all blocks.
    """

    expected_missing_pretrained = ()

    def __init__(
        self,
        *,
        embed_dims: Sequence[int] = (32, 64, 160, 256),
        depths: Sequence[int] = (2, 2, 2, 2),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        num_heads: Sequence[int] = _HEADS,
        sr_ratios: Sequence[int] = _SR_RATIOS,
        in_channels: int = 3,
        drop_path_rate: float = 0.1,
    ) -> None:
        super().__init__()
        for arg in (embed_dims, depths, mlp_ratios, num_heads, sr_ratios):
            if len(arg) != 4:
                raise ValueError(f"PVTv2 needs 4 stages; got a setting with {len(arg)} entries: {arg}")
        self.out_channels = tuple(embed_dims)  # type: ignore[assignment]
        # Registration order = official key order: all patch embeddings, then blocks/norm per stage.
        previous = in_channels
        for i, dim in enumerate(embed_dims):
            kernel, stride = (7, 4) if i == 0 else (3, 2)
            self.add_module(f"patch_embed{i + 1}", OverlapPatchEmbed(previous, dim, kernel, stride))
            previous = dim
        total = sum(depths)
        rates = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
        start = 0
        for i, dim in enumerate(embed_dims):
            blocks = nn.ModuleList(
                PVTBlock(dim, num_heads[i], mlp_ratios[i], sr_ratios[i], rates[start + j])
                for j in range(depths[i])
            )
            self.add_module(f"block{i + 1}", blocks)
            self.add_module(f"norm{i + 1}", nn.LayerNorm(dim, eps=_EPS))
            start += depths[i]
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Args: x ``(B, 3, H, W)`` normalised image. Returns four NCHW maps (strides 4..32)."""
        b = x.shape[0]
        outs = []
        for i in range(1, 5):
            tokens, h, w = getattr(self, f"patch_embed{i}")(x)
            for block in getattr(self, f"block{i}"):
                tokens = block(tokens, h, w)
            tokens = getattr(self, f"norm{i}")(tokens)
            x = tokens.view(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
            outs.append(x)
        return outs


def _init_weights(m: nn.Module) -> None:
    """Random init of the original: the transformer init plus fan-out normal convolutions."""
    init_transformer_weights(m)
    if isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def pvt_v2(name: str, drop_path_rate: float | None = None) -> PyramidVisionTransformerV2:
    """Build a named PVTv2 variant (``pvt_v2_b0`` ... ``pvt_v2_b5``).

    Args:
        name: key of :data:`PVT_V2_CONFIGS`.
        drop_path_rate: stochastic depth of the last block; None = official 0.1.
    """
    dims, depths, ratios = PVT_V2_CONFIGS[name]
    return PyramidVisionTransformerV2(
        embed_dims=dims,
        depths=depths,
        mlp_ratios=ratios,
        drop_path_rate=0.1 if drop_path_rate is None else drop_path_rate,
    )
