"""WebSocket messages of a session: numbered, stored for replay, then published.

Names: `training.progress` (docs/architecture.md, "WebSocket messages"), `training.status`,
`training.eval`, `training.checkpoint`, `training.error`, `training.peer`; their data is one model
each (server/message_data.py), stored and published in its wire form, `{"event": NAME, "data":
{"sessionId": ID, ...camelCase fields, "seq": N}}`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cotrain.server.auth import Actor
from cotrain.server.internals import scrub_data
from cotrain.server.message_data import MessageData, StatusData
from cotrain.server.orm import SessionMessage, TrainingSession
from cotrain.server.permissions import can_see_internals

PRIVATE = "private"
OWNER = "owner"  # routing only: who sees the message unredacted (internals.py, permissions.can_see_internals)


def record_message(db: Session, session_id: str, data: MessageData) -> dict[str, Any]:
    """Give the message the session's next sequence number and store it in its wire form (in `db`'s
    transaction; publish only after it commits). The increment is one UPDATE ... RETURNING, so
    concurrent writers (executor, API) never share a number."""
    seq, public, owner_id = db.execute(
        update(TrainingSession)
        .where(TrainingSession.id == session_id)
        .values(message_seq=TrainingSession.message_seq + 1)
        .returning(TrainingSession.message_seq, TrainingSession.public, TrainingSession.owner_id)
    ).one()
    payload = {"sessionId": session_id, **data.to_wire(), "seq": seq}
    db.add(SessionMessage(session_id=session_id, seq=seq, event=data.EVENT, time=time.time(), data=payload))
    message: dict[str, Any] = {"event": data.EVENT, "data": payload, OWNER: owner_id}
    if not public:  # routing only (never sent): the fan-out gives it to the owner and admins alone
        message[PRIVATE] = {"owner": owner_id}
    return message


def shown_to(actor: Actor | None, owner_id: int | None, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`messages` as `actor` may see them: unchanged for the session's owner and admins, without
    paths, host names and tracebacks for everyone else."""
    if can_see_internals(actor, owner_id):
        return messages
    return [{**m, "data": scrub_data(m["data"])} for m in messages]


def messages_after(db: Session, session_id: str, after: int, limit: int = 10_000) -> list[dict[str, Any]]:
    rows = db.scalars(
        select(SessionMessage)
        .where(SessionMessage.session_id == session_id, SessionMessage.seq > after)
        .order_by(SessionMessage.seq)
        .limit(limit)
    )
    return [{"event": row.event, "data": row.data} for row in rows]


def messages_for_all(
    db: Session, known: dict[str, int], since: float | None, readable: Callable[[TrainingSession], bool],
    limit: int = 10_000,
) -> list[dict[str, Any]]:
    """What a `"*"` subscriber missed, in the order they were stored: messages of the sessions in
    `known` after their seq, and (with `since`) every message stored since then of a session not in
    `known` (one it never heard of: created, or first active, while it was away). Only sessions
    `readable` by the subscriber; unknown and unreadable ids in `known` are skipped alike.

    At most `limit` rows are read in all (issue 11: a replay never reads unbounded rows into memory):
    each query asks only for what is left of the budget, so a long list of busy sessions costs no
    more than one; past the budget each session's replay is a prefix (its earliest messages)."""
    sessions = {row.id: row for row in db.scalars(select(TrainingSession).where(TrainingSession.id.in_(list(known))))}
    found: list[SessionMessage] = []
    for session_id, seq in known.items():  # one indexed range each (an OR of hundreds is too deep for SQLite)
        if len(found) >= limit:
            break
        if session_id in sessions and readable(sessions[session_id]):
            found.extend(db.scalars(
                select(SessionMessage)
                .where(SessionMessage.session_id == session_id, SessionMessage.seq > seq)
                .order_by(SessionMessage.seq)
                .limit(limit - len(found))
            ))
    if since is not None and len(found) < limit:
        query = (
            select(SessionMessage, TrainingSession)
            .join(TrainingSession, TrainingSession.id == SessionMessage.session_id)
            .where(SessionMessage.time >= since, SessionMessage.session_id.not_in(list(known)))
            .order_by(SessionMessage.id)
            .limit(limit - len(found))
        )
        found.extend(message for message, session in db.execute(query) if readable(session))
    found.sort(key=lambda m: m.id)
    return [{"event": m.event, "data": m.data} for m in found]


def status_message(db: Session, row: TrainingSession, **extra: Any) -> dict[str, Any]:
    """Record `training.status` with the row's status; `extra`: more StatusData fields (`pid`, ...)."""
    return record_message(db, row.id, StatusData(status=row.status, attempt=row.attempts, error=row.error, **extra))
