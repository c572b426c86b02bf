"""The one place requests reach the audit log: a pure ASGI middleware that, once the response is sent,
records every state-changing API request (POST/PUT/PATCH/DELETE on /api/v1) and every refused one
(401/403/429, and reads the read rule answered 404), and gives every request an id.

It costs a request almost nothing: it reads no body it does not need, and the database write (which
also resolves the caller's token to an actor) runs in a worker thread of its own limiter after the
response has gone out. A failing write is logged loudly and never fails the request.

The request id is the caller's `X-Request-ID` when that is a sane short token, else a new one; it is
echoed in the response's `X-Request-ID` and stored with the entry, so a client's report can be matched
to its row.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread

from cotrain.server.audit import ANONYMOUS, AuditLog, Outcome

log = logging.getLogger("cotrain.audit")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

API_PREFIX = "/api/v1"
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
READS = frozenset({"GET", "HEAD"})
REFUSED_STATUS = frozenset({401, 403, 404, 405, 413, 429})
REFUSED_READ_STATUS = frozenset({401, 403, 429})  # a read's 404 is a refusal only when the read rule made it
_READ_WATCH = REFUSED_READ_STATUS | {404}
WALLET_COOKIE = "cotrain_wallet"
CAPTURE_BYTES = 64 * 1024  # request and response bodies are read up to this much, in memory, never stored
_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_limiter: anyio.CapacityLimiter | None = None  # audit writes never take the threads sync endpoints run on


@dataclass(frozen=True)
class RouteName:
    """What a route does, for the audit log. `target` says where the entry's target comes from:
    "path" (its path parameters), "request:<key>" (the JSON body) or "response:<key>"; `request` and
    `response` name the (non-secret) body fields copied into the entry's detail."""

    name: str
    target: str = "path"
    request: tuple[str, ...] = ()
    response: tuple[str, ...] = ()
    actor_from_response_token: bool = False  # sign-in: the actor is whom the issued token stands for
    fields: bool = False  # an edit: list the body's keys (what was changed)


S = "/api/v1/sessions/{session_id}"
ROUTES: dict[str, RouteName] = {
    # sessions
    "POST /api/v1/sessions": RouteName("session.create", "response:id", ("name", "public", "priority", "autoStart",
                                                                          "rewardPool"), ("status",)),
    f"PATCH {S}": RouteName("session.update", request=("priority", "rewardPool"), fields=True),
    f"DELETE {S}": RouteName("session.delete"),
    f"POST {S}/start": RouteName("session.start", response=("status",)),
    f"POST {S}/cancel": RouteName("session.cancel", response=("status",)),
    f"POST {S}/retry": RouteName("session.retry", response=("status",)),
    f"PUT {S}/priority": RouteName("session.priority", request=("priority",)),
    f"PUT {S}/reward-pool": RouteName("reward_pool.set", request=("amount", "asset")),
    f"POST {S}/reward-pool": RouteName("reward_pool.set", request=("amount", "asset")),
    # sign-in, tokens, users
    "POST /api/v1/auth/nonce": RouteName("auth.nonce", "request:address"),
    "POST /api/v1/auth/verify": RouteName("auth.sign_in", "request:address", actor_from_response_token=True),
    "POST /api/v1/auth/exchange": RouteName("auth.link_exchange"),
    "POST /api/v1/auth/logout": RouteName("auth.sign_out"),
    "POST /api/v1/auth/tokens": RouteName("token.create", "response:id", ("name", "role")),
    "DELETE /api/v1/auth/tokens/{token_id}": RouteName("token.revoke"),
    "PUT /api/v1/users/{address}/role": RouteName("user.role_set", request=("role",), response=("previousRole",)),
    "POST /api/v1/users/{address}/revoke": RouteName("user.revoke", request=("ban",), response=("revoked",)),
    # rewards
    "POST /api/v1/rewards/bindings": RouteName("binding.create", "request:address", ("sessionId", "peerId"),
                                               ("proof",)),
    "POST /api/v1/rewards/pay": RouteName("payout.run"),
    # the server's DHT node
    "POST /api/v1/hivemind/start": RouteName("dht.start"),
    "POST /api/v1/hivemind/peers/connect": RouteName("dht.connect", request=("address",)),
    "POST /api/v1/hivemind/train": RouteName("dht.train", "response:taskId"),
    # reads, recorded when refused
    "GET /api/v1/audit": RouteName("audit.read"),
    "GET /api/v1/audit/verify": RouteName("audit.verify"),
    "GET /api/v1/users": RouteName("users.read"),
    "GET /api/v1/users/{address}": RouteName("users.read"),
    "GET /api/v1/sessions": RouteName("session.list"),
    f"GET {S}": RouteName("session.read"),
}
# reads of one session (or what it produced) whose 404 may be the read rule hiding a private session
_SESSION_PARAMS = ("session_id", "task_id")
_HIDING_PARAMS = (*_SESSION_PARAMS, "model_id")


@dataclass
class Exchange:
    """What one request and its response left for the audit entry (plain data, handed to a thread)."""

    method: str
    path: str
    template: str | None
    path_params: dict[str, str]
    client_ip: str
    request_id: str
    bearer: str | None
    cookie_token: str | None
    started: float
    status: int = 500
    retry_after: str | None = None
    request_body: bytearray = field(default_factory=bytearray)
    response_body: bytearray = field(default_factory=bytearray)


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"x-request-id":
            candidate = value.decode("latin-1").strip()
            if _REQUEST_ID.match(candidate):
                return candidate
            break
    return os.urandom(16).hex()


def outcome_of(status: int) -> str:
    if status < 400:
        return Outcome.OK
    return Outcome.REFUSED if status in REFUSED_STATUS else Outcome.FAILED


def action_of(method: str, template: str | None, path: str) -> str:
    key = f"{method} {template or path}"
    spec = ROUTES.get(key)
    return spec.name if spec else key


class AuditMiddleware:
    """Add it last in `create_app` (outermost), so it also sees the 413s and 429s of the limits."""

    def __init__(self, app: Callable[..., Awaitable[None]], audit: AuditLog | None = None) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope.get("headers") or []
        state = scope.setdefault("state", {})  # the id server/request_context.py gave it (for the logs), if any
        request_id = state.get("request_id") or request_id_of(headers)
        state["request_id"] = request_id
        method, path = scope["method"], scope["path"]
        if not (path == API_PREFIX or path.startswith(API_PREFIX + "/")):
            await self.app(scope, receive, _with_request_id(send, request_id))
            return
        if method in READS:
            await self._read(scope, receive, send, request_id)
            return
        if method not in MUTATING:
            await self.app(scope, receive, _with_request_id(send, request_id))
            return
        ex = _exchange(scope, headers, request_id)

        async def tee_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(ex.request_body) < CAPTURE_BYTES:
                ex.request_body += message.get("body", b"")[: CAPTURE_BYTES - len(ex.request_body)]
            return message

        async def tee_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                ex.status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                if ex.status == 429:
                    ex.retry_after = _retry_after(message["headers"])
            elif message["type"] == "http.response.body" and len(ex.response_body) < CAPTURE_BYTES:
                ex.response_body += message.get("body", b"")[: CAPTURE_BYTES - len(ex.response_body)]
            await send(message)

        try:
            await self.app(scope, tee_receive, tee_send)
        except Exception:
            ex.status = 500
            await self._after(scope, ex)
            raise
        await self._after(scope, ex)

    async def _read(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        """A GET or HEAD: the hot path. Only its status is looked at, unless it was refused."""
        started = time.time()
        status = 0
        refusal = bytearray()
        retry_after: str | None = None

        async def watch_send(message: Message) -> None:
            nonlocal status, retry_after
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                if status == 429:
                    retry_after = _retry_after(message["headers"])
            elif status in _READ_WATCH and len(refusal) < CAPTURE_BYTES:
                refusal.extend(message.get("body", b"")[: CAPTURE_BYTES - len(refusal)])
            await send(message)

        await self.app(scope, receive, watch_send)
        if status not in _READ_WATCH:
            return
        ex = _exchange(scope, scope.get("headers") or [], request_id)
        ex.started, ex.status, ex.retry_after, ex.response_body = started, status, retry_after, refusal
        await self._after(scope, ex)

    async def _after(self, scope: Scope, ex: Exchange) -> None:
        ex.template, params = template_of(scope)
        ex.path_params = {k: str(v) for k, v in params.items()}
        if ex.method in READS and ex.status == 404 and not any(p in ex.path_params for p in _HIDING_PARAMS):
            return  # a miss that cannot be the read rule's
        audit = self.audit or self._audit_of(scope)
        if audit is None:
            return
        global _limiter
        if _limiter is None:
            _limiter = anyio.CapacityLimiter(4)
        try:
            with anyio.CancelScope(shield=True):  # a client that hung up still gets its entry
                await anyio.to_thread.run_sync(write_entry, audit, _factory_of(scope), ex, limiter=_limiter)
        except Exception as exc:  # never the request's problem
            log.error("AUDIT WRITE FAILED for %s %s (%s): %s", ex.method, ex.path, ex.request_id, exc)

    def _audit_of(self, scope: Scope) -> AuditLog | None:
        """The platform's audit log (built once, in server/platform.py); None before the app has a platform."""
        platform = getattr(getattr(scope.get("app"), "state", None), "platform", None)
        return None if platform is None else platform.audit


def _exchange(scope: Scope, headers: list[tuple[bytes, bytes]], request_id: str) -> Exchange:
    return Exchange(method=scope["method"], path=scope["path"], template=None, path_params={},
                    client_ip=(scope.get("client") or ("", 0))[0] or "", request_id=request_id,
                    bearer=_bearer(headers), cookie_token=_cookie(headers, WALLET_COOKIE), started=time.time())


def _retry_after(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"retry-after":
            return value.decode("latin-1")[:40]
    return None


def _with_request_id(send: Send, request_id: str) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
        await send(message)

    return wrapped


def _bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer":
                return None
            return token.strip() or None
    return None


def _cookie(headers: list[tuple[bytes, bytes]], wanted: str) -> str | None:
    for name, value in headers:
        if name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                key, _, val = part.strip().partition("=")
                if key == wanted and val:
                    return val
    return None


@dataclass(frozen=True)
class _Templates:
    by_route: dict[int, str]  # id(route object in scope["route"]) -> its full template
    patterns: list[tuple[frozenset[str], re.Pattern[str], str]]  # for requests that never reached a route


def _templates(app: Any) -> _Templates:
    """Every route's full template ("/api/v1/sessions/{session_id}"), built once per app. FastAPI's own
    `iter_route_contexts` resolves the prefixes of included routers (their routes' `.path` lacks them)."""
    cached = getattr(getattr(app, "state", None), "audit_templates", None)
    if cached is not None:
        return cached
    from starlette.routing import compile_path

    try:
        from fastapi.routing import iter_route_contexts

        contexts: list[Any] = list(iter_route_contexts(app.router.routes))
        pairs = [(id(c.original_route), c.path, c.methods) for c in contexts]
    except ImportError:  # a FastAPI that flattens included routes: their paths are already full
        pairs = [(id(r), getattr(r, "path", None), getattr(r, "methods", None)) for r in app.router.routes]
    by_route, patterns = {}, []
    for key, path, methods in pairs:
        if not path or not path.startswith(API_PREFIX):
            continue
        by_route[key] = path
        patterns.append((frozenset(methods or ()), compile_path(path)[0], path))
    templates = _Templates(by_route, patterns)
    if getattr(app, "state", None) is not None:
        app.state.audit_templates = templates
    return templates


def template_of(scope: Scope) -> tuple[str | None, dict[str, Any]]:
    """The route template and path parameters of a request, also when an outer limit refused it
    before it reached a route."""
    app = scope.get("app")
    route = scope.get("route")
    if app is None:
        return getattr(route, "path", None), dict(scope.get("path_params") or {})
    templates = _templates(app)
    if route is not None:
        found = templates.by_route.get(id(route))
        if found is not None:
            return found, dict(scope.get("path_params") or {})
    for methods, pattern, path in templates.patterns:
        match = pattern.match(scope["path"])
        if match and (not methods or scope["method"] in methods):
            return path, match.groupdict()
    return None, {}


def _factory_of(scope: Scope) -> Any:
    platform = getattr(getattr(scope.get("app"), "state", None), "platform", None)
    return getattr(platform, "factory", None)


# ---- in the worker thread ---------------------------------------------------------------------------

def write_entry(audit: AuditLog, factory: Any, ex: Exchange) -> None:
    spec = ROUTES.get(f"{ex.method} {ex.template or ex.path}")
    request = _json(ex.request_body)
    response = _json(ex.response_body)
    actor, role, credentials = _actor(factory, ex, response if spec and spec.actor_from_response_token else None)
    outcome = outcome_of(ex.status)
    if ex.method in READS and ex.status == 404:
        if not _read_rule_refused(factory, ex):
            return  # a plain miss, not a refusal
        outcome = Outcome.REFUSED
    detail: dict[str, Any] = {"method": ex.method, "httpStatus": ex.status}
    if ex.template is None or spec is None:
        detail["path"] = ex.path[:200]
    if credentials:
        detail["credentials"] = credentials
    if spec:
        detail.update({k: request[k] for k in spec.request if isinstance(request, dict) and k in request})
        if spec.fields and isinstance(request, dict):
            detail["fields"] = sorted(str(k) for k in request)[:50]
        if outcome == Outcome.OK:
            detail.update({k: response[k] for k in spec.response if isinstance(response, dict) and k in response})
    if outcome != Outcome.OK:
        reason = _reason(response, ex.status)
        if reason:
            detail["reason"] = reason
    if ex.status == 429 and ex.retry_after:
        detail["retryAfter"] = ex.retry_after
    audit.record_safely(
        action_of(ex.method, ex.template, ex.path), actor=actor, role=role, target=_target(spec, ex, request, response),
        outcome=outcome, client_ip=ex.client_ip, request_id=ex.request_id, detail=detail, at=ex.started,
    )


def _json(body: bytearray) -> Any:
    if not body:
        return None
    try:
        return json.loads(bytes(body))
    except ValueError:
        return None


def _actor(factory: Any, ex: Exchange, sign_in_response: Any) -> tuple[str, str, str | None]:
    """(actor label, role, a note on the credentials) of the caller. A sign-in's actor is the wallet it
    signed in (its freshly issued token is resolved here, in memory, and never stored)."""
    from cotrain.server.auth import authenticate

    token = ex.bearer or ex.cookie_token
    issued = sign_in_response.get("token") if isinstance(sign_in_response, dict) and ex.status < 400 else None
    if issued:
        token = issued
    if not token or factory is None:
        return ANONYMOUS, ANONYMOUS, None
    try:
        with factory.begin() as db:
            actor = authenticate(db, token)
    except Exception as exc:
        log.warning("audit: could not resolve the caller's token: %s", exc.__class__.__name__)
        return ANONYMOUS, ANONYMOUS, "unresolved"
    if actor is None:
        return ANONYMOUS, ANONYMOUS, "invalid"
    return actor.label, actor.role.value, None


def _target(spec: RouteName | None, ex: Exchange, request: Any, response: Any) -> str:
    source = spec.target if spec else "path"
    kind, _, key = source.partition(":")
    body = request if kind == "request" else response if kind == "response" else None
    if isinstance(body, dict) and body.get(key) is not None:
        return str(body[key])
    return "/".join(ex.path_params.values())


def _reason(response: Any, status: int) -> str | None:
    """Why it was refused or failed, in the server's own words (a 422 names the fields, never echoes
    the input, which may hold a signature)."""
    detail = response.get("detail") if isinstance(response, dict) else None
    if status == 422 and isinstance(detail, list):
        fields = [".".join(str(p) for p in item.get("loc", [])[1:]) for item in detail if isinstance(item, dict)]
        return ("invalid: " + ", ".join(f for f in fields if f))[:300] if fields else "invalid request"
    if isinstance(detail, dict):
        detail = detail.get("reason") or detail.get("message")
    return str(detail)[:300] if isinstance(detail, str | int) and detail != "" else None


def _read_rule_refused(factory: Any, ex: Exchange) -> bool:
    """Whether a read's 404 hid a session that exists (a private session of someone else)."""
    session_id = next((ex.path_params[p] for p in _SESSION_PARAMS if p in ex.path_params), None)
    model_id = ex.path_params.get("model_id")
    if factory is None or (session_id is None and model_id is None):
        return False
    from cotrain.server.auth import authenticate
    from cotrain.server.orm import ModelVersion, TrainingSession
    from cotrain.server.permissions import can_read_session

    with factory.begin() as db:
        if session_id is None:
            version = db.get(ModelVersion, int(model_id)) if model_id is not None and model_id.isdigit() else None
            session_id = version.session_id if version is not None else None
        row = db.get(TrainingSession, session_id) if session_id else None
        if row is None:
            return False
        token = ex.bearer or ex.cookie_token
        actor = authenticate(db, token) if token else None
        return not can_read_session(actor, row.owner_id, row.public)
