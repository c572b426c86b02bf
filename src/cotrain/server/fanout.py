"""Event fan-out: delivers each WebSocket message to the subscribers of its session.

`LocalHub` delivers inside this process (the embedded default). `RedisHub` publishes every
message on a Redis channel and delivers what the channel carries, so several server replicas
and remote `cotrain worker`s serve the same sessions. Messages are `{"event": NAME, "data":
{..., "sessionId": ID, "seq": N}}`.

A fan-out can fail (Redis restarts, the network drops): messages published meanwhile never reach
the subscribers, although the database has them. So when `RedisHub` gets its subscription back it
queues a BACKFILL item for every local subscriber, and each one (ws.py, ui/live.py, catch_up.py)
reads what it missed from the database by seq before any later live message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from cotrain.server.auth import Actor
from cotrain.server.internals import scrub_data
from cotrain.server.permissions import can_read_session, can_see_internals

log = logging.getLogger(__name__)

ALL_SESSIONS = "*"
CHANNEL = "cotrain:messages"
# queued to every subscriber when the fan-out is back: `{"event": BACKFILL, "since": TIME}`, where
# messages of sessions the subscriber has not heard from count from `since`
BACKFILL = "__backfill__"
LOSS_MARGIN_S = 30.0  # a message published this long before the loss was noticed may be lost too
RECONNECT_BACKOFF_S = (0.25, 0.5, 1.0)  # then every 1 s: Redis's return is noticed within a second


@dataclass(eq=False)
class Subscriber:
    """One WebSocket connection's view of the hub: the sessions it follows and a bounded queue."""

    # items: (message, its JSON text) -- encoded once per message, not once per subscriber
    queue: asyncio.Queue[tuple[dict[str, Any], str]] = field(default_factory=lambda: asyncio.Queue(maxsize=10_000))
    sessions: set[str] = field(default_factory=set)
    overflowed: bool = False
    # who is listening: messages of private sessions follow permissions.can_read_session
    actor: Actor | None = None
    began: float = field(default_factory=time.time)  # when it started listening (backfills count from here)

    def wants(self, message: dict[str, Any]) -> bool:
        session_id = message["data"].get("sessionId", "")
        if session_id not in self.sessions and ALL_SESSIONS not in self.sessions:
            return False
        private = message.get("private")
        return private is None or can_read_session(self.actor, private.get("owner"), public=False)

    def sees_internals(self, message: dict[str, Any]) -> bool:
        return can_see_internals(self.actor, message.get("owner"))


@dataclass
class FanoutState:
    """What /health and /health/ready say of the fan-out."""

    kind: str  # "in-process" or "redis"
    up: bool = True
    error: str | None = None
    down_since: float | None = None  # unix time the loss was noticed
    backfills: int = 0  # times the subscribers were told to catch up from the database

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "ok": self.up, "error": self.error, "downSince": self.down_since,
                "backfills": self.backfills}


class LocalHub:
    def __init__(self) -> None:
        self.subscribers: set[Subscriber] = set()
        self.delivered = 0
        self.published = 0
        self.state = FanoutState("in-process")

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

    def backfill(self, lost_at: float) -> None:
        """Tell every subscriber to read what it missed since the fan-out was lost (at `lost_at`)."""
        self.state.backfills += 1
        item: tuple[dict[str, Any], str] = ({"event": BACKFILL, "since": lost_at - LOSS_MARGIN_S}, "")
        for sub in list(self.subscribers):
            try:
                sub.queue.put_nowait(item)
            except asyncio.QueueFull:  # it closes and the client replays: the same end
                sub.overflowed = True


def _shown(message: dict[str, Any], data: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The message with `data` and its JSON text: event and data, never the routing fields."""
    shown = {**message, "data": data}
    return shown, json.dumps({"event": message["event"], "data": data}, separators=(",", ":"))


class RedisHub(LocalHub):
    """Publishes through Redis pub/sub; delivers to local subscribers what Redis sends back.

    The listener notices a lost subscription (the connection drops, or a health-check ping gets no
    answer), retries with backoff (RECONNECT_BACKOFF_S) and, once subscribed again, has every local
    subscriber backfill from the database. Its pub/sub client never retries by itself, so no loss
    goes unnoticed."""

    def __init__(self, url: str, *, listen: bool = True) -> None:
        super().__init__()
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = url
        self.listen = listen
        self.state = FanoutState("redis")
        self.redis = aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        self._listener = aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_keepalive=True,
                                                 health_check_interval=5, retry=Retry(NoBackoff(), 0))
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._publish_failed = asyncio.Event()  # the listener resubscribes (and backfills) after a lost publish

    async def start(self) -> None:
        await self.redis.ping()  # fail at start, with the URL, rather than on the first message
        if self.listen:
            self._task = asyncio.create_task(self._listen(), name="cotrain-fanout")
            await asyncio.wait_for(self._ready.wait(), 10)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self.redis.aclose()
        await self._listener.aclose()

    async def publish(self, message: dict[str, Any]) -> None:
        self.published += 1
        try:
            await self.redis.publish(CHANNEL, json.dumps(message, separators=(",", ":")))
        except Exception as exc:
            self._lost(exc)
            self._publish_failed.set()
            raise
        if not self.listen:  # a worker publishes only: a publish that goes through is the sign it is back
            self.state.up, self.state.error, self.state.down_since = True, None, None

    def _lost(self, exc: Exception) -> None:
        if self.state.up:
            log.warning("Redis fan-out lost (%s); subscribers will catch up from the database when it returns", exc)
            self.state.up, self.state.down_since = False, time.time()
        self.state.error = f"Redis at {_without_password(self.url)} does not answer: {exc}"

    async def _listen(self) -> None:
        failures = 0
        while True:
            pubsub = self._listener.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL)
                self._publish_failed.clear()
                self._back()
                failures = 0
                while not self._publish_failed.is_set():
                    item = await pubsub.get_message(timeout=1.0)  # returns now and then: health checks run
                    if item is not None and item.get("type") == "message":
                        self.deliver(json.loads(item["data"]))
                raise ConnectionError("a message could not be published")
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                raise
            except Exception as exc:  # Redis restarted or the network dropped: resubscribe, then backfill
                self._lost(exc)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                await asyncio.sleep(RECONNECT_BACKOFF_S[min(failures, len(RECONNECT_BACKOFF_S) - 1)])
                failures += 1

    def _back(self) -> None:
        """Subscribed (again): after a loss, every local subscriber reads what it missed."""
        self._ready.set()
        if not self.state.up and self.state.down_since is not None:
            log.warning("Redis fan-out is back after %.1f s; backfilling %d subscribers from the database",
                        time.time() - self.state.down_since, len(self.subscribers))
            self.backfill(self.state.down_since)
        self.state.up, self.state.error, self.state.down_since = True, None, None


def _without_password(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return url if parts.password is None else url.replace(f":{parts.password}@", ":***@")


def make_hub(redis_url: str | None, *, listen: bool = True) -> LocalHub:
    return RedisHub(redis_url, listen=listen) if redis_url else LocalHub()
