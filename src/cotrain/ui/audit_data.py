"""The audit log for the UI: the Audit page's rows and chain check, and `record` for actions taken
in the UI (they call the services directly, so the API's audit middleware never sees them)."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from cotrain.server.audit import ANONYMOUS, AuditLog, Outcome
from cotrain.ui.context import platform

if TYPE_CHECKING:
    from cotrain.server.auth import Actor

LIST_LIMIT = 500  # the page shows the newest this many entries that match its filters
SINCE_S = {"1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400}


def _log() -> AuditLog:
    return platform().audit


def load(actor: str | None, action: str | None, target: str | None, outcome: str | None,
         since: str | None) -> dict[str, Any]:
    """Entries matching the filters, newest first, as plain dicts (blocking: DB)."""
    start = time.time() - SINCE_S[since] if since in SINCE_S else None
    rows, total = _log().query(actor=actor or None, action=action or None, target=target or None,
                               outcome=outcome or None, since=start, limit=LIST_LIMIT)
    return {"total": total, "rows": [
        {"id": r.id, "time": r.time, "actor": r.actor, "role": r.role, "action": r.action, "target": r.target,
         "outcome": r.outcome, "client_ip": r.client_ip, "request_id": r.request_id, "detail": r.detail or {}}
        for r in rows]}


def verify() -> dict[str, Any]:
    report = _log().verify()
    return {"ok": report.ok, "entries": report.entries, "first_bad": report.first_bad,
            "problems": report.problems, "head": report.head}


def record(actor: Actor | None, action: str, target: str = "", outcome: str = Outcome.OK, client_ip: str = "",
           detail: dict[str, Any] | None = None) -> None:
    """Record an action taken in the UI (blocking: DB; never raises). Its request id starts with "ui-"."""
    _log().record_safely(action, actor=actor.label if actor else ANONYMOUS,
                         role=actor.role.value if actor else ANONYMOUS, target=target, outcome=outcome,
                         client_ip=client_ip, request_id="ui-" + uuid.uuid4().hex[:16],
                         detail={"via": "ui", **(detail or {})})


def client_ip() -> str:
    """The browser's address as the server saw it (call on the page, not in a thread)."""
    from nicegui import ui

    try:
        request = ui.context.client.request
        return request.client.host if request is not None and request.client is not None else ""
    except Exception:
        return ""


def audited(actor: Actor | None, action: str, target: str, ip: str, fn: Any, *args: Any) -> Any:
    """`fn(*args)` (a service call a page makes for `actor`), recorded as `action` whatever its outcome;
    the target defaults to the id of what it returns (blocking: run it with `run.io_bound`)."""
    from cotrain.server.permissions import PermissionDenied

    try:
        result = fn(*args)
    except Exception as exc:
        status = getattr(exc, "status_code", None)
        refused = isinstance(exc, PermissionDenied) or status in (401, 403, 404, 429)
        record(actor, action, target, Outcome.REFUSED if refused else Outcome.FAILED, ip,
               {"reason": str(exc)[:300], **({"httpStatus": status} if status else {})})
        raise
    record(actor, action, target or str(getattr(result, "id", "") or ""), Outcome.OK, ip)
    return result
