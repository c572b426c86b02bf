"""Checkpoints: everything needed to continue a run exactly where it stopped.

    <checkpoints>/<session>/step-00000100/
        model.safetensors        weights (tied aliases stored once)
        optimizer.pt             optimizer state (tensors and numbers only: loaded weights_only)
        strategy.safetensors     strategy state (DiLoCo: global params, outer momentum), if any
        rng.pt                   torch CPU / CUDA generator states
        trainer_state.json       step, epoch, tokens seen, schedule, grad scaler, ... (written last)

A checkpoint is written into a hidden temp folder and renamed into place, so a crash leaves
either the whole checkpoint or none. Loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

STEP_DIR = re.compile(r"^step-(\d{8})$")
TRAINER_STATE = "trainer_state.json"


@dataclass
class Checkpoint:
    path: Path
    step: int
    trainer_state: dict[str, Any]


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(root: Path) -> list[Checkpoint]:
    """Complete checkpoints under `root`, oldest first."""
    found = []
    if root.is_dir():
        for child in root.iterdir():
            match = STEP_DIR.match(child.name)
            state_file = child / TRAINER_STATE
            if match and state_file.exists():
                try:
                    state = json.loads(state_file.read_text())
                except json.JSONDecodeError:
                    continue
                found.append(Checkpoint(child, int(match.group(1)), state))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(root: Path) -> Checkpoint | None:
    checkpoints = list_checkpoints(root)
    return checkpoints[-1] if checkpoints else None


def load_checkpoint_dir(path: Path) -> Checkpoint:
    state_file = path / TRAINER_STATE
    match = STEP_DIR.match(path.name)
    if not state_file.exists() or not match:
        raise FileNotFoundError(f"{path} is not a complete CoTrain checkpoint (no {TRAINER_STATE})")
    return Checkpoint(path, int(match.group(1)), json.loads(state_file.read_text()))


def _dedupe_shared(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses tensors that share memory (tied embeddings): keep one, note the alias."""
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    unique: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name, tensor in state.items():
        ident = (tensor.untyped_storage().data_ptr(), int(tensor.storage_offset()), tuple(tensor.shape))
        if ident in seen:
            aliases[name] = seen[ident]
            continue
        seen[ident] = name
        unique[name] = tensor.detach().contiguous().cpu()
    return unique, aliases


def save_checkpoint(
    root: Path,
    step: int,
    *,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    strategy_state: dict[str, torch.Tensor],
    trainer_state: dict[str, Any],
    keep: int,
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{step_dir_name(step)}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights, aliases = _dedupe_shared(model_state)
    save_file(weights, str(tmp / "model.safetensors"), metadata={"aliases": json.dumps(aliases)})
    torch.save(optimizer_state, tmp / "optimizer.pt")
    if strategy_state:
        tensors = {k: v.detach().contiguous().cpu() for k, v in strategy_state.items()}
        save_file(tensors, str(tmp / "strategy.safetensors"))
    rng: dict[str, torch.Tensor | list[torch.Tensor]] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / "rng.pt")
    (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2))
    _fsync_dir_files(tmp)
    if final.exists():  # the same step saved again (e.g. a resumed run finishing): replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    prune(root, keep)
    return final


def _fsync_dir_files(folder: Path) -> None:
    for path in folder.iterdir():
        with path.open("rb") as fh:
            os.fsync(fh.fileno())


def prune(root: Path, keep: int) -> None:
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old.path, ignore_errors=True)
    for stale in root.glob(".tmp-step-*"):
        if f"-{os.getpid()}" not in stale.name:
            shutil.rmtree(stale, ignore_errors=True)  # left by a crashed run


def load_model_weights(path: Path, model: nn.Module) -> None:
    from safetensors import safe_open

    weights = load_file(str(path / "model.safetensors"))
    with safe_open(str(path / "model.safetensors"), framework="pt") as fh:
        aliases = json.loads((fh.metadata() or {}).get("aliases", "{}"))
    for alias, source in aliases.items():
        weights[alias] = weights[source]
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "it was written for another model config: set checkpoint.resume = \"none\" or use a new session id"
        )


def load_optimizer_state(path: Path) -> dict[str, Any]:
    return torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)


def load_strategy_state(path: Path) -> dict[str, torch.Tensor]:
    file = path / "strategy.safetensors"
    return load_file(str(file)) if file.exists() else {}


def restore_rng(path: Path) -> None:
    rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
