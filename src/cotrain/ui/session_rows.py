"""Session rows for the list page: the service's sessions as plain dicts the table shows."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from cotrain.server.session_service import SessionFilter
from cotrain.ui import format as fmt
from cotrain.ui.components.badges import status_label
from cotrain.ui.context import platform
from cotrain.ui.theme import STATUS_COLORS

if TYPE_CHECKING:
    from cotrain.server.auth import Actor
    from cotrain.server.orm import TrainingSession

STAT_STATES = ("running", "queued", "completed")
LIST_LIMIT = 500


def to_row(row: TrainingSession, owners: dict[int, str], now: float) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "status": row.status,
        "status_label": status_label(row.status),
        "status_color": STATUS_COLORS.get(row.status, "grey-6"),
        "model": f"{row.model_type} · {row.model_size}",
        "strategy": row.strategy,
        "progress": round(row.progress or 0.0, 1),
        "loss": fmt.metric(row.loss),
        "participants": row.participants,
        "owner": owners.get(row.owner_id, "—") if row.owner_id is not None else "—",
        "age": fmt.age(row.created_at, now),
        "created_at": row.created_at,
    }


def load(actor: Actor | None, search: str | None, status: str | None, strategy: str | None = None) -> dict[str, Any]:
    """Sessions matching the filters, owner names, and the totals per state for the stat tiles
    (blocking: DB; turn them into rows with `to_row` on the page, where the language is known)."""
    service = platform().sessions
    wanted = SessionFilter(status=status or None, strategy=strategy or None, search=search or None)
    rows, total = service.find(actor, wanted, limit=LIST_LIMIT)
    stats = {"total": service.count(actor, SessionFilter())}
    for state in STAT_STATES:
        stats[state] = service.count(actor, SessionFilter(status=state))
    return {"sessions": rows, "owners": platform().tokens.names(), "total": total, "stats": stats}


def rows_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    now = time.time()
    return [to_row(r, data["owners"], now) for r in data["sessions"]]
