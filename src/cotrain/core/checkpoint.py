"""Checkpoints: everything needed to continue a run exactly where it stopped.

    <checkpoints>/<session>/step-00000100/
        model.safetensors        weights (tied aliases stored once)
        optimizer.pt             optimizer state (tensors and numbers only: loaded weights_only)
        strategy.safetensors     strategy state (DiLoCo: global params, outer momentum), if any
        rng.pt                   torch CPU / CUDA generator states
        trainer_state.json       step, epoch, tokens seen, schedule, grad scaler, ... (written last)

A checkpoint is written into a hidden temp folder beside the others, fsynced and renamed into place,
so a crash or a full disk leaves either the whole checkpoint or none, and never costs an earlier one
(issue 18: a full disk is DiskFullError, one sentence naming the folder and its free bytes).
Loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import errno
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

from cotrain.disk_space import DiskFullError, free_bytes, is_disk_full, size_text, surely_too_small

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
    """Write the checkpoint of `step` beside the others and swap it into place. A write that fails
    (a full disk above all) removes its partial folder and leaves every earlier checkpoint as it was;
    a full disk raises DiskFullError, whose text is the one sentence the user reads."""
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{step_dir_name(step)}-{os.getpid()}"
    weights, aliases = _dedupe_shared(model_state)
    strategy = {k: v.detach().contiguous().cpu() for k, v in strategy_state.items()}
    needed = _tensor_bytes(weights) + _tensor_bytes(optimizer_state) + _tensor_bytes(strategy)
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        if surely_too_small(root, needed):  # will not fit: do not even start (and fill the disk for others)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(root))
        tmp.mkdir()
        save_file(weights, str(tmp / "model.safetensors"), metadata={"aliases": json.dumps(aliases)})
        torch.save(optimizer_state, tmp / "optimizer.pt")
        if strategy:
            save_file(strategy, str(tmp / "strategy.safetensors"))
        rng: dict[str, torch.Tensor | list[torch.Tensor]] = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2))
        _fsync_dir_files(tmp)
    except Exception as exc:
        full = is_disk_full(exc, root)  # judged before the partial folder is removed
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise _disk_full(root, step, needed) from exc
        raise
    _swap_into_place(tmp, final)
    prune(root, keep)
    return final


def _disk_full(root: Path, step: int, needed: int) -> DiskFullError:
    free = free_bytes(root)
    last = latest_checkpoint(root)
    kept = (
        f"the last good checkpoint ({last.path.name}) is kept, so free space and retry to resume from it"
        if last else "there is no earlier checkpoint, so free space and retry to start again"
    )
    return DiskFullError(
        f"The disk is full: the checkpoint of step {step} needs about {size_text(needed)} but {root} has "
        f"{size_text(free)} free; {kept}", root, free,
    )


def _tensor_bytes(value: Any) -> int:
    """The bytes of every tensor in `value` (nested dicts and lists): about what its files take."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Rename the written folder to its name. The same step saved again (a resumed run finishing)
    moves the old one aside first and deletes it only once the new one is in place."""
    aside = final.with_name(f".old-{final.name}-{os.getpid()}")
    if final.exists():
        final.rename(aside)
    os.rename(tmp, final)
    _fsync_dir(final.parent)
    shutil.rmtree(aside, ignore_errors=True)


def _fsync_dir_files(folder: Path) -> None:
    for path in folder.iterdir():
        with path.open("rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    """Make the folder's entries (the files in it, a rename into it) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prune(root: Path, keep: int) -> None:
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old.path, ignore_errors=True)
    for stale in (*root.glob(".tmp-step-*"), *root.glob(".old-step-*")):
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
