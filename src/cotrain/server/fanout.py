"""Event fan-out: delivers each WebSocket message to the subscribers of its session.

`LocalHub` delivers inside this process (the embedded default). `RedisHub` publishes every
message on a Redis channel and delivers what the channel carries, so several server replicas
and remote `cotrain worker`s serve the same sessions. Messages are `{"event": NAME, "data":
{..., "sessionId": ID, "seq": N}}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from cotrain.server.auth import Actor
from cotrain.server.internals import scrub_data
from cotrain.server.permissions import can_read_session, can_see_internals

log = logging.getLogger(__name__)

ALL_SESSIONS = "*"
CHANNEL = "cotrain:messages"


@dataclass(eq=False)
class Subscriber:
    """One WebSocket connection's view of the hub: the sessions it follows and a bounded queue."""

    # items: (message, its JSON text) -- encoded once per message, not once per subscriber
    queue: asyncio.Queue[tuple[dict[str, Any], str]] = field(default_factory=lambda: asyncio.Queue(maxsize=10_000))
    sessions: set[str] = field(default_factory=set)
    overflowed: bool = False
    # who is listening: messages of private sessions follow permissions.can_read_session
    actor: Actor | None = None

    def wants(self, message: dict[str, Any]) -> bool:
        session_id = message["data"].get("sessionId", "")
        if session_id not in self.sessions and ALL_SESSIONS not in self.sessions:
            return False
        private = message.get("private")
        return private is None or can_read_session(self.actor, private.get("owner"), public=False)

    def sees_internals(self, message: dict[str, Any]) -> bool:
        return can_see_internals(self.actor, message.get("owner"))


class LocalHub:
    def __init__(self) -> None:
        self.subscribers: set[Subscriber] = set()
        self.delivered = 0
        self.published = 0

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def add(self, sub: Subscriber) -> None:
        self.subscribers.add(sub)

    def remove(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    async def publish(self, message: dict[str, Any]) -> None:
        self.published += 1
        self.deliver(message)

    def deliver(self, message: dict[str, Any]) -> None:
        """Queue `message` for every subscriber of its session. A subscriber too slow to keep
        10,000 messages is marked overflowed; its connection closes and the client replays."""
        full: tuple[dict[str, Any], str] | None = None  # encoded once per message, not once per subscriber
        redacted: tuple[dict[str, Any], str] | None = None  # what everyone but the owner and admins gets
        for sub in list(self.subscribers):
            if sub.wants(message):
                if sub.sees_internals(message):
                    full = full or _shown(message, message["data"])
                    item = full
                else:
                    redacted = redacted or _shown(message, scrub_data(message["data"]))
                    item = redacted
                try:
                    sub.queue.put_nowait(item)
                    self.delivered += 1
                except asyncio.QueueFull:
                    sub.overflowed = True


def _shown(message: dict[str, Any], data: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The message with `data` and its JSON text: event and data, never the routing fields."""
    shown = {**message, "data": data}
    return shown, json.dumps({"event": message["event"], "data": data}, separators=(",", ":"))


class RedisHub(LocalHub):
    """Publishes through Redis pub/sub; delivers to local subscribers what Redis sends back."""

    def __init__(self, url: str, *, listen: bool = True) -> None:
        super().__init__()
        import redis.asyncio as aioredis

        self.url = url
        self.listen = listen
        self.redis = aioredis.Redis.from_url(url)
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        await self.redis.ping()  # fail at start, with the URL, rather than on the first message
        if self.listen:
            self._task = asyncio.create_task(self._listen())
            await asyncio.wait_for(self._ready.wait(), 10)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self.redis.aclose()

    async def publish(self, message: dict[str, Any]) -> None:
        self.published += 1
        await self.redis.publish(CHANNEL, json.dumps(message, separators=(",", ":")))

    async def _listen(self) -> None:
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(CHANNEL)
                self._ready.set()
                async for item in pubsub.listen():
                    if item.get("type") == "message":
                        self.deliver(json.loads(item["data"]))
            except asyncio.CancelledError:
                await pubsub.aclose()
                raise
            except Exception as exc:  # Redis restarted or the network dropped: resubscribe
                log.warning("Redis fan-out lost its subscription (%s); resubscribing in 1 s", exc)
                await asyncio.sleep(1)


def make_hub(redis_url: str | None, *, listen: bool = True) -> LocalHub:
    return RedisHub(redis_url, listen=listen) if redis_url else LocalHub()
