"""What a WebSocket subscriber missed, read from the stored messages (messages.py) under the read
rule: one session's messages after a seq, or every readable session's after a seq each (plus,
with `since`, those stored since then by sessions the subscriber had not heard of). `missed` is
what a connected subscriber lost while the fan-out was down (fanout.BACKFILL)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cotrain.server.auth import Actor
from cotrain.server.errors import NotFound
from cotrain.server.fanout import ALL_SESSIONS
from cotrain.server.messages import messages_after, messages_for_all, shown_to
from cotrain.server.orm import SessionMessage, TrainingSession
from cotrain.server.permissions import can_read_session


class HiddenSession(NotFound):
    """A session that exists but that the subscriber may not read (told apart only for the audit log)."""


class ReplayService:
    def __init__(self, factory: sessionmaker[Session]):
        self.factory = factory

    def session(self, session_id: str, after: int | None, actor: Actor | None,
                limit: int) -> tuple[int, list[dict[str, Any]]]:
        """The session's latest seq, and its messages after `after` (none when None), as `actor`
        may see them. NotFound, or HiddenSession when the read rule hides it (the same sentence)."""
        with self.factory.begin() as db:
            row = db.get(TrainingSession, session_id)
            if row is None or not can_read_session(actor, row.owner_id, row.public):
                error = NotFound if row is None else HiddenSession
                raise error(f"No session {session_id!r} to subscribe to. List sessions with GET /api/v1/sessions.")
            replay = messages_after(db, session_id, after, limit) if after is not None else []
            return row.message_seq, shown_to(actor, row.owner_id, replay)

    def every_session(self, after: dict[str, int], since: float | None, actor: Actor | None,
                      limit: int) -> list[dict[str, Any]]:
        """Messages of the readable sessions after their seq in `after`; with `since`, those stored
        since then by sessions not in `after`."""
        owners: dict[str, int | None] = {}

        def readable(row: TrainingSession) -> bool:
            owners[row.id] = row.owner_id
            return can_read_session(actor, row.owner_id, row.public)

        with self.factory.begin() as db:
            replay = messages_for_all(db, after, since, readable, limit=limit)
        return [shown_to(actor, owners.get(m["data"]["sessionId"]), [m])[0] for m in replay]

    def missed(self, sessions: set[str], last: dict[str, int], since: float, actor: Actor | None,
               limit: int) -> list[dict[str, Any]]:
        """What a subscriber of `sessions` ("*": all) may have lost: each session's messages after its
        seq in `last`, and those stored since `since` by followed sessions not in `last`; sessions
        that are gone or hidden from `actor` are skipped."""
        if ALL_SESSIONS in sessions:
            return self.every_session(last, since, actor, limit)
        found: list[dict[str, Any]] = []
        with self.factory.begin() as db:
            for session_id in sorted(sessions):
                row = db.get(TrainingSession, session_id)
                if row is None or not can_read_session(actor, row.owner_id, row.public) or len(found) >= limit:
                    continue
                if session_id in last:
                    replay = messages_after(db, session_id, last[session_id], limit - len(found))
                else:
                    replay = _stored_since(db, session_id, since, limit - len(found))
                found.extend(shown_to(actor, row.owner_id, replay))
        return found


def _stored_since(db: Session, session_id: str, since: float, limit: int) -> list[dict[str, Any]]:
    rows = db.scalars(
        select(SessionMessage)
        .where(SessionMessage.session_id == session_id, SessionMessage.time >= since)
        .order_by(SessionMessage.seq)
        .limit(limit)
    )
    return [{"event": row.event, "data": row.data} for row in rows]
