"""The asyncio twin of `Client` for notebooks and async code: the same calls (awaitable), built by
the same `core` functions; only the transport (httpx.AsyncClient, websockets' asyncio client) differs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import httpx

from cotrain.client.core import (
    STREAM_ERRORS,
    AsyncTransport,
    Call,
    Endpoints,
    EventCursor,
    LogFollower,
    _sid,
    auth_headers,
    base_urls,
    is_final,
    latest_version,
    lost_since,
    stream_failure,
    zip_name,
)
from cotrain.client.errors import CotrainError, error_from_response, unreachable
from cotrain.server.schemas import MessageOut, SessionOut

T = TypeVar("T")
PAGE = 1000


class AsyncClient(Endpoints, AsyncTransport):
    """`Client` with awaitable methods and async iterators:

        async with AsyncClient("http://127.0.0.1:8000", token) as c:
            s = await c.create_session({"name": "run", "trainingConfig": {"maxSteps": 40}})
            async for message in c.watch(s.id):
                ...
    """

    def __init__(self, server: str, token: str | None = None, *, timeout: float = 30.0):
        self.server = server.rstrip("/")
        self.token = token
        self.api_url, self.ws_url = base_urls(server)
        self._http = httpx.AsyncClient(base_url=self.api_url, headers=auth_headers(token), timeout=timeout)

    @classmethod
    def from_login(cls, server: str | None = None, token: str | None = None, **kwargs: Any) -> AsyncClient:
        """A client for `server`/`token`, else COTRAIN_SERVER/COTRAIN_TOKEN, else what `cotrain login` stored."""
        from cotrain.client.credentials import resolve

        login = resolve(server, token)
        return cls(login.server, login.token, **kwargs)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def _perform(self, call: Call[T]) -> T:
        try:
            response = await self._http.request(call.method, call.path, params=call.params, json=call.json,
                                                content=call.content, headers=call.headers)
        except httpx.TransportError as exc:
            raise unreachable(self.server, exc) from None
        if response.is_error:
            raise error_from_response(response)
        return call.parse(response)

    async def wait(self, session_id: str, timeout: float | None = None, poll: float = 2.0) -> SessionOut:
        """Until the session is completed, failed or cancelled; returns it (check `.status`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            session = await self.get_session(session_id)
            if is_final(session.status):
                return session
            if deadline is not None and time.monotonic() > deadline:
                raise CotrainError(None, f"Session {session_id} is still {session.status} after {timeout:g} s.")
            await asyncio.sleep(poll)

    async def watch(self, session_id: str, after: int = 0, *, until_done: bool = True,
                    reconnect_for: float = 300.0, idle: float = 15.0) -> AsyncIterator[MessageOut]:
        """`Client.watch` as an async iterator: every message after `after`, once, in order, across reconnects."""
        from websockets.asyncio.client import connect

        cursor = EventCursor(_sid(session_id), after, until_done)
        lost_at: float | None = None
        delay = 0.2
        while not cursor.done:
            try:
                async with connect(self.ws_url, additional_headers=auth_headers(self.token), open_timeout=10,
                                   max_size=None) as ws:
                    await ws.send(cursor.subscribe())
                    while not cursor.done:
                        try:
                            text = await asyncio.wait_for(ws.recv(), idle)
                        except TimeoutError:
                            async for message in self._catch_up(cursor, check_final=True):
                                yield message
                            continue
                        got = cursor.receive(text)
                        if got.ack_seq is not None:
                            lost_at, delay = None, 0.2
                            if got.ack_seq <= cursor.last:
                                async for message in self._catch_up(cursor, check_final=True):
                                    yield message
                        elif got.error is not None:
                            if got.retry_after is None:
                                raise CotrainError(404, got.error)
                            await asyncio.sleep(min(float(got.retry_after), 60.0))
                            await ws.send(cursor.subscribe())
                        elif got.message is not None:
                            if got.gap:
                                async for message in self._catch_up(cursor):
                                    yield message
                            if cursor.deliver(got.message):
                                yield got.message
                            if cursor.ending:
                                async for message in self._catch_up(cursor, check_final=True):
                                    yield message
            except STREAM_ERRORS as exc:
                fatal = stream_failure(exc, self.ws_url)
                if fatal is not None:
                    raise fatal from None
                lost_at = lost_since(lost_at, time.monotonic(), reconnect_for, exc, self.server)
            else:
                continue
            cursor.reconnects += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


    async def _catch_up(self, cursor: EventCursor, check_final: bool = False) -> AsyncIterator[MessageOut]:
        final = check_final and cursor.until_done and is_final((await self.get_session(cursor.session_id)).status)
        cursor.ending = False
        while True:
            page = await self.events(cursor.session_id, after=cursor.last, limit=PAGE)
            for message in page:
                if cursor.deliver(message):
                    yield message
            if len(page) < PAGE:
                break
        if final:
            cursor.done = True

    async def follow_logs(self, session_id: str, stream: str = "stderr", lines: int = 200,
                          poll: float = 1.0) -> AsyncIterator[str]:
        """`Client.follow_logs` as an async iterator."""
        follower = LogFollower()
        for line in follower.new_lines(await self.logs(session_id, lines, stream)):
            yield line
        while True:
            final = is_final((await self.get_session(session_id)).status)
            if not final:
                await asyncio.sleep(poll)
            for line in follower.new_lines(await self.logs(session_id, 500, stream)):
                yield line
            if final:
                return

    async def download_model(self, model_id: int, folder: str | Path = ".") -> Path:
        """Save a model version's zip in `folder`; returns its path."""
        target_dir = Path(folder)
        target_dir.mkdir(parents=True, exist_ok=True)
        try:
            async with self._http.stream("GET", f"/models/{int(model_id)}/download") as response:
                if response.is_error:
                    await response.aread()
                    raise error_from_response(response)
                target = target_dir / zip_name(response, f"model-{int(model_id)}.zip")
                partial = target.with_name(target.name + ".part")
                with partial.open("wb") as fh:
                    async for chunk in response.aiter_bytes():
                        fh.write(chunk)
                partial.replace(target)
                return target
        except httpx.TransportError as exc:
            raise unreachable(self.server, exc) from None

    async def download_session_model(self, session_id: str, folder: str | Path = ".",
                                     version: int | None = None) -> Path:
        """Save the session's latest model version (or `version`) in `folder`."""
        versions = await self.list_models(session_id)
        chosen = next((v for v in versions if v.version == version), None) if version is not None \
            else latest_version(versions, session_id)
        if chosen is None:
            raise CotrainError(404, f"Session {session_id} has no model v{version}; it has "
                                    f"{', '.join(v.name for v in versions) or 'none yet'}.")
        return await self.download_model(chosen.id, folder)
