"""Engine `progress` events in the exact shape of the issue-19 contract (core/events.py: the `system`
block with one NODE per node, and DiLoCo's `round` block), for the server's tests, and a helper
that applies events to a real server's database through the monitor (server/monitor.py), the path
the executor takes for every event it reads from a run's events.jsonl."""

from __future__ import annotations

import time
from typing import Any

from cotrain.db import make_db_factory, make_engine
from cotrain.server.monitor import apply_engine_event
from cotrain.server.orm import TrainingSession

GIB = 1024**3


def node(name: str, at: float, *, gpus: int = 0, cpu: float = 40.0, sent: float = 1.5e6, recv: float = 2.5e6,
         read: float = 3.0e6, write: float = 4.0e6, tokens: float | None = 1000.0) -> dict[str, Any]:
    """One NODE; `gpus` devices listed, or no "gpus" key at all without a GPU (as the contract says)."""
    out: dict[str, Any] = {
        "node": name, "host_cpus": 16, "cpu_percent": cpu, "ram_used_bytes": 12 * GIB, "ram_total_bytes": 64 * GIB,
        "process_rss_bytes": 3 * GIB, "net_sent_bytes_per_s": sent, "net_recv_bytes_per_s": recv,
        "disk_read_bytes_per_s": read, "disk_write_bytes_per_s": write, "tokens_per_second": tokens, "time": at,
    }
    if gpus:
        out["gpus"] = [{"index": i, "name": "NVIDIA H200", "util_percent": 80.0 + i, "mem_used_bytes": 40 * GIB,
                        "mem_total_bytes": 141 * GIB, "power_w": 500.0, "temp_c": 60.0 + i} for i in range(gpus)]
    return out


def round_block(number: int, peers: list[tuple[str, float]], *, slowest: str | None = None, train: float = 8.0,
                averaging: float = 1.5, wait: float = 0.5) -> dict[str, Any]:
    return {"round": number, "round_seconds": train + averaging + wait, "train_seconds": train,
            "averaging_seconds": averaging, "wait_seconds": wait, "bytes_sent": 4_000_000, "bytes_received": 5_000_000,
            "group_size": len(peers), "slowest_peer": slowest,
            "peers": [{"peer": p, "train_seconds": s, "bytes_sent": 4_000_000, "bytes_received": 5_000_000}
                      for p, s in peers]}


def progress(step: int, nodes: list[dict[str, Any]], *, session_id: str = "s", seq: int = 0,
             at: float | None = None, round_: dict[str, Any] | None = None) -> dict[str, Any]:
    """A `progress` event with the seed's fields, plus `system` (and `round` when given)."""
    at = time.time() if at is None else at
    event: dict[str, Any] = {
        "type": "progress", "session_id": session_id, "seq": seq, "time": at, "step": step, "total_steps": 100,
        "progress": float(step), "loss": 5.0 - step / 100, "participants": len(nodes), "epoch": 0,
        "tokens_seen": step * 512,
        "metrics": {"accuracy": 0.1, "learning_rate": 0.001, "batch_size": 8, "tokens_per_second": 2000.0,
                    "samples_per_second": 4.0},
        "system": {"nodes": nodes},
    }
    if round_ is not None:
        event["round"] = round_
    return event


def apply_events(database_url: str, session_id: str, events: list[dict[str, Any]],
                 status: str | None = None) -> list[dict[str, Any]]:
    """Apply `events` (their seq numbered after the session's last) with the monitor, in one
    transaction, as the executor does; `status` also sets the row's status (and finished_at for a
    final one). Returns the messages the monitor made."""
    engine = make_engine(database_url)
    try:
        with make_db_factory(engine).begin() as db:
            row = db.get_one(TrainingSession, session_id)
            messages: list[dict[str, Any]] = []
            for event in events:
                event = {**event, "session_id": session_id, "seq": row.engine_seq + 1}
                messages += apply_engine_event(db, row, event)
            if status is not None:
                row.status = status
                if status in ("completed", "failed", "cancelled"):
                    row.finished_at = time.time()
            return messages
    finally:
        engine.dispose()
