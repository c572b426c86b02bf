"""Request bodies over COTRAIN_MAX_BODY_BYTES (default 1 MiB) get 413 before anything parses them
(issue 11). A pure ASGI middleware: a declared Content-Length over the limit is refused before a
byte of the body is read; a body without one (chunked) or with a smaller one is counted as it
streams in, and the request is cut off as soon as it passes the limit, whatever the route does
with the error. The refusal closes the connection, so the rest of the body is never read."""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException

DEFAULT_MAX_BODY_BYTES = 1_048_576


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} bytes"


class BodyTooLarge(HTTPException):
    """Raised from `receive` once the body passes the limit (an HTTPException, so FastAPI's body
    parsing lets it through instead of answering 400)."""

    def __init__(self, message: str):
        super().__init__(413, message)


class BodyLimitMiddleware:
    def __init__(self, app: Any, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.message = (f"The request body is larger than {human_bytes(max_bytes)} ({max_bytes} bytes), the most "
                        "this server accepts (COTRAIN_MAX_BODY_BYTES). Send less: a session's settings are a few KB.")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send)
            return
        received = 0
        exceeded = False
        response_started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received, exceeded
            if exceeded:  # the app asks again after the refusal: it gets no more of the body
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise BodyTooLarge(self.message)
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal response_started
            if exceeded:  # whatever the app answers to the cut-off body, the caller gets the 413
                if message["type"] == "http.response.start" and not response_started:
                    response_started = True
                    await self._refuse(send)
                return
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            if not response_started:
                response_started = True
                await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({"detail": self.message}).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP server refuses a malformed one itself
    return None
