"""Issue 14, "Tested for real": the image built from the Dockerfile, the project's compose.yaml started with
podman-compose, and the stack driven from outside on 127.0.0.1: a session created over HTTPS with the
admin token completes on the worker container while a WSS client watches, its model downloads; the API
container is killed and started again and nothing is lost. Every line the API container writes to
stdout is one JSON object.

Slow on a fresh machine (the base image and the image are built: minutes); images are reused while
their inputs are unchanged (tests/containers/harness.py). Without podman/debootstrap it skips, under
CI=true it fails (`make containers` installs them).
"""

from __future__ import annotations

import io
import json
import os
import secrets
import ssl
import subprocess
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests.conftest import free_port, missing_service, wait_until
from tests.containers import harness
from tests.server.conftest import PG_ADMIN_URL, REDIS_URL, reference_session

pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(2400)]

OVERRIDE = Path(__file__).with_name("compose.test.yaml")
APP_UID = 10001  # the image's user (Dockerfile's APP_UID): it must read the certificate and the secrets


@dataclass
class Stack:
    """One podman-compose project of the repository's compose.yaml with the test override."""

    project: str
    folder: Path
    api_port: int
    admin_token: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def cert(self) -> Path:
        return self.folder / "tls" / "cert.pem"

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def compose(self, env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        command = [str(harness.podman_compose_path()), "-p", self.project, "-f", str(harness.REPO / "compose.yaml"),
                   "-f", str(OVERRIDE), *args]
        result = subprocess.run(command, env={**harness.podman_env(), **env}, capture_output=True, text=True,
                                timeout=timeout, cwd=harness.REPO)
        (self.folder / "compose.log").open("a").write(f"$ {' '.join(args)}\n{result.stdout}{result.stderr}\n")
        return result

    def tls(self) -> ssl.SSLContext:
        """Trusts the test's self-signed certificate, and nothing else."""
        return ssl.create_default_context(cafile=str(self.cert))

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url + "/api/v1", verify=self.tls(), timeout=30,
                            headers={"Authorization": f"Bearer {self.admin_token}"})

    def healthy(self) -> bool:
        try:
            return httpx.get(self.url + "/health", verify=self.tls(), timeout=3).status_code == 200
        except httpx.HTTPError:
            return False

    def health_check(self, service: str) -> tuple[bool, str]:
        """The container's compose health check, run now (podman runs none on its own without systemd)."""
        result = harness.podman("healthcheck", "run", self.container(service), check=False, timeout=120)
        detail = harness.podman("inspect", "--format", "{{json .State.Healthcheck}}", self.container(service),
                                check=False).stdout
        return result.returncode == 0, detail[-2000:]

    def logs(self, service: str) -> tuple[str, str]:
        """The container's stdout and stderr, each as podman keeps it."""
        result = harness.podman("logs", self.container(service), check=False, timeout=60)
        return result.stdout, result.stderr


class WSSWatcher:
    """A WSS client on the host, in a thread, keeping every message; trusts the test's certificate."""

    def __init__(self, url: str, cert: Path):
        context = ssl.create_default_context(cafile=str(cert))
        self.ws = ws_connect(url, ssl=context, open_timeout=15, max_size=None).__enter__()
        self.messages: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for raw in self.ws:
                self.messages.append(json.loads(raw))
        except Exception:  # the socket closed: the messages so far are the result
            pass

    def of(self, event: str) -> list[dict[str, Any]]:
        return [m for m in list(self.messages) if m["event"] == event]

    def close(self) -> None:
        self.ws.close()
        self._thread.join(5)


def _make_tls(folder: Path) -> None:
    """A self-signed certificate for 127.0.0.1, readable by the image's user."""
    folder.mkdir(mode=0o755)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem")],
                   check=True, capture_output=True, timeout=60)
    _give_to_image_user(folder / "key.pem")


def _give_to_image_user(path: Path) -> None:
    """0400 and owned by the image's user, as README asks of secret files (readable by all when not root)."""
    if os.geteuid() == 0:
        os.chown(path, APP_UID, APP_UID)
        path.chmod(0o400)
    else:
        path.chmod(0o444)


def _make_secrets(folder: Path, admin_token: str) -> None:
    folder.mkdir(mode=0o755)
    for name, value in (("admin_token", admin_token), ("ledger_key", ""), ("treasury_key", "")):
        (folder / name).write_text(value)
        _give_to_image_user(folder / name)


@pytest.fixture
def fresh_database() -> Iterator[str]:
    """A new database on the machine's PostgreSQL for this stack, dropped afterwards."""
    import psycopg

    name = "cotrain_container_" + uuid.uuid4().hex[:10]
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except Exception as exc:
        missing_service(f"PostgreSQL at {PG_ADMIN_URL} is not reachable ({exc}); the container test uses it")
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def images() -> dict[str, float]:
    """The base image and the CoTrain image, built or reused; the seconds each build took (0: reused)."""
    missing = harness.missing_tools()
    if missing:
        missing_service(f"the container test needs {', '.join(missing)}; run `make containers` (as root) to install")
    started = time.monotonic()
    _, base_s = harness.ensure_base_image()
    _, image_s = harness.ensure_image()
    return {"base_build_s": base_s, "image_build_s": image_s, "images_total_s": time.monotonic() - started}


@pytest.fixture
def stack(images: dict[str, float], fresh_database: str, tmp_path: Path) -> Iterator[Stack]:
    """The compose stack up (migrations done, API answering HTTPS); everything removed afterwards
    (containers, volumes, networks), the images kept for the next run."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5).ping()
    except Exception as exc:
        missing_service(f"Redis at {REDIS_URL} is not reachable ({exc}); the container test uses it")
    folder = tmp_path / "stack"
    folder.mkdir()
    admin_token = "ct_test_" + secrets.token_hex(16)
    _make_tls(folder / "tls")
    _make_secrets(folder / "secrets", admin_token)
    stack = Stack(project="cotrain-test-" + uuid.uuid4().hex[:8], folder=folder, api_port=free_port(),
                  admin_token=admin_token, timings=dict(images))
    cpus = str(min(2, os.cpu_count() or 1))
    env = {
        "STACK_IMAGE": harness.IMAGE_TAG, "STACK_POSTGRES_PASSWORD": "unused-by-this-test",
        "STACK_API_CPUS": cpus, "STACK_WORKER_CPUS": cpus, "STACK_WORKER_MEMORY": "6g",
        "TEST_DIR": str(folder), "TEST_API_PORT": str(stack.api_port), "TEST_DHT_PORT": str(free_port()),
        "TEST_DATABASE_URL": fresh_database, "TEST_REDIS_URL": REDIS_URL, "TEST_NAMESPACE": stack.project,
    }
    started = time.monotonic()
    try:
        up = stack.compose(env, "up", "-d", "--no-build")
        assert up.returncode == 0, f"podman-compose up failed:\n{up.stdout[-4000:]}\n{up.stderr[-4000:]}"
        wait_until(stack.healthy, 180, f"the API container to answer {stack.url}/health (see {folder}/compose.log)", 1)
        stack.timings["stack_start_s"] = time.monotonic() - started
        yield stack
    finally:
        _print_failure_logs(stack)
        volumes = _remove_containers(stack.project)  # first: `down` would leave their anonymous volumes
        stack.compose(env, "down", "-v", "-t", "5", timeout=300)
        _remove_leftovers(stack.project, volumes)
        print("container test timings: " + json.dumps({k: round(v, 1) for k, v in stack.timings.items()}))


def _print_failure_logs(stack: Stack) -> None:
    """The tail of each container's log in the test's output, for a failure's diagnosis."""
    for service in ("migrate", "api", "worker"):
        out, err = stack.logs(service)
        print(f"---- {service} ----\n{(out + err)[-3000:]}")


def _remove_containers(project: str) -> list[str]:
    """This project's containers with their anonymous volumes (the image's VOLUME /data where a service
    mounts nothing there), dependents first (podman refuses to remove a container others require).
    Returns the volumes they mounted, for a last sweep after `down`."""
    label = f"label=io.podman.compose.project={project}"
    volumes: list[str] = []
    for _ in range(6):  # at most one round per level of compose.yaml's dependencies
        names = harness.podman("ps", "-a", "--filter", label, "--format", "{{.Names}}", check=False).stdout.split()
        if not names:
            break
        mounts = harness.podman("inspect", "--format", "{{range .Mounts}}{{.Name}} {{end}}", *names, check=False)
        volumes += [name for name in mounts.stdout.split() if name not in volumes]
        for name in names:
            harness.podman("rm", "-f", "-v", "-t", "5", name, check=False, timeout=120)
    return volumes


def _remove_leftovers(project: str, volumes: list[str]) -> None:
    """Whatever `down -v` left: the containers' volumes, and this project's named volumes, networks, pods."""
    label = f"label=io.podman.compose.project={project}"
    _remove_containers(project)
    for volume in volumes:
        harness.podman("volume", "rm", "-f", volume, check=False)
    for kind in ("volume", "network", "pod"):
        listed = harness.podman(kind, "ls", "--filter", label, "--format", "{{.Name}}", check=False)
        for name in listed.stdout.split():
            harness.podman(kind, "rm", "-f", name, check=False)


def _json_lines(text: str, service: str) -> list[dict[str, Any]]:
    """Every non-empty line as JSON, failing on the first that is not one JSON object."""
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"a line of the {service} container's stdout is not JSON: {line[:300]!r}") from None
        assert isinstance(record, dict), line[:300]
        records.append(record)
    return records


def _zip_contents(data: bytes) -> dict[str, int]:
    """A zip's members and their CRC-32s: equal for the same model files, whenever the zip was made."""
    return {info.filename: info.CRC for info in zipfile.ZipFile(io.BytesIO(data)).infolist()}


def _worker_id(stack: Stack) -> str:
    """The worker id the worker container's `cotrain worker` registers under (its own settings)."""
    code = "from cotrain.server.settings import Settings; print(Settings().worker_id)"
    result = harness.podman("exec", stack.container("worker"), "/opt/venv/bin/python", "-c", code, timeout=120)
    return result.stdout.strip().splitlines()[-1]


def test_the_compose_stack_trains_over_https_and_survives_an_api_restart(stack: Stack) -> None:
    started = time.monotonic()
    api_container = stack.container("api")
    # the compose health checks themselves: the API's over HTTPS, the worker's heartbeat in the database
    healthy, detail = stack.health_check("api")
    assert healthy, detail
    wait_until(lambda: stack.health_check("worker")[0], 120, "the worker container's health check", 2)
    migrated = harness.podman("inspect", "--format", "{{.State.ExitCode}}", stack.container("migrate"))
    assert migrated.stdout.strip() == "0", stack.logs("migrate")
    # compose.yaml's migrate (`cotrain db upgrade --wait 120`, no dependencies) migrated the fresh database;
    # podman starts it again whenever a service that requires it starts, and then it has nothing to do
    runs = [line for line in "".join(stack.logs("migrate")).splitlines() if line.startswith("database ")]
    assert runs and runs[0].startswith("database migrated from empty to "), runs
    assert all(line.startswith("database already at ") for line in runs[1:]), runs

    api = stack.client()
    watcher = WSSWatcher(f"wss://127.0.0.1:{stack.api_port}/ws?token={stack.admin_token}", stack.cert)
    try:
        created = api.post("/sessions", json=reference_session(name="container test"))
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        watcher.ws.send(json.dumps({"action": "subscribe", "sessionId": sid, "after": 0}))
        runners: set[str] = set()  # the worker ids the session shows while it runs

        def finished() -> bool:
            runners.add(api.get(f"/sessions/{sid}").json()["workerId"] or "")
            statuses = watcher.of("training.status")
            return bool(statuses) and statuses[-1]["data"]["status"] in ("completed", "failed")

        wait_until(finished, 300, "the session's final status on WSS", 1)
        session = api.get(f"/sessions/{sid}").json()
        assert session["status"] == "completed", (session["error"], api.get(f"/sessions/{sid}/logs").json())
        assert len(watcher.of("training.progress")) >= 15  # 40 steps, one every 2
    finally:
        watcher.close()
    stack.timings["session_s"] = time.monotonic() - started

    # it ran on the worker container: the session showed that container's worker id (its own host name)
    assert runners - {""} == {_worker_id(stack)} == {"cotrain-test-worker:/data"}

    models = api.get("/models", params={"session": sid}).json()
    assert [m["name"] for m in models] == ["v1"]
    download = api.get(f"/models/{models[0]['id']}/download")
    assert download.status_code == 200 and download.headers["content-type"] == "application/zip"
    contents = _zip_contents(download.content)
    assert any(n.endswith(".safetensors") for n in contents), contents
    events = api.get(f"/sessions/{sid}/events").json()
    assert events and [e["seq"] for e in events] == list(range(1, len(events) + 1))

    # killed and started again: the session, its events and the model are all still there
    killed = time.monotonic()
    harness.podman("kill", api_container)
    wait_until(lambda: not stack.healthy(), 30, "the killed API to stop answering", 0.5)
    exit_code = harness.podman("inspect", "--format", "{{.State.ExitCode}}", api_container).stdout.strip()
    assert exit_code == "137", exit_code  # SIGKILL: no graceful shutdown
    harness.podman("start", api_container)
    wait_until(stack.healthy, 180, "the restarted API container to answer /health", 1)
    stack.timings["api_restart_s"] = time.monotonic() - killed
    api = stack.client()
    assert api.get(f"/sessions/{sid}").json()["status"] == "completed"
    assert [s["id"] for s in api.get("/sessions").json()["items"] if s["id"] == sid] == [sid]
    assert api.get(f"/sessions/{sid}/events").json() == events
    after = api.get("/models", params={"session": sid}).json()
    assert [m["id"] for m in after] == [models[0]["id"]]
    again = api.get(f"/models/{models[0]['id']}/download")
    assert again.status_code == 200 and _zip_contents(again.content) == contents
    replay = WSSWatcher(f"wss://127.0.0.1:{stack.api_port}/ws?token={stack.admin_token}", stack.cert)
    try:
        replay.ws.send(json.dumps({"action": "subscribe", "sessionId": sid, "after": 0}))
        wait_until(lambda: len([m for m in replay.messages if m["event"] != "subscribed"]) >= len(events), 20,
                   "the replay of every event over WSS after the restart")
    finally:
        replay.close()

    # the API container logs JSON: every stdout line of both of its runs (the worker's too)
    for service in ("api", "worker"):
        records = _json_lines(stack.logs(service)[0], service)
        assert len(records) >= 5 and all({"timestamp", "level", "message"} <= set(r) for r in records)
        assert {r.get("service") for r in records} == {"server" if service == "api" else "worker"}
    stack.timings["test_s"] = time.monotonic() - started
