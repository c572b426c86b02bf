"""The persistent queue: sessions in state `queued`, ordered by priority then age.

Claiming is atomic on every database: candidates are read with `FOR UPDATE SKIP LOCKED`
(PostgreSQL: concurrent workers skip each other's rows; SQLite serialises writers anyway), then
taken with a compare-and-set UPDATE that only succeeds while the row is still `queued`.

The scan reads the queue in pages until it finds a session that fits the worker, so sessions no
worker can run (or not this one) never hide the ones behind them, however many there are.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session, sessionmaker

from cotrain.server.orm import SessionStatus, TrainingSession


def claim_next(
    factory: sessionmaker[Session], worker_id: str, fits: Callable[[TrainingSession], bool], batch: int = 20
) -> TrainingSession | None:
    """Take the best queued session that `fits` this worker; None when there is none."""
    with factory.begin() as db:
        for page in itertools.count():
            candidates = db.scalars(
                select(TrainingSession)
                .where(TrainingSession.status == SessionStatus.QUEUED, TrainingSession.next_attempt_at <= time.time())
                .order_by(
                    TrainingSession.priority.desc(), TrainingSession.queued_at, TrainingSession.created_at,
                    TrainingSession.id,
                )
                .offset(page * batch)
                .limit(batch)
                .with_for_update(skip_locked=True)
            ).all()
            for row in candidates:
                if fits(row) and _take(db, row, worker_id):
                    return row
            if len(candidates) < batch:
                return None
    return None


def _take(db: Session, row: TrainingSession, worker_id: str) -> bool:
    """The compare-and-set: only one worker moves a row out of `queued`."""
    taken = cast(CursorResult[Any], db.execute(  # an UPDATE's result: it has the rowcount
        update(TrainingSession)
        .where(TrainingSession.id == row.id, TrainingSession.status == SessionStatus.QUEUED)
        .values(
            status=SessionStatus.STARTING, worker_id=worker_id, attempts=TrainingSession.attempts + 1,
            heartbeat_at=time.time(), pid=None, updated_at=time.time(),
        )
    )).rowcount
    if taken != 1:
        return False
    db.flush()
    db.refresh(row)
    return True


def queue_position(db: Session, row: TrainingSession) -> int | None:
    """1 for the next session to run; None when it is not queued."""
    if row.status != SessionStatus.QUEUED:
        return None
    ahead = db.scalars(
        select(TrainingSession.id).where(
            TrainingSession.status == SessionStatus.QUEUED,
            (TrainingSession.priority > row.priority)
            | ((TrainingSession.priority == row.priority) & (TrainingSession.queued_at < (row.queued_at or 0))),
        )
    ).all()
    return len(ahead) + 1
