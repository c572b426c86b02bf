"""The WebSocket `/ws`: every message is `{"event": NAME, "data": PAYLOAD}`.

Client actions: `{"action": "subscribe", "sessionId": ID | "*", "after": ...}` (acknowledged with
`subscribed`), `{"action": "unsubscribe", "sessionId": ID}`, `{"action": "ping"}`. Each session's
messages carry `data.sessionId` and `data.seq` (1, 2, ... per session); a message is never sent
twice to one connection.

Replay after a reconnect (what was missed comes from the database before any live message):
- one session: `"after": SEQ`, the last seq received from it.
- all sessions (`"*"`): `"after": {"sessions": {ID: SEQ, ...}, "since": TIME}`. Each listed
  session replays after its seq; with `since` (unix seconds), sessions *not* listed replay every
  message stored since then (sessions created, or first heard of, while the client was away).
  The `subscribed` acknowledgement of `"*"` carries `time`, the server's clock when the
  subscription began: keep it and send it back as `since` on the next reconnect, with the last
  seq of every session you heard from, and nothing is lost or repeated.
Private sessions are replayed, like streamed, to their owner and admins only; ids the caller
cannot read are skipped without saying whether they exist. Malformed `after` values get an
`error` message that says what to send.

Limits (issue 11): a client message over COTRAIN_WS_MAX_MESSAGE_BYTES (64 KiB) gets an `error`
and the connection is closed with 1009; one connection follows at most COTRAIN_WS_MAX_SUBSCRIPTIONS
sessions (`"*"` counts as one); subscribes are rate limited per address and per actor
(COTRAIN_RATE_WS_SUBSCRIBE, rate_limits.py): a refused one gets an `error` with `retryAfter`
(seconds). A replay sends at most MAX_REPLAY_MESSAGES messages; when there were more, the
`subscribed` acknowledgement says `"truncated": true` (the rest: GET /api/v1/sessions/{id}/events).

Fan-out outages (issue 18): a connection that stays open while the fan-out (Redis) is down still
gets every message, in order, once: when the fan-out is back the sender reads what it missed from
the database (fanout.BACKFILL), and a gap in a session's seqs is filled from the database before
the live message that showed it (catch_up.py). The client needs to do nothing.

Only the sender task writes to the socket; the receive loop hands it control items through the
same queue, which also orders a replay before any live message that follows the subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from cotrain.server.catch_up import Delivered
from cotrain.server.errors import NotFound
from cotrain.server.fanout import ALL_SESSIONS, BACKFILL, Subscriber
from cotrain.server.permissions import Action, allowed, role_of
from cotrain.server.rate_limits import Limit, client_ip, limiter_of
from cotrain.server.replay_service import HiddenSession
from cotrain.server.request_context import note_actor

router = APIRouter()

CONTROL = "__control__"
# Each client action and the permission it needs (permissions.PERMISSIONS); the read rule then
# decides which sessions a subscription may see.
WS_ACTIONS: dict[str, Action] = {
    "subscribe": Action.LIVE_SUBSCRIBE,
    "unsubscribe": Action.LIVE_SUBSCRIBE,
    "ping": Action.LIVE_SUBSCRIBE,
}
MAX_REPLAY_SESSIONS = 1000
MAX_REPLAY_MESSAGES = 10_000  # rows one replay reads and sends, at most (issue 11)
USAGE = 'Send JSON like {"action": "subscribe", "sessionId": "..."}.'
UNKNOWN_ACTION = 'Unknown action: use "subscribe" or "unsubscribe" with a sessionId, or "ping".'


class MessageTooBig(Exception):
    """A client message over the limit: answered with an `error`, then the connection is closed (1009)."""


def _control(kind: str, **data: Any) -> tuple[dict[str, Any], str]:
    return ({"event": CONTROL, "kind": kind, **data}, "")


def _message(event: str, **data: Any) -> str:
    return json.dumps({"event": event, "data": data}, separators=(",", ":"))


@router.websocket("/ws")
async def websocket(ws: WebSocket, token: str | None = None) -> None:
    """`/ws?token=...` (or an `Authorization: Bearer` header) also streams the caller's private sessions."""
    platform = ws.app.state.platform
    bearer = ws.headers.get("authorization", "")
    token = token or (bearer[7:] if bearer.lower().startswith("bearer ") else None)
    actor = await asyncio.to_thread(platform.tokens.authenticate, token) if token else None
    if actor is not None:
        note_actor(actor.label)  # issue 14: the connection's log lines name its actor
    await ws.accept()
    if token and actor is None:
        await ws.close(code=1008, reason="Unknown or revoked token; connect without one for public sessions.")
        return
    sub = Subscriber(actor=actor)
    platform.hub.add(sub)
    sender = asyncio.create_task(_send_loop(ws, sub, platform))
    try:
        while True:
            try:
                request = json.loads(await _receive_text(ws, platform.settings.ws_max_message_bytes))
                if not isinstance(request, dict):
                    raise ValueError
            except (ValueError, json.JSONDecodeError):
                sub.queue.put_nowait(_control("error", message=USAGE))
                continue
            await _handle_request(ws, platform, sub, request)
    except WebSocketDisconnect:
        pass
    except MessageTooBig as exc:  # issue 11: the sender says why, then closes with 1009
        sub.queue.put_nowait(_control("close", code=1009, message=str(exc)))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(sender), 5)
    finally:
        platform.hub.remove(sub)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender


async def _handle_request(ws: WebSocket, platform: Any, sub: Subscriber, request: dict[str, Any]) -> None:
    """One client action: the permission it needs, then subscribe, unsubscribe or ping. Answers go
    through the sender's queue, in order."""
    action, session_id = request.get("action"), request.get("sessionId")
    needed = WS_ACTIONS.get(action) if isinstance(action, str) else None
    if needed is not None and not allowed(sub.actor, needed):
        sub.queue.put_nowait(_control("error", message=f"Your role may not {action} here."))
    elif action == "subscribe" and isinstance(session_id, str):
        await _subscribe(ws, platform, sub, session_id, request.get("after"))
    elif action == "unsubscribe" and isinstance(session_id, str):
        sub.sessions.discard(session_id)
        sub.queue.put_nowait(_control("unsubscribed", sessionId=session_id))
    elif action == "ping":
        sub.queue.put_nowait(_control("pong"))
    else:
        sub.queue.put_nowait(_control("error", message=UNKNOWN_ACTION))


async def _subscribe(ws: WebSocket, platform: Any, sub: Subscriber, session_id: str, raw_after: Any) -> None:
    """Check `after` and the limits, then queue the subscription (its replay comes from the sender)."""
    try:
        after = _parse_after(session_id, raw_after)
    except ValueError as exc:
        sub.queue.put_nowait(_control("error", message=str(exc)))
        return
    refused = await _subscribe_refused(ws, platform, sub, session_id)  # issue 11: limits
    if refused is not None:
        sub.queue.put_nowait(_control("error", sessionId=session_id, **refused))
        await _audit_refused(ws, platform, sub, session_id, refused["message"])
        return
    # the control item goes first, so live messages queued from now on follow the replay
    sub.queue.put_nowait(_control("subscribe", sessionId=session_id, after=after))
    sub.sessions.add(session_id)


async def _send_loop(ws: WebSocket, sub: Subscriber, platform: Any) -> None:
    sent = Delivered()
    while True:
        message, text = await sub.queue.get()
        if sub.overflowed:
            await ws.close(code=1013, reason="Too slow to keep up; reconnect and subscribe with after=<last seq>.")
            return
        if message["event"] == CONTROL and message["kind"] == "close":
            await ws.send_text(_message("error", message=message["message"]))
            await ws.close(code=message["code"], reason="Message too big.")
            return
        if message["event"] == CONTROL:
            await _handle_control(ws, sub, platform, message, sent)
            continue
        if message["event"] == BACKFILL:  # the fan-out is back: what it lost meanwhile, from the database
            await _send_stored(ws, sent, await sent.backfill(message, sub.sessions, platform.replay, sub.actor,
                                                            MAX_REPLAY_MESSAGES))
            continue
        await _send_stored(ws, sent, await sent.before(message, platform.replay, sub.actor))
        if sent.take(message):  # else already sent (replay and live overlap)
            await ws.send_text(text)


async def _send_stored(ws: WebSocket, sent: Delivered, messages: list[dict[str, Any]]) -> None:
    """Messages read from the database, those not sent yet."""
    for message in messages:
        if sent.take(message):
            await ws.send_text(json.dumps(message, separators=(",", ":")))


async def _handle_control(ws: WebSocket, sub: Subscriber, platform: Any, item: dict[str, Any],
                          sent: Delivered) -> None:
    kind = item["kind"]
    if kind == "subscribe":
        session_id, after = item["sessionId"], item["after"]
        if session_id == ALL_SESSIONS:
            await _subscribe_all(ws, sub, platform, after, sent)
            return
        try:
            latest, replay = await asyncio.to_thread(platform.replay.session, session_id, after, sub.actor,
                                                     MAX_REPLAY_MESSAGES)
        except HiddenSession as exc:  # exists, but the read rule says no: the same answer, and an audit row
            sub.sessions.discard(session_id)
            await ws.send_text(_message("error", sessionId=session_id, message=str(exc)))
            await _audit_refused(ws, platform, sub, session_id, "the read rule hides this session")
            return
        except NotFound as exc:
            sub.sessions.discard(session_id)
            await ws.send_text(_message("error", sessionId=session_id, message=str(exc)))
            return
        await ws.send_text(_message("subscribed", sessionId=session_id, after=after, seq=latest,
                                    truncated=len(replay) >= MAX_REPLAY_MESSAGES))
        if after is not None:
            sent.last[session_id] = max(sent.last.get(session_id, 0), after)
        sent.floor[session_id] = latest  # owed from here on, even if the fan-out loses the next ones
        await _send_stored(ws, sent, replay)
    elif kind == "unsubscribed":
        await ws.send_text(_message("unsubscribed", sessionId=item["sessionId"]))
    elif kind == "pong":
        await ws.send_text(_message("pong"))
    elif kind == "error":  # with sessionId and retryAfter when the refusal has them
        await ws.send_text(_message("error", **{k: v for k, v in item.items() if k not in ("event", "kind")}))


async def _subscribe_all(
    ws: WebSocket, sub: Subscriber, platform: Any, after: AllAfter | None, sent: Delivered
) -> None:
    began = time.time()  # before the replay is read: whatever is stored later comes live (or replays next time)
    sent.began = began  # a backfill owes sessions not heard from what was stored since then
    replay: list[dict[str, Any]] = []
    if after is not None:
        for session_id, seq in after.sessions.items():
            sent.last[session_id] = max(sent.last.get(session_id, 0), seq)
        replay = await asyncio.to_thread(platform.replay.every_session, after.sessions, after.since, sub.actor,
                                         MAX_REPLAY_MESSAGES)
    await ws.send_text(_message("subscribed", sessionId=ALL_SESSIONS, after=after.as_json() if after else None,
                                seq=None, time=began, truncated=len(replay) >= MAX_REPLAY_MESSAGES))
    await _send_stored(ws, sent, replay)


async def _receive_text(ws: WebSocket, max_bytes: int) -> str:
    """The next client message as text (binary frames decoded as UTF-8); MessageTooBig past `max_bytes`.
    (`cotrain up` also caps frames in uvicorn, so a huge one is cut off before it is buffered.)"""
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
    text, data = message.get("text"), message.get("bytes")
    size = len(text.encode()) if text is not None else len(data or b"")
    if size > max_bytes:
        raise MessageTooBig(f"Messages to /ws may be at most {max_bytes} bytes; this one had {size}. "
                            "Send one action per message (a subscribe is under 100 bytes).")
    return text if text is not None else (data or b"").decode("utf-8", errors="replace")


async def _subscribe_refused(ws: WebSocket, platform: Any, sub: Subscriber,
                             session_id: str) -> dict[str, Any] | None:
    """Why this subscribe is refused (`message`, maybe `retryAfter`), or None: the per-connection
    bound on followed sessions, then the subscribe rate limit (per address and per actor)."""
    most = platform.settings.ws_max_subscriptions
    if session_id not in sub.sessions and len(sub.sessions) >= most:
        return {"message": f"This connection already follows {most} sessions, the most one may "
                           "(COTRAIN_WS_MAX_SUBSCRIPTIONS); unsubscribe from one, or subscribe to \"*\" for all."}
    refusal = await limiter_of(ws.app).check(Limit.WS_SUBSCRIBE, client_ip(ws), sub.actor)
    if refusal is not None:
        return {"message": refusal.message, "retryAfter": refusal.retry_after}
    return None


async def _audit_refused(ws: WebSocket, platform: Any, sub: Subscriber, session_id: str, reason: str) -> None:
    """A refused subscribe is a security event like a refused request (the audit middleware sees
    only HTTP): one audit row, written off the event loop, never failing the connection."""
    await asyncio.to_thread(
        platform.audit.record_safely, "live.subscribe", actor=sub.actor.label if sub.actor else "anonymous",
        role=role_of(sub.actor).value, target=session_id, outcome="refused", client_ip=client_ip(ws),
        detail={"reason": reason})


def _parse_after(session_id: str, after: Any) -> int | AllAfter | None:
    """`after` as sent with a subscribe; ValueError with the sentence to show otherwise."""
    if after is None:
        return None
    if session_id != ALL_SESSIONS:
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise ValueError("after must be a non-negative integer (the last seq you received from that session).")
        return after
    usage = (
        'For sessionId "*", after must be an object like {"sessions": {"<sessionId>": <last seq>}, '
        '"since": <time from the last "subscribed" acknowledgement>}'
    )
    if not isinstance(after, dict) or not set(after) <= {"sessions", "since"}:
        raise ValueError(usage + ".")
    sessions, since = after.get("sessions", {}), after.get("since")
    if not isinstance(sessions, dict) or len(sessions) > MAX_REPLAY_SESSIONS:
        raise ValueError(f"{usage}; sessions may list at most {MAX_REPLAY_SESSIONS} sessions.")
    for key, seq in sessions.items():
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise ValueError(f"{usage}; the seq of session {key!r} must be a non-negative integer, not {seq!r}.")
    bad_since = isinstance(since, bool) or not isinstance(since, int | float) or not 0 <= since < 1e11
    if since is not None and bad_since:
        raise ValueError(f"{usage}; since must be a unix time in seconds, not {since!r}.")
    return AllAfter(dict(sessions), float(since) if since is not None else None)


@dataclass(frozen=True)
class AllAfter:
    """Where a `"*"` subscriber left off: the last seq per session it heard from, and when it subscribed."""

    sessions: dict[str, int]
    since: float | None

    def as_json(self) -> dict[str, Any]:
        return {"sessions": self.sessions, "since": self.since}
