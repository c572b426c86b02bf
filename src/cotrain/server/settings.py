"""Server settings, read once from the environment with pydantic-settings (`Settings()`). Every
default is the embedded one: SQLite under COTRAIN_HOME, in-process fan-out, a loopback DHT, an
executor in the server. Each field's description is its variable's documentation: the README's
tables are generated from them (`python -m cotrain.server.env_reference README.md`)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BeforeValidator, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from cotrain.config.env_settings import CommaList, EnvSettings, Flag, OnUnlessOff, comma_list, env_field
from cotrain.config.memory import parse_size
from cotrain.data_roots import default_root, parse_roots, resolve, unique
from cotrain.db import DatabaseSettings
from cotrain.paths import Layout
from cotrain.server.slurm.settings import SlurmSettings

LOOPBACK_MADDRS = ["/ip4/127.0.0.1/tcp/0"]
MODEL_SIZES = ("debug", "tiny", "small", "base", "large")


def detect_gpus() -> list[int]:
    """GPU indices this machine offers when COTRAIN_GPUS gives none: what `nvidia-smi -L` lists. An
    empty COTRAIN_GPUS (set, but to nothing) means none, for a CPU worker on a machine with GPUs."""
    if "COTRAIN_GPUS" in os.environ:
        return []  # set and empty (a non-empty value is read by the settings source)
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [i for i, line in enumerate(line for line in out.splitlines() if line.startswith("GPU "))]


def _layout(value: Any) -> Any:
    """COTRAIN_HOME as a Layout (`~` expanded, resolved)."""
    return Layout(Path(value).expanduser().resolve()) if isinstance(value, str | Path) else value


def _memory_size(value: Any) -> Any:
    """COTRAIN_WORKER_MEMORY in bytes ("20GiB"); blank: measured."""
    if not isinstance(value, str):
        return value
    try:
        return parse_size(value.strip()) if value.strip() else None
    except ValueError as exc:
        raise ValueError(f"COTRAIN_WORKER_MEMORY: {exc}") from None


def _split_roots(value: Any) -> Any:
    return parse_roots(value) if isinstance(value, str) else value


# /ip4|ip6|dns|dns4|dns6/<host>/tcp|udp/<port>, then any further protocols (/quic, /p2p/<id>, ...)
MULTIADDR = re.compile(r"/(ip4|ip6|dns|dns4|dns6)/[^/\s]+/(tcp|udp)/\d{1,5}(/[^\s]*)?")


def _gpu_indices(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return [int(i) for i in comma_list(value)]
    except ValueError:
        raise ValueError(f"COTRAIN_GPUS={value!r} is not a list of GPU indices; set it to e.g. 0,1 (empty: no "
                         "GPUs) or unset it.") from None


# ---- limits on input (issue 11): server/body_limit.py, server/rate_limits.py, ws.py ----
class LimitSettings(EnvSettings):
    """The limits on input (also read on their own by `cotrain up` for uvicorn's WebSocket frame
    cap, and by an app built without a Platform)."""

    max_body_bytes: int = env_field(
        "COTRAIN_MAX_BODY_BYTES", 1_048_576, "request body size (413); also caps WebSocket frames in `cotrain up`")
    rate_sign_in: str = env_field(
        "COTRAIN_RATE_SIGN_IN", "30/minute", "`POST /auth/nonce` and `POST /auth/verify`, each, per address")
    rate_session_create: str = env_field(
        "COTRAIN_RATE_SESSION_CREATE", "30/hour", "`POST /sessions`, per address and per account")
    rate_ws_subscribe: str = env_field(
        "COTRAIN_RATE_WS_SUBSCRIBE", "120/minute", "WebSocket `subscribe` actions, per address and per account")
    rate_limit_namespace: str = env_field(
        "COTRAIN_RATE_LIMIT_NAMESPACE", "cotrain",
        "Redis key prefix (two platforms on one Redis need different ones)")
    trusted_proxies: CommaList = env_field(
        "COTRAIN_TRUSTED_PROXIES", list,
        "proxies whose `X-Forwarded-For` is believed (IPs or CIDRs, comma-separated)", shown="none")
    ws_max_message_bytes: int = env_field(
        "COTRAIN_WS_MAX_MESSAGE_BYTES", 65_536, "one WebSocket client message (`error`, then close 1009)")
    ws_max_subscriptions: int = env_field(
        "COTRAIN_WS_MAX_SUBSCRIPTIONS", 100, "sessions one WebSocket connection follows (`\"*\"` counts as one)")


def limits_from_env() -> dict[str, Any]:
    """The limits-on-input fields of Settings, by field name."""
    return LimitSettings().model_dump()


# ---- member quotas and reward pools (issue 11): server/session_policy.py ----
class QuotaSettings(EnvSettings):
    """What a member may ask of the platform; maintainers and admins may go past these (not past
    the schema's hard limits). Sizes are preset names of config/presets.py, for every family."""

    model_config = SettingsConfigDict(frozen=True)

    active_sessions: int = env_field(
        "COTRAIN_QUOTA_ACTIVE_SESSIONS", 2,
        "a member's queued, starting, running or cancelling sessions (drafts do not count)")
    world_size: int = env_field("COTRAIN_QUOTA_WORLD_SIZE", 8, "`nodes × gpusPerNode`")
    model_sizes: Annotated[tuple[str, ...], NoDecode] = env_field(
        "COTRAIN_QUOTA_MODEL_SIZES", MODEL_SIZES,
        "the size presets a member may train (all under 1B parameters; `*`: every preset)",
        shown="`" + ",".join(MODEL_SIZES) + "`")
    tokens: int = env_field(
        "COTRAIN_QUOTA_TOKENS", 2_000_000_000,
        "tokens trained: `maxSteps × batchSize × seqLength` (× peers for DiLoCo); without maxSteps, "
        "`epochs ×` the corpus's bytes")
    reward_pool_max: int = env_field(
        "COTRAIN_REWARD_POOL_MAX", 1_000_000_000, "the largest reward pool a maintainer may open",
        shown="`1000000000` (10 APT in octas)")

    @field_validator("model_sizes", mode="before")
    @classmethod
    def _sizes(cls, value: Any) -> Any:
        return tuple(comma_list(value)) or MODEL_SIZES if isinstance(value, str) else value

    @field_validator("active_sessions", "world_size", "tokens", "reward_pool_max", mode="before")
    @classmethod
    def _count(cls, value: Any, info: ValidationInfo) -> Any:
        """A whole number >= 0 ("2e9" and "2_000_000_000" too)."""
        if not isinstance(value, str):
            return value
        raw = value.strip().replace("_", "")
        try:
            number = float(raw) if "e" in raw.lower() else int(raw)
        except ValueError:
            number = -1
        if number < 0 or number != int(number):
            field = cls.model_fields[str(info.field_name)]
            raise ValueError(f"{field.validation_alias}={value!r} is not a whole number >= 0; set it to e.g. "
                             f"{field.default} or unset it.")
        return int(number)


# ---- experiment trackers (issue 17): server/config_generator.py `with_server_tracking` ----
TRACKING_ENV_PREFIX = "COTRAIN_TRACKING_"


def tracking_from_env() -> dict[str, Any]:
    """COTRAIN_TRACKING_<KEY> for the keys of the config's [tracking] section but run_name (a
    session's own): BACKENDS, TENSORBOARD_DIR, MLFLOW_URI, MLFLOW_EXPERIMENT, WANDB_PROJECT,
    WANDB_ENTITY, WANDB_MODE, WANDB_DIR, written as in a config ("tensorboard,mlflow" for the list).
    They are the tracking of every session whose own config does not set that key; the executor
    keeps them from the engine, which follows the session's config alone. Read by prefix, not by a
    settings class, as the keys and their documentation are the schema's (`TrackingConfig`)."""
    from pydantic import ValidationError

    from cotrain.config.loader import describe_validation_error, parse_value
    from cotrain.config.schema import TrackingConfig

    keys = server_tracking_keys()
    raw: dict[str, Any] = {}
    for name, value in os.environ.items():
        if not name.startswith(TRACKING_ENV_PREFIX) or not value.strip():
            continue
        key = name[len(TRACKING_ENV_PREFIX) :].lower()
        if key not in keys:
            known = ", ".join(TRACKING_ENV_PREFIX + k.upper() for k in keys)
            raise ValueError(f"{name} is not a server tracking setting; they are {known}. Fix the name or unset it.")
        raw[key] = parse_value(value.strip())
    try:
        tracking = TrackingConfig.model_validate(raw)
    except ValidationError as exc:
        problems = [f"{TRACKING_ENV_PREFIX}{line.split('.')[0].split(' ')[0].upper()}: {line}"
                    for line in describe_validation_error(exc, TrackingConfig)]
        raise ValueError("; ".join(problems) + ". Fix the variable or unset it.") from None
    return tracking.model_dump(include=set(raw))


def server_tracking_keys() -> list[str]:
    """The [tracking] keys a server sets for every session: all but run_name (a session's own)."""
    from cotrain.config.schema import TrackingConfig

    return [key for key in TrackingConfig.model_fields if key != "run_name"]


class Settings(DatabaseSettings, LimitSettings):
    """Everything a server or worker process reads from its environment (its limits on input and
    database URL are declared by the classes it extends)."""

    layout: Annotated[Layout, NoDecode, BeforeValidator(_layout)] = env_field(
        "COTRAIN_HOME", Layout.from_env, "where everything is stored", shown="`~/.cotrain`")
    redis_url: str | None = env_field(
        "REDIS_URL", None, "e.g. `redis://host:6379/0`, for several server replicas",
        shown="unset (in-process fan-out)", secret=True)
    admin_token: str | None = env_field(
        "COTRAIN_ADMIN_TOKEN", None,
        "the admin API token (else one is generated on first start, printed once and kept in "
        "`COTRAIN_HOME/admin-token`)", shown="generated", secret=True)
    max_retries: int = env_field("COTRAIN_MAX_RETRIES", 2, "automatic retries of a failed run")
    retry_backoff_s: float = env_field(
        "COTRAIN_RETRY_BACKOFF", 2.0, "seconds to wait before a retry", shown="`2` s, doubling")
    cancel_grace_s: float = env_field(
        "COTRAIN_CANCEL_GRACE", 30.0, "seconds from SIGTERM to SIGKILL on cancel", shown="`30` s")
    heartbeat_timeout_s: float = env_field(
        "COTRAIN_HEARTBEAT_TIMEOUT", 60.0, "a worker silent this many seconds loses its sessions to another",
        shown="`60` s")
    stall_timeout_s: float | None = env_field(
        "COTRAIN_STALL_TIMEOUT", None,
        "a live run that writes no event for this many seconds is killed and retried from its checkpoint "
        "(until its first event: three times as long; `0`: never)",
        shown="the larger of `1800` s and 20 × the slowest interval between its events")
    gpus: Annotated[list[int], NoDecode, BeforeValidator(_gpu_indices)] = env_field(
        "COTRAIN_GPUS", detect_gpus, "GPU indices this machine may use (`0,1`; empty: none)",
        shown="from `nvidia-smi`")
    cpu_slots: int = env_field("COTRAIN_CPU_SLOTS", 1, "concurrent CPU-only runs")
    start_dht: OnUnlessOff = env_field("COTRAIN_START_DHT", True, "start the DHT node on boot", shown="`1`")
    dht_host_maddrs: CommaList = env_field(
        "COTRAIN_DHT_HOST_MADDRS", lambda: list(LOOPBACK_MADDRS),
        "where the DHT node listens (e.g. `/ip4/0.0.0.0/tcp/31337`)", shown="loopback")
    dht_initial_peers: CommaList = env_field(
        "COTRAIN_DHT_INITIAL_PEERS", list, "peers of an existing DHT to join", shown="unset")
    dht_announce_maddrs: CommaList = env_field(
        "COTRAIN_DHT_ANNOUNCE_MADDRS", list,
        "the addresses volunteers reach the DHT node at, when they are not the ones it listens on (a "
        "container's published port, NAT: `/ip4/203.0.113.7/tcp/31337`); the join command hands them out",
        shown="unset: the listening ones")
    embedded_worker: OnUnlessOff = env_field(
        "COTRAIN_EMBEDDED_WORKER", True, "`0`: this server runs no trainings (API replicas)", shown="`1`")
    worker_id: str = env_field(
        "COTRAIN_WORKER_ID", "", "unique name of a `cotrain worker`", shown="host name and `COTRAIN_HOME`")
    example_session: OnUnlessOff = env_field(
        "COTRAIN_EXAMPLE_SESSION", False, "`1`: an empty platform gets the example session (`cotrain up --example`)",
        shown="`0`")
    # passed to where they are used (server/worker_memory.py, server/signed_urls.py, ui/mount.py,
    # server/platform.py)
    worker_memory: Annotated[int | None, BeforeValidator(_memory_size)] = env_field(
        "COTRAIN_WORKER_MEMORY", None, "memory a worker offers one training process (e.g. `20GiB`), instead of "
        "what it measures (each GPU's memory, else host RAM)", shown="measured")
    url_secret: SecretStr | None = env_field(
        "COTRAIN_URL_SECRET", None, "the key that signs the web UI's download links (replicas need the same one)",
        shown="`COTRAIN_HOME/url-secret`, created once", secret=True)
    ui_secret: SecretStr | None = env_field(
        "COTRAIN_UI_SECRET", None, "the key of the web UI's browser storage",
        shown="`COTRAIN_HOME/ui-secret`, created once", secret=True)
    ui_url: str | None = env_field(
        "COTRAIN_UI_URL", None,
        "the web UI's address in the sign-in link the first start prints (`cotrain up` sets it)",
        shown="set by `cotrain up`")
    # ---- data roots (issue 11): server/data_paths.py, core/path_guard.py ----
    data_roots: Annotated[list[Path], NoDecode, BeforeValidator(_split_roots)] = env_field(
        "COTRAIN_DATA_ROOTS", list,
        "this machine's data roots (commas or colons): where a member's dataPath may point, and what this "
        "worker's runs may read", shown="`COTRAIN_HOME/datasets/raw`")
    quotas: QuotaSettings = Field(default_factory=QuotaSettings)  # member quotas (session_policy.py)
    # ---- issue 15: where runs go (`cotrain worker --executor slurm`): server/slurm/
    executor: Literal["local", "slurm"] = env_field(
        "COTRAIN_EXECUTOR", "local",
        "`local`: runs are child processes of this worker; `slurm`: Slurm jobs (see COTRAIN_SLURM_*)")
    slurm: SlurmSettings = Field(default_factory=SlurmSettings)
    # ---- experiment trackers (issue 17): COTRAIN_TRACKING_* (tracking_from_env), applied by
    # config_generator.with_server_tracking to each session's config where it sets no value itself
    tracking: dict[str, Any] = Field(default_factory=tracking_from_env)
    # ---- issue 14, logs and TLS: server/logging_setup.py, server/transport_security.py
    log_format: Literal["text", "json"] = env_field(
        "COTRAIN_LOG_FORMAT", "text",
        "`json`: every server and worker log line is one JSON object (stdout and `COTRAIN_HOME/logs/system/`); "
        "`text`: one readable line")
    https: Flag = env_field(
        "COTRAIN_HTTPS", False,
        "`1`: browsers reach this server over HTTPS (a TLS-terminating proxy): HSTS and Secure cookies on every "
        "response (`cotrain up --ssl-certfile` and an `https://` COTRAIN_PUBLIC_ORIGIN turn them on too)",
        shown="`0`")
    poll_interval_s: float = 0.05
    python: str = sys.executable

    @field_validator("log_format", mode="before")
    @classmethod
    def _log_format(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if value.strip().lower() not in ("text", "json"):
            raise ValueError(f"COTRAIN_LOG_FORMAT={value!r} is not a log format; set it to json or text, or unset it.")
        return value.strip().lower()

    @field_validator("executor", mode="before")
    @classmethod
    def _executor(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if value.strip().lower() not in ("local", "slurm"):
            raise ValueError(f"COTRAIN_EXECUTOR={value!r} is not an executor; set it to local or slurm, or unset it.")
        return value.strip().lower()

    @field_validator("dht_host_maddrs", "dht_announce_maddrs")
    @classmethod
    def _multiaddrs(cls, value: list[str], info: ValidationInfo) -> list[str]:
        """A typo here would only show when the DHT node fails to start, or never (an announced address
        nobody can dial): refuse it at start, with the form expected."""
        variable = "COTRAIN_DHT_HOST_MADDRS" if info.field_name == "dht_host_maddrs" else "COTRAIN_DHT_ANNOUNCE_MADDRS"
        for address in value:
            if not MULTIADDR.fullmatch(address):
                raise ValueError(f"{variable}: {address!r} is not a TCP or UDP multiaddr; write it like "
                                 "/ip4/203.0.113.7/tcp/31337 (or /dns4/host.example/tcp/31337).")
        return value

    @model_validator(mode="after")
    def _derived(self) -> Self:
        """What other settings decide: the layout's folders exist, the database and data roots
        default to ones under COTRAIN_HOME, the worker is named after this host and home."""
        self.layout.ensure()
        self.database_url = self.url_under(self.layout.root)
        self.worker_id = self.worker_id or f"{socket.gethostname()}:{self.layout.root}"
        self.dht_host_maddrs = self.dht_host_maddrs or list(LOOPBACK_MADDRS)
        self.data_roots = unique(resolve(root) for root in self.data_roots or [default_root(self.layout.root)])
        return self

    @property
    def uses_embedded_database(self) -> bool:
        return self.database_url.startswith("sqlite")
