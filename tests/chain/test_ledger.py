"""The ledger on real SQLite and PostgreSQL: entries chain, verify passes, and any hand edit is caught."""

from __future__ import annotations

from aptos_sdk import ed25519
from sqlalchemy import text

from cotrain.chain.ledger import Ledger
from cotrain.chain.settlement import set_reward_pool, settle_session
from cotrain.p2p.progress import PeerProgress

A, B, C = ("0x" + c * 64 for c in "abc")


def Rec(peer_id: str, wallet: str | None, tokens: int, session_id: str = "s1", step: int = 10,
        outer_step: int = 1, tokens_per_second: float = 1000.0, samples: int = 100, device: str = "cpu",
        updated: float = 1.0) -> PeerProgress:
    """A peer's progress record, with what the ledger tests leave the same by default."""
    return PeerProgress(peer_id=peer_id, session_id=session_id, step=step, outer_step=outer_step,
                        tokens_per_second=tokens_per_second, samples=samples, tokens=tokens, wallet=wallet,
                        device=device, updated=updated)


def settled(db_factory, ledger):
    with db_factory.begin() as db:
        set_reward_pool(db, ledger, "s1", 1_000, "APT")
        settle_session(db, ledger, "s1", [Rec("p1", A, 100), Rec("p2", B, 300), Rec("p3", C, 600)],
                       require_binding=False)


def verify(db_factory, ledger):
    with db_factory() as db:
        return ledger.verify(db)


def test_entries_chain_and_verify(db_factory, ledger):
    settled(db_factory, ledger)
    report = verify(db_factory, ledger)
    assert report.ok, report.problems
    assert report.entries == 1 + 3 + 3  # pool, contributions, rewards
    with db_factory() as db:
        rewards = dict(db.execute(text("SELECT address, amount FROM chain_rewards")).all())
    assert rewards == {A: 100, B: 300, C: 600}


def test_settling_twice_changes_nothing(db_factory, ledger):
    settled(db_factory, ledger)
    settled(db_factory, ledger)
    assert verify(db_factory, ledger).entries == 7


def test_editing_a_ledger_row_is_detected(db_factory, ledger):
    settled(db_factory, ledger)
    with db_factory.begin() as db:
        db.execute(text("UPDATE chain_ledger SET body = replace(body, '600', '900') WHERE seq = 4"))
    report = verify(db_factory, ledger)
    assert not report.ok and any("entry 4" in p and "changed" in p for p in report.problems)


def test_editing_a_reward_row_is_detected(db_factory, ledger):
    settled(db_factory, ledger)
    with db_factory.begin() as db:
        db.execute(text(f"UPDATE chain_rewards SET amount = 999 WHERE address = '{A}'"))
    report = verify(db_factory, ledger)
    assert not report.ok and any("chain_rewards" in p and "amount" in p for p in report.problems)


def test_editing_a_contribution_row_is_detected(db_factory, ledger):
    settled(db_factory, ledger)
    with db_factory.begin() as db:
        db.execute(text("UPDATE chain_contributions SET tokens = tokens * 10 WHERE peer_id = 'p1'"))
    assert not verify(db_factory, ledger).ok


def test_rehashing_without_the_key_and_deleting_are_detected(db_factory, ledger):
    settled(db_factory, ledger)
    forger = Ledger(ed25519.PrivateKey.random())
    with db_factory.begin() as db:
        # A forger rewrites entry 2 with a valid hash and a signature of their own key.
        from cotrain.chain.ledger import entry_hash
        row = db.execute(text("SELECT seq, kind, session_id, body, created_at, prev_hash FROM chain_ledger "
                              "WHERE seq = 2")).one()
        body = row.body.replace('"tokens":100', '"tokens":101')
        digest = entry_hash(row.seq, row.kind, row.session_id, body, row.created_at, row.prev_hash)
        db.execute(text("UPDATE chain_ledger SET body=:b, entry_hash=:h, signer=:s, signature=:g WHERE seq=2"),
                   {"b": body, "h": digest, "s": str(forger.public_key),
                    "g": str(forger.key.sign(bytes.fromhex(digest)))})
    problems = verify(db_factory, ledger).problems
    assert any("not the platform key" in p for p in problems)
    assert any("entry 3" in p and "link" in p for p in problems)

    with db_factory.begin() as db:
        # Deleting a reward with its entry (the foreign key forbids deleting the entry alone).
        db.execute(text("DELETE FROM chain_rewards WHERE ledger_seq = 5"))
        db.execute(text("DELETE FROM chain_ledger WHERE seq = 5"))
    assert any("missing" in p for p in verify(db_factory, ledger).problems)
