"""Health and Prometheus metrics.

`/health/live`: 200 while the process serves requests (a liveness probe: restart when it fails).
`/health/ready`: 200 when every component works, else 503 naming the failed ones (a readiness
probe: send no traffic meanwhile). `/health`: each component's state (health.py), 503 when one
has failed; the top-level fields (`database`, `fanout`, `dht`, `executor`, `runs`) are kept.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from cotrain.server.api.deps import PlatformDep
from cotrain.server.auth import Actor
from cotrain.server.health import component_states, failed_sentence
from cotrain.server.orm import ALL_STATES
from cotrain.server.permissions import Action, permit
from cotrain.server.schemas import Envelope

router = APIRouter(tags=["system"])


NOT_READY: dict[int | str, dict[str, Any]] = {503: {"description": "A component failed; `detail` names it"}}


@router.get("/health", response_model=Envelope[dict[str, Any]], summary="The state of each component",
            dependencies=[Depends(permit(Action.STATUS_READ))], responses=NOT_READY)
def health(platform: PlatformDep) -> Any:
    states = component_states(platform)
    failed = failed_sentence(states)
    data = {
        "server": "ok" if failed is None else "degraded",
        "database": platform.engine.dialect.name,
        "fanout": platform.hub.state.kind,
        "dht": "running" if platform.dht.running else "stopped",
        "executor": "embedded" if platform.executor else "none (workers)",
        "runs": len(platform.executor.runs) if platform.executor else 0,
        "components": {name: state.as_json() for name, state in states.items()},
        "fanoutBackfills": platform.hub.state.backfills,
    }
    if failed is not None:
        return JSONResponse({"status": "unavailable", "detail": failed, "data": data}, status_code=503)
    return Envelope(data=data)


@router.get("/health/live", response_model=Envelope[dict[str, Any]], summary="Liveness: the process serves requests",
            dependencies=[Depends(permit(Action.STATUS_READ))])
async def health_live() -> Envelope[dict[str, Any]]:
    """Touches nothing but the event loop: a database or Redis outage is not a reason to restart."""
    return Envelope(data={"server": "ok"})


@router.get("/health/ready", response_model=Envelope[dict[str, Any]], responses=NOT_READY,
            summary="Readiness: every component works (503 names the failed ones)",
            dependencies=[Depends(permit(Action.STATUS_READ))])
def health_ready(platform: PlatformDep) -> Any:
    states = component_states(platform)
    failed = failed_sentence(states)
    components = {name: state.as_json() for name, state in states.items()}
    if failed is not None:
        names = [name for name, state in states.items() if not state.ok]
        return JSONResponse({"status": "unavailable", "detail": failed, "failed": names,
                             "data": {"components": components}}, status_code=503)
    return Envelope(data={"components": components})


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
