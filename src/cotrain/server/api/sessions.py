"""/api/v1/sessions: training sessions and what they produce."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from pydantic import ValidationError

from cotrain.server.api.deps import OPTIONAL_AUTH, PlatformDep, SessionId
from cotrain.server.auth import Actor
from cotrain.server.chain_bridge import owner_wallet
from cotrain.server.internals import scrub_data, worker_host
from cotrain.server.join_command import join_command
from cotrain.server.metrics_service import latest_nodes, node_history, round_history
from cotrain.server.orm import ALL_STATES, TrainingSession
from cotrain.server.permissions import Action, can_see_internals, permit
from cotrain.server.rate_limits import Limit, rate_limit
from cotrain.server.schemas import (
    ERROR_RESPONSES,
    CheckpointOut,
    ErrorOut,
    MessageOut,
    MetricSeries,
    Page,
    PriorityChange,
    SessionCreate,
    SessionFromConfig,
    SessionOut,
    SessionUpdate,
    iso,
)
from cotrain.server.session_service import SessionFilter

if TYPE_CHECKING:
    from cotrain.server.platform import Platform

router = APIRouter(prefix="/sessions", tags=["sessions"], responses=ERROR_RESPONSES)

StatusFilter = Literal[ALL_STATES]  # type: ignore[valid-type]

# Who each route lets in (permissions.PERMISSIONS); the services then apply the read rule and ownership.
Reader = Annotated[Actor | None, Depends(permit(Action.SESSION_READ))]
Creator = Annotated[Actor, Depends(permit(Action.SESSION_CREATE))]
Manager = Annotated[Actor, Depends(permit(Action.SESSION_MANAGE))]


def session_out(row: TrainingSession, platform: Platform, actor: Actor | None,
                reasons: dict[str, str] | None = None) -> SessionOut:
    """The API's view of a row as `actor` may see it (internals.py: paths, hosts and tracebacks for
    the owner and admins only); `reasons` (from SessionService.waiting_reasons) when the caller has
    them for many rows at once."""
    if reasons is None:
        reasons = platform.sessions.waiting_reasons([row])
    internals = can_see_internals(actor, row.owner_id)
    return SessionOut(
        id=row.id, name=row.name, description=row.description, status=row.status, priority=row.priority,
        public=row.public, owner_id=row.owner_id, model_type=row.model_type, model_size=row.model_size,
        strategy=row.strategy, step=row.step, total_steps=row.total_steps, progress=row.progress, loss=row.loss,
        participants=row.participants, metrics=row.latest_metrics or {}, attempts=row.attempts,
        max_retries=row.max_retries, error=platform.sessions.error_text(row, actor),
        worker_id=row.worker_id if internals else None,
        waiting_reason=reasons.get(row.id), created_at=iso(row.created_at),
        queued_at=iso(row.queued_at), started_at=iso(row.started_at), finished_at=iso(row.finished_at),
        request=row.request if internals else scrub_data(row.request),
    )


# issue 17: the create body is the original design's JSON, or a full engine config (JSON with
# `engineConfig`, or the TOML itself); parsed here so each form keeps its own 422 locations.
TOML_TYPES = frozenset({"application/toml", "text/toml", "text/x-toml", "application/x-toml"})
CREATE_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"oneOf": [
            {"$ref": "#/components/schemas/SessionCreate"},
            SessionFromConfig.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}"),
        ]}},
        "application/toml": {"schema": {"type": "string", "description": "A full engine config, as `cotrain train` "
                                        "runs it: the session takes its name from [session] and the defaults "
                                        "(public, queued at once); send JSON with engineConfig for the other fields."}},
    },
}
CREATE_BODY["content"]["application/json"]["schema"]["oneOf"][1].pop("$defs", None)


async def create_body(request: Request) -> SessionCreate | SessionFromConfig:
    """The body as SessionCreate, or SessionFromConfig when it is TOML or has `engineConfig`."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    raw = await request.body()
    if content_type in TOML_TYPES:
        try:
            payload: Any = {"engineConfig": raw.decode("utf-8")}
        except UnicodeDecodeError:
            raise RequestValidationError([{"loc": ("body",), "type": "toml_invalid",
                                           "msg": "The TOML body is not UTF-8 text."}]) from None
    else:
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            raise RequestValidationError([{"loc": ("body", getattr(exc, "pos", 0)), "type": "json_invalid",
                                           "msg": "JSON decode error", "ctx": {"error": str(exc)}}]) from None
    model = SessionFromConfig if isinstance(payload, dict) and "engineConfig" in payload else SessionCreate
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]) from None


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SessionOut, summary="Create a training session",
             dependencies=[Depends(rate_limit(Limit.SESSION_CREATE))],  # issue 11: 429 with Retry-After
             openapi_extra={"requestBody": CREATE_BODY},
             responses={503: {"model": ErrorOut, "description": "A reward pool was asked for and this server "
                                                                "has no chain (install it or leave out rewardPool)"}})
def create_session(actor: Creator, platform: PlatformDep,  # the permission first: a refusal is not a 422
                   body: Annotated[SessionCreate | SessionFromConfig, Depends(create_body)]) -> SessionOut:
    """Turns the parameters into a validated TOML config (configs/generated/<id>.toml) and queues
    the session (or keeps it a draft with `autoStart: false`). A `rewardPool` is recorded in the
    contribution ledger and split among the contributors' wallets when the session completes.

    A full engine config (what `cotrain train` runs) is accepted too: `{"engineConfig": "<TOML text>",
    "priority": ..., "public": ..., "autoStart": ...}`, or the TOML itself with `Content-Type:
    application/toml`. It is validated by the engine's schema and held to the same rules (data roots,
    quotas, capacity, priority); the server sets its [session] id and its checkpoint folder."""
    if isinstance(body, SessionFromConfig):
        return session_out(platform.sessions.create_from_config(body, actor), platform, actor)
    return session_out(platform.sessions.create(body, actor), platform, actor)


@router.get("", response_model=Page[SessionOut], summary="List sessions (filter, paginate)", openapi_extra=OPTIONAL_AUTH)
def list_sessions(
    platform: PlatformDep,
    actor: Reader,
    status_: StatusFilter | None = Query(None, alias="status"),
    strategy: Literal["ddp", "fsdp", "diloco"] | None = None,
    model_type: Literal["llama2", "llama3", "bert"] | None = Query(None, alias="modelType"),
    owner: int | None = Query(None, ge=1, le=2**31 - 1, description="Token id of the owner."),
    q: str | None = Query(None, max_length=200, pattern=r"^[^\x00]*$", description="Part of the name."),
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=10**9),
) -> Page[SessionOut]:
    rows, total = platform.sessions.list(actor, SessionFilter(status_, strategy, model_type, owner, q), limit, offset)
    reasons = platform.sessions.waiting_reasons(rows)
    return Page[SessionOut](items=[session_out(r, platform, actor, reasons) for r in rows], total=total, limit=limit, offset=offset)


@router.get("/{session_id}", response_model=SessionOut, openapi_extra=OPTIONAL_AUTH)
def get_session(session_id: SessionId, platform: PlatformDep, actor: Reader) -> SessionOut:
    return session_out(platform.sessions.get(session_id, actor), platform, actor)


@router.patch("/{session_id}", response_model=SessionOut, summary="Edit a draft or queued session")
def update_session(session_id: SessionId, body: SessionUpdate, platform: PlatformDep, actor: Manager) -> SessionOut:
    return session_out(platform.sessions.update(session_id, body, actor), platform, actor)


@router.delete("/{session_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_session(session_id: SessionId, platform: PlatformDep, actor: Manager) -> Response:
    platform.sessions.delete(session_id, actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{session_id}/start", response_model=SessionOut, summary="Queue a draft, or run a finished session again")
def start_session(session_id: SessionId, platform: PlatformDep, actor: Manager) -> SessionOut:
    return session_out(platform.sessions.start(session_id, actor), platform, actor)


@router.post("/{session_id}/cancel", response_model=SessionOut, summary="Cancel (SIGTERM, then SIGKILL after a grace period)")
def cancel_session(session_id: SessionId, platform: PlatformDep, actor: Manager) -> SessionOut:
    return session_out(platform.sessions.cancel(session_id, actor), platform, actor)


@router.post("/{session_id}/retry", response_model=SessionOut, summary="Queue a failed or cancelled session again")
def retry_session(session_id: SessionId, platform: PlatformDep, actor: Manager) -> SessionOut:
    return session_out(platform.sessions.retry(session_id, actor), platform, actor)


@router.put("/{session_id}/priority", response_model=SessionOut, summary="Change the queue priority")
def set_priority(session_id: SessionId, body: PriorityChange, platform: PlatformDep, actor: Manager) -> SessionOut:
    return session_out(platform.sessions.set_priority(session_id, body.priority, actor), platform, actor)


@router.get("/{session_id}/config", summary="Download the generated TOML config",
            responses={200: {"content": {"application/toml": {"schema": {"type": "string"}}}}}, openapi_extra=OPTIONAL_AUTH)
def download_config(session_id: SessionId, platform: PlatformDep, actor: Reader) -> PlainTextResponse:
    return PlainTextResponse(
        platform.sessions.config_toml(session_id, actor), media_type="application/toml",
        headers={"Content-Disposition": f'attachment; filename="{session_id}.toml"'},
    )


@router.get("/{session_id}/status", summary="Status, progress and the latest metrics", openapi_extra=OPTIONAL_AUTH)
def session_status(session_id: SessionId, platform: PlatformDep, actor: Reader) -> dict[str, Any]:
    row = platform.sessions.get(session_id, actor)
    return {
        "sessionId": row.id, "status": row.status, "progress": row.progress, "step": row.step,
        "totalSteps": row.total_steps, "loss": row.loss, "participants": row.participants,
        "metrics": row.latest_metrics or {}, "attempts": row.attempts,
        "error": platform.sessions.error_text(row, actor), "seq": row.message_seq,
        "queuePosition": platform.sessions.queue_position(session_id, actor),
        "waitingReason": platform.sessions.waiting_reasons([row]).get(row.id),
    }


@router.get("/{session_id}/metrics", response_model=MetricSeries, summary="Metric history for charts (downsampled)", openapi_extra=OPTIONAL_AUTH)
def session_metrics(
    session_id: SessionId, platform: PlatformDep, actor: Reader,
    max_points: int = Query(500, ge=10, le=10_000, alias="maxPoints"),
) -> MetricSeries:
    platform.sessions.get(session_id, actor)
    return MetricSeries(**platform.metric_history(session_id, max_points))


@router.get("/{session_id}/events", response_model=list[MessageOut], summary="The session's messages (as sent on the WebSocket)", openapi_extra=OPTIONAL_AUTH)
def session_events(
    session_id: SessionId, platform: PlatformDep, actor: Reader,
    after: int = Query(0, ge=0, le=2**62, description="Only messages with a larger seq."), limit: int = Query(1000, ge=1, le=10_000),
) -> list[MessageOut]:
    out = []
    for m in platform.sessions.messages(session_id, after, limit, actor):
        out.append(MessageOut(seq=m["data"]["seq"], event=m["event"], time=m["data"].get("time") or 0.0, data=m["data"]))
    return out


@router.get("/{session_id}/logs", summary="The tail of the engine's stderr or stdout", openapi_extra=OPTIONAL_AUTH)
def session_logs(
    session_id: SessionId, platform: PlatformDep, actor: Reader,
    stream: Literal["stderr", "stdout"] = "stderr", lines: int = Query(200, ge=1, le=5000),
) -> dict[str, Any]:
    """From this machine's disk when the run's log is here; otherwise from the last 200 lines the
    worker that ran it keeps in the database (`source`: "disk" or "database", `workerId`: whose log)."""
    return {"sessionId": session_id, "stream": stream, **platform.sessions.log_view(session_id, stream, lines, actor)}


@router.get("/{session_id}/checkpoints", response_model=list[CheckpointOut], openapi_extra=OPTIONAL_AUTH)
def session_checkpoints(session_id: SessionId, platform: PlatformDep, actor: Reader) -> list[CheckpointOut]:
    return [
        CheckpointOut(step=c["step"], path=c["path"], size_bytes=c["size_bytes"], created_at=iso(c["created_at"]))  # type: ignore[arg-type]
        for c in platform.sessions.checkpoints(session_id, actor)
    ]


@router.get("/{session_id}/participants", summary="Peers of the session and their progress", openapi_extra=OPTIONAL_AUTH)
def session_participants(session_id: SessionId, platform: PlatformDep, actor: Reader) -> dict[str, Any]:
    return platform.sessions.participants(session_id, actor)


@router.get("/{session_id}/join", summary="What a volunteer needs to join: the config and the bootstrap peers", openapi_extra=OPTIONAL_AUTH)
def join_info(session_id: SessionId, request: Request, platform: PlatformDep, actor: Reader) -> dict[str, Any]:
    """`command` joins through this server (`cotrain join --server`); a signed-in wallet's address is
    filled in as `--wallet` (add `--wallet 0x...` yourself to be credited otherwise)."""
    row = platform.sessions.get(session_id, actor)
    peers = platform.dht.bootstrap_addresses()
    command = join_command(str(request.base_url), row.id, owner_wallet(actor.name if actor else None))
    return {"sessionId": row.id, "strategy": row.strategy, "status": row.status, "config": row.config_toml,
            "initialPeers": peers, "command": command}


@router.get("/{session_id}/model", summary="The session's final model versions", openapi_extra=OPTIONAL_AUTH)
def session_model(session_id: SessionId, platform: PlatformDep, actor: Reader) -> list[dict[str, Any]]:
    from cotrain.server.api.model_versions import list_versions_out

    platform.sessions.get(session_id, actor)
    return list_versions_out(platform, session_id, actor=actor)


# ---- issue 19: every machine of a session (metrics_service.latest_nodes / node_history / round_history) ----

def _for_reader(data: dict[str, Any], row: TrainingSession, actor: Actor | None) -> dict[str, Any]:
    """Node ids and GPU names carry no host names by the engine's contract; anything that does is
    still scrubbed for everyone but the owner and admins (internals.py)."""
    return data if can_see_internals(actor, row.owner_id) else scrub_data(data, worker_host(row.worker_id))


@router.get("/{session_id}/nodes", summary="Each node's or peer's system metrics: the latest and over time",
            openapi_extra=OPTIONAL_AUTH)
def session_nodes(
    session_id: SessionId, platform: PlatformDep, actor: Reader,
    max_points: int = Query(500, ge=10, le=10_000, alias="maxPoints"),
) -> dict[str, Any]:
    """`nodes`: the newest sample of each node (GPU utilisation and memory per device, host RAM,
    network and disk bytes/s, tokens/s, `last_seen`), one per DDP/FSDP node or DiLoCo peer;
    `history`: each node's series (`node`, `totalPoints`, `points`), downsampled past `maxPoints`
    samples (metrics_service.node_history). Node, GPU and point fields keep the engine contract's names."""
    row = platform.sessions.get(session_id, actor)
    with platform.factory.begin() as db:
        nodes = latest_nodes(db, row.id)
        history = node_history(db, row.id, max_points)
    data = {"sessionId": row.id, "nodes": nodes, "downsampled": history["downsampled"],
            "history": [{"node": h["node"], "totalPoints": h["total_points"], "points": h["points"]}
                        for h in history["nodes"]]}
    return _for_reader(data, row, actor)


@router.get("/{session_id}/rounds", summary="DiLoCo rounds: training, averaging and waiting time, traffic, the slowest peer",
            openapi_extra=OPTIONAL_AUTH)
def session_rounds(
    session_id: SessionId, platform: PlatformDep, actor: Reader,
    max_points: int = Query(500, ge=10, le=10_000, alias="maxPoints"),
) -> dict[str, Any]:
    """The session's rounds oldest first (bucketed past `maxPoints`), the newest whole with its
    peers, its slowest peer, and per-peer totals (metrics_service.round_history); empty for a
    session that is not DiLoCo."""
    row = platform.sessions.get(session_id, actor)
    with platform.factory.begin() as db:
        rounds = round_history(db, row.id, max_points)
    data = {"sessionId": row.id, "totalRounds": rounds["total_rounds"], "downsampled": rounds["downsampled"],
            "rounds": rounds["rounds"], "latest": rounds["latest"], "slowestPeer": rounds["slowest_peer"],
            "peers": rounds["peers"]}
    return _for_reader(data, row, actor)
