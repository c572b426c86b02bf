"""The database-outage policy (cotrain.db.retry) against a real PostgreSQL of the test's own: a step waits
out the outage with capped backoff and succeeds once the database is back; the outage is logged
once (a warning when it starts, one line when it ends), not once per attempt; a bad statement is
not an outage and fails at once; the rewards loop (ChainService.run) outlives the outage."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from cotrain.chain.service import ChainService
from cotrain.db import make_engine, run_migrations
from cotrain.db.retry import MAX_DELAY_S, OUTAGE, Backoff, is_outage, retry_db
from tests.faults.services import OwnPostgres


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(0.25, 1.0)
    assert [backoff.next_delay() for _ in range(5)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    backoff.reset()
    assert backoff.next_delay() == 0.25


def _factory(pg: OwnPostgres) -> sessionmaker[Session]:
    return sessionmaker(make_engine(pg.url))


def _select_one(factory: sessionmaker[Session]) -> int:
    with factory() as db:
        return int(db.execute(text("SELECT 1")).scalar_one())


def _restart_after(pg: OwnPostgres, seconds: float, back: list[float]) -> threading.Thread:
    def restart() -> None:
        time.sleep(seconds)
        pg.start()
        back.append(time.monotonic())

    thread = threading.Thread(target=restart)
    thread.start()
    return thread


def test_a_step_waits_out_the_outage_and_logs_it_once(own_postgres: OwnPostgres, caplog: Any) -> None:
    factory = _factory(own_postgres)
    assert _select_one(factory) == 1  # a pooled connection, which the outage cuts
    own_postgres.stop()
    back: list[float] = []
    restarter = _restart_after(own_postgres, 5.0, back)
    with caplog.at_level(logging.WARNING, logger="cotrain.db.retry"):
        assert asyncio.run(retry_db("a test loop", _select_one, factory)) == 1
    done = time.monotonic()
    restarter.join()
    lines = [r.getMessage() for r in caplog.records if r.name == "cotrain.db.retry"]
    assert len(lines) == 2, lines  # one when it went, one when it came back: not one per attempt
    assert "a test loop" in lines[0] and "answers again" in lines[1]
    assert done - back[0] <= MAX_DELAY_S + 1.0  # noticed within the capped delay
    assert not OUTAGE.down


def test_a_bad_statement_is_not_an_outage(own_postgres: OwnPostgres) -> None:
    factory = _factory(own_postgres)

    def bad(factory: sessionmaker[Session]) -> None:
        with factory() as db:
            db.execute(text("SELECT * FROM no_such_table"))

    with pytest.raises(ProgrammingError) as raised:
        asyncio.run(retry_db("a test loop", bad, factory))
    assert not is_outage(raised.value)


class _Sessions:
    """The server's sessions as the rewards loop reads them: from the database (a real query)."""

    def __init__(self, factory: sessionmaker[Session]):
        self.factory = factory
        self.ticks = 0

    def running_diloco(self) -> list[str]:
        _select_one(self.factory)
        self.ticks += 1
        return []

    def unsettled(self) -> list[tuple[str, str, float]]:
        return []


def test_the_rewards_loop_outlives_an_outage(own_postgres: OwnPostgres, cotrain_home: Any, caplog: Any) -> None:
    factory = _factory(own_postgres)
    run_migrations(factory.kw["bind"])  # the payout tables the loop reads
    sessions = _Sessions(factory)
    chain = ChainService(factory, lambda _sid: None, audit=lambda *a, **k: None)

    async def scenario() -> tuple[int, int]:
        loop = asyncio.create_task(chain.run(sessions, 0.2, 3600.0))
        await asyncio.sleep(1.0)
        before = sessions.ticks
        await asyncio.to_thread(own_postgres.stop)
        await asyncio.sleep(3.0)
        during = sessions.ticks - before
        await asyncio.to_thread(own_postgres.start)
        await asyncio.sleep(MAX_DELAY_S + 1.0)
        assert not loop.done(), "the rewards loop ended with the outage"
        loop.cancel()
        return during, sessions.ticks - before - during

    with caplog.at_level(logging.WARNING):
        during, after = asyncio.run(scenario())
    assert during <= 1 and after >= 1
    outage_lines = [r.getMessage() for r in caplog.records if r.name == "cotrain.db.retry"]
    assert len(outage_lines) == 2 and "settling rewards" in outage_lines[0], outage_lines
    assert not [r for r in caplog.records if r.name == "cotrain.chain.service"]  # no line per tick
