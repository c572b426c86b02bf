"""Health and Prometheus metrics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse

from cotrain.server.api.deps import PlatformDep
from cotrain.server.auth import Actor
from cotrain.server.orm import ALL_STATES
from cotrain.server.permissions import Action, permit
from cotrain.server.schemas import Envelope

router = APIRouter(tags=["system"])


@router.get("/health", response_model=Envelope[dict[str, Any]], summary="Liveness and the state of each component",
            dependencies=[Depends(permit(Action.STATUS_READ))])
def health(platform: PlatformDep) -> Envelope[dict[str, Any]]:
    platform.metrics.database_answers()
    return Envelope(
        data={
            "server": "ok",
            "database": platform.engine.dialect.name,
            "fanout": "redis" if platform.settings.redis_url else "in-process",
            "dht": "running" if platform.dht.running else "stopped",
            "executor": "embedded" if platform.executor else "none (workers)",
            "runs": len(platform.executor.runs) if platform.executor else 0,
        }
    )


def prometheus_text(platform: Any, http_metrics: Any = None, actor: Actor | None = None) -> str:
    """The server's metrics; the per-session, per-node and per-round series (node_metrics.py, issue
    19) cover the sessions `actor` may read (anonymous scrapes: public sessions only)."""
    counts = platform.metrics.sessions_by_status()
    session_lines = platform.metrics.prometheus_session_lines(actor)
    hub = platform.hub
    lines = [
        "# HELP cotrain_sessions Training sessions by status.",
        "# TYPE cotrain_sessions gauge",
        *(f'cotrain_sessions{{status="{s}"}} {counts.get(s, 0)}' for s in ALL_STATES),
        "# HELP cotrain_ws_subscribers WebSocket connections on this replica.",
        "# TYPE cotrain_ws_subscribers gauge",
        f"cotrain_ws_subscribers {len(hub.subscribers)}",
        "# HELP cotrain_messages_published_total Messages this replica published.",
        "# TYPE cotrain_messages_published_total counter",
        f"cotrain_messages_published_total {hub.published}",
        "# HELP cotrain_messages_delivered_total Messages queued to WebSocket clients on this replica.",
        "# TYPE cotrain_messages_delivered_total counter",
        f"cotrain_messages_delivered_total {hub.delivered}",
        "# HELP cotrain_runs Training processes this replica's executor follows.",
        "# TYPE cotrain_runs gauge",
        f"cotrain_runs {len(platform.executor.runs) if platform.executor else 0}",
        "# HELP cotrain_dht_up 1 when the server's DHT node runs.",
        "# TYPE cotrain_dht_up gauge",
        f"cotrain_dht_up {int(platform.dht.running)}",
        *(http_metrics.prometheus_lines() if http_metrics is not None else []),
        *session_lines,
    ]
    return "\n".join(lines) + "\n"


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics",
            responses={200: {"content": {"text/plain; version=0.0.4": {}}}})
def metrics(platform: PlatformDep, request: Request,
            actor: Annotated[Actor | None, Depends(permit(Action.STATUS_READ))]) -> PlainTextResponse:
    """Public; per-session series only for sessions the caller may read (scrape with a maintainer's
    or admin's token to include private ones)."""
    text = prometheus_text(platform, getattr(request.app.state, "http_metrics", None), actor)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
