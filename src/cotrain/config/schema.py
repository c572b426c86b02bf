"""The TOML config of DESIGN.md §1: the one contract between the UI, the server and the core.

Every section forbids unknown keys, so a typo is an error that names the key instead of a
setting that silently does nothing. Cross-field rules live in `CotrainConfig`'s validator.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

from cotrain.config.presets import PRESETS, sizes_of

SESSION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

Precision = Literal["fp32", "fp16", "bf16"]
Optimizer = Literal["adam", "adamw", "sgd"]
Schedule = Literal["cosine", "linear", "constant"]
Strategy = Literal["ddp", "fsdp", "diloco"]
Compression = Literal["none", "fp16", "int8"]
Resume = Literal["latest", "none"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SessionConfig(Section):
    id: str | None = Field(
        None,
        pattern=SESSION_ID_PATTERN,
        description="Names the run's event stream, checkpoints and final model; default: the config file's stem.",
    )
    name: str | None = None
    description: str | None = None


class ModelConfig(Section):
    type: Literal["llama2", "llama3", "bert"] = "llama2"
    size: str = "debug"
    precision: Precision = "fp32"
    path: str | None = Field(
        None, description="A local Hugging Face model directory to start from instead of random init."
    )
    dropout: float | None = Field(None, ge=0.0, lt=1.0, description="Override the family's dropout.")


class TrainConfig(Section):
    batch_size: PositiveInt = 32
    micro_batch_size: PositiveInt | None = Field(
        None, description="Samples per forward pass per process; default: batch_size / processes (no accumulation)."
    )
    learning_rate: PositiveFloat = 3e-4
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    epochs: PositiveInt | None = 1
    max_steps: PositiveInt | None = Field(None, description="Stop after this many optimizer steps (wins over epochs).")
    optimizer: Optimizer = "adamw"
    schedule: Schedule = "cosine"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.1, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.95)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum.")
    grad_clip: float = Field(1.0, ge=0.0, description="Max global grad norm; 0 disables clipping.")
    seed: int = 1337
    deterministic: bool = Field(False, description="Bit-identical results on CPU (slower kernels on GPU).")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_interval: PositiveInt = 10
    eval_interval: PositiveInt = 200
    eval_batches: PositiveInt = 8


class DilocoConfig(Section):
    inner_steps: PositiveInt = 100
    outer_lr: PositiveFloat = 0.7
    outer_momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = True
    compression: Compression = "none"
    initial_peers: list[str] = Field(default_factory=list)
    host_maddrs: list[str] = Field(default_factory=lambda: ["/ip4/0.0.0.0/tcp/0"])
    announce_maddrs: list[str] = Field(default_factory=list)
    min_peers: PositiveInt = 1
    matchmaking_time: PositiveFloat = 5.0
    averaging_timeout: PositiveFloat = 120.0
    progress_interval: PositiveFloat = 3.0


class DistributedConfig(Section):
    nodes: PositiveInt = 1
    gpus_per_node: PositiveInt = 1
    strategy: Strategy = "ddp"
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    diloco: DilocoConfig = Field(default_factory=DilocoConfig)

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def data_parallel_size(self) -> int:
        """Processes that split one optimizer step's batch (DiLoCo: the processes of one peer)."""
        return self.gpus_per_node if self.strategy == "diloco" else self.world_size


class DataConfig(Section):
    seq_length: PositiveInt = 256
    data_path: str | None = Field(
        None, description="A .txt/.jsonl/.parquet file, a folder of them, or a folder of prepared shards."
    )
    dataset: str | None = Field(
        None, description='A built-in corpus instead of data_path: "stdlib" (the Python standard library sources).'
    )
    max_bytes: PositiveInt | None = Field(None, description="Use at most this many bytes of raw text.")
    tokenizer: str = Field(
        "train", description='"train" (BPE trained on the corpus) or a local tokenizer.json / HF directory.'
    )
    vocab_size: int = Field(4096, ge=256, le=262144, description="Vocabulary of a trained tokenizer.")
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    num_proc: PositiveInt | None = Field(None, description="Tokenizer processes; default: the CPU count.")
    mlm_probability: float = Field(0.15, gt=0.0, lt=1.0, description="Masked-token fraction for bert.")


class CheckpointConfig(Section):
    interval: PositiveInt = 1000
    output_path: str | None = Field(
        None, description="Root of checkpoints (a folder per session inside); default COTRAIN_HOME/models/checkpoints."
    )
    keep: PositiveInt = 3
    resume: Resume | str = Field("latest", description='"latest", "none", or a checkpoint directory.')


class CotrainConfig(Section):
    session: SessionConfig = Field(default_factory=SessionConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    @model_validator(mode="after")
    def _cross_field_rules(self) -> CotrainConfig:
        problems: list[tuple[str, object, str]] = []
        model, train, dist, data = self.model, self.train, self.distributed, self.data

        if model.path is None and model.size not in PRESETS[model.type]:
            problems.append(("model.size", model.size, f"one of {_quoted(sizes_of(model.type))} for {model.type}"))

        if train.epochs is None and train.max_steps is None:
            problems.append(("train.epochs", None, "a positive number of epochs, or set train.max_steps"))

        per_step_processes = dist.data_parallel_size
        micro = train.micro_batch_size
        if micro is None:
            if train.batch_size % per_step_processes:
                problems.append(
                    ("train.batch_size", train.batch_size,
                     f"a multiple of the {per_step_processes} processes that share each step "
                     f"({dist.strategy}: {_processes_phrase(dist)})"),
                )
        elif train.batch_size % (micro * per_step_processes):
            problems.append(
                ("train.batch_size", train.batch_size,
                 f"a multiple of micro_batch_size × processes = {micro} × {per_step_processes}"),
            )

        if train.warmup_steps and train.max_steps and train.warmup_steps > train.max_steps:
            problems.append(("train.warmup_steps", train.warmup_steps, f"at most train.max_steps ({train.max_steps})"))

        if dist.strategy == "diloco" and self.checkpoint.interval % dist.diloco.inner_steps:
            problems.append(
                ("checkpoint.interval", self.checkpoint.interval,
                 f"a multiple of distributed.diloco.inner_steps ({dist.diloco.inner_steps}) so checkpoints "
                 "fall on outer steps"),
            )
        if dist.strategy == "fsdp" and model.precision == "fp16":
            problems.append(("model.precision", "fp16", "bf16 or fp32 with fsdp (fp16 needs a sharded grad scaler)"))

        if data.data_path is not None and data.dataset is not None:
            problems.append(("data.dataset", data.dataset, "unset when data.data_path is set (choose one source)"))
        if data.dataset is not None and data.dataset != "stdlib":
            problems.append(("data.dataset", data.dataset, '"stdlib", or point data.data_path at local files'))

        if problems:
            raise CrossFieldError(problems)
        return self

    @property
    def uses_masked_lm(self) -> bool:
        return self.model.type == "bert"


class CrossFieldError(ValueError):
    """Several (key path, bad value, what is allowed) problems found after the fields parsed."""

    def __init__(self, problems: list[tuple[str, object, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{path} = {value!r}: must be {allowed}" for path, value, allowed in problems))


def _quoted(values: tuple[str, ...]) -> str:
    return ", ".join(f'"{v}"' for v in values)


def _processes_phrase(dist: DistributedConfig) -> str:
    if dist.strategy == "diloco":
        return f"gpus_per_node = {dist.gpus_per_node} per peer"
    return f"nodes × gpus_per_node = {dist.nodes} × {dist.gpus_per_node}"


def default_session_id(stem: str) -> str:
    """A session id derived from a file stem, made safe for paths."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "session"
    return cleaned[:128]
