"""Helpers to run the real engine as processes in the distributed tests."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import PYTHON, engine_env, tiny_config


def write_config(path: Path, session: str, distributed: str, *, max_steps: int = 40, interval: int = 20,
                 extra: str = "") -> Path:
    return tiny_config(path, session, max_steps=max_steps, interval=interval, log_interval=2,
                       extra=f"\n[distributed]\n{distributed}\n{extra}")


def cotrain_train(config: Path, home: Path, *sets: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """`cotrain train FILE`: launches torchrun itself for several processes."""
    cmd = [PYTHON, "-m", "cotrain.cli", "train", str(config)]
    for item in sets:
        cmd += ["--set", item]
    env = engine_env(home, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def events_of(home: Path, session: str) -> list[dict]:
    path = home / "logs" / "training" / session / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def losses(events: list[dict]) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in events if e["type"] == "progress"}


def checkpoint_dir(home: Path, session: str, step: int) -> Path:
    return home / "models" / "checkpoints" / session / f"step-{step:08d}"
