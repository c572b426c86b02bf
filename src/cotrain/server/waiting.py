"""Why a queued session waits, in a sentence for the user: no worker is running, none has the
GPUs it asks for, it waits out a retry backoff, or every worker that fits it is busy.

Worked out when asked, from the `workers` rows every executor keeps fresh (its GPUs and a
heartbeat), so it is one answer for the whole fleet and never stale; the executors share the
database, so `cotrain worker`s on other machines count like the embedded one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from cotrain.server.models import QUEUED, TrainingSession, Worker


def gpus_per_node(row: TrainingSession) -> int:
    return int((row.request.get("distributedConfig") or {}).get("gpusPerNode") or 1)


def live_workers(db: Session, heartbeat_timeout_s: float) -> list[Worker]:
    return list(db.scalars(select(Worker).where(Worker.heartbeat_at >= time.time() - heartbeat_timeout_s)))


def can_ever_run(worker: Worker, gpus: int) -> bool:
    """A worker without GPUs trains on CPU, whatever the session asks; one with GPUs gives each of
    its runs whole GPUs (see scheduler.ResourcePool)."""
    return worker.gpus == 0 or gpus <= worker.gpus


def waiting_reasons(db: Session, rows: Iterable[TrainingSession], heartbeat_timeout_s: float) -> dict[str, str]:
    """`{session id: why it waits}` for the queued sessions among `rows`."""
    queued = [row for row in rows if row.status == QUEUED]
    if not queued:
        return {}
    workers = live_workers(db, heartbeat_timeout_s)
    return {row.id: waiting_reason(row, workers) for row in queued}


def waiting_reason(row: TrainingSession, workers: list[Worker], now: float | None = None) -> str:
    now = time.time() if now is None else now
    if not workers:
        return (
            "Waiting: no worker is running. Start `cotrain up` with its embedded worker, or a `cotrain worker` "
            "pointed at this database."
        )
    need = gpus_per_node(row)
    if not any(can_ever_run(w, need) for w in workers):
        largest = max(workers, key=lambda w: (w.gpus, w.id))
        return (
            f"Waiting: needs {need} GPUs per node; the largest worker ({largest.id}) has {largest.gpus}. "
            f"Lower gpusPerNode to {largest.gpus} or fewer, or start a `cotrain worker` on a machine with {need} GPUs."
        )
    if row.next_attempt_at > now:
        return f"Waiting {row.next_attempt_at - now:.0f} s before retrying (see error)."
    fitting = sum(1 for w in workers if can_ever_run(w, need))
    return f"Waiting for a free slot on {'the' if fitting == 1 else 'one of the'} {fitting} worker{'s' if fitting != 1 else ''} that can run it."
