"""Rate limits on sign-in, session creation and WebSocket subscribe (issue 11), counted with the
`limits` library per client address and per actor.

One entry point, `RateLimiter.check(limit, ip, actor)`: routes use it through the `rate_limit(...)`
dependency, the WebSocket calls it on every subscribe. A refusal says when to try again
(`Retry-After` on HTTP, `retryAfter` on the WebSocket).

- Counting: a moving window per (limit, route, key); keys are the client address (IPv6 per /64,
  the smallest block one subscriber usually holds) and, when a token came with the request, the
  actor. Each route of a limit has its own window (nonce and verify: one sign-in costs one of each).
  The wallet address a sign-in names is not a key: anyone could then lock a victim out.
- Storage: Redis when `REDIS_URL` is set, so every replica shares one budget; in process otherwise.
  When Redis does not answer the limiter never takes the API down: it logs a warning and counts in
  this process alone for `FALLBACK_S`, then tries Redis again.
- Admins (the operator's token) are not counted: they run the platform, and their token can do
  everything anyway.
- The client address is `request.client.host`. `cotrain up` lets uvicorn replace it with the
  X-Forwarded-For address only when the connecting peer is listed in COTRAIN_TRUSTED_PROXIES
  (uvicorn's ProxyHeadersMiddleware); with nothing listed, forwarded headers are ignored.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from fastapi import Depends, HTTPException, Request, status
from limits import RateLimitItem, parse_many
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter as AsyncMovingWindow
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from cotrain.server.auth import Actor

if TYPE_CHECKING:
    from starlette.requests import HTTPConnection

    from cotrain.server.settings import Settings

log = logging.getLogger(__name__)

FALLBACK_S = 30.0  # after Redis failed: count in process this long before trying Redis again
REDIS_TIMEOUT_S = 0.5  # a Redis that does not answer in this long counts as down
LOG_EVERY_S = 60.0  # one warning per key and limit in this long, however many requests are refused


class Limit(StrEnum):
    SIGN_IN = "sign_in"  # POST /auth/nonce and /auth/verify
    SESSION_CREATE = "session_create"  # POST /sessions
    WS_SUBSCRIBE = "ws_subscribe"  # {"action": "subscribe"} on /ws


SETTING = {Limit.SIGN_IN: "COTRAIN_RATE_SIGN_IN", Limit.SESSION_CREATE: "COTRAIN_RATE_SESSION_CREATE",
           Limit.WS_SUBSCRIBE: "COTRAIN_RATE_WS_SUBSCRIBE"}
WHAT = {Limit.SIGN_IN: "sign-in attempts", Limit.SESSION_CREATE: "new sessions",
        Limit.WS_SUBSCRIBE: "WebSocket subscriptions"}


@dataclass(frozen=True)
class Refusal:
    limit: Limit
    key: str  # "ip:1.2.3.4" or "actor:17"
    retry_after: int  # seconds
    message: str


def parse_rate(limit: Limit, rate: str) -> list[RateLimitItem]:
    """`"20/minute"` or `"20/minute;200/hour"`; ValueError naming the setting otherwise."""
    try:
        items = parse_many(rate)
    except ValueError:
        items = []
    if not items:
        raise ValueError(f"{SETTING[limit]}={rate!r} is not a rate: write it like \"20/minute\" "
                         "(several joined by \";\", e.g. \"20/minute;200/hour\").")
    return items


def ip_key(ip: str | None) -> str:
    """The address to count: IPv4 as is, IPv6 per /64 (one subscriber's block)."""
    if not ip:
        return "unknown"
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # ::ffff:1.2.3.4 is 1.2.3.4
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def client_ip(conn: HTTPConnection) -> str | None:
    """The caller's address (already the X-Forwarded-For one when the peer is a trusted proxy)."""
    return conn.client.host if conn.client else None


class RateLimiter:
    def __init__(self, rates: Mapping[Limit, str], redis_url: str | None = None, namespace: str = "cotrain"):
        self.items = {limit: parse_rate(limit, rate) for limit, rate in rates.items()}
        self.namespace = namespace
        self._memory = MovingWindowRateLimiter(MemoryStorage())
        self._redis: AsyncMovingWindow | None = None
        if redis_url:
            uri = redis_url if redis_url.startswith("async+") else "async+" + redis_url
            storage = RedisStorage(uri, implementation="redispy", wrap_exceptions=True,
                                   key_prefix=f"{namespace}:limits", socket_connect_timeout=REDIS_TIMEOUT_S,
                                   socket_timeout=REDIS_TIMEOUT_S)
            self._redis = AsyncMovingWindow(storage)
        self._redis_down_until = 0.0
        self._logged: dict[tuple[Limit, str], float] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        rates = {Limit.SIGN_IN: settings.rate_sign_in, Limit.SESSION_CREATE: settings.rate_session_create,
                 Limit.WS_SUBSCRIBE: settings.rate_ws_subscribe}
        return cls(rates, settings.redis_url, settings.rate_limit_namespace)

    @property
    def storage(self) -> str:
        return "redis" if self._redis is not None else "memory"

    async def check(self, limit: Limit, ip: str | None, actor: Actor | None = None, route: str = "") -> Refusal | None:
        """Count one `limit` event on `route` for this caller (per address, then per actor); a
        Refusal when either is over."""
        if actor is not None and actor.is_admin:
            return None
        keys = [f"ip:{ip_key(ip)}"]
        if actor is not None:
            keys.append(f"actor:{actor.token_id}")
        for item in self.items[limit]:
            for key in keys:
                reset_time = await self._hit(item, (limit.value, route, key))
                if reset_time is not None:
                    return self._refused(limit, key, item, reset_time)
        return None

    async def _hit(self, item: RateLimitItem, ids: tuple[str, ...]) -> float | None:
        """None when allowed, else the time the window frees a slot."""
        if self._redis is not None and time.monotonic() >= self._redis_down_until:
            try:
                if await self._redis.hit(item, *ids):
                    return None
                return (await self._redis.get_window_stats(item, *ids)).reset_time
            except Exception as exc:  # never let the limiter take the API down
                self._redis_down_until = time.monotonic() + FALLBACK_S
                log.warning("Rate limits: Redis did not answer (%s); counting in this process alone for the "
                            "next %.0f s.", exc, FALLBACK_S)
        ids = (self.namespace, *ids)
        if self._memory.hit(item, *ids):
            return None
        return self._memory.get_window_stats(item, *ids).reset_time

    def _refused(self, limit: Limit, key: str, item: RateLimitItem, reset_time: float) -> Refusal:
        retry_after = max(1, math.ceil(reset_time - time.time()))
        whose = "address" if key.startswith("ip:") else "account"
        message = (f"Too many {WHAT[limit]} from this {whose}: the limit is {item}. "
                   f"Try again in {retry_after} second{'s' if retry_after != 1 else ''}.")
        now = time.monotonic()
        if now - self._logged.get((limit, key), -LOG_EVERY_S) >= LOG_EVERY_S:
            if len(self._logged) > 10_000:
                self._logged.clear()
            self._logged[(limit, key)] = now
            log.warning("rate limit %s hit by %s (%s); refusing until the window frees a slot", limit.value, key, item)
        return Refusal(limit, key, retry_after, message)


def limiter_of(app: Any) -> RateLimiter:
    """The app's limiter (`create_app` installs it); an app built without one (a router mounted
    alone) gets an in-process one from the environment's rates on first use."""
    limiter = getattr(app.state, "rate_limiter", None)
    if limiter is None:
        from cotrain.server.settings import limits_from_env

        env = limits_from_env()
        limiter = RateLimiter({Limit.SIGN_IN: env["rate_sign_in"], Limit.SESSION_CREATE: env["rate_session_create"],
                               Limit.WS_SUBSCRIBE: env["rate_ws_subscribe"]})
        app.state.rate_limiter = limiter
    return limiter


async def enforce(request: Request, limit: Limit, actor: Actor | None) -> None:
    """Raise 429 with Retry-After when this request is over `limit`."""
    route = getattr(request.scope.get("route"), "path", "")  # the template: a fixed set of values
    refusal = await limiter_of(request.app).check(limit, client_ip(request), actor, route)
    if refusal is not None:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, refusal.message,
                            headers={"Retry-After": str(refusal.retry_after)})


def _per_address(limit: Limit) -> Callable[..., Any]:
    async def check(request: Request) -> None:
        await enforce(request, limit, None)

    return check


def _per_address_and_actor(limit: Limit) -> Callable[..., Any]:
    from cotrain.server.api.deps import optional_actor

    async def check(request: Request, actor: Actor | None = Depends(optional_actor)) -> None:  # noqa: B008
        await enforce(request, limit, actor)

    return check


def rate_limit(limit: Limit) -> Callable[..., Any]:
    """Route dependency: `dependencies=[Depends(rate_limit(Limit.SESSION_CREATE))]`. Sign-in is
    counted per address only (no one is signed in yet, and the chain's routes run without the
    platform's token lookup); the others per address and per actor."""
    check = _per_address(limit) if limit is Limit.SIGN_IN else _per_address_and_actor(limit)
    check.limit = limit  # type: ignore[attr-defined]  # a mark naming the limit a route is under
    check.__name__ = f"rate_limit_{limit.value}"
    return check
