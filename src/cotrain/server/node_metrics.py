"""Issue 19: the per-session, per-node and per-round series of `GET /metrics` (Prometheus).

Labels stay bounded. `session` is an id the server generates; `node` and `peer` are ids cleaned by
node_samples.node_id (short plain tokens, or `node-<hash>`); `gpu` is a device index; `phase` and
`direction` come from fixed sets. Only sessions that are starting, running or cancelling, or
finished within RECENT_FINISHED_S, are exported (at most MAX_SESSIONS, the newest), and at most
MAX_NODES nodes per session (the most recently seen) and MAX_PEERS round peers.

/metrics is open to anyone, so it follows the session read rule: an anonymous scrape (or a
member's) sees public sessions (and that member's own); private sessions of others never appear,
not even their ids. A Prometheus that scrapes with a maintainer's or admin's token
(`authorization: {credentials: ...}` in its scrape config) sees every session.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from cotrain.server.orm import ACTIVE_STATES, NodeSample, RoundPeerSample, RoundSample, TrainingSession
from cotrain.server.permissions import readable_sessions_clause

if TYPE_CHECKING:
    from cotrain.server.auth import Actor

RECENT_FINISHED_S = 600.0  # a finished session's last figures stay this long
MAX_SESSIONS = 50
MAX_NODES = 32  # per session
MAX_PEERS = 32  # round peers per session

# name -> (type, help, labels): everything this module may write, declared (the Grafana test and
# the README read it); each metric's HELP and TYPE are written even when it has no sample yet.
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "cotrain_session_step": ("gauge", "Step the session's training reached.", ("session",)),
    "cotrain_session_progress_percent": ("gauge", "Progress of the session, 0-100.", ("session",)),
    "cotrain_session_loss": ("gauge", "Latest training loss of the session.", ("session",)),
    "cotrain_session_tokens_per_second": ("gauge", "Tokens per second of the whole session.", ("session",)),
    "cotrain_session_participants": ("gauge", "Peers (DiLoCo) or processes training the session.", ("session",)),
    "cotrain_session_nodes": ("gauge", "Nodes or peers that reported system metrics.", ("session",)),
    "cotrain_node_last_seen_timestamp_seconds": ("gauge", "Unix time of the node's latest sample.",
                                                 ("session", "node")),
    "cotrain_node_host_cpus": ("gauge", "Logical CPUs of the node's host.", ("session", "node")),
    "cotrain_node_cpu_percent": ("gauge", "Host CPU utilisation of the node, 0-100.", ("session", "node")),
    "cotrain_node_ram_used_bytes": ("gauge", "Host memory in use on the node.", ("session", "node")),
    "cotrain_node_ram_total_bytes": ("gauge", "Host memory of the node.", ("session", "node")),
    "cotrain_node_process_rss_bytes": ("gauge", "Resident memory of the node's training processes.",
                                       ("session", "node")),
    "cotrain_node_net_sent_bytes_per_second": ("gauge", "Network bytes sent per second by the node's host.",
                                               ("session", "node")),
    "cotrain_node_net_received_bytes_per_second": ("gauge", "Network bytes received per second by the node's host.",
                                                   ("session", "node")),
    "cotrain_node_disk_read_bytes_per_second": ("gauge", "Disk bytes read per second on the node's host.",
                                                ("session", "node")),
    "cotrain_node_disk_write_bytes_per_second": ("gauge", "Disk bytes written per second on the node's host.",
                                                 ("session", "node")),
    "cotrain_node_tokens_per_second": ("gauge", "Tokens per second the node trains.", ("session", "node")),
    "cotrain_node_gpu_util_percent": ("gauge", "GPU utilisation, 0-100 (only nodes with a GPU).",
                                      ("session", "node", "gpu")),
    "cotrain_node_gpu_memory_used_bytes": ("gauge", "GPU memory in use.", ("session", "node", "gpu")),
    "cotrain_node_gpu_memory_total_bytes": ("gauge", "GPU memory.", ("session", "node", "gpu")),
    "cotrain_node_gpu_power_watts": ("gauge", "GPU power draw.", ("session", "node", "gpu")),
    "cotrain_node_gpu_temperature_celsius": ("gauge", "GPU temperature.", ("session", "node", "gpu")),
    "cotrain_round": ("gauge", "Latest DiLoCo outer round of the session.", ("session",)),
    "cotrain_round_seconds": ("gauge", "Wall time of the latest DiLoCo round.", ("session",)),
    "cotrain_round_phase_seconds": ("gauge", "The latest round's time by phase (train, averaging, wait).",
                                    ("session", "phase")),
    "cotrain_round_bytes": ("gauge", "Bytes the reporting peer sent or received in the latest round.",
                            ("session", "direction")),
    "cotrain_round_group_size": ("gauge", "Peers that averaged together in the latest round.", ("session",)),
    "cotrain_round_peer_train_seconds": ("gauge", "Each peer's training time in the latest round.",
                                         ("session", "peer")),
    "cotrain_round_peer_bytes": ("gauge", "Each peer's traffic in the latest round.", ("session", "peer", "direction")),
}
EXPORTED_METRIC_NAMES = frozenset(METRICS)

NODE_FIELDS = {  # metric -> NodeSample column
    "cotrain_node_host_cpus": "host_cpus",
    "cotrain_node_cpu_percent": "cpu_percent",
    "cotrain_node_ram_used_bytes": "ram_used_bytes",
    "cotrain_node_ram_total_bytes": "ram_total_bytes",
    "cotrain_node_process_rss_bytes": "process_rss_bytes",
    "cotrain_node_net_sent_bytes_per_second": "net_sent_bytes_per_s",
    "cotrain_node_net_received_bytes_per_second": "net_recv_bytes_per_s",
    "cotrain_node_disk_read_bytes_per_second": "disk_read_bytes_per_s",
    "cotrain_node_disk_write_bytes_per_second": "disk_write_bytes_per_s",
    "cotrain_node_tokens_per_second": "tokens_per_second",
}
GPU_FIELDS = {
    "cotrain_node_gpu_util_percent": "util_percent",
    "cotrain_node_gpu_memory_used_bytes": "mem_used_bytes",
    "cotrain_node_gpu_memory_total_bytes": "mem_total_bytes",
    "cotrain_node_gpu_power_watts": "power_w",
    "cotrain_node_gpu_temperature_celsius": "temp_c",
}
PHASES = (("train", "train_seconds"), ("averaging", "averaging_seconds"), ("wait", "wait_seconds"))


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, int) and not isinstance(value, bool) else repr(float(value))


class _Lines:
    """Samples grouped by metric, so each metric's HELP/TYPE comes once, before its samples."""

    def __init__(self) -> None:
        self.samples: dict[str, list[str]] = {name: [] for name in METRICS}

    def add(self, name: str, value: Any, **labels: Any) -> None:
        if value is None or (isinstance(value, float) and value != value):
            return
        assert tuple(labels) == METRICS[name][2], (name, labels)
        rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        self.samples[name].append(f"{name}{{{rendered}}} {_number(value)}")

    def render(self) -> list[str]:
        out: list[str] = []
        for name, (kind, help_text, _) in METRICS.items():
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *self.samples[name]]
        return out


def exported_sessions(db: Session, actor: Actor | None, now: float | None = None) -> list[TrainingSession]:
    """The sessions /metrics labels for `actor`: active or recently finished, readable by it."""
    now = time.time() if now is None else now
    query = select(TrainingSession).where(or_(
        TrainingSession.status.in_(ACTIVE_STATES), TrainingSession.finished_at >= now - RECENT_FINISHED_S))
    readable = readable_sessions_clause(actor, TrainingSession.owner_id, TrainingSession.public)
    if readable is not None:
        query = query.where(readable)
    order = func.coalesce(TrainingSession.started_at, TrainingSession.created_at).desc()
    return list(db.scalars(query.order_by(order, TrainingSession.id).limit(MAX_SESSIONS)))


def session_metric_lines(db: Session, actor: Actor | None, now: float | None = None) -> list[str]:
    """Prometheus text lines (HELP, TYPE, samples) of every series in METRICS."""
    lines = _Lines()
    sessions = exported_sessions(db, actor, now)
    ids = [s.id for s in sessions]
    for s in sessions:
        metrics = s.latest_metrics or {}
        lines.add("cotrain_session_step", s.step, session=s.id)
        lines.add("cotrain_session_progress_percent", s.progress, session=s.id)
        lines.add("cotrain_session_loss", _finite(s.loss), session=s.id)
        lines.add("cotrain_session_tokens_per_second", _finite(metrics.get("tokens_per_second")), session=s.id)
        lines.add("cotrain_session_participants", s.participants, session=s.id)
    if not ids:
        return lines.render()
    newest = select(func.max(NodeSample.id)).where(NodeSample.session_id.in_(ids)).group_by(
        NodeSample.session_id, NodeSample.node)
    by_session: dict[str, list[NodeSample]] = {}
    for row in db.scalars(select(NodeSample).where(NodeSample.id.in_(newest))):
        by_session.setdefault(row.session_id, []).append(row)
    for sid in ids:
        rows = sorted(by_session.get(sid, []), key=lambda r: (-r.time, r.node))[:MAX_NODES]
        if sid in by_session:
            lines.add("cotrain_session_nodes", len(by_session[sid]), session=sid)
        for row in sorted(rows, key=lambda r: r.node):
            lines.add("cotrain_node_last_seen_timestamp_seconds", row.time, session=sid, node=row.node)
            for name, column in NODE_FIELDS.items():
                lines.add(name, getattr(row, column), session=sid, node=row.node)
            for gpu in row.gpus or []:
                for name, key in GPU_FIELDS.items():
                    lines.add(name, gpu.get(key), session=sid, node=row.node, gpu=gpu.get("index"))
    latest_round = select(RoundSample.session_id, func.max(RoundSample.round).label("round")).where(
        RoundSample.session_id.in_(ids)).group_by(RoundSample.session_id).subquery()
    rounds = db.scalars(select(RoundSample).join(latest_round, (RoundSample.session_id == latest_round.c.session_id)
                                                 & (RoundSample.round == latest_round.c.round)))
    for r in rounds:
        lines.add("cotrain_round", r.round, session=r.session_id)
        lines.add("cotrain_round_seconds", r.round_seconds, session=r.session_id)
        for phase, column in PHASES:
            lines.add("cotrain_round_phase_seconds", getattr(r, column), session=r.session_id, phase=phase)
        lines.add("cotrain_round_bytes", r.bytes_sent, session=r.session_id, direction="sent")
        lines.add("cotrain_round_bytes", r.bytes_received, session=r.session_id, direction="received")
        lines.add("cotrain_round_group_size", r.group_size, session=r.session_id)
        peers = db.scalars(select(RoundPeerSample).where(RoundPeerSample.session_id == r.session_id,
                                                         RoundPeerSample.round == r.round)
                           .order_by(func.coalesce(RoundPeerSample.train_seconds, -1.0).desc(), RoundPeerSample.peer)
                           .limit(MAX_PEERS))  # the slowest peers, when there are more
        for p in peers:
            lines.add("cotrain_round_peer_train_seconds", p.train_seconds, session=r.session_id, peer=p.peer)
            lines.add("cotrain_round_peer_bytes", p.bytes_sent, session=r.session_id, peer=p.peer, direction="sent")
            lines.add("cotrain_round_peer_bytes", p.bytes_received, session=r.session_id, peer=p.peer,
                      direction="received")
    return lines.render()


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if value == value and value not in (float("inf"), float("-inf")) else None
