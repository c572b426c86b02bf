"""Fully sharded data parallel (FSDP2, `torch.distributed.fsdp.fully_shard`) under torchrun.

Every transformer block is its own shard unit, then the root (embeddings, head). Checkpoints hold
the full, unsharded model and optimizer state (gathered onto rank 0), so a run can resume on any
number of processes: the loop loads the full weights before `wrap_model` shards them, and
`load_optimizer_state_dict` gives each process its slice of the full optimizer state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, cast

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from cotrain.core.strategies.process_group import ProcessGroupStrategy

GATHER_TO_RANK0 = StateDictOptions(full_state_dict=True, cpu_offload=True)
FULL_ON_EVERY_RANK = StateDictOptions(full_state_dict=True)
BLOCK_LISTS = ("layers", "layer", "h", "blocks")


def transformer_blocks(model: nn.Module) -> Iterator[nn.Module]:
    """The repeated blocks of a transformers model (llama: model.layers, bert: encoder.layer)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in BLOCK_LISTS:
            yield from module


class FsdpStrategy(ProcessGroupStrategy):
    name = "fsdp"

    def wrap_model(self, model: nn.Module) -> nn.Module:
        for block in transformer_blocks(model):
            fully_shard(block)
        fully_shard(model)
        self._param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        return model

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model  # FSDP2 shards in place: the module keeps its class and parameter names

    def accumulation_context(self, model: nn.Module, is_last_micro_batch: bool) -> contextlib.AbstractContextManager:
        return _gradient_sync(model, is_last_micro_batch)

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm if max_norm > 0 else float("inf"))
        return norm.full_tensor() if isinstance(norm, DTensor) else norm

    def after_optimizer_step(self, step: int, model: nn.Module):
        # Estimate: parameters all-gathered for forward and again for backward, gradients
        # reduce-scattered; each moves (n-1)/n of the bytes per process.
        n = self.world_size
        moved = int(3 * (n - 1) / n * self._param_bytes)
        self._bytes[0] += moved
        self._bytes[1] += moved
        return None

    def model_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Collective: every process must call it; the full state dict is on rank 0 only."""
        # full, not sharded: plain tensors (typed as any state dict value)
        return cast(dict[str, torch.Tensor], get_model_state_dict(model, options=GATHER_TO_RANK0))

    def optimizer_state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Collective: the full optimizer state on rank 0 only, in `torch.optim`'s own format
        (parameters numbered in optimizer order), so single-process and DDP runs can resume it."""
        full = get_optimizer_state_dict(model, optimizer, options=GATHER_TO_RANK0)
        return _numbered(full) if full else full

    def load_optimizer_state_dict(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
    ) -> None:
        """`state` is the full optimizer state on every process; each keeps its shard."""
        set_optimizer_state_dict(model, optimizer, _named(state, model, optimizer), options=FULL_ON_EVERY_RANK)

    def export_model(self, model: nn.Module) -> nn.Module | None:
        """Collective: a plain, unsharded copy of the model on rank 0 (None elsewhere)."""
        state = self.model_state_dict(model)
        if not self.is_main:
            return None
        plain = type(model)(model.config) if hasattr(model, "config") else None
        if plain is None:
            raise RuntimeError("FSDP export needs a transformers model (with .config) to rebuild unsharded")
        plain.load_state_dict(state)
        return plain


@contextlib.contextmanager
def _gradient_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """Skip the gradient reduce-scatter on all but the last micro batch."""
    if not isinstance(model, FSDPModule) or sync:
        yield
        return
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def _numbered(state: dict[str, Any]) -> dict[str, Any]:
    """Parameter-name keys → positions in the optimizer's parameter groups."""
    order = [name for group in state["param_groups"] for name in group["params"]]
    index = {name: i for i, name in enumerate(order)}
    return {
        "state": {index[name]: value for name, value in state["state"].items()},
        "param_groups": [{**group, "params": [index[n] for n in group["params"]]} for group in state["param_groups"]],
    }


def _named(state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Positions → the parameter names of this (sharded) model; name-keyed state passes through."""
    if all(isinstance(name, str) for group in state["param_groups"] for name in group["params"]):
        return state
    names_by_param = {id(p): name for name, p in model.named_parameters()}
    order = [names_by_param[id(p)] for group in optimizer.param_groups for p in group["params"]]
    return {
        "state": {order[int(i)]: value for i, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [order[int(i)] for i in group["params"]]} for group in state["param_groups"]
        ],
    }
