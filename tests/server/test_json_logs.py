"""COTRAIN_LOG_FORMAT=json (issue 14, logs): a real `cotrain up` writes one JSON object a line to stdout
and to COTRAIN_HOME/logs/system/server.log, uvicorn's access lines included, with the request id, the
session id and the actor of the request, and no token anywhere; `cotrain worker` too; a bad value is
one sentence before anything starts."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from cotrain.server import request_context
from cotrain.server.logging_setup import JsonFormatter
from tests.conftest import terminate
from tests.server.conftest import ADMIN_TOKEN, free_port, reference_session, wait_until

COTRAIN = str(Path(sys.executable).with_name("cotrain"))
FIELDS = ("timestamp", "level", "message", "logger", "module", "function", "line")
QUERY_SECRET = "qs_" + uuid.uuid4().hex  # a made-up token in a query string: must be redacted like a real one


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("DATABASE_URL", "REDIS_URL"):
        env.pop(key, None)
    env.update(COTRAIN_HOME=str(home), COTRAIN_ADMIN_TOKEN=ADMIN_TOKEN, COTRAIN_START_DHT="0",
               COTRAIN_EMBEDDED_WORKER="0", COTRAIN_LOG_FORMAT="json", PYTHONUNBUFFERED="1",
               HF_HUB_OFFLINE="1", COTRAIN_RATE_LIMIT_NAMESPACE="test-" + uuid.uuid4().hex[:12])
    env.update(extra)
    return env


def _json_lines(text: str, where: str) -> list[dict[str, Any]]:
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"{where} line {number} is not JSON: {line!r}") from None
        assert isinstance(entry, dict), f"{where} line {number} is not an object: {line!r}"
        missing = [name for name in FIELDS if name not in entry]
        assert not missing, f"{where} line {number} lacks {missing}: {line!r}"
        stamp = datetime.fromisoformat(entry["timestamp"])
        assert stamp.utcoffset() == timedelta(0), entry["timestamp"]  # UTC, and says so
        assert abs((datetime.now(UTC) - stamp).total_seconds()) < 600
        entries.append(entry)
    assert entries, f"{where} is empty"
    return entries


class Served:
    """What the module's one server left behind: its responses and, once stopped, its logs."""

    def __init__(self) -> None:
        self.session_id = ""
        self.sent_id = "req-" + uuid.uuid4().hex[:12]
        self.generated_id = ""
        self.ws_messages: list[dict[str, Any]] = []
        self.stdout: list[dict[str, Any]] = []
        self.file: list[dict[str, Any]] = []
        self.raw = ""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("json-logs") / "home"
    port = free_port()
    out, err = home.parent / "stdout.txt", home.parent / "stderr.txt"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen([COTRAIN, "up", "--port", str(port), "--api-only", "--log-level", "info"],
                                env=_env(home), stdout=stdout, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    result = Served()
    try:
        def healthy() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"cotrain up exited with {proc.returncode}: {err.read_text()[-3000:]}")
            try:
                return httpx.get(url + "/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 60, "cotrain up")
        api = httpx.Client(base_url=url + "/api/v1", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
        created = api.post("/sessions", json=reference_session(name="json logs"))
        assert created.status_code == 201, created.text
        result.session_id = created.json()["id"]
        read = api.get(f"/sessions/{result.session_id}", headers={"X-Request-ID": result.sent_id})
        assert read.status_code == 200 and read.headers["x-request-id"] == result.sent_id
        plain = httpx.get(f"{url}/health?token={QUERY_SECRET}", timeout=10)
        result.generated_id = plain.headers["x-request-id"]
        assert result.generated_id and result.generated_id != result.sent_id
        with ws_connect(f"ws://127.0.0.1:{port}/ws?token={ADMIN_TOKEN}", open_timeout=10) as ws:
            ws.send(json.dumps({"action": "subscribe", "sessionId": result.session_id}))
            result.ws_messages.append(json.loads(ws.recv(timeout=10)))
    finally:
        terminate(proc)
    result.raw = out.read_text() + (home / "logs" / "system" / "server.log").read_text() + err.read_text()
    result.stdout = _json_lines(out.read_text(), "stdout")
    result.file = _json_lines((home / "logs" / "system" / "server.log").read_text(), "logs/system/server.log")
    yield result


def _access(entries: list[dict[str, Any]], path_part: str) -> list[dict[str, Any]]:
    return [e for e in entries if e["logger"] == "uvicorn.access" and path_part in e["message"]]


def test_every_line_on_stdout_and_in_the_file_is_one_json_object(served: Served) -> None:
    for entries in (served.stdout, served.file):
        assert any("CoTrain server on http://127.0.0.1:" in e["message"] for e in entries)
        assert any(e["logger"] == "uvicorn.error" and "Application startup complete" in e["message"] for e in entries)
        assert {e["level"] for e in entries} <= {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
        assert all(isinstance(e["line"], int) and e["line"] > 0 for e in entries)
    assert [e["message"] for e in served.stdout] == [e["message"] for e in served.file]


def test_the_access_line_carries_the_request_id_the_session_and_the_actor(served: Served) -> None:
    assert served.ws_messages[0]["event"] == "subscribed", served.ws_messages
    for entries in (served.stdout, served.file):
        [read] = _access(entries, f"GET /api/v1/sessions/{served.session_id} ")
        assert read["request_id"] == served.sent_id
        assert read["session_id"] == served.session_id
        assert read["actor"].startswith("token:")
        assert (read["method"], read["path"], read["status"]) == ("GET", f"/api/v1/sessions/{served.session_id}", 200)
        [create] = _access(entries, "POST /api/v1/sessions ")
        assert create["status"] == 201 and create["actor"] == read["actor"] and "session_id" not in create
        [health] = _access(entries, "/health?token=")
        assert health["request_id"] == served.generated_id  # the id the response echoed
        assert "actor" not in health


def test_no_token_reaches_the_logs(served: Served) -> None:
    assert QUERY_SECRET not in served.raw and ADMIN_TOKEN not in served.raw
    for entries in (served.stdout, served.file):
        [health] = _access(entries, "/health?token=")
        assert health["path"] == "/health?token=***"
        websocket = [e for e in entries if "WebSocket /ws?token=" in e["message"]]
        assert websocket and all("/ws?token=***" in e["message"] for e in websocket)
        assert all(e["actor"].startswith("token:") and e["request_id"] for e in websocket), websocket


def test_an_exception_becomes_an_exc_info_field_and_the_actor_set_in_a_thread_is_kept() -> None:
    formatter = JsonFormatter("server")
    context = request_context.RequestContext("r-1", session_id="s-1")
    token = request_context._current.set(context)
    try:
        import contextvars

        worker = threading.Thread(target=contextvars.copy_context().run, args=(request_context.note_actor, "token:7"))
        worker.start()
        worker.join()  # FastAPI's thread pool: a copied context, the same RequestContext
        try:
            raise RuntimeError("boom at /ws?token=ct_leak")
        except RuntimeError:
            record = logging.getLogger("cotrain.test").makeRecord(
                "cotrain.test", logging.ERROR, __file__, 1, "failed for %s", ("/x?token=ct_leak2",), sys.exc_info())
        entry = json.loads(formatter.format(record))
    finally:
        request_context._current.reset(token)
    assert (entry["request_id"], entry["session_id"], entry["actor"]) == ("r-1", "s-1", "token:7")
    assert entry["message"] == "failed for /x?token=***"
    assert "RuntimeError: boom at /ws?token=***" in entry["exc_info"] and "Traceback" in entry["exc_info"]
    assert "ct_leak" not in json.dumps(entry)


@pytest.mark.parametrize("command", ["up", "worker"])
def test_a_bad_log_format_stops_the_start_with_one_sentence(tmp_path: Path, command: str) -> None:
    done = subprocess.run([COTRAIN, command], env=_env(tmp_path / "home", COTRAIN_LOG_FORMAT="yaml"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "COTRAIN_LOG_FORMAT='yaml'" in lines[0] and "json or text" in lines[0], done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_the_worker_logs_json_to_stdout_and_worker_log(tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = tmp_path / "stdout.txt"
    with out.open("wb") as stdout:
        proc = subprocess.Popen([COTRAIN, "worker"], env=_env(home), stdout=stdout, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: b"waiting for sessions" in out.read_bytes(), 60, "the worker to start")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    for where, text in (("stdout", out.read_text()), ("worker.log", (home / "logs/system/worker.log").read_text())):
        entries = _json_lines(text, where)
        [waiting] = [e for e in entries if "is waiting for sessions" in e["message"]]
        assert waiting["level"] == "INFO" and "request_id" not in waiting
