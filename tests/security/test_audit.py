"""The audit log against real servers and real databases (SQLite and the machine's PostgreSQL):
requests leave rows with the right actor, role, action, target, outcome, address and request id, and
a JSON line each in logs/system/audit.log; only admins read it; `cotrain audit verify` passes on the
intact chain and names the row after one is edited or deleted in the database; concurrent appends
from separate "replicas" never fork the chain."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from cotrain.db import make_engine, normalize_url, run_migrations, sqlite_url
from cotrain.server.audit import AuditLog
from tests.chain.wallets import Wallet
from tests.conftest import wait_until
from tests.security.conftest import ADMIN_TOKEN, ServerProcess, api_token, wallet_sign_in

COTRAIN = str(Path(sys.executable).with_name("cotrain"))


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, cotrain_home: Path) -> str:
    """The database URL a test's server uses: the SQLite file under COTRAIN_HOME, or a fresh
    PostgreSQL database."""
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url")
    return sqlite_url(cotrain_home / "cotrain.db")


def _cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """A `cotrain` command on the server's machine: its COTRAIN_HOME and DATABASE_URL."""
    return subprocess.run([COTRAIN, *args], env=server.env, capture_output=True, text=True, timeout=120)


def _entries(server: ServerProcess) -> list[dict[str, Any]]:
    with server.client() as admin:
        answer = admin.get("/audit", params={"limit": 500})
        assert answer.status_code == 200, answer.text
        return answer.json()["items"]


def _wait_for(server: ServerProcess, request_ids: set[str]) -> dict[str, dict[str, Any]]:
    """The entries of these request ids, once all are written (the write follows the response)."""
    def found() -> dict[str, dict[str, Any]] | None:
        by_id = {e["requestId"]: e for e in _entries(server)}
        return by_id if request_ids <= by_id.keys() else None

    return wait_until(found, 20, f"audit entries for {sorted(request_ids)}")


def _sql(url: str, statement: str, **params: Any) -> int:
    engine = create_engine(normalize_url(url))
    try:
        with engine.begin() as conn:
            return conn.execute(text(statement), params).rowcount
    finally:
        engine.dispose()


def test_requests_are_recorded_and_verify_catches_an_edited_or_deleted_row(
        servers: Callable[..., ServerProcess], database: str) -> None:
    overrides = {"DATABASE_URL": database} if database.startswith("postgresql") else {}
    server = servers(COTRAIN_RATE_SIGN_IN="4/minute", **overrides)
    member = api_token(server, "member", name="auditee")
    with server.client() as admin:
        member_id = admin.get("/auth/me", headers={"Authorization": f"Bearer {member}"}).json()["id"]
        admin_id = admin.get("/auth/me").json()["id"]

        created = admin.post("/sessions", json={"name": "audited", "autoStart": False},
                             headers={"X-Request-ID": "req-create-1"})
        assert created.status_code == 201, created.text
        assert created.headers["x-request-id"] == "req-create-1"
        session_id = created.json()["id"]
        # a request id that is not a sane short token is replaced, and the new one echoed
        odd = admin.get("/sessions", headers={"X-Request-ID": "not ok; <script>"})
        assert odd.headers["x-request-id"] != "not ok; <script>" and len(odd.headers["x-request-id"]) == 32

    with server.client(member) as client:
        pool = client.post("/sessions", json={"name": "pool", "autoStart": False,
                                              "rewardPool": {"amount": 10**12}}, headers={"X-Request-ID": "req-pool-1"})
        assert pool.status_code == 403, pool.text
        peek = client.get("/audit", headers={"X-Request-ID": "req-peek-1"})
        assert peek.status_code == 403, peek.text
        assert client.get("/audit/verify").status_code == 403

    wallet_token, wallet = wallet_sign_in(server)
    stranger = Wallet.create()
    with httpx.Client(base_url=server.url + "/api/v1", timeout=30) as anon:
        challenge = anon.post("/auth/nonce", json={"address": stranger.address}).json()
        forged = stranger.sign_message(message=challenge["message"] + " (changed)", nonce=challenge["nonce"],
                                       application=challenge["application"], chain_id=challenge["chainId"])
        refused = anon.post("/auth/verify", json={"address": stranger.address, "publicKey": stranger.public_key,
                                                  **forged}, headers={"X-Request-ID": "req-signin-bad"})
        assert refused.status_code == 401, refused.text
        # sign-in is limited to 4 a minute per address: the nonces of both sign-ins and two more, then 429
        statuses = [anon.post("/auth/nonce", json={"address": stranger.address},
                              headers={"X-Request-ID": f"req-nonce-{i}"}).status_code for i in range(3)]
        assert statuses[-1] == 429, statuses

    rows = _wait_for(server, {"req-create-1", "req-pool-1", "req-peek-1", "req-signin-bad", "req-nonce-2"})
    create = rows["req-create-1"]
    assert (create["actor"], create["role"], create["action"], create["target"], create["outcome"]) == (
        f"token:{admin_id}", "admin", "session.create", session_id, "ok")
    assert create["clientIp"] == "127.0.0.1"
    pool_row = rows["req-pool-1"]
    assert (pool_row["actor"], pool_row["role"], pool_row["action"], pool_row["outcome"]) == (
        f"token:{member_id}", "member", "session.create", "refused")
    assert pool_row["detail"]["httpStatus"] == 403 and pool_row["detail"]["rewardPool"] == {"amount": 10**12}
    assert "reward pool" in pool_row["detail"]["reason"]
    peek_row = rows["req-peek-1"]
    assert (peek_row["actor"], peek_row["action"], peek_row["outcome"]) == (f"token:{member_id}", "audit.read",
                                                                            "refused")
    bad = rows["req-signin-bad"]
    assert (bad["actor"], bad["role"], bad["action"], bad["target"], bad["outcome"]) == (
        "anonymous", "anonymous", "auth.sign_in", stranger.address, "refused")
    assert bad["detail"].get("reason")
    limited = rows["req-nonce-2"]
    assert (limited["action"], limited["outcome"], limited["detail"]["httpStatus"]) == ("auth.nonce", "refused", 429)
    assert int(limited["detail"]["retryAfter"]) >= 1
    signed_in = [e for e in _entries(server) if e["action"] == "auth.sign_in" and e["outcome"] == "ok"]
    assert [(e["actor"], e["role"], e["target"]) for e in signed_in] == [
        (f"wallet:{wallet.address}", "member", wallet.address)]

    # every row is also a JSON line in logs/system/audit.log, with the same hash; no secret anywhere
    log_text = (server.home / "logs" / "system" / "audit.log").read_text()
    lines = {line["request_id"]: line for line in map(json.loads, log_text.splitlines())}
    for request_id, row in rows.items():
        if request_id.startswith("req-"):
            assert lines[request_id]["entry_hash"] == row["entryHash"]
    everything = log_text + json.dumps(_entries(server))
    for secret in (member, wallet_token, ADMIN_TOKEN, forged["signature"]):
        assert secret not in everything

    # the chain is intact ...
    verified = _cli(server, "audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith(f"{len(_entries(server))} entries, chain intact")
    with server.client() as admin:
        assert admin.get("/audit/verify").json()["ok"] is True
        listed = _cli(server, "audit", "--action", "session.*", "--json")
        assert listed.returncode == 0, listed.stderr
        assert {json.loads(line)["requestId"] for line in listed.stdout.splitlines()} >= {"req-create-1", "req-pool-1"}

    # ... until a row is edited in the database: the refusal made to look like a success
    url = server.env.get("DATABASE_URL") or sqlite_url(server.home / "cotrain.db")
    assert _sql(url, "UPDATE audit_log SET outcome = 'ok' WHERE request_id = 'req-pool-1'") == 1
    edited = _cli(server, "audit", "verify")
    assert edited.returncode == 1
    assert f"the first bad entry is {pool_row['id']}: entry {pool_row['id']} (session.create" in edited.stderr
    assert "was changed" in edited.stderr
    with server.client() as admin:
        report = admin.get("/audit/verify").json()
        assert (report["ok"], report["firstBad"]) == (False, pool_row["id"])
    _sql(url, "UPDATE audit_log SET outcome = 'refused' WHERE request_id = 'req-pool-1'")
    with server.client() as admin:  # the check is exact: put back, intact again
        assert admin.get("/audit/verify").json()["ok"] is True

    # ... or deleted
    assert _sql(url, "DELETE FROM audit_log WHERE id = :id", id=create["id"]) == 1
    deleted = _cli(server, "audit", "verify")
    assert deleted.returncode == 1
    assert f"the first bad entry is {create['id']}: entry {create['id']} is missing (deleted)" in deleted.stderr

    # the newest row deleted leaves the chain whole, but audit.log still has it
    newest = max(e["id"] for e in _entries(server))
    _sql(url, "DELETE FROM audit_log WHERE id = :id", id=newest)
    with server.client() as admin:
        problems = admin.get("/audit/verify").json()["problems"]
    assert any(f"entry {newest} of audit.log is missing from the database" in p for p in problems), problems


def test_a_private_session_read_refused_by_the_read_rule_is_recorded(servers: Callable[..., ServerProcess]) -> None:
    server = servers()
    member = api_token(server, "member", name="curious")
    with server.client() as admin:
        private = admin.post("/sessions", json={"name": "secret", "autoStart": False, "public": False}).json()["id"]
    with server.client(member) as client:
        assert client.get(f"/sessions/{private}", headers={"X-Request-ID": "req-hidden"}).status_code == 404
        assert client.get("/sessions/no-such-session", headers={"X-Request-ID": "req-missing"}).status_code == 404
        assert client.get(f"/sessions/{private}", headers={"X-Request-ID": "req-hidden-2"}).status_code == 404
    rows = _wait_for(server, {"req-hidden", "req-hidden-2"})
    assert (rows["req-hidden"]["action"], rows["req-hidden"]["target"], rows["req-hidden"]["outcome"]) == (
        "session.read", private, "refused")
    assert "req-missing" not in rows  # a plain miss is not a refusal, and reads are not recorded otherwise


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_replicas_appending_at_once_keep_one_chain(backend: str, request: pytest.FixtureRequest,
                                                       tmp_path: Path) -> None:
    """Two threads, each with its own engine and its own in-process lock (as two API replicas have),
    append 50 entries each: only the database's lock serialises them, and the chain stays whole."""
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else sqlite_url(tmp_path / "audit.db")
    run_migrations(make_engine(url))
    logs = []
    for name in ("a", "b"):
        log = AuditLog(make_engine(url), tmp_path / f"audit-{name}.log")
        log._lock = threading.Lock()  # this replica's own lock: the two do not share one
        logs.append(log)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def append(log: AuditLog, name: str) -> None:
        try:
            barrier.wait()
            for i in range(50):
                log.record("test.append", actor=f"replica:{name}", role="admin", target=str(i))
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=append, args=(log, name)) for log, name in zip(logs, "ab", strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    report = AuditLog(make_engine(url), copy=False).verify()
    assert (report.ok, report.entries, report.problems) == (True, 100, [])
    rows, total = logs[0].query(limit=500)
    assert total == 100 and sorted(r.id for r in rows) == list(range(1, 101))
    assert {r.actor for r in rows} == {"replica:a", "replica:b"}
    # each replica's copy holds exactly its own lines; together, the whole chain
    copies = [json.loads(line) for name in "ab" for line in (tmp_path / f"audit-{name}.log").read_text().splitlines()]
    assert sorted(c["id"] for c in copies) == list(range(1, 101))
    interleaved = [r.actor for r in sorted(rows, key=lambda r: r.id)]
    assert any(a != b for a, b in zip(interleaved, interleaved[1:], strict=False))


def test_ledger_verify_on_a_fresh_home_says_the_ledger_is_empty(cotrain_home: Path) -> None:
    env = {**os.environ, "COTRAIN_HOME": str(cotrain_home)}
    for key in ("DATABASE_URL", "COTRAIN_LEDGER_KEY"):
        env.pop(key, None)
    fresh = subprocess.run([COTRAIN, "ledger", "verify"], env=env, capture_output=True, text=True, timeout=120)
    assert (fresh.returncode, fresh.stderr) == (0, "")
    assert "ledger OK: empty" in fresh.stdout
    assert not (cotrain_home / "keys" / "ledger.key").exists()  # checking created no key
    run_migrations(make_engine(sqlite_url(cotrain_home / "cotrain.db")))  # a database, still no entry
    empty = subprocess.run([COTRAIN, "ledger", "verify"], env=env, capture_output=True, text=True, timeout=120)
    assert (empty.returncode, empty.stdout.strip()) == (0, "ledger OK: empty (no entries yet)")


def test_the_ledger_hash_is_the_same_after_moving_it_to_hashchain() -> None:
    """The ledger's entry hash now comes from cotrain.hashchain; it must equal the aptos-sdk BCS
    serialisation it was defined with, or every existing ledger would fail to verify."""
    import hashlib

    from aptos_sdk.bcs import Serializer

    from cotrain.chain.ledger import entry_hash

    def before(seq: int, kind: str, session_id: str, body: str, created: float, prev: str) -> str:
        ser = Serializer()
        ser.u64(seq)
        ser.str(kind)
        ser.str(session_id)
        ser.str(body)
        ser.u64(round(created * 1_000_000))
        ser.fixed_bytes(bytes.fromhex(prev))
        return hashlib.sha3_256(hashlib.sha3_256(b"COTRAIN::LedgerEntry").digest() + ser.output()).hexdigest()

    for i, body in enumerate(["{}", '{"a":"' + "x" * 300 + '"}', '{"name":"训练 ✓"}']):
        args = (i + 1, "reward_pool", f"s{i}", body, 1_750_000_000.123456 + i, hashlib.sha3_256(bytes([i])).hexdigest())
        assert entry_hash(*args) == before(*args)
