"""A session's `verdict` engine events, applied by the server's monitor, reach the ledger in the event's own
transaction, settle the session by its verified rounds, and show in GET /api/v1/rewards/sessions/{id} (the real
routes served by uvicorn, on SQLite and PostgreSQL)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select

from cotrain.chain.orm import BindingProof, PeerBinding, RewardRow
from cotrain.chain.settlement import set_reward_pool
from cotrain.chain.verdicts import verdicts_of
from cotrain.p2p.verification import REASON_SENTENCES, Reason
from cotrain.server.monitor import apply_engine_event
from cotrain.server.orm import TrainingSession

from .test_api import api, public_session  # noqa: F401 (the served app's fixture)

A, B = ("0x" + c * 64 for c in "ab")
VALIDATOR = "QmServerPeer"


def verdict(peer: str, round_: int, reason: str = "verified", tokens: int = 100, session: str = "s1") -> dict[str, Any]:
    """One verdict as the engine writes it (Verdict.as_dict)."""
    return {"session_id": session, "round": round_, "peer_id": peer, "reason": reason,
            "detail": f"{peer} in round {round_}: {reason}", "scores": {"own_data": 0.1},
            "tokens": tokens if reason == "verified" else 0}


def event(seq: int, round_: int, verdicts: list[Any]) -> dict[str, Any]:
    return {"type": "verdict", "session_id": "s1", "seq": seq, "time": time.time(), "round": round_,
            "validator": VALIDATOR, "verdicts": verdicts}


def apply(factory, events: list[dict[str, Any]], chain) -> list[dict[str, Any]]:
    """As the executor applies a batch of events: one transaction holding the session's row."""
    with factory.begin() as db:
        row = db.get_one(TrainingSession, "s1")
        return [m for e in events for m in apply_engine_event(db, row, e, chain)]


def test_verdict_events_settle_by_verified_rounds_and_show_per_peer(api):  # noqa: F811
    chain, client = api.chain, api.client
    with chain.factory.begin() as db:
        db.add(public_session("s1"))
        set_reward_pool(db, chain.ledger, "s1", 1_000, "APT")
        for peer, address in (("p1", A), ("p2", B)):
            db.add(PeerBinding(session_id="s1", peer_id=peer, address=address, proof=BindingProof.PEER_AND_WALLET,
                               created_at=time.time()))
    # p2's round 1 is late: it only does not count (a bad update, e.g. own_data_fail, would void all of p2's credit)
    first = event(1, 1, [verdict("p1", 1), verdict("p2", 1, "late"),
                         {"session_id": "s1", "round": 1, "peer_id": "p3", "reason": "bogus"},  # malformed: skipped
                         verdict("p4", 1, session="other"), "not a verdict"])  # another session's: skipped
    assert apply(chain.factory, [first], chain) == []
    assert apply(chain.factory, [first], chain) == []  # the same event again (a re-read stream): nothing new
    rejudged = event(2, 1, [verdict("p1", 1, "late"), verdict("p2", 1)])  # the first judgement of round 1 stays
    apply(chain.factory, [rejudged, event(3, 2, [verdict("p1", 2), verdict("p2", 2, tokens=300)])], chain)
    apply(chain.factory, [event(4, 3, [verdict("p1", 3)])], None)  # a worker without the ledger records nothing
    with chain.factory() as db:
        assert [(v.round, v.peer_id, v.reason) for v in verdicts_of(db, "s1")] == [
            (1, "p1", "verified"), (1, "p2", "late"), (2, "p1", "verified"), (2, "p2", "verified")]
        assert db.get_one(TrainingSession, "s1").engine_seq == 4
        assert chain.ledger.verify(db).ok

    chain.settle("s1", {}, [])
    with chain.factory() as db:
        assert {r.address: r.amount for r in db.scalars(select(RewardRow))} == {A: 400, B: 600}  # 200 : 300 tokens

    session = client.get("/rewards/sessions/s1").json()
    assert [(c["peerId"], c["tokens"], c["outerRounds"]) for c in session["contributors"]] == [
        ("p1", 200, 2), ("p2", 300, 1)]
    rounds = {r["peerId"]: r for r in session["rounds"]}
    assert set(rounds) == {"p1", "p2"}
    assert (rounds["p1"]["verifiedRounds"], rounds["p1"]["judgedRounds"], rounds["p1"]["reasons"]) == (
        2, 2, {"verified": 2})
    p2 = rounds["p2"]
    assert (p2["verifiedRounds"], p2["reasons"]) == (1, {"late": 1, "verified": 1})
    assert [(o["round"], o["reason"]) for o in p2["recent"]] == [(2, "verified"), (1, "late")]
    assert p2["recent"][1] == {"round": 1, "reason": "late", "detail": "p2 in round 1: late",
                               "sentence": REASON_SENTENCES[Reason.LATE]}

    schemas = api.app.openapi()["components"]["schemas"]
    assert "pays these only" in schemas["PeerRoundsOut"]["properties"]["verifiedRounds"]["description"]
    assert "sentence" in schemas["PeerRoundsOut"]["properties"]["recent"]["description"]
    assert "own_data_fail" in schemas["RoundOutcomeOut"]["properties"]["reason"]["description"]


def test_a_session_without_verdicts_lists_no_rounds(api):  # noqa: F811
    with api.chain.factory.begin() as db:
        db.add(public_session("s1"))
    assert api.client.get("/rewards/sessions/s1").json()["rounds"] == []
