"""The storage layout (docs/architecture.md, "Storage layout"): everything CoTrain writes lives under one root.

    COTRAIN_HOME/
      models/{checkpoints,final,temp}   datasets/{raw,processed,splits}
      configs/{generated,templates}     logs/{training,system}

The root is `$COTRAIN_HOME`, or `~/.cotrain` when it is unset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

LAYOUT = (
    "models/checkpoints",
    "models/final",
    "models/temp",
    "datasets/raw",
    "datasets/processed",
    "datasets/splits",
    "configs/generated",
    "configs/templates",
    "logs/training",
    "logs/system",
)


def cotrain_home() -> Path:
    return Path(os.environ.get("COTRAIN_HOME") or Path.home() / ".cotrain").expanduser().resolve()


@dataclass(frozen=True)
class Layout:
    root: Path

    @classmethod
    def from_env(cls) -> Layout:
        return cls(cotrain_home())

    def ensure(self) -> Layout:
        for sub in LAYOUT:
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        return self

    @property
    def checkpoints(self) -> Path:
        return self.root / "models" / "checkpoints"

    @property
    def final_models(self) -> Path:
        return self.root / "models" / "final"

    @property
    def temp_models(self) -> Path:
        return self.root / "models" / "temp"

    @property
    def raw_data(self) -> Path:
        return self.root / "datasets" / "raw"

    @property
    def processed_data(self) -> Path:
        return self.root / "datasets" / "processed"

    @property
    def splits(self) -> Path:
        return self.root / "datasets" / "splits"

    @property
    def generated_configs(self) -> Path:
        return self.root / "configs" / "generated"

    @property
    def templates(self) -> Path:
        return self.root / "configs" / "templates"

    @property
    def training_logs(self) -> Path:
        return self.root / "logs" / "training"

    @property
    def system_logs(self) -> Path:
        return self.root / "logs" / "system"

    def session_logs(self, session_id: str) -> Path:
        """`logs/training/<session>/`: events.jsonl, status.json, stdout/stderr of the run."""
        return self.training_logs / session_id
