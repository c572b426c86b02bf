"""The math of one optimizer step, apart from the training loop that runs it.

The trainer (core/train.py) runs `StepMath.run` on its model for every step; a DiLoCo validator's spot check
(core/spot_check.py) runs the same function on a peer's committed state to replay the peer's inner steps: one
code path, so an honest peer's steps replay to the very same bytes (deterministic CPU kernels).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from cotrain.core.optim import set_lr

Tokens = Callable[[torch.Tensor], torch.Tensor]  # sample indices -> token tensor (TokenSamples.get)
InputsAndTargets = Callable[[torch.Tensor, int, int], tuple[torch.Tensor, torch.Tensor]]  # (tokens, step, micro)
ForwardLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # (loss, logits)


class StepHooks(Protocol):
    """What a step needs from the distributed strategy (core/strategies/base.py `Strategy` has both)."""

    def accumulation_context(self, model: nn.Module, is_last_micro_batch: bool) -> contextlib.AbstractContextManager:
        ...

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        ...


@dataclass
class StepOutcome:
    loss_sum: torch.Tensor  # the micro-batches' mean losses added up, still on the device
    grad_norm: torch.Tensor
    correct: int = 0
    predicted: int = 0


@dataclass(frozen=True)
class StepMath:
    """How one optimizer step is computed: learning rate of the step, `accumulation` micro-batches of
    `micro_batch` samples forward and backward (scaled by `scaler`) under the hooks' accumulation context,
    unscale, clip to `grad_clip`, scaler step, zero_grad."""

    samples: Tokens
    inputs_and_targets: InputsAndTargets
    forward_loss: ForwardLoss
    lr_at: Callable[[int], float]  # 0-based global step -> learning rate
    accumulation: int
    micro_batch: int
    grad_clip: float
    device: torch.device

    def run(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
            hooks: StepHooks, step: int, indices: torch.Tensor, measure_accuracy: bool = False) -> StepOutcome:
        """One step of 0-based global `step` on `model` with `optimizer` over this process's `indices`."""
        set_lr(optimizer, self.lr_at(step))
        loss_sum = torch.zeros((), device=self.device)
        correct = predicted = 0
        for micro in range(self.accumulation):
            tokens = self.samples(indices[micro * self.micro_batch : (micro + 1) * self.micro_batch])
            inputs, targets = self.inputs_and_targets(tokens, step, micro)
            inputs = inputs.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            with hooks.accumulation_context(model, micro == self.accumulation - 1):
                loss, logits = self.forward_loss(model, inputs, targets)
                scaler.scale(loss / self.accumulation).backward()
            loss_sum += loss.detach()
            if measure_accuracy:
                c, p = token_accuracy(logits.detach(), targets)
                correct, predicted = correct + c, predicted + p
        scaler.unscale_(optimizer)
        grad_norm = hooks.clip_grad_norm(model, self.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return StepOutcome(loss_sum, grad_norm, correct, predicted)


def token_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    """(correct, counted) over positions whose target is not -100."""
    valid = targets != -100
    correct = (logits.argmax(dim=-1) == targets) & valid
    return int(correct.sum()), int(valid.sum())
