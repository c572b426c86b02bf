"""/api/v1/models: final model versions (v1, v2, ... per session), comparison, download.

A version is readable exactly when its session is (permissions.can_read_session): everyone else
gets 404, in listings too. Its path on disk is shown to the session's owner and admins only."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, HTTPException, Query, status
from fastapi.responses import FileResponse
from pydantic import Field
from sqlalchemy.orm import Session

from cotrain.server.api.deps import ID_PATTERN, OPTIONAL_AUTH, DbId, PlatformDep
from cotrain.server.auth import Actor
from cotrain.server.model_service import (
    compare_versions,
    list_versions,
    local_files,
    version_out,
    zip_version,
)
from cotrain.server.orm import ModelVersion, TrainingSession
from cotrain.server.permissions import Action, can_read_session, can_see_internals, permit
from cotrain.server.schemas import ERROR_RESPONSES, ModelVersionOut, iso

router = APIRouter(prefix="/models", tags=["models"], responses=ERROR_RESPONSES)

Reader = Annotated[Actor | None, Depends(permit(Action.SESSION_READ))]


def list_versions_out(platform: Any, session_id: str | None, limit: int = 100, offset: int = 0,
                      actor: Actor | None = None) -> list[dict[str, Any]]:
    """The versions `actor` may read (of one session, or of every readable session)."""
    with platform.factory.begin() as db:
        return [_shown(db, version_out(v), actor) for v in list_versions(db, session_id, limit, offset, actor)]


def _shown(db: Session, out: dict[str, Any], actor: Actor | None) -> dict[str, Any]:
    owner = db.scalar(TrainingSession.__table__.select().with_only_columns(TrainingSession.owner_id)
                      .where(TrainingSession.id == out["session_id"]))
    if not can_see_internals(actor, owner):
        out["path"] = None
    return out


def _readable_version(db: Session, model_id: int, actor: Actor | None) -> ModelVersion:
    version = db.get(ModelVersion, model_id)
    session = db.get(TrainingSession, version.session_id) if version is not None else None
    if version is None or session is None or not can_read_session(actor, session.owner_id, session.public):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"No model version {model_id}. List them with GET /api/v1/models.")
    return version


def _out(v: dict[str, Any]) -> ModelVersionOut:
    return ModelVersionOut(**{**v, "created_at": iso(v["created_at"])})


def elsewhere(version: ModelVersion, show_internals: bool) -> str:
    """Where the files are instead; which worker and path only for the owner and admins."""
    where = f"worker {version.worker_id} ({version.path})" if show_internals else "the worker that trained it"
    return (
        f"Model v{version.version} of session {version.session_id} is on the disk of {where}, not on this "
        "server's. Download it on that machine, or put COTRAIN_HOME on storage shared by the servers and "
        "their workers."
    )


@router.get("", response_model=list[ModelVersionOut], summary="Final model versions, optionally of one session", openapi_extra=OPTIONAL_AUTH)
def list_models(
    platform: PlatformDep, actor: Reader,
    session: str | None = Query(None, pattern=ID_PATTERN, description="Only this session's versions."),
    limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0, le=10**9),
) -> list[ModelVersionOut]:
    if session:
        platform.sessions.get(session, actor)
    return [_out(v) for v in list_versions_out(platform, session, limit, offset, actor)]


@router.get("/compare", summary="Compare two or more versions (val loss, perplexity, accuracy, params, tokens seen)",
            openapi_extra=OPTIONAL_AUTH)
def compare_models(
    platform: PlatformDep, actor: Reader,
    ids: list[Annotated[int, Field(ge=1, le=2**31 - 1)]] = Query(..., min_length=2, max_length=50, description="Model version ids (repeat: ?ids=1&ids=2).")
) -> dict[str, Any]:
    with platform.factory.begin() as db:
        for model_id in ids:
            _readable_version(db, model_id, actor)
        try:
            return compare_versions(db, ids)
        except LookupError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


@router.get("/{model_id}", response_model=ModelVersionOut, openapi_extra=OPTIONAL_AUTH)
def get_model(model_id: DbId, platform: PlatformDep, actor: Reader) -> ModelVersionOut:
    with platform.factory.begin() as db:
        return _out(_shown(db, version_out(_readable_version(db, model_id, actor)), actor))


@router.get("/{model_id}/download", response_class=FileResponse, summary="The version's files as a zip",
            openapi_extra=OPTIONAL_AUTH,
            responses={200: {"content": {"application/zip": {}}}, 410: {"description": "The files are gone"},
                       409: {"description": "The files are on the disk of the worker that trained it, not this server's"}})
def download_model(model_id: DbId, platform: PlatformDep, actor: Reader, background: BackgroundTasks) -> FileResponse:
    """With a bearer token, or through a signed link from the web UI (`?expires=&actor=&sig=`)."""
    with platform.factory.begin() as db:
        version = _readable_version(db, model_id, actor)
        owner = db.get(TrainingSession, version.session_id).owner_id  # type: ignore[union-attr]
        show_path = can_see_internals(actor, owner)
        try:
            path = zip_version(version, local_files(version, platform.settings.layout, platform.settings.worker_id))
        except FileNotFoundError as exc:
            if version.worker_id and version.worker_id != platform.settings.worker_id:
                raise HTTPException(status.HTTP_409_CONFLICT, elsewhere(version, show_path)) from None
            detail = str(exc) if show_path else f"The files of model v{version.version} are gone from this server."
            raise HTTPException(status.HTTP_410_GONE, detail) from None
        name = f"{version.session_id}-v{version.version}.zip"
    background.add_task(path.unlink, missing_ok=True)
    return FileResponse(path, media_type="application/zip", filename=name)
