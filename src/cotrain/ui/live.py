"""Live updates for a page: a subscription to the server's fan-out hub (the same messages the
WebSocket `/ws` sends), pumped into the page over NiceGUI's own connection. Like a WebSocket connection it gets each
message once and in order, even across a fan-out outage: gaps and what the fan-out lost while it
was down are read from the database (catch_up.py)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from nicegui import background_tasks, ui

from cotrain.server.catch_up import Delivered
from cotrain.server.fanout import BACKFILL, Subscriber
from cotrain.ui.context import platform

if TYPE_CHECKING:
    from cotrain.server.auth import Actor

log = logging.getLogger(__name__)

GAP = "__gap__"  # handed to the handler when messages were dropped: reload from the database
MAX_BACKFILL_MESSAGES = 10_000  # more than that after an outage: the handler gets GAP and reloads

Handler = Callable[[dict[str, Any]], Awaitable[None] | None]


def follow(session_ids: Iterable[str], handler: Handler, actor: Actor | None) -> Subscriber:
    """Call `handler(message)` for every message of these sessions ("*": all) that `actor` (the
    signed-in user) may read, until the page's client is gone. Subscribe before reading the
    current state, so nothing falls in between."""
    hub, replay = platform().hub, platform().replay
    sub = Subscriber(sessions=set(session_ids), actor=actor)
    sent = Delivered(began=sub.began)
    hub.add(sub)

    async def pump() -> None:
        while True:
            message, _text = await sub.queue.get()
            if sub.overflowed:
                sub.overflowed = False
                await _hand(handler, {"event": GAP, "data": {}})
            elif message["event"] == BACKFILL:
                missed = await sent.backfill(message, sub.sessions, replay, actor, MAX_BACKFILL_MESSAGES)
                if len(missed) >= MAX_BACKFILL_MESSAGES:
                    await _hand(handler, {"event": GAP, "data": {}})
                for stored in missed:
                    if sent.take(stored):
                        await _hand(handler, stored)
            else:
                for stored in await sent.before(message, replay, actor):
                    if sent.take(stored):
                        await _hand(handler, stored)
                if sent.take(message):
                    await _hand(handler, message)

    task = background_tasks.create(pump(), name="cotrain-ui-live")

    def stop() -> None:
        hub.remove(sub)
        task.cancel()

    ui.context.client.on_delete(stop)
    return sub


async def _hand(handler: Handler, message: dict[str, Any]) -> None:
    """One message to the page; a failing update is logged, never the end of the pump."""
    try:
        result = handler(message)
        if inspect.isawaitable(result):
            await result
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("a live update of the web UI failed")


class Relay:
    """A handler that keeps messages until `connect` gives it the real one (a page subscribes
    before it reads the state, and builds its widgets after)."""

    def __init__(self) -> None:
        self.buffer: list[dict[str, Any]] = []
        self.target: Callable[[dict[str, Any]], Any] | None = None

    def __call__(self, message: dict[str, Any]) -> Any:
        if self.target is None:
            self.buffer.append(message)
            return None
        return self.target(message)

    def connect(self, target: Callable[[dict[str, Any]], Any]) -> None:
        self.target = target
        buffered, self.buffer = self.buffer, []
        for message in buffered:
            target(message)
