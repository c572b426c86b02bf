"""Model versions for the Models page, read through the server's model service (blocking: DB)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cotrain.server import signed_urls
from cotrain.server.session_service import SessionFilter
from cotrain.ui.context import platform

if TYPE_CHECKING:
    from cotrain.server.auth import Actor

VERSION_LIMIT = 1000


def versions(actor: Actor | None) -> list[dict[str, Any]]:
    """Every version of the sessions this person may see, newest first, with the session's name."""
    p = platform()
    sessions, _ = p.sessions.find(actor, SessionFilter(), limit=VERSION_LIMIT)
    names = {s.id: s.name for s in sessions}
    rows = []
    for v in p.models.versions(None, actor, limit=VERSION_LIMIT):
        if v["session_id"] not in names:
            continue
        metrics = v["metrics"] or {}
        rows.append({
            "id": v["id"], "session_id": v["session_id"], "session": names[v["session_id"]], "version": v["name"],
            "val_loss": metrics.get("val_loss"), "val_perplexity": metrics.get("val_perplexity"),
            "val_accuracy": metrics.get("val_accuracy"), "params": metrics.get("num_parameters"),
            "tokens": metrics.get("tokens_seen"), "created_at": v["created_at"],
            "download_url": download_url(v["id"], actor),
        })
    rows.sort(key=lambda r: r["created_at"], reverse=True)
    return rows


def download_url(model_id: int, actor: Actor | None) -> str:
    """The version's zip, as a link `signed_link` makes."""
    return signed_link(f"/api/v1/models/{model_id}/download", actor)


def signed_link(path: str, actor: Actor | None) -> str:
    """A short-lived link to `path` signed for `actor` (no token in the URL), or the plain path for
    anonymous visitors (who can only reach public sessions' files anyway)."""
    return signed_urls.sign(platform().url_secret, path, actor.token_id) if actor is not None else path


def compare(ids: list[int], actor: Actor | None) -> dict[str, Any]:
    """The server's side-by-side comparison (of versions `actor` may read) plus each compared
    session's loss history."""
    p = platform()
    result = p.models.compare(ids, actor)
    curves: dict[str, list[list[float]]] = {}
    for row in result["versions"]:
        if row["sessionId"] not in curves:
            points = p.metrics.history(row["sessionId"], 300)["points"]
            curves[row["sessionId"]] = [[pt["step"], pt["loss"]] for pt in points if pt.get("loss") is not None]
    result["curves"] = curves
    return result
