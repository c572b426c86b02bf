"""/api/v1/models: final model versions (v1, v2, ... per session), comparison, download.

The read rule and who sees a version's path are the model service's (model_service.ModelService)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, Query
from fastapi.responses import FileResponse
from pydantic import Field

from cotrain.server.api.deps import ID_PATTERN, OPTIONAL_AUTH, DbId, PlatformDep
from cotrain.server.auth import Actor
from cotrain.server.permissions import Action, permit
from cotrain.server.schemas import ERROR_RESPONSES, ModelVersionOut

router = APIRouter(prefix="/models", tags=["models"], responses=ERROR_RESPONSES)

Reader = Annotated[Actor | None, Depends(permit(Action.SESSION_READ))]
VersionIds = Annotated[list[Annotated[int, Field(ge=1, le=2**31 - 1)]],
                       Query(min_length=2, max_length=50, description="Model version ids (repeat: ?ids=1&ids=2).")]


@router.get("", response_model=list[ModelVersionOut], summary="Final model versions, optionally of one session",
            openapi_extra=OPTIONAL_AUTH)
def list_models(
    platform: PlatformDep, actor: Reader,
    session: str | None = Query(None, pattern=ID_PATTERN, description="Only this session's versions."),
    limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0, le=10**9),
) -> list[dict[str, Any]]:
    if session:
        platform.sessions.get(session, actor)
    return platform.models.versions(session, actor, limit, offset)


@router.get("/compare", summary="Compare two or more versions (val loss, perplexity, accuracy, params, tokens seen)",
            openapi_extra=OPTIONAL_AUTH)
def compare_models(platform: PlatformDep, actor: Reader, ids: VersionIds) -> dict[str, Any]:
    return platform.models.compare(ids, actor)


@router.get("/{model_id}", response_model=ModelVersionOut, openapi_extra=OPTIONAL_AUTH)
def get_model(model_id: DbId, platform: PlatformDep, actor: Reader) -> dict[str, Any]:
    return platform.models.get(model_id, actor)


@router.get("/{model_id}/download", response_class=FileResponse, summary="The version's files as a zip",
            openapi_extra=OPTIONAL_AUTH,
            responses={200: {"content": {"application/zip": {}}}, 410: {"description": "The files are gone"},
                       409: {"description": "The files are on the disk of the worker that trained it, "
                                            "not this server's"}})
def download_model(model_id: DbId, platform: PlatformDep, actor: Reader, background: BackgroundTasks) -> FileResponse:
    """With a bearer token, or through a signed link from the web UI (`?expires=&actor=&sig=`)."""
    path, name = platform.models.zip(model_id, actor)
    background.add_task(path.unlink, missing_ok=True)
    return FileResponse(path, media_type="application/zip", filename=name)
