"""Verdicts on real SQLite and PostgreSQL: one ledger entry per judged round, the first judgement of a round
stays, hand edits are caught, and a session with verdicts is paid by its verified rounds only."""

from __future__ import annotations

import time

from sqlalchemy import func, select, text

from cotrain.chain.contributions import Limits
from cotrain.chain.orm import BindingProof, ContributionRow, LedgerEntryRow, LedgerKind, PeerBinding, RewardRow
from cotrain.chain.settlement import set_reward_pool, settle_session
from cotrain.chain.verdicts import record_verdicts, round_outcomes, verdicts_of
from cotrain.p2p.verification import REASON_SENTENCES, Reason, Verdict

from .test_ledger import Rec

A, B, C = ("0x" + c * 64 for c in "abc")
VALIDATOR = "QmValidator"


def V(peer: str, round_: int, reason: Reason = Reason.VERIFIED, tokens: int | None = None, session: str = "s1",
      detail: str = "") -> Verdict:
    """A verdict; a verified round is worth 100 tokens unless told."""
    worth = tokens if tokens is not None else (100 if reason == Reason.VERIFIED else 0)
    return Verdict(session_id=session, round=round_, peer_id=peer, reason=reason, detail=detail or f"{reason} here",
                   scores={"usefulness": 0.25, "own_data": 0.5}, tokens=worth)


def bind(db, session_id: str, bindings: dict[str, str]) -> None:
    """Bindings as `record_binding` leaves them (their signatures are test_bindings.py's concern)."""
    for peer, address in bindings.items():
        db.add(PeerBinding(session_id=session_id, peer_id=peer, address=address, proof=BindingProof.PEER_AND_WALLET,
                           created_at=time.time()))


def entries(db, kind: LedgerKind) -> int:
    return db.scalar(select(func.count()).select_from(LedgerEntryRow).where(LedgerEntryRow.kind == kind))


def test_a_round_is_recorded_once_and_its_first_verdicts_stay(db_factory, ledger):
    with db_factory.begin() as db:
        rows = record_verdicts(db, ledger, "s1", 3, [V("p1", 3), V("p2", 3, Reason.OWN_DATA_FAIL)], VALIDATOR)
        assert [(r.peer_id, r.reason, r.tokens, r.validator) for r in rows] == [
            ("p1", "verified", 100, VALIDATOR), ("p2", "own_data_fail", 0, VALIDATOR)]
    with db_factory.begin() as db:  # judged again (a restarted validator): the first judgement stays
        again = record_verdicts(db, ledger, "s1", 3, [V("p1", 3, Reason.LATE), V("p3", 3)], "QmOther")
        assert [(r.peer_id, r.reason) for r in again] == [("p1", "verified"), ("p2", "own_data_fail")]
        # another session's verdict, a verdict on another round and a second one on a peer are all skipped
        mixed = [V("p1", 4), V("p2", 5), V("p9", 4, session="s2"), V("p1", 4, Reason.LATE)]
        assert [(r.peer_id, r.round, r.reason) for r in record_verdicts(db, ledger, "s1", 4, mixed, VALIDATOR)] \
            == [("p1", 4, "verified")]
    with db_factory() as db:
        assert entries(db, LedgerKind.VERDICT) == 2
        assert [(r.round, r.peer_id) for r in verdicts_of(db, "s1")] == [(3, "p1"), (3, "p2"), (4, "p1")]
        report = ledger.verify(db)
        assert report.ok, report.problems
        body = db.scalars(select(LedgerEntryRow.body).where(LedgerEntryRow.kind == LedgerKind.VERDICT)).first()
        assert '"round":3' in body and '"reason":"own_data_fail"' in body


def test_editing_or_deleting_a_verdict_row_is_detected(db_factory, ledger):
    with db_factory.begin() as db:
        record_verdicts(db, ledger, "s1", 1, [V("p1", 1, Reason.OWN_DATA_FAIL), V("p2", 1)], VALIDATOR)
    with db_factory.begin() as db:  # a failed round turned into a paid one
        db.execute(text("UPDATE chain_round_verdicts SET reason = 'verified', tokens = 100 WHERE peer_id = 'p1'"))
    with db_factory() as db:
        problems = ledger.verify(db).problems
    assert len(problems) == 1 and "peer p1" in problems[0] and "reason, tokens differ" in problems[0]
    with db_factory.begin() as db:
        db.execute(text("DELETE FROM chain_round_verdicts WHERE peer_id = 'p2'"))
    with db_factory() as db:
        problems = ledger.verify(db).problems
    assert any("verdict on peer p2 that has no chain_round_verdicts row" in p for p in problems), problems


def test_a_session_with_verdicts_is_paid_by_verified_rounds_only(db_factory, ledger):
    """p1: two verified rounds (200 tokens); p2: one verified (100) and one failed; p3: only failed rounds,
    though its progress record claims 10**12 tokens. The pool is split 200:100:0."""
    with db_factory.begin() as db:
        set_reward_pool(db, ledger, "s1", 3_000, "APT")
        bind(db, "s1", {"p1": A, "p2": B, "p3": C})
        record_verdicts(db, ledger, "s1", 1, [V("p1", 1), V("p2", 1), V("p3", 1, Reason.OWN_DATA_FAIL)], VALIDATOR)
        record_verdicts(db, ledger, "s1", 2, [V("p1", 2), V("p2", 2, Reason.LATE),  # a failed spot check voids all
                                              V("p3", 2, Reason.DUPLICATE_UPDATE)], VALIDATOR)
        records = [Rec("p1", A, 999_999), Rec("p2", B, 50), Rec("p3", C, 10**12, tokens_per_second=10.0),
                   Rec("p4", A, 5_000)]  # p4 reported progress but was never judged
        settle_session(db, ledger, "s1", records)
    with db_factory() as db:
        contributions = {r.peer_id: r for r in db.scalars(select(ContributionRow))}
        rewards = {r.address: r.amount for r in db.scalars(select(RewardRow))}
        assert ledger.verify(db).ok
    assert {p: (c.tokens, c.outer_rounds, c.status) for p, c in contributions.items()} == {
        "p1": (200, 2, "verified"), "p2": (100, 1, "verified"), "p3": (0, 0, "excluded"), "p4": (0, 0, "excluded")}
    # a copy, or an update that does not show its shard, voids the session's credit (here none was earned)
    assert "it committed a copy of another peer's update and its update did not show its own shard in rounds 1, " \
        "2: its credit for the whole session" in contributions["p3"].reason
    assert "none of its rounds was judged" in contributions["p4"].reason
    assert rewards == {A: 2_000, B: 1_000}  # p3 (wallet C) gets nothing, its 10**12 claimed tokens notwithstanding


def test_verified_rounds_need_a_binding_and_sane_tokens(db_factory, ledger):
    """An unbound peer's verified rounds are not paid; a round worth more than one round can hold is skipped."""
    limits = Limits(tokens_per_outer_round=100)
    with db_factory.begin() as db:
        set_reward_pool(db, ledger, "s1", 1_000, "APT")
        bind(db, "s1", {"p1": A, "p2": B})
        record_verdicts(db, ledger, "s1", 1, [V("p1", 1), V("p2", 1, tokens=10**9), V("p3", 1)], VALIDATOR)
        record_verdicts(db, ledger, "s1", 2, [V("p2", 2, tokens=90)], VALIDATOR)
        settle_session(db, ledger, "s1", [], limits)
    with db_factory() as db:
        contributions = {r.peer_id: (r.tokens, r.status, r.address) for r in db.scalars(select(ContributionRow))}
        rewards = {r.address: r.amount for r in db.scalars(select(RewardRow))}
    assert contributions == {"p1": (100, "verified", A), "p2": (90, "verified", B), "p3": (100, "excluded", None)}
    assert rewards == {A: 526, B: 474}


def test_a_session_without_verdicts_settles_by_its_records(db_factory, ledger):
    with db_factory.begin() as db:
        set_reward_pool(db, ledger, "s2", 1_000, "APT")
        record_verdicts(db, ledger, "s1", 1, [V("p1", 1)], VALIDATOR)  # another session's verdicts change nothing
        settle_session(db, ledger, "s2", [Rec("p1", A, 100, session_id="s2"), Rec("p2", B, 300, session_id="s2")],
                       require_binding=False)
    with db_factory() as db:
        assert {r.address: r.amount for r in db.scalars(select(RewardRow))} == {A: 250, B: 750}


def test_round_outcomes_count_reasons_and_list_the_latest_with_their_sentence(db_factory, ledger):
    with db_factory.begin() as db:
        for round_ in range(1, 8):
            reason = Reason.OWN_DATA_FAIL if round_ % 3 == 0 else Reason.VERIFIED
            record_verdicts(db, ledger, "s1", round_, [V("p1", round_, reason, detail=f"round {round_} said so"),
                                                       V("p2", round_, Reason.NO_COMMIT)], VALIDATOR)
    with db_factory() as db:
        views = round_outcomes(db, "s1", recent=3)
    p1 = views["p1"]
    assert (p1.verified_rounds, p1.judged_rounds, p1.reasons) == (5, 7, {"own_data_fail": 2, "verified": 5})
    assert [(o.round, o.reason) for o in p1.recent] == [(7, "verified"), (6, "own_data_fail"), (5, "verified")]
    assert p1.recent[1].sentence == REASON_SENTENCES[Reason.OWN_DATA_FAIL] and p1.recent[1].detail == "round 6 said so"
    assert views["p2"].verified_rounds == 0 and views["p2"].reasons == {"no_commit": 7}
