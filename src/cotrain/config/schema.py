"""The TOML config (docs/architecture.md, "Config"): the one contract between the UI, the server and the core.

Every section forbids unknown keys, so a typo is an error that names the key instead of a
setting that silently does nothing. Cross-field rules live in `CotrainConfig`'s validator.
"""

from __future__ import annotations

import re
import warnings
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from cotrain.config.hf_spec import FORMS, is_hf, parse_hf
from cotrain.config.presets import PRESETS, sizes_of

SESSION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

Precision = Literal["fp32", "fp16", "bf16"]
Optimizer = Literal["adam", "adamw", "sgd"]
Schedule = Literal["cosine", "linear", "constant"]
Strategy = Literal["ddp", "fsdp", "diloco"]
Compression = Literal["none", "fp16", "int8", "int4", "topk"]
Resume = Literal["latest", "none"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SessionConfig(Section):
    id: str | None = Field(
        default=None,
        pattern=SESSION_ID_PATTERN,
        description="Names the run's event stream, checkpoints and final model; default: the config file's stem.",
    )
    name: str | None = Field(default=None, description="A human title shown in the UI.")
    description: str | None = Field(default=None, description="Free text shown in the UI.")


class ModelConfig(Section):
    type: Literal["llama2", "llama3", "bert"] = Field(
        default="llama2", description="Model family: llama2 / llama3 (causal LM) or bert (masked LM)."
    )
    size: str = Field(
        default="debug",
        description="Size preset: debug, tiny, small, base, or a published shape (7B, 13B, 70B; llama3 8B, 70B; "
        "bert base, large). `cotrain models presets` shows them.",
    )
    precision: Precision = Field(
        default="fp32", description="Autocast dtype; weights stay fp32. fp16 adds a grad scaler."
    )
    path: str | None = Field(
        default=None, description="A local Hugging Face model directory to start from instead of random init."
    )
    dropout: float | None = Field(default=None, ge=0.0, lt=1.0, description="Override the family's dropout.")


class TrainConfig(Section):
    batch_size: PositiveInt = Field(
        default=32, description="Samples per optimizer step, over all processes (DiLoCo: per peer)."
    )
    micro_batch_size: PositiveInt | None = Field(
        default=None,
        description="Samples per forward pass per process; default: batch_size / processes (no accumulation).",
    )
    learning_rate: PositiveFloat = Field(default=3e-4, description="Peak learning rate (after warmup).")
    min_lr_ratio: float = Field(
        default=0.1, ge=0.0, le=1.0, description="Final learning rate as a fraction of the peak."
    )
    epochs: PositiveInt | None = Field(
        default=1, description="Passes over the training split (unless max_steps is set)."
    )
    max_steps: PositiveInt | None = Field(
        default=None, description="Stop after this many optimizer steps (wins over epochs)."
    )
    optimizer: Optimizer = Field(default="adamw", description="Inner optimizer.")
    schedule: Schedule = Field(default="cosine", description="Learning-rate decay after warmup.")
    warmup_steps: int = Field(default=0, ge=0, description="Linear warmup steps.")
    weight_decay: float = Field(default=0.1, ge=0.0, description="On matrices only (not biases or norms).")
    betas: tuple[float, float] = Field(default=(0.9, 0.95), description="Adam / AdamW betas.")
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0, description="SGD momentum.")
    grad_clip: float = Field(default=1.0, ge=0.0, description="Max global grad norm; 0 disables clipping.")
    seed: int = Field(default=1337, description="Seeds init, data order and masking.")
    deterministic: bool = Field(default=False, description="Bit-identical results on CPU (slower kernels on GPU).")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto: CUDA when visible, else CPU.")
    compile: bool = Field(
        default=False,
        description="torch.compile the model (faster steps on GPU after a compile of a minute or so; "
        "CPU needs a C compiler).",
    )
    activation_checkpointing: bool = Field(
        default=False,
        description="Recompute each layer's activations in the backward pass: less memory for ~1/3 more compute.",
    )
    log_interval: PositiveInt = Field(default=10, description="Steps between progress events.")
    eval_interval: PositiveInt = Field(
        default=200, description="Steps between evaluations on the val split (and one at the end)."
    )
    eval_batches: PositiveInt = Field(default=8, description="Micro batches per evaluation.")


# `distributed.diloco.validate` is the key's natural name; as a field it shadows pydantic's deprecated
# `BaseModel.validate` classmethod, which nothing here calls (instances read the field value).
warnings.filterwarnings("ignore", message='Field name "validate" in "DilocoConfig" shadows', category=UserWarning)


SHARD_PASSES = 4  # a default round shard is read this many times in a round (its memorisation is the proof)


class DilocoConfig(Section):
    inner_steps: PositiveInt = Field(default=100, description="H: local optimizer steps between outer steps.")
    outer_lr: PositiveFloat = Field(default=0.7, description="Outer SGD learning rate.")
    outer_momentum: float = Field(default=0.9, ge=0.0, lt=1.0, description="Outer SGD momentum.")
    nesterov: bool = Field(default=True, description="Nesterov momentum in the outer step.")
    compression: Compression = Field(
        default="none",
        description="Compression of the averaged pseudo-gradient: fp16, int8, int4 (4-bit blocks, 7.8x fewer bytes "
        "than none) or topk (each peer sends only the topk_fraction largest entries of its pseudo-gradient plus "
        "what it left out before, 4-bit values).",
    )
    topk_fraction: float = Field(
        default=0.02, gt=0.0, le=0.5,
        description="compression = topk: the fraction of each chunk of 4096 values a peer sends per round.",
    )
    initial_peers: list[str] = Field(
        default_factory=list, description="Multiaddrs of peers already in the DHT."
    )
    host_maddrs: list[str] = Field(
        default_factory=lambda: ["/ip4/0.0.0.0/tcp/0"], description="Addresses this peer listens on."
    )
    announce_maddrs: list[str] = Field(
        default_factory=list, description="Public addresses to announce (behind NAT)."
    )
    min_peers: PositiveInt = Field(default=1, description="Peers needed before an outer step averages.")
    matchmaking_time: PositiveFloat = Field(default=5.0, description="Seconds to gather peers for a round.")
    averaging_timeout: PositiveFloat = Field(
        default=120.0, description="Seconds before a round is abandoned and retried."
    )
    progress_interval: PositiveFloat = Field(
        default=3.0, description="Seconds between signed progress records in the DHT."
    )
    wallet: str | None = Field(
        default=None, pattern=r"^0x[0-9a-fA-F]{1,64}$",
        description="Aptos address (0x...) credited for this peer's contribution.",
    )
    shard_samples: PositiveInt | None = Field(
        default=None,
        description="Samples in a peer's round shard: each round every peer trains only on a shard drawn from a "
        "public seed (session, round, start params, peer id), so anyone can recompute it; default: a quarter of "
        "inner_steps × train.batch_size (at least one batch), so a round sees each sample about 4 times: a "
        "validator can then tell from the update whether the peer trained on its own shard.",
    )
    commit_every: PositiveInt | None = Field(
        default=None,
        description="k: a peer records the hash of its local params every k inner steps in its round commitment; "
        "default: a quarter of inner_steps (at least 1).",
    )
    validate: bool = Field(  # type: ignore[assignment]  # the key users write; see the filter above the class
        default=False,
        description="Also act as a validator: judge every member of each round (commitment, receipts, the update "
        "itself, and whether it learned from its own shard) and emit a verdict event.",
    )
    validators: list[str] = Field(
        default_factory=list,
        description="Peer ids of the validators this peer trusts: it refuses to average with the peers they "
        "excluded for a failed check. A volunteer joining through the server gets the server's validating peer.",
    )
    audit_fraction: float = Field(
        default=0.01, ge=0.0, le=1.0,
        description="A validator's share of a round's members whose update it downloads and scores (drawn in "
        "secret each round; 1 audits everyone, 0 nobody). The others are verified on their commitment and receipts; a "
        "member caught once loses its credit for the whole session, so cheating does not pay on average.",
    )
    receipt_quorum: PositiveInt = Field(
        default=1,
        description="q: how many other members of its averaging group must sign a receipt naming a peer's "
        "committed update before that peer's round can be verified.",
    )
    own_data_margin: float = Field(
        default=0.0, allow_inf_nan=False,
        description="How much more an update must lower the loss on the peer's own shard than on a control shard "
        "no peer trained on (a loss difference; above it the update passes the own-data check).",
    )
    spot_checks: int = Field(
        default=1, ge=0, le=1024,
        description="A validator's spot checks per verified peer-round when training is bit-exact (train.deterministic "
        "on the CPU): it replays this many random commit intervals of the peer's inner steps from the training "
        "state the peer kept and compares the parameter hashes; 0 turns them off (and peers keep no states).",
    )

    def shard_size(self, batch_size: int) -> int:
        """Samples in a round shard (`shard_samples`, or SHARD_PASSES passes over it per round)."""
        if self.shard_samples is not None:
            return self.shard_samples
        return max(batch_size, self.inner_steps * batch_size // SHARD_PASSES)

    @property
    def commit_interval(self) -> int:
        """k: inner steps between the param hashes of a round commitment."""
        return self.commit_every if self.commit_every is not None else max(1, self.inner_steps // 4)


class DistributedConfig(Section):
    nodes: PositiveInt = Field(default=1, description="Machines (DiLoCo: peers).")
    gpus_per_node: PositiveInt = Field(
        default=1, description="Processes per machine (DiLoCo: per peer; they run the inner steps as DDP)."
    )
    strategy: Strategy = Field(
        default="ddp", description="ddp / fsdp under torchrun, or diloco over the hivemind DHT."
    )
    backend: Literal["auto", "gloo", "nccl"] = Field(
        default="auto", description="torch.distributed backend; auto: nccl on GPU, gloo on CPU."
    )
    diloco: DilocoConfig = Field(default_factory=DilocoConfig)

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def data_parallel_size(self) -> int:
        """Processes that split one optimizer step's batch (DiLoCo: the processes of one peer)."""
        return self.gpus_per_node if self.strategy == "diloco" else self.world_size


class DataConfig(Section):
    seq_length: PositiveInt = Field(default=256, description="Tokens per sample.")
    data_path: str | None = Field(
        default=None, description="A .txt/.jsonl/.parquet file, a folder of them, or a folder of prepared shards."
    )
    dataset: str | None = Field(
        default=None,
        description='Instead of data_path: "stdlib" (the Python standard library sources), "hf:NAME[:CONFIG]" '
        '(a dataset in the local Hugging Face cache, never downloaded) or "hf:/path" (a save_to_disk folder).',
    )
    split: str = Field(
        default="train", min_length=1, pattern=r"^[^\x00]*$",
        description='The split of an hf: dataset to read, e.g. "train" or "train[:10%]" '
        "(val_fraction is held out of it).",
    )
    text_column: str = Field(
        default="text", min_length=1, pattern=r"^[^\x00]*$",
        description="The column (hf: datasets, .parquet) or field (.jsonl) holding the text.",
    )
    max_bytes: PositiveInt | None = Field(default=None, description="Use at most this many bytes of raw text.")
    tokenizer: str = Field(
        default="train", description='"train" (BPE trained on the corpus) or a local tokenizer.json / HF directory.'
    )
    vocab_size: int = Field(default=4096, ge=256, le=262144, description="Vocabulary of a trained tokenizer.")
    val_fraction: float = Field(
        default=0.05, ge=0.0, lt=1.0, description="Fraction of documents held out for evaluation."
    )
    num_proc: PositiveInt | None = Field(default=None, description="Tokenizer processes; default: the CPU count.")
    mlm_probability: float = Field(default=0.15, gt=0.0, lt=1.0, description="Masked-token fraction for bert.")


class CheckpointConfig(Section):
    interval: PositiveInt = Field(default=1000, description="Steps between checkpoints (and one at the end).")
    output_path: str | None = Field(
        default=None,
        description="Root of checkpoints (a folder per session inside); default COTRAIN_HOME/models/checkpoints.",
    )
    keep: PositiveInt = Field(default=3, description="Newest checkpoints kept.")
    resume: Resume | str = Field(default="latest", description='"latest", "none", or a checkpoint directory.')


# ---- experiment trackers (issue 17): core/tracking.py, core/trackers.py ----
TrackerName = Literal["tensorboard", "mlflow", "wandb"]


class TrackingConfig(Section):
    """Flat keys, so each one is also a server setting COTRAIN_TRACKING_<KEY> (server/settings.py)."""

    backends: list[TrackerName] = Field(
        default_factory=list,
        description="Trackers that receive every progress and eval metric, the config and the final model path: "
        'any of "tensorboard", "mlflow", "wandb" (also "a,b"). One that fails to start warns once; training goes on.',
    )
    run_name: str | None = Field(
        default=None, pattern=SESSION_ID_PATTERN,  # also a folder name: no "/" or ".."
        description="The run's name in every tracker (letters, digits, . _ -); default: session.id.",
    )
    tensorboard_dir: str | None = Field(
        default=None,
        description="TensorBoard root; the run writes to <tensorboard_dir>/<run_name>. "
        "Default COTRAIN_HOME/logs/tensorboard.",
    )
    mlflow_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI (http://host:5000, sqlite:///file.db); default: MLFLOW_TRACKING_URI, else sqlite:///COTRAIN_HOME/logs/mlflow.db.",
    )
    mlflow_experiment: str = Field(
        default="cotrain", min_length=1, description="MLflow experiment (created when missing)."
    )
    wandb_project: str = Field(default="cotrain", min_length=1, description="W&B project.")
    wandb_entity: str | None = Field(
        default=None, description="W&B entity (user or team); default: the account's default."
    )
    wandb_mode: Literal["offline", "online"] = Field(
        default="offline",
        description="offline writes the run to wandb_dir only (`wandb sync` uploads it later); "
        "online needs WANDB_API_KEY.",
    )
    wandb_dir: str | None = Field(
        default=None,
        description="Folder W&B writes its wandb/ run folders in; default: WANDB_DIR, else COTRAIN_HOME/logs.",
    )

    @field_validator("backends", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        """`"tensorboard,mlflow"` (an environment variable, --set) is the list of the two."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


class CotrainConfig(Section):
    session: SessionConfig = Field(default_factory=SessionConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)  # experiment trackers (issue 17)

    @model_validator(mode="after")
    def _cross_field_rules(self) -> CotrainConfig:
        """Rules that span sections; every broken one is reported at once, in this order."""
        problems = [
            *_model_rules(self.model),
            *_step_rules(self.train, self.distributed),
            *_strategy_rules(self),
            *_data_source_rules(self.data),
        ]
        if problems:
            raise CrossFieldError(problems)
        return self

    @property
    def uses_masked_lm(self) -> bool:
        return self.model.type == "bert"


# (key path, bad value, what is allowed)
Problem = tuple[str, object, str]


class CrossFieldError(ValueError):
    """Several problems found after the fields parsed."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__(
            "; ".join(f"{path} = {value!r}: must be {allowed}" for path, value, allowed in problems)
        )


def _model_rules(model: ModelConfig) -> list[Problem]:
    """A size preset must exist for the family (a local model path brings its own shape)."""
    if model.path is None and model.size not in PRESETS[model.type]:
        return [("model.size", model.size, f"one of {_quoted(sizes_of(model.type))} for {model.type}")]
    return []


def _step_rules(train: TrainConfig, dist: DistributedConfig) -> list[Problem]:
    """How long to train, and a batch that splits evenly over the processes sharing each step."""
    problems: list[Problem] = []
    if train.epochs is None and train.max_steps is None:
        problems.append(("train.epochs", None, "a positive number of epochs, or set train.max_steps"))
    per_step_processes = dist.data_parallel_size
    micro = train.micro_batch_size
    if micro is None:
        if train.batch_size % per_step_processes:
            problems.append((
                "train.batch_size",
                train.batch_size,
                f"a multiple of the {per_step_processes} processes that share each step "
                f"({dist.strategy}: {_processes_phrase(dist)})",
            ))
    elif train.batch_size % (micro * per_step_processes):
        problems.append((
            "train.batch_size",
            train.batch_size,
            f"a multiple of micro_batch_size × processes = {micro} × {per_step_processes}",
        ))
    if train.warmup_steps and train.max_steps and train.warmup_steps > train.max_steps:
        problems.append(("train.warmup_steps", train.warmup_steps, f"at most train.max_steps ({train.max_steps})"))
    return problems


def _strategy_rules(config: CotrainConfig) -> list[Problem]:
    """What DiLoCo and FSDP ask of the other sections."""
    problems: list[Problem] = []
    dist = config.distributed
    if dist.strategy == "diloco" and config.checkpoint.interval % dist.diloco.inner_steps:
        problems.append((
            "checkpoint.interval",
            config.checkpoint.interval,
            f"a multiple of distributed.diloco.inner_steps ({dist.diloco.inner_steps}) so checkpoints "
            "fall on outer steps",
        ))
    if dist.strategy == "diloco":
        problems += _round_shard_rules(dist.diloco, config.train.batch_size)
    if dist.strategy == "fsdp" and config.model.precision == "fp16":
        problems.append(("model.precision", "fp16", "bf16 or fp32 with fsdp (fp16 needs a sharded grad scaler)"))
    return problems


def _round_shard_rules(diloco: DilocoConfig, batch_size: int) -> list[Problem]:
    """A round shard holds at least one batch, and a commitment records at least one param hash."""
    problems: list[Problem] = []
    if diloco.shard_samples is not None and diloco.shard_samples < batch_size:
        problems.append((
            "distributed.diloco.shard_samples", diloco.shard_samples,
            f"at least train.batch_size ({batch_size}) so an inner step's batch holds no sample twice",
        ))
    if diloco.commit_every is not None and diloco.commit_every > diloco.inner_steps:
        problems.append((
            "distributed.diloco.commit_every", diloco.commit_every,
            f"at most distributed.diloco.inner_steps ({diloco.inner_steps}) so a round records a param hash",
        ))
    return problems


def _data_source_rules(data: DataConfig) -> list[Problem]:
    """One data source at most, and a dataset name in a known form."""
    problems: list[Problem] = []
    if data.data_path is not None and data.dataset is not None:
        problems.append(("data.dataset", data.dataset, "unset when data.data_path is set (choose one source)"))
    if data.dataset is not None and data.dataset != "stdlib":
        if not is_hf(data.dataset):
            allowed = f'"stdlib", {FORMS}, or point data.data_path at local files'
            problems.append(("data.dataset", data.dataset, allowed))
        else:
            try:
                parse_hf(data.dataset)
            except ValueError as exc:
                problems.append(("data.dataset", data.dataset, str(exc)))
    return problems


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
