"""Fencing (issue 18, lost workers): a worker writes for a run only while it still owns it.

A claim makes this worker the run's owner for one attempt: (worker_id, attempts) on the session's
row is the ownership token. A worker that stops heartbeating for COTRAIN_HEARTBEAT_TIMEOUT loses
the run: another worker re-queues it and claims it (a new worker_id on the row). Every write the
executor makes for a run (its events, heartbeat, log tail, end) first locks the row with the token
(`RunLease.hold`); when the token no longer matches, `LostOwnership` is raised and the executor
kills its own copy of the run and leaves the row alone, so a worker that comes back never runs a
session twice nor overwrites the new owner's state.

A worker cut off from the database cannot learn that it lost a run, so it fences itself
(`guard_lease`): after TERM_AFTER of the heartbeat timeout without a renewal it stops its run with
SIGTERM (the engine saves a checkpoint on the way out), and with SIGKILL when the whole timeout has
passed, before another worker could start the run from the same checkpoints.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from cotrain.server.orm import TrainingSession

TERM_AFTER = 0.75  # of the heartbeat timeout without a renewal: SIGTERM; at the whole timeout: SIGKILL
GUARD_TICK_S = 0.5


class LostOwnership(Exception):
    """Another worker owns this run now (or it was re-queued): this worker must not write for it."""


class Signalled(Protocol):
    @property
    def returncode(self) -> int | None: ...

    def signal(self, sig: int) -> None: ...


class RunLease:
    """This worker's ownership of one attempt of a session, and when it was last renewed (monotonic)."""

    def __init__(self, session_id: str, worker_id: str, attempt: int):
        self.session_id = session_id
        self.worker_id = worker_id
        self.attempt = attempt
        self.renewed_at = time.monotonic()

    def hold(self, db: Session) -> TrainingSession:
        """The session's row, locked until the transaction ends, while this lease still owns it."""
        row = db.scalars(
            select(TrainingSession)
            .where(
                TrainingSession.id == self.session_id,
                TrainingSession.worker_id == self.worker_id,
                TrainingSession.attempts == self.attempt,
            )
            .with_for_update()
        ).one_or_none()
        if row is None:
            raise LostOwnership(
                f"worker {self.worker_id} no longer owns attempt {self.attempt} of session {self.session_id}"
            )
        return row

    def renewed(self, asked_at: float) -> None:
        """A heartbeat asked at `asked_at` (before its write) was committed."""
        self.renewed_at = max(self.renewed_at, asked_at)


async def guard_lease(
    lease: RunLease, run: Signalled, timeout_s: float, on_fence: Callable[[str], None]
) -> None:
    """Stop `run` when its lease could not be renewed (the database is out of reach): SIGTERM after
    TERM_AFTER × timeout_s, SIGKILL after timeout_s. `on_fence(sentence)` is told the first time."""
    termed = False
    while run.returncode is None:
        await asyncio.sleep(GUARD_TICK_S)
        silent = time.monotonic() - lease.renewed_at
        if silent >= timeout_s:
            run.signal(signal.SIGKILL)
            return
        if silent >= TERM_AFTER * timeout_s and not termed:
            termed = True
            on_fence(
                f"worker {lease.worker_id} could not reach the database for {silent:.0f} s (its lease on the run "
                f"ends after {timeout_s:g} s, COTRAIN_HEARTBEAT_TIMEOUT), so it stopped the run; another worker "
                "resumes it from its last checkpoint"
            )
            run.signal(signal.SIGTERM)
            run.signal(signal.SIGCONT)
        elif silent < TERM_AFTER * timeout_s:
            termed = False
