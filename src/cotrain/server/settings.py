"""Server settings, read once from the environment. Every default is the embedded one:
SQLite under COTRAIN_HOME, in-process fan-out, a loopback DHT, an executor in the server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cotrain.data_roots import data_roots as data_roots_from_env
from cotrain.db import sqlite_url
from cotrain.paths import Layout


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


def _env_list(name: str) -> list[str]:
    return [part.strip() for part in os.environ.get(name, "").split(",") if part.strip()]


def detect_gpus() -> list[int]:
    """GPU indices this machine offers: `COTRAIN_GPUS=0,1` if set, else what `nvidia-smi -L` lists."""
    if "COTRAIN_GPUS" in os.environ:
        return [int(i) for i in _env_list("COTRAIN_GPUS")]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [i for i, line in enumerate(line for line in out.splitlines() if line.startswith("GPU "))]


# ---- limits on input (issue 11) ----
def limits_from_env() -> dict[str, Any]:
    """The limits-on-input fields of Settings from the environment (also read on their own by
    `cotrain up` for uvicorn's WebSocket frame cap, and by an app built without a Platform)."""
    return dict(
        max_body_bytes=int(os.environ.get("COTRAIN_MAX_BODY_BYTES") or 1_048_576),
        rate_sign_in=os.environ.get("COTRAIN_RATE_SIGN_IN") or "30/minute",
        rate_session_create=os.environ.get("COTRAIN_RATE_SESSION_CREATE") or "30/hour",
        rate_ws_subscribe=os.environ.get("COTRAIN_RATE_WS_SUBSCRIBE") or "120/minute",
        rate_limit_namespace=os.environ.get("COTRAIN_RATE_LIMIT_NAMESPACE") or "cotrain",
        trusted_proxies=_env_list("COTRAIN_TRUSTED_PROXIES"),
        ws_max_message_bytes=int(os.environ.get("COTRAIN_WS_MAX_MESSAGE_BYTES") or 65_536),
        ws_max_subscriptions=int(os.environ.get("COTRAIN_WS_MAX_SUBSCRIPTIONS") or 100),
    )


# ---- member quotas and reward pools (issue 11): server/session_policy.py ----
@dataclass(frozen=True)
class QuotaSettings:
    """What a member may ask of the platform; maintainers and admins may go past these (not past
    the schema's hard limits). Sizes are preset names of config/presets.py, for every family."""

    active_sessions: int = 2  # COTRAIN_QUOTA_ACTIVE_SESSIONS: queued, starting, running or cancelling, per owner
    world_size: int = 8  # COTRAIN_QUOTA_WORLD_SIZE: nodes x gpusPerNode
    model_sizes: tuple[str, ...] = ("debug", "tiny", "small", "base", "large")  # COTRAIN_QUOTA_MODEL_SIZES ("*": all)
    tokens: int = 2_000_000_000  # COTRAIN_QUOTA_TOKENS: steps x batch x sequence (x DiLoCo peers)
    reward_pool_max: int = 1_000_000_000  # COTRAIN_REWARD_POOL_MAX: a maintainer's pool (10 APT in octas)

    @classmethod
    def from_env(cls) -> QuotaSettings:
        sizes = tuple(_env_list("COTRAIN_QUOTA_MODEL_SIZES")) or cls.model_sizes
        return cls(
            active_sessions=_env_count("COTRAIN_QUOTA_ACTIVE_SESSIONS", cls.active_sessions),
            world_size=_env_count("COTRAIN_QUOTA_WORLD_SIZE", cls.world_size),
            model_sizes=sizes,
            tokens=_env_count("COTRAIN_QUOTA_TOKENS", cls.tokens),
            reward_pool_max=_env_count("COTRAIN_REWARD_POOL_MAX", cls.reward_pool_max),
        )


def _env_count(name: str, default: int) -> int:
    """A whole number >= 0 from the environment ("2e9" and "2_000_000_000" too)."""
    raw = (os.environ.get(name) or "").strip().replace("_", "")
    if not raw:
        return default
    try:
        value = float(raw) if "e" in raw.lower() else int(raw)
    except ValueError:
        value = -1
    if value < 0 or value != int(value):
        raise ValueError(f"{name}={os.environ[name]!r} is not a whole number >= 0; set it to e.g. {default} or unset it.")
    return int(value)


# ---- experiment trackers (issue 17): server/config_generator.py `with_server_tracking` ----
TRACKING_ENV_PREFIX = "COTRAIN_TRACKING_"


def tracking_from_env() -> dict[str, Any]:
    """COTRAIN_TRACKING_<KEY> for the keys of the config's [tracking] section but run_name (a
    session's own): BACKENDS, TENSORBOARD_DIR, MLFLOW_URI, MLFLOW_EXPERIMENT, WANDB_PROJECT,
    WANDB_ENTITY, WANDB_MODE, WANDB_DIR, written as in a config ("tensorboard,mlflow" for the list).
    They are the tracking of every session whose own config does not set that key; the executor
    keeps them from the engine, which follows the session's config alone."""
    from pydantic import ValidationError

    from cotrain.config.loader import describe_validation_error, parse_value
    from cotrain.config.schema import TrackingConfig

    keys = [key for key in TrackingConfig.model_fields if key != "run_name"]
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


@dataclass
class Settings:
    layout: Layout
    database_url: str
    redis_url: str | None = None
    max_retries: int = 2
    retry_backoff_s: float = 2.0
    cancel_grace_s: float = 30.0
    poll_interval_s: float = 0.05
    heartbeat_timeout_s: float = 60.0
    embedded_worker: bool = True
    start_dht: bool = True
    dht_host_maddrs: list[str] = field(default_factory=lambda: ["/ip4/127.0.0.1/tcp/0"])
    dht_initial_peers: list[str] = field(default_factory=list)
    gpus: list[int] = field(default_factory=list)
    cpu_slots: int = 1
    worker_id: str = ""
    admin_token: str | None = None
    example_session: bool = False
    python: str = sys.executable
    quotas: QuotaSettings = field(default_factory=QuotaSettings)  # member quotas (session_policy.py)
    # ---- limits on input (issue 11): server/body_limit.py, server/rate_limits.py, ws.py ----
    max_body_bytes: int = 1_048_576  # COTRAIN_MAX_BODY_BYTES: larger request bodies get 413
    rate_sign_in: str = "30/minute"  # COTRAIN_RATE_SIGN_IN, nonce and verify each (";" joins several)
    rate_session_create: str = "30/hour"  # COTRAIN_RATE_SESSION_CREATE
    rate_ws_subscribe: str = "120/minute"  # COTRAIN_RATE_WS_SUBSCRIBE
    rate_limit_namespace: str = "cotrain"  # COTRAIN_RATE_LIMIT_NAMESPACE: Redis key prefix
    trusted_proxies: list[str] = field(default_factory=list)  # COTRAIN_TRUSTED_PROXIES: X-Forwarded-For
    ws_max_message_bytes: int = 65_536  # COTRAIN_WS_MAX_MESSAGE_BYTES
    ws_max_subscriptions: int = 100  # COTRAIN_WS_MAX_SUBSCRIPTIONS: sessions one connection follows
    # ---- data roots (issue 11): server/data_paths.py, core/path_guard.py ----
    # COTRAIN_DATA_ROOTS (commas or colons; default COTRAIN_HOME/datasets/raw), resolved: where a
    # member's dataPath may point, and what this worker's runs may read
    data_roots: list[Path] = field(default_factory=list)
    # ---- experiment trackers (issue 17): COTRAIN_TRACKING_* (tracking_from_env), applied by
    # config_generator.with_server_tracking to each session's config where it sets no value itself
    tracking: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> Settings:
        layout = Layout.from_env().ensure()
        return cls(
            layout=layout,
            database_url=os.environ.get("DATABASE_URL") or sqlite_url(layout.root / "cotrain.db"),
            redis_url=os.environ.get("REDIS_URL") or None,
            max_retries=int(os.environ.get("COTRAIN_MAX_RETRIES", 2)),
            retry_backoff_s=float(os.environ.get("COTRAIN_RETRY_BACKOFF", 2.0)),
            cancel_grace_s=float(os.environ.get("COTRAIN_CANCEL_GRACE", 30.0)),
            heartbeat_timeout_s=float(os.environ.get("COTRAIN_HEARTBEAT_TIMEOUT", 60.0)),
            embedded_worker=_env_bool("COTRAIN_EMBEDDED_WORKER", True),
            start_dht=_env_bool("COTRAIN_START_DHT", True),
            dht_host_maddrs=_env_list("COTRAIN_DHT_HOST_MADDRS") or ["/ip4/127.0.0.1/tcp/0"],
            dht_initial_peers=_env_list("COTRAIN_DHT_INITIAL_PEERS"),
            gpus=detect_gpus(),
            cpu_slots=int(os.environ.get("COTRAIN_CPU_SLOTS", 1)),
            worker_id=os.environ.get("COTRAIN_WORKER_ID") or f"{socket.gethostname()}:{layout.root}",
            admin_token=os.environ.get("COTRAIN_ADMIN_TOKEN") or None,
            example_session=_env_bool("COTRAIN_EXAMPLE_SESSION", False),
            quotas=QuotaSettings.from_env(),
            **limits_from_env(),
            data_roots=data_roots_from_env(home=layout.root),  # data roots (issue 11)
            tracking=tracking_from_env(),  # experiment trackers (issue 17)
        )

    @property
    def uses_embedded_database(self) -> bool:
        return self.database_url.startswith("sqlite")
