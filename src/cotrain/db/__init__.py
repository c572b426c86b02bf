"""The database every package shares: SQLAlchemy 2 declarative `Base`, engines, migrations.

It sits below the server and the chain, which both declare their tables on this `Base`
(`cotrain/server/orm.py`, `cotrain/chain/orm.py`); their Alembic revisions live side by side in
`migrations/versions/` (the chain's are named `c*_chain_*.py`) and `run_migrations` upgrades to
every head. SQLite under COTRAIN_HOME by default, PostgreSQL when `DATABASE_URL` is set.

A unit of work is `factory.begin()` (SQLAlchemy's own: commit on success, roll back on error,
always close); the word "session" is kept for training sessions, so database sessions are `db`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from cotrain.config.env_settings import EnvSettings, env_field

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version"  # Alembic's own
SQLITE_POOL_SIZE = 40  # anyio's default thread limit, which runs the sync endpoints


class Base(DeclarativeBase):
    """The declarative base of every CoTrain table."""


def normalize_url(url: str) -> str:
    """`postgresql://` and `postgres://` mean psycopg 3 (the driver we install)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def make_engine(url: str) -> Engine:
    """An engine for `url`. SQLite gets WAL, a busy timeout and foreign keys, so the API's threads
    and the executor can share one file; its pool keeps a connection per API worker thread, so a
    burst of requests never pays for opening connections (and their pragmas) again."""
    url = normalize_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               pool_size=SQLITE_POOL_SIZE, max_overflow=10)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)  # servers share PostgreSQL's 100


def make_db_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)



def run_migrations(engine: Engine) -> None:
    """Upgrade the database to every Alembic head (ours and the chain's)."""
    from alembic import command

    cfg = _alembic_config()
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "heads")


def _alembic_config() -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def revisions(engine: Engine) -> list[str]:
    """The Alembic revisions the database is at (one per head: the server's and the chain's); [] if none."""
    if not inspect(engine).has_table(VERSION_TABLE):
        return []
    with engine.connect() as conn:
        return sorted(conn.scalars(select(text("version_num")).select_from(text(VERSION_TABLE))).all())


def known_revisions() -> set[str]:
    """Every revision this CoTrain's migrations know (a database at another one is from a newer CoTrain)."""
    from alembic.script import ScriptDirectory

    return {script.revision for script in ScriptDirectory.from_config(_alembic_config()).walk_revisions()}


def head_revisions() -> list[str]:
    """The revisions `run_migrations` brings a database to."""
    from alembic.script import ScriptDirectory

    return sorted(ScriptDirectory.from_config(_alembic_config()).get_heads())


class NoDatabase(RuntimeError):
    """Raised by `open_database(..., must_exist=True)` when the embedded SQLite file is missing."""


class DatabaseSettings(EnvSettings):
    """The database every process of one platform shares."""

    database_url: str = env_field(
        "DATABASE_URL", "", "the platform's database, e.g. `postgresql://user@host/db`; unset: the SQLite file "
        "`COTRAIN_HOME/cotrain.db`", shown="SQLite in `COTRAIN_HOME`", secret=True)  # it may hold a password

    def url_under(self, home: Path) -> str:
        """DATABASE_URL, else the embedded SQLite file under COTRAIN_HOME (`home`)."""
        return self.database_url or sqlite_url(home / "cotrain.db")


def default_database_url(home: Path) -> str:
    """DATABASE_URL, else the embedded SQLite file under COTRAIN_HOME (`home`)."""
    return DatabaseSettings().url_under(home)


def open_database(url: str, migrate: bool = True,
                  must_exist: bool = False) -> tuple[Engine, sessionmaker[Session]]:
    """The one way every process (server, worker, CLI, chain) opens the database: an engine, its
    migrations applied, and the factory of units of work. `must_exist` refuses to create an empty
    SQLite file, so a typo in COTRAIN_HOME does not look like an empty platform."""
    engine_url = make_url(normalize_url(url))
    if must_exist and engine_url.get_backend_name() == "sqlite":
        path = Path(engine_url.database or "")
        if not path.exists():
            raise NoDatabase(f"No database at {path}: start the server once (`cotrain up`), or set COTRAIN_HOME "
                             "or DATABASE_URL to the server's.")
    engine = make_engine(url)
    if migrate:
        run_migrations(engine)
    return engine, make_db_factory(engine)
