"""The training loop: one plain function, top to bottom (nanoGPT style).

``train(config)`` builds data, model, loss and optimizer from a :class:`TrainConfig`, then runs
epochs of optimizer steps (each ``grad_accum_steps`` micro-batches per process) with optional
autocast, gradient clipping, DDP, validation and checkpoints. ``train(config, resume="auto")``
continues from the newest checkpoint; on CPU the final weights are bit-identical to an
uninterrupted run, even after a SIGKILL mid-epoch, because everything that decides the next step
is either checkpointed (weights, optimizer, scheduler, scaler, RNG states of every rank) or a pure
function of ``(seed, epoch, step)`` (data order, augmentations, dynamic sizes).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from birefnet.config import BiRefNetConfig
from birefnet.data import (
    GlobalBatchSampler,
    SegmentationDataset,
    dynamic_batch_size,
    find_pairs,
    read_mask,
    resize_batch,
)
from birefnet.train import checkpoint as ckpt
from birefnet.train.config import TrainConfig, load_config
from birefnet.train.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_mean,
    barrier,
    cleanup,
    init_distributed,
)
from birefnet.train.optim import build_optimizer, build_scheduler, default_lr
from birefnet.train.report import StepLog, plot_loss_curve

logger = logging.getLogger(__name__)

__all__ = ["TrainResult", "build_model", "train", "validate"]


@dataclass
class TrainResult:
    """What a finished (or stopped) run produced."""

    out_dir: Path
    global_step: int
    epochs_completed: int
    final_dir: Path | None = None
    last_checkpoint: Path | None = None
    stopped: str = ""  # "" (all epochs done), "max_steps", "max_minutes", "signal"
    validation: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# building blocks


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def build_model(config: TrainConfig, resume_from: Path | None = None) -> tuple[nn.Module, str]:
    """The model to train, and a note on where its weights came from.

    Resuming: architecture and weights from the checkpoint. Fine-tuning (``init_checkpoint``):
    the checkpoint's weights, loaded strictly, into ``config.model`` or the checkpoint's own
    architecture. From scratch: ``config.model`` (default Swin-L) with the ImageNet
    ``backbone_weights`` if given.
    """
    from birefnet.models.birefnet import BiRefNet
    from birefnet.weights import load_into, load_model, read_state_dict

    if resume_from is not None:
        from birefnet.weights import _read_config_json

        arch = _read_config_json(resume_from / "config.json")
        cfg = BiRefNetConfig.from_dict(arch) if arch is not None else (config.model or BiRefNetConfig())
        model = BiRefNet(cfg)
        load_into(
            model, read_state_dict(resume_from / "model.safetensors"), strict=True, source=str(resume_from)
        )
        return model, f"resumed from {resume_from}"
    if config.init_checkpoint:
        model = load_model(config.init_checkpoint, config=config.model, strict=True)
        return model, f"fine-tuning from {config.init_checkpoint}"
    model = BiRefNet(config.model or BiRefNetConfig())
    if config.backbone_weights:
        from birefnet.models.backbones.base import load_pretrained_backbone

        report = load_pretrained_backbone(model.bb, config.backbone_weights)
        return model, f"backbone from {config.backbone_weights} ({report})"
    return model, "random initialisation"


def _build_data(config: TrainConfig, dist_info: DistInfo, out_dir: Path) -> tuple[SegmentationDataset, Any]:
    d = config.data
    pairs, report = find_pairs(
        d.root, d.train_sets, exclude=d.val_sets, verify=d.verify, num_threads=max(2, d.num_workers)
    )
    if dist_info.is_main:
        report.write_json(out_dir / "data_report.json")
        logger.info("training data: %s", report.summary().splitlines()[0])
    problems = {k: v for k, v in report.counts().items() if not k.startswith("duplicate")}
    if d.strict and problems:
        raise ValueError(f"data.strict is on and some pairs are bad:\n{report.summary()}")
    dataset = SegmentationDataset(
        pairs,
        size=d.size,
        augmentations=d.augmentations,
        background_color_synthesis=d.background_color_synthesis,
        seed=config.seed,
    )
    return dataset, report


def _loader(dataset: SegmentationDataset, sampler: Any, num_workers: int, pin: bool, seed: int) -> Any:
    from torch.utils.data import DataLoader

    if num_workers > 0:
        import cv2

        # The workers are the parallelism. Set OpenCV to one thread here, in the parent, before
        # the workers fork: changing it inside a forked worker deadlocks when the parent had
        # already started OpenCV's thread pool (e.g. after writing a synthetic dataset).
        cv2.setNumThreads(1)
    # Own generator: creating a loader iterator draws a worker seed from it, and must not touch
    # the global torch RNG (dropout), or a resumed run would diverge from an uninterrupted one.
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin,
        persistent_workers=num_workers > 0,
        generator=generator,
    )


@torch.no_grad()
def validate(
    model: nn.Module,
    config: TrainConfig,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> dict[str, float]:
    """Metrics of ``model`` on each of ``config.data.val_sets`` (rank 0 only).

    The official protocol: each image is resized to ``data.val_size`` (default ``data.size``),
    the logits are upsampled (bilinear, align_corners=True) to the size of the mask file, and the
    probabilities are scored against the mask as stored (no resizing of the ground truth).

    Returns:
        ``{"val/<set>/<metric>": value}`` plus ``val/<metric>`` averaged over sets.
    """
    from torch.utils.data import DataLoader

    from birefnet.metrics import Evaluator

    d = config.data
    modes = {m: m.training for m in model.modules()}  # restored exactly (a frozen backbone stays in eval)
    model.eval()
    results: dict[str, float] = {}
    per_metric: dict[str, list[float]] = {}
    for name in d.val_sets:
        pairs, _ = find_pairs(d.root, name, verify=d.verify)
        if d.max_val_samples:
            pairs = pairs[: d.max_val_samples]
        ds = SegmentationDataset(pairs, size=d.val_size or d.size, augmentations=())
        loader = DataLoader(ds, batch_size=max(1, config.batch_size), num_workers=0)
        evaluator = Evaluator(config.val_metrics)
        for batch in loader:
            images = batch["image"].to(device)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = model(images).logits.float()
            for logit, index in zip(logits, batch["index"].tolist()):
                gt = read_mask(pairs[index].mask)
                logit = F.interpolate(logit[None], size=gt.shape, mode="bilinear", align_corners=True)
                pred = torch.sigmoid(logit)[0, 0].cpu().numpy()  # (H, W) in [0, 1]
                evaluator.step(pred, gt, name=pairs[index].name)
        for metric, value in evaluator.results()["summary"].items():
            results[f"val/{name}/{metric}"] = float(value)
            per_metric.setdefault(metric, []).append(float(value))
    for metric, values in per_metric.items():
        results[f"val/{metric}"] = float(np.mean(values))
    for m, training in modes.items():
        m.train(training)
    return results


@contextlib.contextmanager
def _stop_on_sigterm():
    """Turn SIGTERM (cluster pre-emption, ``kill``) into a flag checked after each step."""
    flag = {"stop": False}

    def handler(signum, frame):
        flag["stop"] = True
        logger.warning("SIGTERM received: finishing this step, saving a checkpoint and stopping")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        previous = None
    try:
        yield flag
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _log_file_handler(out_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(out_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    return handler


# ----------------------------------------------------------------------------------------------
# the loop


def train(config: TrainConfig, *, resume: str | os.PathLike | None = None) -> TrainResult:
    """Train (or fine-tune, or resume) a BiRefNet model as ``config`` says.

    Args:
        config: the run; its ``out_dir`` receives config.yaml, train_log.jsonl, loss_curve.png,
            data_report.json, train.log, checkpoints/ and final/.
        resume: None (new run), "auto" (newest checkpoint in ``out_dir``; a new run if there is
            none), or a checkpoint / run folder.

    Returns:
        A :class:`TrainResult`. Under torchrun every rank returns one; only rank 0 writes files.
    """
    dist_info = init_distributed(config.device)
    device = dist_info.device
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not config.deterministic
        torch.set_float32_matmul_precision("high")  # official precisionHigh

    out_dir = Path(config.out_dir)
    checkpoint_dir = out_dir / "checkpoints"
    resume_from: Path | None = None
    if resume is not None:
        try:
            resume_from = ckpt.find_checkpoint(resume, out_dir)
        except FileNotFoundError:
            if str(resume) != "auto":
                raise
            logger.info("--resume auto: no checkpoint in %s yet, starting a new run", checkpoint_dir)
    state = ckpt.load_training_state(resume_from) if resume_from is not None else None

    file_handler = None
    if dist_info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        ckpt.clean_temporary(checkpoint_dir)
        file_handler = _log_file_handler(out_dir)
        logging.getLogger("birefnet").addHandler(file_handler)
    barrier()
    try:
        return _train(config, dist_info, out_dir, checkpoint_dir, resume_from, state)
    finally:
        if file_handler is not None:
            logging.getLogger("birefnet").removeHandler(file_handler)
            file_handler.close()
        cleanup()


def _train(
    config: TrainConfig,
    dist_info: DistInfo,
    out_dir: Path,
    checkpoint_dir: Path,
    resume_from: Path | None,
    state: dict[str, Any] | None,
) -> TrainResult:
    from birefnet.losses import BiRefNetLoss, finetune_weights, task_weights

    device = dist_info.device
    world, rank = dist_info.world_size, dist_info.rank
    _seed_everything(config.seed + rank)  # official: seed + device index

    if config.val_every_epochs and config.data.val_sets:
        from birefnet.metrics import parse_metrics

        parse_metrics(config.val_metrics)  # fail now, not after the first epoch
    # ---- data
    dataset, _ = _build_data(config, dist_info, out_dir)
    sampler = GlobalBatchSampler(
        len(dataset),
        config.batch_size,
        world_size=world,
        rank=rank,
        grad_accum_steps=config.grad_accum_steps,
        seed=config.seed,
    )
    loader = _loader(dataset, sampler, config.data.num_workers, device.type == "cuda", config.seed)
    steps_per_epoch = sampler.steps_per_epoch
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)

    # ---- model
    model, origin = build_model(config, resume_from)
    model_config: BiRefNetConfig = model.config
    config = config.replace(model=model_config)  # the resolved architecture goes into config.yaml
    if model_config.norm == "bn" and config.batch_size == 1 and not (config.sync_batchnorm and world > 1):
        raise ValueError(
            "the model has BatchNorm (model.norm='bn') but batch_size is 1: batch statistics of one "
            "sample are degenerate (the official code removes BatchNorm when batch_size is 1). Use "
            "batch_size >= 2, model.norm=none, or sync_batchnorm under torchrun."
        )
    if config.sync_batchnorm and world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    if config.freeze_backbone:
        # A fixed feature extractor: no gradients, and eval mode so that BatchNorm statistics
        # (VGG-BN, ResNet) and stochastic depth do not change it either.
        for p in model.bb.parameters():
            p.requires_grad_(False)
        model.bb.eval()
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("model %s: %.2fM parameters (%.2fM trained); %s", model_config.backbone, n_params / 1e6,
                n_train / 1e6, origin)  # fmt: skip
    train_model: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=config.find_unused_parameters,
        )
    if config.compile:
        train_model = torch.compile(train_model)

    # ---- loss, optimizer, schedule, precision
    lc = config.loss
    base_weights = dict(lc.weights) if lc.weights is not None else task_weights(lc.task)
    criterion = BiRefNetLoss(
        base_weights, gradient_weight=lc.gradient_weight, classification_weight=lc.classification_weight
    )
    finetune_n = lc.finetune_last_epochs
    if finetune_n is None:
        from birefnet.losses import FINETUNE_LAST_EPOCHS

        finetune_n = next((v for k, v in FINETUNE_LAST_EPOCHS.items() if k.lower() == lc.task.lower()), 0)
    if finetune_n and abs(finetune_n) >= config.epochs:
        logger.warning(
            "loss.finetune_last_epochs=%d >= epochs=%d: every epoch uses the fine-tuning loss weights "
            "(e.g. BCE off); set loss.finetune_last_epochs=0 to disable",
            abs(finetune_n),
            config.epochs,
        )
    lr = config.optim.lr if config.optim.lr is not None else default_lr(lc.task, config.batch_size)
    optimizer = build_optimizer(model, config.optim, lr)
    scheduler = build_scheduler(optimizer, config.optim, steps_per_epoch, total_steps)
    amp_dtype = _resolve_precision(config.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    trainable = [p for p in model.parameters() if p.requires_grad]
    use_labels = model_config.auxiliary_classification  # DIS class labels feed the class head only

    # ---- resume
    global_step, start_epoch, start_step, elapsed_before = 0, 0, 0, 0.0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        global_step = int(state["step"])
        start_epoch, start_step = int(state["epoch"]), int(state["step_in_epoch"])
        elapsed_before = float(state.get("elapsed", 0.0))
        old_g, new_g = int(state["global_batch_size"]), sampler.global_batch_size
        if old_g != new_g or int(state["num_samples"]) != len(dataset):
            samples_done = start_step * old_g
            start_step = min(samples_done // new_g, steps_per_epoch)
            logger.warning(
                "resuming with a different global batch (%d -> %d) or dataset size (%d -> %d): continuing "
                "at sample %d of epoch %d; the run will not be identical to an uninterrupted one",
                old_g, new_g, int(state["num_samples"]), len(dataset), samples_done, start_epoch + 1,
            )  # fmt: skip
        if start_step >= steps_per_epoch:
            start_epoch, start_step = start_epoch + 1, 0
        rng_states = state["rng"]
        if len(rng_states) == world:
            ckpt.restore_rng_state(rng_states[rank])
        else:
            ckpt.restore_rng_state(rng_states[rank % len(rng_states)])
            if rank == 0:
                logger.warning(
                    "resuming on %d processes from a checkpoint of %d: data order and augmentations continue "
                    "exactly (same global batch), but dropout / drop-path random streams differ from an "
                    "uninterrupted run",
                    world,
                    len(rng_states),
                )
        logger.info("resumed from %s at epoch %d, step %d", resume_from, start_epoch + 1, global_step)

    log = None
    if dist_info.is_main:
        (out_dir / "config.yaml").write_text(config.to_yaml())
        log = StepLog(out_dir / "train_log.jsonl", resume_step=global_step if state is not None else None)
        log.write({"event": "start", "step": global_step, "resumed_from": str(resume_from or ""),
                   "world_size": world, "global_batch_size": sampler.global_batch_size,
                   "steps_per_epoch": steps_per_epoch, "lr": lr, "device": str(device)})  # fmt: skip

    config_dict = config.to_dict()
    t_start = time.perf_counter()
    last_checkpoint: Path | None = resume_from
    validation: dict[str, float] = {}

    def save(epoch: int, step_in_epoch: int) -> None:
        nonlocal last_checkpoint
        rng_all = all_gather_objects(ckpt.capture_rng_state())  # collective: every rank calls it
        if dist_info.is_main:
            training_state = {
                "step": global_step,
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "steps_per_epoch": steps_per_epoch,
                "global_batch_size": sampler.global_batch_size,
                "world_size": world,
                "num_samples": len(dataset),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "rng": rng_all,
                "config": config_dict,
                "elapsed": elapsed_before + time.perf_counter() - t_start,
                "validation": validation,
            }
            last_checkpoint = ckpt.save_checkpoint(
                checkpoint_dir,
                global_step,
                model,
                training_state,
                extra_files={"train_config.yaml": config.to_yaml()},
            )
            ckpt.prune_checkpoints(checkpoint_dir, config.keep_last)
            if config.loss_curve:
                plot_loss_curve(out_dir / "train_log.jsonl", out_dir / "loss_curve.png", title=out_dir.name)
            logger.info("checkpoint %s", last_checkpoint)
        barrier()

    stopped = ""
    epochs_completed = start_epoch
    periodic_at_epoch_end = False
    if start_epoch >= config.epochs:
        logger.info("the checkpoint already completed all %d epochs; nothing to train", config.epochs)
    show_progress = dist_info.is_main and config.progress
    with _stop_on_sigterm() as sigterm:
        for epoch in range(start_epoch, config.epochs):
            if config.max_steps is not None and global_step >= config.max_steps:
                stopped = "max_steps"
                break
            first = start_step if epoch == start_epoch else 0
            sampler.set_epoch(epoch, first)
            criterion.weights = finetune_weights(
                lc.task,
                epoch + 1,
                config.epochs,
                finetune_n,
                base_weights=base_weights,
                mode=lc.finetune_mode,
            )
            bar = None
            if show_progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{config.epochs}",
                           dynamic_ncols=True, disable=None, leave=False)  # fmt: skip
            batches = iter(loader)
            for step_in_epoch in range(first, steps_per_epoch):
                t0 = time.perf_counter()
                size = (
                    dynamic_batch_size(config.seed, epoch, step_in_epoch, config.data.dynamic_size)
                    if config.data.dynamic_size
                    else None
                )
                sums: dict[str, torch.Tensor] = {}  # summed on the device: one sync per step, not per term
                for micro in range(config.grad_accum_steps):
                    batch = next(batches)
                    images = batch["image"].to(device, non_blocking=True)
                    masks = batch["mask"].to(device, non_blocking=True)
                    labels = batch["class_label"].to(device, non_blocking=True)
                    if size is not None:
                        images, masks = resize_batch(images, masks, size)
                    if config.channels_last:
                        images = images.contiguous(memory_format=torch.channels_last)
                    sync = (
                        train_model.no_sync()
                        if world > 1
                        and micro < config.grad_accum_steps - 1
                        and hasattr(train_model, "no_sync")
                        else contextlib.nullcontext()
                    )
                    with sync:
                        with torch.autocast(
                            device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
                        ):
                            out = train_model(images)
                        total, parts = criterion(out, masks, labels if use_labels else None)
                        scaler.scale(total / config.grad_accum_steps).backward()
                    for name, value in (("loss", total), *((f"loss/{k}", v) for k, v in parts.items())):
                        value = value.detach().float()
                        sums[name] = sums[name] + value if name in sums else value
                grad_norm = None
                if config.optim.grad_clip is not None:
                    scaler.unscale_(optimizer)
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, config.optim.grad_clip))
                step_lr = optimizer.param_groups[0]["lr"]  # the rate this step used (logged below)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                global_step += 1

                # one collective per step: mean loss parts over ranks + "should we stop" flag
                minutes = (time.perf_counter() - t_start) / 60
                want_stop = sigterm["stop"] or (
                    config.max_minutes is not None and minutes >= config.max_minutes
                )
                keys = sorted(sums)
                flag = torch.tensor(float(want_stop), dtype=torch.float32, device=device)
                packed = torch.stack([sums[k] / config.grad_accum_steps for k in keys] + [flag])
                packed = all_reduce_mean(packed).cpu().tolist()
                values = dict(zip(keys, packed[:-1]))
                stop_now = packed[-1] > 0
                dt = time.perf_counter() - t0
                if not math.isfinite(values["loss"]):
                    raise FloatingPointError(
                        f"the loss is {values['loss']} at step {global_step} (epoch {epoch + 1}); lower optim.lr, "
                        "enable optim.grad_clip, or use precision=fp32/bf16 instead of fp16"
                    )
                if log is not None:
                    record = {"step": global_step, "epoch": epoch + 1, "lr": step_lr,
                              **values, "images_per_s": sampler.global_batch_size / dt, "step_time": dt,
                              "time": elapsed_before + time.perf_counter() - t_start}  # fmt: skip
                    if grad_norm is not None:
                        record["grad_norm"] = grad_norm
                    if size is not None:
                        record["size"] = list(size)
                    log.write(record)
                if bar is not None:
                    bar.update(1)
                    post = {k.split("/")[-1]: f"{v:.3g}" for k, v in values.items()}
                    post["img/s"] = f"{sampler.global_batch_size / dt:.1f}"
                    bar.set_postfix(post, refresh=False)

                epoch_done = step_in_epoch + 1 == steps_per_epoch
                if config.max_steps is not None and global_step >= config.max_steps:
                    stopped = "max_steps"
                elif stop_now:
                    stopped = "signal" if sigterm["stop"] else "max_minutes"
                periodic = config.checkpoint_every_steps and global_step % config.checkpoint_every_steps == 0
                periodic_at_epoch_end = bool(periodic and epoch_done)
                if stopped or (periodic and not epoch_done):
                    save(epoch, step_in_epoch + 1)
                if stopped:
                    break
            if bar is not None:
                bar.close()
            if stopped:
                break
            epochs_completed = epoch + 1
            if (
                config.val_every_epochs
                and config.data.val_sets
                and epochs_completed % config.val_every_epochs == 0
            ):
                if dist_info.is_main:
                    validation = validate(model, config, device, amp_dtype)
                    assert log is not None
                    log.write(
                        {
                            "event": "validation",
                            "step": global_step,
                            "epoch": epochs_completed,
                            **validation,
                            "time": elapsed_before + time.perf_counter() - t_start,
                        }
                    )
                    logger.info("epoch %d validation: %s", epochs_completed,
                                ", ".join(f"{k}={v:.4f}" for k, v in validation.items() if k.count("/") == 1))  # fmt: skip
                barrier()
            if (
                epochs_completed % config.checkpoint_every_epochs == 0
                or epochs_completed == config.epochs
                or periodic_at_epoch_end
            ):
                save(epoch, steps_per_epoch)
            start_step = 0

    final_dir = None
    if dist_info.is_main:
        if not stopped:
            from birefnet.weights import save_pretrained

            final_dir = save_pretrained(model, out_dir / "final", metadata={"training_step": global_step})
        assert log is not None
        log.write({"event": "end", "step": global_step, "stopped": stopped})
        log.close()
        if config.loss_curve:
            plot_loss_curve(out_dir / "train_log.jsonl", out_dir / "loss_curve.png", title=out_dir.name)
    barrier()
    return TrainResult(
        out_dir=out_dir,
        global_step=global_step,
        epochs_completed=epochs_completed,
        final_dir=final_dir,
        last_checkpoint=last_checkpoint,
        stopped=stopped,
        validation=validation,
    )


def train_from_files(
    config_path: str | os.PathLike | None, overrides: list[str] | None = None, resume: str | None = None
) -> TrainResult:
    """:func:`train` with the config read from YAML + ``--set`` overrides.

    With ``resume`` and no ``config_path``, the resumed run's own config (saved in the checkpoint)
    is the base, so ``birefnet train --resume runs/x`` needs nothing else.
    """
    base = None
    if resume is not None and config_path is None and str(resume) != "auto":
        state = ckpt.load_training_state(ckpt.find_checkpoint(resume))
        base = state["config"]
    return train(load_config(config_path, overrides, base=base), resume=resume)
