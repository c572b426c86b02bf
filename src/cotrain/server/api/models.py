"""/api/v1/models: final model versions (v1, v2, ... per session), comparison, download."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, HTTPException, Query, status
from fastapi.responses import FileResponse
from pydantic import Field

from cotrain.server.api.deps import ID_PATTERN, OPTIONAL_AUTH, DbId, MaybeActor, PlatformDep
from cotrain.server.db import session_scope
from cotrain.server.model_service import (
    compare_versions,
    list_versions,
    local_files,
    version_out,
    zip_version,
)
from cotrain.server.models import ModelVersion
from cotrain.server.schemas import ERROR_RESPONSES, ModelVersionOut, iso

router = APIRouter(prefix="/models", tags=["models"], responses=ERROR_RESPONSES)


def list_versions_out(platform: Any, session_id: str | None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
    with session_scope(platform.factory) as db:
        return [version_out(v) for v in list_versions(db, session_id, limit, offset)]


def _out(v: dict[str, Any]) -> ModelVersionOut:
    return ModelVersionOut(**{**v, "created_at": iso(v["created_at"])})


def elsewhere(version: ModelVersion) -> str:
    return (
        f"Model v{version.version} of session {version.session_id} is on the disk of worker {version.worker_id} "
        f"({version.path}), not on this server's. Download it on that machine, or put COTRAIN_HOME on storage "
        "shared by the servers and their workers."
    )


@router.get("", response_model=list[ModelVersionOut], summary="Final model versions, optionally of one session", openapi_extra=OPTIONAL_AUTH)
def list_models(
    platform: PlatformDep, actor: MaybeActor,
    session: str | None = Query(None, pattern=ID_PATTERN, description="Only this session's versions."),
    limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0, le=10**9),
) -> list[ModelVersionOut]:
    if session:
        platform.sessions.get(session, actor)
    return [_out(v) for v in list_versions_out(platform, session, limit, offset)]


@router.get("/compare", summary="Compare two or more versions (val loss, perplexity, accuracy, params, tokens seen)")
def compare_models(
    platform: PlatformDep,
    ids: list[Annotated[int, Field(ge=1, le=2**31 - 1)]] = Query(..., min_length=2, max_length=50, description="Model version ids (repeat: ?ids=1&ids=2).")
) -> dict[str, Any]:
    with session_scope(platform.factory) as db:
        try:
            return compare_versions(db, ids)
        except LookupError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


@router.get("/{model_id}", response_model=ModelVersionOut)
def get_model(model_id: DbId, platform: PlatformDep) -> ModelVersionOut:
    with session_scope(platform.factory) as db:
        version = db.get(ModelVersion, model_id)
        if version is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"No model version {model_id}. List them with GET /api/v1/models.")
        return _out(version_out(version))


@router.get("/{model_id}/download", response_class=FileResponse, summary="The version's files as a zip",
            responses={200: {"content": {"application/zip": {}}}, 410: {"description": "The files are gone"},
                       409: {"description": "The files are on the disk of the worker that trained it, not this server's"}})
def download_model(model_id: DbId, platform: PlatformDep, background: BackgroundTasks) -> FileResponse:
    with session_scope(platform.factory) as db:
        version = db.get(ModelVersion, model_id)
        if version is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"No model version {model_id}. List them with GET /api/v1/models.")
        try:
            path = zip_version(version, local_files(version, platform.settings.layout, platform.settings.worker_id))
        except FileNotFoundError as exc:
            if version.worker_id and version.worker_id != platform.settings.worker_id:
                raise HTTPException(status.HTTP_409_CONFLICT, elsewhere(version)) from None
            raise HTTPException(status.HTTP_410_GONE, str(exc)) from None
        name = f"{version.session_id}-v{version.version}.zip"
    background.add_task(path.unlink, missing_ok=True)
    return FileResponse(path, media_type="application/zip", filename=name)
