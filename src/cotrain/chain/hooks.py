"""The calls the server makes, each opening its own DB transaction on the server's sessionmaker:

    on_session_created(factory, session_id, amount, asset)   when a session with a reward pool is created
    on_progress(factory, records)                           on every monitor tick (fetch_progress output)
    on_session_completed(factory, session_id, config)       when the session completed
    await pay_due(factory)                                  after completion, or from a periodic task
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cotrain.chain.contributions import Limits, ProgressLike
from cotrain.chain.orm import ProgressSnapshot, RewardRow
from cotrain.chain.payouts import PayoutReport
from cotrain.chain.runtime import platform_ledger, run_payouts
from cotrain.chain.service import set_reward_pool, settle_session
from cotrain.chain.settings import ChainSettings

T = TypeVar("T")
_FIELDS = ("step", "samples", "tokens", "tokens_per_second", "wallet", "device", "updated")


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


def _with_retry(fn: Callable[[], T]) -> T:
    """Run an idempotent transaction again when a concurrent ledger append took the same sequence number
    (SQLite has no advisory lock; PostgreSQL serialises appends)."""
    for attempt in range(3):
        try:
            return fn()
        except IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def on_session_created(factory: sessionmaker[Session], session_id: str, amount: int, asset: str = "APT") -> None:
    def create() -> None:
        with factory.begin() as db:
            set_reward_pool(db, platform_ledger(), session_id, amount, asset)

    _with_retry(create)


def record_progress(db: Session, records: Iterable[ProgressLike]) -> None:
    for r in records:
        row = db.scalars(select(ProgressSnapshot).where(
            ProgressSnapshot.session_id == r.session_id, ProgressSnapshot.peer_id == r.peer_id,
            ProgressSnapshot.outer_step == r.outer_step)).first()
        if row is None:
            db.add(ProgressSnapshot(session_id=r.session_id, peer_id=r.peer_id, outer_step=r.outer_step,
                                    **{f: getattr(r, f) for f in _FIELDS}))
        elif r.updated > row.updated:
            for f in _FIELDS:
                setattr(row, f, getattr(r, f))
    db.flush()


def on_progress(factory: sessionmaker[Session], records: Iterable[ProgressLike]) -> None:
    batch = list(records)

    def keep() -> None:
        with factory.begin() as db:
            record_progress(db, batch)

    _with_retry(keep)


def snapshots(db: Session, session_id: str) -> list[ProgressSnapshot]:
    return list(db.scalars(select(ProgressSnapshot).where(ProgressSnapshot.session_id == session_id)))


def on_session_completed(
    factory: sessionmaker[Session],
    session_id: str,
    config: Mapping[str, Any] | None = None,
    last_records: Iterable[ProgressLike] = (),
    require_binding: bool = True,
) -> list[RewardRow]:
    """Contributions from the kept progress records (plus `last_records`, e.g. a final fetch_progress),
    then the pro-rata rewards and the payouts due. Idempotent."""
    last = list(last_records)

    def settle() -> list[RewardRow]:
        with factory.begin() as db:
            record_progress(db, last)
            return settle_session(db, platform_ledger(), session_id, snapshots(db, session_id),
                                  limits_from_config(config), require_binding)

    return _with_retry(settle)


async def pay_due(factory: sessionmaker[Session], settings: ChainSettings | None = None) -> PayoutReport:
    return await run_payouts(factory, platform_ledger(), settings or ChainSettings.from_env())
