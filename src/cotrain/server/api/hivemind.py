"""The original design's hivemind endpoints, with their `{"status": "success", "data": ...}` envelopes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from cotrain.server.api.deps import OPTIONAL_AUTH, PlatformDep, SessionId
from cotrain.server.auth import Actor
from cotrain.server.permissions import Action, permit
from cotrain.server.schemas import ERROR_RESPONSES, Envelope, ErrorOut, SessionCreate

router = APIRouter(prefix="/hivemind", tags=["hivemind"], responses=ERROR_RESPONSES)

Operator = Annotated[Actor, Depends(permit(Action.DHT_OPERATE))]
Creator = Annotated[Actor, Depends(permit(Action.SESSION_CREATE))]
Reader = Annotated[Actor | None, Depends(permit(Action.SESSION_READ))]
StatusReader = Annotated[Actor | None, Depends(permit(Action.STATUS_READ))]


class DHTStatus(BaseModel):
    status: str = Field(description='"running" or "stopped"')
    peer_id: str | None
    connected_peers: int
    dht_size: int
    visible_addresses: list[str]
    started_at: float | None = None
    error: str | None = None


class Peer(BaseModel):
    peer_id: str
    addrs: list[str]


class ConnectRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    address: str = Field(..., min_length=8, max_length=500, pattern=r"^/[^\s\x00]*/p2p/[^/\s\x00]+$",
                         description="A full multiaddr with /p2p/<peer id>, e.g. /ip4/1.2.3.4/tcp/31337/p2p/Qm...")


class Connected(BaseModel):
    peer_id: str
    address: str


class TaskSubmitted(BaseModel):
    task_id: str
    session_id: str
    status: str


class TaskStatus(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    task_id: str = Field(validation_alias=AliasChoices("task_id", "id"))  # a session's id
    status: str
    progress: float
    step: int
    total_steps: int | None
    loss: float | None
    participants: int
    error: str | None


@router.post("/start", response_model=Envelope[DHTStatus], summary="Start the server's DHT node (idempotent)")
def start_dht(platform: PlatformDep, actor: Operator) -> Envelope[DHTStatus]:
    return Envelope(data=DHTStatus(**platform.dht.start()))


@router.get("/status", response_model=Envelope[DHTStatus])
def dht_status(platform: PlatformDep, actor: StatusReader) -> Envelope[DHTStatus]:
    return Envelope(data=DHTStatus(**platform.dht.status()))


@router.get("/peers", response_model=Envelope[list[Peer]])
def dht_peers(platform: PlatformDep, actor: StatusReader) -> Envelope[list[Peer]]:
    return Envelope(data=[Peer(**p) for p in platform.dht.peers()])


@router.post("/peers/connect", response_model=Envelope[Connected],
             responses={502: {"model": ErrorOut, "description": "The peer could not be reached"}})
def connect_peer(body: ConnectRequest, platform: PlatformDep, actor: Operator) -> Envelope[Connected]:
    if "/p2p/" not in body.address:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            [{"loc": ["body", "address"], "type": "value_error",
              "msg": "address must end with /p2p/<peer id>; copy a peer's full address from its `cotrain join` "
                     "output."}],
        )
    try:
        return Envelope(data=Connected(**platform.dht.connect(body.address)))
    except RuntimeError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except Exception as exc:
        raise HTTPException(
            status.HTTP_502_BAD_GATEWAY,
            f"Could not reach {body.address}: {exc}. Check the address and that the peer is up.",
        ) from None


@router.post("/train", response_model=Envelope[TaskSubmitted], status_code=status.HTTP_201_CREATED,
             summary="Submit a training task (a session; its id is the task id)")
def submit_task(body: SessionCreate, platform: PlatformDep, actor: Creator) -> Envelope[TaskSubmitted]:
    row = platform.sessions.create(body, actor)
    return Envelope(data=TaskSubmitted(task_id=row.id, session_id=row.id, status=row.status))


@router.get("/training/{task_id}", response_model=Envelope[TaskStatus], openapi_extra=OPTIONAL_AUTH)
def task_status(task_id: SessionId, platform: PlatformDep, actor: Reader) -> Envelope[TaskStatus]:
    row = platform.sessions.get(task_id, actor)
    shown = TaskStatus.model_validate(row).model_copy(update={"error": platform.sessions.error_text(row, actor)})
    return Envelope(data=shown)


