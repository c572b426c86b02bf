"""A session's rewards rebuilt from its ledger entries alone (cotrain.chain.proof), on real SQLite and
PostgreSQL: the real settlement steps build the ledger, the proof reproduces every payout, and an edited
entry or a verdict that contradicts its evidence is named by its entry."""

from __future__ import annotations

import asyncio
import json
import time

from aptos_sdk.account import Account
from sqlalchemy import select, text

from cotrain.chain import aptos_tx
from cotrain.chain.contributions import Limits
from cotrain.chain.evidence import DrawnFrom
from cotrain.chain.orm import BindingProof, LedgerEntryRow, LedgerKind, PayoutBatchRow, PeerBinding, RewardRow
from cotrain.chain.payouts import record_due_locally
from cotrain.chain.proof import Entry, session_entries, verify_session, verify_session_db
from cotrain.chain.settlement import set_reward_pool, settle_session
from cotrain.chain.verdicts import record_verdicts
from cotrain.p2p.verification import Reason, Verdict

from .conftest import AuditEvents
from .fake_aptos import FakeAptosServer
from .round_evidence import PARAMS, SESSION, VALIDATOR, WORTH, round_event, verdict
from .test_payouts import payer

A, B, C = ("0x" + c * 64 for c in "abc")
POOL = 900


def record_round(db, ledger, event) -> None:
    """As the monitor records a verdict event: its verdicts and what they were drawn from."""
    verdicts = [Verdict.parse(v) for v in event["verdicts"]]
    record_verdicts(db, ledger, SESSION, event["round"], verdicts, VALIDATOR, DrawnFrom.of(event, PARAMS))


def build_session(db_factory, ledger) -> None:
    with db_factory.begin() as db:
        set_reward_pool(db, ledger, SESSION, POOL, "APT")
        for peer, address in (("p1", A), ("p2", B), ("p3", C)):
            db.add(PeerBinding(session_id=SESSION, peer_id=peer, address=address, proof=BindingProof.PEER_AND_WALLET,
                               created_at=time.time()))
        record_round(db, ledger, round_event(1))
        record_verdicts(db, ledger, "other", 1, [Verdict("other", 1, "q1", Reason.NO_COMMIT, "none.", {}, 0)],
                        VALIDATOR)  # another session's entry between this one's
        record_round(db, ledger, round_event(2))
        settle_session(db, ledger, SESSION, [], Limits(tokens_per_outer_round=PARAMS.tokens_per_round,
                                                       seq_length=PARAMS.seq_length))
    record_due_locally(db_factory, ledger, AuditEvents())


def proof(db_factory, ledger):
    with db_factory() as db:
        return verify_session_db(db, SESSION, ledger.trusted)


def test_the_proof_reproduces_every_payout(db_factory, ledger):
    build_session(db_factory, ledger)
    report = proof(db_factory, ledger)
    assert report.ok, [str(p) for p in report.problems]
    assert report.by_verdicts and report.rounds == 2 and report.verified_rounds == 3
    peers = {p.peer_id: p for p in report.peers}
    assert {p: (v.verified_rounds, v.judged_rounds, v.rebuilt_tokens, v.recorded_tokens)
            for p, v in peers.items()} == {"p1": (2, 2, 2 * WORTH, 2 * WORTH), "p2": (1, 2, WORTH, WORTH),
                                           "p3": (0, 2, 0, 0), "p4": (0, 2, 0, 0)}
    with db_factory() as db:
        paid = {r.address: r.amount for r in db.scalars(select(RewardRow).where(RewardRow.session_id == SESSION))}
    assert paid == {A: 600, B: 300}
    assert {peers[p].address: (peers[p].rebuilt_reward, peers[p].recorded_reward, peers[p].due)
            for p in ("p1", "p2")} == {A: (600, 600, 600), B: (300, 300, 300)}
    assert report.pool == POOL and report.due == POOL and report.paid == 0
    # the entry of a judged round holds what its verdicts were drawn from
    with db_factory() as db:
        body = json.loads(db.scalars(select(LedgerEntryRow.body).where(LedgerEntryRow.kind == LedgerKind.VERDICT)
                                     .order_by(LedgerEntryRow.seq)).first())
    assert body["deadline"] == 1001.0 and body["params"]["tokens_per_round"] == WORTH
    assert sorted(body["evidence"]["commitments"]) == ["p1", "p2", "p3"]
    assert body["evidence"]["receipts"]["p1"]["members"]["p2"] == body["evidence"]["commitments"]["p2"]["update_hash"]


def test_an_entry_edited_in_the_database_is_named(db_factory, ledger):
    build_session(db_factory, ledger)
    with db_factory.begin() as db:  # someone with the database makes p3's failed round 1 a verified one
        seq = db.scalars(select(LedgerEntryRow.seq).where(LedgerEntryRow.kind == LedgerKind.VERDICT,
                                                          LedgerEntryRow.session_id == SESSION)).first()
        row = db.get_one(LedgerEntryRow, seq)
        body = json.loads(row.body)
        body["verdicts"][2].update(reason="verified", tokens=WORTH)
        db.execute(text("UPDATE chain_ledger SET body = :body WHERE seq = :seq"),
                   {"body": json.dumps(body, separators=(",", ":"), sort_keys=True), "seq": seq})
    problems = [str(p) for p in proof(db_factory, ledger).problems]
    assert f"ledger entry {seq} (verdict): was changed: its content no longer matches its hash" in problems
    # it also fails the own-data rule, and p3's recorded contribution no longer matches (its other own-data
    # failure still voids its session credit, so the rewards stay as they were)
    assert any(p.startswith(f"ledger entry {seq} (verdict): peer p3: verified, but its scores") for p in problems)
    assert any("(contribution): peer p3: reason" in p and "rebuilt:" in p for p in problems), "\n".join(problems)


def test_a_verdict_that_contradicts_its_evidence_is_named(db_factory, ledger):
    """A validator that says "verified" for a peer no receipt vouches for, and one whose late peer was on time:
    the entries are signed, so only their evidence can show it."""
    event = round_event(1)
    event["evidence"]["receipts"] = {}  # nobody vouched for anyone
    event["verdicts"][3] = verdict("p4", 1, Reason.VERIFIED, {"own_drop": 1.0, "own_data": 1.0}).as_dict()
    with db_factory.begin() as db:
        set_reward_pool(db, ledger, SESSION, POOL, "APT")
        record_round(db, ledger, event)
        seq = db.scalars(select(LedgerEntryRow.seq).where(LedgerEntryRow.kind == LedgerKind.VERDICT)).one()
    problems = [str(p) for p in proof(db_factory, ledger).problems]
    assert f"ledger entry {seq} (verdict): peer p1: reason verified but the evidence says not_in_group " \
           "(0 receipt(s) of other members name its committed update)" in problems
    assert any(p.startswith(f"ledger entry {seq} (verdict): peer p4: reason verified but the evidence says "
                            "no_commit") for p in problems), "\n".join(problems)
    assert f"ledger entry {seq} (verdict): peer p3: reason own_data_fail but the evidence says not_in_group " \
           "(0 receipt(s) of other members name its committed update)" in problems  # never to be measured
    assert len(problems) == 4, "\n".join(problems)  # a session not settled yet: nothing else is due


def test_a_late_commitment_judged_verified_is_named(db_factory, ledger):
    event = round_event(1)
    event["evidence"]["commitments"]["p2"]["committed_at"] = 2000.0  # after the deadline, yet "verified"
    with db_factory.begin() as db:
        record_round(db, ledger, event)
    problems = [str(p) for p in proof(db_factory, ledger).problems]
    assert problems == ["ledger entry 1 (verdict): peer p2: reason verified but the evidence says late (committed "
                        "at 2000.0, after the deadline 1001.0)"]


def test_export_then_offline_verify_round_trip(db_factory, ledger):
    build_session(db_factory, ledger)
    with db_factory() as db:
        lines = [json.dumps(e.as_dict()) for e in session_entries(db, SESSION)]
    entries = [Entry.parse(json.loads(line)) for line in lines]
    assert {e.session_id for e in entries} == {SESSION}
    offline = verify_session(entries, SESSION)  # no database, no key given: the one signer is reported
    assert offline.ok, [str(p) for p in offline.problems]
    assert offline.signers == [str(ledger.public_key)] and offline.due == POOL
    reward = next(i for i, e in enumerate(entries) if e.kind == LedgerKind.REWARD)
    edited = json.loads(lines[reward])
    edited["body"] = edited["body"].replace('"amount":600', '"amount":700')
    entries[reward] = Entry.parse(edited)
    problems = [str(p) for p in verify_session(entries, SESSION).problems]
    seq = entries[reward].seq
    assert problems[:2] == [f"ledger entry {seq} (reward): was changed: its content no longer matches its hash",
                            f"ledger entry {seq} (reward): reward of {A}: 700 APT (rebuilt: 600 APT)"]
    other_key = verify_session(entries[:reward], SESSION, trusted={"0x" + "1" * 64}).problems
    assert other_key and all("which is not the platform key" in p.what for p in other_key)


def test_aptos_batch_transfer_amounts_are_checked(db_factory, ledger):
    """Paid through the fake Aptos node: the proof counts the committed payouts and compares them with the amounts
    of the signed batch_transfer; a stored transaction that pays other amounts is named by its payout entry."""
    with db_factory.begin() as db:
        set_reward_pool(db, ledger, SESSION, POOL, "APT")
        for peer, address in (("p1", A), ("p2", B), ("p3", C)):
            db.add(PeerBinding(session_id=SESSION, peer_id=peer, address=address, proof=BindingProof.PEER_AND_WALLET,
                               created_at=time.time()))
        record_round(db, ledger, round_event(1))
        settle_session(db, ledger, SESSION, [], Limits(PARAMS.tokens_per_round, PARAMS.seq_length))
    treasury = Account.generate()
    with FakeAptosServer() as node:
        node.node.fund(str(treasury.address()), 10**9)  # the pool and the gas
        report = asyncio.run(payer(db_factory, ledger, node, treasury).run())
    assert len(report.committed) == 1, report.messages
    proof_ = proof(db_factory, ledger)
    assert proof_.ok and proof_.paid == POOL and proof_.due == 0, [str(p) for p in proof_.problems]
    assert {p.address: p.paid for p in proof_.peers if p.paid} == {A: 450, B: 450}
    with db_factory.begin() as db:  # the stored transaction swapped for one paying A more (signed by the treasury)
        batch = db.scalars(select(PayoutBatchRow)).one()
        raw = aptos_tx.from_hex(batch.signed_txn).transaction
        raw.payload = aptos_tx.batch_payload("APT", [(A, 800), (B, 100)])
        batch.signed_txn = aptos_tx.sign(treasury, raw).bytes().hex()
        seq = db.scalars(select(LedgerEntryRow.seq).where(LedgerEntryRow.kind == LedgerKind.PAYOUT)).one()
    problems = [str(p) for p in proof(db_factory, ledger).problems]
    assert len(problems) == 1 and problems[0].startswith(f"ledger entry {seq} (payout): its signed batch_transfer "
                                                         f"pays [('{A}', 800), ('{B}', 100)]"), problems


def test_a_verified_copy_of_an_earlier_update_is_named(db_factory, ledger):
    """p2 committed p1's update after p1 did (a copycat), yet the validator's entry says it was verified."""
    event = round_event(1)
    copied = event["evidence"]["commitments"]["p1"]["update_hash"]
    event["evidence"]["commitments"]["p2"].update(update_hash=copied, committed_at=995.0)  # p1's: at 991.0
    for signer in ("p1", "p2", "p3"):  # the receipts name the update each member sent
        event["evidence"]["receipts"][signer]["members"]["p2"] = copied
    with db_factory.begin() as db:
        record_round(db, ledger, event)
    problems = [str(p) for p in proof(db_factory, ledger).problems]
    assert problems == ["ledger entry 1 (verdict): peer p2: reason verified but the evidence says duplicate_update "
                        "(peer p1 committed the same update before it)"]
