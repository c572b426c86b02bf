"""Fixtures for the server's tests: real `cotrain up` processes on loopback ports, real
WebSocket clients, the real engine, SQLite files, and the PostgreSQL and Redis of this machine.

Without CI=true a missing PostgreSQL/Redis skips its tests with the reason; with CI=true it fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests.conftest import REFERENCE, free_port, missing_service, wait_until  # noqa: F401 (re-exported)

PG_ADMIN_URL = os.environ.get("COTRAIN_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("COTRAIN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ADMIN_TOKEN = "ct_test_" + uuid.uuid4().hex

# The tiny run of the engine: 40 steps of the debug llama on 300 kB of the stdlib corpus.
TINY = {
    "trainingConfig": {"batchSize": 8, "learningRate": 0.003, "maxSteps": 40, "logInterval": 2, "evalInterval": 20},
    "dataConfig": {"dataset": "stdlib", "seqLength": 64, "maxBytes": 300000, "vocabSize": 512},
    "checkpointConfig": {"interval": 10},
}


def reference_session(**changes: Any) -> dict[str, Any]:
    """The original front end's create body (reference/session-create.json), tiny size, made
    runnable on one CPU: one node, one process, plus the tiny-run fields."""
    body = json.loads((REFERENCE / "session-create.json").read_text())
    body["modelConfig"].update(size="debug", precision="fp32")
    body["trainingConfig"].update(batchSize=8, learningRate=0.003, maxSteps=40, logInterval=2, evalInterval=20)
    body["distributedConfig"].update(nodes=1, gpusPerNode=1, strategy="ddp")
    body["dataConfig"] = TINY["dataConfig"]
    body["checkpointConfig"] = TINY["checkpointConfig"]
    body.update(changes)
    return body




class ServerProcess:
    """`cotrain up` (or `cotrain worker`) as a real child process."""

    def __init__(self, home: Path, env: dict[str, str], command: str = "up"):
        self.home = home
        self.env = env
        self.command = command
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = home / f"{command}-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self) -> ServerProcess:
        args = [str(Path(sys.executable).with_name("cotrain")), self.command]
        if self.command == "up":
            # the server's own tests run without the web UI (it has its own tests)
            args += ["--port", str(self.port), "--log-level", "warning", "--api-only"]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        if self.command == "up":
            wait_until(self._healthy, 60, f"the server on port {self.port} (log: {self.log_path})")
        else:
            wait_until(lambda: b"waiting for sessions" in self.log_path.read_bytes(), 60, "the worker to start")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the server exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
        try:
            return httpx.get(self.url + "/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def client(self, token: str | None = ADMIN_TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url + "/api/v1", headers=headers, timeout=30)


class WSCollector:
    """A real WebSocket client in a thread, keeping every message it receives."""

    def __init__(self, url: str):
        self.ws = ws_connect(url, open_timeout=10, max_size=None).__enter__()
        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for raw in self.ws:
                with self._lock:
                    self.messages.append(json.loads(raw))
        except Exception:
            pass

    def send(self, payload: dict[str, Any]) -> None:
        self.ws.send(json.dumps(payload))

    def of(self, event: str) -> list[dict[str, Any]]:
        with self._lock:
            return [m for m in self.messages if m["event"] == event]

    def close(self) -> None:
        self.ws.close()
        self._thread.join(5)


def engine_pids(home: Path) -> list[int]:
    """Training processes whose command line points into this COTRAIN_HOME."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "cotrain.core.train" in cmd and str(home) in cmd:
            pids.append(int(proc.name))
    return pids


@pytest.fixture
def server_env(cotrain_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        COTRAIN_HOME=str(cotrain_home), COTRAIN_ADMIN_TOKEN=ADMIN_TOKEN, COTRAIN_START_DHT="0",
        COTRAIN_RETRY_BACKOFF="0.5", COTRAIN_CANCEL_GRACE="20", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
        # rate limits counted in Redis are this test's own (runs on one machine share one Redis)
        COTRAIN_RATE_LIMIT_NAMESPACE="test-" + uuid.uuid4().hex[:12],
    )
    for key in ("DATABASE_URL", "REDIS_URL"):
        env.pop(key, None)
    return env


@pytest.fixture
def servers(cotrain_home: Path, server_env: dict[str, str]) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers/workers with `servers(**env_overrides)`; all are stopped (and their engine
    processes ended) after the test."""
    started: list[ServerProcess] = []

    def start(command: str = "up", **overrides: str) -> ServerProcess:
        server = ServerProcess(cotrain_home, {**server_env, **overrides}, command).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
    for pid in engine_pids(cotrain_home):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _unreachable(kind: str, exc: Exception) -> None:
    missing_service(f"{kind} is not reachable ({exc}); start it (see README) to run these tests")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test, dropped afterwards."""
    import psycopg

    name = "cotrain_test_" + uuid.uuid4().hex[:10]
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except Exception as exc:
        _unreachable("PostgreSQL at " + PG_ADMIN_URL, exc)
    admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5).ping()
    except Exception as exc:
        _unreachable("Redis at " + REDIS_URL, exc)
    return REDIS_URL
