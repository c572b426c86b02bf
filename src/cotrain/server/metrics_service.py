"""Metric history for charts, downsampled in the database: the step range is cut into at most
`max_points` equal buckets and each bucket gives its mean, min and max (so spikes survive and a
million-step run still answers with a few hundred points).

`MetricsService` is what the API and the UI call (it owns its units of work); the functions take
an open `db` for callers that already hold one."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from cotrain.server.auth import Actor
from cotrain.server.node_metrics import session_metric_lines
from cotrain.server.orm import MetricPoint, TrainingSession

SERIES = ("loss", "accuracy", "learning_rate", "tokens_per_second", "participants", "val_loss", "val_perplexity",
          "val_accuracy")


def metric_history(db: Session, session_id: str, max_points: int = 500,
                   metrics: tuple[str, ...] = SERIES) -> dict[str, Any]:
    where = MetricPoint.session_id == session_id
    total, first, last = db.execute(
        select(func.count(MetricPoint.id), func.min(MetricPoint.step), func.max(MetricPoint.step)).where(where)
    ).one()
    if not total:
        return {"session_id": session_id, "total_points": 0, "downsampled": False, "points": []}
    if total <= max_points:
        rows = db.scalars(select(MetricPoint).where(where).order_by(MetricPoint.step, MetricPoint.id))
        points = [{"step": r.step, "time": r.time, **{m: getattr(r, m) for m in metrics}} for r in rows]
        return {"session_id": session_id, "total_points": total, "downsampled": False, "points": points}
    width = max(1, -(-(last - first + 1) // max_points))  # ceil division
    bucket = ((MetricPoint.step - first) // width).label("bucket")  # SQLAlchemy 2: `//` is integer division everywhere
    columns: list[Any] = [bucket, func.max(MetricPoint.step).label("step"), func.max(MetricPoint.time).label("time")]
    for m in metrics:
        col = getattr(MetricPoint, m)
        columns += [func.avg(col).label(m), func.min(col).label(f"{m}_min"), func.max(col).label(f"{m}_max")]
    buckets = db.execute(select(*columns).where(where).group_by(bucket).order_by(bucket)).mappings()
    points = [{k: v for k, v in row.items() if k != "bucket"} for row in buckets]
    return {"session_id": session_id, "total_points": total, "downsampled": True, "points": points}


# ---- issue 19: per-node system metrics and DiLoCo rounds (rows from server/node_samples.py) ------

NODE_SERIES = ("cpu_percent", "ram_used_bytes", "ram_total_bytes", "process_rss_bytes", "net_sent_bytes_per_s",
               "net_recv_bytes_per_s", "disk_read_bytes_per_s", "disk_write_bytes_per_s", "tokens_per_second",
               "gpu_util_percent", "gpu_mem_used_bytes", "gpu_mem_total_bytes", "gpu_power_w", "gpu_temp_c")
GPU_SERIES = tuple(m for m in NODE_SERIES if m.startswith("gpu_"))
ROUND_SERIES = ("round_seconds", "train_seconds", "averaging_seconds", "wait_seconds", "bytes_sent",
                "bytes_received", "group_size")
MAX_HISTORY_NODES = 64  # nodes whose history one call returns (the most recently seen)


def _plain(value: Any) -> Any:
    """PostgreSQL's avg/sum of integer columns are Decimals: plain numbers for JSON and charts."""
    from decimal import Decimal

    return float(value) if isinstance(value, Decimal) else value


def _natural(name: str) -> tuple[Any, ...]:
    """"node-2" before "node-10"."""
    import re

    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _node_out(row: Any) -> dict[str, Any]:
    out = {"node": row.node, "step": row.step, "time": row.time, "last_seen": row.time, "host_cpus": row.host_cpus,
           "cpu_percent": row.cpu_percent, "ram_used_bytes": row.ram_used_bytes,
           "ram_total_bytes": row.ram_total_bytes, "process_rss_bytes": row.process_rss_bytes,
           "net_sent_bytes_per_s": row.net_sent_bytes_per_s, "net_recv_bytes_per_s": row.net_recv_bytes_per_s,
           "disk_read_bytes_per_s": row.disk_read_bytes_per_s, "disk_write_bytes_per_s": row.disk_write_bytes_per_s,
           "tokens_per_second": row.tokens_per_second}
    if row.gpus:
        out["gpus"] = row.gpus
    return out


def latest_nodes(db: Session, session_id: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The newest sample of each node of a session, in node order ("node-0", "node-1", ... or peer
    ids): a list of the contract's NODE dicts (`node`, `host_cpus`, `cpu_percent`, `ram_used_bytes`,
    `ram_total_bytes`, `process_rss_bytes`, `net_sent_bytes_per_s`, `net_recv_bytes_per_s`,
    `disk_read_bytes_per_s`, `disk_write_bytes_per_s`, `tokens_per_second`, `time`, and `gpus` —
    [{index, name, util_percent, mem_used_bytes, mem_total_bytes, power_w, temp_c}] — only on a node
    with a GPU) plus `step` (the session's step of that sample) and `last_seen` (= `time`, unix s).
    `limit`: only the most recently seen nodes."""
    from cotrain.server.orm import NodeSample

    newest = (select(func.max(NodeSample.id)).where(NodeSample.session_id == session_id)
              .group_by(NodeSample.node))
    rows = list(db.scalars(select(NodeSample).where(NodeSample.id.in_(newest))))
    if limit is not None:
        rows = sorted(rows, key=lambda r: r.time, reverse=True)[:limit]
    return [_node_out(r) for r in sorted(rows, key=lambda r: _natural(r.node))]


def node_history(db: Session, session_id: str, max_points: int = 500, nodes: list[str] | None = None,
                 max_nodes: int = MAX_HISTORY_NODES) -> dict[str, Any]:
    """Each node's system metrics over time, for the Machines charts:

        {"session_id": str, "downsampled": bool,
         "nodes": [{"node": str, "total_points": int, "points": [POINT, ...]}, ...]}

    POINT = {"step", "time", and each of NODE_SERIES (cpu_percent, ram_used_bytes, ram_total_bytes,
    process_rss_bytes, net_sent_bytes_per_s, net_recv_bytes_per_s, disk_read_bytes_per_s,
    disk_write_bytes_per_s, tokens_per_second, gpu_util_percent (mean over the node's GPUs),
    gpu_mem_used_bytes, gpu_mem_total_bytes, gpu_power_w (sums), gpu_temp_c (hottest))}; the gpu_*
    keys are left out for a node that never reported a GPU. When a node has more than `max_points`
    samples, every node is downsampled the same way as `metric_history` (shared step buckets; each
    series gives its mean, plus `<name>_min` and `<name>_max`). `nodes`: only these; at most
    `max_nodes` nodes (the most recently seen) come back, in node order."""
    from cotrain.server.orm import NodeSample

    where = [NodeSample.session_id == session_id]
    if nodes is not None:
        where.append(NodeSample.node.in_(nodes))
    stats = db.execute(
        select(NodeSample.node, func.count(), func.min(NodeSample.step), func.max(NodeSample.step),
               func.max(NodeSample.time), func.max(NodeSample.gpu_count))
        .where(*where).group_by(NodeSample.node)
    ).all()
    stats = sorted(stats, key=lambda s: s[4] or 0.0, reverse=True)[:max_nodes]
    if not stats:
        return {"session_id": session_id, "downsampled": False, "nodes": []}
    chosen = [s[0] for s in stats]
    where.append(NodeSample.node.in_(chosen))
    totals = {s[0]: s[1] for s in stats}
    with_gpu = {s[0] for s in stats if s[5]}
    downsampled = max(totals.values()) > max_points
    by_node: dict[str, list[dict[str, Any]]] = {name: [] for name in chosen}
    if not downsampled:
        columns = [NodeSample.node, NodeSample.step, NodeSample.time, *(getattr(NodeSample, m) for m in NODE_SERIES)]
        for r in db.execute(select(*columns).where(*where).order_by(NodeSample.step, NodeSample.id)).mappings():
            by_node[r["node"]].append({k: v for k, v in r.items() if k != "node"})
    else:
        first, last = min(s[2] for s in stats), max(s[3] for s in stats)
        width = max(1, -(-(last - first + 1) // max_points))
        bucket = ((NodeSample.step - first) // width).label("bucket")
        columns = [NodeSample.node, bucket, func.max(NodeSample.step).label("step"),
                   func.max(NodeSample.time).label("time")]
        for m in NODE_SERIES:
            col = getattr(NodeSample, m)
            columns += [func.avg(col).label(m), func.min(col).label(f"{m}_min"), func.max(col).label(f"{m}_max")]
        rows = db.execute(select(*columns).where(*where).group_by(NodeSample.node, bucket)
                          .order_by(NodeSample.node, bucket)).mappings()
        for row in rows:
            by_node[row["node"]].append({k: _plain(v) for k, v in row.items() if k not in ("node", "bucket")})
    out = []
    for name in sorted(chosen, key=_natural):
        points = by_node[name]
        if name not in with_gpu:
            points = [{k: v for k, v in p.items() if not k.startswith("gpu_")} for p in points]
        out.append({"node": name, "total_points": totals[name], "points": points})
    return {"session_id": session_id, "downsampled": downsampled, "nodes": out}


def round_history(db: Session, session_id: str, max_points: int = 500) -> dict[str, Any]:
    """A DiLoCo session's rounds, for the stacked training / averaging / waiting chart:

        {"session_id": str, "total_rounds": int, "downsampled": bool,
         "rounds": [ROUND, ...],          # oldest first
         "latest": ROUND | None,          # the newest round, always whole (with its peers)
         "slowest_peer": str | None,      # the newest round's straggler
         "peers": [{"peer", "rounds", "train_seconds_mean", "bytes_sent", "bytes_received",
                    "slowest_rounds"}, ...]}   # per peer over the whole run, slowest first

    ROUND = {"round", "time", "step", "round_seconds", "train_seconds", "averaging_seconds",
    "wait_seconds", "bytes_sent", "bytes_received", "group_size", "slowest_peer", "peers":
    [{"peer", "train_seconds", "bytes_sent", "bytes_received"}]}. Past `max_points` rounds, rounds
    are bucketed (mean of each number, `<name>_max` too; no `peers` or `slowest_peer`)."""
    from cotrain.server.orm import RoundPeerSample, RoundSample

    where = RoundSample.session_id == session_id
    total, first, last_round = db.execute(
        select(func.count(RoundSample.id), func.min(RoundSample.round), func.max(RoundSample.round)).where(where)
    ).one()
    empty = {"session_id": session_id, "total_rounds": 0, "downsampled": False, "rounds": [], "latest": None,
             "slowest_peer": None, "peers": []}
    if not total:
        return empty
    peer_rows = db.scalars(select(RoundPeerSample).where(RoundPeerSample.session_id == session_id)
                           .order_by(RoundPeerSample.round, RoundPeerSample.peer))
    peers_of: dict[int, list[dict[str, Any]]] = {}
    for p in peer_rows:
        peers_of.setdefault(p.round, []).append({"peer": p.peer, "train_seconds": p.train_seconds,
                                                 "bytes_sent": p.bytes_sent, "bytes_received": p.bytes_received})

    def whole(r: Any) -> dict[str, Any]:
        return {"round": r.round, "time": r.time, "step": r.step, **{m: getattr(r, m) for m in ROUND_SERIES},
                "slowest_peer": r.slowest_peer, "peers": peers_of.get(r.round, [])}

    latest = whole(db.scalars(select(RoundSample).where(where, RoundSample.round == last_round)).one())
    downsampled = total > max_points
    if not downsampled:
        rounds = [whole(r) for r in db.scalars(select(RoundSample).where(where).order_by(RoundSample.round))]
    else:
        width = max(1, -(-(last_round - first + 1) // max_points))
        bucket = ((RoundSample.round - first) // width).label("bucket")
        columns: list[Any] = [bucket, func.max(RoundSample.round).label("round"),
                              func.max(RoundSample.time).label("time"), func.max(RoundSample.step).label("step")]
        for m in ROUND_SERIES:
            col = getattr(RoundSample, m)
            columns += [func.avg(col).label(m), func.max(col).label(f"{m}_max")]
        rows = db.execute(select(*columns).where(where).group_by(bucket).order_by(bucket)).mappings()
        rounds = [{k: _plain(v) for k, v in row.items() if k != "bucket"} for row in rows]
    slowest_counts = dict(db.execute(
        select(RoundSample.slowest_peer, func.count()).where(where, RoundSample.slowest_peer.is_not(None))
        .group_by(RoundSample.slowest_peer)
    ).all())
    summary = db.execute(
        select(RoundPeerSample.peer, func.count(), func.avg(RoundPeerSample.train_seconds),
               func.sum(RoundPeerSample.bytes_sent), func.sum(RoundPeerSample.bytes_received))
        .where(RoundPeerSample.session_id == session_id).group_by(RoundPeerSample.peer)
    ).all()
    peers = [{"peer": peer, "rounds": n, "train_seconds_mean": _plain(mean),
              "bytes_sent": None if sent is None else int(sent),
              "bytes_received": None if received is None else int(received),
              "slowest_rounds": slowest_counts.get(peer, 0)} for peer, n, mean, sent, received in summary]
    peers.sort(key=lambda p: (-(p["slowest_rounds"]), -(p["train_seconds_mean"] or 0.0), p["peer"]))
    return {"session_id": session_id, "total_rounds": total, "downsampled": downsampled, "rounds": rounds,
            "latest": latest, "slowest_peer": latest["slowest_peer"], "peers": peers}


class MetricsService:
    """The stored series of sessions, each read in its own unit of work. The read rule is the
    caller's: look the session up through `SessionService.get` first."""

    def __init__(self, factory: sessionmaker[Session]):
        self.factory = factory

    def history(self, session_id: str, max_points: int = 500) -> dict[str, Any]:
        """The training series (`metric_history`)."""
        with self.factory.begin() as db:
            return metric_history(db, session_id, max_points)

    def nodes(self, session_id: str, max_points: int = 500) -> dict[str, Any]:
        """`latest`: each node's newest sample (`latest_nodes`); `history`: their series (`node_history`)."""
        with self.factory.begin() as db:
            return {"latest": latest_nodes(db, session_id), "history": node_history(db, session_id, max_points)}

    def rounds(self, session_id: str, max_points: int = 500) -> dict[str, Any]:
        """A DiLoCo session's rounds (`round_history`)."""
        with self.factory.begin() as db:
            return round_history(db, session_id, max_points)

    def sessions_by_status(self) -> dict[str, int]:
        with self.factory.begin() as db:
            rows = db.execute(select(TrainingSession.status, func.count()).group_by(TrainingSession.status))
            return {status: count for status, count in rows.tuples()}

    def prometheus_session_lines(self, actor: Actor | None) -> list[str]:
        """The per-session, per-node and per-round series of the sessions `actor` may read (node_metrics.py)."""
        with self.factory.begin() as db:
            return session_metric_lines(db, actor)

    def database_answers(self) -> None:
        """Raises when the database does not answer (the health check)."""
        with self.factory.begin() as db:
            db.execute(text("SELECT 1"))
