"""Training: config files and overrides, schedules, atomic checkpoints, exact resume after SIGKILL,
torchrun (2 gloo processes) against a single process, bad data, frozen backbone, validation."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from birefnet.data import write_synthetic_dataset
from birefnet.train import ConfigError, TrainConfig, load_config, train
from birefnet.train import checkpoint as ckpt
from birefnet.train.config import OptimConfig
from birefnet.train.optim import default_lr, lr_multiplier
from birefnet.train.report import read_log

ROOT = Path(__file__).resolve().parents[1]

# The smallest model that trains end to end: PVTv2-b0 at 64x64 without the multi-scale input and
# the deformable ASPP (6.8M parameters, well under a second per step on one core).
TINY_MODEL = {"backbone": "pvt_v2_b0", "multi_scale_input": "", "decoder_attention": ""}


def tiny_config(data_root: Path, out_dir: Path, **top) -> dict:
    cfg = {
        "out_dir": str(out_dir),
        "model": dict(TINY_MODEL),
        "data": {"root": str(data_root), "train_sets": ["train"], "size": [64, 64], "num_workers": 0},
        "loss": {"finetune_last_epochs": 0},
        "optim": {"lr": 1.0e-3},
        "epochs": 1,
        "batch_size": 2,
        "num_threads": 1,
        "progress": False,
        "loss_curve": False,  # matplotlib costs seconds per run; one test checks the plot
    }
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root / "train", 6, size=(64, 64), seed=0)
    write_synthetic_dataset(root / "val", 2, size=(64, 64), seed=1)
    return root


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "birefnet.cli", "train", *args]


# ----------------------------------------------------------------------------------------------
# config


def test_yaml_and_set_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        "model:\n  backbone: pvt_v2_b0\ndata:\n  train_sets: DIS-TR+DIS-TE1\n  size: [512, 256]\n"
        "optim:\n  lr: 1e-4\n  betas: [0.8, 0.9]\nepochs: 3\n"
    )
    cfg = load_config(path, ["optim.lr=2e-5", "data.dynamic_size=[[256,512],[256,512]]", "model.norm=none"])
    assert cfg.model.backbone == "pvt_v2_b0" and cfg.model.norm == "none"
    assert cfg.model.decoder_attention == "ASPPDeformable"  # untouched fields keep their defaults
    assert cfg.data.train_sets == ("DIS-TR+DIS-TE1",) and cfg.data.size == (512, 256)
    assert cfg.optim.lr == 2e-5 and cfg.optim.betas == (0.8, 0.9) and cfg.epochs == 3
    assert cfg.data.dynamic_size == ((256, 512), (256, 512))
    assert cfg.batch_size == TrainConfig().batch_size
    # the resolved config round-trips through YAML
    assert load_config(None, base=yaml.safe_load(cfg.to_yaml())) == cfg
    assert TrainConfig().model is None  # None = the init checkpoint's architecture or the default


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lrr=1"], "did you mean lr"),
        (["epochs=many"], "expected an integer"),
        (["precision=fp8"], "not one of"),
        (["data.size=[100,100]"], "multiples of 32"),
        (["model.backbone=resnet9"], "unknown backbone"),
        (["optim=3"], "expected a mapping"),
        (["novalue"], "key=value"),
    ],
)
def test_config_errors_name_the_problem(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_cli_print_config(tmp_path: Path) -> None:
    from birefnet.cli import main

    path = tmp_path / "run.yaml"
    path.write_text("epochs: 7\n")
    assert main(["train", "--config", str(path), "--set", "batch_size=2", "--print-config"]) == 0
    assert main(["train", "--config", str(path), "--set", "bogus=1", "--print-config"]) == 1


def test_shipped_configs_load() -> None:
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert isinstance(cfg, TrainConfig), path


def test_learning_rate_schedules() -> None:
    assert default_lr("DIS5K", 8) == pytest.approx(1e-4 * 2**0.5)
    assert default_lr("General", 4) == pytest.approx(1e-5)
    official = OptimConfig(schedule="official", lr_decay_epochs=(2,), lr_decay_rate=0.5)
    # 10 steps per epoch; MultiStepLR after epoch 2 halves the rate for epoch 3 on
    assert [lr_multiplier(official, s, 10, 100) for s in (0, 19, 20, 29)] == [1.0, 1.0, 0.5, 0.5]
    assert lr_multiplier(OptimConfig(), 10**6, 10, 100) == 1.0  # official default: constant
    cosine = OptimConfig(schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_multiplier(cosine, 0, 10, 110) == pytest.approx(0.1)
    assert lr_multiplier(cosine, 10, 10, 110) == pytest.approx(1.0)
    assert lr_multiplier(cosine, 110, 10, 110) == pytest.approx(0.1)


# ----------------------------------------------------------------------------------------------
# checkpoints


def _toy_state() -> tuple[torch.nn.Module, dict]:
    from birefnet.config import BiRefNetConfig

    model = torch.nn.Linear(2, 2)
    model.config = BiRefNetConfig(backbone="pvt_v2_b0")  # save_pretrained records the architecture
    return model, {"step": 1, "rng": [ckpt.capture_rng_state()]}


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch) -> None:
    model, state = _toy_state()
    folder = tmp_path / "checkpoints"
    first = ckpt.save_checkpoint(folder, 1, model, state)
    assert ckpt.find_checkpoint("auto", tmp_path) == first

    real_save = torch.save

    def crash(obj, path, *a, **k):  # the process dies in the middle of writing the state
        Path(path).write_bytes(b"partial")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(folder, 2, model, {**state, "step": 2})
    monkeypatch.setattr(torch, "save", real_save)
    # the previous checkpoint is intact and still the one resumed from; the debris is ignored
    assert ckpt.find_checkpoint("auto", tmp_path) == first
    assert [p.name for p in ckpt.list_checkpoints(folder)] == ["step-00000001"]
    assert ckpt.load_training_state(first)["step"] == 1
    ckpt.clean_temporary(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["latest", "step-00000001"]

    for step in (2, 3, 4):
        ckpt.save_checkpoint(folder, step, model, {**state, "step": step})
    ckpt.prune_checkpoints(folder, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(folder)] == ["step-00000003", "step-00000004"]
    assert ckpt.find_checkpoint(tmp_path) == folder / "step-00000004"
    assert ckpt.find_checkpoint(folder / "step-00000003" / "training_state.pt") == folder / "step-00000003"
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ckpt.find_checkpoint("auto", tmp_path / "elsewhere")


def test_rng_state_round_trip() -> None:
    import random

    import numpy as np

    state = ckpt.capture_rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.restore_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


# ----------------------------------------------------------------------------------------------
# training runs


@pytest.mark.slow  # three training processes: ~20 s on an idle 2-core machine
def test_exact_resume_after_sigkill(data_root: Path, tmp_path: Path) -> None:
    """A run killed with SIGKILL mid-epoch and resumed ends bit-identical to an uninterrupted one (CPU)."""
    cfg = tiny_config(data_root, tmp_path / "unused", epochs=2, checkpoint_every_steps=2, keep_last=10)
    cfg["model"]["dropout"] = 0.5  # dropout on: the RNG state must be restored too
    cfg["loss_curve"] = True
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    # 6 samples, batch 2: 3 steps per epoch; checkpoints at steps 2 (mid-epoch), 3, 4 (mid-epoch), 6
    full = subprocess.Popen(
        _cli("-c", str(path), "--out-dir", str(full_dir)), env=_env(), stderr=subprocess.PIPE
    )
    victim = subprocess.Popen(
        _cli("-c", str(path), "--out-dir", str(killed_dir)), env=_env(), stderr=subprocess.PIPE
    )
    target = killed_dir / "checkpoints" / "step-00000002"
    deadline = time.monotonic() + 300
    while not target.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, (
        f"the run ended before the kill: {victim.stderr.read()[-3000:]}"
    )
    assert not (killed_dir / "final").exists()

    resumed = subprocess.run(
        _cli("-c", str(path), "--out-dir", str(killed_dir), "--resume", "auto"),
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, err = full.communicate(timeout=300)
    assert full.returncode == 0, err[-3000:]

    a, b = _weights(full_dir / "final"), _weights(killed_dir / "final")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"

    log = read_log(killed_dir / "train_log.jsonl")
    starts = [r for r in log if r.get("event") == "start"]
    assert len(starts) == 2 and starts[1]["resumed_from"].endswith(f"step-{starts[1]['step']:08d}")
    assert starts[1]["step"] in (2, 3, 4, 5)  # resumed from a checkpoint in the middle of the run
    steps = [r["step"] for r in log if "loss" in r]
    assert steps == list(range(1, 7))  # the redone steps replaced the lost ones in the log
    full_losses = [r["loss"] for r in read_log(full_dir / "train_log.jsonl") if "loss" in r]
    assert [r["loss"] for r in log if "loss" in r] == full_losses
    state = ckpt.load_training_state(killed_dir / "checkpoints" / "step-00000004")
    assert (state["epoch"], state["step_in_epoch"]) == (1, 1)  # a mid-epoch checkpoint
    assert (killed_dir / "loss_curve.png").stat().st_size > 0


@pytest.mark.slow  # torchrun with 2 processes + 1 single process: ~15 s on an idle 2-core machine
def test_torchrun_two_gloo_processes_match_one_process(data_root: Path, tmp_path: Path) -> None:
    """2 processes x batch 1 (DDP, gloo) == 1 process x batch 1 x 2 accumulation steps.

    Same global batch of 2 and the same per-process loss (the official IoU term is summed over
    the per-process batch). The model has no BatchNorm (norm="none"), no dropout and no drop-path,
    so per-process computations are the same in both runs.
    """
    model = {**TINY_MODEL, "norm": "none", "dropout": 0.0, "drop_path_rate": 0.0}
    cfg = tiny_config(data_root, tmp_path / "unused", model=model, batch_size=1, epochs=1)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "birefnet.cli", "train", "-c", str(path), "--out-dir", str(ddp_dir)]  # fmt: skip
    ddp = subprocess.Popen(torchrun, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    single = subprocess.run(
        _cli("-c", str(path), "--out-dir", str(single_dir), "--set", "grad_accum_steps=2"),
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out, _ = ddp.communicate(timeout=300)
    assert ddp.returncode == 0, out[-3000:]
    assert single.returncode == 0, single.stderr[-3000:]
    log_ddp = read_log(ddp_dir / "train_log.jsonl")
    assert log_ddp[0]["world_size"] == 2 and log_ddp[0]["global_batch_size"] == 2
    a, b = _weights(ddp_dir / "final"), _weights(single_dir / "final")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    losses_ddp = [r["loss"] for r in log_ddp if "loss" in r]
    losses_single = [r["loss"] for r in read_log(single_dir / "train_log.jsonl") if "loss" in r]
    assert losses_ddp == pytest.approx(losses_single, rel=1e-5)
    # only rank 0 wrote files
    assert len(list((ddp_dir / "checkpoints").glob("step-*"))) == 1


def test_bad_data_trains_on_the_good_pairs(tmp_path: Path, one_thread) -> None:
    root = tmp_path / "data"
    write_synthetic_dataset(root / "train", 5, size=(64, 64), seed=4)
    im, gt = root / "train" / "im", root / "train" / "gt"
    files = sorted(gt.glob("*.png"))
    files[0].unlink()  # missing mask
    (im / (files[1].stem + ".jpg")).write_bytes(b"\x00garbage")  # corrupt image
    import cv2

    cv2.imwrite(str(files[2]), cv2.imread(str(files[2]))[:32])  # size mismatch
    cv2.imwrite(str(gt / "stray.png"), cv2.imread(str(files[3])))  # mask without image
    cfg = TrainConfig.from_dict(tiny_config(root, tmp_path / "run"))
    result = train(cfg)
    assert result.global_step == 1 and result.final_dir is not None  # 2 good pairs, batch 2
    report = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert report["counts"] == {
        "missing mask": 1,
        "mask without image": 1,
        "unreadable": 1,
        "size mismatch": 1,
    }
    assert report["datasets"] == {"train": 2}
    with pytest.raises(ValueError, match="strict"):
        train(cfg.replace(data=dataclasses.replace(cfg.data, strict=True)))


def test_backbone_weights_frozen_backbone_clipping_and_validation(
    data_root: Path, tmp_path: Path, one_thread
) -> None:
    from birefnet.models.backbones import build_backbone

    # ImageNet weights in the original PVTv2 release format: a plain state dict with a classifier head
    torch.manual_seed(123)
    release = {**build_backbone("pvt_v2_b0").state_dict(), "head.weight": torch.zeros(1000, 256)}
    torch.save(release, tmp_path / "pvt_v2_b0.pth")
    cfg = TrainConfig.from_dict(
        tiny_config(
            data_root, tmp_path / "run", freeze_backbone=True, optim={"grad_clip": 1.0},
            backbone_weights=str(tmp_path / "pvt_v2_b0.pth"),
            data={"val_sets": ["val"]}, val_every_epochs=1, max_steps=2, checkpoint_every_steps=1,
        )
    )  # fmt: skip
    result = train(cfg)
    assert result.stopped == "max_steps" and result.global_step == 2
    first = _weights(tmp_path / "run" / "checkpoints" / "step-00000001")
    second = _weights(tmp_path / "run" / "checkpoints" / "step-00000002")
    assert all(torch.equal(second[f"bb.{k}"], v) for k, v in release.items() if k != "head.weight")
    assert all(torch.equal(first[k], second[k]) for k in first if k.startswith("bb."))
    assert any(not torch.equal(first[k], second[k]) for k in first if k.startswith("decoder."))
    log = read_log(tmp_path / "run" / "train_log.jsonl")
    assert all("grad_norm" in r for r in log if "loss" in r)
    assert {"loss/bce", "loss/iou", "loss/ssim", "loss/gradient"} <= set(log[1])

    # validation runs on the held-out set with the project's metrics, and training resumes from max_steps
    result = train(cfg.replace(max_steps=None, epochs=1), resume="auto")
    assert result.global_step == 3 and "val/Smeasure" in result.validation
    assert 0.0 <= result.validation["val/val/Smeasure"] <= 1.0
    assert any(r.get("event") == "validation" for r in read_log(tmp_path / "run" / "train_log.jsonl"))
    config_yaml = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config_yaml["model"]["backbone"] == "pvt_v2_b0" and config_yaml["freeze_backbone"] is True


def test_batchnorm_with_batch_size_one_is_refused(data_root: Path, tmp_path: Path, one_thread) -> None:
    cfg = TrainConfig.from_dict(tiny_config(data_root, tmp_path / "run", batch_size=1))
    with pytest.raises(ValueError, match="norm=none"):
        train(cfg)


def test_channels_last_trains_the_same_function(data_root: Path, tmp_path: Path, one_thread) -> None:
    """channels_last only changes memory layout: the same steps give the same losses up to float
    rounding, and the saved weights load as usual (safetensors needs contiguous tensors).

    (Weights are not compared: conv biases that feed a BatchNorm have a zero gradient up to
    rounding, and Adam scales that rounding noise up to lr-sized steps in either layout.)"""
    losses = {}
    for flag in (False, True):
        cfg = TrainConfig.from_dict(tiny_config(data_root, tmp_path / str(flag), channels_last=flag))
        result = train(cfg)
        assert _weights(result.final_dir)
        losses[flag] = [r["loss"] for r in read_log(tmp_path / str(flag) / "train_log.jsonl") if "loss" in r]
    assert len(losses[True]) == len(losses[False]) == 3
    for a, b in zip(losses[True], losses[False]):
        assert abs(a - b) <= 1e-3 * abs(b)
