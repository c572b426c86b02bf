"""`cotrain backup` and `cotrain restore` for real: a backup taken while a real `cotrain up` trains restores
into a fresh COTRAIN_HOME whose server lists the sessions, their events and model, and whose ledger
verifies; PostgreSQL through pg_dump/pg_restore between two databases, row for row; a tampered or
hostile backup is refused with one sentence and nothing is written."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.server.conftest import PG_ADMIN_URL, ServerProcess, engine_pids, reference_session, wait_until

COTRAIN = str(Path(sys.executable).with_name("cotrain"))


def cotrain(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([COTRAIN, *args], env=env, capture_output=True, text=True, timeout=120)


def home_env(base: dict[str, str], home: Path, **extra: str) -> dict[str, str]:
    env = {**base, "COTRAIN_HOME": str(home), **extra}
    env.pop("COTRAIN_LEDGER_KEY", None)
    return env


def one_sentence_error(done: subprocess.CompletedProcess[str]) -> str:
    """The failure's message: exit 2, `error: ...`, no traceback."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr, done.stderr
    return done.stderr


def finished(api, sid: str) -> dict | None:
    session = api.get(f"/sessions/{sid}").json()
    return session if session["status"] in ("completed", "failed", "cancelled") else None


@pytest.mark.slow
def test_a_backup_taken_mid_run_restores_on_a_fresh_home(servers, server_env, cotrain_home, tmp_path):
    server = servers()
    api = server.client()
    first = api.post("/sessions", json=reference_session(rewardPool={"amount": 5_000_000}))
    assert first.status_code == 201, first.text
    done_sid = first.json()["id"]
    done = wait_until(lambda: finished(api, done_sid), 240, "the first session to finish")
    assert done["status"] == "completed", done["error"]
    body = reference_session()
    body["trainingConfig"]["maxSteps"] = 2000
    running_sid = api.post("/sessions", json=body).json()["id"]
    wait_until(lambda: [m for m in api.get(f"/sessions/{running_sid}/events").json()
                        if m["event"] == "training.checkpoint"], 180, "the running session's first checkpoint")

    backup = tmp_path / "backup"
    taken = cotrain(server.env, "backup", str(backup))
    assert taken.returncode == 0, taken.stderr
    assert api.get(f"/sessions/{running_sid}").json()["status"] == "running"  # the backup was taken mid-run
    source_events = {sid: api.get(f"/sessions/{sid}/events").json() for sid in (done_sid, running_sid)}
    server.stop()
    for pid in engine_pids(cotrain_home):
        os.killpg(pid, signal.SIGKILL)

    manifest = json.loads((backup / "manifest.json").read_text())
    assert manifest["database"]["kind"] == "sqlite" and manifest["session_files"]["copied"]
    assert manifest["ledger_key"]["source"] == "file" and len(manifest["alembic_revisions"]) == 2
    indexed = {f["path"] for f in manifest["session_files"]["files"]}
    assert any(p.startswith(f"models/final/{done_sid}") for p in indexed)
    assert any(p.startswith(f"models/checkpoints/{running_sid}/") for p in indexed)
    assert f"logs/training/{running_sid}/events.jsonl" in indexed
    assert stat.S_IMODE((backup / "keys" / "ledger.key").stat().st_mode) == 0o600
    assert (backup / "keys" / "ledger.key").read_text() not in taken.stdout + taken.stderr

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    env = home_env(server_env, fresh)
    restored = cotrain(env, "restore", str(backup))
    assert restored.returncode == 0, restored.stderr
    key = fresh / "keys" / "ledger.key"
    assert key.read_bytes() == (cotrain_home / "keys" / "ledger.key").read_bytes()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    verified = cotrain(env, "ledger", "verify")
    assert verified.returncode == 0 and re.match(r"ledger OK: [1-9]\d* entries", verified.stdout), verified
    again = cotrain(env, "restore", str(backup))
    assert "already holds data" in one_sentence_error(again) and "--force" in again.stderr

    copy = ServerProcess(fresh, {**env, "COTRAIN_EMBEDDED_WORKER": "0"}).start()
    try:
        api = copy.client()
        listed = {s["id"]: s for s in api.get("/sessions").json()["items"]}
        assert set(listed) == {done_sid, running_sid}
        assert listed[done_sid]["status"] == "completed"
        assert api.get(f"/sessions/{done_sid}/events").json() == source_events[done_sid]
        mid_run = api.get(f"/sessions/{running_sid}/events").json()
        assert mid_run and mid_run == source_events[running_sid][: len(mid_run)]
        assert any(m["event"] == "training.checkpoint" for m in mid_run)
        models = api.get("/models", params={"session": done_sid}).json()
        assert [m["name"] for m in models] == ["v1"] and models[0]["path"].startswith(str(fresh))
        download = api.get(f"/models/{models[0]['id']}/download")
        assert download.status_code == 200, download.text
        assert zipfile.ZipFile(io.BytesIO(download.content)).namelist()
    finally:
        copy.stop()


@pytest.fixture
def second_pg_url() -> Iterator[str]:
    """Another fresh PostgreSQL database (like conftest's pg_url), to restore into."""
    import psycopg

    name = "cotrain_test_" + uuid.uuid4().hex[:10]
    admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def all_rows(url: str) -> dict[str, list[tuple]]:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            tables = sa.inspect(conn).get_table_names()
            return {t: sorted(map(tuple, conn.execute(sa.text(f'SELECT * FROM "{t}"')).all()), key=repr)
                    for t in tables}
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgres_backup_restores_into_another_database(servers, server_env, pg_url, second_pg_url, tmp_path):
    server = servers(DATABASE_URL=pg_url, COTRAIN_EMBEDDED_WORKER="0")
    api = server.client()
    for amount in (1_000, 2_000):
        created = api.post("/sessions", json=reference_session(autoStart=False, rewardPool={"amount": amount}))
        assert created.status_code == 201, created.text
    server.stop()

    env = {**server.env, "DATABASE_URL": pg_url}
    no_tools = cotrain({**env, "PATH": str(tmp_path / "empty")}, "backup", str(tmp_path / "none"))
    assert "pg_dump is not on PATH" in one_sentence_error(no_tools)
    backup = tmp_path / "backup"
    taken = cotrain(env, "backup", str(backup))
    assert taken.returncode == 0, taken.stderr
    assert (backup / "database" / "cotrain.pgdump").is_file()
    manifest = json.loads((backup / "manifest.json").read_text())
    assert manifest["database"]["kind"] == "postgresql" and not manifest["session_files"]["copied"]
    assert "indexed only" in taken.stdout

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    target = home_env(server_env, fresh, DATABASE_URL=second_pg_url)
    restored = cotrain(target, "restore", str(backup))
    assert restored.returncode == 0, restored.stderr
    source, copy = all_rows(pg_url), all_rows(second_pg_url)
    assert copy == source
    assert len(copy["training_sessions"]) == 2 and len(copy["chain_ledger"]) == 2
    verified = cotrain(target, "ledger", "verify")
    assert verified.returncode == 0 and "ledger OK: 2 entries" in verified.stdout, verified
    refused = cotrain(home_env(server_env, fresh, DATABASE_URL=pg_url), "restore", str(backup))
    assert "already holds data" in one_sentence_error(refused)
    forced = cotrain(home_env(server_env, fresh, DATABASE_URL=pg_url), "restore", "--force", str(backup))
    assert forced.returncode == 0, forced.stderr
    assert all_rows(pg_url) == source


@pytest.fixture
def small_backup(cotrain_home: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A backup of a small SQLite home (its tables, a ledger key, a model file and a log), no server."""
    from cotrain.chain.keys import load_ledger_key
    from cotrain.db import default_database_url, open_database
    from cotrain.paths import Layout

    engine, _ = open_database(default_database_url(cotrain_home))
    engine.dispose()
    load_ledger_key()
    layout = Layout(cotrain_home)
    (layout.final_models / "s1.v1").mkdir(parents=True)
    (layout.final_models / "s1.v1" / "model.safetensors").write_bytes(os.urandom(4096))
    layout.session_logs("s1").mkdir(parents=True)
    (layout.session_logs("s1") / "events.jsonl").write_text('{"event": "started"}\n')
    env = home_env(dict(os.environ), cotrain_home)
    env.pop("DATABASE_URL", None)
    backup = tmp_path / "backup"
    taken = cotrain(env, "backup", str(backup))
    assert taken.returncode == 0, taken.stderr
    refused = cotrain(env, "backup", str(backup))
    assert "is not empty" in one_sentence_error(refused)
    return backup, env


def restore_into_fresh(env: dict[str, str], backup: Path, tmp_path: Path) -> tuple[Path, subprocess.CompletedProcess]:
    fresh = tmp_path / "fresh"
    fresh.mkdir(exist_ok=True)
    return fresh, cotrain({**env, "COTRAIN_HOME": str(fresh)}, "restore", str(backup))


def test_a_tampered_backup_is_refused_and_nothing_is_written(small_backup, tmp_path):
    backup, env = small_backup
    model = backup / "files" / "models" / "final" / "s1.v1" / "model.safetensors"
    original = model.read_bytes()
    model.write_bytes(original[:100] + bytes([original[100] ^ 1]) + original[101:])
    fresh, done = restore_into_fresh(env, backup, tmp_path)
    message = one_sentence_error(done)
    assert "files/models/final/s1.v1/model.safetensors" in message and "changed" in message
    assert list(fresh.iterdir()) == []

    model.write_bytes(original)
    database = backup / "database" / "cotrain.db"
    database.write_bytes(database.read_bytes()[:-4096])
    fresh, done = restore_into_fresh(env, backup, tmp_path)
    assert "database/cotrain.db" in one_sentence_error(done) and "truncated" in done.stderr
    assert list(fresh.iterdir()) == []


def edit_manifest(backup: Path, change) -> None:
    manifest = json.loads((backup / "manifest.json").read_text())
    change(manifest)
    (backup / "manifest.json").write_text(json.dumps(manifest))


def test_a_manifest_leading_out_is_refused(small_backup, tmp_path):
    backup, env = small_backup
    pristine = (backup / "manifest.json").read_text()
    hostile = {
        "'../x'": lambda m: m["session_files"]["files"][0].update(path="../x"),
        "'/etc/passwd'": lambda m: m["session_files"]["files"][0].update(path="/etc/passwd"),
        "outside models/checkpoints": lambda m: m["session_files"]["files"][0].update(path="keys/ledger.key"),
        "ledger_key.path: the path 'keys/../../x'": lambda m: m["ledger_key"].update(path="keys/../../x"),
        "the database must be 'database/cotrain.db'": lambda m: m["database"].update(path="cotrain.db"),
    }
    for expected, change in hostile.items():
        (backup / "manifest.json").write_text(pristine)
        edit_manifest(backup, change)
        fresh, done = restore_into_fresh(env, backup, tmp_path)
        assert expected in one_sentence_error(done) and "manifest.json is refused" in done.stderr, expected
        assert list(fresh.iterdir()) == []

    # a symlink in the backup with the right checksum still cannot read a file outside it
    (backup / "manifest.json").write_text(pristine)
    model = backup / "files" / "models" / "final" / "s1.v1" / "model.safetensors"
    outside = tmp_path / "outside.bin"
    shutil.copyfile(model, outside)
    model.unlink()
    model.symlink_to(outside)
    fresh, done = restore_into_fresh(env, backup, tmp_path)
    assert "leads out of" in one_sentence_error(done)
    assert list(fresh.iterdir()) == []


def test_a_ledger_key_from_the_environment_is_backed_up_and_must_match_on_restore(cotrain_home, tmp_path):
    """COTRAIN_LEDGER_KEY (a container's secret): the backup keeps it as a 0600 file; a restore where the variable
    holds another key is refused before anything is written, since the restored ledger would not verify."""
    from aptos_sdk import ed25519

    from cotrain.db import default_database_url, open_database

    engine, _ = open_database(default_database_url(cotrain_home))
    engine.dispose()
    key = ed25519.PrivateKey.random()
    env = {**home_env(dict(os.environ), cotrain_home), "COTRAIN_LEDGER_KEY": key.hex()}
    env.pop("DATABASE_URL", None)
    backup = tmp_path / "backup"
    taken = cotrain(env, "backup", str(backup))
    assert taken.returncode == 0, taken.stderr
    assert key.hex() not in taken.stdout + taken.stderr and "from COTRAIN_LEDGER_KEY" in taken.stdout
    assert json.loads((backup / "manifest.json").read_text())["ledger_key"]["public_key"] == str(key.public_key())

    other = {**env, "COTRAIN_LEDGER_KEY": ed25519.PrivateKey.random().hex()}
    fresh, done = restore_into_fresh(other, backup, tmp_path)
    assert "COTRAIN_LEDGER_KEY is set to another key" in one_sentence_error(done)
    assert list(fresh.iterdir()) == []
    fresh, done = restore_into_fresh(home_env(env, cotrain_home), backup, tmp_path)
    assert done.returncode == 0, done.stderr
    restored = fresh / "keys" / "ledger.key"
    assert ed25519.PrivateKey.from_str(restored.read_text().strip(), strict=False).hex() == key.hex()
    assert stat.S_IMODE(restored.stat().st_mode) == 0o600 and str(restored) in done.stdout
