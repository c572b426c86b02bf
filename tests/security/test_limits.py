"""Limits on input (issue 11), against real `cotrain up` processes over real sockets: request bodies
over 1 MiB get 413 before they are read, sign-in / session creation / WebSocket subscribe are rate
limited (429 with Retry-After), counted in one budget across servers sharing a Redis, WebSocket
messages and subscriptions are bounded, and 404 scans cannot add metric series."""

from __future__ import annotations

import json
import logging
import os
import re
import select
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import event
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from cotrain.db import make_db_factory, make_engine
from cotrain.server.messages import messages_for_all
from cotrain.server.orm import Base, SessionMessage, TrainingSession
from cotrain.server.rate_limits import Limit, RateLimiter
from tests.chain.wallets import Wallet
from tests.conftest import free_port
from tests.security.conftest import ADMIN_TOKEN, ServerProcess, api_token, reference_session

MiB = 1 << 20


def module_server(tmp_path_factory: pytest.TempPathFactory, name: str, **overrides: str) -> ServerProcess:
    home = tmp_path_factory.mktemp(name)
    env = dict(os.environ)
    limits = (k for k in os.environ if k.startswith(("COTRAIN_RATE_", "COTRAIN_WS_")))
    for key in ("DATABASE_URL", "REDIS_URL", *limits):
        env.pop(key, None)
    env.update(COTRAIN_HOME=str(home), COTRAIN_ADMIN_TOKEN=ADMIN_TOKEN, COTRAIN_START_DHT="0",
               COTRAIN_EMBEDDED_WORKER="0", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1",
               **overrides)
    return ServerProcess(home, env).start()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The default limits, no proxy trusted: what `make run` serves."""
    process = module_server(tmp_path_factory, "limits-defaults")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Low limits, and 127.0.0.1 trusted as a proxy: each test plays the proxy and gives its
    callers addresses of their own (X-Forwarded-For), so the tests do not share a budget."""
    process = module_server(tmp_path_factory, "limits-low", COTRAIN_RATE_SIGN_IN="3/minute",
                            COTRAIN_RATE_SESSION_CREATE="2/hour", COTRAIN_RATE_WS_SUBSCRIBE="5/minute",
                            COTRAIN_WS_MAX_SUBSCRIPTIONS="3", COTRAIN_TRUSTED_PROXIES="127.0.0.1")
    yield process
    process.stop()


# ---- request bodies ---------------------------------------------------------------------------

def raw_http(port: int, head: str, chunks: Iterator[bytes] = iter(()), budget: int = 32 * MiB) -> tuple[int, int, str]:
    """Send `head` then `chunks` on a plain socket, stopping as soon as the server answers (or cuts
    the connection, or `budget` bytes were sent); returns (status, body bytes sent, response text)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode())
        try:
            for chunk in chunks:
                if select.select([sock], [], [], 0)[0] or sent >= budget:
                    break  # the server has answered
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = b""
        try:
            while b"\r\n\r\n" not in response or len(response) < response.index(b"\r\n\r\n") + 20:
                data = sock.recv(65536)
                if not data:
                    break
                response += data
        except (ConnectionResetError, TimeoutError):
            pass
    text = response.decode(errors="replace")
    match = re.match(r"HTTP/1\.1 (\d{3})", text)
    assert match, f"no HTTP answer after {sent} body bytes: {text[:200]!r}"
    return int(match.group(1)), sent, text


def chunked(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    piece = b"a" * size
    for _ in range(total // size):
        yield f"{size:x}\r\n".encode() + piece + b"\r\n"
    yield b"0\r\n\r\n"


def post_head(path: str, *headers: str) -> str:
    return "\r\n".join([f"POST /api/v1{path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {ADMIN_TOKEN}",
                        "Content-Type: application/json", *headers, "", ""])


def test_a_2_mib_body_gets_413_with_a_sentence_before_it_is_read(server: ServerProcess) -> None:
    two_mib = b"a" * (2 * MiB)
    with server.client() as admin:
        declared = admin.post("/sessions", content=two_mib, headers={"Content-Type": "application/json"})
        streamed = admin.post("/sessions", content=iter([two_mib[i:i + 65536] for i in range(0, 2 * MiB, 65536)]),
                              headers={"Content-Type": "application/json"})  # chunked: no Content-Length
        assert "content-length" not in streamed.request.headers
        just_under = admin.post("/sessions", content=b"{" + b" " * (MiB - 2) + b"}",
                                headers={"Content-Type": "application/json"})
    for answer in (declared, streamed):
        assert answer.status_code == 413, answer.text
        assert answer.json()["detail"].startswith("The request body is larger than 1 MiB (1048576 bytes)")
    assert just_under.status_code == 422, just_under.text  # read and validated: the limit is not lower than 1 MiB

    # a declared 2 MiB is refused before a byte of the body is sent
    status, sent, text = raw_http(server.port, post_head("/sessions", f"Content-Length: {2 * MiB}"))
    assert (status, sent) == (413, 0) and "connection: close" in text.lower()


def test_a_chunked_body_that_never_ends_is_cut_off_near_the_limit(server: ServerProcess) -> None:
    status, sent, text = raw_http(server.port, post_head("/sessions", "Transfer-Encoding: chunked"),
                                  chunked(64 * MiB))
    assert status == 413 and "larger than 1 MiB" in text
    # the server stopped reading right after the limit; what else was sent sat in socket buffers
    assert sent < 16 * MiB, sent
    print(f"\nchunked body cut off: server answered 413 after the client had sent {sent / MiB:.1f} MiB")

    # lying: a small Content-Length, then a chunked stream (request smuggling shape) is never accepted
    status, _, _ = raw_http(server.port, post_head("/sessions", "Content-Length: 10", "Transfer-Encoding: chunked"),
                            chunked(4 * MiB))
    assert status in (400, 413), status


# ---- metrics labels ---------------------------------------------------------------------------

def series(server: ServerProcess) -> dict[str, set[str]]:
    text = httpx.get(server.url + "/metrics", timeout=30).text
    found: dict[str, set[str]] = {}
    for line in text.splitlines():
        match = re.match(r"(cotrain_http_\w+)\{(.*)\} \S+$", line)  # a route template has braces too
        if match:
            found.setdefault(match.group(1), set()).add(match.group(2))
    return found


# methods the HTTP parser knows (WebDAV and friends) and no route of ours answers
ODD_METHODS = ("PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "SEARCH", "PURGE", "REPORT",
               "TRACE", "LINK", "UNLINK", "SOURCE", "ACL", "BIND", "REBIND", "MKCALENDAR", "SUBSCRIBE", "NOTIFY")


def test_a_scan_of_random_paths_and_methods_adds_at_most_one_series(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        client.get("/no-such-page")  # the one UNMATCHED series may exist already; then nothing may be added
        assert client.get("/api/v1/sessions/no-such-session").status_code == 404  # a route's 404: its template
        before = series(server)
        for _ in range(1000):
            client.get(f"/{uuid.uuid4().hex}/{uuid.uuid4().hex[:6]}")
        after_paths = series(server)
        for method in ODD_METHODS:  # random tokens never reach the app (the HTTP parser answers 400)
            assert client.request(method, f"/api/v1/sessions/{method.lower()}").status_code == 405
        after_methods = series(server)
    for name in ("cotrain_http_requests_total", "cotrain_http_route_requests_total"):
        assert len(after_paths[name] - before[name]) <= 1, after_paths[name] - before[name]
        assert len(after_methods[name] - after_paths[name]) <= 1, after_methods[name] - after_paths[name]
    route_labels = {re.search(r'route="([^"]*)"', s).group(1)
                    for s in after_methods["cotrain_http_route_requests_total"]}
    assert "UNMATCHED" in route_labels and "/api/v1/sessions/{session_id}" in route_labels
    assert all(len(label) < 80 for label in route_labels)
    assert any('method="OTHER"' in s for s in after_methods["cotrain_http_requests_total"])
    print(f"\nmetric series after 1,000 random paths and {len(ODD_METHODS)} odd methods: "
          f"{ {k: len(v) for k, v in after_methods.items()} }")


# ---- WebSocket bounds ------------------------------------------------------------------------

def ws_session(server: ServerProcess) -> str:
    with server.client() as admin:
        created = admin.post("/sessions", json=reference_session(name="watched", autoStart=False, public=True))
        assert created.status_code == 201, created.text
        return created.json()["id"]


def test_a_websocket_message_over_64_kib_is_refused_and_the_connection_closed(server: ServerProcess) -> None:
    sid = ws_session(server)
    with ws_connect(server.ws_url, open_timeout=10, max_size=None) as ws:
        ws.send(json.dumps({"action": "subscribe", "sessionId": sid, "pad": "x" * (100 * 1024)}))
        error = json.loads(ws.recv(10))
        assert error["event"] == "error" and "at most 65536 bytes" in error["data"]["message"], error
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    # past the 1 MiB frame cap uvicorn cuts it off before buffering it, with the same code
    with ws_connect(server.ws_url, open_timeout=10, max_size=None) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.send("x" * (2 * MiB))
            ws.recv(10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    # a normal client on the same server is unaffected
    with ws_connect(server.ws_url, open_timeout=10) as ws:
        ws.send(json.dumps({"action": "subscribe", "sessionId": sid}))
        assert json.loads(ws.recv(10))["event"] == "subscribed"


def received(ws, count: int, timeout: float = 10) -> list[dict]:
    messages = []
    deadline = time.monotonic() + timeout
    while len(messages) < count and time.monotonic() < deadline:
        messages.append(json.loads(ws.recv(max(0.1, deadline - time.monotonic()))))
    return messages


def test_a_websocket_subscribe_flood_is_refused_with_retry_after(limited: ServerProcess) -> None:
    sid = ws_session(limited)
    flooder = {"X-Forwarded-For": "198.51.100.50"}
    with ws_connect(limited.ws_url, open_timeout=10, additional_headers=flooder) as ws:
        for _ in range(20):
            ws.send(json.dumps({"action": "subscribe", "sessionId": sid}))
        answers = received(ws, 20)
    acks = [m for m in answers if m["event"] == "subscribed"]
    refused = [m["data"] for m in answers if m["event"] == "error"]
    assert len(acks) == 5 and len(refused) == 15, answers
    assert all(0 < r["retryAfter"] <= 60 and r["sessionId"] == sid for r in refused)
    assert refused[0]["message"].startswith("Too many WebSocket subscriptions from this address")
    # counted per address: a new connection from it is refused too (its pings still work), others are not
    with ws_connect(limited.ws_url, open_timeout=10, additional_headers=flooder) as ws:
        ws.send(json.dumps({"action": "subscribe", "sessionId": sid}))
        ws.send(json.dumps({"action": "ping"}))
        assert [m["event"] for m in received(ws, 2)] == ["error", "pong"]
    with ws_connect(limited.ws_url, open_timeout=10, additional_headers={"X-Forwarded-For": "198.51.100.51"}) as ws:
        ws.send(json.dumps({"action": "subscribe", "sessionId": sid}))
        assert received(ws, 1)[0]["event"] == "subscribed"


def test_one_connection_follows_a_bounded_number_of_sessions(limited: ServerProcess) -> None:
    sids = [ws_session(limited) for _ in range(4)]
    with ws_connect(limited.ws_url, open_timeout=10, additional_headers={"X-Forwarded-For": "198.51.100.60"}) as ws:
        for sid in sids:
            ws.send(json.dumps({"action": "subscribe", "sessionId": sid}))
        answers = received(ws, 4)
        assert [m["event"] for m in answers] == ["subscribed"] * 3 + ["error"], answers
        assert "already follows 3 sessions" in answers[3]["data"]["message"]
        ws.send(json.dumps({"action": "unsubscribe", "sessionId": sids[0]}))
        ws.send(json.dumps({"action": "subscribe", "sessionId": sids[3]}))
        assert [m["event"] for m in received(ws, 2)] == ["unsubscribed", "subscribed"]


def test_a_replay_of_every_session_reads_a_bounded_number_of_rows(tmp_path: Path) -> None:
    """messages_for_all on a real SQLite database: 50 sessions of 40 messages each (2,000 rows), a
    replay of all of them with a budget of 100 rows loads 100 rows, not 2,000."""
    engine = make_engine(f"sqlite:///{tmp_path / 'replay.db'}")
    Base.metadata.create_all(engine)
    factory = make_db_factory(engine)
    ids = [f"s{s:02d}" for s in range(50)]
    with factory.begin() as db:
        for sid in ids:
            db.add(TrainingSession(id=sid, name=sid, status="completed", public=True, message_seq=40, request={},
                                   config_path="", config_toml="", model_type="llama", model_size="debug",
                                   strategy="ddp"))
        db.flush()
        for seq in range(1, 41):
            for sid in ids:
                db.add(SessionMessage(session_id=sid, seq=seq, event="training.progress", time=float(seq),
                                      data={"sessionId": sid, "seq": seq}))
    loaded = 0

    def on_load(target: SessionMessage, context: object) -> None:
        nonlocal loaded
        loaded += 1

    event.listen(SessionMessage, "load", on_load)
    try:
        with factory.begin() as db:
            replay = messages_for_all(db, dict.fromkeys(ids, 0), 0.0, lambda row: True, limit=100)
    finally:
        event.remove(SessionMessage, "load", on_load)
        engine.dispose()
    assert len(replay) == 100 and loaded <= 100, (len(replay), loaded)
    per_session: dict[str, list[int]] = {}
    for m in replay:
        per_session.setdefault(m["data"]["sessionId"], []).append(m["data"]["seq"])
    for seqs in per_session.values():  # each session's replay is a prefix: a reconnect with after=<last> resumes it
        assert seqs == list(range(1, len(seqs) + 1))


# ---- rate limits ------------------------------------------------------------------------------

def nonce(client: httpx.Client, forwarded_for: str | None = None) -> httpx.Response:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    return client.post("/auth/nonce", json={"address": Wallet.create().address}, headers=headers)


def assert_429(answer: httpx.Response, window_s: int, what: str) -> None:
    assert answer.status_code == 429, answer.text
    retry_after = int(answer.headers["Retry-After"])
    assert 0 < retry_after <= window_s
    detail = answer.json()["detail"]
    assert detail.startswith(f"Too many {what}") and f"Try again in {retry_after} second" in detail, detail


def test_sign_in_gets_429_with_retry_after_at_the_default_limit(server: ServerProcess) -> None:
    """The default (30 a minute per address, nonce and verify each), and no proxy trusted."""
    with server.client(None) as client:
        assert [nonce(client).status_code for _ in range(30)] == [200] * 30
        assert_429(nonce(client), 60, "sign-in attempts from this address")
        # a forged X-Forwarded-For does not buy a new budget: no proxy is trusted by default
        assert_429(nonce(client, forwarded_for="203.0.113.7"), 60, "sign-in attempts")
        assert client.get("/sessions").status_code == 200  # nothing else is limited


def test_sign_in_nonce_and_verify_each_have_a_window(limited: ServerProcess) -> None:
    with limited.client(None) as client:
        assert [nonce(client, "198.51.100.1").status_code for _ in range(3)] == [200, 200, 200]
        assert_429(nonce(client, "198.51.100.1"), 60, "sign-in attempts from this address")
        # verify has its own window of the same size (one sign-in costs one nonce and one verify)
        verify = [client.post("/auth/verify", json={}, headers={"X-Forwarded-For": "198.51.100.1"}) for _ in range(4)]
        assert [v.status_code for v in verify[:3]] == [422, 422, 422]
        assert_429(verify[3], 60, "sign-in attempts")


def test_forwarded_for_is_believed_from_a_trusted_proxy(limited: ServerProcess) -> None:
    with limited.client(None) as client:  # the test plays the proxy on 127.0.0.1
        assert [nonce(client, "198.51.100.2").status_code for _ in range(4)] == [200, 200, 200, 429]
        assert nonce(client, "198.51.100.3").status_code == 200  # another client behind the proxy
        # IPv6 is counted per /64: one subscriber's block
        assert [nonce(client, f"2001:db8:0:7::{i}").status_code for i in range(1, 5)] == [200, 200, 200, 429]
        assert nonce(client, "2001:db8:0:8::1").status_code == 200


def test_session_create_gets_429_per_address_and_per_member(limited: ServerProcess) -> None:
    alice, bob = api_token(limited, "member", "alice"), api_token(limited, "member", "bob")

    def create(token: str, address: str) -> httpx.Response:
        with limited.client(token) as client:
            return client.post("/sessions", json=reference_session(name="limited", autoStart=False),
                               headers={"X-Forwarded-For": address})

    assert [create(alice, "198.51.100.10").status_code for _ in range(2)] == [201, 201]
    assert_429(create(alice, "198.51.100.11"), 3600, "new sessions from this account")  # her budget, anywhere
    assert_429(create(bob, "198.51.100.10"), 3600, "new sessions from this address")  # her address's budget
    assert create(bob, "198.51.100.12").status_code == 201
    assert create(ADMIN_TOKEN, "198.51.100.10").status_code == 201  # the operator is not counted


def test_two_servers_on_one_redis_share_one_budget(servers, redis_url, tmp_path: Path) -> None:
    shared = {"REDIS_URL": redis_url, "COTRAIN_RATE_SIGN_IN": "4/minute", "COTRAIN_EMBEDDED_WORKER": "0"}
    first = servers(**shared)
    second = servers(**shared, COTRAIN_HOME=str(tmp_path / "second-home"))  # its own database, same Redis
    with first.client(None) as a, second.client(None) as b:
        assert [nonce(a).status_code, nonce(b).status_code, nonce(a).status_code, nonce(b).status_code] == [200] * 4
        assert_429(nonce(b), 60, "sign-in attempts")
        assert_429(nonce(a), 60, "sign-in attempts")
    import redis

    keys = redis.Redis.from_url(redis_url).keys(first.env["COTRAIN_RATE_LIMIT_NAMESPACE"] + ":limits:*")
    assert keys, "the counts are in Redis, under this deployment's namespace"


class SilentServer:
    """A TCP server that accepts and never answers: a Redis that hangs."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.clients: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        try:
            while True:
                self.clients.append(self.sock.accept()[0])
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
        for client in self.clients:
            client.close()


@pytest.mark.parametrize("outage", ["refused", "hung"])
def test_a_redis_outage_fails_open_to_counting_in_process(outage: str, caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    silent = SilentServer() if outage == "hung" else None
    port = silent.port if silent else free_port()
    limiter = RateLimiter({Limit.SIGN_IN: "3/minute"}, redis_url=f"redis://127.0.0.1:{port}/0", namespace="t")

    async def run() -> tuple[list[bool], float]:
        start = time.perf_counter()
        answers = [await limiter.check(Limit.SIGN_IN, "192.0.2.1") is None for _ in range(5)]
        return answers, time.perf_counter() - start

    with caplog.at_level(logging.WARNING, logger="cotrain.server.rate_limits"):
        answers, seconds = asyncio.run(run())
    if silent:
        silent.close()
    assert answers == [True, True, True, False, False]  # never an exception; still limited, in process
    assert seconds < 2.0  # one timeout, then no more waiting on Redis for a while
    assert "Redis did not answer" in caplog.text and "counting in this process alone" in caplog.text
