"""`cotrain verify-session` (server database, and offline from `cotrain ledger export`) run as the real
command, and GET /api/v1/rewards/sessions/{id}/proof through the real routes, with the verdicts recorded by the
server's monitor from `verdict` events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from aptos_sdk import ed25519
from sqlalchemy import select, text

from cotrain.chain.ledger import Ledger
from cotrain.chain.orm import BindingProof, LedgerEntryRow, LedgerKind, PeerBinding
from cotrain.chain.service import ChainService
from cotrain.chain.settings import ChainSettings
from cotrain.chain.settlement import limits_from_config, set_reward_pool, settle_session
from cotrain.db import Base, open_database
from cotrain.paths import Layout
from cotrain.server.app import create_app
from cotrain.server.monitor import apply_engine_event
from cotrain.server.orm import TrainingSession
from cotrain.server.platform import Platform
from cotrain.server.settings import Settings
from tests.conftest import free_port

from .round_evidence import CONFIG_TOML, PARAMS, SESSION, round_event
from .test_api import public_session
from .test_proof import A, B, C, build_session

COTRAIN = [sys.executable, "-c", "from cotrain.cli import main; main()"]


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(COTRAIN + list(args), env=env, capture_output=True, text=True, timeout=120)


def test_verify_session_export_and_offline_round_trip(tmp_path: Path):
    key = ed25519.PrivateKey.random()
    env = {**os.environ, "COTRAIN_HOME": str(tmp_path / "home"), "COTRAIN_LEDGER_KEY": key.hex(),
           "DATABASE_URL": f"sqlite:///{tmp_path / 'cotrain.db'}", "COTRAIN_PAYOUT_BACKEND": "local"}
    (tmp_path / "home").mkdir()
    engine, factory = open_database(env["DATABASE_URL"])
    build_session(factory, Ledger(key))

    ok = cli(env, "verify-session", SESSION)
    assert ok.returncode == 0, ok.stderr
    assert f"session {SESSION} OK" in ok.stdout and "3 verified peer-round(s) in 2 judged round(s)" in ok.stdout
    assert "pool 900 APT, paid 0, due 900" in ok.stdout

    exported = tmp_path / "s1.jsonl"
    done = cli(env, "ledger", "export", "--session", SESSION, "--out", str(exported))
    assert done.returncode == 0, done.stderr
    lines = exported.read_text().splitlines()
    assert {json.loads(line)["session_id"] for line in lines} == {SESSION} and len(lines) == 10
    offline = {k: v for k, v in env.items() if k not in ("DATABASE_URL", "COTRAIN_LEDGER_KEY")}
    offline["COTRAIN_HOME"] = str(tmp_path / "elsewhere")  # no database, no key: the file alone
    ok = cli(offline, "verify-session", "--from", str(exported), "--key", str(key.public_key()))
    assert ok.returncode == 0 and f"signed by {key.public_key()}" in ok.stdout, ok.stderr

    # the payout entry edited in the file: p1 paid more than its reward
    payout = next(i for i, line in enumerate(lines) if json.loads(line)["kind"] == LedgerKind.PAYOUT)
    entry = json.loads(lines[payout])
    entry["body"] = entry["body"].replace(f'["{A}",600]', f'["{A}",650]')
    lines[payout] = json.dumps(entry)
    exported.write_text("\n".join(lines) + "\n")
    bad = cli(offline, "verify-session", "--from", str(exported))
    seq = entry["seq"]
    assert bad.returncode == 1 and "does NOT verify" in bad.stderr
    assert f"ledger entry {seq} (payout): was changed" in bad.stderr
    assert f"ledger entry {seq} (payout): pays {A} 650 (its reward: 600)" in bad.stderr

    # the pool edited in the database by someone who has it
    with factory.begin() as db:
        pool = db.scalars(select(LedgerEntryRow).where(LedgerEntryRow.kind == LedgerKind.REWARD_POOL)).one()
        db.execute(text("UPDATE chain_ledger SET body = :body WHERE seq = :seq"),
                   {"body": pool.body.replace("900", "9000"), "seq": pool.seq})
    engine.dispose()
    bad = cli(env, "verify-session", SESSION)
    assert bad.returncode == 1 and f"ledger entry {pool.seq} (reward_pool): was changed" in bad.stderr, bad.stderr


@dataclass
class Served:
    client: httpx.Client
    chain: ChainService


@pytest.fixture
def served(db_factory, tmp_path):
    """The server's whole app (create_app: every router, its error handlers and middleware) on uvicorn, over the
    test's database, with a chain service of the test's own key; its lifespan (workers, DHT) is not started."""
    engine = db_factory.kw["bind"]
    Base.metadata.create_all(engine)
    platform = Platform(Settings(layout=Layout(tmp_path / "home").ensure(), embedded_worker=False,
                                 database_url=engine.url.render_as_string(hide_password=False), start_dht=False))
    platform.chain = ChainService(db_factory, lambda _session_id: None, lambda *_: None,
                                  settings=ChainSettings(network="testnet", chain_id=2),
                                  ledger=Ledger(ed25519.PrivateKey.random()))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(platform), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1") as client:
        yield Served(client, platform.chain)
    server.should_exit = True
    thread.join(5)
    platform.engine.dispose()


def test_the_proof_endpoint_follows_the_session_read_rule(served):
    chain, client = served.chain, served.client
    with chain.factory.begin() as db:
        session = public_session(SESSION)
        session.config_toml = CONFIG_TOML  # the monitor reads the verification params from it
        hidden = public_session("hidden")
        hidden.public = False
        db.add_all([session, hidden])
        set_reward_pool(db, chain.ledger, SESSION, 900, "APT")
        for peer, address in (("p1", A), ("p2", B), ("p3", C)):
            db.add(PeerBinding(session_id=SESSION, peer_id=peer, address=address, proof=BindingProof.PEER_AND_WALLET,
                               created_at=time.time()))
    first = round_event(1, seq=1)
    first["evidence"]["commitments"]["p9"] = {"peer_id": "p9", "round": "one"}  # malformed: dropped
    for event in (first, round_event(2, seq=2)):  # as the monitor applies the session's engine events
        with chain.factory.begin() as db:
            apply_engine_event(db, db.get_one(TrainingSession, SESSION), event, chain)
    with chain.factory.begin() as db:
        settle_session(db, chain.ledger, SESSION, [], limits_from_config(tomllib.loads(CONFIG_TOML)))
        body = json.loads(db.scalars(select(LedgerEntryRow.body).where(LedgerEntryRow.kind == LedgerKind.VERDICT)
                                     .order_by(LedgerEntryRow.seq)).first())
    assert body["params"] == PARAMS.as_dict()  # from the session's config, z from core/validation.py
    assert sorted(body["evidence"]["commitments"]) == ["p1", "p2", "p3"] and body["base_hash"] == first["base_hash"]

    response = client.get(f"/rewards/sessions/{SESSION}/proof")
    assert response.status_code == 200, response.text
    proof = response.json()
    assert proof["ok"] and proof["problems"] == [] and proof["settled"] and proof["verified_rounds"] == 3
    assert {p["peer_id"]: (p["rebuilt_tokens"], p["rebuilt_reward"]) for p in proof["peers"]} == {
        "p1": (128, 600), "p2": (64, 300), "p3": (0, 0), "p4": (0, None)}
    assert client.get("/rewards/sessions/hidden/proof").status_code == 404  # a private session: not to anyone
    with chain.factory.begin() as db:  # p3's failed round 2 turned into a verified one by hand
        entry = db.scalars(select(LedgerEntryRow).where(LedgerEntryRow.kind == LedgerKind.VERDICT)
                           .order_by(LedgerEntryRow.seq.desc())).first()
        db.execute(text("UPDATE chain_ledger SET body = :body WHERE seq = :seq"),
                   {"body": entry.body.replace('"reason":"own_data_fail"', '"reason":"verified"'), "seq": entry.seq})
    proof = client.get(f"/rewards/sessions/{SESSION}/proof").json()
    assert not proof["ok"] and {(p["seq"], p["kind"]) for p in proof["problems"]} >= {(entry.seq, "verdict")}
    assert f"ledger entry {entry.seq} (verdict): was changed: its content no longer matches its hash" in \
        [p["text"] for p in proof["problems"]]
