"""catch_up.Delivered on a real SQLite database: what a subscriber whose connection stayed open is
owed when the fan-out lost messages (issue 18) — the WebSocket sender and the live UI pages use it
alike. A gap in a session's seqs is filled before the message that showed it; a backfill after an
outage returns each followed session's messages after its last seq, and, for sessions not heard
from, those stored since the outage began; hidden sessions give nothing."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from cotrain.db import open_database
from cotrain.server.catch_up import Delivered
from cotrain.server.fanout import BACKFILL
from cotrain.server.message_data import StatusData
from cotrain.server.messages import record_message
from cotrain.server.orm import TrainingSession
from cotrain.server.replay_service import ReplayService


@pytest.fixture
def factory(tmp_path: Path) -> sessionmaker[Session]:
    return open_database(f"sqlite:///{tmp_path / 'catch-up.db'}")[1]


def new_session(factory: sessionmaker[Session], session_id: str, *, public: bool = True) -> None:
    with factory.begin() as db:
        db.add(TrainingSession(id=session_id, name=session_id, public=public, request={}, config_path="",
                               config_toml="", model_type="llama", model_size="debug", strategy="ddp"))


def record(factory: sessionmaker[Session], session_id: str, count: int) -> list[dict[str, Any]]:
    """`count` more stored messages of the session, as the fan-out would carry them."""
    with factory.begin() as db:
        return [record_message(db, session_id, StatusData(status="running", attempt=i)) for i in range(count)]


def seqs(messages: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(m["data"]["sessionId"], m["data"]["seq"]) for m in messages]


def test_a_gap_is_filled_from_the_database_before_the_message_that_showed_it(factory):
    replay = ReplayService(factory)
    new_session(factory, "a")
    first, _lost_2, _lost_3, fourth = record(factory, "a", 4)
    sent = Delivered()
    assert sent.take(first)
    assert seqs(asyncio.run(sent.before(fourth, replay, None))) == [("a", 2), ("a", 3)]
    assert asyncio.run(sent.before(first, replay, None)) == []  # no gap, no read
    never_heard = Delivered()
    assert asyncio.run(never_heard.before(fourth, replay, None)) == []  # it did not ask for the earlier ones


def test_a_backfill_returns_what_the_outage_held_back_and_nothing_else(factory):
    replay = ReplayService(factory)
    for session_id in ("known", "quiet", "secret"):
        new_session(factory, session_id, public=session_id != "secret")
    sent = Delivered(began=time.time() - 60)
    for message in record(factory, "known", 2):
        sent.take(message)
    record(factory, "quiet", 1)  # stored before the outage, by a session this subscriber does not follow
    time.sleep(0.05)
    lost_at = time.time()
    record(factory, "known", 2)
    record(factory, "quiet", 1)
    record(factory, "secret", 1)  # private: the anonymous subscriber may not read it
    item = {"event": BACKFILL, "since": lost_at}

    everything = asyncio.run(sent.backfill(item, {"*"}, replay, None, 100))
    assert seqs(everything) == [("known", 3), ("known", 4), ("quiet", 2)]
    one_session = asyncio.run(sent.backfill(item, {"known"}, replay, None, 100))
    assert seqs(one_session) == [("known", 3), ("known", 4)]
    acknowledged = Delivered(floor={"known": 3})  # subscribed at seq 3, nothing delivered since
    assert seqs(asyncio.run(acknowledged.backfill(item, {"known"}, replay, None, 100))) == [("known", 4)]
