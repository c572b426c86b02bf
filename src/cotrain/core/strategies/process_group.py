"""The torch.distributed process group that DDP and FSDP share (torchrun's environment)."""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from cotrain.core.strategies.base import Strategy
from cotrain.core.system_metrics import merge_nodes


def pick_backend(wanted: str, device: torch.device) -> str:
    if wanted != "auto":
        return wanted
    return "nccl" if device.type == "cuda" else "gloo"


class ProcessGroupStrategy(Strategy):
    """Common part of DDP and FSDP: one process per device, ranks from torchrun's environment."""

    def __init__(self, config, device: torch.device):
        super().__init__(config, device)
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self._bytes = [0, 0]

    def setup(self) -> None:
        if dist.is_initialized():
            return
        backend = pick_backend(self.config.distributed.backend, self.device)
        if backend == "nccl" and self.device.type != "cuda":
            raise RuntimeError('distributed.backend = "nccl" needs CUDA GPUs; use "gloo" (or "auto") on CPU')
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=10))

    def shutdown(self) -> None:
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()

    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def any_process(self, flag: bool) -> bool:
        """True on every process when `flag` is True on any of them. The loop should stop on
        `strategy.any_process(stop.requested)`: torchrun signals every worker, but not all of
        them see the flag at the same step, and a rank that stops alone leaves the others
        waiting in a collective."""
        tensor = torch.tensor([int(flag)], device=self.collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())

    def data_shard(self) -> tuple[int, int]:
        return self.rank, self.world_size

    def mean_across_processes(self, value: float) -> float:
        tensor = torch.tensor([value], dtype=torch.float64, device=self.collective_device())
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size

    def collective_device(self) -> torch.device:
        """Where collectives take their tensors: the GPU with NCCL, the CPU with gloo."""
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def comm_bytes(self) -> tuple[int, int]:
        return self._bytes[0], self._bytes[1]

    def gather_nodes(self, sample: dict) -> None:
        """One small gather of every rank's sample (a dict of numbers) to rank 0, at the log interval."""
        gathered: list | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(sample, gathered, dst=0)
        if gathered is not None:
            self._nodes = merge_nodes(gathered)

    def _count_allreduce(self, model: nn.Module) -> None:
        """Ring all-reduce of every gradient: each process sends and receives 2·(n-1)/n of it."""
        n = self.world_size
        grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        moved = int(2 * (n - 1) / n * grad_bytes)
        self._bytes[0] += moved
        self._bytes[1] += moved
