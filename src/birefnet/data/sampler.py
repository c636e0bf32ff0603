"""The training sampler: one global order per epoch, cut into per-rank micro-batches.

Every optimizer step consumes one *global batch* of ``batch_size * world_size * grad_accum_steps``
samples, taken in order from a permutation that depends only on ``(seed, epoch)``. Rank ``r``'s
``m``-th micro-batch of step ``s`` is the slice ``[s*G + m*B*W + r*B, ... + B)`` of it. So:

* which samples form a global batch does not depend on the world size (for a fixed global batch),
  which is what lets a run resume on a different number of processes;
* resuming in the middle of an epoch is a matter of starting at a step offset, not of replaying
  the data loader.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

__all__ = ["GlobalBatchSampler", "epoch_permutation"]


def epoch_permutation(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The sample order of ``epoch`` (a permutation of ``range(num_samples)``)."""
    if not shuffle:
        return np.arange(num_samples)
    return np.random.default_rng([seed, epoch, 0x0DE5]).permutation(num_samples)


class GlobalBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields this rank's micro-batches of ``(epoch, index)`` keys for one epoch (drop_last).

    Args:
        num_samples: dataset length.
        batch_size: micro-batch size per process.
        world_size, rank: data-parallel layout.
        grad_accum_steps: micro-batches per optimizer step.
        seed: seed of the order.
        shuffle: False keeps the dataset order (tests, validation).

    Call :meth:`set_epoch` before each epoch (and with ``start_step`` to resume mid-epoch).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        world_size: int = 1,
        rank: int = 0,
        grad_accum_steps: int = 1,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if batch_size < 1 or grad_accum_steps < 1 or world_size < 1:
            raise ValueError("batch_size, grad_accum_steps and world_size must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.grad_accum_steps = grad_accum_steps
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start_step = 0
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the training set has {num_samples} samples, fewer than one global batch of "
                f"{self.global_batch_size} (batch_size {batch_size} x {world_size} processes x "
                f"{grad_accum_steps} accumulation steps); lower batch_size or grad_accum_steps, or add data"
            )

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size * self.grad_accum_steps

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch (the incomplete last global batch is dropped)."""
        return self.num_samples // self.global_batch_size

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch's order and the optimizer step to start from (0 = the beginning)."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} outside 0..{self.steps_per_epoch}")
        self.epoch = epoch
        self.start_step = start_step

    def step_indices(self, step: int, micro: int) -> list[int]:
        """Dataset indices of this rank's micro-batch ``micro`` of optimizer step ``step``."""
        order = epoch_permutation(self.num_samples, self.seed, self.epoch, self.shuffle)
        start = step * self.global_batch_size + (micro * self.world_size + self.rank) * self.batch_size
        return [int(i) for i in order[start : start + self.batch_size]]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = epoch_permutation(self.num_samples, self.seed, self.epoch, self.shuffle)
        g, b = self.global_batch_size, self.batch_size
        for step in range(self.start_step, self.steps_per_epoch):
            for micro in range(self.grad_accum_steps):
                start = step * g + (micro * self.world_size + self.rank) * b
                yield [(self.epoch, int(i)) for i in order[start : start + b]]

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.grad_accum_steps
