"""The append-only contribution ledger: each entry holds the hash of the previous one and the platform's
Ed25519 signature over its own hash, so any change to history is detectable.

entry_hash = sha3_256( sha3_256(b"COTRAIN::LedgerEntry") || BCS(seq: u64, kind: str, session_id: str,
                       body: str, created_at_us: u64) || prev_hash (32 bytes) )   (cotrain.hashchain)
signature  = Ed25519(platform key, entry_hash)

Rows in other tables that carry a `ledger_seq` (contributions, reward pools, rewards) are checked against
the body of their entry, so editing one of those rows by hand is detected as well. What this cannot detect
on its own: someone with DB access deleting the newest entries together with their rows (anchor the head
hash elsewhere for that).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from aptos_sdk import ed25519
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from cotrain.chain.orm import (
    BatchStatus,
    ContributionRow,
    LedgerEntryRow,
    LedgerKind,
    PayoutRow,
    PayoutStatus,
    RewardPoolRow,
    RewardRow,
    RoundVerdictRow,
)
from cotrain.hashchain import GENESIS, canonical_json, link_hash, micros

__all__ = ["GENESIS_PREV", "EntryFields", "Ledger", "VerifyReport", "canonical_json", "entry_hash", "entry_problems"]

GENESIS_PREV = GENESIS
_PG_LOCK_ID = 0x636F7472  # advisory lock serialising appends on PostgreSQL


def entry_hash(seq: int, kind: str, session_id: str, body: str, created_at: float, prev_hash: str) -> str:
    return link_hash("LedgerEntry", (seq, kind, session_id, body, micros(created_at)), prev_hash)


class Ledger:
    """Appends signed entries and verifies the whole chain. `trusted` are the public keys whose signatures
    verify accepts (default: the signing key's own)."""

    def __init__(self, key: ed25519.PrivateKey, trusted: Iterable[ed25519.PublicKey] | None = None):
        self.key = key  # the platform key: signs entries and wallet tokens; never leaves the process
        self.public_key = key.public_key()
        self.trusted = {str(k) for k in (trusted or [self.public_key])}

    def append(self, db: Session, kind: LedgerKind, session_id: str, body: dict[str, Any]) -> LedgerEntryRow:
        """Add an entry in the caller's transaction (it becomes visible when the caller commits)."""
        if db.get_bind().dialect.name == "postgresql":
            db.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK_ID})
        last = db.scalars(select(LedgerEntryRow).order_by(LedgerEntryRow.seq.desc()).limit(1)).first()
        seq = 1 if last is None else last.seq + 1
        prev = GENESIS_PREV if last is None else last.entry_hash
        created = round(time.time(), 6)
        text_body = canonical_json(body)
        digest = entry_hash(seq, kind, session_id, text_body, created, prev)
        row = LedgerEntryRow(
            seq=seq,
            kind=kind,
            session_id=session_id,
            body=text_body,
            created_at=created,
            prev_hash=prev,
            entry_hash=digest,
            signer=str(self.public_key),
            signature=str(self.key.sign(bytes.fromhex(digest))),
        )
        db.add(row)
        db.flush()
        return row

    def verify(self, db: Session) -> VerifyReport:
        report = VerifyReport()
        prev = GENESIS_PREV
        expected_seq = 1
        bodies: dict[int, tuple[str, dict[str, Any]]] = {}
        for row in db.scalars(select(LedgerEntryRow).order_by(LedgerEntryRow.seq)):
            report.entries += 1
            where = f"ledger entry {row.seq} ({row.kind}, session {row.session_id})"
            if row.seq != expected_seq:
                report.problems.append(f"entries {expected_seq}..{row.seq - 1} are missing before {where}")
            if row.prev_hash != prev:
                report.problems.append(f"{where} does not link to the entry before it (prev_hash differs)")
            report.problems.extend(entry_problems(row, self.trusted, where))
            try:
                bodies[row.seq] = (row.kind, json.loads(row.body))
            except ValueError:
                report.problems.append(f"{where} has a body that is not JSON")
            prev = row.entry_hash
            expected_seq = row.seq + 1
        report.head = prev
        report.problems.extend(_check_copies(db, bodies))
        report.problems.extend(_check_payouts(db, bodies))
        report.problems.extend(_check_verdicts(db, bodies))
        return report


@dataclass
class VerifyReport:
    entries: int = 0
    head: str = GENESIS_PREV
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class EntryFields(Protocol):
    """A ledger entry: a chain_ledger row, or one read back from an export (cotrain.chain.proof)."""

    @property
    def seq(self) -> int: ...

    @property
    def kind(self) -> str: ...

    @property
    def session_id(self) -> str: ...

    @property
    def body(self) -> str: ...

    @property
    def created_at(self) -> float: ...

    @property
    def prev_hash(self) -> str: ...

    @property
    def entry_hash(self) -> str: ...

    @property
    def signer(self) -> str: ...

    @property
    def signature(self) -> str: ...


def entry_problems(entry: EntryFields, trusted: set[str], where: str) -> list[str]:
    """What is wrong with one entry on its own: content that no longer matches its hash, a signer that is not
    trusted, a signature that does not verify. (Its link to the entry before it is the caller's to check.)"""
    problems = []
    digest = entry_hash(entry.seq, entry.kind, entry.session_id, entry.body, entry.created_at, entry.prev_hash)
    if digest != entry.entry_hash:
        problems.append(f"{where} was changed: its content no longer matches its hash")
    if entry.signer not in trusted:
        problems.append(f"{where} is signed by {entry.signer}, which is not the platform key")
    elif not _signature_ok(entry.signer, entry.entry_hash, entry.signature):
        problems.append(f"{where} has an invalid platform signature")
    return problems


def _signature_ok(signer: str, digest: str, signature: str) -> bool:
    try:
        return ed25519.PublicKey.from_str(signer).verify(bytes.fromhex(digest), ed25519.Signature.from_str(signature))
    except Exception:
        return False


# Which columns of a row must equal which keys of its ledger entry's body.
_COPIES: list[tuple[type[ContributionRow | RewardPoolRow | RewardRow], LedgerKind, tuple[str, ...]]] = [
    (ContributionRow, LedgerKind.CONTRIBUTION, ("session_id", "peer_id", "address", "samples", "tokens", "outer_rounds",
                                       "compute_seconds", "tokens_per_second", "device", "status", "reason")),
    (RewardPoolRow, LedgerKind.REWARD_POOL, ("session_id", "amount", "asset")),
    (RewardRow, LedgerKind.REWARD, ("session_id", "address", "amount", "asset")),
]


def _check_copies(db: Session, bodies: dict[int, tuple[str, dict[str, Any]]]) -> list[str]:
    problems: list[str] = []
    for model, kind, columns in _COPIES:
        rows = cast(Sequence[ContributionRow | RewardPoolRow | RewardRow], db.scalars(select(model)).all())
        for row in rows:
            entry_kind, body = bodies.get(row.ledger_seq, ("", {}))
            label = f"{model.__tablename__} row for session {row.session_id}"
            if entry_kind != kind:
                problems.append(f"{label} points at ledger entry {row.ledger_seq}, which is not a {kind} entry")
                continue
            changed = [c for c in columns if body.get(c) != getattr(row, c)]
            if changed:
                problems.append(f"{label} was changed outside the ledger ({', '.join(changed)} differ from "
                                f"ledger entry {row.ledger_seq})")
    return problems


def _check_payouts(db: Session, bodies: dict[int, tuple[str, dict[str, Any]]]) -> list[str]:
    """Payout rows agree with the committed payouts in the ledger: nobody marked paid without a committed
    transaction (skipped), nobody paid by one set back to due (paid twice)."""
    paid_in_ledger: dict[tuple[str, str], tuple[int, str]] = {}
    for kind, body in bodies.values():
        if kind == LedgerKind.PAYOUT and body.get("status") == BatchStatus.COMMITTED:
            for address, amount in body.get("recipients", []):
                paid_in_ledger[(str(body.get("session_id", "")), address)] = (amount, str(body.get("tx_hash")))
    problems = []
    for row in db.scalars(select(PayoutRow)):
        label = f"chain_payouts row of {row.address} for session {row.session_id}"
        recorded = paid_in_ledger.pop((row.session_id, row.address), None)
        if row.status == PayoutStatus.PAID and recorded != (row.amount, row.tx_hash):
            problems.append(f"{label} is marked paid ({row.amount}, {row.tx_hash}) but the ledger has no such "
                            "committed payout")
        elif row.status != PayoutStatus.PAID and recorded is not None:
            problems.append(f"{label} is '{row.status}' but the ledger records it paid in {recorded[1]}")
    for session_id, address in paid_in_ledger:
        problems.append(f"the ledger records a payout to {address} for session {session_id} that has no payout row")
    return problems


def _check_verdicts(db: Session, bodies: dict[int, tuple[str, dict[str, Any]]]) -> list[str]:
    """Every verdict row equals its peer's verdict in its round's VERDICT entry, and every verdict of an entry
    has its row (a deleted row would change what a session is paid)."""
    in_ledger: dict[tuple[int, str], dict[str, Any]] = {}
    for seq, (kind, body) in bodies.items():
        if kind == LedgerKind.VERDICT:
            for verdict in body.get("verdicts", []):
                in_ledger[(seq, str(verdict.get("peer_id")))] = {**verdict, "session_id": body.get("session_id"),
                                                                  "round": body.get("round"),
                                                                  "validator": body.get("validator")}
    problems = []
    for row in db.scalars(select(RoundVerdictRow)):
        label = f"chain_round_verdicts row of peer {row.peer_id}, round {row.round}, session {row.session_id}"
        recorded = in_ledger.pop((row.ledger_seq, row.peer_id), None)
        if recorded is None:
            problems.append(f"{label} has no verdict in ledger entry {row.ledger_seq}")
            continue
        changed = [c for c in ("session_id", "round", "validator", "reason", "detail", "scores", "tokens")
                   if recorded.get(c) != getattr(row, c)]
        if changed:
            problems.append(f"{label} was changed outside the ledger ({', '.join(changed)} differ from ledger "
                            f"entry {row.ledger_seq})")
    for seq, peer in in_ledger:
        problems.append(f"ledger entry {seq} holds a verdict on peer {peer} that has no chain_round_verdicts row")
    return problems
