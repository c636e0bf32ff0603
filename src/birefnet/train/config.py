"""Typed training configuration: frozen dataclasses, YAML files that only override fields, ``--set``.

A run is fully described by one :class:`TrainConfig`. Its defaults are the official DIS5K recipe
(Swin-L, 1024², AdamW, constant learning rate, flip/enhance/rotate/pepper), except where a
comment says otherwise. A YAML file holds a nested mapping of the fields to change, nothing else;
``--set optim.lr=1e-5`` changes one more (the value is parsed as YAML). Unknown keys and values
of the wrong type raise with the list of valid names.

Example::

    cfg = load_config("configs/tiny_synthetic.yaml", overrides=["epochs=2", "data.size=[64,64]"])
    cfg.to_yaml()   # every field, as written to <out_dir>/config.yaml
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from birefnet.config import BiRefNetConfig

__all__ = [
    "ConfigError",
    "DataConfig",
    "LossConfig",
    "OptimConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "parse_set",
]

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Verify = Literal["header", "full", "none"]


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key and the fix."""


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how it is prepared.

    Args:
        root: folder holding the datasets (official ``<data_root_dir>/<task>``), or one dataset
            folder with ``im/`` and ``gt/``.
        train_sets: dataset folder names under ``root`` (or paths); "A+B" strings are split. Empty:
            ``root`` itself, or every dataset folder under it except ``val_sets``.
        val_sets: datasets for validation during training (empty: no validation).
        size: (width, height) every training image is resized to at load time (official
            ``config.size``); multiples of 32.
        augmentations: subset of flip, crop, rotate, enhance, pepper (official: no crop).
        dynamic_size: ((min_w, max_w), (min_h, max_h)): a random size per optimizer step, floored
            to /32 (official ``dynamic_size``, e.g. ((256, 2304), (256, 2304))); None = off.
        background_color_synthesis: probability of replacing the background by a flat colour
            (official ``background_color_synthesis``; 0 = off). The official recipe then keeps only
            the "flip" augmentation; set ``augmentations`` accordingly.
        num_workers: DataLoader processes (0 = load in the training process).
        verify: file check before training: "header", "full" decode, or "none".
        strict: raise instead of skipping when pairs are missing or unreadable.
        val_size: (width, height) of validation inputs; None = ``size``.
        max_val_samples: validate on at most this many samples (the first ones) per set.
    """

    root: str = ""
    train_sets: tuple[str, ...] = ()
    val_sets: tuple[str, ...] = ()
    size: tuple[int, int] = (1024, 1024)
    augmentations: tuple[str, ...] = ("flip", "enhance", "rotate", "pepper")
    dynamic_size: tuple[tuple[int, int], tuple[int, int]] | None = None
    background_color_synthesis: float = 0.0
    num_workers: int = 2
    verify: Verify = "header"
    strict: bool = False
    val_size: tuple[int, int] | None = None
    max_val_samples: int | None = None


@dataclass(frozen=True)
class LossConfig:
    """The loss (see :class:`birefnet.losses.BiRefNetLoss`).

    Args:
        task: official task whose weights are the default (DIS5K, COD, HRSOD, General,
            General-2K, Matting); also selects the last-epochs re-weighting rule.
        weights: pixel-term weights replacing the task's, e.g. {bce: 30, iou: 0.5, ssim: 10}.
        gradient_weight: outward-reference (gradient) loss weight (official 1).
        classification_weight: auxiliary classification weight (official 5; only with a model
            that has ``auxiliary_classification``).
        finetune_last_epochs: re-weight the loss in the last N epochs (official: DIS5K 40, General
            20, Matting 10 ...); None = the task's official N, 0 = off.
        finetune_mode: "once" (default: the re-weighting is applied a single time) or "official"
            (it compounds every epoch, as the official loop does; e.g. IoU 0.5 -> 0.5 * 0.5**k).
    """

    task: str = "DIS5K"
    weights: dict[str, float] | None = None
    gradient_weight: float = 1.0
    classification_weight: float = 5.0
    finetune_last_epochs: int | None = None
    finetune_mode: Literal["once", "official"] = "once"


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule.

    Args:
        name: "adamw" (official), "adam" (official alternative, no weight decay) or "sgd".
        lr: base learning rate; None = official rule ``(1e-4 if task is DIS5K else 1e-5) *
            sqrt(batch_size / 4)`` with the per-process batch size.
        weight_decay: official 1e-2 for AdamW (Adam: 0).
        betas: Adam betas.
        momentum: SGD momentum.
        schedule: "official" (MultiStepLR over epochs: x ``lr_decay_rate`` at each of
            ``lr_decay_epochs``; the official milestones [1e5] never fire, i.e. constant),
            "constant", "cosine" (per step, down to ``min_lr_ratio * lr``).
        lr_decay_epochs: milestones (1-based epochs) of the "official" schedule.
        lr_decay_rate: factor at each milestone.
        warmup_steps: linear warm-up from 0 over this many optimizer steps (any schedule).
        min_lr_ratio: final lr / lr of the cosine schedule.
        grad_clip: clip the global gradient norm to this (None = off, as official).
        no_decay_norm_bias: no weight decay on biases and norm weights (official: decay all).
    """

    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float | None = None
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9
    schedule: Literal["official", "constant", "cosine"] = "official"
    lr_decay_epochs: tuple[int, ...] = ()
    lr_decay_rate: float = 0.5
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    grad_clip: float | None = None
    no_decay_norm_bias: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """One training run.

    Args:
        out_dir: run directory: config.yaml, train_log.jsonl, loss_curve.png, checkpoints/, final/.
        model: architecture; None = the init checkpoint's architecture, else the official default
            (Swin-L). Fields not given keep BiRefNetConfig's defaults.
        init_checkpoint: BiRefNet weights to start from (fine-tuning): file, folder, registry name
            or Hugging Face id; loaded strictly.
        backbone_weights: ImageNet weights of the backbone in the original Swin / PVTv2 release
            format (training from scratch, as the official recipe); ignored with init_checkpoint.
        freeze_backbone: do not train the backbone: no gradients, and kept in eval mode (fixed
            BatchNorm statistics, no stochastic depth). The official option only stops gradients.
        data, loss, optim: see :class:`DataConfig`, :class:`LossConfig`, :class:`OptimConfig`.
        epochs: number of epochs (official: DIS5K 500, General 200, Matting 150 ...).
        batch_size: micro-batch per process (official 8 per GPU: note the IoU term is summed over
            it, so its weight scales with the batch size, as in the official code).
        grad_accum_steps: micro-batches per optimizer step.
        max_steps: stop after this many optimizer steps in total (None = all epochs).
        max_minutes: stop (with a checkpoint) after this much wall time in this process.
        precision: "fp32", "bf16" or "fp16" autocast; "auto" = bf16 on CUDA (official), fp32 on CPU.
        compile: wrap the model in ``torch.compile`` (official on; needs a C++ compiler on CPU).
        channels_last: keep the model's 4-D weights and the input batches in channels-last memory
            format (same values; oneDNN's NHWC convolutions: ~5 % faster steps for PVTv2-b0 at 128²
            on the 2-core CPU; usually faster on GPUs with AMP too).
        device: "auto" (CUDA if available), "cpu", "cuda", "cuda:1" ...
        seed: run seed (official 7); rank r seeds its dropout with ``seed + r``.
        deterministic: ``torch.use_deterministic_algorithms(True)`` (slower on GPU).
        num_threads: intra-op CPU threads per process (None = torch's default).
        sync_batchnorm: convert BatchNorm to SyncBatchNorm under DDP (batch statistics over all
            processes, so the result matches a single process with the global batch).
        find_unused_parameters: DDP option; needed only when some heads are not used in the loss.
        checkpoint_every_epochs: save at the end of every N-th epoch (and always at the end).
        checkpoint_every_steps: also save every N optimizer steps (mid-epoch; None = off).
        keep_last: checkpoints kept in out_dir/checkpoints (older ones are deleted).
        val_every_epochs: validate on ``data.val_sets`` every N epochs (0 = never).
        val_metrics: metrics of the validation, as ``birefnet eval --metrics`` ("S,MAE,F,WF",
            "all", ...).
        progress: show a progress bar (rank 0, interactive terminals).
        loss_curve: redraw loss_curve.png at every checkpoint and at the end (matplotlib).
    """

    out_dir: str = "runs/birefnet"
    model: BiRefNetConfig | None = None
    init_checkpoint: str | None = None
    backbone_weights: str | None = None
    freeze_backbone: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = 500
    batch_size: int = 8
    grad_accum_steps: int = 1
    max_steps: int | None = None
    max_minutes: float | None = None
    precision: Precision = "auto"
    compile: bool = False
    channels_last: bool = False
    device: str = "auto"
    seed: int = 7
    deterministic: bool = False
    num_threads: int | None = None
    sync_batchnorm: bool = False
    find_unused_parameters: bool = False
    checkpoint_every_epochs: int = 5
    checkpoint_every_steps: int | None = None
    keep_last: int = 3
    val_every_epochs: int = 0
    val_metrics: str = "S,MAE,F,WF"
    progress: bool = True
    loss_curve: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.grad_accum_steps >= 1, "grad_accum_steps must be >= 1"),
            (self.keep_last >= 1, "keep_last must be >= 1"),
            (self.checkpoint_every_epochs >= 1, "checkpoint_every_epochs must be >= 1"),
            (self.checkpoint_every_steps is None or self.checkpoint_every_steps >= 1,
             "checkpoint_every_steps must be >= 1 or null"),
            (self.val_every_epochs >= 0, "val_every_epochs must be >= 0"),
            (all(s % 32 == 0 and s > 0 for s in self.data.size),
             f"data.size {self.data.size} must be positive multiples of 32"),
            (self.data.val_size is None or all(s % 32 == 0 and s > 0 for s in self.data.val_size),
             f"data.val_size {self.data.val_size} must be positive multiples of 32"),
            (0.0 <= self.data.background_color_synthesis <= 1.0,
             "data.background_color_synthesis is a probability in [0, 1]"),
            (self.optim.lr is None or (self.optim.lr > 0 and math.isfinite(self.optim.lr)),
             "optim.lr must be a positive number or null"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some top-level fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists) of every field."""
        return config_to_dict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return config_from_dict(cls, data)


# ----------------------------------------------------------------------------------------------
# dict <-> dataclass


def config_to_dict(obj: Any) -> Any:
    """Dataclasses -> dicts, tuples -> lists, recursively (YAML/JSON-safe)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: config_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [config_to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: config_to_dict(v) for k, v in obj.items()}
    return obj


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert (lists -> tuples, int -> float)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: null is not allowed here")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {_type_name(tp)}"
        )
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return config_from_dict(tp, value, where)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            # "A+B" dataset strings and single names become 1-tuples of str
            args = get_args(tp)
            if isinstance(value, str) and len(args) == 2 and args[1] is Ellipsis and args[0] is str:
                return (value,)
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)} ({value!r})")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, vt = get_args(tp)
        return {str(k): _convert(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (str, os.PathLike)):
            return str(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def config_from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, validating names and types.

    Raises:
        ConfigError: unknown key (with close matches), wrong type, or invalid value.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ConfigError(f"unknown config key {path!r}{hint} (valid here: {', '.join(names)})")
        kwargs[key] = _convert(value, hints[key], path)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from e


# ----------------------------------------------------------------------------------------------
# YAML files and --set overrides


def parse_set(item: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-5"`` -> (["optim", "lr"], 1e-05); the value is parsed as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set optim.lr=1e-5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({e})") from e
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings to a nested dict (a copy); later ones win."""
    out = _deep_copy(data)
    for item in overrides:
        keys, value = parse_set(item)
        node = out
        for k in keys[:-1]:
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {k!r} is not a section")
            node = child
        node[keys[-1]] = value
    return out


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = _deep_copy(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML config file as a dict (empty file = {})."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config fields at the top level")
    return data


def load_config(
    path: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> TrainConfig:
    """Dataclass defaults, then ``base`` (e.g. a resumed run's config), the YAML file, then ``--set``.

    Args:
        path: YAML file with the fields to change (None: no file).
        overrides: ``key.sub=value`` strings.
        base: a dict applied before the file.
    """
    data: dict[str, Any] = _deep_copy(base or {})
    if path is not None:
        data = _merge(data, read_yaml(path))
    if overrides:
        data = apply_overrides(data, overrides)
    return config_from_dict(TrainConfig, data)
