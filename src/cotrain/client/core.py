"""What both clients share: each API call built once as a `Call` (method, path, body, and how to
read the answer), the `endpoint` descriptor that runs it on either transport, and the transport-free
state of the live stream (`EventCursor`) and of a followed log (`LogFollower`).

`Client` (httpx.Client) and `AsyncClient` (httpx.AsyncClient) only send a `Call` and hand the
response to its parser: an `endpoint` attribute of `Endpoints` is a plain method on `Client` and a
coroutine method on `AsyncClient`, with the same signature and docstring.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, ParamSpec, TypeVar, overload

import httpx
from pydantic import BaseModel, TypeAdapter
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from cotrain.client.errors import CotrainError
from cotrain.server.schemas import (
    CheckpointOut,
    MessageOut,
    MetricSeries,
    ModelVersionOut,
    Page,
    SessionCreate,
    SessionFromConfig,
    SessionOut,
    SessionUpdate,
)

P = ParamSpec("P")
T = TypeVar("T")

FINAL_STATES = ("completed", "failed", "cancelled")
API = "/api/v1"


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and how to read its answer (`parse` gets a successful response)."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Mapping[str, Any] | None = None
    json: Any = None
    content: bytes | None = None
    headers: Mapping[str, str] | None = None


def _model(kind: Any) -> Callable[[httpx.Response], Any]:
    adapter = TypeAdapter(kind)
    return lambda response: adapter.validate_python(response.json())


def _json(response: httpx.Response) -> Any:
    return response.json()


def _nothing(_response: httpx.Response) -> None:
    return None


class SyncTransport:
    """Marker base of the blocking client (for `endpoint`'s types)."""

    def _perform(self, call: Call[T]) -> T:  # pragma: no cover - implemented by Client
        raise NotImplementedError


class AsyncTransport:
    """Marker base of the asyncio client (for `endpoint`'s types)."""

    async def _perform(self, call: Call[T]) -> T:  # pragma: no cover - implemented by AsyncClient
        raise NotImplementedError


class endpoint(Generic[P, T]):  # noqa: N801 (used like a decorator)
    """A method of both clients from one `Call` builder: blocking on `Client`, awaitable on `AsyncClient`."""

    def __init__(self, build: Callable[P, Call[T]]):
        self.build = build
        functools.update_wrapper(self, build)  # type: ignore[arg-type]

    @overload
    def __get__(self, obj: None, owner: type) -> endpoint[P, T]: ...
    @overload
    def __get__(self, obj: SyncTransport, owner: type) -> Callable[P, T]: ...
    @overload
    def __get__(self, obj: AsyncTransport, owner: type) -> Callable[P, Awaitable[T]]: ...

    def __get__(self, obj: Any, owner: type) -> Any:
        if obj is None:
            return self
        build = self.build

        @functools.wraps(build)
        def bound(*args: Any, **kwargs: Any) -> Any:
            return obj._perform(build(*args, **kwargs))

        return bound


# ---- building a create body ------------------------------------------------------------------

Source = SessionCreate | SessionFromConfig | Mapping[str, Any] | str | Path


def create_body(source: Source, *, overrides: Iterable[str] = (), **fields: Any) -> dict[str, Any]:
    """The JSON body of POST /sessions from the original design's JSON (a SessionCreate, a dict, or a
    .json file), or from a full engine config (a .toml file, a SessionFromConfig, or a dict with
    `engineConfig`). `overrides` are `key=value` strings like `cotrain train --set`: config keys
    (`train.max_steps=40`) for an engine config, request keys (`trainingConfig.maxSteps=40`) otherwise.
    `fields` (name, description, priority, public, auto_start, max_retries, reward_pool) are set on top."""
    if isinstance(source, BaseModel):
        body = source.model_dump(mode="json", by_alias=True, exclude_unset=True)
    elif isinstance(source, Mapping):
        body = json.loads(json.dumps(dict(source)))
    else:
        body = _read_source(Path(source))
    overrides = list(overrides)
    if overrides and "engineConfig" in body:
        body["engineConfig"] = _override_toml(str(body["engineConfig"]), overrides)
    elif overrides:
        _override_json(body, overrides)
    for name, value in fields.items():
        if value is not None:
            body[_camel(name)] = value.model_dump(mode="json", by_alias=True) if isinstance(value, BaseModel) else value
    return body


def _read_source(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CotrainError(None, f"No such file: {path}. Give a .toml engine config (as `cotrain train` runs) "
                                 "or a .json session body.")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".toml":
        return {"engineConfig": text}
    if path.suffix.lower() == ".json":
        try:
            body = json.loads(text)
        except ValueError as exc:
            raise CotrainError(None, f"{path} is not valid JSON ({exc}).") from None
        if not isinstance(body, dict):
            raise CotrainError(None, f"{path} must hold a JSON object (the session's fields).")
        return body
    raise CotrainError(None, f"{path}: give a .toml engine config or a .json session body (the name must end so).")


def _override_toml(text: str, overrides: list[str]) -> str:
    import tomllib

    import tomli_w

    from cotrain.config.loader import ConfigError, apply_set_overrides

    try:
        return tomli_w.dumps(apply_set_overrides(tomllib.loads(text), overrides))
    except tomllib.TOMLDecodeError as exc:
        raise CotrainError(None, f"The engine config is not valid TOML ({exc}).") from None
    except ConfigError as exc:
        raise CotrainError(None, "; ".join(exc.problems)) from None


def _override_json(body: dict[str, Any], overrides: list[str]) -> None:
    from cotrain.config.loader import parse_value

    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CotrainError(None, f"--set {item!r}: write it as key=value, e.g. trainingConfig.maxSteps=40.")
        node = body
        *parents, leaf = key.strip().split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise CotrainError(None, f"--set {item!r}: {part} is a value, not a section.")
            node = child
        node[leaf] = parse_value(value.strip())


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


# ---- the calls --------------------------------------------------------------------------------

def _sid(session_id: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", session_id or ""):
        raise CotrainError(None, f"{session_id!r} is not a session id (letters, digits, '.', '_' and '-').")
    return session_id


def create_session(source: Source, *, overrides: Iterable[str] = (), name: str | None = None,
                   description: str | None = None, priority: int | None = None, public: bool | None = None,
                   auto_start: bool | None = None, max_retries: int | None = None,
                   reward_pool: Mapping[str, Any] | None = None) -> Call[SessionOut]:
    """Create a session from the original design's JSON (a SessionCreate, a dict or a .json file) or
    from a full engine config (a .toml file, as `cotrain train` runs it). See `create_body`."""
    body = create_body(source, overrides=overrides, name=name, description=description, priority=priority,
                       public=public, auto_start=auto_start, max_retries=max_retries, reward_pool=reward_pool)
    return Call("POST", "/sessions", _model(SessionOut), json=body)


def list_sessions(*, status: str | None = None, strategy: str | None = None, model_type: str | None = None,
                  owner: int | None = None, q: str | None = None, limit: int = 50,
                  offset: int = 0) -> Call[Page[SessionOut]]:
    """Sessions you may read, newest first; filter by status, strategy, model type, owner (token id) or name."""
    params = {"status": status, "strategy": strategy, "modelType": model_type, "owner": owner, "q": q,
              "limit": limit, "offset": offset}
    return Call("GET", "/sessions", _model(Page[SessionOut]), params={k: v for k, v in params.items() if v is not None})


def get_session(session_id: str) -> Call[SessionOut]:
    """One session."""
    return Call("GET", f"/sessions/{_sid(session_id)}", _model(SessionOut))


def session_status(session_id: str) -> Call[dict[str, Any]]:
    """Status, progress, the latest metrics, queue position and waiting reason."""
    return Call("GET", f"/sessions/{_sid(session_id)}/status", _json)


def start_session(session_id: str) -> Call[SessionOut]:
    """Queue a draft, or run a finished session again (it resumes from its checkpoints)."""
    return Call("POST", f"/sessions/{_sid(session_id)}/start", _model(SessionOut))


def cancel_session(session_id: str) -> Call[SessionOut]:
    """Cancel: at once when queued, else the run is stopped (it saves a checkpoint first)."""
    return Call("POST", f"/sessions/{_sid(session_id)}/cancel", _model(SessionOut))


def retry_session(session_id: str) -> Call[SessionOut]:
    """Queue a failed or cancelled session again with a fresh retry budget."""
    return Call("POST", f"/sessions/{_sid(session_id)}/retry", _model(SessionOut))


def delete_session(session_id: str) -> Call[None]:
    """Delete a session that is not running."""
    return Call("DELETE", f"/sessions/{_sid(session_id)}", _nothing)


def update_session(session_id: str, changes: SessionUpdate | Mapping[str, Any]) -> Call[SessionOut]:
    """Edit a draft or queued session (request field names: `{"trainingConfig": {"maxSteps": 40}}`)."""
    body = changes.model_dump(mode="json", by_alias=True, exclude_unset=True) if isinstance(changes, BaseModel) \
        else dict(changes)
    return Call("PATCH", f"/sessions/{_sid(session_id)}", _model(SessionOut), json=body)


def set_priority(session_id: str, priority: int) -> Call[SessionOut]:
    """Change a session's queue priority."""
    return Call("PUT", f"/sessions/{_sid(session_id)}/priority", _model(SessionOut), json={"priority": priority})


def session_config(session_id: str) -> Call[str]:
    """The session's engine config (TOML), as its run uses it."""
    return Call("GET", f"/sessions/{_sid(session_id)}/config", lambda r: r.text)


def events(session_id: str, after: int = 0, limit: int = 1000) -> Call[list[MessageOut]]:
    """Stored messages of a session with a seq above `after` (what the WebSocket sends), oldest first."""
    return Call("GET", f"/sessions/{_sid(session_id)}/events", _model(list[MessageOut]),
                params={"after": after, "limit": limit})


def logs(session_id: str, lines: int = 200, stream: str = "stderr") -> Call[list[str]]:
    """The last `lines` lines of the run's log (`stream`: "stderr" or "stdout")."""
    return Call("GET", f"/sessions/{_sid(session_id)}/logs", lambda r: list(r.json()["lines"]),
                params={"stream": stream, "lines": lines})


def checkpoints(session_id: str) -> Call[list[CheckpointOut]]:
    """The session's checkpoints on the server's disk."""
    return Call("GET", f"/sessions/{_sid(session_id)}/checkpoints", _model(list[CheckpointOut]))


def metrics(session_id: str, max_points: int = 500) -> Call[MetricSeries]:
    """The metric history (downsampled to at most `max_points`)."""
    return Call("GET", f"/sessions/{_sid(session_id)}/metrics", _model(MetricSeries), params={"maxPoints": max_points})


def participants(session_id: str) -> Call[dict[str, Any]]:
    """The session's peers and their progress."""
    return Call("GET", f"/sessions/{_sid(session_id)}/participants", _json)


def list_models(session: str | None = None, *, limit: int = 100, offset: int = 0) -> Call[list[ModelVersionOut]]:
    """Final model versions you may read (v1, v2, ... per session), optionally of one session."""
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    if session is not None:
        params["session"] = _sid(session)
    return Call("GET", "/models", _model(list[ModelVersionOut]), params=params)


def get_model(model_id: int) -> Call[ModelVersionOut]:
    """One model version."""
    return Call("GET", f"/models/{int(model_id)}", _model(ModelVersionOut))


def compare_models(ids: Iterable[int]) -> Call[dict[str, Any]]:
    """Two or more versions side by side (val loss, perplexity, accuracy, parameters, tokens seen) and the
    best of each."""
    return Call("GET", "/models/compare", _json, params={"ids": [int(i) for i in ids]})


def session_rewards(session_id: str) -> Call[dict[str, Any]]:
    """A session's contributors, rewards and payout status."""
    return Call("GET", f"/rewards/sessions/{_sid(session_id)}", _json)


def my_rewards() -> Call[list[dict[str, Any]]]:
    """The signed-in wallet's rewards and their payouts."""
    return Call("GET", "/me/rewards", _json)


def my_contributions() -> Call[list[dict[str, Any]]]:
    """The signed-in wallet's contributions."""
    return Call("GET", "/me/contributions", _json)


def me() -> Call[dict[str, Any]]:
    """Who the token belongs to (id, name, role)."""
    return Call("GET", "/auth/me", _json)


def health() -> Call[dict[str, Any]]:
    """The server's components and their state."""
    return Call("GET", "/health", lambda r: r.json()["data"])


class Endpoints:
    """The API calls of both clients (blocking on `Client`, awaitable on `AsyncClient`)."""

    create_session = endpoint(create_session)
    list_sessions = endpoint(list_sessions)
    get_session = endpoint(get_session)
    session_status = endpoint(session_status)
    start_session = endpoint(start_session)
    cancel_session = endpoint(cancel_session)
    retry_session = endpoint(retry_session)
    delete_session = endpoint(delete_session)
    update_session = endpoint(update_session)
    set_priority = endpoint(set_priority)
    session_config = endpoint(session_config)
    events = endpoint(events)
    logs = endpoint(logs)
    checkpoints = endpoint(checkpoints)
    metrics = endpoint(metrics)
    participants = endpoint(participants)
    list_models = endpoint(list_models)
    get_model = endpoint(get_model)
    compare_models = endpoint(compare_models)
    session_rewards = endpoint(session_rewards)
    my_rewards = endpoint(my_rewards)
    my_contributions = endpoint(my_contributions)
    me = endpoint(me)
    health = endpoint(health)


# ---- shared pieces of the transports ----------------------------------------------------------

def base_urls(server: str) -> tuple[str, str]:
    """(REST base, WebSocket URL) of a server address like http://127.0.0.1:8000."""
    server = server.strip().rstrip("/")
    if not re.match(r"^https?://", server):
        raise CotrainError(None, f"{server!r} is not a server address: write it like http://127.0.0.1:8000.")
    ws = "ws" + server[4:] if server.startswith("http") else server
    return server + API, ws + "/ws"


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def zip_name(response: httpx.Response, fallback: str) -> str:
    """The file name of a download (Content-Disposition), reduced to a plain name."""
    disposition = response.headers.get("content-disposition", "")
    match = re.search(r'filename="?([^";]+)"?', disposition)
    name = Path(match.group(1)).name if match else ""
    return name if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) else fallback


def latest_version(versions: list[ModelVersionOut], session_id: str) -> ModelVersionOut:
    if not versions:
        raise CotrainError(404, f"Session {session_id} has no model version yet: a version appears when a run "
                                "completes (see `cotrain sessions show`).")
    return max(versions, key=lambda v: v.version)


def is_final(status: str | None) -> bool:
    return status in FINAL_STATES


@dataclass
class Received:
    """What one WebSocket message means for the stream."""

    message: MessageOut | None = None  # a message of the session
    gap: bool = False  # ... that comes after a gap: fetch the missing ones first
    ack_seq: int | None = None  # the subscription was acknowledged; the session's latest seq
    error: str | None = None  # the server refused the subscription
    retry_after: float | None = None  # ... for now (rate limit)


@dataclass
class EventCursor:
    """Where the live stream of one session stands: the last seq delivered. A reconnect subscribes
    with `after` = that seq (ws.py replays exactly what was missed), a gap in the seqs is filled from
    GET /sessions/{id}/events, and a message at or below it is never delivered twice."""

    session_id: str
    last: int = 0
    until_done: bool = True
    ending: bool = False  # a final status was delivered: the session may have ended (ask the server)
    done: bool = False
    reconnects: int = field(default=0)

    def subscribe(self) -> str:
        return json.dumps({"action": "subscribe", "sessionId": self.session_id, "after": self.last})

    def receive(self, text: str | bytes) -> Received:
        try:
            payload = json.loads(text)
        except ValueError:
            return Received()
        event, data = payload.get("event"), payload.get("data") or {}
        if event == "subscribed" and data.get("sessionId") == self.session_id:
            return Received(ack_seq=int(data.get("seq") or 0))
        if event == "error" and data.get("sessionId") in (self.session_id, None):
            if data.get("sessionId") is None and "retryAfter" not in data:
                return Received()  # about a message of ours that it could not read: nothing to do
            return Received(error=str(data.get("message")), retry_after=data.get("retryAfter"))
        if data.get("sessionId") != self.session_id or not isinstance(data.get("seq"), int):
            return Received()
        message = MessageOut(seq=data["seq"], event=str(event), time=data.get("time") or 0.0, data=data)
        if message.seq <= self.last:
            return Received()
        return Received(message=message, gap=message.seq > self.last + 1)

    def deliver(self, message: MessageOut) -> bool:
        """Whether `message` is new (then it counts as delivered). A final status sets `ending`: the
        transport then asks whether the session is final now, since a replay also carries the final
        status of earlier runs (a session retried or started again)."""
        if message.seq <= self.last:
            return False
        self.last = message.seq
        if self.until_done and message.event == "training.status" and is_final(message.data.get("status")):
            self.ending = True
        return True


class LogFollower:
    """Turns successive tails of a log into the lines not shown yet (the API serves tails only)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def new_lines(self, tail: list[str]) -> list[str]:
        seen = self.seen
        overlap = 0
        for size in range(min(len(seen), len(tail)), 0, -1):
            if seen[-size:] == tail[:size]:
                overlap = size
                break
        self.seen = (seen + tail[overlap:])[-10_000:]
        return tail[overlap:]


# ---- the live stream's connection failures, for both transports ----------------------------------
STREAM_ERRORS = (ConnectionClosed, InvalidURI, InvalidHandshake, OSError, TimeoutError, CotrainError)


def stream_failure(exc: Exception, ws_url: str) -> CotrainError | None:
    """What a failure of the live connection means: an error to raise (a refused token, a bad
    address, a refusal the server answered with), or None: the connection was lost, reconnect."""
    if isinstance(exc, ConnectionClosed):
        if exc.rcvd is not None and exc.rcvd.code == 1008:
            return CotrainError(401, exc.rcvd.reason or "The server refused the token.")
        return None
    if isinstance(exc, InvalidURI):
        return CotrainError(None, f"{ws_url} is not a WebSocket address ({exc}).")
    if isinstance(exc, CotrainError) and exc.status is not None:
        return exc
    return None


def lost_since(lost_at: float | None, now: float, reconnect_for: float, exc: Exception, server: str) -> float:
    """When the connection was first lost; raises once it has stayed lost for `reconnect_for` s."""
    if lost_at is not None and now - lost_at > reconnect_for:
        raise CotrainError(None, f"Lost the live connection to {server} and could not reconnect for "
                                 f"{reconnect_for:g} s ({exc.__class__.__name__}: {exc}).") from None
    return lost_at if lost_at is not None else now
