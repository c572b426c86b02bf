"""The WebSocket `/ws`: every message is `{"event": NAME, "data": PAYLOAD}`.

Client actions: `{"action": "subscribe", "sessionId": ID | "*", "after": SEQ?}` (acknowledged
with `subscribed`; with `after`, the messages it missed are replayed from the database first),
`{"action": "unsubscribe", "sessionId": ID}`, `{"action": "ping"}`. Each session's messages
carry `data.seq` (1, 2, ...); a message is never sent twice to one connection.

Only the sender task writes to the socket; the receive loop hands it control items through the
same queue, which also orders a replay before any live message that follows the subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from cotrain.server.auth import Actor, authenticate
from cotrain.server.db import session_scope
from cotrain.server.errors import NotFound
from cotrain.server.fanout import ALL_SESSIONS, Subscriber
from cotrain.server.messages import messages_after
from cotrain.server.models import TrainingSession

router = APIRouter()

CONTROL = "__control__"


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
    actor = await asyncio.to_thread(_authenticate, platform, token) if token else None
    await ws.accept()
    if token and actor is None:
        await ws.close(code=1008, reason="Unknown or revoked token; connect without one for public sessions.")
        return
    sub = Subscriber(token_id=actor.token_id if actor else None, is_admin=bool(actor and actor.is_admin))
    platform.hub.add(sub)
    sender = asyncio.create_task(_send_loop(ws, sub, platform))
    try:
        while True:
            try:
                request = json.loads(await ws.receive_text())
                if not isinstance(request, dict):
                    raise ValueError
            except (ValueError, json.JSONDecodeError):
                sub.queue.put_nowait(_control("error", message='Send JSON like {"action": "subscribe", "sessionId": "..."}.'))
                continue
            action, session_id = request.get("action"), request.get("sessionId")
            if action == "subscribe" and isinstance(session_id, str):
                after = request.get("after")
                if after is not None and (not isinstance(after, int) or after < 0):
                    sub.queue.put_nowait(_control("error", message="after must be a non-negative integer (the last seq you received)."))
                    continue
                # the control item goes first, so live messages queued from now on follow the replay
                sub.queue.put_nowait(_control("subscribe", sessionId=session_id, after=after))
                sub.sessions.add(session_id)
            elif action == "unsubscribe" and isinstance(session_id, str):
                sub.sessions.discard(session_id)
                sub.queue.put_nowait(_control("unsubscribed", sessionId=session_id))
            elif action == "ping":
                sub.queue.put_nowait(_control("pong"))
            else:
                sub.queue.put_nowait(
                    _control("error", message='Unknown action: use "subscribe" or "unsubscribe" with a sessionId, or "ping".')
                )
    except WebSocketDisconnect:
        pass
    finally:
        platform.hub.remove(sub)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender


async def _send_loop(ws: WebSocket, sub: Subscriber, platform: Any) -> None:
    last_sent: dict[str, int] = {}
    while True:
        message, text = await sub.queue.get()
        if sub.overflowed:
            await ws.close(code=1013, reason="Too slow to keep up; reconnect and subscribe with after=<last seq>.")
            return
        if message["event"] == CONTROL:
            await _handle_control(ws, sub, platform, message, last_sent)
            continue
        data = message["data"]
        session_id, seq = data.get("sessionId", ""), data.get("seq", 0)
        if seq <= last_sent.get(session_id, 0):
            continue  # already sent (replay and live overlap)
        last_sent[session_id] = seq
        await ws.send_text(text)


async def _handle_control(ws: WebSocket, sub: Subscriber, platform: Any, item: dict[str, Any], last_sent: dict[str, int]) -> None:
    kind = item["kind"]
    if kind == "subscribe":
        session_id, after = item["sessionId"], item["after"]
        if session_id == ALL_SESSIONS:
            await ws.send_text(_message("subscribed", sessionId=ALL_SESSIONS, after=None, seq=None))
            return
        try:
            latest, replay = await asyncio.to_thread(_replay, platform, session_id, after, sub)
        except NotFound as exc:
            sub.sessions.discard(session_id)
            await ws.send_text(_message("error", sessionId=session_id, message=str(exc)))
            return
        await ws.send_text(_message("subscribed", sessionId=session_id, after=after, seq=latest))
        if after is not None:
            last_sent[session_id] = max(last_sent.get(session_id, 0), after)
        for message in replay:
            seq = message["data"]["seq"]
            if seq > last_sent.get(session_id, 0):
                last_sent[session_id] = seq
                await ws.send_text(json.dumps(message, separators=(",", ":")))
    elif kind == "unsubscribed":
        await ws.send_text(_message("unsubscribed", sessionId=item["sessionId"]))
    elif kind == "pong":
        await ws.send_text(_message("pong"))
    elif kind == "error":
        await ws.send_text(_message("error", message=item["message"]))


def _authenticate(platform: Any, token: str) -> Actor | None:
    with session_scope(platform.factory) as db:
        return authenticate(db, token)


def _replay(platform: Any, session_id: str, after: int | None, sub: Subscriber) -> tuple[int, list[dict[str, Any]]]:
    with session_scope(platform.factory) as db:
        row = db.get(TrainingSession, session_id)
        readable = row is not None and (
            row.public or sub.is_admin or (sub.token_id is not None and sub.token_id == row.owner_id)
        )
        if row is None or not readable:
            raise NotFound(f"No session {session_id!r} to subscribe to. List sessions with GET /api/v1/sessions.")
        replay = messages_after(db, session_id, after) if after is not None else []
        return row.message_seq, replay
