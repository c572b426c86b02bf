"""Copying the platform's database out and back in, consistently while the server runs.

SQLite: the online backup API (`sqlite3.Connection.backup`) copies every page under one read
transaction, so the copy is the database at one instant even while the server and the executor write
(WAL lets them go on). PostgreSQL: `pg_dump --format=custom` (one snapshot) and `pg_restore --clean
--if-exists --single-transaction` (all or nothing), found on PATH. Their password travels in
PGPASSWORD, never on a command line or in a message.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

from sqlalchemy import Engine, inspect, text
from sqlalchemy.engine import URL, make_url

from cotrain.db import VERSION_TABLE, make_engine, normalize_url
from cotrain.server.backup.manifest import BackupError, DatabaseKind


def kind_of(url: str) -> DatabaseKind:
    """'sqlite' or 'postgresql' (the two databases the platform runs on)."""
    backend = make_url(normalize_url(url)).get_backend_name()
    if backend == "sqlite":
        return "sqlite"
    if backend == "postgresql":
        return "postgresql"
    raise BackupError(f"DATABASE_URL names a {backend} database; backups know SQLite and PostgreSQL only.")


def sqlite_path(url: str) -> Path:
    return Path(make_url(normalize_url(url)).database or "")


def has_data(engine: Engine) -> bool:
    """Whether any table but Alembic's holds a row: a database a restore would overwrite."""
    tables = [t for t in inspect(engine).get_table_names() if t != VERSION_TABLE]
    with engine.connect() as conn:
        for table in tables:
            quoted = engine.dialect.identifier_preparer.quote(table)
            if conn.execute(text(f"SELECT 1 FROM {quoted} LIMIT 1")).first() is not None:
                return True
    return False


def backup_sqlite(source: Path, target: Path) -> None:
    """An instant's copy of the SQLite file `source` into `target` (a single file, no WAL beside it)."""
    if not source.is_file():
        raise BackupError(f"No database at {source}: set COTRAIN_HOME (or DATABASE_URL) to the server's.")
    src = sqlite3.connect(source, timeout=30)  # read-write open (a read-only one cannot join a WAL); it only reads
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file; the server turns WAL back on
        problem = dst.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.Error as exc:
        raise BackupError(f"Could not copy the SQLite database {source} ({exc}); is it a CoTrain database?") from None
    finally:
        dst.close()
        src.close()
    if problem != "ok":
        raise BackupError(f"The copy of {source} fails SQLite's check ({problem}); the database itself may be damaged.")


def restore_sqlite(copy: Path, target: Path) -> None:
    """Put the backup's SQLite file at `target` atomically: a temp file beside it, then a rename. A WAL
    left beside the old file would be replayed into the new one, so it goes first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.restoring")
    shutil.copyfile(copy, temp)
    with open(temp, "rb+") as handle:
        os.fsync(handle.fileno())
    for suffix in ("-wal", "-shm", "-journal"):
        target.with_name(target.name + suffix).unlink(missing_ok=True)
    os.replace(temp, target)


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """The URL as libpq reads it (no SQLAlchemy driver, no password) and the environment holding the password."""
    parsed: URL = make_url(normalize_url(url))
    env = dict(os.environ)
    if parsed.password is not None:
        env["PGPASSWORD"] = str(parsed.password)
    plain = parsed.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise BackupError(f"{name} is not on PATH; install PostgreSQL's client tools (Debian: apt-get install "
                          f"postgresql-client, the same major version as the server or newer).")
    return found


def _run(args: list[str], env: dict[str, str], what: str) -> None:
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise BackupError(f"{what} failed: {last}")


def dump_postgres(url: str, target: Path) -> None:
    libpq, env = _libpq(url)
    _run([_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges", f"--file={target}",
          f"--dbname={libpq}"], env, "pg_dump")


def restore_postgres(dump: Path, url: str) -> None:
    libpq, env = _libpq(url)
    _run([_tool("pg_restore"), "--clean", "--if-exists", "--no-owner", "--no-privileges", "--single-transaction",
          f"--dbname={libpq}", str(dump)], env, "pg_restore")


def open_engine(url: str) -> Engine:
    """An engine on `url` without migrating it (a backup reads the database as it is)."""
    return make_engine(url)
