"""Typed, frozen architecture configuration for BiRefNet.

The official code picks its architecture by editing a global ``Config`` class (list indices, and a
training batch size that decides whether BatchNorm exists). Here the architecture is one frozen
dataclass that is passed in, can be written to ``config.json`` and read back, and can be built from
the official attribute names with :meth:`BiRefNetConfig.from_official`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Literal

BACKBONES: tuple[str, ...] = (
    "swin_v1_t",
    "swin_v1_s",
    "swin_v1_b",
    "swin_v1_l",
    "pvt_v2_b0",
    "pvt_v2_b1",
    "pvt_v2_b2",
    "pvt_v2_b3",
    "pvt_v2_b4",
    "pvt_v2_b5",
    "vgg16",
    "vgg16bn",
    "resnet50",
)

MultiScaleInput = Literal["", "add", "cat"]
DecoderAttention = Literal["", "ASPP", "ASPPDeformable"]
DecoderBlockName = Literal["BasicDecBlk", "ResBlk"]
PatchOrder = Literal["current", "legacy"]
Norm = Literal["bn", "none"]

_SQUEEZE_RE = re.compile(r"^(BasicDecBlk|ResBlk|ASPP|ASPPDeformable)_x([1-9][0-9]*)$")

# Official attribute name -> our field name.
_OFFICIAL_NAMES: dict[str, str] = {
    "bb": "backbone",
    "mul_scl_ipt": "multi_scale_input",
    "cxt_num": "context_levels",
    "squeeze_block": "squeeze_block",
    "dec_att": "decoder_attention",
    "dec_blk": "decoder_block",
    "lat_blk": "lateral_block",
    "dec_channels_inter": "decoder_channels_inter",
    "dec_ipt": "inward_reference",
    "dec_ipt_split": "inward_reference_split",
    "ms_supervision": "multi_scale_supervision",
    "out_ref": "outward_reference",
    "auxiliary_classification": "auxiliary_classification",
}
# Official attributes that do not change the network's structure (training, paths, precision ...).
_OFFICIAL_IGNORED = {
    "task",
    "testsets",
    "training_set",
    "size",
    "dynamic_size",
    "background_color_synthesis",
    "compile",
    "precisionHigh",
    "mixed_precision",
    "SDPA_enabled",
    "load_all",
    "lr",
    "num_workers",
    "optimizer",
    "lr_decay_epochs",
    "lr_decay_rate",
    "lambdas_pix_last",
    "lambdas_cls",
    "preproc_methods",
    "batch_size_valid",
    "rand_seed",
    "device",
    "verbose_eval",
    "freeze_bb",
    "model",
    "bb_pretrained",
    "finetune_last_epochs",
    "sys_home_dir",
    "data_root_dir",
    "weights",
    "weights_root_dir",
    "save_last",
    "save_step",
    "lateral_channels_in_collection",
    "cxt",
}


@dataclass(frozen=True)
class BiRefNetConfig:
    """Architecture of a BiRefNet model.

    Defaults are the official defaults, i.e. the architecture of every released checkpoint
    (only ``backbone`` and, for weights published before 2024-11-05, ``patch_order`` differ).
    The official attribute name of each field is given in brackets.

    Args:
        backbone: encoder [``bb``]; one of :data:`BACKBONES`.
        multi_scale_input: run the backbone again on the half-size image and fuse each level by
            channel concatenation ("cat", channels double), addition ("add") or not at all ("")
            [``mul_scl_ipt``].
        context_levels: how many of the shallower levels (x3, x2, x1; 0-3) are resized to the
            deepest level and concatenated to it before the squeeze block [``cxt_num``].
        squeeze_block: ``"<Block>_x<N>"`` with Block in BasicDecBlk, ResBlk, ASPP, ASPPDeformable,
            or "" for none [``squeeze_block``]. N > 1 is broken in the official code; here the first
            repeat maps in -> out channels and the others out -> out.
        decoder_attention: attention inside each decoder block [``dec_att``].
        decoder_block: decoder block type [``dec_blk``].
        lateral_block: lateral block type; only "BasicLatBlk" (1x1 conv) exists [``lat_blk``].
        decoder_channels_inter: "fixed" (64) or "adap" (in_channels // 4) hidden width of decoder
            and squeeze blocks [``dec_channels_inter``].
        inward_reference: stack image patches into every decoder stage [``dec_ipt``].
        inward_reference_split: cut the image into a grid of patches stacked on channels; False
            feeds the resized whole image instead [``dec_ipt_split``].
        patch_order: channel order of the stacked patches: "current" ('b c (hg h) (wg w) ->
            b (c hg wg) h w') or "legacy" (column-major, 3 channels per patch; weights trained
            before 2024-11-05). Cannot be seen in the tensors.
        multi_scale_supervision: side-output heads on decoder stages 4, 3, 2 [``ms_supervision``].
        outward_reference: gradient-attention heads on decoder stages 4, 3, 2; needs
            multi-scale supervision [``out_ref``].
        auxiliary_classification: a linear class head on the pooled deepest feature, training only
            [``auxiliary_classification``].
        num_classes: classes of the auxiliary head (219 DIS5K classes).
        norm: "bn" puts BatchNorm in decoder, squeeze and ASPP blocks (all released weights);
            "none" uses identities (the official code did this when ``batch_size == 1``).
        drop_path_rate: stochastic depth of the backbone; None = the backbone's own default
            (0.2 Swin, 0.1 PVTv2).
        dropout: dropout probability at the end of each ASPP / ASPPDeformable block (training only).
    """

    backbone: str = "swin_v1_l"
    multi_scale_input: MultiScaleInput = "cat"
    context_levels: int = 3
    squeeze_block: str = "BasicDecBlk_x1"
    decoder_attention: DecoderAttention = "ASPPDeformable"
    decoder_block: DecoderBlockName = "BasicDecBlk"
    lateral_block: Literal["BasicLatBlk"] = "BasicLatBlk"
    decoder_channels_inter: Literal["fixed", "adap"] = "fixed"
    inward_reference: bool = True
    inward_reference_split: bool = True
    patch_order: PatchOrder = "current"
    multi_scale_supervision: bool = True
    outward_reference: bool = True
    auxiliary_classification: bool = False
    num_classes: int = 219
    norm: Norm = "bn"
    drop_path_rate: float | None = None
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        checks = {
            "multi_scale_input": ("", "add", "cat"),
            "decoder_attention": ("", "ASPP", "ASPPDeformable"),
            "decoder_block": ("BasicDecBlk", "ResBlk"),
            "lateral_block": ("BasicLatBlk",),
            "decoder_channels_inter": ("fixed", "adap"),
            "patch_order": ("current", "legacy"),
            "norm": ("bn", "none"),
        }
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {allowed}")
        if not 0 <= self.context_levels <= 3:
            raise ValueError(f"context_levels must be 0..3, got {self.context_levels}")
        if self.squeeze_block and not _SQUEEZE_RE.match(self.squeeze_block):
            raise ValueError(
                f"squeeze_block={self.squeeze_block!r}: expected '' or '<BasicDecBlk|ResBlk|ASPP|"
                "ASPPDeformable>_x<N>', e.g. 'BasicDecBlk_x1'"
            )
        if self.outward_reference and not self.multi_scale_supervision:
            raise ValueError(
                "outward_reference needs multi_scale_supervision (its gradient labels use the side outputs)"
            )

    @property
    def squeeze_spec(self) -> tuple[str, int] | None:
        """(block name, repeats) of the squeeze module, or None."""
        if not self.squeeze_block:
            return None
        m = _SQUEEZE_RE.match(self.squeeze_block)
        assert m is not None
        return m.group(1), int(m.group(2))

    def replace(self, **changes: Any) -> BiRefNetConfig:
        """A copy with some fields changed (the config itself is frozen)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every architecture field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BiRefNetConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise with the list of known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown BiRefNetConfig fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_official(cls, official: dict[str, Any] | Any, **overrides: Any) -> BiRefNetConfig:
        """Build from official ``Config`` attribute names (a dict or a Config-like object).

        Attributes not given take the official defaults; derived ones follow as in the official
        ``Config``: ``out_ref`` needs ``ms_supervision``; ``batch_size > 1`` means BatchNorm,
        ``batch_size == 1`` none (our ``norm`` field). Structure-free attributes (task, lr, paths,
        ...) are ignored; unknown ones raise. Keyword arguments set fields of this config.
        """
        if not isinstance(official, dict):
            official = {k: v for k, v in vars(official).items() if not k.startswith("_")}
        kwargs: dict[str, Any] = {}
        unknown = []
        for key, value in official.items():
            if key in _OFFICIAL_NAMES:
                kwargs[_OFFICIAL_NAMES[key]] = value
            elif key == "batch_size":
                kwargs["norm"] = "bn" if int(value) > 1 else "none"
            elif key not in _OFFICIAL_IGNORED:
                unknown.append(key)
        if unknown:
            raise ValueError(f"unknown official Config attributes {sorted(unknown)}")
        if "outward_reference" not in kwargs:
            kwargs["outward_reference"] = bool(kwargs.get("multi_scale_supervision", True))
        else:
            kwargs["outward_reference"] = bool(kwargs["outward_reference"]) and bool(
                kwargs.get("multi_scale_supervision", True)
            )
        for key in ("inward_reference", "inward_reference_split", "multi_scale_supervision"):
            if key in kwargs:
                kwargs[key] = bool(kwargs[key])
        if "context_levels" in kwargs:
            kwargs["context_levels"] = int(kwargs["context_levels"])
        kwargs.update(overrides)
        return cls(**kwargs)
