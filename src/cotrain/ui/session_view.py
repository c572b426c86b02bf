"""What the Session-detail page shows, read from the server's services in one blocking call."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cotrain.chain.verdicts import round_outcomes
from cotrain.ui.context import platform
from cotrain.ui.machines_view import ROUND_LIMIT, SERIES_LIMIT

if TYPE_CHECKING:
    from cotrain.server.auth import Actor
    from cotrain.server.orm import TrainingSession

LOG_LINES = 60


@dataclass
class SessionView:
    row: TrainingSession
    history: list[dict[str, Any]]
    peers: list[dict[str, Any]]
    checkpoints: list[dict[str, Any]]
    logs: list[str]
    versions: list[dict[str, Any]] = field(default_factory=list)
    queue_position: int | None = None
    waiting_reason: str | None = None  # why a queued session has not started (no worker, too few GPUs, ...)
    # as this person may see them (no paths, hosts or tracebacks unless owner or admin)
    error: str | None = None
    config_toml: str = ""
    # issue 19: the nodes' stored samples (NODE dicts of the `system` blocks, oldest first) and the
    # DiLoCo sessions' `round` blocks, in the engine contract's shape (machines_view reads them)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    # peer id -> the rounds the session's validator verified (DiLoCo with a validator; empty otherwise)
    verified_rounds: dict[str, int] = field(default_factory=dict)


def load(session_id: str, actor: Actor | None) -> SessionView:
    """Raises the service's NotFound when the session does not exist or is not visible."""
    p = platform()
    service = p.sessions
    row = service.get(session_id, actor)
    history = p.metrics.history(session_id, 500)["points"]
    return SessionView(
        row=row, history=history,
        peers=service.participants(session_id, actor)["peers"], checkpoints=service.checkpoints(session_id, actor),
        logs=logs(session_id, actor), versions=p.models.versions(session_id, actor),
        queue_position=service.queue_position(session_id, actor) if row.status == "queued" else None,
        waiting_reason=service.waiting_reasons([row]).get(row.id),
        error=service.error_text(row, actor), config_toml=service.config_toml(session_id, actor),
        verified_rounds=verified_rounds(row), **machine_history(row, actor),
    )


def verified_rounds(row: TrainingSession) -> dict[str, int]:
    """Peer id -> its verified rounds, from the chain's verdicts (the session is visible: `load` checked)."""
    if row.strategy != "diloco":
        return {}
    with platform().chain.factory() as db:
        return {peer: view.verified_rounds for peer, view in round_outcomes(db, row.id).items()}


def machine_history(row: TrainingSession, actor: Actor | None) -> dict[str, list[dict[str, Any]]]:
    """The Machines and Rounds sections' stored history (the page then follows the live messages):
    each node's newest sample first (with its GPUs), then its points over time; the DiLoCo rounds.
    Scrubbed like GET /sessions/{id}/nodes and /rounds for everyone but the owner and admins."""
    p = platform()
    stored_nodes = p.metrics.nodes(row.id, SERIES_LIMIT)
    nodes = list(stored_nodes["latest"])
    for history in stored_nodes["history"]["nodes"]:
        nodes += [{**point, "node": history["node"]} for point in history["points"]]
    rounds: list[dict[str, Any]] = []
    if row.strategy == "diloco":
        stored = p.metrics.rounds(row.id, ROUND_LIMIT)
        rounds = stored["rounds"] + ([stored["latest"]] if stored["latest"] else [])
    return p.sessions.shown_data(row, actor, {"nodes": nodes, "rounds": rounds})


def logs(session_id: str, actor: Actor | None) -> list[str]:
    service = platform().sessions
    lines = service.log_tail(session_id, "stderr", LOG_LINES, actor)
    return lines or service.log_tail(session_id, "stdout", LOG_LINES, actor)


def peer_rows(peers: list[dict[str, Any]], now: float, verified: Mapping[str, int] | None = None
              ) -> list[dict[str, Any]]:
    """Peers as table rows with their share of the tokens processed and, when the session has verdicts
    (`verified`), their verified rounds (0 for a peer never verified; None without verdicts)."""
    total = sum(float(p.get("tokens") or 0) for p in peers)
    rows = []
    for peer in peers:
        tokens = float(peer.get("tokens") or 0)
        rows.append({
            "peer_id": str(peer.get("peer_id", "")),
            "tps": peer.get("tokens_per_second"),
            "step": peer.get("step"),
            "seen": peer.get("updated") or peer.get("time"),
            "share": (tokens / total) if total else None,
            "left": peer.get("event") == "left",
            "verified": verified.get(str(peer.get("peer_id", "")), 0) if verified else None,
        })
    return rows


def eta_seconds(samples: list[tuple[int, float]], total_steps: int | None) -> float | None:
    """Seconds left, from the pace of the recent (step, time) samples."""
    if not total_steps or len(samples) < 2:
        return None
    (s0, t0), (s1, t1) = samples[max(0, len(samples) - 20)], samples[-1]
    if s1 <= s0 or t1 <= t0:
        return None
    return (total_steps - s1) * (t1 - t0) / (s1 - s0)
