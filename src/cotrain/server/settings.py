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

from cotrain.data_roots import data_roots as data_roots_from_env
from cotrain.paths import Layout
from cotrain.server.db import sqlite_url


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
    # ---- data roots (issue 11): server/data_paths.py, core/path_guard.py ----
    # COTRAIN_DATA_ROOTS (commas or colons; default COTRAIN_HOME/datasets/raw), resolved: where a
    # member's dataPath may point, and what this worker's runs may read
    data_roots: list[Path] = field(default_factory=list)

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
            data_roots=data_roots_from_env(home=layout.root),  # data roots (issue 11)
        )

    @property
    def uses_embedded_database(self) -> bool:
        return self.database_url.startswith("sqlite")
