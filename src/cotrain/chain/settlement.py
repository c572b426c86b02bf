"""The steps of a session's rewards, each in the caller's DB transaction, each writing ledger entries:

* `set_reward_pool` when a session is created with a reward pool;
* `keep_progress` on every monitor tick of a running DiLoCo session: the peers' DHT progress records
  (they expire from the DHT, so their counters are kept while it runs);
* `settle_session` when the session completes: contributions from the kept records, then the pro-rata
  rewards and the payouts due. Calling it again for the same session changes nothing. A session whose
  rounds a validator judged (chain/verdicts.py) is settled by its verified rounds only: its progress records
  then describe the peers but count for nothing.
Payouts are then sent (or, with the local backend, recorded as due) by `runtime.run_payouts`.
`cotrain.chain.service.ChainService` runs these steps in transactions of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cotrain.chain.bindings import bound_wallets
from cotrain.chain.contributions import Contribution, Limits, tally, weights
from cotrain.chain.errors import ChainError
from cotrain.chain.ledger import Ledger
from cotrain.chain.orm import (
    ContributionRow,
    LedgerKind,
    PayoutRow,
    PayoutStatus,
    ProgressSnapshot,
    RewardPoolRow,
    RewardRow,
)
from cotrain.chain.rewards import split_pool
from cotrain.chain.verdicts import verdict_contributions, verdicts_of
from cotrain.p2p.progress import PeerProgress, skipped_once

T = TypeVar("T")


def retry_on_conflict(transaction: Callable[[], T]) -> T:
    """Run an idempotent transaction again when a concurrent ledger append took the same sequence number
    (SQLite has no advisory lock; PostgreSQL serialises appends)."""
    for attempt in range(3):
        try:
            return transaction()
        except IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def set_reward_pool(db: Session, ledger: Ledger, session_id: str, amount: int, asset: str = "APT") -> RewardPoolRow:
    if amount < 0:
        raise ChainError("A reward pool must be zero or more (in the asset's smallest unit, octas for APT).")
    existing = db.get(RewardPoolRow, session_id)
    if existing is not None:
        if (existing.amount, existing.asset) != (amount, asset):
            raise ChainError(f"Session {session_id} already has a reward pool of {existing.amount} {existing.asset}; "
                             "a pool cannot be changed once set.")
        return existing
    body = {"session_id": session_id, "amount": amount, "asset": asset}
    entry = ledger.append(db, LedgerKind.REWARD_POOL, session_id, body)
    row = RewardPoolRow(session_id=session_id, amount=amount, asset=asset, ledger_seq=entry.seq)
    db.add(row)
    db.flush()
    return row


def limits_from_config(config: Mapping[str, Any] | None) -> Limits:
    """Plausibility limits from the session's TOML config (as a dict): a DiLoCo peer can process at most
    inner_steps × batch_size × seq_length tokens per outer round, and seq_length tokens per sample."""
    if not config:
        return Limits()
    seq = config.get("data", {}).get("seq_length")
    batch = config.get("train", {}).get("batch_size")
    dist = config.get("distributed", {})
    inner = dist.get("diloco", {}).get("inner_steps") if dist.get("strategy") == "diloco" else None
    per_round = int(inner) * int(batch) * int(seq) if inner and batch and seq else None
    return Limits(tokens_per_outer_round=per_round, seq_length=int(seq) if seq else None)


def in_range(records: Iterable[PeerProgress]) -> list[PeerProgress]:
    """The records whose numbers can be true; each other one is skipped alone (logged once with why), so
    one bad record never stops the settlement of its session's other peers, or of other sessions."""
    kept = []
    for record in records:
        why = record.out_of_range()
        if why is None:
            kept.append(record)
        else:
            skipped_once(record.session_id, record.peer_id, why)
    return kept


def keep_progress(db: Session, records: Iterable[PeerProgress]) -> None:
    """Keep the newest record per peer and outer step (records out of range are skipped)."""
    for record in in_range(records):
        row = db.scalars(select(ProgressSnapshot).where(
            ProgressSnapshot.session_id == record.session_id, ProgressSnapshot.peer_id == record.peer_id,
            ProgressSnapshot.outer_step == record.outer_step)).first()
        if row is None:
            db.add(ProgressSnapshot.of(record))
        elif record.updated > row.updated:
            row.keep(record)
    db.flush()


def kept_progress(db: Session, session_id: str) -> list[PeerProgress]:
    return [row.as_progress()
            for row in db.scalars(select(ProgressSnapshot).where(ProgressSnapshot.session_id == session_id))]


def contributions_now(db: Session, session_id: str, records: Iterable[PeerProgress], limits: Limits | None = None,
                      require_binding: bool = True) -> list[Contribution]:
    """The contributions the session would be settled with now (nothing is written): by its verified rounds
    when a validator judged any, else by its progress records. Settlement records these; before it (a
    running session, or one inside its challenge window) they are each peer's provisional credit."""
    mine = in_range(r for r in records if r.session_id == session_id)
    bindings = bound_wallets(db, session_id) if require_binding else None
    judged = verdicts_of(db, session_id)
    return (verdict_contributions(session_id, judged, mine, limits, bindings) if judged  # verified rounds only
            else tally(mine, limits, bindings))


def record_contributions(
    db: Session,
    ledger: Ledger,
    session_id: str,
    records: Iterable[PeerProgress],
    limits: Limits | None = None,
    require_binding: bool = True,
) -> list[ContributionRow]:
    existing = list(db.scalars(select(ContributionRow).where(ContributionRow.session_id == session_id)
                               .order_by(ContributionRow.peer_id)))
    if existing:
        return existing
    rows = []
    for c in contributions_now(db, session_id, records, limits, require_binding):
        entry = ledger.append(db, LedgerKind.CONTRIBUTION, session_id, asdict(c))
        row = ContributionRow(**asdict(c), ledger_seq=entry.seq)
        db.add(row)
        rows.append(row)
    db.flush()
    return rows


def distribute_rewards(db: Session, ledger: Ledger, session_id: str) -> list[RewardRow]:
    existing = list(db.scalars(select(RewardRow).where(RewardRow.session_id == session_id)))
    if existing:
        return existing
    pool = db.get(RewardPoolRow, session_id)
    if pool is None:
        return []
    contributions = [Contribution(**{k: getattr(r, k) for k in Contribution.__dataclass_fields__})
                     for r in db.scalars(select(ContributionRow).where(ContributionRow.session_id == session_id))]
    rows = []
    for address, amount in sorted(split_pool(pool.amount, weights(contributions)).items()):
        body = {"session_id": session_id, "address": address, "amount": amount, "asset": pool.asset}
        entry = ledger.append(db, LedgerKind.REWARD, session_id, body)
        rows.append(RewardRow(**body, ledger_seq=entry.seq))
        if amount > 0:
            db.add(PayoutRow(session_id=session_id, address=address, amount=amount, asset=pool.asset,
                             status=PayoutStatus.DUE))
    db.add_all(rows)
    db.flush()
    return rows


def settle_session(
    db: Session,
    ledger: Ledger,
    session_id: str,
    records: Iterable[PeerProgress],
    limits: Limits | None = None,
    require_binding: bool = True,
) -> list[RewardRow]:
    """The completion step: contributions, then rewards and payouts due. Idempotent."""
    record_contributions(db, ledger, session_id, records, limits, require_binding)
    return distribute_rewards(db, ledger, session_id)
