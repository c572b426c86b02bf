"""/api/v1/audit: the audit log for admins, newest first, and a check of its hash chain."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool
from pydantic import Field

from cotrain.server.api.deps import PlatformDep
from cotrain.server.auth import Actor
from cotrain.server.permissions import Action, permit
from cotrain.server.schemas import ERROR_RESPONSES, OrEmpty, OutModel, Page, UnixTime

router = APIRouter(prefix="/audit", tags=["audit"], responses=ERROR_RESPONSES)

Auditor = Annotated[Actor, Depends(permit(Action.AUDIT_READ))]
NO_NUL = r"^[^\x00]*$"


class AuditEntryOut(OutModel):
    id: int
    time: UnixTime
    actor: str = Field(description='"token:ID", "wallet:0x...", "anonymous" or "system".')
    role: str
    action: str = Field(description='What was done: "session.create", "auth.sign_in", ... (or "METHOD /route").')
    target: str = Field(description="What it was done to: a session id, an address, a token id.")
    outcome: Literal["ok", "refused", "failed"] | str
    client_ip: str
    request_id: str = Field(description="The request's X-Request-ID.")
    detail: OrEmpty
    prev_hash: str
    entry_hash: str


class AuditVerifyOut(OutModel):
    ok: bool
    entries: int
    first_bad: int | None = Field(description="The id of the first entry that was changed, deleted or reordered.")
    problems: list[str]
    head: str = Field(description="The hash of the newest entry (anchor it elsewhere to detect a rewritten tail).")


def _seconds(when: datetime | None) -> float | None:
    """A time without a zone is UTC (the server's clock zone must not change what a filter means)."""
    if when is None:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


@router.get("", response_model=Page[AuditEntryOut], summary="The audit log, newest first (admin)")
async def list_audit(
    platform: PlatformDep,
    actor: Auditor,
    actor_: Annotated[str | None, Query(alias="actor", max_length=100, pattern=NO_NUL,
                                        description='Only this actor ("token:1", "wallet:0x...").')] = None,
    action: Annotated[str | None, Query(max_length=60, pattern=NO_NUL,
                                        description='Only this action; "session.*" for a prefix.')] = None,
    target: Annotated[str | None, Query(max_length=200, pattern=NO_NUL,
                                        description="Only this target (a session id, an address, ...).")] = None,
    outcome: Literal["ok", "refused", "failed"] | None = None,
    since: Annotated[datetime | None, Query(description="Only entries at or after this time (ISO 8601 or Unix "
                                                        "seconds).")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> Page[AuditEntryOut]:
    rows, total = await run_in_threadpool(
        platform.audit.query, actor=actor_, action=action, target=target, outcome=outcome,
        since=_seconds(since), limit=limit, offset=offset)
    items = [AuditEntryOut.model_validate(r) for r in rows]
    return Page[AuditEntryOut](items=items, total=total, limit=limit, offset=offset)


@router.get("/verify", response_model=AuditVerifyOut, summary="Check the audit log's hash chain (admin)")
async def verify_audit(platform: PlatformDep, actor: Auditor) -> AuditVerifyOut:
    return AuditVerifyOut.model_validate(await run_in_threadpool(platform.audit.verify))
