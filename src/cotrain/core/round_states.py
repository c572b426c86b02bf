"""A DiLoCo peer's training state at the commit points of its last rounds, kept so a validator can replay its
inner steps (core/spot_check.py).

At the start of round r (commit point 0) and after every k-th inner step, the peer writes its trainable params
as they are, its inner optimizer's state_dict, its grad scaler's state, the RNG state and the global 0-based step
of the next inner step to `<checkpoint root>/<session>/round-states/<r>/<j>.pt` (written to a temporary file and
renamed, so a reader sees a whole state or none). Only the current and the previous round are kept. The
averager process serves these files as they are (`ExactAverager.download_round_state`); the validator reads
them with `load_round_state`, which accepts tensors and plain values only.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROUND_STATES = "round-states"
FORMAT = 1


def round_states_dir(checkpoint_root: str | Path | None, session_id: str) -> Path:
    """Where a peer of `session_id` keeps its round states, beside its checkpoints (`checkpoint.output_path`,
    default the home's)."""
    from cotrain.paths import Layout

    return Path(checkpoint_root or Layout.from_env().checkpoints) / session_id / ROUND_STATES


class BadRoundState(ValueError):
    """A served round state is not one (the message says why)."""


@dataclass
class RoundState:
    round: int
    index: int  # commit point: inner steps of the round done before this state
    step: int  # global 0-based step of the next inner step
    params: list[torch.Tensor]
    optimizer: dict[str, Any]
    scaler: dict[str, Any] | None
    rng: torch.Tensor


def capture(round_: int, index: int, step: int, params: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler | None) -> RoundState:
    """This process's state now (copies of the params; the optimizer state as its state_dict names it)."""
    return RoundState(
        round=round_, index=index, step=step, params=[p.detach().cpu().clone() for p in params],
        optimizer=optimizer.state_dict(),
        scaler=scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        rng=torch.get_rng_state(),
    )


def save_round_state(directory: Path, state: RoundState) -> Path:
    """Write `state` to `directory/<round>/<index>.pt` atomically; at commit point 0 of a round, remove the rounds
    before the previous one."""
    target = directory / str(state.round) / f"{state.index}.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".pt.partial")
    torch.save({
        "format": FORMAT, "round": state.round, "index": state.index, "step": state.step, "params": state.params,
        "optimizer": state.optimizer, "scaler": state.scaler, "rng": state.rng,
    }, partial)
    os.replace(partial, target)
    if state.index == 0:
        for old in directory.iterdir():
            if old.is_dir() and old.name.isdigit() and int(old.name) < state.round - 1:
                shutil.rmtree(old, ignore_errors=True)
    return target


def load_round_state(data: bytes) -> RoundState:
    """A served state's bytes as a RoundState; BadRoundState if they are not one."""
    try:
        raw = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BadRoundState(f"it is not a readable state ({type(exc).__name__})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise BadRoundState("it is not a round state of this version")
    ints: list[int] = []
    for name in ("round", "index", "step"):
        value = raw.get(name)
        if type(value) is not int or value < 0:
            raise BadRoundState(f"its {name} is not a count")
        ints.append(value)
    params, optimizer, scaler, rng = raw.get("params"), raw.get("optimizer"), raw.get("scaler"), raw.get("rng")
    if not isinstance(params, list) or not all(isinstance(p, torch.Tensor) for p in params):
        raise BadRoundState("its params are not a list of tensors")
    if not isinstance(optimizer, dict) or not (scaler is None or isinstance(scaler, dict)):
        raise BadRoundState("its optimizer or scaler state is not a state dict")
    if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8:
        raise BadRoundState("its RNG state is not one")
    return RoundState(round=ints[0], index=ints[1], step=ints[2], params=params, optimizer=optimizer, scaler=scaler,
                      rng=rng)
