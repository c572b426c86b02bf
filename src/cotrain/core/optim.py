"""The optimizer and the learning-rate schedule.

The schedule is a pure function of the step, so it needs no state of its own to resume: a
checkpoint stores the step and the schedule's settings, and `lr_at` gives the same value again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from cotrain.config import TrainConfig


def build_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on matrices only: biases and norm weights (1-D tensors) are not decayed."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    lr = train.learning_rate
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=train.momentum)
    kernel = adam_kernel(decay + no_decay)
    if train.optimizer == "adam":
        # Adam's weight decay is L2 in the gradient; AdamW's is decoupled (Loshchilov & Hutter).
        return torch.optim.Adam(groups, lr=lr, betas=train.betas, **kernel)
    return torch.optim.AdamW(groups, lr=lr, betas=train.betas, **kernel)


def adam_kernel(params: Sequence[torch.Tensor]) -> dict[str, bool]:
    """`fused=True` (one CUDA kernel for every parameter's update) when all parameters are on
    CUDA; the multi-tensor `foreach` implementation otherwise (CPU, where results then stay the
    same as before fused kernels existed, and parameters split over devices)."""
    if params and all(p.device.type == "cuda" and p.is_floating_point() for p in params):
        return {"fused": True}
    return {"foreach": True}


def lr_at(step: int, train: TrainConfig, total_steps: int) -> float:
    """Learning rate for 0-based `step`: linear warmup, then cosine / linear decay to
    `min_lr_ratio × learning_rate`, or constant."""
    peak = train.learning_rate
    if train.warmup_steps and step < train.warmup_steps:
        return peak * (step + 1) / train.warmup_steps
    if train.schedule == "constant":
        return peak
    decay_steps = max(1, total_steps - train.warmup_steps)
    progress = min(1.0, (step - train.warmup_steps) / decay_steps)
    floor = peak * train.min_lr_ratio
    if train.schedule == "linear":
        return peak - (peak - floor) * progress
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
