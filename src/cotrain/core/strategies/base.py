"""What the training loop needs from a distributed strategy, and the single-process one.

The loop in `cotrain.core.train` is written once against `Strategy`; DDP, FSDP and DiLoCo
differ only in how they set up processes, wrap the model, split the batch, and what happens
after each optimizer step (DiLoCo: the outer step every `inner_steps`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cotrain.config import CotrainConfig
from cotrain.core.batches import BatchSchedule
from cotrain.core.system_metrics import merge_nodes


@dataclass
class OuterStepReport:
    """What a strategy reports after a synchronisation round (DiLoCo's outer step)."""

    outer_step: int
    participants: int
    params_hash: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Strategy:
    """Single process, no communication. Subclasses override what differs."""

    name = "single"

    def __init__(self, config: CotrainConfig, device: torch.device):
        self.config = config
        self.device = device
        self.rank = 0
        self.world_size = 1
        self._nodes: list[dict[str, Any]] = []  # the latest machine samples, merged per node

    # --- processes -------------------------------------------------------------------
    def setup(self) -> None:
        """Join the process group / P2P network. Called before the model is built."""

    def shutdown(self) -> None:
        """Leave cleanly; called on every exit path."""

    def barrier(self) -> None:
        """Wait for every process of this run."""

    def any_process(self, flag: bool) -> bool:
        """True on every process when `flag` is True on any: processes agree to stop together,
        so none is left waiting in a collective."""
        return flag

    @property
    def is_main(self) -> bool:
        """The one process that writes events, checkpoints and the final model."""
        return self.rank == 0

    # --- data --------------------------------------------------------------------------
    def data_shard(self) -> tuple[int, int]:
        """(index, count): this process takes slice `index` of `count` of every step's batch."""
        return 0, 1

    def use_data(
        self, train_samples: Any, val_samples: Any, loss_of: Callable[[nn.Module, torch.Tensor], float]
    ) -> None:
        """The trainer's samples and its loss, for a strategy that scores others' work (a DiLoCo validator)."""

    def use_step_math(self, step_math: Any, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        """The trainer's step (core/inner_step.py `StepMath`), optimizer and grad scaler: a DiLoCo peer keeps their
        state at its commit points and a DiLoCo validator replays other peers' inner steps with the same math."""

    def data_seed(self) -> int:
        """Seed of the sample order. Processes that split one batch share it; independent
        DiLoCo peers should each return their own so they do not train on the same samples."""
        return self.config.train.seed

    def round_batch_indices(self, step: int, schedule: BatchSchedule) -> torch.Tensor | None:
        """The whole batch (sample indices of every process of this run) of 0-based `step`, when the
        strategy chooses it (DiLoCo: the round shard's batch, core/shards.py); None: `schedule`'s.
        The trainer takes this process's slice of it exactly as `schedule` slices its own batches."""
        return None

    # --- model -------------------------------------------------------------------------
    def wrap_model(self, model: nn.Module) -> nn.Module:
        return model

    def unwrap(self, model: nn.Module) -> nn.Module:
        return getattr(model, "module", model)

    def accumulation_context(self, model: nn.Module, is_last_micro_batch: bool) -> contextlib.AbstractContextManager:
        """DDP skips the gradient all-reduce on all but the last micro batch."""
        return contextlib.nullcontext()

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm if max_norm > 0 else float("inf"))

    def after_optimizer_step(self, step: int, model: nn.Module) -> OuterStepReport | None:
        """Called after every inner optimizer step with the 1-based step number."""
        return None

    # --- reporting ---------------------------------------------------------------------
    def mean_across_processes(self, value: float) -> float:
        return value

    def participants(self) -> int:
        return self.world_size

    def peer_events(self) -> list[dict[str, Any]]:
        """`peer` events (a P2P peer joined / left, with its record) since the last call."""
        return []

    def verdict_events(self) -> list[dict[str, Any]]:
        """`verdict` events (a validating DiLoCo peer's judgement of one round each) since the last call."""
        return []

    def comm_bytes(self) -> tuple[int, int]:
        """(bytes sent, bytes received) by this process so far."""
        return 0, 0

    def gather_nodes(self, sample: dict[str, Any]) -> None:
        """Every process, at the log interval (a collective where there are several): this
        process's machine sample (core/system_metrics.py) to the main process, merged per node."""
        self._nodes = merge_nodes([sample])

    def system_nodes(self) -> list[dict[str, Any]]:
        """The progress event's `system` nodes on the main process (empty before the first sample)."""
        return self._nodes

    # --- checkpoints ---------------------------------------------------------------------
    def model_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """A full (unsharded) state dict, valid on the main process."""
        return self.unwrap(model).state_dict()

    def export_model(self, model: nn.Module) -> nn.Module | None:
        """Collective: the plain, unsharded model on the main process (None elsewhere)."""
        return self.unwrap(model) if self.is_main else None

    def optimizer_state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_optimizer_state_dict(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
    ) -> None:
        optimizer.load_state_dict(state)

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Strategy state that a checkpoint must keep (DiLoCo: global params, outer optimizer)."""
        return {}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what `extra_state` returned."""
