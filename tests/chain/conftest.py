"""Real databases for the chain tests: a SQLite file, and PostgreSQL (127.0.0.1:5432/test) in a schema of
its own so other areas' tests in the same database are never touched."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aptos_sdk import ed25519
from sqlalchemy.orm import Session, sessionmaker

from cotrain.chain.ledger import Ledger
from cotrain.chain.orm import CHAIN_TABLES
from cotrain.db import Base, make_db_factory, make_engine
from tests.conftest import missing_service

PG_URL = os.environ.get("CHAIN_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_available() -> bool:
    try:
        psycopg.connect(PG_URL, connect_timeout=2).close()
        return True
    except Exception:
        return False


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'chain.db'}")
        Base.metadata.create_all(engine, tables=CHAIN_TABLES)
        yield make_db_factory(engine)
        engine.dispose()
        return
    if not _pg_available():
        missing_service(f"PostgreSQL is not reachable at {PG_URL}; start it (see README) to run these tests")
    schema = f"chain_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = PG_URL + ("&" if "?" in PG_URL else "?") + f"options=-csearch_path%3D{schema}"
    engine = make_engine(url)
    try:
        Base.metadata.create_all(engine, tables=CHAIN_TABLES)
        yield make_db_factory(engine)
    finally:
        engine.dispose()
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def ledger() -> Ledger:
    return Ledger(ed25519.PrivateKey.random())


class AuditEvents:
    """A `PayoutAudit` that keeps what it was given: (action, session id, ok, detail)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, bool, dict[str, Any]]] = []

    def __call__(self, action: str, session_id: str, ok: bool, detail: dict[str, Any]) -> None:
        self.events.append((action, session_id, ok, detail))

    def actions(self) -> list[tuple[str, str, bool]]:
        return [(action, session_id, ok) for action, session_id, ok, _ in self.events]


@pytest.fixture
def audit() -> AuditEvents:
    return AuditEvents()
