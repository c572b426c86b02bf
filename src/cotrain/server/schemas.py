"""Request and response bodies of the REST API. Requests use the original front end's
camelCase names (`modelConfig`, `trainingConfig.batchSize`, ...) and forbid unknown keys, so
a typo is a 422 that names the field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

T = TypeVar("T")


class CamelModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class ModelConfigIn(CamelModel):
    type: Literal["llama2", "llama3", "bert"] = "llama2"
    size: str = Field("debug", description='A size preset: "debug", "tiny", "small", "base", or "7B", "13B", "70B", ...')
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"


class TrainingConfigIn(CamelModel):
    batch_size: int = Field(32, gt=0)
    learning_rate: float = Field(3e-4, gt=0)
    epochs: int | None = Field(1, gt=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    max_steps: int | None = Field(None, gt=0, description="Stop after this many steps (wins over epochs).")
    warmup_steps: int | None = Field(None, ge=0)
    log_interval: int | None = Field(None, gt=0)
    eval_interval: int | None = Field(None, gt=0)


class DistributedConfigIn(CamelModel):
    nodes: int = Field(1, gt=0)
    gpus_per_node: int = Field(1, gt=0)
    strategy: Literal["ddp", "fsdp", "diloco"] = "ddp"
    inner_steps: int | None = Field(None, gt=0, description="DiLoCo: local steps between averaging rounds.")
    initial_peers: list[str] | None = Field(None, description="DiLoCo: DHT peers to join (default: this server's DHT).")


class DataConfigIn(CamelModel):
    dataset: str | None = Field(None, description='A built-in corpus, e.g. "stdlib".')
    data_path: str | None = None
    seq_length: int | None = Field(None, gt=0)
    max_bytes: int | None = Field(None, gt=0)
    vocab_size: int | None = Field(None, ge=256)


class CheckpointConfigIn(CamelModel):
    interval: int | None = Field(None, gt=0)
    keep: int | None = Field(None, gt=0)


class SessionCreate(CamelModel):
    """The original design's `TrainingSessionConfig`, plus optional fields."""

    name: str = Field(..., min_length=1, max_length=200)
    description: str = ""
    model_config_: ModelConfigIn = Field(default_factory=ModelConfigIn, alias="modelConfig")
    training_config: TrainingConfigIn = Field(default_factory=TrainingConfigIn)
    distributed_config: DistributedConfigIn = Field(default_factory=DistributedConfigIn)
    data_config: DataConfigIn | None = None
    checkpoint_config: CheckpointConfigIn | None = None
    priority: int = Field(0, ge=-100, le=100, description="Higher runs first.")
    public: bool = True
    auto_start: bool = Field(True, description="Queue at once; false keeps it a draft until `start`.")
    max_retries: int | None = Field(None, ge=0, le=20)


class SessionUpdate(CamelModel):
    """Fields that can change while a session waits (draft or queued)."""

    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = None
    model_config_: ModelConfigIn | None = Field(None, alias="modelConfig")
    training_config: TrainingConfigIn | None = None
    distributed_config: DistributedConfigIn | None = None
    data_config: DataConfigIn | None = None
    checkpoint_config: CheckpointConfigIn | None = None
    priority: int | None = Field(None, ge=-100, le=100)
    public: bool | None = None


class PriorityChange(CamelModel):
    priority: int = Field(..., ge=-100, le=100)


class OutModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, from_attributes=True)


def iso(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


class SessionOut(OutModel):
    id: str
    name: str
    description: str
    status: str
    priority: int
    public: bool
    owner_id: int | None
    model_type: str
    model_size: str
    strategy: str
    step: int
    total_steps: int | None
    progress: float
    loss: float | None
    participants: int
    metrics: dict[str, Any]
    attempts: int
    max_retries: int
    error: str | None
    worker_id: str | None
    created_at: datetime | None
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    request: dict[str, Any]


class Page(OutModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class MessageOut(OutModel):
    seq: int
    event: str
    time: float
    data: dict[str, Any]


class MetricSeries(OutModel):
    session_id: str
    total_points: int
    downsampled: bool
    points: list[dict[str, Any]]


class CheckpointOut(OutModel):
    step: int
    path: str
    size_bytes: int
    created_at: datetime


class ModelVersionOut(OutModel):
    id: int
    session_id: str
    version: int
    name: str
    path: str
    metrics: dict[str, Any]
    created_at: datetime


class Envelope(BaseModel, Generic[T]):
    """The original design's response shape for the hivemind endpoints."""

    status: Literal["success"] = "success"
    data: T
