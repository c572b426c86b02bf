"""WebSocket messages of a session: numbered, stored for replay, then published.

Names: `training.progress` (the original design's payload, DESIGN.md §3), `training.status`,
`training.eval`, `training.checkpoint`, `training.error`, `training.peer`.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cotrain.server.models import SessionMessage, TrainingSession

PRIVATE = "private"


def record_message(db: Session, session_id: str, event: str, data: dict[str, Any]) -> dict[str, Any]:
    """Give the message the session's next sequence number and store it (in `db`'s transaction;
    publish only after it commits). The increment is one UPDATE ... RETURNING, so concurrent
    writers (executor, API) never share a number."""
    seq, public, owner_id = db.execute(
        update(TrainingSession)
        .where(TrainingSession.id == session_id)
        .values(message_seq=TrainingSession.message_seq + 1)
        .returning(TrainingSession.message_seq, TrainingSession.public, TrainingSession.owner_id)
    ).one()
    payload = {"sessionId": session_id, **data, "seq": seq}
    db.add(SessionMessage(session_id=session_id, seq=seq, event=event, time=time.time(), data=payload))
    message: dict[str, Any] = {"event": event, "data": payload}
    if not public:  # routing only (never sent): the fan-out gives it to the owner and admins alone
        message[PRIVATE] = {"owner": owner_id}
    return message


def messages_after(db: Session, session_id: str, after: int, limit: int = 10_000) -> list[dict[str, Any]]:
    rows = db.scalars(
        select(SessionMessage)
        .where(SessionMessage.session_id == session_id, SessionMessage.seq > after)
        .order_by(SessionMessage.seq)
        .limit(limit)
    )
    return [{"event": row.event, "data": row.data} for row in rows]


def status_message(db: Session, row: TrainingSession, **extra: Any) -> dict[str, Any]:
    data = {"status": row.status, "attempt": row.attempts, "error": row.error, **extra}
    return record_message(db, row.id, "training.status", data)
