"""Why a queued session waits, in a sentence for the user: no worker is running, none has the
GPUs per node or the memory it needs (see capacity.py), it waits out a retry backoff, or every
worker that fits it is busy.

Worked out when asked, from the `workers` rows every executor keeps fresh (its GPUs, memory and a
heartbeat), so it is one answer for the whole fleet and never stale; the executors share the
database, so `cotrain worker`s on other machines count like the embedded one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from sqlalchemy.orm import Session

from cotrain.server.capacity import gpus_per_node, live_workers, need_of_row, waiting_shortfall, worker_fits
from cotrain.server.orm import SessionStatus, TrainingSession, Worker

__all__ = ["gpus_per_node", "live_workers", "waiting_reason", "waiting_reasons"]


def waiting_reasons(db: Session, rows: Iterable[TrainingSession], heartbeat_timeout_s: float) -> dict[str, str]:
    """`{session id: why it waits}` for the queued sessions among `rows`, and those whose Slurm job is pending
    (issue 15: Slurm's reason, kept on the row by the executor)."""
    rows = list(rows)
    pending = {row.id: row.job_reason for row in rows if row.status == SessionStatus.STARTING and row.job_reason}
    queued = [row for row in rows if row.status == SessionStatus.QUEUED]
    if not queued:
        return pending
    workers = live_workers(db, heartbeat_timeout_s)
    return {**pending, **{row.id: waiting_reason(row, workers) for row in queued}}


def waiting_reason(row: TrainingSession, workers: list[Worker], now: float | None = None) -> str:
    now = time.time() if now is None else now
    if not workers:
        return (
            "Waiting: no worker is running. Start `cotrain up` with its embedded worker, or a `cotrain worker` "
            "pointed at this database."
        )
    need = need_of_row(row)
    shortfall = waiting_shortfall(need, workers)
    if shortfall is not None:
        return shortfall
    if row.next_attempt_at > now:
        return f"Waiting {row.next_attempt_at - now:.0f} s before retrying (see error)."
    fitting = sum(1 for w in workers if worker_fits(need, w))
    which, plural = ("the", "") if fitting == 1 else ("one of the", "s")
    return f"Waiting for a free slot on {which} {fitting} worker{plural} that can run it."
