"""Helpers to run the real engine as processes in the distributed tests."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import PYTHON, engine_env, free_port, tiny_config


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


def train_on_two_loopback_nodes(config: Path, home: Path, shared_datasets: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Two `cotrain train` launches of `config` as NODE_RANK 0 and 1 on loopback, each with its own
    COTRAIN_HOME (the second at tmp_path/node1, sharing the prepared datasets), meeting at one c10d
    rendezvous; asserts both exit 0 and returns the two homes."""
    from cotrain.config import load_config
    from cotrain.core.data import prepare_dataset
    from cotrain.paths import Layout

    cfg = load_config(config)
    prepare_dataset(cfg.data, Layout(home).ensure(), seed=cfg.train.seed)  # not twice at once
    second_home = tmp_path / "node1"
    second_home.mkdir()
    (second_home / "datasets").symlink_to(shared_datasets, target_is_directory=True)
    port = str(free_port())
    nodes = []
    for rank, node_home in enumerate((home, second_home)):
        env = engine_env(node_home, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", MASTER_ADDR="127.0.0.1",
                         MASTER_PORT=port, NODE_RANK=str(rank))
        nodes.append(subprocess.Popen([PYTHON, "-m", "cotrain.cli", "train", str(config)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        outputs = [node.communicate(timeout=300) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in outputs]
    return home, second_home
