"""BiRefNet: encoder -> multi-scale fusion + context -> squeeze -> bilateral-reference decoder."""

from __future__ import annotations

import torch
from torch import nn

from birefnet.config import BiRefNetConfig
from birefnet.models.backbones import build_backbone
from birefnet.models.blocks import ASPP, ASPPDeformable, BasicDecBlk, ResBlk, TwoScaleFeature, resize
from birefnet.models.decoder import Decoder, laplacian_5x5
from birefnet.models.memory import prepare_heap, release_heap, trim_heap_at_stage_end
from birefnet.models.onednn import pack_linear_weights
from birefnet.models.output import BiRefNetOutput
from birefnet.models.streams import side_stream
from birefnet.models.tracing import is_tracing

# ImageNet normalisation the released weights expect (RGB in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: At CPU inference with ``multi_scale_input="cat"``, hand the decoder the three finer encoder stages
#: as unfused pairs (:class:`~birefnet.models.blocks.TwoScaleFeature`): each lateral 1x1 convolution
#: then runs on the half-size pass's map at its own size and is resized together with the coarser
#: decoder output, and the context resizes read the two parts. Same function as the concatenated maps
#: (float rounding apart). A switch for comparisons (``benchmarks/ab_switch.py --switch two-scale``).
TWO_SCALE_LATERALS = True


def _squeeze_module(config: BiRefNetConfig, cin: int, cout: int) -> nn.Sequential | None:
    spec = config.squeeze_spec
    if spec is None:
        return None
    name, repeats = spec
    blocks = []
    for i in range(repeats):
        # Official bug fixed here: every repeat was built in -> out, so N > 1 failed. The first
        # repeat maps in -> out, the others out -> out.
        bin_ = cin if i == 0 else cout
        inter = bin_ // 4 if config.decoder_channels_inter == "adap" else 64
        if name in ("BasicDecBlk", "ResBlk"):
            cls = BasicDecBlk if name == "BasicDecBlk" else ResBlk
            blocks.append(
                cls(
                    bin_,
                    cout,
                    inter_channels=inter,
                    attention=config.decoder_attention,
                    norm=config.norm,
                    dropout=config.dropout,
                )
            )
        elif name == "ASPP":
            blocks.append(ASPP(bin_, cout, norm=config.norm, dropout=config.dropout))
        else:
            blocks.append(ASPPDeformable(bin_, cout, norm=config.norm, dropout=config.dropout))
    return nn.Sequential(*blocks)


class BiRefNet(nn.Module):
    """Bilateral Reference Network for high-resolution dichotomous image segmentation.

    Args:
        config: architecture (see :class:`~birefnet.config.BiRefNetConfig`); official
            checkpoints load with :meth:`load_state_dict` under their own key names.

    Forward input: (B, 3, H, W) RGB normalised with ImageNet mean/std, H and W multiples of 32.
    Forward output: :class:`~birefnet.models.output.BiRefNetOutput`; ``logits`` is (B, 1, H, W).
    """

    def __init__(self, config: BiRefNetConfig | None = None) -> None:
        super().__init__()
        config = config or BiRefNetConfig()
        self.config = config
        self.bb = build_backbone(config.backbone, drop_path_rate=config.drop_path_rate)
        base = list(reversed(self.bb.out_channels))  # deepest first
        factor = 2 if config.multi_scale_input == "cat" else 1
        channels = [ch * factor for ch in base]
        self.channels = tuple(channels)
        # context: the last `context_levels` of (x1, x2, x3), resized to x4 and concatenated
        cxt = channels[1:][::-1][-config.context_levels :] if config.context_levels else []
        squeeze_in = channels[0] + sum(cxt)
        self.squeeze_module = _squeeze_module(config, squeeze_in, channels[0])
        deepest = channels[0] if self.squeeze_module is not None else squeeze_in
        self.decoder = Decoder(channels, deepest, config)
        if config.auxiliary_classification:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.cls_head = nn.Sequential(nn.Linear(channels[0], config.num_classes))

    def pack_cpu_weights(self) -> int:
        """Hold the Swin backbone's Linear weights in oneDNN's blocked layout, for CPU inference.

        Each product gives the same values bit for bit, and the memory stays the same; the projections
        run 3-9 % faster on AVX-512 CPUs, where the backbone's products go through oneDNN
        (:mod:`birefnet.models.onednn`). Whole forwards match to float rounding (swin_v1_l at 1024²:
        identical; swin_v1_t: probabilities within 6e-8, from a one-row window chunk, for which oneDNN
        takes another kernel with a plain weight). A no-op elsewhere, for other backbones, in training
        mode or off the CPU. The Predictor does this for
        float32 CPU inference; ``state_dict`` still gives the plain weights, and ``train()``, ``.to()``
        or ``load_state_dict`` turn the layers back into plain ones. Returns the layers packed.
        """
        from birefnet.models.backbones.swin import SwinTransformer

        if not isinstance(self.bb, SwinTransformer):
            return 0
        return pack_linear_weights(self.bb)

    def forward_encoder(
        self, x: torch.Tensor, *, two_scale: bool = False
    ) -> tuple[list[torch.Tensor | TwoScaleFeature], torch.Tensor | None]:
        """Encoder features (x1, x2, x3, x4) after multi-scale fusion and context concatenation.

        Args:
            x: (B, 3, H, W) normalised image.
            two_scale: with ``multi_scale_input="cat"``, leave x1, x2 and x3 unfused, as
                :class:`~birefnet.models.blocks.TwoScaleFeature` pairs (the full- and the half-size
                pass's maps) that the decoder reads without the concatenation. BiRefNet's forward
                asks for this at CPU inference (:data:`TWO_SCALE_LATERALS`).

        Returns the four maps (strides 4, 8, 16, 32; x4 carries the context channels) and the
        auxiliary class logits (training with auxiliary classification only, else None).
        """
        mode = self.config.multi_scale_input
        side = side_stream(x) if mode else None
        if side is not None:  # CUDA inference: the half-size pass beside the full-size one
            main = torch.cuda.current_stream(x.device)
            x_half = resize(x, (x.shape[-2] // 2, x.shape[-1] // 2))
            side.wait_stream(main)
            with torch.cuda.stream(side):
                half = self.bb(x_half)
            full = list(self.bb(x))
            main.wait_stream(side)
            del x_half  # held until the join: the side stream read it
        else:
            full = list(self.bb(x))
            trim_heap_at_stage_end(x, self.training)
            if mode:
                h, w = x.shape[-2:]
                half = self.bb(resize(x, (h // 2, w // 2)))
                trim_heap_at_stage_end(x, self.training)
        feats: list[torch.Tensor | TwoScaleFeature] = list(full)
        del full  # each map is freed as soon as its fused form replaces it
        if mode:
            for i, g in enumerate(half):
                f = feats[i]
                assert isinstance(f, torch.Tensor)
                if mode == "cat" and two_scale and i < 3:
                    feats[i] = TwoScaleFeature(f, g)
                elif mode == "cat":
                    feats[i] = torch.cat([f, resize(g, f.shape[-2:])], dim=1)
                else:
                    feats[i] = f + resize(g, f.shape[-2:])
            del half
        class_logits = None
        if self.training and self.config.auxiliary_classification:
            class_logits = self.cls_head(self.avgpool(feats[3]).flatten(1))
        n = self.config.context_levels
        if n:
            size = feats[3].shape[-2:]
            context = [
                f.resized(size) if isinstance(f, TwoScaleFeature) else resize(f, size)
                for f in feats[3 - n : 3]
            ]
            feats[3] = torch.cat([*context, feats[3]], dim=1)
        return feats, class_logits

    def forward(self, x: torch.Tensor) -> BiRefNetOutput:
        """(B, 3, H, W) normalised image -> BiRefNetOutput (logits (B, 1, H, W) before sigmoid)."""
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(
                f"input size {tuple(x.shape[-2:])} is not a multiple of 32; resize the image "
                "(the Predictor does this for you)"
            )
        prepare_heap(x, self.training)
        try:
            return self._forward(x)
        finally:
            release_heap()

    def _forward(self, x: torch.Tensor) -> BiRefNetOutput:
        """:meth:`forward` after the size check, inside the heap settings of :func:`prepare_heap`."""
        two_scale = (
            TWO_SCALE_LATERALS
            and not self.training
            and not torch.is_grad_enabled()
            and x.device.type == "cpu"
            and not is_tracing()
            and side_stream(x) is None
        )
        feats, class_logits = self.forward_encoder(x, two_scale=two_scale)
        if self.squeeze_module is not None:
            feats[3] = self.squeeze_module(feats[3])
        laplacian = None
        if self.training and self.config.outward_reference:
            laplacian = laplacian_5x5(x.mean(dim=1, keepdim=True))
        dec = self.decoder(x, feats, laplacian, release_features=True)  # feats is ours: freed as used
        return BiRefNetOutput(
            logits=dec.logits,
            side_logits=dec.side_logits,
            gradient_logits=dec.gradient_logits,
            gradient_targets=dec.gradient_targets,
            class_logits=class_logits,
        )
