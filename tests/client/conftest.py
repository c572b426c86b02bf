"""Fixtures for the client and CLI tests: real `cotrain up` processes (tests/server's fixtures), a
TCP proxy in front of one that the test can cut (every live WebSocket connection through it is
closed mid-stream, as a server restart or a network drop would), and the tiny engine config.

One server (`platform`, package-scoped) serves tests/client; each module trains the tiny session it
needs, and its tests read what that produced."""

from __future__ import annotations

import os
import signal
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.server.conftest import (  # noqa: F401 (fixtures re-exported for this folder)
    ADMIN_TOKEN,
    TINY,
    ServerProcess,
    engine_pids,
    reference_session,
    server_env,
    servers,
)

TEMPLATE = REPO / "configs" / "templates" / "tiny-cpu.toml"
# tiny-cpu.toml made as small as tests/server's TINY run (40 steps, the same prepared data)
TINY_SET = ["train.max_steps=40", "train.batch_size=8", "train.log_interval=2", "train.eval_interval=20",
            "train.warmup_steps=4", "model.size=debug", "data.max_bytes=300000", "data.seq_length=64",
            "data.vocab_size=512", "checkpoint.interval=10"]


@dataclass
class Pipe:
    client: socket.socket
    upstream: socket.socket
    websocket: bool = False


@dataclass
class DroppingProxy:
    """127.0.0.1:<port> forwarding to `target_port`. `drop_websockets()` closes every WebSocket
    connection through it at once (both sides); HTTP requests pass untouched."""

    target_port: int
    port: int = 0
    websockets_opened: int = 0
    websockets_dropped: int = 0
    _pipes: list[Pipe] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> DroppingProxy:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            pipe = Pipe(client, upstream)
            with self._lock:
                self._pipes.append(pipe)
            threading.Thread(target=self._pump, args=(pipe, client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(pipe, upstream, client, False), daemon=True).start()

    def _pump(self, pipe: Pipe, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        first = from_client
        try:
            while data := source.recv(65536):
                if first:
                    first = False
                    if b"upgrade: websocket" in data.lower():
                        pipe.websocket = True
                        with self._lock:
                            self.websockets_opened += 1
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._lock:
                if pipe in self._pipes:
                    self._pipes.remove(pipe)

    def drop_websockets(self) -> int:
        """Cut every open WebSocket connection; returns how many were cut."""
        with self._lock:
            cut = [p for p in self._pipes if p.websocket]
        for pipe in cut:
            for sock in (pipe.client, pipe.upstream):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        with self._lock:
            self.websockets_dropped += len(cut)
        return len(cut)

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            pipes = list(self._pipes)
        for pipe in pipes:
            for sock in (pipe.client, pipe.upstream):
                try:
                    sock.close()
                except OSError:
                    pass


def platform_env(home: Path, **extra: str) -> dict[str, str]:
    """tests/server's server_env for a module-scoped server (its own COTRAIN_HOME)."""
    env = dict(os.environ)
    for key in ("DATABASE_URL", "REDIS_URL", "COTRAIN_SERVER", "COTRAIN_TOKEN"):
        env.pop(key, None)
    env.update(
        COTRAIN_HOME=str(home), COTRAIN_ADMIN_TOKEN=ADMIN_TOKEN, COTRAIN_START_DHT="0", COTRAIN_RETRY_BACKOFF="0.5",
        COTRAIN_CANCEL_GRACE="20", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1", COTRAIN_RATE_SESSION_CREATE="10000/hour",
        COTRAIN_RATE_LIMIT_NAMESPACE="test-" + uuid.uuid4().hex[:12], **extra,
    )
    return env


def module_home(tmp_path_factory: pytest.TempPathFactory, shared_datasets: Path, name: str) -> Path:
    """A COTRAIN_HOME whose datasets/ is the run-wide shared one (prepared data is reused)."""
    home = tmp_path_factory.mktemp(name) / "home"
    home.mkdir()
    (home / "datasets").symlink_to(shared_datasets, target_is_directory=True)
    return home


@pytest.fixture(scope="package")
def platform(tmp_path_factory: pytest.TempPathFactory, shared_datasets: Path) -> Iterator[ServerProcess]:
    """One `cotrain up` (SQLite, embedded worker) for tests/client (its sessions run one after another)."""
    home = module_home(tmp_path_factory, shared_datasets, "client")
    server = ServerProcess(home, platform_env(home)).start()
    yield server
    server.stop(signal.SIGTERM)
    for pid in engine_pids(home):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="package")
def proxy(platform: ServerProcess) -> Iterator[DroppingProxy]:
    dropping = DroppingProxy(platform.port).start()
    yield dropping
    dropping.close()
