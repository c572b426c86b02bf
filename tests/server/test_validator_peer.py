"""The server's own engine peer validates a rewarded DiLoCo session (issue 12): the executor makes its identity
before launch, records its peer id on the session row, sets VALIDATE in its environment (only for rewarded DiLoCo
sessions), and the join info hands the peer id to volunteers, whose `cotrain join` config trusts it. Real server
processes and engines (started, read, then cancelled: no training is waited for)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect

from cotrain.cli.errors import UserError
from cotrain.cli.p2p_cmd import join_config
from cotrain.db import MIGRATIONS_DIR, make_engine, run_migrations
from cotrain.p2p.identity import load_identity
from cotrain.p2p.peer_keys import peer_id_of
from cotrain.p2p.server_join import volunteer_config
from cotrain.paths import Layout
from cotrain.server.validator_peer import VALIDATE_ENV
from tests.server.conftest import reference_session, wait_until

COLUMN = "validator_peer_id"


def columns(engine) -> set[str]:
    return {c["name"] for c in inspect(engine).get_columns("training_sessions")}


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_migration_adds_and_removes_the_column(request, tmp_path, database):
    url = request.getfixturevalue("pg_url") if database == "postgresql" else f"sqlite:///{tmp_path / 'm.db'}"
    engine = make_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    try:
        run_migrations(engine)
        assert COLUMN in columns(engine)
        with engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.downgrade(cfg, "0007_node_samples")  # to just before 0008, whatever came after it
        assert COLUMN not in columns(engine)
        assert "node_samples" in inspect(engine).get_table_names()  # 0007 is still there
        run_migrations(engine)
        assert COLUMN in columns(engine)
    finally:
        engine.dispose()


def test_volunteers_never_inherit_validate_or_validators():
    config = {"distributed": {"strategy": "diloco", "diloco": {"inner_steps": 4, "validate": True,
                                                                "validators": ["QmSomeoneElse"]}}}
    kept, dropped = volunteer_config(config)
    assert kept == {"distributed": {"strategy": "diloco", "diloco": {"inner_steps": 4}}}
    assert sorted(dropped) == ["distributed.diloco.validate", "distributed.diloco.validators"]


def engine_environ(home: Path, sid: str) -> dict[str, str]:
    """The environment of the running engine of session `sid` (its command line names its config)."""
    def pid() -> int | None:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "cotrain.core.train" in cmd and str(home) in cmd and f"{sid}.toml" in cmd:
                return int(proc.name)
        return None

    found = wait_until(pid, 120, f"the engine of session {sid}")
    text = Path(f"/proc/{found}/environ").read_text()
    return dict(entry.split("=", 1) for entry in text.split("\0") if entry)


def row_validator(home: Path, sid: str) -> str | None:
    with sqlite3.connect(home / "cotrain.db") as db:
        return db.execute(f"SELECT {COLUMN} FROM training_sessions WHERE id = ?", (sid,)).fetchone()[0]


def diloco_session(**changes) -> dict:
    body = reference_session(**changes)
    body["distributedConfig"].update(strategy="diloco", innerSteps=4)
    body["trainingConfig"].update(maxSteps=100_000)  # still running when it is read; cancelled after
    body["checkpointConfig"] = {"interval": 1000}  # a multiple of innerSteps
    return body


@pytest.mark.slow
def test_the_server_peer_validates_rewarded_diloco_sessions_only(servers, cotrain_home):
    server = servers(COTRAIN_START_DHT="1", COTRAIN_DISTRIBUTED_DILOCO_HOST_MADDRS='["/ip4/127.0.0.1/tcp/0"]',
                     OMP_NUM_THREADS="1")
    api = server.client()  # the admin: may open a pool of any size
    created = api.post("/sessions", json=diloco_session(autoStart=False, rewardPool={"amount": 1000}))
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    assert api.get(f"/sessions/{sid}/join").json()["validators"] == []  # a draft: no peer yet
    assert row_validator(cotrain_home, sid) is None

    assert api.post(f"/sessions/{sid}/start").status_code == 200
    environ = engine_environ(cotrain_home, sid)
    assert environ[VALIDATE_ENV] == "true"
    identity = cotrain_home / "models" / "checkpoints" / sid / "p2p-identity.key"
    peer = peer_id_of(load_identity(identity).get_public_key())
    assert row_validator(cotrain_home, sid) == peer
    # the engine is that peer: it found the identity file where the executor made it
    stderr = Layout(cotrain_home).session_logs(sid) / "stderr.log"
    wait_until(lambda: f"diloco peer {peer} of session {sid}" in stderr.read_text(errors="replace"), 120,
               "the engine's DHT peer to start")
    join = api.get(f"/sessions/{sid}/join").json()
    assert join["validators"] == [peer] and join["initialPeers"]

    # a volunteer joining through the server trusts that peer; its own --set wins; --validate makes it judge too
    cfg = join_config(sid, server=server.url)
    assert cfg.distributed.diloco.validators == [peer] and cfg.distributed.diloco.validate is False
    assert cfg.distributed.diloco.initial_peers[:len(join["initialPeers"])] == join["initialPeers"]
    own = join_config(sid, server=server.url, set_=['distributed.diloco.validators=["QmMine"]'], validate=True)
    assert own.distributed.diloco.validators == ["QmMine"] and own.distributed.diloco.validate is True
    with pytest.raises(UserError, match="--token is for --server"):
        join_config(sid, token="t")
    assert api.post(f"/sessions/{sid}/cancel").status_code == 200
    wait_until(lambda: api.get(f"/sessions/{sid}").json()["status"] == "cancelled", 60, "the cancel")

    # a DiLoCo session without a pool: its engine does not validate, and volunteers are given no validator
    plain = api.post("/sessions", json=diloco_session()).json()["id"]
    assert VALIDATE_ENV not in engine_environ(cotrain_home, plain)
    assert row_validator(cotrain_home, plain) is None
    assert api.get(f"/sessions/{plain}/join").json()["validators"] == []
    assert join_config(plain, server=server.url).distributed.diloco.validators == []
    assert api.post(f"/sessions/{plain}/cancel").status_code == 200
