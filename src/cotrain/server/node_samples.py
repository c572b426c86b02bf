"""Issue 19: the `system` and `round` blocks of the engine's `progress` events, cleaned and kept
per node and per DiLoCo round for charts and /metrics.

The blocks come from the engine, and a DiLoCo engine relays what volunteer peers put in their
records, so nothing is taken on trust: only the contract's keys survive (`clean_system`,
`clean_round`), numbers must be finite, and a node or peer id that is not a short plain token
becomes `node-<hash>` (ids end up in Prometheus labels and on the page). Storage stays bounded:
at most MAX_NODES_PER_SESSION nodes per session, and a node's rows are thinned once they pass
MAX_SAMPLES_PER_NODE (the newest half at full resolution, every second older row dropped), so a
long run keeps its whole shape in a fixed number of rows; rounds likewise.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from cotrain.server.orm import NodeSample, RoundPeerSample, RoundSample

MAX_SAMPLES_PER_NODE = 1000  # rows kept per (session, node) before thinning
MAX_NODES_PER_SESSION = 256  # nodes / peers stored per session; later newcomers are not stored
MAX_ROUNDS_PER_SESSION = 2000  # rounds kept per session before thinning
MAX_PEERS_PER_ROUND = 256
MAX_GPUS_PER_NODE = 64

NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
NODE_INTS = ("host_cpus", "ram_used_bytes", "ram_total_bytes", "process_rss_bytes")
NODE_FLOATS = ("cpu_percent", "net_sent_bytes_per_s", "net_recv_bytes_per_s", "disk_read_bytes_per_s",
               "disk_write_bytes_per_s", "tokens_per_second", "time")
GPU_INTS = ("index", "mem_used_bytes", "mem_total_bytes")
GPU_FLOATS = ("util_percent", "power_w", "temp_c")
ROUND_INTS = ("round", "bytes_sent", "bytes_received", "group_size")
ROUND_FLOATS = ("round_seconds", "train_seconds", "averaging_seconds", "wait_seconds")
PEER_INTS = ("bytes_sent", "bytes_received")
PEER_FLOATS = ("train_seconds",)


def node_id(value: Any) -> str | None:
    """`value` when it is a short plain token ("node-0", a peer id prefix); otherwise a stable
    `node-<hash>` standing for it; None when there is nothing."""
    if isinstance(value, bool) or value is None:
        return None
    text = str(value) if isinstance(value, int) else value
    if not isinstance(text, str) or not text:
        return None
    if NODE_ID.match(text):
        return text
    return "node-" + hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:10]


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    number = _float(value)
    return None if number is None else int(round(number))


def _numbers(raw: dict[str, Any], ints: tuple[str, ...], floats: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {key: _int(raw.get(key)) for key in ints if key in raw}
    out.update({key: _float(raw.get(key)) for key in floats if key in raw})
    return out


def clean_gpu(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict) or _int(raw.get("index")) is None:
        return None
    gpu = _numbers(raw, GPU_INTS, GPU_FLOATS)
    name = raw.get("name")
    gpu["name"] = name[:100] if isinstance(name, str) else ""
    return gpu


def clean_node(raw: Any) -> dict[str, Any] | None:
    """One NODE of the contract with only its keys; "gpus" only when the node has a GPU."""
    if not isinstance(raw, dict):
        return None
    name = node_id(raw.get("node"))
    if name is None:
        return None
    node: dict[str, Any] = {"node": name, **_numbers(raw, NODE_INTS, NODE_FLOATS)}
    gpus = raw.get("gpus")
    if isinstance(gpus, list):
        cleaned = [g for g in (clean_gpu(g) for g in gpus[:MAX_GPUS_PER_NODE]) if g is not None]
        if cleaned:
            node["gpus"] = cleaned
    return node


def clean_system(block: Any) -> dict[str, Any] | None:
    """The `system` block with its NODEs cleaned, or None when it holds none."""
    if not isinstance(block, dict) or not isinstance(block.get("nodes"), list):
        return None
    nodes: dict[str, dict[str, Any]] = {}
    for raw in block["nodes"][:MAX_NODES_PER_SESSION]:
        node = clean_node(raw)
        if node is not None:
            nodes[node["node"]] = node  # one per id: a repeated id keeps its last entry
    return {"nodes": list(nodes.values())} if nodes else None


def clean_round(block: Any) -> dict[str, Any] | None:
    """The DiLoCo `round` block with only the contract's keys, or None without a round number."""
    if not isinstance(block, dict) or _int(block.get("round")) is None:
        return None
    out = _numbers(block, ROUND_INTS, ROUND_FLOATS)
    out["slowest_peer"] = node_id(block.get("slowest_peer"))
    peers: dict[str, dict[str, Any]] = {}
    for raw in block.get("peers") or []:
        if isinstance(raw, dict) and (peer := node_id(raw.get("peer"))) is not None:
            peers[peer] = {"peer": peer, **_numbers(raw, PEER_INTS, PEER_FLOATS)}
        if len(peers) >= MAX_PEERS_PER_ROUND:
            break
    out["peers"] = list(peers.values())
    return out


# ---- storage -------------------------------------------------------------------------------------

def _gpu_summary(gpus: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Node-level GPU columns: mean utilisation, summed memory and power, the hottest device."""
    if not gpus:
        return {}

    def values(key: str) -> list[float]:
        return [g[key] for g in gpus if g.get(key) is not None]

    util, used, total, power, temp = (values(k) for k in ("util_percent", "mem_used_bytes", "mem_total_bytes",
                                                            "power_w", "temp_c"))
    return {
        "gpu_count": len(gpus),
        "gpu_util_percent": sum(util) / len(util) if util else None,
        "gpu_mem_used_bytes": int(sum(used)) if used else None,
        "gpu_mem_total_bytes": int(sum(total)) if total else None,
        "gpu_power_w": sum(power) if power else None,
        "gpu_temp_c": max(temp) if temp else None,
    }


def record_system(db: Session, session_id: str, step: int, time: float, system: dict[str, Any]) -> int:
    """Store one row per node of a cleaned `system` block; returns how many were stored."""
    counts = dict(db.execute(
        select(NodeSample.node, func.count()).where(NodeSample.session_id == session_id).group_by(NodeSample.node)
    ).all())
    stored = 0
    full: list[str] = []
    for node in system["nodes"]:
        name = node["node"]
        if name not in counts and len(counts) >= MAX_NODES_PER_SESSION:
            continue
        counts[name] = counts.get(name, 0) + 1
        fields = {k: node.get(k) for k in (*NODE_INTS, *NODE_FLOATS) if k != "time"}
        db.add(NodeSample(session_id=session_id, node=name, step=step, time=node.get("time") or time,
                          gpus=node.get("gpus"), **fields, **_gpu_summary(node.get("gpus"))))
        stored += 1
        if counts[name] > MAX_SAMPLES_PER_NODE:
            full.append(name)
    if full:
        db.flush()
        for name in full:
            _thin(db, NodeSample, (NodeSample.session_id == session_id, NodeSample.node == name),
                  (NodeSample.step, NodeSample.id), MAX_SAMPLES_PER_NODE)
    return stored


def _thin(db: Session, model: Any, where: tuple[Any, ...], order: tuple[Any, ...], cap: int) -> list[int]:
    """Drop every second row of the older part, keeping the first row and the newest cap/2 rows;
    returns the ids dropped."""
    ids = list(db.scalars(select(model.id).where(*where).order_by(*order)))
    older = ids[: len(ids) - cap // 2]
    gone = older[1::2]
    for start in range(0, len(gone), 500):
        db.execute(delete(model).where(model.id.in_(gone[start:start + 500])))
    return gone


def record_round(db: Session, session_id: str, step: int, time: float, block: dict[str, Any]) -> None:
    """Merge a cleaned `round` block into the round's row and its peers' rows: a later report of
    the same round updates the fields it carries; peers are merged by id."""
    number = block["round"]
    row = db.scalars(select(RoundSample).where(RoundSample.session_id == session_id,
                                               RoundSample.round == number)).one_or_none()
    new = row is None
    if row is None:
        row = RoundSample(session_id=session_id, round=number, time=time, step=step)
        db.add(row)
    row.time, row.step = time, max(step, row.step or 0)
    for key in (*ROUND_FLOATS, "bytes_sent", "bytes_received", "group_size", "slowest_peer"):
        if block.get(key) is not None:
            setattr(row, key, block[key])
    known = {p.peer: p for p in db.scalars(select(RoundPeerSample).where(
        RoundPeerSample.session_id == session_id, RoundPeerSample.round == number))}
    for peer in block["peers"]:
        entry = known.get(peer["peer"])
        if entry is None:
            if len(known) >= MAX_PEERS_PER_ROUND:
                continue
            entry = known[peer["peer"]] = RoundPeerSample(session_id=session_id, round=number, peer=peer["peer"])
            db.add(entry)
        for key in (*PEER_FLOATS, *PEER_INTS):
            if peer.get(key) is not None:
                setattr(entry, key, peer[key])
    if block.get("slowest_peer") is None:
        timed = [p for p in known.values() if p.train_seconds is not None]
        if len(timed) >= 2:  # nobody named the straggler: the peer that trained longest
            row.slowest_peer = max(timed, key=lambda p: p.train_seconds or 0.0).peer
    if new:
        db.flush()
        total = db.scalar(select(func.count()).select_from(RoundSample).where(RoundSample.session_id == session_id))
        if (total or 0) > MAX_ROUNDS_PER_SESSION:
            where = (RoundSample.session_id == session_id,)
            rounds = list(db.scalars(select(RoundSample.round).where(*where).order_by(RoundSample.round)))
            gone = rounds[: len(rounds) - MAX_ROUNDS_PER_SESSION // 2][1::2]
            for start in range(0, len(gone), 500):
                chunk = gone[start:start + 500]
                db.execute(delete(RoundPeerSample).where(RoundPeerSample.session_id == session_id,
                                                         RoundPeerSample.round.in_(chunk)))
                db.execute(delete(RoundSample).where(RoundSample.session_id == session_id,
                                                     RoundSample.round.in_(chunk)))


def record_event_blocks(db: Session, session_id: str, event: dict[str, Any], step: int) -> dict[str, Any]:
    """Store the `system` and `round` blocks of one engine event; returns the cleaned blocks
    (keys "system" and "round", each only when present) for the WebSocket message."""
    time = _float(event.get("time")) or 0.0
    out: dict[str, Any] = {}
    system = clean_system(event.get("system"))
    if system is not None:
        record_system(db, session_id, step, time, system)
        out["system"] = system
    block = clean_round(event.get("round"))
    if block is not None:
        record_round(db, session_id, step, time, block)
        out["round"] = block
    return out
