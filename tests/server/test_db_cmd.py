"""`cotrain db upgrade | current` on real databases (an embedded SQLite file, a fresh PostgreSQL one): the
deployment's one-shot migration step. A database a newer CoTrain migrated is refused, never downgraded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from cotrain.db import head_revisions, normalize_url

COTRAIN = str(Path(sys.executable).with_name("cotrain"))


def db(*args: str, home: Path, url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "COTRAIN_HOME": str(home), **({"DATABASE_URL": url} if url else {})}
    return subprocess.run([COTRAIN, "db", *args], env=env, capture_output=True, text=True, timeout=120)


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
