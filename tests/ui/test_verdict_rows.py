"""What the Rewards page and the session page's peers table show of a session's judged rounds, read from a
real SQLite chain database (no browser: the page code only lays these rows out)."""

from __future__ import annotations

from aptos_sdk import ed25519
from sqlalchemy.orm import sessionmaker

from cotrain.chain.ledger import Ledger
from cotrain.chain.orm import CHAIN_TABLES
from cotrain.chain.verdicts import record_verdicts
from cotrain.db import Base, make_engine
from cotrain.p2p.verification import REASON_SENTENCES, Reason, Verdict
from cotrain.ui.rewards_data import add_rounds
from cotrain.ui.session_view import peer_rows


def verdict(peer: str, round_: int, reason: Reason) -> Verdict:
    return Verdict(session_id="s1", round=round_, peer_id=peer, reason=reason, detail="", scores={},
                   tokens=100 if reason == Reason.VERIFIED else 0)


def test_contributions_get_their_verified_rounds_and_the_reasons_of_the_others(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'chain.db'}")
    Base.metadata.create_all(engine, tables=CHAIN_TABLES)
    ledger = Ledger(ed25519.PrivateKey.random())
    with sessionmaker(engine).begin() as db:
        for round_, reason in enumerate([Reason.VERIFIED, Reason.LATE, Reason.VERIFIED, Reason.LATE,
                                         Reason.OWN_DATA_FAIL], start=1):
            record_verdicts(db, ledger, "s1", round_, [verdict("p1", round_, reason)], "QmValidator")
    contributions = [{"session_id": "s1", "peer_id": "p1"}, {"session_id": "s1", "peer_id": "p9"},
                     {"session_id": "s0", "peer_id": "p1"}]  # a peer never judged; a session without a validator
    with sessionmaker(engine)() as db:
        add_rounds(db, contributions)
    judged, unjudged, plain = contributions
    assert (judged["verified_rounds"], judged["judged_rounds"]) == (2, 5)
    assert judged["round_reasons"] == [
        {"reason": "late", "rounds": 2, "sentence": REASON_SENTENCES[Reason.LATE]},
        {"reason": "own_data_fail", "rounds": 1, "sentence": REASON_SENTENCES[Reason.OWN_DATA_FAIL]}]
    assert (unjudged["verified_rounds"], unjudged["judged_rounds"], unjudged["round_reasons"]) == (None, 0, [])
    assert plain["verified_rounds"] is None
    engine.dispose()


def test_peer_rows_show_verified_rounds_only_for_a_session_with_verdicts() -> None:
    peers = [{"peer_id": "p1", "tokens": 10}, {"peer_id": "p2", "tokens": 30}]
    assert [r["verified"] for r in peer_rows(peers, now=0.0, verified={"p1": 4})] == [4, 0]
    assert [r["verified"] for r in peer_rows(peers, now=0.0)] == [None, None]
