"""Training and fine-tuning: typed config, the plain training loop, checkpoints, torchrun support.

Example::

    from birefnet.train import load_config, train
    result = train(load_config("configs/tiny_synthetic.yaml", ["epochs=2"]))
"""

from __future__ import annotations

from birefnet.train.config import (
    ConfigError,
    DataConfig,
    LossConfig,
    OptimConfig,
    TrainConfig,
    load_config,
)
from birefnet.train.loop import TrainResult, build_model, train, train_from_files, validate

__all__ = [
    "ConfigError",
    "DataConfig",
    "LossConfig",
    "OptimConfig",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "load_config",
    "train",
    "train_from_files",
    "validate",
]
