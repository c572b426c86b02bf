"""The blocking client: `Client(server, token)` on httpx, and the live stream on the websockets sync client."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx

from cotrain.client.core import (
    STREAM_ERRORS,
    Call,
    Endpoints,
    EventCursor,
    LogFollower,
    SyncTransport,
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


class Client(Endpoints, SyncTransport):
    """The CoTrain platform from Python. Every call returns the server's schemas (SessionOut, Page,
    ModelVersionOut, ...) and raises `CotrainError` with the server's message when it is refused.

        with Client("http://127.0.0.1:8000", token) as c:
            s = c.create_session("configs/templates/tiny-cpu.toml", overrides=["train.max_steps=40"])
            for message in c.watch(s.id):
                print(message.event, message.data.get("step"))
            c.download_session_model(s.id, ".")
    """

    def __init__(self, server: str, token: str | None = None, *, timeout: float = 30.0):
        self.server = server.rstrip("/")
        self.token = token
        self.api_url, self.ws_url = base_urls(server)
        self._http = httpx.Client(base_url=self.api_url, headers=auth_headers(token), timeout=timeout)

    @classmethod
    def from_login(cls, server: str | None = None, token: str | None = None, **kwargs: Any) -> Client:
        """A client for `server`/`token`, else COTRAIN_SERVER/COTRAIN_TOKEN, else what `cotrain login` stored."""
        from cotrain.client.credentials import resolve

        login = resolve(server, token)
        return cls(login.server, login.token, **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _perform(self, call: Call[T]) -> T:
        try:
            response = self._http.request(call.method, call.path, params=call.params, json=call.json,
                                          content=call.content, headers=call.headers)
        except httpx.TransportError as exc:
            raise unreachable(self.server, exc) from None
        if response.is_error:
            raise error_from_response(response)
        return call.parse(response)

    # ---- waiting and following ------------------------------------------------------------
    def wait(self, session_id: str, timeout: float | None = None, poll: float = 2.0) -> SessionOut:
        """Block until the session is completed, failed or cancelled; returns it (check `.status`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            session = self.get_session(session_id)
            if is_final(session.status):
                return session
            if deadline is not None and time.monotonic() > deadline:
                raise CotrainError(None, f"Session {session_id} is still {session.status} after {timeout:g} s.")
            time.sleep(poll)

    def watch(self, session_id: str, after: int = 0, *, until_done: bool = True, reconnect_for: float = 300.0,
              idle: float = 15.0) -> Iterator[MessageOut]:
        """The session's messages (training.progress, .status, .eval, .checkpoint, ...) from seq `after`
        on, live over the WebSocket, each exactly once and in order. A dropped connection is reopened
        (for up to `reconnect_for` seconds) and resumes after the last seq received; a gap is filled
        from the stored events; after `idle` quiet seconds the stored events are checked too. Ends
        after the final status message (completed, failed or cancelled) unless `until_done` is False."""
        from websockets.sync.client import connect

        cursor = EventCursor(_sid(session_id), after, until_done)
        lost_at: float | None = None
        delay = 0.2
        while not cursor.done:
            try:
                with connect(self.ws_url, additional_headers=auth_headers(self.token), open_timeout=10,
                             max_size=None) as ws:
                    ws.send(cursor.subscribe())
                    while not cursor.done:
                        try:
                            text = ws.recv(timeout=idle)
                        except TimeoutError:
                            yield from self._catch_up(cursor, check_final=True)
                            continue
                        got = cursor.receive(text)
                        if got.ack_seq is not None:
                            lost_at, delay = None, 0.2
                            if got.ack_seq <= cursor.last:  # nothing to replay: it may have ended already
                                yield from self._catch_up(cursor, check_final=True)
                        elif got.error is not None:
                            if got.retry_after is None:
                                raise CotrainError(404, got.error)
                            time.sleep(min(float(got.retry_after), 60.0))
                            ws.send(cursor.subscribe())
                        elif got.message is not None:
                            if got.gap:
                                yield from self._catch_up(cursor)
                            if cursor.deliver(got.message):
                                yield got.message
                            if cursor.ending:
                                yield from self._catch_up(cursor, check_final=True)
            except STREAM_ERRORS as exc:
                fatal = stream_failure(exc, self.ws_url)
                if fatal is not None:
                    raise fatal from None
                lost_at = lost_since(lost_at, time.monotonic(), reconnect_for, exc, self.server)
            else:
                continue
            cursor.reconnects += 1
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


    def _catch_up(self, cursor: EventCursor, check_final: bool = False) -> Iterator[MessageOut]:
        """Deliver the stored messages after the cursor; with `check_final`, end the stream when the
        session is already final (read before the events, so its last message is among them)."""
        final = check_final and cursor.until_done and is_final(self.get_session(cursor.session_id).status)
        cursor.ending = False
        while True:
            page = self.events(cursor.session_id, after=cursor.last, limit=PAGE)
            for message in page:
                if cursor.deliver(message):
                    yield message
            if len(page) < PAGE:
                break
        if final:
            cursor.done = True

    def follow_logs(self, session_id: str, stream: str = "stderr", lines: int = 200,
                    poll: float = 1.0) -> Iterator[str]:
        """The last `lines` lines of the log, then each new line as it is written, until the session
        is completed, failed or cancelled (`tail -f` on the API's log tail)."""
        follower = LogFollower()
        yield from follower.new_lines(self.logs(session_id, lines, stream))
        while True:
            final = is_final(self.get_session(session_id).status)
            if not final:
                time.sleep(poll)
            yield from follower.new_lines(self.logs(session_id, 500, stream))
            if final:
                return

    # ---- downloads -------------------------------------------------------------------------
    def download_model(self, model_id: int, folder: str | Path = ".") -> Path:
        """Save a model version's zip in `folder`; returns its path (`<session>-v<N>.zip`)."""
        target_dir = Path(folder)
        target_dir.mkdir(parents=True, exist_ok=True)
        try:
            with self._http.stream("GET", f"/models/{int(model_id)}/download") as response:
                if response.is_error:
                    response.read()
                    raise error_from_response(response)
                target = target_dir / zip_name(response, f"model-{int(model_id)}.zip")
                partial = target.with_name(target.name + ".part")
                with partial.open("wb") as fh:
                    for chunk in response.iter_bytes():
                        fh.write(chunk)
                partial.replace(target)
                return target
        except httpx.TransportError as exc:
            raise unreachable(self.server, exc) from None

    def download_session_model(self, session_id: str, folder: str | Path = ".", version: int | None = None) -> Path:
        """Save the session's latest model version (or `version`) in `folder`."""
        versions = self.list_models(session_id)
        chosen = next((v for v in versions if v.version == version), None) if version is not None \
            else latest_version(versions, session_id)
        if chosen is None:
            raise CotrainError(404, f"Session {session_id} has no model v{version}; it has "
                                    f"{', '.join(v.name for v in versions) or 'none yet'}.")
        return self.download_model(chosen.id, folder)
