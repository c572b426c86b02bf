"""/api/v1/sessions: training sessions and what they produce. Each route parses, calls the session
service (the read rule, ownership and what a reader may see are its), and returns the model
`response_model` serializes."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse
from pydantic import ValidationError

from cotrain.server.api.deps import OPTIONAL_AUTH, PlatformDep, SessionId
from cotrain.server.auth import Actor
from cotrain.server.chain_bridge import owner_wallet
from cotrain.server.join_command import join_command
from cotrain.server.orm import ALL_STATES
from cotrain.server.permissions import Action, permit
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
    SessionStatusOut,
    SessionUpdate,
)
from cotrain.server.session_service import SessionFilter
from cotrain.server.validator_peer import validators_of

router = APIRouter(prefix="/sessions", tags=["sessions"], responses=ERROR_RESPONSES)

StatusFilter = Literal[ALL_STATES]  # type: ignore[valid-type]  # the Literal is built from the enum's values

# Who each route lets in (permissions.PERMISSIONS); the services then apply the read rule and ownership.
Reader = Annotated[Actor | None, Depends(permit(Action.SESSION_READ))]
Creator = Annotated[Actor, Depends(permit(Action.SESSION_CREATE))]
Manager = Annotated[Actor, Depends(permit(Action.SESSION_MANAGE))]
MaxPoints = Annotated[int, Query(ge=10, le=10_000, alias="maxPoints")]


# issue 17: the create body is the original design's JSON, or a full engine config (JSON with
# `engineConfig`, or the TOML itself); parsed here so each form keeps its own 422 locations.
TOML_TYPES = frozenset({"application/toml", "text/toml", "text/x-toml", "application/x-toml"})
CREATE_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {"schema": {"oneOf": [
            {"$ref": "#/components/schemas/SessionCreate"},
            SessionFromConfig.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}"),
        ]}},
        "application/toml": {"schema": {
            "type": "string", "description": "A full engine config, as `cotrain train` runs it: the session takes "
            "its name from [session] and the defaults (public, queued at once); send JSON with engineConfig for the "
            "other fields."}},
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
    sessions = platform.sessions
    if isinstance(body, SessionFromConfig):
        return sessions.shown(sessions.create_from_config(body, actor), actor)
    return sessions.shown(sessions.create(body, actor), actor)


@router.get("", response_model=Page[SessionOut], summary="List sessions (filter, paginate)",
            openapi_extra=OPTIONAL_AUTH)
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
    sessions = platform.sessions
    rows, total = sessions.find(actor, SessionFilter(status_, strategy, model_type, owner, q), limit, offset)
    reasons = sessions.waiting_reasons(rows)
    return Page[SessionOut](items=[sessions.shown(r, actor, reasons) for r in rows], total=total, limit=limit,
                            offset=offset)


@router.get("/{session_id}", response_model=SessionOut, openapi_extra=OPTIONAL_AUTH)
def get_session(session_id: SessionId, platform: PlatformDep, actor: Reader) -> SessionOut:
    return platform.sessions.shown(platform.sessions.get(session_id, actor), actor)


@router.patch("/{session_id}", response_model=SessionOut, summary="Edit a draft or queued session")
def update_session(session_id: SessionId, body: SessionUpdate, platform: PlatformDep, actor: Manager) -> SessionOut:
    return platform.sessions.shown(platform.sessions.update(session_id, body, actor), actor)


@router.delete("/{session_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_session(session_id: SessionId, platform: PlatformDep, actor: Manager) -> Response:
    platform.sessions.delete(session_id, actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{session_id}/start", response_model=SessionOut, summary="Queue a draft, or run a finished session again")
def start_session(session_id: SessionId, platform: PlatformDep, actor: Manager) -> SessionOut:
    return platform.sessions.shown(platform.sessions.start(session_id, actor), actor)


@router.post("/{session_id}/cancel", response_model=SessionOut,
             summary="Cancel (SIGTERM, then SIGKILL after a grace period)")
def cancel_session(session_id: SessionId, platform: PlatformDep, actor: Manager) -> SessionOut:
    return platform.sessions.shown(platform.sessions.cancel(session_id, actor), actor)


@router.post("/{session_id}/retry", response_model=SessionOut, summary="Queue a failed or cancelled session again")
def retry_session(session_id: SessionId, platform: PlatformDep, actor: Manager) -> SessionOut:
    return platform.sessions.shown(platform.sessions.retry(session_id, actor), actor)


@router.put("/{session_id}/priority", response_model=SessionOut, summary="Change the queue priority")
def set_priority(session_id: SessionId, body: PriorityChange, platform: PlatformDep, actor: Manager) -> SessionOut:
    return platform.sessions.shown(platform.sessions.set_priority(session_id, body.priority, actor), actor)


@router.get("/{session_id}/config", summary="Download the generated TOML config",
            responses={200: {"content": {"application/toml": {"schema": {"type": "string"}}}}},
            openapi_extra=OPTIONAL_AUTH)
def download_config(session_id: SessionId, platform: PlatformDep, actor: Reader) -> PlainTextResponse:
    return PlainTextResponse(
        platform.sessions.config_toml(session_id, actor), media_type="application/toml",
        headers={"Content-Disposition": f'attachment; filename="{session_id}.toml"'},
    )


@router.get("/{session_id}/status", response_model=SessionStatusOut, summary="Status, progress and the latest metrics",
            openapi_extra=OPTIONAL_AUTH)
def session_status(session_id: SessionId, platform: PlatformDep, actor: Reader) -> SessionStatusOut:
    return platform.sessions.status(session_id, actor)


@router.get("/{session_id}/metrics", response_model=MetricSeries, summary="Metric history for charts (downsampled)",
            openapi_extra=OPTIONAL_AUTH)
def session_metrics(session_id: SessionId, platform: PlatformDep, actor: Reader,
                    max_points: MaxPoints = 500) -> dict[str, Any]:
    platform.sessions.get(session_id, actor)
    return platform.metrics.history(session_id, max_points)


@router.get("/{session_id}/events", response_model=list[MessageOut],
            summary="The session's messages (as sent on the WebSocket)", openapi_extra=OPTIONAL_AUTH)
def session_events(
    session_id: SessionId, platform: PlatformDep, actor: Reader,
    after: int = Query(0, ge=0, le=2**62, description="Only messages with a larger seq."),
    limit: int = Query(1000, ge=1, le=10_000),
) -> list[MessageOut]:
    return [MessageOut.of(m) for m in platform.sessions.messages(session_id, after, limit, actor)]


@router.get("/{session_id}/logs", summary="The tail of the engine's stderr or stdout", openapi_extra=OPTIONAL_AUTH)
def session_logs(
    session_id: SessionId, platform: PlatformDep, actor: Reader,
    stream: Literal["stderr", "stdout"] = "stderr", lines: int = Query(200, ge=1, le=5000),
) -> dict[str, Any]:
    """From this machine's disk when the run's log is here; otherwise from the last 200 lines the
    worker that ran it keeps in the database (`source`: "disk" or "database", `workerId`: whose log)."""
    return {"sessionId": session_id, "stream": stream, **platform.sessions.log_view(session_id, stream, lines, actor)}


@router.get("/{session_id}/checkpoints", response_model=list[CheckpointOut], openapi_extra=OPTIONAL_AUTH)
def session_checkpoints(session_id: SessionId, platform: PlatformDep, actor: Reader) -> list[dict[str, Any]]:
    return platform.sessions.checkpoints(session_id, actor)


@router.get("/{session_id}/participants", summary="Peers of the session and their progress",
            openapi_extra=OPTIONAL_AUTH)
def session_participants(session_id: SessionId, platform: PlatformDep, actor: Reader) -> dict[str, Any]:
    return platform.sessions.participants(session_id, actor)


@router.get("/{session_id}/join", summary="What a volunteer needs to join: the config and the bootstrap peers",
            openapi_extra=OPTIONAL_AUTH)
def join_info(session_id: SessionId, request: Request, platform: PlatformDep, actor: Reader) -> dict[str, Any]:
    """`command` joins through this server (`cotrain join --server`); a signed-in wallet's address is
    filled in as `--wallet` (add `--wallet 0x...` yourself to be credited otherwise). `validators`: the peer
    ids whose exclusions a volunteer follows (the server's own peer of a rewarded DiLoCo session, once started)."""
    row = platform.sessions.get(session_id, actor)
    peers = platform.dht.bootstrap_addresses()
    command = join_command(str(request.base_url), row.id, owner_wallet(actor.name if actor else None))
    return {"sessionId": row.id, "strategy": row.strategy, "status": row.status, "config": row.config_toml,
            "initialPeers": peers, "validators": validators_of(row), "command": command}


@router.get("/{session_id}/model", summary="The session's final model versions", openapi_extra=OPTIONAL_AUTH)
def session_model(session_id: SessionId, platform: PlatformDep, actor: Reader) -> list[dict[str, Any]]:
    platform.sessions.get(session_id, actor)
    return platform.models.versions(session_id, actor)


# ---- issue 19: every machine of a session (metrics_service.MetricsService.nodes / rounds) ----

@router.get("/{session_id}/nodes", summary="Each node's or peer's system metrics: the latest and over time",
            openapi_extra=OPTIONAL_AUTH)
def session_nodes(session_id: SessionId, platform: PlatformDep, actor: Reader,
                  max_points: MaxPoints = 500) -> dict[str, Any]:
    """`nodes`: the newest sample of each node (GPU utilisation and memory per device, host RAM,
    network and disk bytes/s, tokens/s, `last_seen`), one per DDP/FSDP node or DiLoCo peer;
    `history`: each node's series (`node`, `totalPoints`, `points`), downsampled past `maxPoints`
    samples (metrics_service.node_history). Node, GPU and point fields keep the engine contract's names."""
    row = platform.sessions.get(session_id, actor)
    stored = platform.metrics.nodes(row.id, max_points)
    history = stored["history"]
    data = {"sessionId": row.id, "nodes": stored["latest"], "downsampled": history["downsampled"],
            "history": [{"node": h["node"], "totalPoints": h["total_points"], "points": h["points"]}
                        for h in history["nodes"]]}
    return platform.sessions.shown_data(row, actor, data)


@router.get("/{session_id}/rounds",
            summary="DiLoCo rounds: training, averaging and waiting time, traffic, the slowest peer",
            openapi_extra=OPTIONAL_AUTH)
def session_rounds(session_id: SessionId, platform: PlatformDep, actor: Reader,
                   max_points: MaxPoints = 500) -> dict[str, Any]:
    """The session's rounds oldest first (bucketed past `maxPoints`), the newest whole with its
    peers, its slowest peer, and per-peer totals (metrics_service.round_history); empty for a
    session that is not DiLoCo."""
    row = platform.sessions.get(session_id, actor)
    rounds = platform.metrics.rounds(row.id, max_points)
    data = {"sessionId": row.id, "totalRounds": rounds["total_rounds"], "downsampled": rounds["downsampled"],
            "rounds": rounds["rounds"], "latest": rounds["latest"], "slowestPeer": rounds["slowest_peer"],
            "peers": rounds["peers"]}
    return platform.sessions.shown_data(row, actor, data)
