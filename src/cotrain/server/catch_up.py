"""What one subscriber (a WebSocket connection, a live UI page) has been given, so that it gets
every message of the sessions it follows once and in order even when the fan-out loses some:

- a gap in a session's seqs (a live message newer than the next one due) is filled from the
  database before the message that showed it (`before`);
- a fanout.BACKFILL item, queued when the fan-out is back after an outage, reads everything the
  subscriber may have missed meanwhile (`backfill`): each known session after its last seq, and
  sessions it has not heard from since the outage began (or since it subscribed, if later).

Either way the messages come from the database (replay_service.py), under the read rule.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cotrain.server.errors import NotFound
from cotrain.server.fanout import ALL_SESSIONS

if TYPE_CHECKING:
    from cotrain.server.auth import Actor
    from cotrain.server.replay_service import ReplayService


@dataclass
class Delivered:
    """The subscriber's position: what it was sent, and from where it is owed messages."""

    last: dict[str, int] = field(default_factory=dict)  # the last seq sent, per session
    floor: dict[str, int] = field(default_factory=dict)  # the seq a subscription was acknowledged at
    began: float = field(default_factory=time.time)  # sessions without either: owed what is stored from then

    def known(self, session_id: str) -> int | None:
        """The seq this subscriber is known to be up to in `session_id`, or None (not heard from)."""
        seqs = [seq for seq in (self.last.get(session_id), self.floor.get(session_id)) if seq is not None]
        return max(seqs) if seqs else None

    def take(self, message: dict[str, Any]) -> bool:
        """True, and remembered, when `message` is newer than anything sent of its session."""
        session_id, seq = message["data"].get("sessionId", ""), message["data"].get("seq", 0)
        if seq <= self.last.get(session_id, 0):
            return False
        self.last[session_id] = seq
        return True

    async def before(self, message: dict[str, Any], replay: ReplayService, actor: Actor | None) -> list[dict[str, Any]]:
        """The stored messages between the last known one of `message`'s session and it: those the
        fan-out lost (none when there is no gap, or the session was never heard from)."""
        session_id, seq = message["data"].get("sessionId", ""), message["data"].get("seq", 0)
        known = self.known(session_id)
        if known is None or seq <= known + 1:
            return []
        try:
            _latest, found = await asyncio.to_thread(replay.session, session_id, known, actor, seq - known - 1)
        except NotFound:  # deleted, or no longer readable: nothing is owed
            return []
        return found

    async def backfill(self, item: dict[str, Any], sessions: set[str], replay: ReplayService, actor: Actor | None,
                       limit: int) -> list[dict[str, Any]]:
        """What may have been lost while the fan-out was down (`item`: the BACKFILL item)."""
        followed = self.last.keys() | self.floor.keys()
        if ALL_SESSIONS not in sessions:
            followed &= sessions
        last = {session_id: seq for session_id in followed if (seq := self.known(session_id)) is not None}
        since = max(self.began, float(item["since"]))
        return await asyncio.to_thread(replay.missed, set(sessions), last, since, actor, limit)
