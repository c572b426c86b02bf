"""Batches as a pure function of the step number.

Every epoch visits the samples in a fresh permutation drawn from (seed, epoch); step `s` takes
the `s`-th block of `batch_size` samples of that order, and process `index` of `count` takes its
slice of the block. The data position in a checkpoint is therefore just the step, a resumed run
sees exactly the batches the uninterrupted one would have, and resuming on a different number
of processes still covers each step's batch exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cotrain.core.data import open_shard


class TokenSamples:
    """Fixed-length samples cut from memory-mapped shards (never across a shard boundary).

    Causal LM samples hold `seq_length + 1` tokens (inputs and shifted targets); masked LM
    samples hold `seq_length`."""

    def __init__(self, shards: list[Path], seq_length: int, causal: bool):
        self.arrays = [open_shard(p) for p in shards]
        self.window = seq_length + 1 if causal else seq_length
        self.stride = seq_length
        counts = [max(0, (len(a) - self.window) // self.stride + 1) for a in self.arrays]
        self.offsets = np.cumsum([0, *counts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def get(self, indices: torch.Tensor) -> torch.Tensor:
        rows = []
        for idx in indices.tolist():
            shard = int(np.searchsorted(self.offsets, idx, side="right") - 1)
            start = (idx - int(self.offsets[shard])) * self.stride
            rows.append(np.asarray(self.arrays[shard][start : start + self.window], dtype=np.int64))
        return torch.from_numpy(np.stack(rows))


@dataclass(frozen=True)
class StepPlan:
    """How many steps a run has and what one step reads."""

    samples: int
    batch_size: int

    @property
    def steps_per_epoch(self) -> int:
        return self.samples // self.batch_size

    def total_steps(self, epochs: int | None, max_steps: int | None) -> int:
        if max_steps is not None:
            return max_steps
        return self.steps_per_epoch * (epochs or 1)


class BatchSchedule:
    """The sample indices of every step, for one process's share of the batch."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, shard_index: int = 0, shard_count: int = 1):
        if num_samples < batch_size:
            raise ValueError(
                f"the training split has {num_samples} samples, fewer than train.batch_size = {batch_size}; "
                "use more data (data.max_bytes / data.data_path) or a smaller batch_size or seq_length"
            )
        self.plan = StepPlan(num_samples, batch_size)
        self.seed = seed
        self.shard_index, self.shard_count = shard_index, shard_count
        self._epoch = -1
        self._order = torch.empty(0, dtype=torch.long)

    def epoch_of(self, step: int) -> int:
        return step // self.plan.steps_per_epoch

    def indices(self, step: int) -> torch.Tensor:
        """Sample indices this process trains on at 0-based `step`."""
        epoch = self.epoch_of(step)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = torch.randperm(self.plan.samples, generator=gen)
            self._epoch = epoch
        within = step % self.plan.steps_per_epoch
        return self.process_slice(self._order[within * self.plan.batch_size : (within + 1) * self.plan.batch_size])

    def process_slice(self, batch: torch.Tensor) -> torch.Tensor:
        """This process's part of a whole step's batch of `batch_size` indices."""
        if len(batch) != self.plan.batch_size:
            raise ValueError(f"a step's batch holds {self.plan.batch_size} samples, got {len(batch)}")
        per_process = self.plan.batch_size // self.shard_count
        return batch[self.shard_index * per_process : (self.shard_index + 1) * per_process]


def mask_tokens(
    tokens: torch.Tensor, *, mask_id: int, vocab_size: int, probability: float, generator: torch.Generator,
    special_ids: tuple[int, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: pick `probability` of the positions; of those 80% become the mask token, 10% a
    random token, 10% stay. Returns (inputs, labels) with labels -100 where nothing is predicted."""
    labels = tokens.clone()
    chosen = torch.rand(tokens.shape, generator=generator) < probability
    for special in special_ids:
        chosen &= tokens != special
    labels[~chosen] = -100
    inputs = tokens.clone()
    replace = chosen & (torch.rand(tokens.shape, generator=generator) < 0.8)
    inputs[replace] = mask_id
    randomize = chosen & ~replace & (torch.rand(tokens.shape, generator=generator) < 0.5)
    inputs[randomize] = torch.randint(vocab_size, tokens.shape, generator=generator)[randomize]
    return inputs, labels
