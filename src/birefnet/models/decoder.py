"""The BiRefNet reconstruction module: coarse-to-fine decoding with bilateral reference.

Inward reference: at every stage the normalised full-resolution image is cut into a grid of
patches of the stage's size, stacked on channels, encoded by a small conv block (``ipt_blk*``) and
concatenated to the stage's features, so the decoder sees full-resolution detail at every scale.

Outward reference: at stages 4, 3, 2 a small head (``gdt_convs_*``) predicts a gradient-attention
map that multiplies the stage's features (also at inference); in training it is supervised with
the image's Laplacian times the stage's side output (``gradient_targets``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from birefnet.config import BiRefNetConfig
from birefnet.models.blocks import (
    BasicDecBlk,
    BasicLatBlk,
    ResBlk,
    SimpleConvs,
    TwoScaleFeature,
    channel_chunks,
    image_to_patches,
    make_norm,
    resize,
)
from birefnet.models.memory import trim_heap_at_stage_end
from birefnet.models.streams import side_stream
from birefnet.models.tracing import is_tracing

DECODER_BLOCKS: dict[str, type[nn.Module]] = {"BasicDecBlk": BasicDecBlk, "ResBlk": ResBlk}
LATERAL_BLOCKS: dict[str, type[nn.Module]] = {"BasicLatBlk": BasicLatBlk}

#: At CPU inference, fold ``decoder_block1``'s last convolution and norm and the head's 1x1 projection
#: into one convolution with one output channel (:meth:`Decoder._last_block_projected`): swin_v1_l at
#: 1024² skips 14.5 GFLOP and a 50 MB map. Kept as a switch for ``benchmarks/ab_switch.py`` and for
#: the FLOP count of ``benchmarks/speed.py``, which counts the official (unfolded) forward. Not on
#: GPUs: not yet measured there (half-precision rounding of the folded weight, CUDA graphs).
FOLD_LAST_BLOCK = True

GRADIENT_CHANNELS = 16  # width of the outward-reference heads (official ``_N``)
PATCH_ENCODER_WIDTH = 64  # hidden width of the inward-reference blocks (official ``ic``)


def laplacian_5x5(x: torch.Tensor) -> torch.Tensor:
    """Normalised 5x5 Laplacian with reflect border (kornia ``laplacian(x, 5)``, the official operator).

    Kernel: ones with centre -24, divided by the sum of absolute values (48). (B, C, H, W) ->
    (B, C, H, W). H, W >= 3 (reflect padding by 2).
    """
    kernel = torch.full((5, 5), 1.0 / 48.0, dtype=x.dtype, device=x.device)
    kernel[2, 2] = -24.0 / 48.0
    c = x.shape[1]
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    return F.conv2d(padded, kernel.expand(c, 1, 5, 5), groups=c)


@dataclass
class DecoderOutput:
    logits: torch.Tensor
    side_logits: list[torch.Tensor] | None
    gradient_logits: list[torch.Tensor] | None
    gradient_targets: list[torch.Tensor] | None


class Decoder(nn.Module):
    """Coarse-to-fine decoder (official ``Decoder``).

    Args:
        channels: encoder channels deepest first, after multi-scale fusion (e.g. swin_v1_l with
            "cat": (3072, 1536, 768, 384)).
        in_channels_deepest: channels of the deepest input (``channels[0]`` after the squeeze
            block, more without one when context levels are concatenated).
        config: architecture options (decoder block, attention, inward/outward reference ...).
    """

    def __init__(self, channels: Sequence[int], in_channels_deepest: int, config: BiRefNetConfig) -> None:
        super().__init__()
        self.config = config
        c = list(channels)
        norm = config.norm
        block_cls = DECODER_BLOCKS[config.decoder_block]
        lateral_cls = LATERAL_BLOCKS[config.lateral_block]
        use_ipt = config.inward_reference
        split = config.inward_reference_split

        def block(cin: int, cout: int) -> nn.Module:
            inter = cin // 4 if config.decoder_channels_inter == "adap" else 64
            return block_cls(
                cin,
                cout,
                inter_channels=inter,
                attention=config.decoder_attention,
                norm=norm,
                dropout=config.dropout,
            )

        # Inward reference: patch grids of 32, 16, 8, 4, 1 per side -> 3 * grid^2 channels.
        ipt_out = [c[0] // 8, c[0] // 8, c[1] // 8, c[2] // 8, c[3] // 8]
        if use_ipt:
            for i, (grid, cout) in enumerate(zip((32, 16, 8, 4, 1), ipt_out)):
                cin = 3 * grid * grid if split else 3
                setattr(self, f"ipt_blk{5 - i}", SimpleConvs(cin, cout, inter_channels=PATCH_ENCODER_WIDTH))
        extra = ipt_out if use_ipt else [0] * 5

        self.decoder_block4 = block(in_channels_deepest + extra[0], c[1])
        self.decoder_block3 = block(c[1] + extra[1], c[2])
        self.decoder_block2 = block(c[2] + extra[2], c[3])
        self.decoder_block1 = block(c[3] + extra[3], c[3] // 2)
        self.conv_out1 = nn.Sequential(nn.Conv2d(c[3] // 2 + extra[4], 1, 1, 1, 0))

        self.lateral_block4 = lateral_cls(c[1], c[1])
        self.lateral_block3 = lateral_cls(c[2], c[2])
        self.lateral_block2 = lateral_cls(c[3], c[3])

        if config.multi_scale_supervision:
            self.conv_ms_spvn_4 = nn.Conv2d(c[1], 1, 1, 1, 0)
            self.conv_ms_spvn_3 = nn.Conv2d(c[2], 1, 1, 1, 0)
            self.conv_ms_spvn_2 = nn.Conv2d(c[3], 1, 1, 1, 0)
            if config.outward_reference:
                for stage, ch in zip((4, 3, 2), (c[1], c[2], c[3])):
                    setattr(
                        self,
                        f"gdt_convs_{stage}",
                        nn.Sequential(
                            nn.Conv2d(ch, GRADIENT_CHANNELS, 3, 1, 1),
                            make_norm(GRADIENT_CHANNELS, norm),
                            nn.ReLU(inplace=True),
                        ),
                    )
                for stage in (4, 3, 2):
                    setattr(
                        self,
                        f"gdt_convs_pred_{stage}",
                        nn.Sequential(nn.Conv2d(GRADIENT_CHANNELS, 1, 1, 1, 0)),
                    )
                for stage in (4, 3, 2):
                    setattr(
                        self,
                        f"gdt_convs_attn_{stage}",
                        nn.Sequential(nn.Conv2d(GRADIENT_CHANNELS, 1, 1, 1, 0)),
                    )

    def _inward(
        self,
        x: torch.Tensor,
        feat: torch.Tensor,
        stage: int,
        parts: bool = False,
        ahead: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Concatenate the encoded image patches of ``stage`` to ``feat`` (B, C, h, w).

        With ``parts`` at inference (no autograd, not exporting) the pair ``(feat, encoded)`` is
        returned instead, for a decoder block to convolve without concatenating
        (:func:`birefnet.models.blocks.conv_over_parts`). ``ahead``: the encoding, already computed
        (on the side stream, :meth:`_ahead`).
        """
        if not self.config.inward_reference:
            return feat
        encoded = self._encode_patches(x, feat.shape[-2:], stage) if ahead is None else ahead
        if parts and not torch.is_grad_enabled() and not is_tracing():
            return feat, encoded
        return torch.cat((feat, encoded), dim=1)

    def _encode_patches(self, x: torch.Tensor, size: torch.Size, stage: int) -> torch.Tensor:
        """``ipt_blk{stage}`` over the image's patches of ``size`` stacked on channels: (B, E, *size)."""
        if self.config.inward_reference_split:
            patches = image_to_patches(x, size, self.config.patch_order)
        else:
            patches = resize(x, size)
        return getattr(self, f"ipt_blk{stage}")(resize(patches, size))

    def _ahead(
        self, side: torch.cuda.Stream, x: torch.Tensor, maps: Sequence[torch.Tensor | TwoScaleFeature]
    ) -> dict[str, tuple[torch.Tensor | None, torch.cuda.Event]]:
        """Enqueue on ``side`` the inference work that reads only the image and the encoder maps.

        That is each stage's patch encoding (``ipt5`` ... ``ipt2``), the lateral blocks (``lat4`` ...
        ``lat2``) and the image's share of the final logits (``final``), in the order the decoder
        chain needs them (not the lateral of a :class:`~birefnet.models.blocks.TwoScaleFeature`: the
        chain sums that one with its coarse map). Each comes back with an event recorded after it; the
        chain waits on the event before it reads the tensor (see :mod:`birefnet.models.streams` for why
        the memory is safe: the caller keeps every map until it has waited for the work that reads it).
        """
        x1, x2, x3, x4 = maps
        main = torch.cuda.current_stream(x.device)
        side.wait_stream(main)
        done: dict[str, tuple[torch.Tensor | None, torch.cuda.Event]] = {}

        def record(name: str, out: torch.Tensor | None) -> None:
            event = torch.cuda.Event()
            event.record(side)
            done[name] = (out, event)

        # stage -> the map whose size its patches take, and the lateral block the chain needs next
        stages = (
            (5, x4, ("lat4", self.lateral_block4, x3)),
            (4, x3, ("lat3", self.lateral_block3, x2)),
            (3, x2, ("lat2", self.lateral_block2, x1)),
            (2, x1, None),
        )
        inward = self.config.inward_reference
        with torch.cuda.stream(side):
            for stage, sized_like, lateral in stages:
                record(
                    f"ipt{stage}", self._encode_patches(x, sized_like.shape[-2:], stage) if inward else None
                )
                if lateral is not None and not isinstance(lateral[2], TwoScaleFeature):
                    name, block, feat = lateral
                    record(name, block(feat))
            record("final", self._final_image_part(x))
        return done

    def _outward(
        self,
        p: torch.Tensor,
        stage: int,
        image_laplacian: torch.Tensor | None,
        side: list[torch.Tensor] | None,
        grad_logits: list[torch.Tensor] | None,
        grad_targets: list[torch.Tensor] | None,
    ) -> torch.Tensor:
        """Side output, gradient head and gradient attention of decoder stage 4, 3 or 2."""
        cfg = self.config
        m = None
        if side is not None:
            m = getattr(self, f"conv_ms_spvn_{stage}")(p)  # before the attention multiplies p
            side.append(m)
        if not (cfg.multi_scale_supervision and cfg.outward_reference):
            return p
        p_gdt = getattr(self, f"gdt_convs_{stage}")(p)
        if (
            grad_logits is not None
            and grad_targets is not None
            and image_laplacian is not None
            and m is not None
        ):
            grad_targets.append(image_laplacian * resize(m, image_laplacian.shape[-2:]))
            grad_logits.append(getattr(self, f"gdt_convs_pred_{stage}")(p_gdt))
        attn = getattr(self, f"gdt_convs_attn_{stage}")(p_gdt).sigmoid()
        return p * attn

    def forward(
        self,
        x: torch.Tensor,
        features: Sequence[torch.Tensor | TwoScaleFeature],
        image_laplacian: torch.Tensor | None = None,
        *,
        release_features: bool = False,
    ) -> DecoderOutput:
        """Decode.

        Args:
            x: (B, 3, H, W) normalised input image.
            features: (x1, x2, x3, x4) encoder features at strides 4, 8, 16, 32 (x4 squeezed). x1, x2
                and x3 may be :class:`~birefnet.models.blocks.TwoScaleFeature` pairs (CPU inference):
                each lateral convolution is then applied to the two parts (:meth:`_two_scale_lateral_sum`).
            image_laplacian: (B, 1, H, W) Laplacian of the channel-mean image; given in training
                with outward reference, when gradient targets are wanted.
            release_features: ``features`` is a list the caller hands over: it is emptied, so each
                map is freed once its stage has used it (at inference, where nothing else keeps it).
                BiRefNet's forward does this: swin_v1_l's stride-4 map alone is 96 MB at 1024x1024,
                and otherwise it would be held through the last decoder stage, the forward's peak.
        """
        x1, x2, x3, x4 = features
        if release_features:
            features.clear()  # type: ignore[attr-defined]  # a list, by the contract above
        train_heads = self.training and self.config.multi_scale_supervision
        side: list[torch.Tensor] | None = [] if train_heads else None
        want_grad = train_heads and self.config.outward_reference and image_laplacian is not None
        grad_logits: list[torch.Tensor] | None = [] if want_grad else None
        grad_targets: list[torch.Tensor] | None = [] if want_grad else None

        # Each stage's input is rebound before the block runs, so the pre-concatenation map is freed
        # early; at inference the lateral sum is in place (the stride-4 maps are 100 MB each for
        # swin_v1_l at 1024x1024).

        # CUDA inference: what reads only the image and the encoder maps runs ahead on a second stream
        stream = None if self.training else side_stream(x)
        ahead = self._ahead(stream, x, (x1, x2, x3, x4)) if stream is not None else {}

        def take(name: str) -> torch.Tensor | None:
            """The ahead result ``name`` once the side stream has made it; None without a side stream."""
            if name not in ahead:
                return None
            out, event = ahead.pop(name)
            torch.cuda.current_stream(x.device).wait_event(event)
            return out

        def lateral_sum(
            coarse: torch.Tensor, name: str, block: nn.Module, feat: torch.Tensor | TwoScaleFeature
        ) -> torch.Tensor:
            """``resize(coarse) + block(feat)``, the lateral taken from the side stream where made there."""
            if isinstance(feat, TwoScaleFeature):
                return self._two_scale_lateral_sum(coarse, block, feat)
            out = take(name)
            return self._lateral_sum(coarse, block(feat) if out is None else out)

        p4 = self._inward(x, x4, 5, parts=True, ahead=take("ipt5"))
        del x4
        p4 = self.decoder_block4(p4)
        p4 = self._outward(p4, 4, image_laplacian, side, grad_logits, grad_targets)

        p3 = lateral_sum(p4, "lat4", self.lateral_block4, x3)
        del p4, x3
        p3 = self._inward(x, p3, 4, parts=True, ahead=take("ipt4"))
        p3 = self.decoder_block3(p3)
        p3 = self._outward(p3, 3, image_laplacian, side, grad_logits, grad_targets)

        p2 = lateral_sum(p3, "lat3", self.lateral_block3, x2)
        del p3, x2
        p2 = self._inward(x, p2, 3, parts=True, ahead=take("ipt3"))
        p2 = self.decoder_block2(p2)
        p2 = self._outward(p2, 2, image_laplacian, side, grad_logits, grad_targets)

        trim_heap_at_stage_end(x, self.training)
        p1 = lateral_sum(p2, "lat2", self.lateral_block2, x1)
        del p2, x1
        p1 = self._inward(x, p1, 2, parts=True, ahead=take("ipt2"))
        if self.training:
            p1 = resize(self.decoder_block1(p1), x.shape[-2:])
            logits = self.conv_out1(self._inward(x, p1, 1))
        else:
            low = self._last_block_projected(x, p1)
            if low is None:
                logits = self._final_logits_eval(x, self.decoder_block1(p1), image_part=take("final"))
            else:
                logits = self._logits_from_projection(x, low, take("final"))
        return DecoderOutput(logits, side, grad_logits, grad_targets)

    @staticmethod
    def _lateral_sum(coarse: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
        """``resize(coarse, lateral size) + lateral``; in place into ``lateral`` when no graph is recorded."""
        if torch.is_grad_enabled():
            return resize(coarse, lateral.shape[-2:]) + lateral
        if coarse.device.type == "cpu" and lateral.is_contiguous() and not coarse.is_contiguous():
            # The decoder blocks' outputs come out channels-last (the deformable convolution writes
            # its product that way). A backbone with NCHW outputs gives NCHW laterals (the Swin's
            # outputs, and so its laterals, are channels-last at CPU inference and skip this). Adding
            # a channels-last map into an NCHW one reads it with strides: 154 ms for a 384-channel
            # 256² sum at 1024². Made NCHW at the coarse size first (a quarter of the pixels), it is
            # resized by the plain NCHW kernel and added in order: 230 -> 130 ms for that stage
            # (values within 1 ulp).
            coarse = coarse.contiguous()
        return lateral.add_(resize(coarse, lateral.shape[-2:]))

    @staticmethod
    def _two_scale_lateral_sum(coarse: torch.Tensor, block: nn.Module, feat: TwoScaleFeature) -> torch.Tensor:
        """``resize(coarse) + block(feat.concatenated())`` (inference), without the concatenation.

        The lateral block is a 1x1 convolution ``W = [W_full | W_half]`` with bias ``b``, and bilinear
        resizing acts on each channel alone with weights that sum to one, so
        ``W cat(full, resize(half)) + b + resize(coarse) = W_full full + b + resize(W_half half + coarse)``
        whenever ``half`` and ``coarse`` have the same size (the half-size pass's map at a stride is the
        size of the full-size pass's at twice that stride, as ``coarse`` is). The half part's
        convolution then runs on a quarter of the pixels, and the concatenation (100 MB at stride 4
        for swin_v1_l at 1024²), the upsampled half map and the upsampled coarse map are never made:
        one resize of the summed small map, a few channels at a time, replaces two. Equal to the
        official order up to float rounding (~1e-6 relative: the channel sum is split and resized
        before it is added). Other lateral modules (a replaced ``conv``, another block class), and
        sizes that do not pair up, take the concatenation.

        Args:
            coarse: (B, C_out, h', w') output of the previous decoder stage.
            block: the stage's lateral block (a :class:`~birefnet.models.blocks.BasicLatBlk`).
            feat: the encoder stage, (full, half) with ``full`` (B, C_f, h, w) and ``half``
                (B, C_h, h', w').

        Returns (B, C_out, h, w).
        """
        # BasicLatBlk always builds a plain 1x1 Conv2d (stride 1, no padding, one group)
        plain = type(block) is BasicLatBlk and type(block.conv) is nn.Conv2d
        if not plain or feat.half.shape[-2:] != coarse.shape[-2:]:
            return Decoder._lateral_sum(coarse, block(feat.concatenated()))
        conv = block.conv
        c = feat.full.shape[1]
        out = F.conv2d(feat.full, conv.weight[:, :c], conv.bias)
        low = F.conv2d(feat.half, conv.weight[:, c:])
        low += coarse
        # resized and added a few channels at a time: no full-size temporary (100 MB at stride 4 for
        # swin_v1_l at 1024², at the forward's peak of memory), and each chunk is added while in the
        # cache (85 against 114 ms for the three stages at 1024²; values within an ulp of the whole resize)
        size = out.shape[-2:]
        for chunk in channel_chunks(out.shape[1], out, size):
            out[:, chunk].add_(resize(low[:, chunk], size))
        return out

    def _final_logits_eval(
        self, x: torch.Tensor, p1: torch.Tensor, image_part: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``conv_out1(cat(resize(p1), ipt_blk1(x)))`` computed without full-resolution feature maps.

        The last stage is linear end to end: ``conv_out1`` is a 1x1 convolution, the bilinear resize
        acts on each channel alone, and ``ipt_blk1`` is two convolutions with no activation. So the
        1x1 projection is applied first, at the decoder's stride-4 resolution, and only its one
        channel is resized; and the projection of the patch encoder's output is folded into the
        encoder's last 3x3 convolution (64 -> 1 channels instead of 64 -> C/8 then C/8 -> 1). The
        result equals the official order of operations up to float rounding (~1e-6 relative), while
        swin_v1_l at 1024x1024 no longer materialises a 192-channel resized map, a 240-channel
        concatenation and a 48-channel encoder output at 1024x1024 (~2 GB together), and skips
        ~57 GFLOP. The patch encoder runs in bands of rows so its 64-channel intermediate stays small.

        Args:
            x: (B, 3, H, W) normalised image.
            p1: (B, C, h, w) output of ``decoder_block1`` (stride 4).
            image_part: :meth:`_final_image_part` of ``x`` where already computed (on the side
                stream); None: computed here (it is cheap to redo where it is None itself).

        Returns:
            (B, 1, H, W) logits.
        """
        head = self.conv_out1[0]
        return self._logits_from_projection(x, F.conv2d(p1, head.weight[:, : p1.shape[1]]), image_part)

    def _logits_from_projection(
        self, x: torch.Tensor, low: torch.Tensor, image_part: torch.Tensor | None
    ) -> torch.Tensor:
        """The final logits (B, 1, H, W) from ``low``, ``conv_out1``'s share of ``p1`` at stride 4
        (B, 1, h, w, no bias): resized to the image, plus the image's share (:meth:`_final_image_part`,
        computed here where ``image_part`` is None)."""
        logits = resize(low, x.shape[-2:])
        if image_part is None:
            image_part = self._final_image_part(x)
        return logits if image_part is None else logits + image_part

    def _last_block_projected(
        self, x: torch.Tensor, p1: torch.Tensor | tuple[torch.Tensor, ...]
    ) -> torch.Tensor | None:
        """``conv_out1``'s share of ``decoder_block1(p1)`` (B, 1, h, w), with the block's last
        convolution, its norm and the head's 1x1 projection folded into one 64 -> 1 convolution
        (:meth:`BasicDecBlk.forward_projected`). CPU inference only (:data:`FOLD_LAST_BLOCK`); None
        elsewhere, and where the fold does not apply (the caller then runs the block)."""
        block = self.decoder_block1
        if not (FOLD_LAST_BLOCK and x.device.type == "cpu" and isinstance(block, BasicDecBlk)):
            return None
        head = self.conv_out1[0]
        return block.forward_projected(p1, head.weight[:, : block.conv_out.out_channels])

    def _final_image_part(self, x: torch.Tensor) -> torch.Tensor | None:
        """The share of the final logits that reads only the image (:meth:`_final_logits_eval`): the
        folded patch encoder, (B, 1, H, W), with ``conv_out1``'s bias; the bias alone, (1, 1, 1, 1),
        without inward reference; None with neither."""
        head = self.conv_out1[0]
        w = head.weight  # (1, C + E, 1, 1)
        bias = head.bias
        if not self.config.inward_reference:
            return None if bias is None else bias.view(1, -1, 1, 1)
        # at stage 1 the patch grid is 1x1, so the encoder's input is the image itself
        blk = self.ipt_blk1
        c = w.shape[1] - blk.conv_out.out_channels
        w_enc = w[:, c:, 0, 0]  # (1, E)
        w2 = torch.einsum("oe,eikl->oikl", w_enc, blk.conv_out.weight)  # (1, 64, 3, 3)
        b2 = w_enc @ blk.conv_out.bias
        if bias is not None:
            b2 = b2 + bias
        return _two_convs(x, blk.conv1.weight, blk.conv1.bias, w2, b2)


def _two_convs(
    x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor, b2: torch.Tensor | None
) -> torch.Tensor:
    """``conv2d(conv2d(x, w1, b1, padding=1), w2, b2, padding=1)`` for 3x3 kernels and few output
    channels (the folded patch encoder: 3 -> 64 -> 1), as one 5x5 convolution.

    With no activation between them, two 3x3 convolutions are one 5x5 convolution whose kernel is
    the composition of the two (``w5[a] = sum over t1 + t2 = a of w2[t2] w1[t1]``) and whose bias
    is ``b2 + sum(w2 . b1)``. That holds wherever the intermediate map is not zero-padded, i.e. on
    every output pixel except the 1-pixel border ring, which is recomputed the two-convolution way
    from thin strips. At 1024x1024 this is ~30x fewer FLOPs (75 instead of 2304 products per pixel)
    and ~18x faster on the CPU (40 ms against 720 ms in bands), with no 64-channel intermediate.
    Equal to the two convolutions up to float rounding (the sums are reordered). Under export or
    tracing, for few output channels' worth of input (Cout > 4) or tiny maps, the plain pair runs.
    """
    height, width = x.shape[-2:]
    if is_tracing() or w2.shape[0] > 4 or height < 4 or width < 4:
        return _two_convs_in_bands(x, w1, b1, w2, b2)
    # (Cout, Cin, 5, 5): tap t2 of w2 meets tap t1 of w1 at input offset t1 + t2
    w5 = w1.new_zeros(w2.shape[0], w1.shape[1], 5, 5)
    for ky in range(3):
        for kx in range(3):
            w5[:, :, ky : ky + 3, kx : kx + 3] += torch.einsum("om,mikl->oikl", w2[:, :, ky, kx], w1)
    bias = w2.sum(dim=(2, 3)) @ b1 if b1 is not None else w2.new_zeros(w2.shape[0])
    if b2 is not None:
        bias = bias + b2
    if x.device.type == "cpu":
        # oneDNN runs this 3-channel 5x5 convolution 2-3x faster from a channels-last input (1024x1024:
        # 43 -> 16-25 ms with the conversion included; the same values, and for one output channel
        # the same memory layout of the result).
        x5 = x.contiguous(memory_format=torch.channels_last)
    else:
        x5 = x
    out = F.conv2d(x5, w5, bias, padding=2)
    # the border ring: rows 0 and H-1 from strips of 3 input rows, columns likewise
    out[:, :, :1] = _two_convs_in_bands(x[:, :, :3], w1, b1, w2, b2)[:, :, :1]
    out[:, :, -1:] = _two_convs_in_bands(x[:, :, -3:], w1, b1, w2, b2)[:, :, -1:]
    out[:, :, :, :1] = _two_convs_in_bands(x[:, :, :, :3], w1, b1, w2, b2)[:, :, :, :1]
    out[:, :, :, -1:] = _two_convs_in_bands(x[:, :, :, -3:], w1, b1, w2, b2)[:, :, :, -1:]
    return out


#: Bytes of the widest intermediate of one band in :func:`_two_convs_in_bands` on the CPU, where
#: peak RSS is the constraint.
BAND_BUDGET_BYTES = 32 * 2**20
#: The same on accelerators, where each band is a few kernel launches and memory is plentiful.
ACCELERATOR_BAND_BUDGET_BYTES = 1 * 2**30


def _two_convs_in_bands(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor | None,
    w2: torch.Tensor,
    b2: torch.Tensor | None,
    budget_bytes: int | None = None,
) -> torch.Tensor:
    """``conv2d(conv2d(x, w1, b1, padding=1), w2, b2, padding=1)`` for 3x3 kernels, in bands of rows.

    Each band of output rows reads two rows of halo from ``x`` and recomputes one row of the
    intermediate on each side; at the image border the intermediate is zero-padded, exactly as the
    unbanded pair of convolutions does. (B, Cin, H, W) -> (B, Cout, H, W). Under export/tracing a
    single band is used (sizes are symbolic there). ``budget_bytes`` defaults to
    :data:`BAND_BUDGET_BYTES` on the CPU and :data:`ACCELERATOR_BAND_BUDGET_BYTES` elsewhere.
    """
    if budget_bytes is None:
        budget_bytes = BAND_BUDGET_BYTES if x.device.type == "cpu" else ACCELERATOR_BAND_BUDGET_BYTES
    height = x.shape[2]
    row_bytes = x.shape[0] * w1.shape[0] * x.shape[3] * x.element_size()
    rows = max(8, budget_bytes // max(row_bytes, 1))
    if is_tracing() or rows >= height:
        return F.conv2d(F.conv2d(x, w1, b1, padding=1), w2, b2, padding=1)
    out = x.new_empty(x.shape[0], w2.shape[0], height, x.shape[3])
    for r0 in range(0, height, rows):
        r1 = min(height, r0 + rows)
        m0, m1 = max(0, r0 - 1), min(height, r1 + 1)  # intermediate rows this band needs
        x0, x1 = max(0, m0 - 1), min(height, m1 + 1)
        xb = F.pad(x[:, :, x0:x1], (0, 0, int(m0 == 0), int(m1 == height)))
        mid = F.conv2d(xb, w1, b1, padding=(0, 1))  # rows m0..m1
        mid = F.pad(mid, (0, 0, int(r0 == 0), int(r1 == height)))
        out[:, :, r0:r1] = F.conv2d(mid, w2, b2, padding=(0, 1))
    return out
