"""Escrow, the challenge window and the void rules (issue 12), on real SQLite and PostgreSQL: a completed rewarded
session is settled by the server's chain loop only once COTRAIN_CHALLENGE_WINDOW has passed since its completion,
a verdict recorded meanwhile still counts, a failed spot check voids the peer's whole credit (the others share the
pool), a late round voids only itself, the treasury keeps counting the pool until it is paid, and
GET /api/v1/rewards/sessions/{id} says the rewards are pending until the window's end with each peer's credit."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import pytest
from aptos_sdk import ed25519
from sqlalchemy import select

from cotrain.chain.ledger import Ledger
from cotrain.chain.orm import ContributionRow, PayoutRow, PayoutStatus, RewardRow
from cotrain.chain.service import ChainService
from cotrain.chain.settings import ChainConfigError, ChainSettings
from cotrain.chain.settlement import set_reward_pool, settle_session
from cotrain.chain.verdicts import record_verdicts
from cotrain.db import Base
from cotrain.p2p.verification import Reason
from cotrain.server.chain_bridge import RewardSessions
from cotrain.server.orm import TrainingSession
from cotrain.server.session_policy import open_pools

from .test_api import api, public_session  # noqa: F401 (the served app's fixture)
from .test_ledger import Rec
from .test_verdicts import VALIDATOR, V, bind

A, B, C = ("0x" + c * 64 for c in "abc")
PEERS = {"p1": A, "p2": B, "p3": C}
WINDOW_S = 1


def judged(db, ledger, session_id: str, rounds: dict[int, dict[str, Reason]]) -> None:
    """Record each round's verdicts (peer → reason), as the monitor does for a verdict event."""
    for round_, reasons in rounds.items():
        record_verdicts(db, ledger, session_id, round_, [V(peer, round_, reason, session=session_id)
                                                         for peer, reason in reasons.items()], VALIDATOR)


def session_row(session_id: str, status: str = "completed", finished_at: float | None = None,
                pool: int | None = None) -> TrainingSession:
    row = public_session(session_id)
    row.status, row.finished_at = status, finished_at
    row.request = {"rewardPool": {"amount": pool, "asset": "APT"}} if pool is not None else {}
    return row


def contributions(db_factory, session_id: str) -> dict[str, ContributionRow]:
    with db_factory() as db:
        rows = db.scalars(select(ContributionRow).where(ContributionRow.session_id == session_id))
        return {r.peer_id: r for r in rows}


def rewards(db_factory, session_id: str) -> dict[str, int]:
    with db_factory() as db:
        return {r.address: r.amount for r in db.scalars(select(RewardRow).where(RewardRow.session_id == session_id))}


V_, LATE, SPOT = Reason.VERIFIED, Reason.LATE, Reason.SPOT_CHECK_FAIL


def test_the_window_variable(monkeypatch):
    assert ChainSettings.from_mapping({}).challenge_window_s == 86_400
    assert ChainSettings.from_mapping({"COTRAIN_CHALLENGE_WINDOW": "0"}).challenge_window_s == 0
    monkeypatch.setenv("COTRAIN_CHALLENGE_WINDOW", "2")
    assert ChainSettings().challenge_window_s == 2
    for bad in ("-1", str(31 * 24 * 3600)):
        with pytest.raises(ChainConfigError, match="COTRAIN_CHALLENGE_WINDOW=.* is not in 0..2592000"):
            ChainSettings.from_mapping({"COTRAIN_CHALLENGE_WINDOW": bad})
    with pytest.raises(ChainConfigError, match="COTRAIN_CHALLENGE_WINDOW='a day' is not a whole number"):
        ChainSettings.from_mapping({"COTRAIN_CHALLENGE_WINDOW": "a day"})


def test_a_failed_spot_check_voids_the_whole_session_and_late_rounds_only_themselves(db_factory, ledger):
    """p2's late, uncommitted and ungrouped rounds do not count, its verified ones do; p3's one failed spot check
    voids its two verified rounds too: the pool goes to p1 and p2 pro rata (300 : 200 tokens)."""
    with db_factory.begin() as db:
        set_reward_pool(db, ledger, "s1", 1_000, "APT")
        bind(db, "s1", PEERS)
        judged(db, ledger, "s1", {1: {"p1": V_, "p2": V_, "p3": V_}, 2: {"p1": V_, "p2": LATE, "p3": V_},
                                  3: {"p1": V_, "p2": Reason.NO_COMMIT, "p3": SPOT},
                                  4: {"p2": Reason.NOT_IN_GROUP}, 5: {"p2": V_}})
        settle_session(db, ledger, "s1", [])
    rows = contributions(db_factory, "s1")
    assert {p: (r.status, r.tokens, r.outer_rounds) for p, r in rows.items()} == {
        "p1": ("verified", 300, 3), "p2": ("verified", 200, 2), "p3": ("excluded", 0, 0)}
    assert "a spot check failed in round 3" in rows["p3"].reason and "(200 tokens" in rows["p3"].reason
    assert "void" in rows["p3"].reason and rows["p2"].reason == ""
    assert rewards(db_factory, "s1") == {A: 600, B: 400}


@pytest.fixture
def served_tables(db_factory):
    """The server's tables too (training_sessions: the loop's SessionBook reads them)."""
    Base.metadata.create_all(db_factory.kw["bind"])
    return db_factory


def test_the_loop_settles_only_after_the_window_and_counts_verdicts_recorded_in_it(served_tables, audit,
                                                                                   monkeypatch):
    """The server's chain loop (ChainService.run with RewardSessions) leaves a completed session unsettled until
    its completion time + COTRAIN_CHALLENGE_WINDOW; a spot check failed meanwhile (round 2, recorded after the
    session completed) voids p3, and the loop then settles and records the payouts due."""
    factory = served_tables
    monkeypatch.setenv("COTRAIN_CHALLENGE_WINDOW", str(WINDOW_S))
    chain = ChainService(factory, lambda _sid: None, audit, settings=ChainSettings(payout_backend="local"),
                         ledger=Ledger(ed25519.PrivateKey.random()))
    finished_at = time.time()
    with factory.begin() as db:
        db.add(session_row("s1", finished_at=finished_at, pool=900))
        db.add(session_row("cancelled", status="cancelled", finished_at=finished_at, pool=50))
        set_reward_pool(db, chain.ledger, "s1", 900, "APT")
        bind(db, "s1", PEERS)
        judged(db, chain.ledger, "s1", {1: {"p1": V_, "p2": V_, "p3": V_}, 2: {"p1": V_, "p2": LATE}})
    book = RewardSessions(factory, except_worker=None)
    assert [(sid, at) for sid, _, at in book.unsettled()] == [("s1", finished_at)]
    assert chain.session_completed("s1", "", finished_at, now=finished_at + WINDOW_S - 0.01) == 0  # the executor's

    async def loop_until_settled() -> float:
        task = asyncio.create_task(chain.run(book, tick_s=0.1, payout_interval_s=3600))
        try:
            await asyncio.sleep(0.3)
            assert time.time() < finished_at + WINDOW_S, "the test machine is too slow for this window"
            assert contributions(factory, "s1") == {}, "settled inside its challenge window"
            with factory.begin() as db:  # a late spot check of p3's round 2, inside the window
                judged(db, chain.ledger, "s1", {3: {"p3": SPOT}})
            for _ in range(100):
                if audit.events:
                    return time.time()
                await asyncio.sleep(0.05)
            raise AssertionError("the loop did not settle after the window")
        finally:
            task.cancel()

    settled_at = asyncio.run(loop_until_settled())
    assert settled_at >= finished_at + WINDOW_S
    rows = contributions(factory, "s1")
    assert {p: (r.status, r.tokens) for p, r in rows.items()} == {
        "p1": ("verified", 200), "p2": ("verified", 100), "p3": ("excluded", 0)}
    assert "spot check failed in round 3" in rows["p3"].reason
    assert rewards(factory, "s1") == {A: 600, B: 300}
    assert audit.actions() == [("payout.recorded_due", "s1", True)]
    with factory() as db:
        assert sorted(p.status for p in db.scalars(select(PayoutRow))) == [PayoutStatus.DUE] * 2
    assert book.unsettled() == [] and chain.keep_and_settle(book) == 0  # settled once
    with factory() as db:
        assert chain.ledger.verify(db).ok


def test_with_no_window_a_session_settles_when_it_completes(served_tables, audit, monkeypatch):
    monkeypatch.setenv("COTRAIN_CHALLENGE_WINDOW", "0")
    chain = ChainService(served_tables, lambda _sid: None, audit, settings=ChainSettings(payout_backend="local"),
                         ledger=Ledger(ed25519.PrivateKey.random()))
    with served_tables.begin() as db:
        set_reward_pool(db, chain.ledger, "s1", 100, "APT")
        bind(db, "s1", PEERS)
        judged(db, chain.ledger, "s1", {1: {"p1": V_}})
    assert chain.session_completed("s1", "", finished_at=time.time()) == 1
    assert rewards(served_tables, "s1") == {A: 100}


def test_work_after_the_session_ended_does_not_count(served_tables, audit, monkeypatch):
    """A session settled by its peers' progress records: those read at completion are kept; what the peers publish
    afterwards (volunteers may go on training together) is not read when the window closes."""
    monkeypatch.setenv("COTRAIN_CHALLENGE_WINDOW", "1")
    live = {"s1": [Rec("p1", A, 640, outer_step=1), Rec("p2", B, 640, outer_step=1)]}
    chain = ChainService(served_tables, live.get, audit, settings=ChainSettings(payout_backend="local"),
                         ledger=Ledger(ed25519.PrivateKey.random()))
    with served_tables.begin() as db:
        set_reward_pool(db, chain.ledger, "s1", 100, "APT")
        bind(db, "s1", {"p1": A, "p2": B})
    finished_at = time.time()
    assert chain.capture_progress("s1") == 2  # the executor, at completion
    assert chain.session_completed("s1", "", finished_at) == 0
    live["s1"] = [Rec("p1", A, 640, outer_step=1), Rec("p2", B, 6400, outer_step=9, updated=2.0)]  # after the end
    assert chain.session_completed("s1", "", finished_at, now=finished_at + 1) == 2
    assert rewards(served_tables, "s1") == {A: 50, B: 50}


def test_the_treasury_counts_a_pool_until_it_is_paid(served_tables, ledger):
    """Escrow: a pool is owed from creation through its challenge window (unsettled: its whole amount), then as
    its payouts due; paid, it is owed no more. A cancelled session's pool stays owed until the session is deleted
    (session_policy.open_pools; test_quotas.py checks the 409 with the aptos backend end to end)."""
    factory = served_tables
    with factory.begin() as db:
        db.add(session_row("s1", finished_at=time.time(), pool=900))  # completed, inside its window
        db.add(session_row("s2", status="running", pool=50))
        db.add(session_row("free", finished_at=time.time()))
        set_reward_pool(db, ledger, "s1", 900, "APT")
        bind(db, "s1", PEERS)
        judged(db, ledger, "s1", {1: {"p1": V_, "p2": V_, "p3": SPOT}})
    with factory() as db:
        assert open_pools(db, "APT") == 950 and open_pools(db, "USDC") == 0
    with factory.begin() as db:
        settle_session(db, ledger, "s1", [])
    with factory.begin() as db:
        assert open_pools(db, "APT") == 950  # 450 + 450 due, and s2's pool
        for payout in db.scalars(select(PayoutRow).where(PayoutRow.address == A)):
            payout.status = PayoutStatus.PAID
    with factory() as db:
        assert open_pools(db, "APT") == 500


def test_the_rewards_api_says_pending_until_the_window_ends(api):  # noqa: F811
    chain, client = api.chain, api.client
    finished_at = 1_800_000_000.0
    with chain.factory.begin() as db:
        db.add(session_row("s1", finished_at=finished_at, pool=1_000))
        db.add(session_row("run", status="running", pool=10))
        set_reward_pool(db, chain.ledger, "s1", 1_000, "APT")
        set_reward_pool(db, chain.ledger, "run", 10, "APT")
        bind(db, "s1", PEERS)
        judged(db, chain.ledger, "s1", {1: {"p1": V_, "p2": V_, "p3": V_}, 2: {"p1": V_, "p2": LATE, "p3": SPOT}})
    ends = finished_at + chain.settings.challenge_window_s
    pending = client.get("/rewards/sessions/s1").json()
    assert pending["pending"] is True and pending["contributors"] == [] and pending["rewards"] == []
    assert datetime.fromisoformat(pending["challengeWindowEndsAt"]).timestamp() == ends
    credit = {c["peerId"]: c for c in pending["provisional"]}
    assert {p: (c["status"], c["tokens"], c["outerRounds"]) for p, c in credit.items()} == {
        "p1": ("verified", 200, 2), "p2": ("verified", 100, 1), "p3": ("excluded", 0, 0)}
    assert "spot check failed in round 2" in credit["p3"]["reason"]
    running = client.get("/rewards/sessions/run").json()
    assert running["pending"] is True and running["challengeWindowEndsAt"] is None and running["provisional"] == []

    chain.settle("s1", {}, [])
    settled = client.get("/rewards/sessions/s1").json()
    assert settled["pending"] is False and settled["provisional"] == []
    assert datetime.fromisoformat(settled["challengeWindowEndsAt"]).timestamp() == ends
    assert {r["address"]: r["amount"] for r in settled["rewards"]} == {A: 667, B: 333}
    assert [c["peerId"] for c in settled["contributors"]] == ["p1", "p2", "p3"]

    properties = api.app.openapi()["components"]["schemas"]["SessionRewards"]["properties"]
    assert "COTRAIN_CHALLENGE_WINDOW" in properties["challengeWindowEndsAt"]["description"]
    assert "challengeWindowEndsAt" in properties["pending"]["description"]
    assert "credit so far" in properties["provisional"]["description"]
