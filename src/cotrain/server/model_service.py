"""Final model versions: each completed run of a session snapshots the engine's export
(`models/final/<session>/`) as the next version `models/final/<session>.v<N>/`, with its metrics.

`ModelService` is what the API and the UI call. A version is readable exactly when its session is
(permissions.can_read_session): everyone else gets 404, in listings too. Its path on disk is shown
to the session's owner and admins only."""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from cotrain.paths import Layout
from cotrain.server.auth import Actor
from cotrain.server.errors import Conflict, NotFound, ServiceError
from cotrain.server.orm import ModelVersion, TrainingSession
from cotrain.server.permissions import can_read_session, can_see_internals, readable_sessions_clause

COMPARED = ("val_loss", "val_perplexity", "val_accuracy", "num_parameters", "tokens_seen")


def register_model_version(
    db: Session, layout: Layout, row: TrainingSession, worker_id: str | None = None
) -> ModelVersion | None:
    """Snapshot the session's exported model as its next version (on the disk of `worker_id`, the
    executor that ran it); None when the run exported nothing."""
    source = layout.final_models / row.id
    if not source.is_dir():
        return None
    number = (db.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.session_id == row.id)) or 0) + 1
    target = layout.final_models / f"{row.id}.v{number}"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    metrics: dict[str, Any] = {}
    metrics_file = target / "metrics.json"
    if metrics_file.exists():
        metrics = json.loads(metrics_file.read_text())
    version = ModelVersion(session_id=row.id, version=number, path=str(target), metrics=metrics, worker_id=worker_id)
    db.add(version)
    db.flush()
    return version


def version_out(version: ModelVersion) -> dict[str, Any]:
    return {
        "id": version.id,
        "session_id": version.session_id,
        "version": version.version,
        "name": f"v{version.version}",
        "path": version.path,
        "metrics": version.metrics or {},
        "created_at": version.created_at,
    }


def list_versions(db: Session, session_id: str | None = None, limit: int = 100, offset: int = 0,
                  actor: Actor | None = None) -> list[ModelVersion]:
    """Versions of the sessions `actor` may read (permissions.can_read_session)."""
    query = select(ModelVersion).order_by(ModelVersion.session_id, ModelVersion.version)
    visible = readable_sessions_clause(actor, TrainingSession.owner_id, TrainingSession.public)
    if visible is not None:
        query = query.join(TrainingSession, TrainingSession.id == ModelVersion.session_id).where(visible)
    if session_id:
        query = query.where(ModelVersion.session_id == session_id)
    return list(db.scalars(query.limit(limit).offset(offset)))


def compare_versions(db: Session, ids: list[int]) -> dict[str, Any]:
    """The compared metrics side by side, plus which version is best on each."""
    versions = [db.get(ModelVersion, i) for i in ids]
    missing = [i for i, v in zip(ids, versions, strict=True) if v is None]
    if missing:
        raise LookupError(f"no model version with id {', '.join(map(str, missing))}; "
                          "list them with GET /api/v1/models")
    rows: list[dict[str, Any]] = [
        {"id": v.id, "sessionId": v.session_id, "version": f"v{v.version}",
         **{k: (v.metrics or {}).get(k) for k in COMPARED}}
        for v in versions if v is not None
    ]
    best: dict[str, int | None] = {}
    for key, better in (("val_loss", min), ("val_perplexity", min), ("val_accuracy", max)):
        scored = [r for r in rows if r[key] is not None]
        best[key] = better(scored, key=lambda r: r[key])["id"] if scored else None
    return {"versions": rows, "best": best}


def local_files(version: ModelVersion, layout: Layout, worker_id: str) -> Path:
    """Where this machine finds the version's files. `version.path` is a path on the disk of the
    worker that made it; another machine reads them only through a COTRAIN_HOME on shared storage
    (mounted anywhere), so there the same name under its own models/final/ is what counts."""
    if version.worker_id is None or version.worker_id == worker_id:
        return Path(version.path)
    return layout.final_models / Path(version.path).name


def zip_version(version: ModelVersion, source: Path | None = None) -> Path:
    """A zip of the version's directory (`source`, default its recorded path) in a temp file
    (the caller deletes it)."""
    source = source or Path(version.path)
    if not source.is_dir():
        raise FileNotFoundError(f"the files of model v{version.version} are gone from {source}")
    fd, name = tempfile.mkstemp(suffix=".zip")
    with open(fd, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                zf.write(path, f"{version.session_id}-v{version.version}/{path.relative_to(source)}")
    return Path(name)


class FilesGone(ServiceError):
    status_code = 410


def elsewhere(version: ModelVersion, show_internals: bool) -> str:
    """Where the files are instead; which worker and path only for the owner and admins."""
    where = f"worker {version.worker_id} ({version.path})" if show_internals else "the worker that trained it"
    return (
        f"Model v{version.version} of session {version.session_id} is on the disk of {where}, not on this "
        "server's. Download it on that machine, or put COTRAIN_HOME on storage shared by the servers and "
        "their workers."
    )


class ModelService:
    """The versions a reader may see, their comparison and their files as a zip on this machine
    (`worker_id`: which files are this machine's own, see `local_files`)."""

    def __init__(self, factory: sessionmaker[Session], layout: Layout, worker_id: str):
        self.factory = factory
        self.layout = layout
        self.worker_id = worker_id

    def versions(self, session_id: str | None, actor: Actor | None, limit: int = 100,
                 offset: int = 0) -> list[dict[str, Any]]:
        """The versions `actor` may read (of one session, or of every readable session), as `version_out`."""
        with self.factory.begin() as db:
            return [self._shown(db, v, actor) for v in list_versions(db, session_id, limit, offset, actor)]

    def get(self, model_id: int, actor: Actor | None) -> dict[str, Any]:
        with self.factory.begin() as db:
            return self._shown(db, self._readable(db, model_id, actor), actor)

    def compare(self, ids: list[int], actor: Actor | None) -> dict[str, Any]:
        """`compare_versions` of versions `actor` may read (404 for the first one it may not)."""
        with self.factory.begin() as db:
            for model_id in ids:
                self._readable(db, model_id, actor)
            try:
                return compare_versions(db, ids)
            except LookupError as exc:
                raise NotFound(str(exc)) from None

    def zip(self, model_id: int, actor: Actor | None) -> tuple[Path, str]:
        """The version's files as a temporary zip (the caller deletes it) and its download name.
        409 when they are on another worker's disk, 410 when they are gone."""
        with self.factory.begin() as db:
            version = self._readable(db, model_id, actor)
            show_path = can_see_internals(actor, self._owner(db, version.session_id))
        try:
            path = zip_version(version, local_files(version, self.layout, self.worker_id))
        except FileNotFoundError as exc:
            if version.worker_id and version.worker_id != self.worker_id:
                raise Conflict(elsewhere(version, show_path)) from None
            detail = str(exc) if show_path else f"The files of model v{version.version} are gone from this server."
            raise FilesGone(detail) from None
        return path, f"{version.session_id}-v{version.version}.zip"

    def _shown(self, db: Session, version: ModelVersion, actor: Actor | None) -> dict[str, Any]:
        out = version_out(version)
        if not can_see_internals(actor, self._owner(db, version.session_id)):
            out["path"] = None
        return out

    @staticmethod
    def _owner(db: Session, session_id: str) -> int | None:
        return db.scalar(select(TrainingSession.owner_id).where(TrainingSession.id == session_id))

    @staticmethod
    def _readable(db: Session, model_id: int, actor: Actor | None) -> ModelVersion:
        version = db.get(ModelVersion, model_id)
        session = db.get(TrainingSession, version.session_id) if version is not None else None
        if version is None or session is None or not can_read_session(actor, session.owner_id, session.public):
            raise NotFound(f"No model version {model_id}. List them with GET /api/v1/models.")
        return version
