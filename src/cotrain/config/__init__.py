"""The config contract (docs/architecture.md, "Config"). Imports nothing of the server, the UI or the chain."""

from cotrain.config.loader import ConfigError, load_config, parse_value, validate_config
from cotrain.config.presets import MODEL_FAMILIES, PRESETS, ModelPreset, get_preset, sizes_of
from cotrain.config.schema import (
    CheckpointConfig,
    CotrainConfig,
    DataConfig,
    DilocoConfig,
    DistributedConfig,
    ModelConfig,
    SessionConfig,
    TrainConfig,
)
from cotrain.config.writer import config_to_toml

__all__ = [
    "MODEL_FAMILIES",
    "PRESETS",
    "CheckpointConfig",
    "ConfigError",
    "CotrainConfig",
    "DataConfig",
    "DilocoConfig",
    "DistributedConfig",
    "ModelConfig",
    "ModelPreset",
    "SessionConfig",
    "TrainConfig",
    "config_to_toml",
    "get_preset",
    "load_config",
    "parse_value",
    "sizes_of",
    "validate_config",
]
