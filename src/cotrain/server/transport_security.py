"""HTTPS hardening: once a browser reaches the server over HTTPS, it is told to keep doing so
(`Strict-Transport-Security`), and every cookie the server sets is marked `Secure`, so neither a
session cookie of the web UI nor a wallet sign-in can leak over plain HTTP.

A request counts as HTTPS when it arrived over TLS (`cotrain up --ssl-certfile`; or a trusted proxy's
`X-Forwarded-Proto: https`, which uvicorn applies for COTRAIN_TRUSTED_PROXIES), or always when the
operator says browsers only see HTTPS: COTRAIN_HTTPS=1 or an `https://` COTRAIN_PUBLIC_ORIGIN.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from cotrain.server.settings import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HSTS = b"max-age=31536000"  # one year; no includeSubDomains: other hosts of the domain are not ours to decide
SECURE_SCHEMES = frozenset({"https", "wss"})


def https_everywhere(settings: Settings) -> bool:
    """Whether the operator says browsers reach this server over HTTPS only (behind a proxy that may
    not be trusted for X-Forwarded-Proto)."""
    if settings.https:
        return True
    from cotrain.chain.settings import ChainConfigError, ChainSettings

    try:
        origin = ChainSettings.from_env().origin
    except (ChainConfigError, ValueError):  # a wrong chain variable is reported where the chain is used
        return False
    return (origin or "").startswith("https://")


def secure_cookie(header: bytes) -> bytes:
    """A Set-Cookie value with the `Secure` attribute (added once)."""
    attributes = [part.strip().lower() for part in header.split(b";")[1:]]
    return header if b"secure" in attributes else header + b"; Secure"


class TransportSecurityMiddleware:
    """A pure ASGI layer outside every other middleware (server/request_context.py `wrap_outermost`), so
    it also sees the cookies of the web UI's session middleware."""

    def __init__(self, app: Callable[..., Awaitable[None]], always: bool = False) -> None:
        self.app = app
        self.always = always

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not (self.always or scope.get("scheme") in SECURE_SCHEMES):
            await self.app(scope, receive, send)
            return

        async def hardened_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(name, secure_cookie(value) if name.lower() == b"set-cookie" else value)
                           for name, value in message.get("headers", [])]
                if not any(name.lower() == b"strict-transport-security" for name, _ in headers):
                    headers.append((b"strict-transport-security", HSTS))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, hardened_send)
