"""`cotrain db upgrade | current` on real databases (an embedded SQLite file, a fresh PostgreSQL one): the
deployment's one-shot migration step. A database a newer CoTrain migrated is refused, never downgraded;
`--wait` rides out a database that is still starting (compose's `migrate` starts with PostgreSQL)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from cotrain.db import head_revisions, normalize_url
from tests.server.conftest import PG_ADMIN_URL

COTRAIN = str(Path(sys.executable).with_name("cotrain"))


def db_env(home: Path, url: str | None) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "COTRAIN_HOME": str(home), **({"DATABASE_URL": url} if url else {})}


def db(*args: str, home: Path, url: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([COTRAIN, "db", *args], env=db_env(home, url), capture_output=True, text=True, timeout=120)


def heads() -> str:
    return ", ".join(head_revisions())


def test_sqlite_upgrade_creates_and_migrates_once(tmp_path: Path):
    home = tmp_path / "home"
    missing = db("current", home=home)
    assert missing.returncode == 2 and "No database at" in missing.stderr and "Traceback" not in missing.stderr
    first = db("upgrade", home=home)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"database migrated from empty to {heads()}"
    assert (home / "cotrain.db").is_file()
    again = db("upgrade", home=home)
    assert again.returncode == 0 and again.stdout.strip() == f"database already at {heads()}"
    current = db("current", home=home)
    assert current.returncode == 0 and f"database at {heads()};" in current.stdout


@pytest.mark.postgres
def test_postgres_upgrade_and_a_newer_database_refused(tmp_path: Path, pg_url: str):
    empty = db("current", home=tmp_path, url=pg_url)
    assert empty.returncode == 1 and "no revision (empty)" in empty.stdout and "cotrain db upgrade" in empty.stdout
    assert db("upgrade", home=tmp_path, url=pg_url).returncode == 0
    assert db("current", home=tmp_path, url=pg_url).returncode == 0
    engine = sa.create_engine(normalize_url(pg_url))
    with engine.begin() as conn:  # as if a newer CoTrain had migrated it further
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0099_from_the_future' "
                             "WHERE version_num NOT LIKE 'c%'"))
    engine.dispose()
    newer = db("upgrade", home=tmp_path, url=pg_url)
    assert newer.returncode == 2 and "Traceback" not in newer.stderr
    assert "revision 0099_from_the_future, which this CoTrain does not know" in newer.stderr


def test_an_unreachable_database_is_one_sentence(tmp_path: Path):
    down = db("upgrade", home=tmp_path, url="postgresql://nobody@127.0.0.1:1/none")
    assert down.returncode == 2 and "did not answer" in down.stderr and "Traceback" not in down.stderr


@pytest.mark.postgres
def test_upgrade_waits_for_a_database_that_answers_later(tmp_path: Path, pg_url: str):
    """The database is created 3 s after `db upgrade --wait 60` starts: it waits, says so once (without the
    password), then migrates."""
    import psycopg

    admin_url = PG_ADMIN_URL
    name = "cotrain_late_" + uuid.uuid4().hex[:10]
    url = sa.make_url(pg_url).set(database=name)
    if not url.password:  # trust auth ignores it; it must still never be printed
        url = url.set(password="pw-never-printed-" + uuid.uuid4().hex[:6])
    started = time.monotonic()
    command = subprocess.Popen([COTRAIN, "db", "upgrade", "--wait", "60"], env=db_env(tmp_path, url.render_as_string(
        hide_password=False)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        try:
            time.sleep(3)
            assert command.poll() is None, command.communicate()  # still waiting
            admin.execute(f'CREATE DATABASE "{name}"')
            out, err = command.communicate(timeout=90)
            assert command.returncode == 0, err
            assert out.strip() == f"database migrated from empty to {heads()}"
            waiting = [line for line in err.splitlines() if line.startswith("waiting for the database at ")]
            assert len(waiting) == 1 and f"@{url.host}:{url.port or 5432}/{name}" in waiting[0], err
            assert str(url.password) not in out + err and "Traceback" not in err
            assert 3 <= time.monotonic() - started < 30
        finally:
            if command.poll() is None:
                command.kill()
                command.wait()
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_upgrade_gives_up_after_its_wait(tmp_path: Path):
    started = time.monotonic()
    down = db("upgrade", "--wait", "2", home=tmp_path, url="postgresql://nobody:pw-secret-9@127.0.0.1:1/none")
    elapsed = time.monotonic() - started
    assert down.returncode == 2 and "Traceback" not in down.stderr and "pw-secret-9" not in down.stderr
    assert "did not answer within 2 s" in down.stderr
    assert down.stderr.count("waiting for the database at ") == 1
    assert 2 <= elapsed < 20
    bad = db("upgrade", "--wait", "-1", home=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "--wait" in bad.stderr
