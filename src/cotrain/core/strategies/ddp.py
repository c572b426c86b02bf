"""DistributedDataParallel under torchrun: each process takes its slice of every step's batch,
gradients are all-reduced during backward, rank 0 writes events and checkpoints."""

from __future__ import annotations

import contextlib
from typing import cast

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cotrain.core.strategies.process_group import ProcessGroupStrategy


class DdpStrategy(ProcessGroupStrategy):
    name = "ddp"

    def wrap_model(self, model: nn.Module) -> nn.Module:
        # DDP broadcasts rank 0's parameters at construction: every process starts identical.
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def accumulation_context(self, model: nn.Module, is_last_micro_batch: bool) -> contextlib.AbstractContextManager:
        # `model` is what wrap_model made: a DistributedDataParallel
        return contextlib.nullcontext() if is_last_micro_batch else cast(DistributedDataParallel, model).no_sync()

    def after_optimizer_step(self, step: int, model: nn.Module):
        self._count_allreduce(model)
        return None

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, DistributedDataParallel) else model

    def model_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return self.unwrap(model).state_dict()
