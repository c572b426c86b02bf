"""A wallet's first requests at once: each finds no api_tokens row for the wallet and creates one; the losers
of that race must read the winner's row (it was a 503 under load: IntegrityError on the unique token hash)."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from cotrain.db import open_database
from cotrain.server.auth import principal_hash, principal_row
from cotrain.server.orm import ApiToken
from tests.server.conftest import pg_url  # noqa: F401 (fixture)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'race.db'}"
    return request.getfixturevalue("pg_url")


def test_first_requests_of_one_wallet_at_once_share_one_principal(database_url: str):
    engine, factory = open_database(database_url)
    try:
        def first_request(principal: str, start: threading.Barrier, ids: list[int], errors: list[Exception]) -> None:
            try:
                with factory.begin() as db:
                    start.wait(10)  # every thread has begun its transaction; now all look the principal up
                    ids.append(principal_row(db, principal).id)
            except Exception as exc:
                errors.append(exc)

        for attempt in range(10):
            principal = f"wallet:0x{attempt:064x}"
            start = threading.Barrier(6)
            ids: list[int] = []
            errors: list[Exception] = []
            threads = [threading.Thread(target=first_request, args=(principal, start, ids, errors)) for _ in range(6)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert not errors, errors
            with factory() as db:
                rows = db.scalar(select(func.count()).where(ApiToken.token_hash == principal_hash(principal)))
            assert rows == 1 and len(set(ids)) == 1, (rows, ids)
    finally:
        engine.dispose()
