"""Who and what a log line is about: the request id, the session id and the actor of the request being
served, kept in a context variable so every log record made while serving it (uvicorn's access line
too) can carry them (server/logging_setup.py).

The middleware sets one mutable `RequestContext` per request; the auth code fills in the actor once it
knows it (`note_actor`). It is mutated, not replaced, because FastAPI runs blocking dependencies in
worker threads, which get a copy of the context: a copy of the variable still points at the same
object, so the actor found in a thread reaches the access line written in the request's task.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from cotrain.server.audit_middleware import request_id_of

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SESSION_PATH = re.compile(r"^/api/v1/sessions/([A-Za-z0-9][A-Za-z0-9._-]{0,127})(?:/|$)")


@dataclass
class RequestContext:
    request_id: str
    session_id: str | None = None
    actor: str | None = None


_current: ContextVar[RequestContext | None] = ContextVar("cotrain_request", default=None)


def current() -> RequestContext | None:
    """The request being served by this task or thread, or None outside one."""
    return _current.get()


def note_actor(label: str) -> None:
    """Record who is calling (the audit log's actor label: "token:3", "wallet:0x..."), where known."""
    context = _current.get()
    if context is not None:
        context.actor = label


def session_id_of(path: str) -> str | None:
    match = SESSION_PATH.match(path)
    return match.group(1) if match else None


class RequestContextMiddleware:
    """The outermost layer (`wrap_outermost`): it gives the request its id (AuditMiddleware reuses it and
    echoes it in `X-Request-ID`), for WebSockets too."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope.get("headers") or [])
        scope.setdefault("state", {})["request_id"] = request_id
        token = _current.set(RequestContext(request_id, session_id_of(scope.get("path", ""))))
        try:
            await self.app(scope, receive, send)
        finally:
            _current.reset(token)


def wrap_outermost(app: Any, wrap: Callable[[Any], Any]) -> None:
    """Put `wrap(stack)` around `app`'s whole middleware stack, outside the middlewares added later (the
    web UI's, added by NiceGUI after `create_app`). Outermost matters: uvicorn writes its access line
    from the task that called the app, and a middleware built on BaseHTTPMiddleware runs the layers
    inside it in a task of their own, whose context variables that line would not see."""
    build = app.build_middleware_stack

    def build_wrapped() -> Any:
        return wrap(build())

    app.build_middleware_stack = build_wrapped
