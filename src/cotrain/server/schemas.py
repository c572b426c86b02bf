"""Request and response bodies of the REST API. Requests use the original front end's
camelCase names (`modelConfig`, `trainingConfig.batchSize`, ...) and forbid unknown keys, so
a typo is a 422 that names the field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.alias_generators import to_camel

from cotrain.config.hf_spec import DATASET_PATTERN

T = TypeVar("T")


BIG = 10**12  # upper bound of counts: far beyond any real run, well inside a 64-bit column
NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL characters


class CamelModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", allow_inf_nan=False, str_max_length=4096,
        strict=True,  # no silent coercion: `"maxRetries": false` is an error, not 0
    )


class ModelConfigIn(CamelModel):
    type: Literal["llama2", "llama3", "bert"] = "llama2"
    size: str = Field("debug", max_length=16,
                      description='A size preset: "debug", "tiny", "small", "base", or "7B", "13B", "70B", ...')
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"


class TrainingConfigIn(CamelModel):
    batch_size: int = Field(32, gt=0, le=10**7)
    learning_rate: float = Field(3e-4, gt=0, le=100)
    epochs: int | None = Field(1, gt=0, le=10**6)
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    max_steps: int | None = Field(None, gt=0, le=BIG,
                                  description="Stop after this many steps (wins over epochs).")
    warmup_steps: int | None = Field(None, ge=0, le=BIG)
    log_interval: int | None = Field(None, gt=0, le=BIG)
    eval_interval: int | None = Field(None, gt=0, le=BIG)


class DistributedConfigIn(CamelModel):
    nodes: int = Field(1, gt=0, le=100_000)
    gpus_per_node: int = Field(1, gt=0, le=1024)
    strategy: Literal["ddp", "fsdp", "diloco"] = "ddp"
    inner_steps: int | None = Field(None, gt=0, le=BIG, description="DiLoCo: local steps between averaging rounds.")
    initial_peers: list[Annotated[str, Field(pattern=NO_NUL)]] | None = Field(
        None, max_length=100, description="DiLoCo: DHT peers to join (default: this server's DHT).")
    compression: Literal["none", "fp16", "int8", "int4", "topk"] | None = Field(
        None, description="DiLoCo: compression of the averaged pseudo-gradient (default none)."
    )
    topk_fraction: float | None = Field(
        None, gt=0, le=0.5, description="DiLoCo, compression topk: fraction of the entries a peer sends (default 0.02)."
    )


class DataConfigIn(CamelModel):
    dataset: str | None = Field(
        None, max_length=1024, pattern=DATASET_PATTERN,
        description='Instead of dataPath: "stdlib", "hf:NAME[:CONFIG]" (a dataset in the worker\'s Hugging Face cache) '
        'or "hf:/path" (a save_to_disk folder, inside the data roots like dataPath).',
    )
    split: str | None = Field(None, min_length=1, max_length=256, pattern=NO_NUL,
                              description='The split of an hf: dataset (default "train"; "train[:10%]" slices).')
    text_column: str | None = Field(None, min_length=1, max_length=256, pattern=NO_NUL,
                                    description='The column holding the text (default "text").')
    data_path: str | None = Field(None, min_length=1, pattern=NO_NUL,
                                  description="Local files on the worker (instead of dataset).")
    seq_length: int | None = Field(None, gt=0, le=10**7)
    max_bytes: int | None = Field(None, gt=0, le=10**15)
    vocab_size: int | None = Field(None, ge=256, le=262144)


class CheckpointConfigIn(CamelModel):
    interval: int | None = Field(None, gt=0, le=BIG)
    keep: int | None = Field(None, gt=0, le=10_000)


class RewardPoolIn(CamelModel):
    """What the contributors of a session share when it completes, pro rata to their verified work."""

    amount: int = Field(..., gt=0, le=2**63 - 1,
                        description="In the asset's smallest unit (octas for APT: 1 APT = 10^8).")
    asset: str = Field(
        "APT", pattern=r"^(APT|0x[0-9a-fA-F]{1,64})$",
        description='"APT", or the metadata object address (0x...) of a fungible asset.',
    )


SLURM_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$"  # a partition, account or QoS name: one #SBATCH word, nothing more


class SlurmConfigIn(CamelModel):
    """Issue 15: where a session's Slurm job goes, narrowed by a maintainer within what the Slurm executor
    allows (COTRAIN_SLURM_PARTITIONS / _ACCOUNTS / _QOS_LIST, at most COTRAIN_SLURM_TIME_LIMIT)."""

    partition: str | None = Field(None, min_length=1, max_length=64, pattern=SLURM_NAME)
    account: str | None = Field(None, min_length=1, max_length=64, pattern=SLURM_NAME)
    qos: str | None = Field(None, min_length=1, max_length=64, pattern=SLURM_NAME)
    time_limit: str | None = Field(
        None, max_length=32, pattern=r"^(\d{1,7}-\d{1,2}(:\d{1,2}){0,2}|\d{1,7}(:\d{1,2}){0,2})$",
        description='As sbatch\'s --time: minutes ("90"), "2:00:00" or "1-12:00:00"; at most the worker\'s.')


class SessionCreate(CamelModel):
    """The original design's `TrainingSessionConfig`, plus optional fields."""

    name: str = Field(..., min_length=1, max_length=200, pattern=NO_NUL)
    description: str = Field("", pattern=NO_NUL)
    model_config_: ModelConfigIn = Field(default_factory=lambda: ModelConfigIn.model_validate({}), alias="modelConfig")
    training_config: TrainingConfigIn = Field(default_factory=lambda: TrainingConfigIn.model_validate({}))
    distributed_config: DistributedConfigIn = Field(default_factory=lambda: DistributedConfigIn.model_validate({}))
    data_config: DataConfigIn | None = None
    checkpoint_config: CheckpointConfigIn | None = None
    priority: int = Field(0, ge=-100, le=100, description="Higher runs first.")
    public: bool = True
    auto_start: bool = Field(True, description="Queue at once; false keeps it a draft until `start`.")
    max_retries: int | None = Field(None, ge=0, le=20)
    reward_pool: RewardPoolIn | None = Field(
        None, description="Split among the contributors' wallets when the session completes; cannot change later."
    )
    slurm_config: SlurmConfigIn | None = Field(
        None, description="Slurm executor: the job's partition, account, QoS, time limit (maintainers and admins).")


# ---- issue 17: a session from a full engine config (server/engine_config.py) ----------------------
ENGINE_CONFIG_MAX_CHARS = 65536


class SessionFromConfig(CamelModel):
    """A session from a full engine config: the TOML `cotrain train` runs, as text, plus the
    platform's own fields. The config is validated with the engine's schema and held to the same
    rules as a `SessionCreate` (data roots, quotas, capacity, priority, reward pools)."""

    engine_config: str = Field(
        ..., min_length=1, max_length=ENGINE_CONFIG_MAX_CHARS, pattern=NO_NUL,
        description="The config as TOML text. The server sets [session] id and the checkpoint folder.",
    )
    name: str | None = Field(None, min_length=1, max_length=200, pattern=NO_NUL,
                             description="Default: the config's [session] name, else its id.")
    description: str | None = Field(None, pattern=NO_NUL, description="Default: the config's [session] description.")
    priority: int = Field(0, ge=-100, le=100, description="Higher runs first.")
    public: bool = True
    auto_start: bool = Field(True, description="Queue at once; false keeps it a draft until `start`.")
    max_retries: int | None = Field(None, ge=0, le=20)
    reward_pool: RewardPoolIn | None = Field(
        None, description="Split among the contributors' wallets when the session completes; cannot change later."
    )


class SessionUpdate(CamelModel):
    """Fields that can change while a session waits (draft or queued)."""

    name: str | None = Field(None, min_length=1, max_length=200, pattern=NO_NUL)
    description: str | None = Field(None, pattern=NO_NUL)
    model_config_: ModelConfigIn | None = Field(None, alias="modelConfig")
    training_config: TrainingConfigIn | None = None
    distributed_config: DistributedConfigIn | None = None
    data_config: DataConfigIn | None = None
    checkpoint_config: CheckpointConfigIn | None = None
    priority: int | None = Field(None, ge=-100, le=100)
    public: bool | None = None
    slurm_config: SlurmConfigIn | None = None  # issue 15: null removes the narrowing


class PriorityChange(CamelModel):
    priority: int = Field(..., ge=-100, le=100)


class OutModel(BaseModel):
    """A response body. `from_attributes`: a route returns the row (or the service's view) and
    `response_model` reads the fields it names; the JSON is camelCase."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, from_attributes=True)


def iso(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def _from_unix(value: Any) -> Any:
    """The tables keep time as unix seconds; the API shows ISO 8601 in UTC (a datetime is kept)."""
    return iso(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


UnixTime = Annotated[datetime, BeforeValidator(_from_unix)]
OrEmpty = Annotated[dict[str, Any], BeforeValidator(lambda value: value or {})]  # NULL JSON columns read as {}


class SessionOut(OutModel):
    """A session as its reader may see it: `SessionService.shown` fills in the reader's fields
    (error, workerId, request, waitingReason) on top of the row's own."""

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
    metrics: OrEmpty = Field(validation_alias=AliasChoices("metrics", "latest_metrics"))
    attempts: int
    max_retries: int
    error: str | None
    worker_id: str | None
    waiting_reason: str | None = Field(
        None, description="Why a queued session has not started yet, as a sentence that says what to do "
        "(no worker running, no worker with enough GPUs per node or memory, a retry backoff, all fitting "
        "workers busy). null unless the session is queued.",
    )
    created_at: UnixTime | None
    queued_at: UnixTime | None
    started_at: UnixTime | None
    finished_at: UnixTime | None
    request: dict[str, Any]


class SessionStatusOut(OutModel):
    """GET /sessions/{id}/status: where a run is (`SessionService.status` adds the reader's fields)."""

    session_id: str = Field(validation_alias=AliasChoices("sessionId", "session_id", "id"))
    status: str
    progress: float
    step: int
    total_steps: int | None
    loss: float | None
    participants: int
    metrics: OrEmpty = Field(validation_alias=AliasChoices("metrics", "latest_metrics"))
    attempts: int
    error: str | None
    seq: int = Field(validation_alias=AliasChoices("seq", "message_seq"))
    queue_position: int | None = Field(None, description="1 for the next session to run; null unless queued.")
    waiting_reason: str | None = None


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

    @classmethod
    def of(cls, message: dict[str, Any]) -> MessageOut:
        """A stored message as the WebSocket sends it (`{"event", "data"}`), with its seq and time lifted out."""
        data = message["data"]
        return cls(seq=data["seq"], event=message["event"], time=data.get("time") or 0.0, data=data)


class MetricSeries(OutModel):
    session_id: str
    total_points: int
    downsampled: bool
    points: list[dict[str, Any]]


class CheckpointOut(OutModel):
    step: int
    path: str | None = Field(None, description="Where it is on the server's disk (owner and admins only).")
    size_bytes: int
    created_at: UnixTime


class ModelVersionOut(OutModel):
    id: int
    session_id: str
    version: int
    name: str
    path: str | None = Field(None, description="Where the files are on the server's disk (owner and admins only).")
    metrics: OrEmpty
    created_at: UnixTime


class Envelope(BaseModel, Generic[T]):
    """The original design's response shape for the hivemind endpoints."""

    status: Literal["success"] = "success"
    data: T


class ErrorOut(BaseModel):
    """The body of 4xx answers: a sentence saying what went wrong and what to do."""

    detail: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "The body could not be read as JSON"},
    401: {"model": ErrorOut, "description": "No API token, or an unknown or revoked one"},
    403: {"model": ErrorOut, "description": "The token may not do this (not the owner, not an admin)"},
    404: {"model": ErrorOut, "description": "No such resource (or a private one of another user)"},
    409: {"model": ErrorOut, "description": "Not possible in the resource's current state"},
}
