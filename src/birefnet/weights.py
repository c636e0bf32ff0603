"""Checkpoint reading, architecture detection, strict loading and saving.

``load_model(source)`` accepts a ``.pth``/``.pt``/``.bin``/``.safetensors`` file, a directory
holding ``model.safetensors`` (with our ``config.json`` or the official hub layout), a registry name
(``"general"``) or a Hugging Face repo id (``"ZhengPeng7/BiRefNet"``). Loading is strict: a
checkpoint that does not fit the architecture raises :class:`CheckpointError` with the missing and
unexpected keys and the architecture option that probably differs. Pickles are read with
``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from birefnet.config import BiRefNetConfig

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
UNWANTED_PREFIXES = ("module.", "_orig_mod.")
CONFIG_FORMAT = "birefnet"  # marker in our config.json (the official hub config.json has none)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the architecture; the message says what to do."""


@dataclass
class LoadReport:
    """What happened when a state dict was loaded.

    Attributes:
        missing: keys the model has and the checkpoint lacks.
        unexpected: keys the checkpoint has and the model lacks.
        mismatched: (key, checkpoint shape, model shape) for keys present in both.
        stripped_prefixes: prefixes removed from every key (``module.``, ``_orig_mod.``).
        cast_from: original floating dtypes when they differed from the model's (e.g. float16).
        config_source: where the architecture came from: "config.json", "inferred", "given".
        hints: likely architecture differences, in words.
    """

    source: str = ""
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    stripped_prefixes: list[str] = field(default_factory=list)
    cast_from: list[str] = field(default_factory=list)
    config_source: str = ""
    hints: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [f"checkpoint {self.source or '<state dict>'}:"]

        def listing(title: str, items: list[Any]) -> None:
            if items:
                shown = ", ".join(str(i) for i in items[:12])
                more = f" ... (+{len(items) - 12} more)" if len(items) > 12 else ""
                lines.append(f"  {title} ({len(items)}): {shown}{more}")

        listing("missing keys", self.missing)
        listing("unexpected keys", self.unexpected)
        listing("shape mismatches (key, checkpoint, model)", self.mismatched)
        if self.stripped_prefixes:
            lines.append(f"  stripped prefixes: {', '.join(self.stripped_prefixes)}")
        if self.cast_from:
            lines.append(f"  cast from {', '.join(self.cast_from)} to the model's dtype")
        for h in self.hints:
            lines.append(f"  hint: {h}")
        if self.ok:
            lines.append("  all keys matched")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Reading files


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a flat ``{key: tensor}`` dict from a safetensors or pickle checkpoint (no code execution).

    Pickles are opened with ``torch.load(weights_only=True)``; a file that needs arbitrary classes
    is refused. A checkpoint wrapping the state dict (``{"state_dict": ...}``, ``{"model": ...}``,
    ``{"model_state_dict": ...}``) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(
                f"{path}: not a readable safetensors file ({e}); re-download or re-convert it"
            ) from e
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError or others depending on the file
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "pickle" in type(e).__name__.lower():
            raise CheckpointError(
                f"{path}: refused to unpickle it: it holds Python objects beyond tensors, and loading "
                "those could run code. If you trust the file, extract its state dict yourself "
                "(torch.load(..., weights_only=False)['...']) and save it with safetensors, or re-save "
                f"it with torch.save(state_dict). ({msg})"
            ) from e
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({msg})") from e
    return _unwrap(obj, path)


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        if isinstance(obj, Mapping):
            for key in ("state_dict", "model_state_dict", "model", "module", "net"):
                if isinstance(obj.get(key), Mapping):
                    obj = obj[key]
                    break
            else:
                tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
                if tensors:
                    return tensors
                break
        else:
            break
    raise CheckpointError(f"{path}: found no state dict of tensors in this checkpoint")


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove ``module.`` / ``_orig_mod.`` prefixes (DDP, torch.compile, accelerate), in any nesting order."""
    sd = dict(state_dict)
    stripped: list[str] = []
    changed = True
    while changed:
        changed = False
        for prefix in UNWANTED_PREFIXES:
            if sd and all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                stripped.append(prefix)
                changed = True
    return sd, stripped


# --------------------------------------------------------------------------------------------
# Architecture detection from tensor shapes

_SWIN_BY_EMBED = {128: "swin_v1_b", 192: "swin_v1_l"}
_PVT_BY_DEPTHS = {
    (2, 2, 2, 2): "pvt_v2_b1",
    (3, 4, 6, 3): "pvt_v2_b2",
    (3, 4, 18, 3): "pvt_v2_b3",
    (3, 8, 27, 3): "pvt_v2_b4",
    (3, 6, 40, 3): "pvt_v2_b5",
}
_BASE_CHANNELS = {  # shallow -> deep
    "swin_v1_t": (96, 192, 384, 768),
    "swin_v1_s": (96, 192, 384, 768),
    "swin_v1_b": (128, 256, 512, 1024),
    "swin_v1_l": (192, 384, 768, 1536),
    "pvt_v2_b0": (32, 64, 160, 256),
    "vgg16": (128, 256, 512, 512),
    "vgg16bn": (128, 256, 512, 512),
    "resnet50": (256, 512, 1024, 2048),
}
for _name in ("pvt_v2_b1", "pvt_v2_b2", "pvt_v2_b3", "pvt_v2_b4", "pvt_v2_b5"):
    _BASE_CHANNELS[_name] = (64, 128, 320, 512)


def _count_children(sd: Mapping[str, Any], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    idx = {int(m.group(1)) for k in sd if (m := pat.match(k))}
    return max(idx) + 1 if idx else 0


def detect_backbone(sd: Mapping[str, torch.Tensor]) -> str:
    """Name of the backbone whose official ``bb.*`` keys are in ``sd``."""
    if "bb.patch_embed.proj.weight" in sd:
        embed = int(sd["bb.patch_embed.proj.weight"].shape[0])
        if embed == 96:
            return "swin_v1_t" if _count_children(sd, "bb.layers.2.blocks.") <= 6 else "swin_v1_s"
        if embed in _SWIN_BY_EMBED:
            return _SWIN_BY_EMBED[embed]
        raise CheckpointError(
            f"Swin backbone with embed dim {embed} is not a released variant (96, 128, 192)"
        )
    if "bb.patch_embed1.proj.weight" in sd:
        if int(sd["bb.patch_embed1.proj.weight"].shape[0]) == 32:
            return "pvt_v2_b0"
        depths = tuple(_count_children(sd, f"bb.block{i}.") for i in range(1, 5))
        if depths in _PVT_BY_DEPTHS:
            return _PVT_BY_DEPTHS[depths]
        raise CheckpointError(f"PVTv2 backbone with depths {depths} is not a known variant")
    if "bb.conv1.0.weight" in sd:
        if tuple(sd["bb.conv1.0.weight"].shape[-2:]) == (7, 7):
            return "resnet50"
        return "vgg16bn" if "bb.conv1.1.running_mean" in sd else "vgg16"
    if any(k.startswith("bb.") for k in sd):
        raise CheckpointError(
            "the backbone keys (bb.*) match no supported backbone (Swin v1, PVTv2, VGG16(-BN), ResNet-50); "
            "DINOv3 backbones are not supported yet"
        )
    raise CheckpointError("no backbone keys (bb.*) found: this does not look like a BiRefNet checkpoint")


def infer_config(sd: Mapping[str, torch.Tensor], **overrides: Any) -> BiRefNetConfig:
    """Detect the architecture of an official-format state dict from its keys and shapes.

    The inward-reference patch order cannot be seen in the tensors: it is "current" unless given
    in ``overrides`` (the weights registry knows it for released checkpoints). "add" and "" multi-scale
    input have the same tensors; "" is assumed.
    """
    if "decoder.ipt_blk4.conv1.weight" in sd and "decoder.ipt_blk5.conv1.weight" not in sd:
        raise CheckpointError(
            "this checkpoint uses the pre-2024-05 'legacy' decoder layout (no ipt_blk5 / gdt_convs_4), "
            "which is not supported yet; use a checkpoint released after May 2024"
        )
    backbone = detect_backbone(sd)
    base = list(reversed(_BASE_CHANNELS[backbone]))  # deepest first
    kw: dict[str, Any] = {"backbone": backbone}
    lat = sd.get("decoder.lateral_block4.conv.weight")
    if lat is not None:
        kw["multi_scale_input"] = "cat" if int(lat.shape[0]) == 2 * base[1] else ""
    factor = 2 if kw.get("multi_scale_input", "cat") == "cat" else 1
    channels = [c * factor for c in base]

    n_squeeze = _count_children(sd, "squeeze_module.")
    if n_squeeze:
        p = "squeeze_module.0."
        if f"{p}conv_resi.weight" in sd:
            name = "ResBlk"
        elif f"{p}conv_in.weight" in sd:
            name = "BasicDecBlk"
        elif f"{p}aspp_deforms.0.atrous_conv.regular_conv.weight" in sd:
            name = "ASPPDeformable"
        else:
            name = "ASPP"
        kw["squeeze_block"] = f"{name}_x{n_squeeze}"
        first = {
            "BasicDecBlk": f"{p}conv_in.weight",
            "ResBlk": f"{p}conv_in.weight",
            "ASPPDeformable": f"{p}aspp1.atrous_conv.regular_conv.weight",
            "ASPP": f"{p}aspp1.atrous_conv.weight",
        }[name]
        squeeze_in = int(sd[first].shape[1])
    else:
        kw["squeeze_block"] = ""
        squeeze_in = None
    blk = "decoder.decoder_block4."
    kw["decoder_block"] = "ResBlk" if f"{blk}conv_resi.weight" in sd else "BasicDecBlk"
    if f"{blk}dec_att.aspp_deforms.0.atrous_conv.regular_conv.weight" in sd:
        kw["decoder_attention"] = "ASPPDeformable"
    elif f"{blk}dec_att.aspp1.atrous_conv.weight" in sd:
        kw["decoder_attention"] = "ASPP"
    else:
        kw["decoder_attention"] = ""
    conv_in = sd.get(f"{blk}conv_in.weight")
    if conv_in is not None:
        inter, cin = int(conv_in.shape[0]), int(conv_in.shape[1])
        kw["decoder_channels_inter"] = "adap" if inter == cin // 4 and inter != 64 else "fixed"
    kw["norm"] = "bn" if f"{blk}bn_in.running_mean" in sd else "none"
    ipt5 = sd.get("decoder.ipt_blk5.conv1.weight")
    kw["inward_reference"] = ipt5 is not None
    if ipt5 is not None:
        kw["inward_reference_split"] = int(ipt5.shape[1]) != 3
    kw["multi_scale_supervision"] = "decoder.conv_ms_spvn_4.weight" in sd
    kw["outward_reference"] = "decoder.gdt_convs_4.0.weight" in sd
    cls = sd.get("cls_head.0.weight")
    kw["auxiliary_classification"] = cls is not None
    if cls is not None:
        kw["num_classes"] = int(cls.shape[0])
    # context levels: squeeze input = channels[0] + sum of the last n of (c3, c2, c1) shallow ones
    if squeeze_in is None and conv_in is not None:
        ipt = channels[0] // 8 if kw["inward_reference"] else 0
        squeeze_in = int(conv_in.shape[1]) - ipt
    if squeeze_in is not None:
        cxt_all = channels[1:][::-1]
        for n in range(4):
            if channels[0] + sum(cxt_all[len(cxt_all) - n :] if n else []) == squeeze_in:
                kw["context_levels"] = n
                break
    kw.update(overrides)
    return BiRefNetConfig(**kw)


def _hints(report: LoadReport, sd: Mapping[str, torch.Tensor], config: BiRefNetConfig) -> list[str]:
    """Architecture options that probably differ between the checkpoint and the model."""
    try:
        found = infer_config(sd, patch_order=config.patch_order)
    except CheckpointError as e:
        return [str(e)]
    diffs = []
    for name, want in config.to_dict().items():
        have = getattr(found, name)
        if name in ("drop_path_rate", "dropout", "patch_order"):
            continue
        if have != want:
            diffs.append(f"{name}={have!r} in the checkpoint but {want!r} in the model")
    if diffs:
        return ["the checkpoint looks like a different architecture: " + "; ".join(diffs)]
    return []


# --------------------------------------------------------------------------------------------
# Loading into a model


def load_into(
    model: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    source: str = "",
) -> LoadReport:
    """Load an official-format state dict into ``model`` and report what matched.

    Prefixes are stripped and half-precision tensors cast to the model's dtypes. With
    ``strict=True`` (default) any missing, unexpected or mis-shaped key raises
    :class:`CheckpointError` and nothing is loaded; with ``strict=False`` the matching keys load and
    the report lists the rest (never silently: it is also logged as a warning).
    """
    sd, stripped = strip_prefixes(state_dict)
    report = LoadReport(source=source, stripped_prefixes=stripped)
    own = model.state_dict()
    # A scalar buffer (BatchNorm ``num_batches_tracked``) saved through numpy comes back as shape (1,)
    # (``np.ascontiguousarray`` never returns 0-d): the same single value, so take it as a scalar.
    sd = {k: v.reshape(()) if k in own and own[k].dim() == 0 and v.numel() == 1 else v for k, v in sd.items()}
    report.missing = [k for k in own if k not in sd]
    report.unexpected = [k for k in sd if k not in own]
    report.mismatched = [
        (k, tuple(v.shape), tuple(own[k].shape))
        for k, v in sd.items()
        if k in own and v.shape != own[k].shape
    ]
    dtypes = {str(v.dtype).replace("torch.", "") for v in sd.values() if v.is_floating_point()}
    model_dtypes = {str(v.dtype).replace("torch.", "") for v in own.values() if v.is_floating_point()}
    report.cast_from = sorted(dtypes - model_dtypes)
    if not report.ok:
        cfg = getattr(model, "config", None)
        if isinstance(cfg, BiRefNetConfig):
            report.hints = _hints(report, sd, cfg)
        if strict:
            raise CheckpointError(f"strict load failed, nothing was loaded.\n{report}")
        logger.warning("partial load (strict=False):\n%s", report)
        sd = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
    with torch.no_grad():
        for k, v in sd.items():
            own[k].copy_(v)  # copy_ casts fp16/bf16 (and fp16-stored int buffers) to the model's dtype
    return report


def _registry_entry(name: str) -> Any | None:
    from birefnet import registry

    return registry.get(name, None)


def _read_config_json(path: Path) -> dict[str, Any] | None:
    """Our architecture dict from ``config.json``, or None for the official hub config (no architecture)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable config.json ({e})") from e
    if (
        isinstance(data, dict)
        and data.get("format") == CONFIG_FORMAT
        and isinstance(data.get("config"), dict)
    ):
        return data["config"]
    return None


def _looks_like_repo_id(source: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", source)) and not Path(source).exists()


def download(repo_id: str, *, revision: str | None = None) -> Path:
    """Directory of a Hugging Face repo snapshot holding model.safetensors (+ config.json).

    Downloads when online; falls back to the local cache when offline; otherwise raises a
    :class:`CheckpointError` that says how to get the weights onto the machine.
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover
        raise CheckpointError(
            "huggingface_hub is needed to download weights: pip install huggingface_hub"
        ) from e
    patterns = ["model.safetensors", "config.json"]
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except Exception as online_error:  # network errors, offline mode, missing repo
        try:
            return Path(
                snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=True)
            )
        except Exception:
            raise CheckpointError(
                f"could not download {repo_id} from the Hugging Face hub ({type(online_error).__name__}: "
                f"{str(online_error).splitlines()[0] if str(online_error) else ''}) and it is not in the local "
                f"cache. On a machine with internet run `huggingface-cli download {repo_id}` (the cache can "
                "be copied), or pass a local checkpoint file or folder instead (--weights PATH / "
                "load_model('path/to/model.safetensors'))."
            ) from online_error


def resolve_source(source: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """(local checkpoint path, config overrides from the registry) for any ``load_model`` source."""
    overrides: dict[str, Any] = {}
    text = str(source)
    path = Path(text).expanduser()
    if not path.exists():
        entry = _registry_entry(text)
        if entry is None and _looks_like_repo_id(text):
            from birefnet import registry

            entry = registry.find_by_repo(text)
        if entry is not None:
            overrides = dict(entry.config_overrides)
            text = entry.repo_id
        if _looks_like_repo_id(text):
            path = download(text)
        else:
            raise CheckpointError(
                f"{source!r} is neither an existing file or folder, a registry name (see `birefnet models`) "
                "nor a Hugging Face repo id (owner/name)"
            )
    if path.is_dir():
        candidates = [
            path / "model.safetensors",
            *sorted(path.glob("*.safetensors")),
            *sorted(path.glob("*.pth")),
        ]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise CheckpointError(
                f"{path}: folder holds no model.safetensors (or other *.safetensors / *.pth)"
            )
        path = found
    elif path.suffix not in CHECKPOINT_SUFFIXES:
        raise CheckpointError(
            f"{path}: unsupported checkpoint type; expected one of {', '.join(CHECKPOINT_SUFFIXES)}"
        )
    return path, overrides


def load_model(
    source: str | os.PathLike,
    *,
    config: BiRefNetConfig | None = None,
    strict: bool = True,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    **overrides: Any,
) -> torch.nn.Module:
    """Build a :class:`~birefnet.models.birefnet.BiRefNet` and load a checkpoint into it (eval mode).

    Args:
        source: checkpoint file (.safetensors/.pth/.pt/.bin), folder with model.safetensors, registry
            name (``birefnet models``) or Hugging Face repo id.
        config: the architecture; default: our config.json beside the weights, else detected from
            the tensor shapes (plus the registry's settings, e.g. ``patch_order="legacy"``).
        strict: raise on any missing/unexpected/mis-shaped key (default).
        device, dtype: where and in which floating dtype to put the model (default CPU, float32).
        **overrides: BiRefNetConfig fields to set, e.g. ``patch_order="legacy"``.

    Returns:
        The model in eval mode; ``model.load_report`` holds the :class:`LoadReport`.
    """
    from birefnet.models.birefnet import BiRefNet

    path, registry_overrides = resolve_source(source)
    sd, stripped = strip_prefixes(read_state_dict(path))
    merged = {**registry_overrides, **overrides}
    if config is not None:
        cfg, config_source = config.replace(**merged) if merged else config, "given"
    else:
        saved = _read_config_json(path.parent / "config.json")
        if saved is not None:
            cfg, config_source = BiRefNetConfig.from_dict({**saved, **merged}), "config.json"
        else:
            cfg, config_source = infer_config(sd, **merged), "inferred"
    model = BiRefNet(cfg)
    report = load_into(model, sd, strict=strict, source=str(path))
    report.config_source = config_source
    report.stripped_prefixes = stripped + report.stripped_prefixes
    logger.info("loaded %s (%s architecture: %s)", path, config_source, cfg.backbone)
    model.load_report = report
    model.eval()
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


def save_pretrained(
    model: torch.nn.Module, directory: str | os.PathLike, *, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (the full architecture) into ``directory``.

    Files are written to temporary names and renamed, so an interrupted save leaves no partial file.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = directory / ".model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt", "birefnet_backbone": cfg.backbone})
    os.replace(tmp, directory / "model.safetensors")
    info = {"format": CONFIG_FORMAT, "config": cfg.to_dict(), **(metadata or {})}
    tmpc = directory / ".config.json.tmp"
    tmpc.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmpc, directory / "config.json")
    return directory
