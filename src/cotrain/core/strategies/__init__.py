"""Pick the distributed strategy a config asks for.

`make_strategy(config, device)` is the only entry point the training loop uses. Each strategy
lives in its own module and is imported only when chosen (DiLoCo pulls in hivemind).
"""

from __future__ import annotations

import os
import sys

import torch

from cotrain.config import CotrainConfig
from cotrain.core.strategies.base import OuterStepReport, Strategy

__all__ = ["OuterStepReport", "Strategy", "make_strategy", "launched_by_torchrun"]


def launched_by_torchrun() -> bool:
    """True inside a process started by torchrun (or anything that sets its environment)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def make_strategy(config: CotrainConfig, device: torch.device) -> Strategy:
    """The strategy for `config`: single-process when there is only one process and no DiLoCo."""
    dist = config.distributed
    if dist.strategy == "diloco":
        from cotrain.core.strategies.diloco import DilocoStrategy

        return DilocoStrategy(config, device)
    world_size = int(os.environ.get("WORLD_SIZE", "1")) if launched_by_torchrun() else 1
    if world_size == 1:
        if dist.world_size > 1:
            print(
                f"note: distributed asks for {dist.world_size} processes ({dist.strategy}) but this process was not "
                "started by torchrun, so it trains alone; run `cotrain train FILE` to launch them all",
                file=sys.stderr, flush=True,
            )
        return Strategy(config, device)
    if dist.strategy == "fsdp":
        from cotrain.core.strategies.fsdp import FsdpStrategy

        return FsdpStrategy(config, device)
    from cotrain.core.strategies.ddp import DdpStrategy

    return DdpStrategy(config, device)
